"""Occlusion and auxiliary consistency terms (docs/decisions.md C7, D7, D8).

* `range_map` / `non_occluded_mask`: Wang et al. (2018) occlusion by forward splatting of
  the reverse flow; no gradient; CoopNet's hard threshold 0.2.
* `forward_backward_residual` / `forward_backward_loss`: UnFlow / DF-Net consistency.
* `geometric_consistency`: Bian et al. (SC-SfMLearner) depth inconsistency map.
* `epipolar_loss`: CoopNet supplement Eqs. 26-29 (absolute value, epsilon).
* `variance_loss`: inverse depth variance (Kim & Kim 2022, as we read it: docs/decisions.md D8).

All inputs are cast to float32 on entry (splatting accumulates many small weights and
the epipolar/projection products need float32 accuracy; under mixed precision the
networks' outputs may be float16). Static shapes only; every function runs under
`tf.function(jit_compile=True)`.
"""
import tensorflow as tf

from coopnet_tf.geometry import camera, forward_warp, pose, warp

OCCLUSION_THRESHOLD = 0.2
EPIPOLAR_EPS = 1e-6
VARIANCE_EPS = 1e-6


def _f32(x):
    return tf.cast(tf.convert_to_tensor(x), tf.float32)


def masked_mean(values, mask=None):
    """Mean of `values` over `mask` (broadcast), 0 when the mask is empty.

    Args:
      values: `[B, H, W, C]`.
      mask: None (plain mean) or a tensor broadcastable to `values` (e.g. `[B, H, W, 1]`).

    Returns:
      scalar float32 `sum(values * mask) / sum(mask)` (mask broadcast to `values`).
    """
    values = _f32(values)
    if mask is None:
        return tf.reduce_mean(values)
    mask = tf.broadcast_to(_f32(mask), tf.shape(values))
    return tf.math.divide_no_nan(tf.reduce_sum(values * mask), tf.reduce_sum(mask))


def range_map(reverse_flow):
    """Wang et al. range map of the target frame by forward splatting (docs/decisions.md C7).

    Each pixel q of the source grid is sent to `q + F_{s->t}(q)` in the target grid and
    spreads a unit mass over the four neighbouring pixel centres with bilinear weights;
    mass landing outside the image is dropped. The accumulated mass is ~1 where some
    source pixel lands, ~0 in regions of the target that are not visible in the source,
    > 1 where several collide. Computed without gradient (input and output wrapped in
    `tf.stop_gradient`), float32 (accumulation), with `tf.math.unsorted_segment_sum`
    over flattened indices `b*H*W + y*W + x` (static `num_segments`, XLA-friendly).

    Args:
      reverse_flow: `[B, H, W, 2]` flow source -> target (`F_{s->t}`) in pixels,
        defined on the source grid, channel 0 = x.

    Returns:
      `[B, H, W, 1]` float32 range map of the target frame.
    """
    flow = tf.stop_gradient(_f32(reverse_flow))
    b, h, w, _ = warp._static_dims(flow)
    pos = camera.pixel_grid(b, h, w) + flow
    w_max = tf.cast(w - 1, tf.float32)
    h_max = tf.cast(h - 1, tf.float32)
    # Bound far-away (and non-finite) targets before the int cast; their corners are
    # all outside, so they splat nothing.
    pos = tf.where(tf.math.is_finite(pos), pos, -2.0)
    x = tf.clip_by_value(pos[..., 0], -2.0, w_max + 2.0)
    y = tf.clip_by_value(pos[..., 1], -2.0, h_max + 2.0)
    batch_offset = tf.reshape(tf.range(b) * (h * w), [-1, 1, 1])
    weights = []
    indices = []
    for xi, yi, wgt in warp.bilinear_corners(x, y):
        inside = (xi >= 0.0) & (xi <= w_max) & (yi >= 0.0) & (yi <= h_max)
        weights.append(wgt * tf.cast(inside, tf.float32))
        xi = tf.cast(tf.clip_by_value(xi, 0.0, w_max), tf.int32)
        yi = tf.cast(tf.clip_by_value(yi, 0.0, h_max), tf.int32)
        indices.append(batch_offset + yi * w + xi)
    mass = tf.math.unsorted_segment_sum(
        tf.reshape(tf.stack(weights), [-1]),
        tf.reshape(tf.stack(indices), [-1]),
        num_segments=b * h * w,
    )
    return tf.stop_gradient(tf.reshape(mass, tf.stack([b, h, w, 1])))


def non_occluded_mask(reverse_flow, threshold=OCCLUSION_THRESHOLD):
    """CoopNet's hard occlusion mask `1[range_map(F_{s->t}) > threshold]` (no gradient).

    Args:
      reverse_flow: `[B, H, W, 2]` flow source -> target.
      threshold: 0.2 (paper).

    Returns:
      `[B, H, W, 1]` float32 in {0, 1}; 1 = target pixel visible in the source.
    """
    return tf.cast(range_map(reverse_flow) > threshold, tf.float32)


def forward_backward_residual(flow_fw, flow_bw):
    """Forward-backward residual `c_f(p) = F_f(p) + F_b(p + F_f(p))` (UnFlow / DF-Net).

    `F_b` is sampled bilinearly at `p + F_f(p)` with border padding. Zero for consistent
    flows at non-occluded pixels.

    Args:
      flow_fw: `[B, H, W, 2]` flow t -> s.
      flow_bw: `[B, H, W, 2]` flow s -> t.

    Returns:
      `[B, H, W, 2]` float32 residual in pixels.
    """
    flow_fw = _f32(flow_fw)
    warped_bw, _ = warp.flow_warp(flow_bw, flow_fw, padding=warp.BORDER)
    return flow_fw + warped_bw


def forward_backward_loss(flow_fw, flow_bw, mask=None):
    """Mean over `mask` of the L1 norm `|c_x| + |c_y|` of the forward-backward residual.

    One direction; the symmetric term is `forward_backward_loss(flow_bw, flow_fw,
    mask_bw)` (docs/decisions.md C7: mask = non-occluded pixels).

    Args:
      flow_fw, flow_bw: `[B, H, W, 2]`.
      mask: `[B, H, W, 1]` or None (all pixels).

    Returns:
      scalar float32 (0 if the mask is empty).
    """
    residual = forward_backward_residual(flow_fw, flow_bw)
    l1 = tf.reduce_sum(tf.abs(residual), axis=-1, keepdims=True)
    return masked_mean(l1, mask)


def geometric_consistency(depth_t, depth_s, T_t_to_s, K, padding=warp.BORDER, residual=None):
    """Bian et al. depth inconsistency map (docs/decisions.md C7).

    `D^t_s(p)`: z of `R D_t(p) K^-1 p~ + t` (target depth carried into the source camera;
    with a `residual` field, `R (D_t(p) K^-1 p~ + r(p)) + t`, Lee Eq. 2);
    `D'_s(p)`: `D_s` bilinearly sampled at the projection `p_s(p)`;
    `D_diff = clamp(|D^t_s - D'_s| / (D^t_s + D'_s), 0, 1)`. Gradients flow through both
    depths and the pose (as in SC-SfMLearner).

    Args:
      depth_t: `[B, H, W, 1]` target depth.
      depth_s: `[B, H, W, 1]` source depth.
      T_t_to_s: `[B, 4, 4]` target -> source.
      K: `[B, 3, 3]` (or `[3, 3]`).
      padding: sampler padding for `D_s` (irrelevant at valid pixels).
      residual: None, or `[B, H, W, 3]` residual object translation (m, target camera)
        of Lee et al.'s total motion (`geometry.total_motion_points`).

    Returns:
      `(depth_diff[B, H, W, 1], valid[B, H, W, 1])`, float32; `valid` = projection inside
      the source image and in front of the camera. `L_gc` = `masked_mean(diff, valid)`;
      SC-SfMLearner's / Lee's inconsistency weight mask is `1 - depth_diff`.
    """
    if residual is None:
        points_s = warp.transform_points(T_t_to_s, warp.backproject(depth_t, K))
    else:
        points_s = forward_warp.total_motion_points(depth_t, T_t_to_s, residual, K)
    coords, computed = warp.project(points_s, K)
    projected, in_bounds = warp.bilinear_sample(depth_s, coords, padding=padding)
    diff = tf.abs(computed - projected) / (computed + projected)
    diff = tf.clip_by_value(diff, 0.0, 1.0)
    in_front = tf.cast(points_s[..., 2:3] > warp.MIN_DEPTH_CLAMP, tf.float32)
    return diff, in_bounds * in_front


def fundamental_matrix(T_t_to_s, K):
    """`M = K^-T [t]_x R K^-1` (supplement Eq. 26) for `X_s = R X_t + t`.

    `p~_s^T M p~_t = 0` for corresponding pixels; `M p~_t` is the epipolar line in the
    source image.

    Args:
      T_t_to_s: `[B, 4, 4]`.
      K: `[B, 3, 3]` (or `[3, 3]`).

    Returns:
      `[B, 3, 3]` float32 (exact float32 products, no TF32).
    """
    T_t_to_s = _f32(T_t_to_s)
    k_inv = camera.invert_intrinsics(K)
    essential = pose.matmul_f32(pose.skew_matrix(T_t_to_s[..., :3, 3]), T_t_to_s[..., :3, :3])
    return pose.matmul_f32(tf.linalg.matrix_transpose(k_inv), pose.matmul_f32(essential, k_inv))


def epipolar_distance(flow, T_t_to_s, K, eps=EPIPOLAR_EPS):
    """Per-pixel epipolar distance `|M p~ . p~_delta| / sqrt(a^2 + b^2 + eps)` (Eqs. 27-29).

    `(a, b, c) = M p~` (Eq. 27), `p_delta = p + F(p)` (Eq. 28). Eq. 29 is signed and
    unbounded below; its absolute value is used (docs/decisions.md D7). `M` is
    first scaled by the norm of its first two rows (the line is defined up to scale), so
    the result is the point-to-line distance in pixels, invariant to the translation's
    scale, and `eps` only guards `t ~ 0` instead of swamping `a^2 + b^2` (which is of
    order `(|t| / f)^2` for the unscaled M).

    Args:
      flow: `[B, H, W, 2]` optical flow t -> s in pixels.
      T_t_to_s: `[B, 4, 4]`.
      K: `[B, 3, 3]` (or `[3, 3]`) at the flow's resolution.
      eps: in the normaliser.

    Returns:
      `[B, H, W, 1]` float32 distances in pixels.
    """
    flow = _f32(flow)
    b, h, w, _ = warp._static_dims(flow)
    m = fundamental_matrix(T_t_to_s, K)
    scale = tf.sqrt(tf.reduce_sum(tf.square(m[:, :2, :]), axis=[1, 2], keepdims=True) + 1e-30)
    m = m / scale
    pix = warp.homogeneous_pixel_grid(b, h, w)
    lines = warp._apply_3x3(m[:, tf.newaxis, tf.newaxis], pix)  # [B, H, W, 3]
    p_delta = pix + tf.concat([flow, tf.zeros_like(flow[..., :1])], axis=-1)
    num = tf.abs(tf.reduce_sum(lines * p_delta, axis=-1, keepdims=True))
    den = tf.sqrt(tf.reduce_sum(tf.square(lines[..., :2]), axis=-1, keepdims=True) + eps)
    return num / den


def epipolar_loss(flow, T_t_to_s, K, mask=None, eps=EPIPOLAR_EPS):
    """Epipolar loss `L_ep`: mean over `mask` of `epipolar_distance` (supplement Eq. 29).

    Args:
      flow: `[B, H, W, 2]` flow t -> s.
      T_t_to_s: `[B, 4, 4]`.
      K: `[B, 3, 3]` (or `[3, 3]`).
      mask: `[B, H, W, 1]` (CoopNet: the agreement set V) or None (all pixels).
      eps: normaliser epsilon.

    Returns:
      scalar float32; gradients reach both the flow and the pose.
    """
    return masked_mean(epipolar_distance(flow, T_t_to_s, K, eps=eps), mask)


def variance_loss(depth, eps=VARIANCE_EPS):
    """`L_var = mean_b 1 / (Var_{H,W}(D_b) + eps)` (docs/decisions.md D8).

    Args:
      depth: `[B, H, W, 1]` scale-0 target depth.
      eps: 1e-6.

    Returns:
      scalar float32.
    """
    depth = _f32(depth)
    var = tf.math.reduce_variance(depth, axis=[1, 2, 3])
    return tf.reduce_mean(1.0 / (var + eps))
