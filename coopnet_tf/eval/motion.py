"""Motion-segmentation IoU as in Competitive Collaboration Table 6 (`cc/test_mask.py`).

Two classes: 0 = static, 1 = moving. For each image the predicted mask (here: CoopNet's
pixels outside V, i.e. 1 = moving / not trusted as rigid) is resized to the GT size with
nearest-neighbour sampling (`scipy.ndimage.zoom(order=0)` convention), thresholded
(moving iff value > 0.5), and compared with the GT on the evaluated pixels only. CC
evaluates **car pixels only** (KITTI 2015 semantic label 26): GT moving = `obj_map > 0`,
GT static = car pixels with `obj_map == 0`, everything else ignored. Without an
evaluation region every pixel counts (static = background).

True/false positives and negatives are **pooled over all images**, then
`IoU_c = TP_c / (TP_c + FP_c + FN_c)` per class and the overall score is the mean of the
two class IoUs (CC's "Overall", "Static Car", "Moving Car" columns).
"""
import numpy as np

from coopnet_tf.eval.resize import resize_nearest

KITTI_CAR_LABEL = 26  # Cityscapes label id of "car", used by the KITTI 2015 semantics.


def confusion_counts(pred_moving, gt_moving, region=None):
    """Per-class TP / FP / FN of one image.

    Args:
      pred_moving: [H, W] bool, predicted moving.
      gt_moving: [H, W] bool, ground-truth moving.
      region: optional [H, W] bool, pixels to evaluate (default all).

    Returns:
      int64 [2, 3]: rows class (0 static, 1 moving), columns (tp, fp, fn).
    """
    pred_moving = np.asarray(pred_moving, bool)
    gt_moving = np.asarray(gt_moving, bool)
    region = np.ones_like(gt_moving) if region is None else np.asarray(region, bool)
    out = np.zeros((2, 3), np.int64)
    for c, (p, g) in enumerate(((~pred_moving, ~gt_moving), (pred_moving, gt_moving))):
        p = p & region
        g = g & region
        out[c] = (np.count_nonzero(p & g), np.count_nonzero(p & ~g), np.count_nonzero(~p & g))
    return out


def iou_from_counts(counts):
    """[2, 3] (tp, fp, fn) -> dict iou_static, iou_moving, iou_mean (NaN for an empty class)."""
    counts = np.asarray(counts, np.float64)
    denom = counts.sum(axis=1)
    ious = np.where(denom > 0, counts[:, 0] / np.maximum(denom, 1.0), np.nan)
    return {"iou_static": float(ious[0]), "iou_moving": float(ious[1]),
            "iou_mean": float(np.nanmean(ious)) if np.any(np.isfinite(ious)) else float("nan")}


def prepare_prediction(pred, height, width, threshold=0.5, pred_is_static=False):
    """Network mask -> bool [height, width] predicted-moving map.

    Args:
      pred: [h, w] (or [h, w, 1]) mask; hard {0, 1} or soft in [0, 1].
      height, width: GT size (nearest resize, zoom convention, when different).
      threshold: moving iff value > threshold (for a static-probability mask:
        static iff value >= 1 - threshold, as CC's argmax with ties to static).
      pred_is_static: the mask gives 1 = static (e.g. V itself) instead of 1 = moving.
    """
    pred = np.asarray(pred, np.float32)
    if pred.ndim == 3:
        pred = pred[..., 0]
    if pred.shape != (height, width):
        pred = resize_nearest(pred, height, width, mode="zoom")
    if pred_is_static:
        return pred < 1.0 - threshold
    return pred > threshold


def evaluate_motion(pred_masks, gt_masks, regions=None, threshold=0.5, pred_is_static=False):
    """Static / moving IoU over a set of images.

    Args:
      pred_masks: sequence of N [h, w] predicted masks (1 = moving unless pred_is_static).
      gt_masks: sequence of N [H, W] GT masks (> 0 = moving).
      regions: optional sequence of N [H, W] bool evaluation regions (e.g. car pixels).
      threshold, pred_is_static: see `prepare_prediction`.

    Returns:
      dict iou_mean, iou_static, iou_moving, counts ([[tp, fp, fn] static, moving]),
      n_images, n_pixels (evaluated pixels).
    """
    if len(pred_masks) != len(gt_masks):
        raise ValueError(f"{len(pred_masks)} predicted masks for {len(gt_masks)} GT masks")
    counts = np.zeros((2, 3), np.int64)
    n_pixels = 0
    for i, gt in enumerate(gt_masks):
        gt = np.asarray(gt)
        if gt.ndim == 3:
            gt = gt[..., 0]
        gt_moving = gt > 0
        h, w = gt_moving.shape
        pred = prepare_prediction(pred_masks[i], h, w, threshold, pred_is_static)
        region = None if regions is None else np.asarray(regions[i], bool)
        counts += confusion_counts(pred, gt_moving, region)
        n_pixels += int(h * w if region is None else region.sum())
    result = iou_from_counts(counts)
    result.update(counts=counts.tolist(), n_images=len(gt_masks), n_pixels=n_pixels)
    return result


def car_region(semantic):
    """bool region of KITTI 2015 car pixels (semantic label 26) from a semantic map."""
    return np.asarray(semantic) == KITTI_CAR_LABEL


def evaluate_mask_sets(pred_sets, gt_masks, regions=None, threshold=0.5, pred_is_static=True):
    """`evaluate_motion` for several predictions of the same images (CC Table 6 rows).

    Args:
      pred_sets: mapping name -> sequence of N [h, w] masks, e.g. CC's "masknet",
        "consensus", "joint" or CoopNet's "v" (all 1 = static by default).
      gt_masks, regions, threshold: as in `evaluate_motion`.
      pred_is_static: the masks give 1 = static (CC's m, CoopNet's V), so that
        "moving" is their complement.

    Returns:
      dict name -> `evaluate_motion` result.
    """
    return {name: evaluate_motion(masks, gt_masks, regions, threshold, pred_is_static)
            for name, masks in pred_sets.items()}
