"""Flow metrics (coopnet_tf.eval.flow), KITTI 16-bit PNG io, the KITTI devkit sample, the
CLI, and the --predict path with a SavedModel."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from coopnet_tf.eval import flow, kitti_flow_io

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable] + args, cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_epe_and_fl_by_hand():
    gt = np.array([[[10, 0], [10, 0], [100, 0]], [[0, 0], [5, 5], [1, 1]]], np.float32)
    pred = np.array([[[10, 0], [14, 3], [104, 3]], [[2, 0], [50, 50], [1, 1]]], np.float32)
    valid = np.array([[1, 1, 1], [1, 0, 0]], bool)
    # EPEs: 0; 5 (3-4-5, > 3 px and > 5 % of 10: outlier); 5 (> 3 px but not > 5 % of 100:
    # the relative test is strict, so no outlier); 2 (< 3 px). Invalid pixels ignored.
    s = flow.flow_image_stats(pred, gt, valid)
    assert s["epe"] == pytest.approx((0 + 5 + 5 + 2) / 4)
    assert s["fl"] == pytest.approx(1 / 4)
    assert (s["n_valid"], s["n_outliers"]) == (4, 1)


def test_per_image_mean_vs_pooled():
    a = {"epe": 1.0, "fl": 0.0, "epe_sum": 100.0, "n_outliers": 0, "n_valid": 100}
    b = {"epe": 4.0, "fl": 1.0, "epe_sum": 40.0, "n_outliers": 10, "n_valid": 10}
    agg = flow.aggregate([a, b])
    assert agg["epe"] == pytest.approx(2.5) and agg["fl"] == pytest.approx(0.5)
    assert agg["epe_pooled"] == pytest.approx(140 / 110)
    assert agg["fl_pooled"] == pytest.approx(10 / 110)


def test_png_round_trip_quantisation(tmp_path):
    rng = np.random.default_rng(0)
    f = rng.uniform(-500, 500, (7, 9, 2)).astype(np.float32)
    valid = rng.uniform(size=(7, 9)) > 0.3
    kitti_flow_io.write_flow_png(tmp_path / "f.png", f, valid)
    g, v = kitti_flow_io.read_flow_png(tmp_path / "f.png")
    np.testing.assert_array_equal(v, valid)
    assert np.abs(g - f)[valid].max() <= 1 / 128 + 1e-6      # 1/64 px quantisation
    np.testing.assert_array_equal(g[~valid], 0.0)
    q = np.round(f * 64) / 64                                  # multiples of 1/64: exact
    kitti_flow_io.write_flow_png(tmp_path / "q.png", q)
    np.testing.assert_array_equal(kitti_flow_io.read_flow_png(tmp_path / "q.png")[0], q)
    # Raw encoding: u = (R - 2^15) / 64, v = (G - 2^15) / 64, B = valid.
    raw = kitti_flow_io.read_png_uint16(tmp_path / "q.png")
    assert raw.dtype == np.uint16 and raw.shape == (7, 9, 3)
    np.testing.assert_array_equal(raw[..., 0], np.round(q[..., 0] * 64 + 32768).astype(np.uint16))
    np.testing.assert_array_equal(raw[..., 2], 1)
    d = np.array([[0.0, 1.5, 100.25]], np.float32)
    kitti_flow_io.write_disp_png(tmp_path / "d.png", d)
    dd, dv = kitti_flow_io.read_disp_png(tmp_path / "d.png")
    np.testing.assert_array_equal(dd, d)
    np.testing.assert_array_equal(dv, [[False, True, True]])


def test_resize_flow_rescales_values():
    f = np.tile(np.array([2.0, 1.0], np.float32), (10, 20, 1))
    out = flow.resize_flow(f, 20, 60)
    assert out.shape == (20, 60, 2)
    np.testing.assert_allclose(out[..., 0], 6.0)
    np.testing.assert_allclose(out[..., 1], 2.0)
    np.testing.assert_allclose(flow.resize_flow(f, 5, 10, "nearest")[..., 0], 1.0)


def _bruteforce_devkit_sample(devkit):
    """Independent decode + metrics straight from the PNG channels."""
    def decode(path):
        raw = tf.io.decode_png(tf.io.read_file(str(path)), dtype=tf.uint16).numpy().astype(np.float64)
        return (raw[..., 0] - 32768) / 64, (raw[..., 1] - 32768) / 64, raw[..., 2] > 0
    ug, vg, valid = decode(devkit / "flow_gt.png")
    ue, ve, _ = decode(devkit / "flow_est.png")
    err = np.hypot(ue - ug, ve - vg)[valid]
    mag = np.hypot(ug, vg)[valid]
    bad = (err > 3) & (err / np.maximum(mag, 1e-12) > 0.05)
    return err.mean(), bad.sum() / valid.sum()


def test_devkit_sample_flow_est_vs_gt(tmp_path, shared_data):
    devkit = shared_data / "kitti_flow_devkit"
    for sub in ("flow_occ", "flow_noc"):
        (tmp_path / "gt" / sub).mkdir(parents=True)
        shutil.copy(devkit / "flow_gt.png", tmp_path / "gt" / sub / "000000_10.png")
    (tmp_path / "pred" / "flow").mkdir(parents=True)
    shutil.copy(devkit / "flow_est.png", tmp_path / "pred" / "flow" / "000000_10.png")
    res = flow.evaluate_flow_dirs(str(tmp_path / "gt"), str(tmp_path / "pred"))
    epe, fl = _bruteforce_devkit_sample(devkit)
    assert np.isfinite(res["epe_all"]) and 0.0 < res["fl_all"] < 1.0
    assert res["epe_all"] == pytest.approx(epe, rel=1e-9)
    assert res["fl_all"] == pytest.approx(fl, rel=1e-12)
    assert res["fl_all_pooled"] == pytest.approx(fl, rel=1e-12)        # one image
    assert res["epe_noc"] == pytest.approx(epe, rel=1e-9)

    out = _run(["-m", "coopnet_tf.evaluate", "flow", f"--gt_dir={tmp_path / 'gt'}",
                f"--pred_dir={tmp_path / 'pred'}", f"--output_json={tmp_path / 'r.json'}",
                f"--plot_dir={tmp_path / 'plots'}", "--compare_paper"])
    js = json.loads((tmp_path / "r.json").read_text())
    for k in ("epe_noc", "epe_all", "fl_all"):
        assert isinstance(js[k], float)
    assert js["epe_all"] == pytest.approx(epe, rel=1e-9)
    assert "9.43" in out                                              # CoopNet Table 3, All
    assert (tmp_path / "plots" / "000000_10_pred.png").is_file()


def _save_flow_model(path, h, w):
    """A SavedModel with the EXPORT_FLOW signature returning flow (1, 0.5) px everywhere."""
    class Flow(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, h, w, 3], tf.float32, name="image_a"),
                                      tf.TensorSpec([None, h, w, 3], tf.float32, name="image_b")])
        def serve(self, image_a, image_b):
            ones = tf.ones_like(image_a[..., :1]) + 0.0 * image_b[..., :1]
            return {"flow": tf.concat([ones, 0.5 * ones], -1)}

    m = Flow()
    tf.saved_model.save(m, str(path), signatures={"serving_default": m.serve})


def test_predict_flow_dir_with_saved_model(tmp_path):
    """The --predict path: pairs -> flow PNGs at the original size with rescaled values."""
    from PIL import Image  # pylint: disable=import-outside-toplevel

    from coopnet_tf import evaluate  # no flags are registered on import

    img = tmp_path / "image_2"
    img.mkdir()
    for i in range(3):
        for t in (10, 11):
            Image.fromarray(np.full((30, 50, 3), 40 * i + t, np.uint8)).save(img / f"{i:06d}_{t}.png")
    _save_flow_model(tmp_path / "flow_model", 16, 32)
    signature = evaluate.load_signature(str(tmp_path / "flow_model"))
    names = [f"{i:06d}_10.png" for i in range(3)]
    evaluate.predict_flow_dir(signature, str(img), str(tmp_path / "pred"), names, 16, 32, 2)
    f, v = kitti_flow_io.read_flow_png(tmp_path / "pred" / "000002_10.png")
    assert f.shape == (30, 50, 2) and v.all()
    np.testing.assert_allclose(f[..., 0], round(50 / 32 * 64) / 64)   # u * W_gt / W_pred
    np.testing.assert_allclose(f[..., 1], round(0.5 * 30 / 16 * 64) / 64)
