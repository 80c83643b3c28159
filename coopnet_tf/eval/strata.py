"""Depth and pose metrics that keep static and moving pixels apart, and paired intervals.

Pure numpy, for benchmarks on data with exact ground truth (the synthetic world). The
standard monocular protocol fits one scale per image on ALL pixels (median ratio), so an
error on moving objects leaks into the static score through the scale and vice versa.
Here the scale of every image comes from its STATIC pixels only:

* ``static_depth_scales`` / ``static_scaled_depth``: per image s = median(gt / ·) /
  median(pred / ·) over the static valid pixels; AbsRel, log-RMSE and δ<1.25 pooled over the static pixels and, with the
  same scale, over the moving pixels; the moving objects' depth bias = median of
  s·pred / gt over the moving pixels (1 = unbiased, < 1 = predicted too close — the
  classic failure of a rigid loss on objects moving with the camera);
* ``chained_trajectory_ate``: the whole test sequence chained from the predicted
  T_{k→k+1}, aligned to the ground truth by a 7-DoF Umeyama similarity, RMSE of the
  positions (metres);
* ``paired_interval``: the Student-t 95 % interval of the mean of per-seed paired
  differences (None with fewer than 2 seeds).
"""
import math
from typing import Dict, Optional, Sequence

import numpy as np

from coopnet_tf.eval import odometry

DELTA_THRESHOLD = 1.25


def _pooled(pred: np.ndarray, gt: np.ndarray) -> Dict[str, Optional[float]]:
    if pred.size == 0:
        return {"abs_rel": None, "log_rmse": None, "a1": None, "pixels": 0}
    ratio = np.maximum(pred / gt, gt / pred)
    log_d = np.log(pred) - np.log(gt)
    return {"abs_rel": float(np.mean(np.abs(pred - gt) / gt)),
            "log_rmse": float(np.sqrt(np.mean(log_d ** 2))),
            "a1": float(np.mean(ratio < DELTA_THRESHOLD)),
            "pixels": int(pred.size)}


def static_depth_scales(gt: np.ndarray, pred: np.ndarray, moving: np.ndarray,
                        min_depth: float = 1e-3, max_depth: float = 80.0) -> np.ndarray:
    """Per image, the scale s = median(gt) / median(pred) over its static valid pixels
    (GT depth in (min_depth, max_depth), not moving): `[N]` float64, NaN for an image
    without any. Shapes as `static_scaled_depth`'s."""
    gt = np.asarray(gt, np.float64)
    pred = np.asarray(pred, np.float64)
    moving = np.asarray(moving, bool)
    scales = np.full(len(gt), np.nan)
    for i in range(len(gt)):
        static = (gt[i] > min_depth) & (gt[i] < max_depth) & ~moving[i]
        if static.any():
            scales[i] = np.median(gt[i][static]) / np.median(pred[i][static])
    return scales


def static_scaled_depth(gt: np.ndarray, pred: np.ndarray, moving: np.ndarray,
                        min_depth: float = 1e-3, max_depth: float = 80.0) -> Dict[str, object]:
    """Depth errors with the per-image scale fitted on static pixels only.

    Args:
      gt: `[N, H, W]` ground-truth depth (m).
      pred: `[N, H, W]` predicted depth (any scale, > 0).
      moving: `[N, H, W]` bool, True = pixel on a moving object.
      min_depth, max_depth: valid GT range; predictions are clipped to it after scaling.

    Returns:
      {"static": {abs_rel, log_rmse, a1, pixels}, "moving": {... same, static scale},
      "moving_bias": median of scaled pred / gt on moving pixels (None without any),
      "images": images with at least one static valid pixel}.
    """
    gt = np.asarray(gt, np.float64)
    pred = np.asarray(pred, np.float64)
    moving = np.asarray(moving, bool)
    scales = static_depth_scales(gt, pred, moving, min_depth, max_depth)
    parts = {"static": ([], []), "moving": ([], [])}
    images = 0
    for i, scale in enumerate(scales):
        if np.isnan(scale):
            continue
        images += 1
        valid = (gt[i] > min_depth) & (gt[i] < max_depth)
        static = valid & ~moving[i]
        p = np.clip(pred[i] * scale, min_depth, max_depth)
        for name, m in (("static", static), ("moving", valid & moving[i])):
            parts[name][0].append(p[m])
            parts[name][1].append(gt[i][m])
    out: Dict[str, object] = {"images": images}
    for name, (ps, gs) in parts.items():
        p = np.concatenate(ps) if ps else np.zeros(0)
        g = np.concatenate(gs) if gs else np.zeros(0)
        out[name] = _pooled(p, g)
        if name == "moving":
            out["moving_bias"] = float(np.median(p / g)) if p.size else None
    return out


def chained_trajectory_ate(gt_relative: np.ndarray, pred_relative: np.ndarray) -> float:
    """ATE (m) of a whole trajectory chained from relative poses, 7-DoF aligned.

    Args:
      gt_relative, pred_relative: `[N, 4, 4]` T_{k→k+1} (camera k to camera k+1), as
        `odometry.chain_relative_poses` takes them.

    Returns:
      RMSE over the N + 1 camera positions after the Umeyama similarity alignment.
    """
    gt = odometry.chain_relative_poses(np.asarray(gt_relative, np.float64))
    pred = odometry.chain_relative_poses(np.asarray(pred_relative, np.float64))
    if np.allclose(pred[:, :3, 3], pred[:1, :3, 3], rtol=0.0, atol=1e-12):
        # no motion predicted (e.g. identity poses): the best similarity maps every
        # position to the GT centroid
        err = gt[:, :3, 3] - gt[:, :3, 3].mean(axis=0)
        return float(np.sqrt(np.mean(np.sum(err ** 2, axis=1))))
    aligned, _ = odometry.align_trajectory(pred, gt, mode="7dof")
    err = aligned[:, :3, 3] - gt[:, :3, 3]
    return float(np.sqrt(np.mean(np.sum(err ** 2, axis=1))))


def paired_interval(a: Sequence[Optional[float]], b: Sequence[Optional[float]],
                    confidence: float = 0.95) -> Dict[str, object]:
    """Mean and Student-t interval of the per-seed paired differences a − b.

    Pairs where either value is missing are dropped. With fewer than 2 pairs the interval
    is None ("n/a"): one seed says nothing about the spread.

    Returns:
      {"per_seed": [a_i − b_i], "n", "mean", "low", "high", "excludes_zero"} (low/high/
      excludes_zero None when n < 2).
    """
    diffs = [float(x) - float(y) for x, y in zip(a, b)
             if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
    n = len(diffs)
    out = {"per_seed": diffs, "n": n, "mean": float(np.mean(diffs)) if n else None,
           "low": None, "high": None, "excludes_zero": None}
    if n < 2:
        return out
    from scipy import stats  # pylint: disable=import-outside-toplevel
    half = float(stats.t.ppf(0.5 + confidence / 2.0, n - 1)
                 * np.std(diffs, ddof=1) / math.sqrt(n))
    out["low"], out["high"] = out["mean"] - half, out["mean"] + half
    out["excludes_zero"] = bool(out["low"] > 0.0 or out["high"] < 0.0)
    return out
