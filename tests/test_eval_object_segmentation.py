"""Object segmentation from CSAC's inliers (Lee Table 5): `eval.object_motion.csac_object_mask`,
`instance_boxes`, and `python -m coopnet_tf.evaluate object_segmentation` in its --pred_masks
and --saved_model modes on a KITTI 2015-layout directory written here."""
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from coopnet_tf.eval import object_motion
from coopnet_tf.eval.inputs import InputError

REPO = pathlib.Path(__file__).resolve().parents[1]
LEFT = np.array([1.0, 0.0, 0.5])     # the majority motion of object A
RIGHT = np.array([-1.0, 0.0, 0.2])   # the minority motion of A (not an inlier of LEFT)


def _run(args, expect_ok=True):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "coopnet_tf.evaluate", "object_segmentation"]
                          + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert (proc.returncode == 0) == expect_ok, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def _iou(p, g):
    return np.count_nonzero(p & g) / np.count_nonzero(p | g)


# --- the library function ------------------------------------------------------------------

def test_csac_object_mask_rigid_object_and_zero_field():
    """Image 0: flat depth, one rigid vector on the object's 64 pixels of its 100-pixel box
    (zero elsewhere) -> the mask is the object (IoU 1); a padding row with a box over the
    whole image changes nothing. Image 1: zero field, a near square and a far rest in the
    box -> every pixel is an inlier of the zero hypothesis: the mask is the box's Otsu
    foreground, the near pixels inside the box; a second box is united with it."""
    h, w = 16, 24
    obj = np.zeros((h, w), bool)
    obj[3:11, 4:12] = True
    depth = np.stack([np.full((h, w), 10.0), np.full((h, w), 30.0)])
    near = np.zeros((h, w), bool)
    near[8:14, 14:20] = True
    depth[1][near] = 6.0
    residual = np.zeros((2, h, w, 3), np.float32)
    residual[0][obj] = [0.3, -0.1, 0.8]
    boxes = np.array([[[3, 2, 12, 11], [0, 0, w - 1, h - 1]],
                      [[12, 6, 21, 15], [0, 0, 2, 2]]], np.float32)
    box_mask = np.array([[1, 0], [1, 1]], np.float32)
    masks = object_motion.csac_object_mask(residual, depth, boxes, box_mask, seed=(3, 4))
    assert masks.shape == (2, h, w) and masks.dtype == bool
    assert _iou(masks[0], obj) == 1.0
    box1 = np.zeros((h, w), bool)
    box1[6:16, 12:22] = True
    corner = np.zeros((h, w), bool)
    corner[0:3, 0:3] = True                        # the second box: flat, all foreground
    np.testing.assert_array_equal(masks[1], (near & box1) | corner)
    # no real box: nothing is object
    none = object_motion.csac_object_mask(residual[:1], depth[:1], np.zeros((1, 0, 4)),
                                          np.zeros((1, 0)))
    assert none.shape == (1, h, w) and not none.any()


def test_instance_boxes_equal_a_numpy_bounding_box():
    rng = np.random.default_rng(5)
    ids = np.zeros((30, 50), np.int32)
    for k, (y, x) in zip((3, 1, 7), ((5, 8), (20, 30), (12, 40))):   # irregular blobs
        blob = rng.random((8, 9)) > 0.4
        blob[0, 0] = blob[-1, -1] = True
        ids[y:y + 8, x:x + 9][blob] = k
    got = object_motion.instance_boxes(ids)
    want = []
    for k in (1, 3, 7):
        rows, cols = np.any(ids == k, axis=1), np.any(ids == k, axis=0)
        want.append([np.argmax(cols), np.argmax(rows), len(cols) - 1 - np.argmax(cols[::-1]),
                     len(rows) - 1 - np.argmax(rows[::-1])])
    np.testing.assert_array_equal(got, want)
    assert object_motion.instance_boxes(np.zeros((4, 4))).shape == (0, 4)


# --- --pred_masks mode -----------------------------------------------------------------------

def _write_obj_map(root, name, ids):
    (root / "obj_map").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(ids, np.uint8)).save(root / "obj_map" / name)


def test_cli_pred_masks_against_numpy_iou(tmp_path):
    """Masks at half the GT size are upsampled by nearest neighbour (np.repeat by 2) and
    compared with obj_map > 0; per-image, mean and pooled IoU by hand; an image with no
    object and an empty mask is left out of the mean."""
    rng = np.random.default_rng(0)
    gts = [rng.integers(0, 3, (10, 14)) * (rng.random((10, 14)) > 0.5) for _ in range(2)]
    gts.append(np.zeros((10, 14), np.int64))
    low = [rng.random((5, 7)) for _ in range(2)] + [np.zeros((5, 7))]
    for i, g in enumerate(gts):
        _write_obj_map(tmp_path / "gt", f"{i:06d}_10.png", g)
    np.savez(tmp_path / "pred.npz", data=np.stack(low))
    out = tmp_path / "res" / "seg.json"
    log = _run([f"--gt_dir={tmp_path / 'gt'}", f"--pred_masks={tmp_path / 'pred.npz'}",
                f"--output_json={out}", f"--plot_dir={tmp_path / 'plots'}", "--compare_paper"])
    js = json.loads(out.read_text())
    preds = [np.repeat(np.repeat(m, 2, 0), 2, 1) > 0.5 for m in low]
    ious = [_iou(p, g > 0) for p, g in zip(preds[:2], gts[:2])]
    assert [e["iou"] for e in js["per_image"][:2]] == pytest.approx(ious)
    assert js["per_image"][2] == {"name": "000002_10.png", "iou": None}
    assert js["iou_mean"] == pytest.approx(np.mean(ious)) and js["n_images"] == 3
    inter = sum(np.count_nonzero(p & (g > 0)) for p, g in zip(preds, gts))
    union = sum(np.count_nonzero(p | (g > 0)) for p, g in zip(preds, gts))
    assert js["iou_pooled"] == pytest.approx(inter / union)
    assert js["threshold"] == 0.5 and js["box_source"].startswith("unknown")
    assert js["paper"]["iou_mean"] == 0.813 and "0.8130" in log
    assert (tmp_path / "plots" / "000000_10_segmentation.png").is_file()
    assert not [p for p in out.parent.iterdir() if p.name != "seg.json"]   # no temp file

    np.savez(tmp_path / "short.npz", data=np.stack(low[:2]))
    msg = _run([f"--gt_dir={tmp_path / 'gt'}", f"--pred_masks={tmp_path / 'short.npz'}"],
               expect_ok=False)
    assert "short.npz: 2 masks for the 3 object maps" in msg
    msg = _run([f"--gt_dir={tmp_path / 'none'}", f"--pred_masks={tmp_path / 'pred.npz'}"],
               expect_ok=False)
    assert "none/obj_map: no object maps" in msg


# --- --saved_model mode ----------------------------------------------------------------------
# Full images 32x64, networks 16x32 (boxes and K scaled by 1/2, masks upsampled by 2).
# Colour code of the test images: red = near (depth 5 m, else 20 m); green = moving;
# blue = moving with RIGHT instead of LEFT.

FULL, NET, FX = (32, 64), (16, 32), 100.0


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny SavedModels with the signatures of specs.EXPORT_DEPTH / EXPORT_OBJECT_MOTION
    (depth from red; residual from green and blue; the motion model fails unless it gets
    the K of --fx=100 scaled to the network size). Returns their parent directory."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    root = tmp_path_factory.mktemp("models")
    spec = tf.TensorSpec([None, NET[0], NET[1], 3], tf.float32)
    # K of --fx=100 (principal point at the full image's centre) scaled to the network size.
    k_net = np.array([[FX / 2, 0, 63 / 2 / 2], [0, FX / 2, 31 / 2 / 2], [0, 0, 1]], np.float32)

    class Depth(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec.from_spec(spec, name="image")])
        def serve(self, image):
            depth = tf.where(image[..., :1] > 0.5, 5.0, 20.0)
            return {"depth": depth, "disparity": 1.0 / depth}

    class Motion(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec.from_spec(spec, name="image_a"),
                                      tf.TensorSpec.from_spec(spec, name="image_b"),
                                      tf.TensorSpec([None, 3, 3], tf.float32, name="intrinsics")])
        def serve(self, image_a, image_b, intrinsics):
            tf.debugging.assert_near(intrinsics, k_net[None], atol=1e-4,
                                     message="intrinsics not scaled to the network size")
            moving = tf.cast(image_a[..., 1:2] > 0.5, tf.float32)
            right = tf.cast(image_a[..., 2:3] > 0.5, tf.float32)
            residual = moving * ((1.0 - right) * LEFT + right * RIGHT) + 0.0 * image_b[..., :1]
            b = tf.shape(image_a)[0]
            return {"pose_vector": tf.zeros([b, 6]), "transform": tf.eye(4, batch_shape=[b]),
                    "residual": tf.cast(residual, tf.float32)}

    for name, module in (("depth", Depth()), ("object_motion", Motion())):
        tf.saved_model.save(module, str(root / name), signatures={"serving_default": module.serve})
    return root


def _write_dataset(root):
    """Image 0: object A (instance 1, rows 8-23, cols 8-39: 20 columns LEFT, 12 RIGHT) and
    a near static region C (not in obj_map, rows 0-5, cols 50-61). Image 1: a near static
    object B (instance 4, rows 16-27, cols 44-59). Every region is aligned to 2x2 blocks."""
    gt, images = [], []
    for _ in range(2):
        gt.append(np.zeros(FULL, np.uint8))
        images.append(np.zeros(FULL + (3,), np.uint8))
    gt[0][8:24, 8:40] = 1
    images[0][8:24, 8:40] = (255, 255, 0)
    images[0][8:24, 28:40, 2] = 255
    images[0][0:6, 50:62, 0] = 255
    gt[1][16:28, 44:60] = 4
    images[1][16:28, 44:60, 0] = 255
    (root / "image_2").mkdir(parents=True)
    for i, (ids, image) in enumerate(zip(gt, images)):
        _write_obj_map(root, f"{i:06d}_10.png", ids)
        for t in (10, 11):
            Image.fromarray(image).save(root / "image_2" / f"{i:06d}_{t}.png")
    left = np.zeros(FULL, bool)
    left[8:24, 8:28] = True
    return gt, left


def test_cli_saved_model_mode_end_to_end(tmp_path, models):
    """Box prior = the obj_map instances: A's mask is its LEFT part (the best hypothesis),
    IoU 20/32; B, static and near, is its box's whole Otsu foreground, IoU 1. The saved
    masks re-evaluated with --pred_masks give the same numbers."""
    gt, left = _write_dataset(tmp_path)
    out, saved = tmp_path / "seg.json", tmp_path / "masks.npz"
    log = _run([f"--gt_dir={tmp_path}", f"--saved_model={models / 'depth'}",
                f"--motion_model={models / 'object_motion'}", f"--fx={FX}",
                f"--output_json={out}", f"--save_pred_masks={saved}"])
    js = json.loads(out.read_text())
    assert [e["iou"] for e in js["per_image"]] == pytest.approx([20 / 32, 1.0])
    assert js["iou_mean"] == pytest.approx((20 / 32 + 1.0) / 2)
    inter = np.count_nonzero(left) + np.count_nonzero(gt[1])
    assert js["iou_pooled"] == pytest.approx(inter / (np.count_nonzero(gt[0]) + 12 * 16))
    assert js["box_source"].startswith("GT instances") and js["n_boxes"] == [1, 1]
    assert js["network_size"] == list(NET) and "wrote 2 masks" in log
    with np.load(saved) as f:
        masks = f["data"]
    assert masks.shape == (2,) + NET
    np.testing.assert_array_equal(masks[0], left[::2, ::2])
    again = tmp_path / "again.json"
    _run([f"--gt_dir={tmp_path}", f"--pred_masks={saved}", f"--output_json={again}"])
    assert json.loads(again.read_text())["per_image"] == js["per_image"]


def test_boxes_dir_classes_and_predicted_masks(tmp_path, models):
    """--boxes_dir: a KITTI label file (a Car box with background margin around A, a
    Pedestrian box around C, a DontCare line) and a detector JSON (B's box in the corner
    convention). The Car filter keeps A's box: its Otsu foreground is A, the mask A's LEFT
    part; all classes add C (near, static: the whole Otsu foreground of its box)."""
    from coopnet_tf import evaluate  # pylint: disable=import-outside-toplevel
    gt, left = _write_dataset(tmp_path)
    boxes_dir = tmp_path / "boxes"
    boxes_dir.mkdir()
    (boxes_dir / "000000_10.txt").write_text(
        "Car 0.00 0 -1.5 4.0 4.0 45.0 27.0 1.5 1.6 3.9 1.0 1.7 10.0 0.0\n"
        "Pedestrian 0.00 0 0.2 48.0 0.0 63.0 9.0 1.7 0.6 0.8 5.0 1.6 20.0 0.0\n"
        "DontCare -1 -1 -10 0.0 20.0 30.0 31.0 -1 -1 -1 -1000 -1000 -1000 -10\n")
    (boxes_dir / "000001_10.json").write_text(
        json.dumps({"boxes": [{"box": [44, 16, 60, 28], "class": "car", "score": 0.9}]}))
    near_c = np.zeros(FULL, bool)
    near_c[0:6, 50:62] = True
    depth_sig = evaluate.load_signature(str(models / "depth"))
    motion_sig = evaluate.load_signature(str(models / "object_motion"))
    k_full = evaluate.kitti2015_intrinsics(None, "000000_10.png", FULL, FX)
    pairs = [(str(tmp_path / "image_2" / f"{i:06d}_10.png"),
              str(tmp_path / "image_2" / f"{i:06d}_11.png")) for i in range(2)]
    for classes, want0 in (([0, 1, 2], left), (None, left | near_c)):   # Car,Van,Truck; all
        boxes = [evaluate.segmentation_boxes(str(boxes_dir), f"{i:06d}_10.png", classes, FULL)
                 for i in range(2)]
        assert [len(b) for b in boxes] == ([1, 1] if classes else [2, 1])
        masks = evaluate.predict_object_masks(depth_sig, motion_sig, pairs, boxes, NET[0],
                                              NET[1], 2, [k_full, k_full])
        np.testing.assert_array_equal(masks[0], want0[::2, ::2])
        np.testing.assert_array_equal(masks[1], gt[1][::2, ::2] > 0)
    np.testing.assert_allclose(boxes[1], [[43.5, 15.5, 59.5, 27.5]])   # corner -> centre


def test_errors_name_the_file(tmp_path):
    from coopnet_tf import evaluate  # pylint: disable=import-outside-toplevel
    _write_dataset(tmp_path)
    (tmp_path / "boxes").mkdir()
    with pytest.raises(InputError, match=r"missing box file .*boxes/000000_10\.txt or \.json"):
        evaluate.segmentation_boxes(str(tmp_path / "boxes"), "000000_10.png", None, FULL)
    (tmp_path / "boxes" / "000000_10.txt").write_text("Car 0 0 0 5 5 4\n")
    with pytest.raises(InputError, match=r"000000_10\.txt:1: a KITTI label line needs"):
        evaluate.segmentation_boxes(str(tmp_path / "boxes"), "000000_10.png", None, FULL)
    (tmp_path / "boxes" / "000000_10.json").write_text("[]")
    with pytest.raises(InputError, match="two box files"):
        evaluate.segmentation_boxes(str(tmp_path / "boxes"), "000000_10.png", None, FULL)

    models = [f"--saved_model={tmp_path / 'absent'}", f"--motion_model={tmp_path / 'absent'}"]
    os.remove(tmp_path / "image_2" / "000001_11.png")
    msg = _run([f"--gt_dir={tmp_path}"] + models, expect_ok=False)
    assert "missing image" in msg and "image_2/000001_11.png" in msg
    Image.fromarray(np.zeros((30, 64, 3), np.uint8)).save(tmp_path / "image_2" / "000001_11.png")
    msg = _run([f"--gt_dir={tmp_path}"] + models, expect_ok=False)
    assert "000001_11.png is 30x64 but" in msg and "obj_map/000001_10.png is 32x64" in msg
    msg = _run([f"--gt_dir={tmp_path}", f"--boxes_dir={tmp_path / 'boxes'}"] + models,
               expect_ok=False)
    assert "two box files" in msg
    msg = _run([f"--gt_dir={tmp_path}", "--box_classes=Car,Bus",
                f"--boxes_dir={tmp_path / 'boxes'}"] + models, expect_ok=False)
    assert "unknown class 'Bus'" in msg


def test_help_lists_the_subcommand_and_its_flags():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "coopnet_tf.evaluate", "--help"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert "object_segmentation --gt_dir" in proc.stdout, proc.stderr
    listed = set(re.findall(r"^\s+--(?:\[no\])?(\w+):", proc.stdout, re.MULTILINE))
    assert {"boxes_dir", "box_classes", "save_pred_masks", "pred_masks", "motion_model",
            "calib_dir", "mask_threshold"} <= listed
