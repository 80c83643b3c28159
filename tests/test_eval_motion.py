"""Motion-segmentation IoU (coopnet_tf.eval.motion) as CC Table 6, and the CLI."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from coopnet_tf.eval import motion

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable] + args, cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


GT = np.array([[1, 1, 0, 0],
               [1, 0, 0, 0]], np.uint8)           # 3 moving, 5 static
PRED = np.array([[1, 0, 1, 0],
                 [1, 0, 0, 0]], np.float32)       # moving: TP 2, FP 1, FN 1


def test_iou_by_hand():
    res = motion.evaluate_motion([PRED], [GT])
    # moving: 2 / (2 + 1 + 1); static: TP 4 (pixels (0,3), (1,1), (1,2), (1,3)), FP 1, FN 1.
    assert res["iou_moving"] == pytest.approx(2 / 4)
    assert res["iou_static"] == pytest.approx(4 / 6)
    assert res["iou_mean"] == pytest.approx((2 / 4 + 4 / 6) / 2)
    assert res["counts"] == [[4, 1, 1], [2, 1, 1]]


def test_region_pooling_threshold_and_static_convention():
    region = np.array([[1, 1, 1, 0],
                       [1, 1, 0, 0]], bool)          # e.g. car pixels only
    res = motion.evaluate_motion([PRED], [GT], [region])
    # In the region: moving TP 2, FP 1 (0,2), FN 1 (0,1); static TP 1 (1,1), FP 1, FN 1.
    assert res["iou_moving"] == pytest.approx(0.5)
    assert res["iou_static"] == pytest.approx(1 / 3)
    assert res["n_pixels"] == 5
    # Counts are pooled over images (not a mean of per-image IoUs).
    res2 = motion.evaluate_motion([PRED, GT.astype(np.float32)], [GT, GT])
    assert res2["iou_moving"] == pytest.approx((2 + 3) / (2 + 3 + 1 + 1))
    # Soft masks: moving iff > 0.5; a static-probability mask is the complement.
    soft = np.where(PRED > 0, 0.8, 0.5).astype(np.float32)
    assert motion.evaluate_motion([soft], [GT])["iou_moving"] == pytest.approx(0.5)
    assert (motion.evaluate_motion([1.0 - PRED], [GT], pred_is_static=True)["counts"]
            == motion.evaluate_motion([PRED], [GT])["counts"])


def test_prediction_resized_nearest_to_gt():
    # scipy.ndimage.zoom(order=0) mapping (CC): src = round(dst (in - 1) / (out - 1)).
    rows = [0, 0, 0, 1, 1, 1]                        # 2 -> 6: 0.2 k
    cols = [0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3]      # 4 -> 12: 3 k / 11
    up = PRED[rows][:, cols]
    from coopnet_tf.eval.resize import resize_nearest  # pylint: disable=import-outside-toplevel
    np.testing.assert_array_equal(resize_nearest(PRED, 6, 12, mode="zoom"), up)
    gt = np.kron(GT, np.ones((3, 3), np.uint8))      # 6 x 12
    res = motion.evaluate_motion([PRED], [gt])
    assert res["counts"] == motion.confusion_counts(up > 0.5, gt > 0).tolist()


def test_cli_motion_npz_and_kitti_dirs(tmp_path):
    np.savez(tmp_path / "pred.npz", data=np.stack([PRED, PRED]))
    np.savez(tmp_path / "gt.npz", data=np.stack([GT, GT]))
    _run(["-m", "coopnet_tf.evaluate", "motion", f"--pred_masks={tmp_path / 'pred.npz'}",
          f"--gt_masks={tmp_path / 'gt.npz'}", f"--output_json={tmp_path / 'r.json'}",
          "--compare_paper"])
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["iou_moving"] == pytest.approx(0.5)
    assert res["iou_mean"] == pytest.approx((0.5 + 4 / 6) / 2)
    # KITTI 2015 layout: obj_map (> 0 = moving object) + semantic (26 = car), 8-bit PNGs.
    (tmp_path / "kitti" / "obj_map").mkdir(parents=True)
    (tmp_path / "sem").mkdir()
    Image.fromarray((GT * 3).astype(np.uint8)).save(tmp_path / "kitti" / "obj_map" / "000000_10.png")
    sem = np.where(np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool), 26, 7).astype(np.uint8)
    Image.fromarray(sem).save(tmp_path / "sem" / "000000_10.png")
    np.savez(tmp_path / "pred1.npz", data=PRED[None])
    _run(["-m", "coopnet_tf.evaluate", "motion", f"--pred_masks={tmp_path / 'pred1.npz'}",
          f"--gt_dir={tmp_path / 'kitti'}", f"--semantic_dir={tmp_path / 'sem'}",
          f"--output_json={tmp_path / 'r2.json'}", f"--plot_dir={tmp_path / 'plots'}"])
    res = json.loads((tmp_path / "r2.json").read_text())
    assert res["iou_moving"] == pytest.approx(0.5)
    assert res["iou_static"] == pytest.approx(1 / 3)
    assert res["region"] == "car pixels"
    assert (tmp_path / "plots" / "mask_0000.png").is_file()
