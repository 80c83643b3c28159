"""KITTI Scene Flow 2015 disparity metrics D1 and D2 (Lee et al. Table 4), numpy.

* A pixel is a disparity outlier iff `|d_pred - d_gt| > 3 px` AND `|d_pred - d_gt| > 5 %`
  of `d_gt` (both strict, as the devkit), on valid GT pixels (`d_gt > 0`).
* D1 compares the frame-t disparity (`pred_dir/disp_0/`) with `gt_dir/disp_occ_0/`; D2 the
  disparity at t+1 of the points seen in frame t, **in frame t's pixel layout**
  (`pred_dir/disp_1/` against `gt_dir/disp_occ_1/`), as the official devkit defines it.
* `fg` = pixels with `obj_map > 0` (the moving objects), `bg` = the rest, `all` = both.
* Aggregation as the devkit: outliers / valid pixels **pooled over all pixels of all
  images** (the `d*_*` keys); per-image rates are kept beside them.
* A prediction pixel stored as 0 (invalid in the devkit's PNG) on a valid GT pixel is
  compared as disparity 0 (an outlier whenever `d_gt > 3 px`) and counted in
  `n_pred_invalid`; the devkit instead fills such holes by background interpolation, so
  submit dense predictions.

Files: 16-bit grey PNGs `NNNNNN_10.png`, `d = value / 256`, 0 = invalid
(`kitti_flow_io.read_disp_png` / `write_disp_png`); `obj_map/` holds 8-bit object ids.
"""
import glob
import os

import numpy as np

from coopnet_tf.eval import kitti_flow_io
from coopnet_tf.eval.inputs import InputError

OUTLIER_ABS = 3.0
OUTLIER_REL = 0.05
REGIONS = ("bg", "fg", "all")
METRIC_NAMES = ("d1_bg", "d1_fg", "d1_all", "d2_bg", "d2_fg", "d2_all")
# metric -> (GT sub-directory, prediction sub-directory)
LAYOUT = {"d1": ("disp_occ_0", "disp_0"), "d2": ("disp_occ_1", "disp_1")}
OBJ_MAP_DIR = "obj_map"
# KITTI stereo rig: baseline of the colour cameras (m) and fx of P_rect_02 of the 2011_09_26
# recordings (px, 1242-wide images); other recording days differ slightly (see --calib_dir).
KITTI_BASELINE = 0.54
KITTI_FX = 721.5377


def disparity_outliers(pred, gt):
    """Devkit outlier rule on valid GT pixels.

    Args:
      pred: [H, W] predicted disparity (pixels; NaN / <= 0 read as 0).
      gt: [H, W] GT disparity (pixels; <= 0 = invalid).

    Returns:
      bool [H, W]: `gt > 0` and `err > 3 px` and `err > 5 % gt`, `err = |pred - gt|`.
    """
    pred = np.asarray(pred, np.float64)
    gt = np.asarray(gt, np.float64)
    pred = np.where(np.isfinite(pred) & (pred > 0), pred, 0.0)
    err = np.abs(pred - gt)
    return (gt > 0) & (err > OUTLIER_ABS) & (err > OUTLIER_REL * gt)


def disparity_counts(pred, gt, obj_map):
    """Outlier and valid-pixel counts of one image per region.

    Args:
      pred, gt: [H, W] disparities (see `disparity_outliers`).
      obj_map: [H, W] object ids (> 0 = foreground).

    Returns:
      dict `n_valid_{bg,fg,all}`, `n_outliers_{bg,fg,all}`, `n_pred_invalid` (valid GT
      pixels whose prediction is 0 / NaN / negative).
    """
    gt = np.asarray(gt, np.float64)
    pred = np.asarray(pred, np.float64)
    fg = np.asarray(obj_map) > 0
    valid = gt > 0
    bad = disparity_outliers(pred, gt)
    out = {}
    for region, sel in (("bg", valid & ~fg), ("fg", valid & fg), ("all", valid)):
        out[f"n_valid_{region}"] = int(np.count_nonzero(sel))
        out[f"n_outliers_{region}"] = int(np.count_nonzero(bad & sel))
    out["n_pred_invalid"] = int(np.count_nonzero(valid & ~(np.isfinite(pred) & (pred > 0))))
    return out


def rates(counts):
    """{bg, fg, all} outlier fractions from `disparity_counts` (summed) dicts; NaN if empty."""
    return {r: (counts[f"n_outliers_{r}"] / counts[f"n_valid_{r}"]
                if counts[f"n_valid_{r}"] else float("nan")) for r in REGIONS}


def sum_counts(counts_list):
    """Element-wise sum of `disparity_counts` dicts (the devkit's pooling)."""
    total = {}
    for c in counts_list:
        for k, v in c.items():
            total[k] = total.get(k, 0) + v
    return total


def list_gt_names(gt_dir):
    """Sorted `NNNNNN_10.png` names of `gt_dir/disp_occ_0/`.

    Raises:
      FileNotFoundError: a directory of the official layout is missing, or holds no PNG.
    """
    if not os.path.isdir(gt_dir):
        raise FileNotFoundError(f"ground-truth directory {gt_dir} not found")
    for sub in (LAYOUT["d1"][0], LAYOUT["d2"][0], OBJ_MAP_DIR):
        if not os.path.isdir(os.path.join(gt_dir, sub)):
            raise FileNotFoundError(
                f"{os.path.join(gt_dir, sub)} not found: --gt_dir must hold disp_occ_0/, "
                f"disp_occ_1/ and obj_map/ (KITTI Scene Flow 2015 training/)")
    d0 = os.path.join(gt_dir, LAYOUT["d1"][0])
    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(d0, "*_10.png")))
    if not names:
        raise FileNotFoundError(f"no NNNNNN_10.png files in {d0}")
    return names


def _read_checked(path, shape, ref_path, what):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"missing {what} {path} (needed for {os.path.basename(ref_path)})")
    if what == "object map":
        arr = kitti_flow_io.read_label_png(path)
    else:
        arr = kitti_flow_io.read_disp_png(path)[0]
    if shape is not None and arr.shape != shape:
        raise InputError(f"{path} is {arr.shape[0]}x{arr.shape[1]} (HxW) but {ref_path} is "
                         f"{shape[0]}x{shape[1]}: the {what} must have the ground truth's size")
    return arr


def evaluate_image(gt_dir, pred_dir, name):
    """D1 / D2 counts of one image (`name` = `NNNNNN_10.png`).

    Returns:
      dict metric ("d1" / "d2") -> `disparity_counts` dict.

    Raises:
      FileNotFoundError: naming a missing GT, object-map or prediction file.
      InputError: a file that is not a 16-bit grey disparity PNG, or of another size than
        `disp_occ_0/name` (both sizes named).
    """
    ref = os.path.join(gt_dir, LAYOUT["d1"][0], name)
    gt0 = _read_checked(ref, None, ref, "ground truth")
    obj = _read_checked(os.path.join(gt_dir, OBJ_MAP_DIR, name), gt0.shape, ref, "object map")
    out = {}
    for metric, (gt_sub, pred_sub) in LAYOUT.items():
        gt = gt0 if metric == "d1" else _read_checked(
            os.path.join(gt_dir, gt_sub, name), gt0.shape, ref, "ground truth")
        pred = _read_checked(os.path.join(pred_dir, pred_sub, name), gt0.shape, ref, "prediction")
        out[metric] = disparity_counts(pred, gt, obj)
    return out


def evaluate_scene_flow_dirs(gt_dir, pred_dir):
    """D1 and D2 (bg / fg / all) of devkit-format predictions against the official layout.

    Args:
      gt_dir: holds `disp_occ_0/`, `disp_occ_1/`, `obj_map/` with `NNNNNN_10.png` files.
      pred_dir: holds `disp_0/` and `disp_1/` with the same names, at the GT size.

    Returns:
      dict `d1_bg` ... `d2_all` (pooled fractions, the devkit's aggregation), `counts`
      (pooled pixel counts per metric), `per_image` (name and the six rates per image),
      `n_images`, `aggregation`, `outlier_rule`.

    Raises:
      FileNotFoundError: a directory or a file is missing (the first missing prediction is
        named, with the number missing).
      InputError: see `evaluate_image`; or no valid GT pixel at all.
    """
    if not os.path.isdir(pred_dir):
        raise FileNotFoundError(f"prediction directory {pred_dir} not found")
    names = list_gt_names(gt_dir)
    for _, pred_sub in LAYOUT.values():
        missing = [n for n in names if not os.path.isfile(os.path.join(pred_dir, pred_sub, n))]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(names)} predictions missing in "
                f"{os.path.join(pred_dir, pred_sub)}, first: "
                f"{os.path.join(pred_dir, pred_sub, missing[0])}")
    per_image, totals = [], {m: [] for m in LAYOUT}
    for name in names:
        counts = evaluate_image(gt_dir, pred_dir, name)
        entry = {"name": name}
        for metric, c in counts.items():
            totals[metric].append(c)
            entry.update({f"{metric}_{r}": v for r, v in rates(c).items()})
            entry[f"{metric}_n_valid"] = c["n_valid_all"]
        per_image.append(entry)
    result = {"n_images": len(names), "aggregation": "pooled over all pixels (devkit)",
              "outlier_rule": f"|d - d_gt| > {OUTLIER_ABS:g} px and > {100 * OUTLIER_REL:g} % "
                              f"of d_gt, on d_gt > 0; fg = obj_map > 0",
              "counts": {}, "per_image": per_image}
    for metric, lst in totals.items():
        pooled = sum_counts(lst)
        if pooled["n_valid_all"] == 0:
            raise InputError(f"no valid ground-truth pixel in {gt_dir}/{LAYOUT[metric][0]} "
                             f"({len(names)} files, all zero)")
        result["counts"][metric] = pooled
        result.update({f"{metric}_{r}": v for r, v in rates(pooled).items()})
    return result


# --- scale alignment and D2 layout (the --saved_model mode) --------------------------------

def median_scale(pred_disp, gt_disp):
    """Per-image scale `median(gt) / median(pred)` over valid GT pixels (`gt > 0`, finite
    positive prediction), the monocular convention (Monodepth2's median scaling on disparity).

    Returns:
      float scale (NaN when no pixel qualifies).
    """
    pred = np.asarray(pred_disp, np.float64)
    gt = np.asarray(gt_disp, np.float64)
    ok = (gt > 0) & np.isfinite(pred) & (pred > 0)
    if not ok.any():
        return float("nan")
    return float(np.median(gt[ok]) / np.median(pred[ok]))


def warp_to_first_frame(disp_next, flow):
    """Disparity of frame t+1 resampled into frame t's layout along a forward flow.

    `out(p) = disp_next(p + flow(p))` (bilinear, border clamp): the disparity at t+1 of the
    point that pixel p of frame t shows, which is what `disp_occ_1` stores.

    Args:
      disp_next: [H, W] disparity predicted in frame t+1's layout.
      flow: [H, W, 2] flow t -> t+1 (x, y pixels), e.g. a KITTI flow PNG of the method.

    Returns:
      float32 [H, W].
    """
    d = np.asarray(disp_next, np.float64)
    h, w = d.shape
    f = np.asarray(flow, np.float64)
    if f.shape != (h, w, 2):
        raise ValueError(f"flow {f.shape} does not match disparity {d.shape}")
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    x = np.clip(xs + f[..., 0], 0, w - 1)
    y = np.clip(ys + f[..., 1], 0, h - 1)
    x0 = np.minimum(np.floor(x).astype(np.int64), w - 2) if w > 1 else np.zeros_like(x, np.int64)
    y0 = np.minimum(np.floor(y).astype(np.int64), h - 2) if h > 1 else np.zeros_like(y, np.int64)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    ax, ay = x - x0, y - y0
    top = (1 - ax) * d[y0, x0] + ax * d[y0, x1]
    bottom = (1 - ax) * d[y1, x0] + ax * d[y1, x1]
    return ((1 - ay) * top + ay * bottom).astype(np.float32)


def disparity_after_motion(depth, transform, residual, intrinsics, fx_baseline):
    """Disparity at t+1 of the points of frame t, in frame t's layout, from the method's
    own depth and 3-D motion (Lee Sec. 3.2): `X_{t+1} = R (X_t + r) + t`.

    Args:
      depth: [H, W] depth of frame t (m, after any scale alignment).
      transform: [4, 4] camera motion t -> t+1 (maps frame-t points into camera t+1).
      residual: [H, W, 3] object motion r (m, frame-t camera); zeros for a rigid scene.
      intrinsics: [3, 3] K of the H x W image.
      fx_baseline: fx · baseline (px · m), disparity = fx_baseline / Z_{t+1}.

    Returns:
      float32 [H, W]; 0 (invalid) where the point is not in front of camera t+1.
    """
    depth = np.asarray(depth, np.float64)
    h, w = depth.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    pix = np.stack([xs, ys, np.ones_like(xs)], -1)
    points = (pix @ np.linalg.inv(np.asarray(intrinsics, np.float64)).T) * depth[..., None]
    T = np.asarray(transform, np.float64)
    moved = (points + np.asarray(residual, np.float64)) @ T[:3, :3].T + T[:3, 3]
    z = moved[..., 2]
    ok = np.isfinite(z) & (z > 1e-6)
    return np.where(ok, fx_baseline / np.where(ok, z, 1.0), 0.0).astype(np.float32)


# --- picture ---------------------------------------------------------------------------------

# Upper bounds of the normalised error `e = min(err / 3 px, err / (5 % d_gt))` (e > 1 is an
# outlier) and the colour of each bin: blue (small) -> red (outlier), as the devkit's maps.
_ERROR_BINS = np.array([0.0625, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, np.inf])
_ERROR_COLOURS = np.array([
    [0.19, 0.21, 0.58], [0.27, 0.46, 0.71], [0.45, 0.68, 0.82], [0.67, 0.85, 0.91],
    [0.88, 0.95, 0.97], [1.00, 1.00, 0.75], [1.00, 0.88, 0.56], [0.99, 0.68, 0.38],
    [0.96, 0.43, 0.26], [0.84, 0.19, 0.15]], np.float32)


def error_image(pred, gt):
    """Colour map of the disparity error on valid GT pixels (devkit-style).

    Args:
      pred, gt: [H, W] disparities.

    Returns:
      float32 [H, W, 3] RGB in [0, 1]: the bin of `e = min(err / 3, err / (0.05 d_gt))`
      (blue e <= 1/16 ... light yellow just above 1 = outlier ... red e > 16); black where
      the GT is invalid.
    """
    pred = np.asarray(pred, np.float64)
    gt = np.asarray(gt, np.float64)
    valid = gt > 0
    pred = np.where(np.isfinite(pred) & (pred > 0), pred, 0.0)
    err = np.abs(pred - gt)
    e = np.minimum(err / OUTLIER_ABS, err / np.maximum(OUTLIER_REL * gt, 1e-12))
    idx = np.searchsorted(_ERROR_BINS, e, side="left")
    img = _ERROR_COLOURS[np.minimum(idx, len(_ERROR_COLOURS) - 1)]
    img[~valid] = 0.0
    return img
