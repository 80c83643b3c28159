"""Object-motion losses of Lee et al. (ICCV 2021), Sec. 3.3-3.4 (docs/lee.md).

* `csac_loss`: contrastive sample consensus `L_mr` (Algorithm 1, Eqs. 3-5), vectorised
  over the batch, the boxes, fg/bg and the hypotheses;
* `otsu_split`: the depth foreground split of Algorithm 1 line 3 (Otsu 1979, histogram);
* `motion_smoothness` (`L_ms`, Eq. 7), `motion_sparsity` and `motion_consistency`
  (`L_mp`, `L_mc`: Li et al. 2020, Gordon et al. 2019), `height_prior_loss` (`L_h`,
  Struct2Depth object-size constraint with the box height).

Residual fields are `[B, H, W, 3]` translations in metres in the target camera,
`X_s = R (X_t + r) + t` (`geometry.total_motion_points`). Pure TF, float32, static shapes;
no gin.
"""
import tensorflow as tf

from coopnet_tf.geometry import pose, warp
from coopnet_tf.losses.consistency import masked_mean

CSAC_ALPHA = 30.0           # Lee Sec. 3.3
CSAC_BETA = 0.2
CSAC_HYPOTHESES = 32        # N of Algorithm 1 (not given in the paper)
CSAC_QUERIES = 512          # query vectors scored per hypothesis (subsample, docs/lee.md)
OTSU_BINS = 64
MIN_HYPOTHESIS = 1e-3       # m: floor of |v_h| per axis in the denominator of Eq. 3
MIN_REFINED = 1e-3          # m: floor of |v_bar| in the denominators of Eq. 5
MOTION_SMOOTHNESS_TAU = 0.1  # Lee Eq. 7
DEFAULT_OBJECT_HEIGHT = 1.53  # m, mean height of KITTI 'Car' labels
MIN_BOX_HEIGHT = 4.0        # px: smaller boxes give no height prior


def _f32(x):
    return tf.cast(tf.convert_to_tensor(x), tf.float32)


def _seed_pair(seed):
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    if seed.shape.rank == 0:
        return tf.stack([seed, tf.constant(0, tf.int64)])
    return tf.reshape(seed, [2])


def box_pixel_masks(boxes, box_mask, height, width):
    """`[B, N, H, W]` float 1 at pixel centres `(x, y)` with `x1 <= x <= x2`, `y1 <= y <= y2`.

    Args:
      boxes: `[B, N, 4]` (x1, y1, x2, y2) in pixels of this resolution.
      box_mask: `[B, N]` 1 = real box, 0 = padding (padding rows give empty masks).
      height, width: the image size.
    """
    boxes = _f32(boxes)
    xs = tf.range(width, dtype=tf.float32)[tf.newaxis, tf.newaxis, tf.newaxis, :]
    ys = tf.range(height, dtype=tf.float32)[tf.newaxis, tf.newaxis, :, tf.newaxis]
    corner = [boxes[..., i][..., tf.newaxis, tf.newaxis] for i in range(4)]
    inside = (xs >= corner[0]) & (xs <= corner[2]) & (ys >= corner[1]) & (ys <= corner[3])
    return tf.cast(inside, tf.float32) * _f32(box_mask)[..., tf.newaxis, tf.newaxis]


def otsu_split(values, mask, bins=OTSU_BINS):
    """Otsu's threshold of `values` inside each mask, vectorised (Lee Alg. 1 line 3).

    Per mask: a `bins`-bin histogram between the masked minimum and maximum; for each
    split after bin k, the between-class variance `w0 w1 (m0 - m1)^2` with class means of
    the actual values (per-bin sums, not bin centres); the first maximising split wins.
    No gradient.

    Args:
      values: `[B, 1 or N, P]` (e.g. depth, broadcast over the N masks).
      mask: `[B, N, P]` in {0, 1}.
      bins: histogram size.

    Returns:
      `(low[B, N, P] float in {0, 1}: masked values in bins <= k*, i.e. below the
      threshold, threshold[B, N]: the lower edge of bin k* + 1)`. An empty mask gives an
      all-zero `low`; a constant one puts every pixel in `low`.
    """
    mask = tf.stop_gradient(_f32(mask))
    values = tf.stop_gradient(_f32(values)) + tf.zeros_like(mask)
    b, n, p = warp._static_dims(mask)
    inside = mask > 0.0
    count = tf.reduce_sum(mask, axis=-1)
    v_min = tf.reduce_min(tf.where(inside, values, tf.float32.max), axis=-1)
    v_max = tf.reduce_max(tf.where(inside, values, tf.float32.min), axis=-1)
    v_min = tf.where(count > 0.0, v_min, 0.0)
    v_max = tf.where(count > 0.0, v_max, 0.0)
    bin_width = tf.maximum(v_max - v_min, 1e-6) / float(bins)
    idx = tf.floor((values - v_min[..., tf.newaxis]) / bin_width[..., tf.newaxis])
    idx = tf.cast(tf.clip_by_value(tf.where(inside, idx, 0.0), 0.0, bins - 1.0), tf.int32)
    segments = tf.reshape(tf.range(b * n) * bins, tf.stack([b, n, 1])) + idx
    hist = tf.math.unsorted_segment_sum(tf.reshape(mask, [-1]), tf.reshape(segments, [-1]), b * n * bins)
    sums = tf.math.unsorted_segment_sum(tf.reshape(mask * values, [-1]), tf.reshape(segments, [-1]),
                                        b * n * bins)
    hist = tf.reshape(hist, tf.stack([b, n, bins]))
    sums = tf.reshape(sums, tf.stack([b, n, bins]))
    w0 = tf.cumsum(hist, axis=-1)[..., :-1]          # split after bin k, k = 0..bins-2
    s0 = tf.cumsum(sums, axis=-1)[..., :-1]
    w1 = count[..., tf.newaxis] - w0
    s1 = tf.reduce_sum(sums, axis=-1, keepdims=True) - s0
    between = w0 * w1 * tf.square(tf.math.divide_no_nan(s0, w0) - tf.math.divide_no_nan(s1, w1))
    between = tf.where((w0 > 0.0) & (w1 > 0.0), between, 0.0)
    k_star = tf.argmax(between, axis=-1, output_type=tf.int32)   # first maximum
    low = tf.cast(idx <= k_star[..., tf.newaxis], tf.float32) * mask
    threshold = v_min + tf.cast(k_star + 1, tf.float32) * bin_width
    return low, threshold


def soft_inlier(x, alpha=CSAC_ALPHA, beta=CSAC_BETA):
    """`F_inlier(x) = 1 - sigmoid(alpha (x - beta))` (Lee Eq. 4)."""
    return 1.0 - tf.sigmoid(alpha * (x - beta))


def _relative_l1(hypothesis, vectors, min_hypothesis):
    """`sum_axis |v_h - v_q| / max(|v_h|, min)` per axis (Lee Eq. 3 argument).

    `hypothesis[..., 3]` and `vectors[..., 3]` broadcast; the sum runs axis by axis so
    that no `[..., 3]` copy of the broadcast shape is made.
    """
    out = 0.0
    for a in range(3):
        denom = tf.maximum(tf.abs(hypothesis[..., a]), min_hypothesis)
        out = out + tf.abs(hypothesis[..., a] - vectors[..., a]) / denom
    return out


def csac_loss(residual, depth, boxes, box_mask, alpha=CSAC_ALPHA, beta=CSAC_BETA,
              num_hypotheses=CSAC_HYPOTHESES, seed=(0, 0), num_queries=CSAC_QUERIES,
              otsu_bins=OTSU_BINS, min_hypothesis=MIN_HYPOTHESIS, min_refined=MIN_REFINED):
    """Contrastive sample consensus `L_mr` (Lee Algorithm 1, Eqs. 3-5).

    Per box: Otsu split of the depth inside the box (near side = foreground `V_f`, the
    rest `V_b`). For each of the two sets, up to `num_queries` query vectors are drawn
    without replacement (all of them when the set is smaller) and the first
    `num_hypotheses` of them are the hypotheses `v_h`; score `S = sum_q F_inlier(x)`,
    `x = sum_axis |(v_h - v_q) / v_h|` (Eqs. 3-4); the best hypothesis's inlier scores on
    every pixel of the set weight the refined vector `v_bar` (line 14). All of this runs
    under `stop_gradient`. Penalties (Eq. 5), with gradient through `|v_q|` only:
    `sigmoid(alpha (x - beta))` with `x = max(0, |v_bar_f| - |v_q|) / |v_bar_f|` on `V_f`
    and `x = max(0, |v_q| - |v_bar_b|) / |v_bar_b|` on `V_b`; summed over boxes and divided
    by the number of (box, pixel) pairs in the batch.

    Args:
      residual: `[B, H, W, 3]` residual motion field (target camera).
      depth: `[B, H, W, 1]` target depth (no gradient flows into it).
      boxes: `[B, N, 4]` (x1, y1, x2, y2) in pixels of this resolution.
      box_mask: `[B, N]` 1 = real box.
      alpha, beta: Eq. 4 (30, 0.2).
      num_hypotheses: K random hypotheses per set (<= num_queries).
      seed: int or `[2]` int seed of the stateless sampling (vary it per step).
      num_queries: query vectors scored per hypothesis.
      otsu_bins: histogram bins of the Otsu split.
      min_hypothesis: floor (m) of `|v_h|` per axis in Eq. 3.
      min_refined: floor (m) of `|v_bar|` in Eq. 5.

    Returns:
      dict: `loss` scalar; `loss_fg`, `loss_bg` scalars (the two Eq. 5 sums, same
      normaliser); `foreground[B, N, H, W]` Otsu foreground in the box; `refined_fg`,
      `refined_bg` `[B, N, 3]`; `inliers[B, N, H, W]` inlier scores of the best
      foreground hypothesis on the foreground (Lee Table 5 thresholds them at 0.5).
    """
    residual = _f32(residual)
    boxes = _f32(boxes)
    b, h, w, _ = warp._static_dims(residual)
    n = warp._static_dims(boxes)[1]
    p = h * w
    num_queries = min(int(num_queries), int(p)) if isinstance(p, int) else int(num_queries)
    num_hypotheses = min(int(num_hypotheses), num_queries)

    in_box = tf.reshape(box_pixel_masks(boxes, box_mask, h, w), tf.stack([b, n, p]))
    fg, _ = otsu_split(tf.reshape(_f32(depth), tf.stack([b, 1, p])), in_box, otsu_bins)
    sets = tf.stack([fg, in_box - fg], axis=2)                         # [B, N, 2, P]

    vectors = tf.reshape(residual, tf.stack([b, p, 3]))
    v_sg = tf.stop_gradient(vectors)
    # Sampling without replacement: the top-k of uniform keys restricted to the set.
    keys = tf.random.stateless_uniform(tf.shape(sets), seed=_seed_pair(seed))
    keys = tf.where(sets > 0.0, keys, -1.0)
    top_keys, top_idx = tf.math.top_k(keys, k=num_queries)          # [B, N, 2, Q]
    q_valid = tf.cast(top_keys >= 0.0, tf.float32)
    queries = tf.gather(v_sg, tf.reshape(top_idx, tf.stack([b, -1])), batch_dims=1)
    queries = tf.reshape(queries, tf.stack([b, n, 2, num_queries, 3]))
    hyps = queries[..., :num_hypotheses, :]
    x = _relative_l1(hyps[..., :, tf.newaxis, :], queries[..., tf.newaxis, :, :], min_hypothesis)
    score = tf.reduce_sum(soft_inlier(x, alpha, beta) * q_valid[..., tf.newaxis, :], axis=-1)
    score = tf.where(q_valid[..., :num_hypotheses] > 0.0, score, -1.0)  # [B, N, 2, K]
    best = tf.gather(hyps, tf.argmax(score, axis=-1, output_type=tf.int32), batch_dims=3)

    # Inlier scores of the best hypothesis on every pixel of its set; refined vectors.
    flat = v_sg[:, tf.newaxis, tf.newaxis]                             # [B, 1, 1, P, 3]
    inl = soft_inlier(_relative_l1(best[..., tf.newaxis, :], flat, min_hypothesis), alpha, beta) * sets
    total = tf.reduce_sum(inl, axis=-1)
    refined = tf.stack([tf.math.divide_no_nan(tf.reduce_sum(inl * flat[..., a], axis=-1), total)
                        for a in range(3)], axis=-1)                   # [B, N, 2, 3]
    refined = tf.stop_gradient(refined)

    # Contrastive penalties (Eq. 5): gradient through |v_q| only.
    magnitude = tf.sqrt(tf.reduce_sum(tf.square(vectors), axis=-1) + 1e-12)[:, tf.newaxis]  # [B,1,P]
    ref_mag = tf.norm(refined, axis=-1)                                # [B, N, 2]
    denom = tf.maximum(ref_mag, min_refined)[..., tf.newaxis]
    x_fg = tf.nn.relu(ref_mag[:, :, 0, tf.newaxis] - magnitude) / denom[:, :, 0]
    x_bg = tf.nn.relu(magnitude - ref_mag[:, :, 1, tf.newaxis]) / denom[:, :, 1]
    pen_fg = tf.reduce_sum((1.0 - soft_inlier(x_fg, alpha, beta)) * sets[:, :, 0])
    pen_bg = tf.reduce_sum((1.0 - soft_inlier(x_bg, alpha, beta)) * sets[:, :, 1])
    num_pixels = tf.reduce_sum(in_box)
    shape = tf.stack([b, n, h, w])
    return {
        "loss": tf.math.divide_no_nan(pen_fg + pen_bg, num_pixels),
        "loss_fg": tf.math.divide_no_nan(pen_fg, num_pixels),
        "loss_bg": tf.math.divide_no_nan(pen_bg, num_pixels),
        "foreground": tf.reshape(fg, shape),
        "refined_fg": refined[:, :, 0],
        "refined_bg": refined[:, :, 1],
        "inliers": tf.stop_gradient(tf.reshape(inl[:, :, 0], shape)),
    }


def motion_smoothness(residual, depth, tau=MOTION_SMOOTHNESS_TAU):
    """Reparametrised edge-aware motion smoothness `L_ms` (Lee Eq. 7).

    `mean((dT * exp(-|dD| / tau))^2)` over x and y first differences (summed), with `D`
    the depth divided by its per-image mean (scale-free, so tau = 0.1 is a relative depth
    step) and the weights under `stop_gradient` (the depth is a guide, not a target).
    `depth` is resized (bilinear) to the residual's size when they differ.

    Args:
      residual: `[B, h, w, 3]` residual motion field (any scale).
      depth: `[B, H, W, 1]` depth guide.
      tau: 0.1 (Lee).

    Returns:
      scalar float32.
    """
    residual = _f32(residual)
    depth = tf.stop_gradient(_f32(depth))
    if depth.shape[1:3] != residual.shape[1:3]:
        depth = tf.image.resize(depth, tf.shape(residual)[1:3], method="bilinear")
    depth = tf.math.divide_no_nan(depth, tf.reduce_mean(depth, axis=[1, 2, 3], keepdims=True))
    dx_t = residual[:, :, 1:] - residual[:, :, :-1]
    dy_t = residual[:, 1:] - residual[:, :-1]
    wx = tf.exp(-tf.abs(depth[:, :, 1:] - depth[:, :, :-1]) / tau)
    wy = tf.exp(-tf.abs(depth[:, 1:] - depth[:, :-1]) / tau)
    return tf.reduce_mean(tf.square(dx_t * wx)) + tf.reduce_mean(tf.square(dy_t * wy))


def motion_sparsity(residual):
    """Square-root sparsity `L_mp` of Li et al. 2020 (Lee Sec. 3.4 cites it).

    `mean(2 m sqrt(1 + |T| / m))` with `m` = per image and channel mean of `|T|` under
    `stop_gradient`: behaves like L1 for small motions and like sqrt for large ones,
    favouring fields that are zero except on a few regions.

    Args:
      residual: `[B, H, W, 3]`.

    Returns:
      scalar float32 (0 for an all-zero field, finite gradients there).
    """
    magnitude = tf.abs(_f32(residual))
    mean = tf.stop_gradient(tf.reduce_mean(magnitude, axis=[1, 2], keepdims=True))
    return tf.reduce_mean(2.0 * mean * tf.sqrt(1.0 + magnitude / (mean + 1e-12)))


def motion_consistency(residual_fwd, T_fwd, residual_bwd, T_bwd, flow_fwd, mask=None, eps=1e-12):
    """Cycle consistency of the forward and backward total motions `L_mc` (Li et al. 2020,
    Gordon et al. 2019; Lee Sec. 3.4).

    Forward (target -> source) total motion `X_s = R_f X_t + tau_f(p)`,
    `tau_f = R_f r_f + t_f`; backward (source -> target) `tau_b = R_b r_b + t_b` on the
    source grid, sampled at `p + flow_fwd(p)`. Loss =
    `|R_b R_f - I|^2 / (|R_f - I|^2 + |R_b - I|^2)` (batch mean) +
    masked mean of `|R_b tau_f + tau_b|^2 / (|tau_f|^2 + |tau_b|^2)`; zero for a
    consistent pair.

    Args:
      residual_fwd: `[B, H, W, 3]` residual of the target (target camera).
      T_fwd: `[B, 4, 4]` target -> source ego-motion.
      residual_bwd: `[B, H, W, 3]` residual of the source (source camera).
      T_bwd: `[B, 4, 4]` source -> target ego-motion.
      flow_fwd: `[B, H, W, 2]` total flow target -> source (`total_motion_warp`).
      mask: `[B, H, W, 1]` pixels to use (e.g. in-bounds, non-occluded) or None.
      eps: denominator guard (both ratios are 0/0-prone when the motions vanish; the
        gradient of a ratio grows like 1/denominator for near-identity rotations).

    Returns:
      scalar float32.
    """
    T_fwd, T_bwd = _f32(T_fwd), _f32(T_bwd)
    rot_f, rot_b = T_fwd[:, :3, :3], T_bwd[:, :3, :3]
    eye = tf.eye(3, batch_shape=[1])
    rot_num = tf.reduce_sum(tf.square(pose.matmul_f32(rot_b, rot_f) - eye), axis=[1, 2])
    rot_den = tf.reduce_sum(tf.square(rot_f - eye) + tf.square(rot_b - eye), axis=[1, 2])
    rotation = tf.reduce_mean(rot_num / (rot_den + eps))

    tau_f = warp.transform_points(T_fwd, residual_fwd)
    tau_b = warp.transform_points(T_bwd, residual_bwd)
    tau_b, _ = warp.flow_warp(tau_b, flow_fwd, padding=warp.BORDER)
    rot_b_px = rot_b[:, tf.newaxis, tf.newaxis]
    cycle = warp._apply_3x3(rot_b_px, tau_f) + tau_b
    num = tf.reduce_sum(tf.square(cycle), axis=-1, keepdims=True)
    den = tf.reduce_sum(tf.square(tau_f) + tf.square(tau_b), axis=-1, keepdims=True)
    return rotation + masked_mean(num / (den + eps), mask)


def height_prior_loss(depth, boxes, box_mask, K, box_classes=None, class_heights=None,
                      object_mask=None, min_box_height=MIN_BOX_HEIGHT):
    """Object-size constraint `L_h` of Struct2Depth with the box height (Lee Sec. 3.4).

    Per real box: prior depth `d* = f_y H_c / h_box` (`h_box = y2 - y1`, `H_c` the class
    height in metres), object depth `d` = mean depth over the box (or over
    `object_mask`, e.g. the CSAC foreground); loss = mean over boxes of
    `|d - d*| / mean(D)` (image mean depth, no gradient). Boxes lower than
    `min_box_height` px are skipped.

    Args:
      depth: `[B, H, W, 1]` target depth.
      boxes: `[B, N, 4]` in pixels of this resolution.
      box_mask: `[B, N]`.
      K: `[B, 3, 3]` at this resolution.
      box_classes: `[B, N]` int class ids (needed with `class_heights`; padding rows,
        id -1, are read as class 0 and masked out by `box_mask`).
      class_heights: `[C]` heights (m) per class id, or None: `DEFAULT_OBJECT_HEIGHT`.
      object_mask: `[B, N, H, W]` optional pixel subset of each box (no gradient).
      min_box_height: px.

    Returns:
      scalar float32 (0 without valid boxes).
    """
    if class_heights is not None and box_classes is None:
        raise ValueError("height_prior_loss: class_heights needs box_classes (the batch's "
                         "`box_classes` of the same boxes)")
    depth = _f32(depth)
    boxes = _f32(boxes)
    _, h, w, _ = warp._static_dims(depth)
    pixels = box_pixel_masks(boxes, box_mask, h, w)
    if object_mask is not None:
        pixels = pixels * tf.stop_gradient(_f32(object_mask))
    area = tf.reduce_sum(pixels, axis=[2, 3])
    d_obj = tf.math.divide_no_nan(tf.reduce_sum(pixels * depth[:, tf.newaxis, ..., 0], axis=[2, 3]), area)
    if class_heights is None:
        heights = DEFAULT_OBJECT_HEIGHT
    else:
        heights = tf.gather(_f32(class_heights), tf.maximum(tf.cast(box_classes, tf.int32), 0))
    box_h = boxes[..., 3] - boxes[..., 1]
    fy = tf.reshape(_f32(K)[..., 1, 1], [-1, 1])
    d_prior = fy * heights / tf.maximum(box_h, 1.0)
    valid = _f32(box_mask) * tf.cast((box_h >= min_box_height) & (area > 0.0), tf.float32)
    scale = tf.stop_gradient(tf.reduce_mean(depth, axis=[1, 2, 3]))[:, tf.newaxis]
    per_box = tf.math.divide_no_nan(tf.abs(d_obj - d_prior), scale)
    return tf.math.divide_no_nan(tf.reduce_sum(per_box * valid), tf.reduce_sum(valid))
