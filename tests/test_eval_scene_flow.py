"""Scene-flow disparity metrics D1 / D2 (coopnet_tf.eval.scene_flow, Lee Table 4), the
`scene_flow` CLI and its --saved_model path, and the object-motion metrics
(coopnet_tf.eval.object_motion)."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from coopnet_tf.eval import kitti_flow_io, object_motion
from coopnet_tf.eval import scene_flow as sf
from coopnet_tf.eval.inputs import InputError

REPO = pathlib.Path(__file__).resolve().parents[1]
CONTRACT_KEYS = {"d1_bg", "d1_fg", "d1_all", "d2_bg", "d2_fg", "d2_all"}


def _run(args, expect_ok=True):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "coopnet_tf.evaluate"] + args, cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert (proc.returncode == 0) == expect_ok, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def _write_set(root, name, gt0, gt1, obj, pred0=None, pred1=None):
    """One image in the official GT layout (and devkit predictions when given)."""
    kitti_flow_io.write_disp_png(root / "gt" / "disp_occ_0" / name, gt0)
    kitti_flow_io.write_disp_png(root / "gt" / "disp_occ_1" / name, gt1)
    (root / "gt" / "obj_map").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(obj, np.uint8)).save(root / "gt" / "obj_map" / name)
    for sub, pred in (("disp_0", pred0), ("disp_1", pred1)):
        if pred is not None:
            kitti_flow_io.write_disp_png(root / "pred" / sub / name, pred)


# --- the outlier rule on constructed cases ------------------------------------------------

def test_known_outlier_counts():
    gt = np.full((4, 6), 10.0)
    gt[3] = 100.0
    gt[0, 5] = 0.0                      # invalid GT: ignored whatever the prediction
    pred = gt.copy()
    pred[0, 0:3] += 4.0                 # 3 px on GT 10: > 3 px and > 5 % -> 3 outliers
    pred[1, 0] += 3.0                   # exactly 3 px: the devkit's test is strict -> inlier
    pred[1, 1] -= 2.9                   # < 3 px -> inlier
    pred[3, 0:2] += 3.5                 # 3.5 px on GT 100: < 5 % -> inliers
    pred[3, 2] += 5.0                   # exactly 5 % of 100 -> inlier (strict)
    pred[3, 3] -= 6.0                   # 6 px > 5 % of 100 -> outlier
    pred[0, 5] = 50.0
    obj = np.zeros((4, 6), np.int32)
    obj[0, 0] = obj[3, 3] = obj[3, 4] = 7     # fg: 2 outliers of 3 fg pixels
    c = sf.disparity_counts(pred, gt, obj)
    assert (c["n_valid_all"], c["n_outliers_all"]) == (23, 4)
    assert (c["n_valid_fg"], c["n_outliers_fg"]) == (3, 2)
    assert (c["n_valid_bg"], c["n_outliers_bg"]) == (20, 2)
    r = sf.rates(c)
    assert r == pytest.approx({"bg": 2 / 20, "fg": 2 / 3, "all": 4 / 23})
    # An invalid (0) prediction on valid GT is compared as 0 and counted.
    pred[2, 2] = 0.0
    c = sf.disparity_counts(pred, gt, obj)
    assert c["n_outliers_all"] == 5 and c["n_pred_invalid"] == 1
    assert np.isnan(sf.rates(sf.disparity_counts(gt, gt, np.ones_like(obj)))["bg"])  # empty


def test_pooled_not_mean_of_images(tmp_path):
    """Two images: 10 of 10 outliers and 0 of 30 -> pooled 0.25 (the devkit), not 0.5."""
    a = np.full((2, 5), 10.0)
    b = np.full((6, 5), 10.0)
    obj_a, obj_b = np.zeros((2, 5)), np.zeros((6, 5))
    _write_set(tmp_path, "000000_10.png", a, a, obj_a, a + 4, a)
    _write_set(tmp_path, "000001_10.png", b, b, obj_b, b, b + 4)
    res = sf.evaluate_scene_flow_dirs(str(tmp_path / "gt"), str(tmp_path / "pred"))
    assert res["d1_all"] == pytest.approx(10 / 40) and res["d2_all"] == pytest.approx(30 / 40)
    assert res["d1_bg"] == pytest.approx(10 / 40)
    assert np.isnan(res["d1_fg"])                                    # no fg pixel at all
    assert [e["d1_all"] for e in res["per_image"]] == [1.0, 0.0]
    assert [e["d2_all"] for e in res["per_image"]] == [0.0, 1.0]


# --- the devkit sample --------------------------------------------------------------------

def _read_raw(path):
    """uint16 values of a 16-bit grey PNG, decoded by PIL (not the code under test)."""
    with Image.open(path) as im:
        return np.asarray(im).astype(np.int64)


def _devkit_rule(est_raw, gt_raw, fg):
    """Straight transcription of the devkit rule on raw PNG values (v / 256, 0 = invalid;
    an invalid estimate is read as disparity 0)."""
    gt = gt_raw / 256.0
    est = est_raw / 256.0
    counts = {}
    for region, sel in (("bg", ~fg), ("fg", fg), ("all", np.ones_like(fg))):
        n_valid = n_bad = 0
        for g, e in zip(gt[sel], est[sel]):
            if g <= 0:
                continue
            n_valid += 1
            err = abs(e - g)
            if err > 3.0 and err / g > 0.05:
                n_bad += 1
        counts[region] = n_bad / n_valid
    return counts


def test_devkit_sample_d1_d2_equal_transcription(tmp_path, shared_data):
    devkit = shared_data / "kitti_flow_devkit"
    gt0 = _read_raw(devkit / "disp_gt.png")
    est0 = _read_raw(devkit / "disp_est.png")
    h, w = gt0.shape
    obj = np.zeros((h, w), np.uint8)
    obj[150:330, 60:450] = 2                     # a rectangle over the near car
    # t+1 pair by a known transformation: GT disparities shrink by 10 % (moving away),
    # the estimate shrinks by 10 % and its left half is 2.5 % too large again.
    gt1 = np.rint(gt0 * 0.9).astype(np.uint16)
    est1 = np.rint(est0 * 0.9).astype(np.int64)
    est1[:, : w // 2] = np.rint(est1[:, : w // 2] * 1.025)
    est1 = est1.astype(np.uint16)
    for sub, src in (("disp_occ_0", devkit / "disp_gt.png"), ("disp_0", devkit / "disp_est.png")):
        root = tmp_path / ("gt" if sub.startswith("disp_occ") else "pred") / sub
        root.mkdir(parents=True)
        shutil.copy(src, root / "000000_10.png")
    kitti_flow_io.write_png_uint16(tmp_path / "gt" / "disp_occ_1" / "000000_10.png", gt1)
    kitti_flow_io.write_png_uint16(tmp_path / "pred" / "disp_1" / "000000_10.png", est1)
    (tmp_path / "gt" / "obj_map").mkdir()
    Image.fromarray(obj).save(tmp_path / "gt" / "obj_map" / "000000_10.png")

    res = sf.evaluate_scene_flow_dirs(str(tmp_path / "gt"), str(tmp_path / "pred"))
    d1 = _devkit_rule(est0, gt0, obj > 0)
    d2 = _devkit_rule(est1.astype(np.int64), gt1.astype(np.int64), obj > 0)
    for region in ("bg", "fg", "all"):
        assert res[f"d1_{region}"] == pytest.approx(d1[region], rel=1e-12)
        assert res[f"d2_{region}"] == pytest.approx(d2[region], rel=1e-12)
    assert 0.05 < res["d1_all"] < 0.5 and res["d1_fg"] != res["d1_bg"]
    assert res["d2_all"] != res["d1_all"]
    assert res["counts"]["d1"]["n_valid_all"] == int((gt0 > 0).sum())


# --- files, CLI, errors --------------------------------------------------------------------

def test_disparity_and_obj_map_png_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    d = np.round(rng.uniform(0.0, 200.0, (5, 7)) * 256) / 256
    d[0, :3] = 0.0
    kitti_flow_io.write_disp_png(tmp_path / "d.png", d)
    back, valid = kitti_flow_io.read_disp_png(tmp_path / "d.png")
    np.testing.assert_array_equal(back, d.astype(np.float32))
    np.testing.assert_array_equal(valid, d > 0)
    raw = _read_raw(tmp_path / "d.png")                   # value = d * 256, 0 = invalid
    np.testing.assert_array_equal(raw, np.rint(d * 256))
    obj = np.array([[0, 1, 2], [3, 0, 255]], np.uint8)
    Image.fromarray(obj).save(tmp_path / "o.png")
    np.testing.assert_array_equal(kitti_flow_io.read_label_png(tmp_path / "o.png"), obj)


def test_hand_counted_rates_per_region(tmp_path):
    gt = np.full((8, 10), 20.0)
    obj = np.zeros((8, 10))
    obj[:4] = 1
    pred0 = gt.copy()
    pred0[0, :5] = 30.0                     # 5 fg outliers of 40 fg pixels
    pred1 = gt.copy()
    pred1[7, :2] = 10.0                     # 2 bg outliers of 40 bg pixels
    _write_set(tmp_path, "000000_10.png", gt, gt, obj, pred0, pred1)
    res = sf.evaluate_scene_flow_dirs(str(tmp_path / "gt"), str(tmp_path / "pred"))
    expected = dict(d1_bg=0.0, d1_fg=5 / 40, d1_all=5 / 80, d2_bg=2 / 40, d2_fg=0.0, d2_all=2 / 80)
    assert {k: res[k] for k in CONTRACT_KEYS} == pytest.approx(expected)
    assert res["per_image"][0]["name"] == "000000_10.png"


def test_missing_prediction_and_size_mismatch(tmp_path):
    gt = np.full((4, 5), 10.0)
    obj = np.zeros((4, 5))
    _write_set(tmp_path, "000000_10.png", gt, gt, obj, gt, gt)
    _write_set(tmp_path, "000001_10.png", gt, gt, obj, gt)          # no disp_1 for 000001
    with pytest.raises(FileNotFoundError, match=r"disp_1.000001_10\.png"):
        sf.evaluate_scene_flow_dirs(str(tmp_path / "gt"), str(tmp_path / "pred"))
    out = tmp_path / "r.json"
    out.write_text('{"kept": true}\n')
    msg = _run(["scene_flow", f"--gt_dir={tmp_path / 'gt'}", f"--pred_dir={tmp_path / 'pred'}",
                f"--output_json={out}"], expect_ok=False)
    assert "000001_10.png" in msg and "missing" in msg
    assert json.loads(out.read_text()) == {"kept": True}             # nothing lost
    kitti_flow_io.write_disp_png(tmp_path / "pred" / "disp_1" / "000001_10.png", np.ones((4, 6)))
    with pytest.raises(InputError, match=r"000001_10\.png is 4x6.*is 4x5"):
        sf.evaluate_scene_flow_dirs(str(tmp_path / "gt"), str(tmp_path / "pred"))
    shutil.rmtree(tmp_path / "gt" / "disp_occ_1")
    with pytest.raises(FileNotFoundError, match="disp_occ_1"):
        sf.evaluate_scene_flow_dirs(str(tmp_path / "gt"), str(tmp_path / "pred"))


# --- the --saved_model path ----------------------------------------------------------------

H, W, SHIFT, GT_SCALE = 24, 40, 3, 100.0


def _depth_of(image_u8):
    """Depth the test model returns for an image: 1 + 4 * red (m)."""
    return 1.0 + 4.0 * image_u8[..., 0].astype(np.float64) / 255.0


def _save_depth_model(path):
    """A SavedModel with the EXPORT_DEPTH signature: depth = 1 + 4 * red channel."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    class Depth(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, H, W, 3], tf.float32, name="image")])
        def serve(self, image):
            depth = 1.0 + 4.0 * image[..., :1]
            return {"depth": depth, "disparity": 1.0 / depth}

    m = Depth()
    tf.saved_model.save(m, str(path), signatures={"serving_default": m.serve})


def _save_motion_model(path, residual, expected_K=None):
    """An EXPORT_OBJECT_MOTION-like SavedModel: camera t -> t+1 moves 0.5 m forward
    (X_b = X_a + (0, 0, -0.5)), residual object motion `residual` [H, W, 3]. With
    `expected_K` it also takes `intrinsics` [B, 3, 3] (as Lee's export does) and fails
    unless it gets `expected_K`."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    transform = np.eye(4, dtype=np.float32)
    transform[2, 3] = -0.5
    images = [tf.TensorSpec([None, H, W, 3], tf.float32, name="image_a"),
              tf.TensorSpec([None, H, W, 3], tf.float32, name="image_b")]

    def outputs(image_a, image_b):
        b = tf.shape(image_a)[0]
        return {"transform": tf.tile(tf.constant(transform)[None], [b, 1, 1]),
                "residual": tf.tile(tf.constant(residual, tf.float32)[None], [b, 1, 1, 1])
                + 0.0 * image_b[..., :1],
                "pose_vector": tf.zeros([b, 6])}

    class Motion(tf.Module):
        @tf.function(input_signature=images)
        def serve(self, image_a, image_b):
            return outputs(image_a, image_b)

    class MotionWithIntrinsics(tf.Module):
        @tf.function(input_signature=images + [
            tf.TensorSpec([None, 3, 3], tf.float32, name="intrinsics")])
        def serve(self, image_a, image_b, intrinsics):
            check = tf.debugging.assert_near(intrinsics[0], tf.constant(expected_K, tf.float32),
                                             atol=1e-4, message="intrinsics")
            with tf.control_dependencies([check]):
                return outputs(image_a, image_b)

    m = Motion() if expected_K is None else MotionWithIntrinsics()
    tf.saved_model.save(m, str(path), signatures={"serving_default": m.serve})


def test_saved_model_mode_scale_alignment_and_d2_warp(tmp_path):
    """Frame t+1 = frame t moved 3 px left (same depths): with the method's flow (-3, 0) the
    warped t+1 disparity matches the GT of frame t's layout exactly (D2 = 0); unwarped it
    does not. The median scaling maps fx·b/depth onto GT = 100/depth (D1 = 0)."""
    from coopnet_tf import evaluate  # pylint: disable=import-outside-toplevel

    base = np.tile(np.linspace(0, 255, W + SHIFT).astype(np.uint8), (H, 1))
    img0 = np.repeat(base[:, :W, None], 3, -1)
    img1 = np.repeat(base[:, SHIFT:W + SHIFT, None], 3, -1)
    (tmp_path / "image_2").mkdir()
    Image.fromarray(img0).save(tmp_path / "image_2" / "000000_10.png")
    Image.fromarray(img1).save(tmp_path / "image_2" / "000000_11.png")
    gt = GT_SCALE / _depth_of(img0)
    gt[:, :SHIFT] = 0.0            # points whose t+1 position is outside the image
    obj = np.zeros((H, W))
    obj[5:15, 10:30] = 1
    _write_set(tmp_path, "000000_10.png", gt, gt, obj)
    kitti_flow_io.write_flow_png(tmp_path / "flow" / "000000_10.png",
                                 np.tile([-float(SHIFT), 0.0], (H, W, 1)))
    _save_depth_model(tmp_path / "model")
    signature = evaluate.load_signature(str(tmp_path / "model"))
    results = {}
    for mode, flow_dir in (("warped", tmp_path / "flow"), ("unwarped", None)):
        pred_dir = tmp_path / f"pred_{mode}"
        info = evaluate.predict_scene_flow_dir(
            signature, str(tmp_path / "image_2"), str(pred_dir), ["000000_10.png"], H, W, 2,
            gt_dir=str(tmp_path / "gt"), flow_dir=flow_dir and str(flow_dir))
        assert info["000000_10.png"]["scale"] == pytest.approx(
            GT_SCALE / (sf.KITTI_FX * sf.KITTI_BASELINE), rel=1e-3)
        d0, _ = kitti_flow_io.read_disp_png(pred_dir / "disp_0" / "000000_10.png")
        np.testing.assert_allclose(d0[:, SHIFT:], gt[:, SHIFT:], atol=0.05)
        results[mode] = sf.evaluate_scene_flow_dirs(str(tmp_path / "gt"), str(pred_dir))
    assert results["warped"]["d1_all"] == 0.0 and results["warped"]["d2_all"] == 0.0
    assert results["unwarped"]["d1_all"] == 0.0 and results["unwarped"]["d2_all"] > 0.2

    # The method's own 3-D motion: GT at t+1 = 100 / (D - 0.5 - 0.25 on the object).
    residual = np.zeros((H, W, 3), np.float32)
    residual[obj > 0] = [0.0, 0.0, -0.25]
    _save_motion_model(tmp_path / "motion", residual)
    gt1 = GT_SCALE / (_depth_of(img0) - 0.5 + residual[..., 2])
    _write_set(tmp_path, "000000_10.png", gt, gt1, obj)
    evaluate.predict_scene_flow_dir(
        signature, str(tmp_path / "image_2"), str(tmp_path / "pred_motion"), ["000000_10.png"],
        H, W, 2, gt_dir=str(tmp_path / "gt"),
        motion_signature=evaluate.load_signature(str(tmp_path / "motion")))
    res = sf.evaluate_scene_flow_dirs(str(tmp_path / "gt"), str(tmp_path / "pred_motion"))
    assert res["d1_all"] == 0.0 and res["d2_all"] == 0.0 and res["counts"]["d2"]["n_valid_fg"] > 0
    # Lee's object_motion export also takes the intrinsics (stage 1): K of the original
    # image (here the default fx and the image centre, the image at the model's size)
    K = evaluate.kitti2015_intrinsics(None, "000000_10.png", (H, W), sf.KITTI_FX)
    _save_motion_model(tmp_path / "motion_k", residual, expected_K=K)
    evaluate.predict_scene_flow_dir(
        signature, str(tmp_path / "image_2"), str(tmp_path / "pred_motion_k"),
        ["000000_10.png"], H, W, 2, gt_dir=str(tmp_path / "gt"),
        motion_signature=evaluate.load_signature(str(tmp_path / "motion_k")))
    res = sf.evaluate_scene_flow_dirs(str(tmp_path / "gt"), str(tmp_path / "pred_motion_k"))
    assert res["d1_all"] == 0.0 and res["d2_all"] == 0.0
    res = sf.evaluate_scene_flow_dirs(str(tmp_path / "gt"), str(tmp_path / "pred_warped"))
    assert res["d2_fg"] > 0.5          # the flow-warped static depth misses the object motion


def test_disparity_after_motion_rotation():
    """Rotation of 90 deg about y then 2 m along z: Z' = 2 - X (pinhole geometry)."""
    K = np.array([[50.0, 0, 7.5], [0, 50.0, 4.5], [0, 0, 1]])
    depth = np.full((10, 16), 4.0)
    T = np.eye(4)
    T[:3, :3] = [[0, 0, 1], [0, 1, 0], [-1, 0, 0]]
    T[2, 3] = 2.0
    out = sf.disparity_after_motion(depth, T, np.zeros((10, 16, 3)), K, 100.0)
    x = (np.arange(16) - 7.5) / 50.0 * 4.0              # X of each column
    z_new = 2.0 - x
    np.testing.assert_allclose(out, np.tile(100.0 / z_new, (10, 1)), rtol=1e-6)
    r = np.zeros((10, 16, 3))
    r[..., 0] = 3.0                                     # moves every point 3 m along x: Z' < 0
    assert not sf.disparity_after_motion(depth, T, r, K, 100.0).any()


def test_warp_to_first_frame_bilinear():
    d = np.arange(12, dtype=np.float64).reshape(3, 4) * 2.0      # d(x, y) = 2 x + 8 y
    flow = np.zeros((3, 4, 2))
    flow[..., 0] = 0.5
    flow[..., 1] = 1.0
    out = sf.warp_to_first_frame(d, flow)
    ys, xs = np.mgrid[0:3, 0:4]
    expected = 2 * np.clip(xs + 0.5, 0, 3) + 8 * np.clip(ys + 1.0, 0, 2)   # linear: exact
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_error_image_marks_outliers():
    gt = np.array([[10.0, 10.0, 0.0]])
    pred = np.array([[10.0, 20.0, 5.0]])
    img = sf.error_image(pred, gt)
    assert img.shape == (1, 3, 3)
    assert img[0, 2].sum() == 0.0                                  # invalid GT: black
    assert img[0, 1, 0] > img[0, 1, 2] and img[0, 0, 2] > img[0, 0, 0]   # red vs blue


# --- object motion --------------------------------------------------------------------------

def test_object_motion_error_on_constructed_fields():
    gt = np.zeros((2, 2, 6, 8, 3))                     # [N, NUM_SOURCES, H, W, 3]
    gt[:, :, 1:3, 2:6] = [1.0, 0.0, 0.0]               # one object moving 1 m along x
    pred = gt.copy()
    pred[:, :, 1:3, 2:6] += [0.0, 0.3, 0.4]            # error 0.5 m on all 16 moving pixels
    pred[:, :, 5, :] = [0.0, 0.0, 0.1]                 # 0.1 m on 8 static pixels per map
    res = object_motion.object_motion_error(pred, gt)
    n_maps = 4
    assert (res["n_moving"], res["n_static"]) == (8 * n_maps, 40 * n_maps)
    assert res["epe_moving"] == pytest.approx(0.5)
    assert res["epe_static"] == pytest.approx(0.1 * 8 / 40)
    assert res["rel_moving"] == pytest.approx(0.5)
    assert res["gt_norm_moving"] == pytest.approx(1.0)
    assert res["epe_all"] == pytest.approx((0.5 * 8 + 0.1 * 8) / 48)
    # A given mask with a trailing channel; the zero prediction's error is |r_gt|.
    moving = np.linalg.norm(gt, axis=-1, keepdims=True) > 0
    zero = object_motion.object_motion_error(np.zeros_like(gt), gt, moving=moving)
    assert zero["epe_moving"] == pytest.approx(1.0) and zero["epe_static"] == 0.0


def test_inlier_segmentation_iou_by_hand():
    inliers = np.zeros((3, 6, 8))
    inliers[0, 1:4, 1:4] = 0.9          # box 0: 9 inlier pixels, 3 of them outside its box
    inliers[1, 4:6, 5:8] = 0.6          # box 1: 6 pixels
    inliers[2, :, :] = 0.99             # padding row: ignored
    inliers[0, 5, 0] = 0.5              # exactly the threshold: not an inlier
    boxes = np.array([[1, 1, 3, 2], [4, 3, 7, 5], [0, 0, 7, 5]], np.float32)
    box_mask = np.array([1, 1, 0])
    pred = object_motion.inlier_segmentation(inliers, box_mask, boxes)
    assert pred.sum() == 6 + 6 and not pred[3, 1:4].any()
    gt = np.zeros((6, 8), bool)
    gt[1:3, 1:4] = True                 # 6 pixels = box 0's inliers
    gt[4, 4:8] = True                   # 4 pixels, 3 shared with box 1's
    res = object_motion.segmentation_iou([pred, pred], [gt, np.zeros_like(gt)])
    iou0 = (6 + 3) / (6 + 6 + 1)        # |P ∩ G| / |P ∪ G|
    assert res["per_image"][0] == pytest.approx(iou0) and res["per_image"][1] == 0.0
    assert res["iou_mean"] == pytest.approx(iou0 / 2)
    assert res["iou_pooled"] == pytest.approx(9 / (13 + 12))
    assert object_motion.inlier_segmentation(inliers, box_mask).sum() == 9 + 6   # no box clip


def test_cli_saved_model_mode_end_to_end(tmp_path):
    """The program: predict, align, write PNGs, evaluate, JSON with the contract keys."""
    base = np.tile(np.linspace(0, 255, W).astype(np.uint8), (H, 1))
    img = np.repeat(base[..., None], 3, -1)
    (tmp_path / "image_2").mkdir()
    for t in (10, 11):
        Image.fromarray(img).save(tmp_path / "image_2" / f"000000_{t}.png")
    gt = GT_SCALE / _depth_of(img)
    _write_set(tmp_path, "000000_10.png", gt, gt, np.zeros((H, W)))
    _save_depth_model(tmp_path / "model")
    out = tmp_path / "res" / "r.json"
    log = _run(["scene_flow", f"--saved_model={tmp_path / 'model'}",
                f"--image_dir={tmp_path / 'image_2'}", f"--gt_dir={tmp_path / 'gt'}",
                f"--pred_dir={tmp_path / 'pred'}", f"--output_json={out}",
                f"--plot_dir={tmp_path / 'plots'}", "--compare_paper"])
    js = json.loads(out.read_text())
    assert CONTRACT_KEYS <= set(js) and js["d1_all"] == 0.0 and js["d2_all"] == 0.0
    assert js["paper"]["d2_fg"] == 0.357 and "0.3570" in log        # Lee Table 4, D2 fg
    assert (tmp_path / "plots" / "000000_10_d1_error.png").is_file()
    assert not [p for p in out.parent.iterdir() if p.name != "r.json"]   # no temp file left
    assert js["scale_alignment"].startswith("per-image median")
    assert js["scale_per_image"]["000000_10.png"] == pytest.approx(
        GT_SCALE / (sf.KITTI_FX * sf.KITTI_BASELINE), rel=1e-3)
    assert js["d2_layout"].startswith("NOT the devkit's D2") and "NOT the devkit" in log
    assert (tmp_path / "pred" / "disp_1" / "000000_10.png").is_file()


def test_kitti2015_intrinsics_from_calib_file(tmp_path):
    from coopnet_tf import evaluate  # pylint: disable=import-outside-toplevel
    (tmp_path / "000007.txt").write_text(
        "calib_time: 09-Jan-2012 13:57:47\n"
        "S_rect_02: 1.242000e+03 3.750000e+02\n"
        "P_rect_02: 7.215377e+02 0.000000e+00 6.095593e+02 4.485728e+01 0.000000e+00 "
        "7.215377e+02 1.728540e+02 2.163791e-01 0.000000e+00 0.000000e+00 1.000000e+00 "
        "2.745884e-03\n")
    K = evaluate.kitti2015_intrinsics(str(tmp_path), "000007_10.png", (375, 1242), 1.0)
    np.testing.assert_allclose(K, [[721.5377, 0, 609.5593], [0, 721.5377, 172.854], [0, 0, 1]])
    with pytest.raises(InputError, match="S_rect_02 is 375x1242.*370x1224"):
        evaluate.kitti2015_intrinsics(str(tmp_path), "000007_10.png", (370, 1224), 1.0)
    with pytest.raises(InputError, match="000008.txt"):
        evaluate.kitti2015_intrinsics(str(tmp_path), "000008_10.png", (375, 1242), 1.0)
    K = evaluate.kitti2015_intrinsics(None, "000008_10.png", (5, 9), 100.0)
    np.testing.assert_allclose(K, [[100, 0, 4], [0, 100, 2], [0, 0, 1]])


def test_csac_inliers_segment_a_rigid_object():
    """Glue with losses.object_motion.csac_loss (Lee Table 5 path): one rigid vector on a
    near object inside its box, zero motion on the far background -> the thresholded
    inliers are exactly the object (IoU 1)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from coopnet_tf.losses.object_motion import csac_loss  # pylint: disable=import-outside-toplevel
    h, w = 16, 24
    obj = np.zeros((h, w), bool)
    obj[4:12, 6:14] = True
    depth = np.where(obj, 5.0, 20.0).astype(np.float32)
    residual = np.zeros((h, w, 3), np.float32)
    residual[obj] = [1.0, 0.0, 0.5]
    boxes = np.array([[[3, 2, 17, 13], [0, 0, 0, 0]]], np.float32)   # object + background
    box_mask = np.array([[1.0, 0.0]], np.float32)
    out = csac_loss(tf.constant(residual[None]), tf.constant(depth[None, ..., None]),
                    tf.constant(boxes), tf.constant(box_mask), seed=(1, 2))
    pred = object_motion.inlier_segmentation(out["inliers"].numpy()[0], box_mask[0], boxes[0])
    res = object_motion.segmentation_iou([pred], [obj])
    assert res["iou_mean"] == 1.0
