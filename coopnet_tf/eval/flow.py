"""Optical-flow evaluation on KITTI 2015 (docs/decisions.md E4).

* EPE per image = mean over valid GT pixels of `|f_pred - f_gt|_2`; "noc" uses
  `flow_noc`, "all" uses `flow_occ`; the reported number is the mean over images
  (GeoNet / UnDepthflow / CC). The pooled variant (all valid pixels of all images
  together) is reported alongside under `*_pooled` keys.
* Fl: a pixel is an outlier iff `EPE > 3 px` AND `EPE / |f_gt| > 5 %`.
  `fl_all` (a fraction in [0, 1]) is computed **per image and averaged over images**, as
  GeoNet/UnDepthflow do; `fl_all_pooled` is outliers / valid pixels pooled over the whole
  set (the aggregation of the official KITTI devkit). Same for `fl_noc`.
* Predictions at another resolution are resized to the GT size with the flow values
  rescaled (u by W_gt / W_pred, v by H_gt / H_pred); bilinear (cv2) by default.
"""
import glob
import os

import numpy as np

from coopnet_tf.eval import kitti_flow_io
from coopnet_tf.eval.resize import resize_bilinear, resize_nearest

OUTLIER_ABS = 3.0
OUTLIER_REL = 0.05


def end_point_error(pred, gt):
    """Per-pixel end-point error.

    Args:
      pred, gt: [..., H, W, 2] flows.

    Returns:
      float64 [..., H, W] Euclidean distance.
    """
    d = np.asarray(pred, np.float64) - np.asarray(gt, np.float64)
    return np.sqrt(np.sum(d * d, axis=-1))


def outlier_mask(pred, gt, abs_thresh=OUTLIER_ABS, rel_thresh=OUTLIER_REL):
    """KITTI Fl outliers: bool [..., H, W], EPE > abs_thresh AND EPE > rel_thresh |gt|."""
    epe = end_point_error(pred, gt)
    mag = np.sqrt(np.sum(np.asarray(gt, np.float64) ** 2, axis=-1))
    return (epe > abs_thresh) & (epe > rel_thresh * mag)


def flow_image_stats(pred, gt, valid):
    """EPE and outlier counts of one image.

    Args:
      pred: [H, W, 2] predicted flow at GT resolution.
      gt: [H, W, 2] ground truth.
      valid: [H, W] bool.

    Returns:
      dict epe (mean over valid), fl (outlier fraction), epe_sum, n_outliers, n_valid.
      epe and fl are NaN when no pixel is valid.
    """
    valid = np.asarray(valid, bool)
    epe = end_point_error(pred, gt)[valid]
    out = outlier_mask(pred, gt)[valid]
    n = int(valid.sum())
    return {
        "epe": float(epe.mean()) if n else float("nan"),
        "fl": float(out.mean()) if n else float("nan"),
        "epe_sum": float(epe.sum()),
        "n_outliers": int(out.sum()),
        "n_valid": n,
    }


def resize_flow(flow, height, width, method="bilinear"):
    """Resizes a flow field and rescales its values.

    Args:
      flow: [h, w, 2] (x, y) in pixels of the h x w grid.
      height, width: target size.
      method: "bilinear" (cv2 INTER_LINEAR) or "nearest" (cv2 INTER_NEAREST).

    Returns:
      float32 [height, width, 2]: u multiplied by width / w, v by height / h.
    """
    flow = np.asarray(flow, np.float32)
    h, w = flow.shape[:2]
    if method == "bilinear":
        out = resize_bilinear(flow, height, width)
    elif method == "nearest":
        out = resize_nearest(flow, height, width, mode="cv2").astype(np.float32)
    else:
        raise ValueError(f"unknown resize method {method!r}")
    return out * np.array([width / w, height / h], np.float32)


def aggregate(stats):
    """Per-image mean and pooled EPE / Fl from a list of `flow_image_stats` dicts."""
    stats = [s for s in stats if s["n_valid"] > 0]
    if not stats:
        return {"epe": float("nan"), "fl": float("nan"), "epe_pooled": float("nan"),
                "fl_pooled": float("nan"), "n_images": 0}
    n_valid = sum(s["n_valid"] for s in stats)
    return {
        "epe": float(np.mean([s["epe"] for s in stats])),
        "fl": float(np.mean([s["fl"] for s in stats])),
        "epe_pooled": float(sum(s["epe_sum"] for s in stats) / n_valid),
        "fl_pooled": float(sum(s["n_outliers"] for s in stats) / n_valid),
        "n_images": len(stats),
    }


def find_prediction(pred_dir, name):
    """Path of a prediction named `name` in pred_dir or pred_dir/flow (None if absent)."""
    for cand in (os.path.join(pred_dir, name), os.path.join(pred_dir, "flow", name)):
        if os.path.isfile(cand):
            return cand
    return None


def list_gt_names(gt_dir):
    """Sorted file names of `gt_dir/flow_occ/*_10.png` (or all *.png if none match)."""
    occ = os.path.join(gt_dir, "flow_occ")
    if not os.path.isdir(occ):
        raise FileNotFoundError(f"{occ} not found: --gt_dir must hold flow_occ/ (and flow_noc/)")
    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(occ, "*_10.png")))
    if not names:
        names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(occ, "*.png")))
    return names


def evaluate_flow_dirs(gt_dir, pred_dir, resize_method="bilinear", return_per_image=False):
    """Evaluates KITTI flow PNG predictions against a KITTI 2015 GT directory.

    Args:
      gt_dir: holds flow_occ/ and (optionally) flow_noc/ with `xxxxxx_10.png` files.
      pred_dir: predictions with the same names, in pred_dir or pred_dir/flow. A
        prediction of another size is resized (values rescaled).
      resize_method: see `resize_flow`.
      return_per_image: include the per-image statistics.

    Returns:
      dict epe_noc, epe_all, fl_all, fl_noc (per-image means), epe_noc_pooled,
      epe_all_pooled, fl_all_pooled, fl_noc_pooled, n_images, missing (names without a
      prediction: an error is raised if any are missing).
    """
    names = list_gt_names(gt_dir)
    noc_dir = os.path.join(gt_dir, "flow_noc")
    has_noc = os.path.isdir(noc_dir)
    missing = [n for n in names if find_prediction(pred_dir, n) is None]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} predictions missing in {pred_dir} (or {pred_dir}/flow), "
            f"e.g. {missing[:3]}")
    all_stats, noc_stats, per_image = [], [], []
    for name in names:
        pred, _ = kitti_flow_io.read_flow_png(find_prediction(pred_dir, name))
        gt_occ, valid_occ = kitti_flow_io.read_flow_png(os.path.join(gt_dir, "flow_occ", name))
        h, w = gt_occ.shape[:2]
        if pred.shape[:2] != (h, w):
            pred = resize_flow(pred, h, w, resize_method)
        s_all = flow_image_stats(pred, gt_occ, valid_occ)
        all_stats.append(s_all)
        entry = {"name": name, "epe_all": s_all["epe"], "fl_all": s_all["fl"]}
        if has_noc and os.path.isfile(os.path.join(noc_dir, name)):
            gt_noc, valid_noc = kitti_flow_io.read_flow_png(os.path.join(noc_dir, name))
            s_noc = flow_image_stats(pred, gt_noc, valid_noc)
            noc_stats.append(s_noc)
            entry.update(epe_noc=s_noc["epe"], fl_noc=s_noc["fl"])
        per_image.append(entry)
    a = aggregate(all_stats)
    result = {"epe_all": a["epe"], "fl_all": a["fl"],
              "epe_all_pooled": a["epe_pooled"], "fl_all_pooled": a["fl_pooled"],
              "n_images": a["n_images"], "fl_aggregation": "per_image_mean",
              "resize": resize_method}
    if noc_stats:
        b = aggregate(noc_stats)
        result.update(epe_noc=b["epe"], fl_noc=b["fl"],
                      epe_noc_pooled=b["epe_pooled"], fl_noc_pooled=b["fl_pooled"])
    else:
        result.update(epe_noc=float("nan"), fl_noc=float("nan"),
                      epe_noc_pooled=float("nan"), fl_noc_pooled=float("nan"))
    if return_per_image:
        result["per_image"] = per_image
    return result
