"""Object-motion metrics of Lee et al. on fields with exact ground truth (numpy).

* 3-D object-motion error against the synthetic world's `gt_object_motion`
  (`specs.KEY_GT_OBJECT_MOTION`): for each target pixel the residual
  displacement r (metres, target camera frame, `X_s = R (X_t + r) + t`), shape
  `[NUM_SOURCES, H, W, 3]` per snippet; r = 0 on static pixels.
* Object segmentation IoU from CSAC inliers (Lee Table 5, Sec. 4.4): a pixel is predicted
  "object" iff the inlier score of the best hypothesis (Lee Eq. 4) exceeds 0.5 for one of
  the image's real boxes (and lies inside that box when the boxes are given);
  `csac_object_mask` runs the training loss's own CSAC (TensorFlow, imported on call) on a
  residual field and thresholds it so; `instance_boxes` gives the "box prior" of an
  instance map.
"""
import numpy as np

MOVING_EPS = 1e-6  # |r_gt| above this (metres) = a moving pixel when no mask is given
CSAC_THRESHOLD = 0.5  # Lee Sec. 4.4: "inlier scores (threshold of 0.5)"


def _mask(mask, shape):
    """bool mask of `shape` ([..., H, W]); a trailing channel of 1 is dropped."""
    m = np.asarray(mask, bool)
    if m.shape == tuple(shape) + (1,):
        m = m[..., 0]
    return np.broadcast_to(m, shape)


def object_motion_error(pred, gt, moving=None, valid=None):
    """End-point error of residual object-motion fields, pooled over all given pixels.

    Args:
      pred: [..., H, W, 3] predicted residual r (e.g. [N, NUM_SOURCES, H, W, 3]), metres.
      gt: same shape, the exact residual.
      moving: optional bool [..., H, W] (or [..., H, W, 1]) GT moving mask; default
        `|gt| > MOVING_EPS`.
      valid: optional bool [..., H, W] pixels to evaluate (default all).

    Returns:
      dict `epe_moving`, `epe_static`, `epe_all` (mean |r_pred - r_gt|_2, metres),
      `rel_moving` (mean over moving pixels of |r_pred - r_gt| / |r_gt|; pixels with
      |r_gt| <= MOVING_EPS are left out of it), `gt_norm_moving` (mean |r_gt| there, the
      error of predicting r = 0), `n_moving`, `n_static`. NaN for an empty set.
    """
    pred = np.asarray(pred, np.float64)
    gt = np.asarray(gt, np.float64)
    if pred.shape != gt.shape or pred.shape[-1] != 3:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must both be [..., H, W, 3]")
    err = np.linalg.norm(pred - gt, axis=-1)
    norm = np.linalg.norm(gt, axis=-1)
    mov = norm > MOVING_EPS if moving is None else _mask(moving, err.shape)
    val = np.ones_like(mov) if valid is None else _mask(valid, err.shape)
    m, s = mov & val, ~mov & val
    rel_sel = m & (norm > MOVING_EPS)

    def mean(x, sel):
        return float(x[sel].mean()) if sel.any() else float("nan")

    return {"epe_moving": mean(err, m), "epe_static": mean(err, s), "epe_all": mean(err, val),
            "rel_moving": mean(err / np.maximum(norm, MOVING_EPS), rel_sel),
            "gt_norm_moving": mean(norm, m),
            "n_moving": int(m.sum()), "n_static": int(s.sum())}


def inlier_segmentation(inliers, box_mask, boxes=None, threshold=CSAC_THRESHOLD):
    """CSAC inlier scores -> predicted object mask of one image.

    Args:
      inliers: [N, H, W] inlier score of the best foreground hypothesis per box (Lee Eq. 4).
      box_mask: [N], 1 = a real box, 0 = padding.
      boxes: optional [N, 4] (x1, y1, x2, y2) pixels: a box's inliers count only at pixel
        centres (integer coordinates) with x1 <= x <= x2 and y1 <= y <= y2.
      threshold: object iff score > threshold (0.5 in Lee Sec. 4.4).

    Returns:
      bool [H, W]: union over real boxes.
    """
    inl = np.asarray(inliers, np.float64)
    real = np.asarray(box_mask, np.float64) > 0
    sel = (inl > threshold) & real[:, None, None]
    if boxes is not None:
        b = np.asarray(boxes, np.float64)
        _, h, w = inl.shape
        ys = np.arange(h)[None, :, None]
        xs = np.arange(w)[None, None, :]
        inside = ((xs >= b[:, 0, None, None]) & (xs <= b[:, 2, None, None]) &
                  (ys >= b[:, 1, None, None]) & (ys <= b[:, 3, None, None]))
        sel &= inside
    return sel.any(axis=0)


def csac_object_mask(residual, depth, boxes, box_mask, threshold=CSAC_THRESHOLD, seed=(0, 0),
                     **csac_kwargs):
    """CSAC's object masks of a batch of images (Lee Sec. 4.4, Table 5).

    `losses.object_motion.csac_loss` (the training loss's own function: Otsu split of the
    depth inside each box, hypothesis search, Lee Alg. 1 and Eqs. 3-4) on the residual
    field and target depth, one call for the whole batch; then `inlier_segmentation` per
    image: object iff the best foreground hypothesis's inlier score > `threshold` for one
    real box that contains the pixel (union over the real boxes).

    Args:
      residual: `[B, H, W, 3]` residual motion field r (target camera; Eq. 3 is a ratio,
        so the field's units do not matter).
      depth: `[B, H, W]` or `[B, H, W, 1]` target depth (any positive scale).
      boxes: `[B, N, 4]` (x1, y1, x2, y2) in pixels of this resolution.
      box_mask: `[B, N]` 1 = a real box, 0 = padding.
      threshold: 0.5 (Lee).
      seed: `[2]` seed of CSAC's hypothesis sampling.
      **csac_kwargs: further arguments of `csac_loss` (alpha, beta, num_hypotheses, ...).

    Returns:
      bool `[B, H, W]`; all False for an image without real boxes.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from coopnet_tf.losses.object_motion import csac_loss  # pylint: disable=import-outside-toplevel
    residual = np.asarray(residual, np.float32)
    if residual.ndim != 4 or residual.shape[-1] != 3:
        raise ValueError(f"residual must be [B, H, W, 3], got {residual.shape}")
    b, h, w, _ = residual.shape
    depth = np.asarray(depth, np.float32).reshape(b, h, w, 1)
    boxes = np.asarray(boxes, np.float32).reshape(b, -1, 4)
    box_mask = np.asarray(box_mask, np.float32).reshape(b, -1)
    if boxes.shape[1] == 0 or not box_mask.any():
        return np.zeros((b, h, w), bool)
    out = csac_loss(tf.constant(residual), tf.constant(depth), tf.constant(boxes),
                    tf.constant(box_mask), seed=seed, **csac_kwargs)
    inliers = out["inliers"].numpy()                                     # [B, N, H, W]
    return np.stack([inlier_segmentation(inl, m, bx, threshold)
                     for inl, m, bx in zip(inliers, box_mask, boxes)])


def instance_boxes(instance_map):
    """Bounding boxes of the instances of a label map (the "given box prior" of Lee Table 5
    when the GT is an instance map such as KITTI 2015's `obj_map`).

    Args:
      instance_map: int `[H, W]`, 0 = background, k > 0 = instance k.

    Returns:
      float32 `[n, 4]` rows (x1, y1, x2, y2) = the first and last column and row of each
      instance (pixel centres, as `data/boxes.py`), in increasing instance id.
    """
    ids = np.asarray(instance_map)
    rows = []
    for k in np.unique(ids[ids > 0]):
        ys, xs = np.nonzero(ids == k)
        rows.append([xs.min(), ys.min(), xs.max(), ys.max()])
    return np.array(rows, np.float32).reshape(-1, 4)


def segmentation_iou(pred_masks, gt_masks, regions=None):
    """IoU of the object class (Lee Table 5).

    Per image, `IoU = |P ∩ G| / |P ∪ G|` with P the predicted object pixels (e.g.
    `inlier_segmentation`) and G the GT object pixels (`obj_map > 0`, or the synthetic
    world's moving mask), both restricted to `regions` when given. `iou_mean` averages the
    per-image IoUs over images where P ∪ G is not empty (Table 5's "mean IoU");
    `iou_pooled` divides the summed intersections by the summed unions.

    Args:
      pred_masks, gt_masks: sequences of N [H, W] masks (> 0 = object).
      regions: optional sequence of N bool [H, W] evaluated pixels.

    Returns:
      dict iou_mean, iou_pooled, per_image (IoU or NaN), intersection, union, n_images.
    """
    if len(pred_masks) != len(gt_masks):
        raise ValueError(f"{len(pred_masks)} predicted masks for {len(gt_masks)} GT masks")
    per_image, inter_sum, union_sum = [], 0, 0
    for i, (p, g) in enumerate(zip(pred_masks, gt_masks)):
        p = np.asarray(p) > 0
        g = np.asarray(g) > 0
        if p.shape != g.shape:
            raise ValueError(f"image {i}: predicted mask {p.shape} vs GT {g.shape}")
        if regions is not None:
            r = np.asarray(regions[i], bool)
            p, g = p & r, g & r
        inter, union = int(np.count_nonzero(p & g)), int(np.count_nonzero(p | g))
        inter_sum += inter
        union_sum += union
        per_image.append(inter / union if union else float("nan"))
    finite = [v for v in per_image if np.isfinite(v)]
    return {"iou_mean": float(np.mean(finite)) if finite else float("nan"),
            "iou_pooled": inter_sum / union_sum if union_sum else float("nan"),
            "per_image": per_image, "intersection": inter_sum, "union": union_sum,
            "n_images": len(per_image)}
