"""Single-view depth evaluation: KITTI Eigen split and Cityscapes (docs/decisions.md E1, E2).

Follows Monodepth2's `evaluate_depth.py` (and ManyDepth's Cityscapes branch):

1. the predicted disparity (network resolution) is resized bilinearly (cv2 convention) to
   the ground-truth size and inverted: `pred_depth = 1 / disp`;
2. mask: `min_depth < gt < max_depth` (1e-3, 80 m) and, for KITTI, the Garg crop;
   for Cityscapes the GT (and the prediction) lose the bottom 25 % (ego car) and only the
   middle crop rows 256:768, cols 192:1856 of the 768×2048 image is kept;
3. optional global scale factor, then per-image median scaling
   `pred *= median(gt) / median(pred)` over the valid pixels;
4. clamp the prediction to [min_depth, max_depth] (after scaling);
5. the 7 metrics per image over the valid pixels, then averaged over images.

Everything here is numpy; no TensorFlow.
"""
import json
import os

import numpy as np

from coopnet_tf.eval.resize import resize_bilinear

MIN_DEPTH = 1e-3
MAX_DEPTH = 80.0

METRIC_NAMES = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")

# Garg et al. crop as fractions of the GT size: rows [top, bottom), cols [left, right).
GARG_CROP = (0.40810811, 0.99189189, 0.03594771, 0.96405229)

# Cityscapes (Li et al. 2020 / ManyDepth): keep the top 75 % of rows (hood removed), then
# evaluate rows 256:768 and cols 192:1856 of the 768x2048 result.
CITYSCAPES_HOOD_KEEP = 0.75
CITYSCAPES_EVAL_CROP = (256.0 / 768.0, 1.0, 192.0 / 2048.0, 1856.0 / 2048.0)

PROTOCOLS = ("eigen", "cityscapes", "full")


def garg_crop_bounds(height, width):
    """Garg crop bounds, Monodepth2's arithmetic (`np.array(...).astype(np.int32)`).

    Args:
      height, width: ground-truth size.

    Returns:
      (top, bottom, left, right) so that rows top:bottom and cols left:right are kept.
      For 375x1242: (153, 371, 44, 1197).
    """
    crop = np.array([GARG_CROP[0] * height, GARG_CROP[1] * height,
                     GARG_CROP[2] * width, GARG_CROP[3] * width]).astype(np.int32)
    return tuple(int(c) for c in crop)


def garg_crop_mask(height, width):
    """bool [height, width], True inside the Garg crop."""
    top, bottom, left, right = garg_crop_bounds(height, width)
    mask = np.zeros((height, width), bool)
    mask[top:bottom, left:right] = True
    return mask


def cityscapes_hood_rows(height):
    """Rows kept after removing the ego-vehicle hood: `int(round(0.75 * height))`."""
    return int(round(height * CITYSCAPES_HOOD_KEEP))


def cityscapes_eval_bounds(height, width):
    """Evaluation crop (rows top:bottom, cols left:right) of the hood-cropped image.

    For 768x2048 this is exactly (256, 768, 192, 1856).
    """
    f = CITYSCAPES_EVAL_CROP
    return (int(round(f[0] * height)), int(round(f[1] * height)),
            int(round(f[2] * width)), int(round(f[3] * width)))


def cityscapes_gt_is_full_frame(gt_depth):
    """True when a Cityscapes GT map still has its hood (aspect H/W = 1/2, e.g. 1024x2048).

    Hood-cropped maps (768x2048, aspect 3/8) are used as they are.
    """
    h, w = gt_depth.shape[:2]
    return abs(h / w - 0.5) < 1e-3


def compute_depth_errors(gt, pred):
    """The 7 standard depth metrics over matched valid pixels (Monodepth2 `compute_errors`).

    Args:
      gt: [P] ground-truth depths (> 0).
      pred: [P] predicted depths (> 0), already scaled and clamped.

    Returns:
      dict abs_rel, sq_rel, rmse, rmse_log, a1, a2, a3 (floats). δ thresholds are strict
      (`max(gt/pred, pred/gt) < 1.25^k`).
    """
    gt = np.asarray(gt, np.float64)
    pred = np.asarray(pred, np.float64)
    thresh = np.maximum(gt / pred, pred / gt)
    diff = gt - pred
    return {
        "abs_rel": float(np.mean(np.abs(diff) / gt)),
        "sq_rel": float(np.mean(diff ** 2 / gt)),
        "rmse": float(np.sqrt(np.mean(diff ** 2))),
        "rmse_log": float(np.sqrt(np.mean((np.log(gt) - np.log(pred)) ** 2))),
        "a1": float(np.mean(thresh < 1.25)),
        "a2": float(np.mean(thresh < 1.25 ** 2)),
        "a3": float(np.mean(thresh < 1.25 ** 3)),
    }


def post_process_disparity(d, d_flipped):
    """Monodepth2 flip post-processing (`batch_post_process_disparity`).

    Args:
      d: [..., H, W] disparity of the image.
      d_flipped: [..., H, W] disparity predicted for the horizontally flipped image, as
        the network returned it (still flipped); it is flipped back here.

    Returns:
      [..., H, W]: the mean of both in the centre; within the outer 5 % of columns on each
      side only the prediction that saw that border with its full context is used (ramp
      `1 - clip(20 (l - 0.05), 0, 1)`, l = column position in [0, 1]).
    """
    d = np.asarray(d, np.float32)
    r = np.asarray(d_flipped, np.float32)[..., ::-1]
    h, w = d.shape[-2:]
    l, _ = np.meshgrid(np.linspace(0, 1, w), np.linspace(0, 1, h))
    l_mask = (1.0 - np.clip(20.0 * (l - 0.05), 0.0, 1.0)).astype(np.float32)
    r_mask = l_mask[:, ::-1]
    m = 0.5 * (d + r)
    return r_mask * d + l_mask * r + (1.0 - l_mask - r_mask) * m


def prepare_depth_pair(gt_depth, pred_disp, protocol="eigen",
                       min_depth=MIN_DEPTH, max_depth=MAX_DEPTH):
    """GT map + network disparity -> matched valid depths (before scaling).

    Args:
      gt_depth: [H, W] ground-truth depth (0 = no measurement).
      pred_disp: [h, w] predicted disparity at network resolution (any positive scale).
      protocol: "eigen" (Garg crop), "cityscapes" (hood + middle crop) or "full" (range
        mask only).
      min_depth, max_depth: valid GT range (exclusive).

    Returns:
      (gt [P], pred_depth [P]) float64 over the valid pixels.
    """
    gt = np.asarray(gt_depth, np.float32)
    disp = np.asarray(pred_disp, np.float32)
    if disp.ndim == 3:
        disp = disp[..., 0] if disp.shape[-1] == 1 else disp[0]
    if protocol == "cityscapes" and cityscapes_gt_is_full_frame(gt):
        gt = gt[:cityscapes_hood_rows(gt.shape[0])]
    h, w = gt.shape
    disp = resize_bilinear(disp, h, w)
    pred = 1.0 / np.maximum(disp.astype(np.float64), 1e-12)
    if protocol == "cityscapes":
        top, bottom, left, right = cityscapes_eval_bounds(h, w)
        gt = gt[top:bottom, left:right]
        pred = pred[top:bottom, left:right]
    mask = (gt > min_depth) & (gt < max_depth)
    if protocol == "eigen":
        mask &= garg_crop_mask(h, w)
    elif protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}, expected one of {PROTOCOLS}")
    return gt[mask].astype(np.float64), pred[mask]


def evaluate_depth(gt_depths, pred_disps, protocol="eigen", median_scaling=True,
                   pred_depth_scale_factor=1.0, min_depth=MIN_DEPTH, max_depth=MAX_DEPTH,
                   return_per_image=False):
    """Evaluates predicted disparities against ground-truth depth maps.

    Args:
      gt_depths: sequence of N [H_i, W_i] depth maps (or an [N, H, W] array).
      pred_disps: [N, h, w] (or [N, h, w, 1]) disparities at network resolution
        (Monodepth2's `disps.npy`).
      protocol: "eigen", "cityscapes" or "full" (see `prepare_depth_pair`).
      median_scaling: per-image median scaling (monocular methods).
      pred_depth_scale_factor: global factor applied before median scaling (e.g. 5.4 for
        stereo-trained models evaluated without median scaling).
      min_depth, max_depth: GT range and prediction clamp.
      return_per_image: also return the per-image metric dicts under "per_image".

    Returns:
      dict with the 7 metrics (means over images), n_images, n_skipped (images with no
      valid GT pixel), and with median scaling: scale_ratio_median (median of the per-image
      ratios), scale_ratio_std (std of ratios / their median, Monodepth2's printout),
      scale_ratio_mean.
    """
    n = len(gt_depths)
    if len(pred_disps) != n:
        raise ValueError(f"{len(pred_disps)} predictions for {n} ground-truth maps")
    errors, ratios, per_image = [], [], []
    skipped = 0
    for i in range(n):
        gt, pred = prepare_depth_pair(gt_depths[i], pred_disps[i], protocol, min_depth, max_depth)
        if gt.size == 0:
            skipped += 1
            per_image.append(None)
            continue
        pred = pred * pred_depth_scale_factor
        if median_scaling:
            ratio = np.median(gt) / np.median(pred)
            ratios.append(ratio)
            pred = pred * ratio
        pred = np.clip(pred, min_depth, max_depth)
        e = compute_depth_errors(gt, pred)
        errors.append([e[k] for k in METRIC_NAMES])
        per_image.append(e)
    if not errors:
        raise ValueError("no image has a valid ground-truth pixel")
    mean = np.mean(np.asarray(errors), axis=0)
    result = {k: float(v) for k, v in zip(METRIC_NAMES, mean)}
    result.update(protocol=protocol, median_scaling=bool(median_scaling),
                  n_images=n - skipped, n_skipped=skipped,
                  min_depth=float(min_depth), max_depth=float(max_depth))
    if median_scaling:
        r = np.asarray(ratios)
        med = float(np.median(r))
        result.update(scale_ratio_median=med, scale_ratio_std=float(np.std(r / med)),
                      scale_ratio_mean=float(np.mean(r)))
    if return_per_image:
        result["per_image"] = per_image
    return result


def load_gt_depths(path):
    """Loads Monodepth2's `gt_depths.npz` (key `data`: object array or [N, H, W]).

    Returns:
      list of float32 [H_i, W_i] arrays.
    """
    with np.load(path, allow_pickle=True, encoding="latin1") as f:
        if "data" not in f:
            raise KeyError(f"{path}: expected key 'data', found {list(f.keys())}")
        data = f["data"]
    return [np.asarray(d, np.float32) for d in data]


def load_pred_disps(path):
    """Loads predicted disparities [N, h, w] (.npy; [N, h, w, 1] / [N, 1, h, w] squeezed).

    A .npz is read from key `data` (or its only array).
    """
    if os.fspath(path).endswith(".npz"):
        with np.load(path, allow_pickle=True) as f:
            key = "data" if "data" in f else list(f.keys())[0]
            arr = f[key]
    else:
        arr = np.load(path, allow_pickle=True)
    arr = np.asarray(arr, np.float32)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    elif arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3:
        raise ValueError(f"{path}: expected disparities [N, h, w], got shape {arr.shape}")
    return arr


# --- Cityscapes ground truth from the dataset's disparity files ----------------------

def cityscapes_disparity_to_depth(disparity_png, fx, baseline):
    """Cityscapes disparity PNG values -> depth (m).

    Args:
      disparity_png: uint16 [H, W] raw PNG values; `disp = (p - 1) / 256` for p > 0.
      fx: focal length in pixels (camera json `intrinsic.fx`).
      baseline: stereo baseline in metres (camera json `extrinsic.baseline`).

    Returns:
      float32 [H, W] depth, 0 where the disparity is invalid (p = 0 or disp <= 0).
    """
    p = np.asarray(disparity_png, np.float64)
    disp = (p - 1.0) / 256.0
    valid = (p > 0) & (disp > 0)
    depth = np.where(valid, baseline * fx / np.where(valid, disp, 1.0), 0.0)
    return depth.astype(np.float32)


def read_cityscapes_camera(path):
    """(fx, baseline) from a Cityscapes `camera/*.json` file."""
    with open(path, encoding="utf-8") as f:
        cam = json.load(f)
    return float(cam["intrinsic"]["fx"]), float(cam["extrinsic"]["baseline"])
