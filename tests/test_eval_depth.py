"""Depth metrics (coopnet_tf.eval.depth) on hand-computed cases, the CLI, and real KITTI
frames with LiDAR ground truth from tools/export_gt_depth.py."""
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from coopnet_tf.eval import depth

REPO = pathlib.Path(__file__).resolve().parents[1]
KEYS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")


def _run(args, cwd=REPO):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable] + args, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_metrics_constant_ratio_by_hand():
    gt = np.array([2.0, 4.0, 8.0])
    r = 1.1
    e = depth.compute_depth_errors(gt, r * gt)
    assert e["abs_rel"] == pytest.approx(0.1, abs=1e-12)                 # |1 - r|
    assert e["sq_rel"] == pytest.approx(0.01 * (2 + 4 + 8) / 3, abs=1e-12)  # (r-1)^2 mean(gt)
    assert e["rmse"] == pytest.approx(0.1 * math.sqrt((4 + 16 + 64) / 3), abs=1e-12)
    assert e["rmse_log"] == pytest.approx(math.log(1.1), abs=1e-12)
    assert (e["a1"], e["a2"], e["a3"]) == (1.0, 1.0, 1.0)


def test_delta_thresholds_are_strict():
    # 5/4 = 1.25 and 25/16 = 1.5625 = 1.25^2 exactly in binary floating point.
    gt = np.array([4.0, 4.0, 16.0, 64.0])
    pred = np.array([5.0, 4.99, 25.0, 125.0])    # ratios 1.25, <1.25, 1.25^2, 1.25^3
    e = depth.compute_depth_errors(gt, pred)
    assert e["a1"] == 0.25                       # only 4.99/4
    assert e["a2"] == 0.5                        # + 5/4
    assert e["a3"] == 0.75                       # + 25/16 (125/64 = 1.25^3 not counted)
    e = depth.compute_depth_errors(np.array([4.0]), np.array([3.2]))  # gt/pred = 1.25
    assert e["a1"] == 0.0


def test_garg_crop_indices():
    assert depth.garg_crop_bounds(375, 1242) == (153, 371, 44, 1197)
    # Truncation, not rounding: 0.99189189 * 370 = 366.9999993 -> 366, 0.03594771 * 1224 -> 43.
    assert depth.garg_crop_bounds(370, 1224) == (151, 366, 43, 1180)
    m = depth.garg_crop_mask(375, 1242)
    assert m.sum() == (371 - 153) * (1197 - 44)
    assert m[153, 44] and m[370, 1196] and not m[152, 44] and not m[153, 1197]


def _gt_map(h=60, w=200, seed=0):
    rng = np.random.default_rng(seed)
    gt = rng.uniform(2.0, 60.0, (h, w)).astype(np.float32)
    gt[rng.uniform(size=(h, w)) < 0.5] = 0.0      # sparse like LiDAR
    return gt


def test_constant_ratio_without_and_with_median_scaling():
    gts = [_gt_map(seed=s) for s in range(3)]
    r = 1.2
    preds = np.stack([1.0 / np.where(g > 0, r * g, 1.0) for g in gts])   # same resolution
    res = depth.evaluate_depth(gts, preds, median_scaling=False)
    assert res["abs_rel"] == pytest.approx(0.2, abs=1e-6)
    assert res["rmse_log"] == pytest.approx(math.log(1.2), abs=1e-6)
    assert res["a1"] == 1.0
    # RMSE by hand: per image sqrt(mean((0.2 g)^2)) over Garg-cropped valid pixels, averaged.
    expect = []
    for g in gts:
        v = g[depth.garg_crop_mask(*g.shape) & (g > 1e-3) & (g < 80)].astype(np.float64)
        expect.append(math.sqrt(np.mean((0.2 * v) ** 2)))
    assert res["rmse"] == pytest.approx(np.mean(expect), rel=1e-5)
    res = depth.evaluate_depth(gts, preds, median_scaling=True)
    for k in ("abs_rel", "sq_rel", "rmse", "rmse_log"):
        assert res[k] == pytest.approx(0.0, abs=1e-5)
    assert res["scale_ratio_median"] == pytest.approx(1 / r, rel=1e-5)
    assert res["scale_ratio_std"] == pytest.approx(0.0, abs=1e-6)
    assert res["n_images"] == 3


def test_range_mask_and_clamp_after_scaling():
    gt = np.zeros((10, 10), np.float32)
    gt[:, :5] = 10.0
    gt[:, 5] = 80.0        # excluded (gt < 80 is strict)
    gt[:, 6] = 1e-3        # excluded (gt > 1e-3 is strict)
    disp = np.full((10, 10), 1.0 / 100.0, np.float32)  # depth 100 m everywhere
    res = depth.evaluate_depth([gt], disp[None], protocol="full", median_scaling=False)
    # 100 m is clamped to 80 m after (here: no) scaling: |10 - 80| / 10 = 7.
    assert res["abs_rel"] == pytest.approx(7.0)
    res = depth.evaluate_depth([gt], disp[None], protocol="full", median_scaling=False,
                               pred_depth_scale_factor=0.1)
    assert res["abs_rel"] == pytest.approx(0.0, abs=1e-6)


def test_resize_constant_disparity_and_median_scaling_by_hand():
    gt = _gt_map(h=75, w=250, seed=5)
    disp = np.full((1, 16, 52), 0.25, np.float32)        # other resolution, constant
    res = depth.evaluate_depth([gt], disp)
    v = gt[depth.garg_crop_mask(75, 250) & (gt > 1e-3) & (gt < 80)].astype(np.float64)
    m = np.median(v)
    assert res["abs_rel"] == pytest.approx(np.mean(np.abs(v - m) / v), rel=1e-6)
    assert res["rmse"] == pytest.approx(math.sqrt(np.mean((v - m) ** 2)), rel=1e-6)
    assert res["scale_ratio_median"] == pytest.approx(m / 4.0, rel=1e-6)


def test_cityscapes_crops():
    assert depth.cityscapes_hood_rows(1024) == 768
    assert depth.cityscapes_eval_bounds(768, 2048) == (256, 768, 192, 1856)
    gt = np.full((1024, 2048), 50.0, np.float32)   # wrong everywhere ...
    gt[256:768, 192:1856] = 10.0                   # ... except in the evaluated crop
    disp = np.full((1, 24, 64), 0.1, np.float32)   # depth 10
    res = depth.evaluate_depth([gt], disp, protocol="cityscapes", median_scaling=False)
    assert res["abs_rel"] == pytest.approx(0.0, abs=1e-6)
    # A hood-cropped (768 x 2048) GT is used as it is.
    res = depth.evaluate_depth([gt[:768]], disp, protocol="cityscapes", median_scaling=False)
    assert res["abs_rel"] == pytest.approx(0.0, abs=1e-6)
    # Cityscapes GT from disparity PNG values: disp = (p - 1) / 256, depth = b fx / disp.
    d = depth.cityscapes_disparity_to_depth(np.array([[0, 1, 257, 513]], np.uint16), 2000.0, 0.2)
    np.testing.assert_allclose(d, [[0.0, 0.0, 400.0, 200.0]])


def test_post_process_disparity():
    rng = np.random.default_rng(1)
    d = rng.uniform(0.1, 1.0, (2, 8, 40)).astype(np.float32)
    # Consistent predictions: unchanged.
    np.testing.assert_allclose(depth.post_process_disparity(d, d[..., ::-1]), d, rtol=1e-6)
    other = rng.uniform(0.1, 1.0, (2, 8, 40)).astype(np.float32)
    out = depth.post_process_disparity(d, other)
    back = other[..., ::-1]
    np.testing.assert_allclose(out[..., 0], back[..., 0], rtol=1e-6)    # left border: flipped one
    np.testing.assert_allclose(out[..., -1], d[..., -1], rtol=1e-6)     # right border: original
    np.testing.assert_allclose(out[..., 20], 0.5 * (d[..., 20] + back[..., 20]), rtol=1e-6)


def test_loaders(tmp_path):
    maps = np.empty(2, object)
    maps[0] = np.ones((5, 7), np.float32)
    maps[1] = np.ones((6, 8), np.float32)
    np.savez(tmp_path / "gt.npz", data=maps)
    gts = depth.load_gt_depths(tmp_path / "gt.npz")
    assert [g.shape for g in gts] == [(5, 7), (6, 8)]
    np.save(tmp_path / "d.npy", np.ones((2, 4, 6, 1), np.float32))
    assert depth.load_pred_disps(tmp_path / "d.npy").shape == (2, 4, 6)


def test_cli_depth_writes_contract_keys(tmp_path):
    gts = [_gt_map(seed=s) for s in range(2)]
    np.savez(tmp_path / "gt.npz", data=np.stack(gts))
    np.save(tmp_path / "disps.npy", np.stack([1.0 / np.where(g > 0, 2 * g, 1.0) for g in gts]))
    out = _run(["-m", "coopnet_tf.evaluate", "depth", f"--gt_depths={tmp_path / 'gt.npz'}",
                f"--pred_disps={tmp_path / 'disps.npy'}", f"--output_json={tmp_path / 'r.json'}",
                "--compare_paper", f"--plot_dir={tmp_path / 'plots'}"])
    res = json.loads((tmp_path / "r.json").read_text())
    for k in KEYS + ("scale_ratio_median", "scale_ratio_std"):
        assert k in res
    assert res["abs_rel"] == pytest.approx(0.0, abs=1e-5)
    assert res["scale_ratio_median"] == pytest.approx(0.5, rel=1e-5)
    assert "abs_rel" in out and "0.126" in out           # paper column printed
    assert list((tmp_path / "plots").glob("*.png"))


def test_real_kitti_lidar_constant_disparity(tmp_path, shared_data):
    """tools/export_gt_depth.py on the real frames, then a constant-disparity prediction."""
    raw = shared_data / "kitti_raw"
    drive = "2011_09_26/2011_09_26_drive_0000_sync"
    (tmp_path / "split.txt").write_text("".join(f"{drive} {i:010d} l\n" for i in range(3)))
    _run([str(REPO / "tools" / "export_gt_depth.py"), f"--data_path={raw}",
          f"--split_file={tmp_path / 'split.txt'}", f"--output={tmp_path / 'gt.npz'}"])
    np.save(tmp_path / "disps.npy", np.full((3, 128, 416), 0.05, np.float32))
    _run(["-m", "coopnet_tf.evaluate", "depth", f"--gt_depths={tmp_path / 'gt.npz'}",
          f"--pred_disps={tmp_path / 'disps.npy'}", f"--output_json={tmp_path / 'r.json'}"])
    res = json.loads((tmp_path / "r.json").read_text())
    # Independent computation: Garg crop by hand, median of GT as the constant prediction.
    gts = np.load(tmp_path / "gt.npz", allow_pickle=True)["data"]
    expect, ratios = [], []
    for g in gts:
        assert g.shape == (375, 1242)
        v = g[153:371, 44:1197]
        v = v[(v > 1e-3) & (v < 80)].astype(np.float64)
        assert v.size > 1000
        m = np.median(v)
        ratios.append(m / 20.0)
        expect.append([np.mean(np.abs(v - m) / v), np.sqrt(np.mean((v - m) ** 2)),
                       np.mean(np.maximum(v / m, m / v) < 1.25)])
    expect = np.mean(expect, axis=0)
    assert res["abs_rel"] == pytest.approx(expect[0], rel=1e-5)
    assert res["rmse"] == pytest.approx(expect[1], rel=1e-5)
    assert res["a1"] == pytest.approx(expect[2], rel=1e-5)
    assert 0.05 < res["abs_rel"] < 2.0
    assert res["scale_ratio_median"] == pytest.approx(np.median(ratios), rel=1e-5)


def test_predict_disparities_with_saved_model(tmp_path):
    """The --saved_model path: EXPORT_DEPTH signature, KITTI split-line paths, flip
    post-processing."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from PIL import Image  # pylint: disable=import-outside-toplevel

    from coopnet_tf import evaluate  # no flags are registered on import

    class Depth(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 8, 16, 3], tf.float32, name="image")])
        def serve(self, image):
            # Disparity = 0.1 + the column index / 100 (a left-right ramp) + image mean * 0.
            col = tf.cast(tf.range(16), tf.float32)[None, None, :, None] / 100.0
            disp = 0.1 + col + 0.0 * tf.reduce_mean(image, -1, keepdims=True)
            return {"disparity": disp, "depth": 1.0 / disp}

    m = Depth()
    tf.saved_model.save(m, str(tmp_path / "depth" / "3"), signatures={"serving_default": m.serve})
    line = "2011_09_26/2011_09_26_drive_0002_sync 0000000069 l"
    path = evaluate._kitti_image_path(str(tmp_path), line, "png")  # pylint: disable=protected-access
    assert path == str(tmp_path / "2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.png")
    os.makedirs(os.path.dirname(path))
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(path)
    sig = evaluate.load_signature(str(tmp_path / "depth"))
    disp = evaluate.predict_disparities(sig, [path, path], 8, 16, batch_size=1)
    assert disp.shape == (2, 8, 16)
    np.testing.assert_allclose(disp[0, 0], 0.1 + np.arange(16) / 100.0, rtol=1e-6)
    pp = evaluate.predict_disparities(sig, [path], 8, 16, batch_size=1, post_process=True)
    ramp = 0.1 + np.arange(16) / 100.0
    np.testing.assert_allclose(pp[0], depth.post_process_disparity(ramp[None].repeat(8, 0),
                                                                   ramp[None].repeat(8, 0)), rtol=1e-6)
