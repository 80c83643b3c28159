"""Back-projection, projection, rigid flow and bilinear warping (paper Eqs. 3-5).

Conventions (docs/ARCHITECTURE.md, docs/decisions.md C2):

* batch-first NHWC; pixel centres at integer coordinates; coordinate/flow channel 0 = x
  (column), 1 = y (row); flow in pixels of the resolution it is computed at;
* `T_target_to_source` maps points in the target camera into the source camera,
  `X_s = R X_t + t`; the rigid flow of target pixel p is `p_s(p) - p` (Eq. 5);
* inverse warping: the warped source is `I_s(p_s(p))`, sampled bilinearly.

Precision: every function casts its inputs to float32 on entry and returns float32, so
it is safe under a `mixed_float16`/`mixed_bfloat16` policy (half-precision coordinates
have a resolution of 0.25 px at x = 400). The 3x3/4x4 products are written as
broadcast multiply + sum instead of `tf.matmul`/`tf.einsum`: on Ampere/Hopper GPUs TF
runs float32 matmuls in TF32 (10-bit mantissa) by default, which would put ~0.1-0.5 px of
error into projections at KITTI resolution.

XLA: static shapes only, no data-dependent `tf.where`/`boolean_mask`, no numpy in the
graph; everything runs inside `tf.function(jit_compile=True)`.
"""
import tensorflow as tf

from coopnet_tf.geometry import camera

MIN_DEPTH_CLAMP = 1e-3  # projection clamps z >= this (SC-SfMLearner; no sign flips)
BORDER = "border"
ZEROS = "zeros"


def _f32(x):
    return tf.cast(tf.convert_to_tensor(x), tf.float32)


def _batch_k(K):
    """`[3, 3]` or `[B, 3, 3]` -> a tensor that broadcasts against `[B, H, W, 3, 3]`."""
    K = _f32(K)
    if K.shape.rank == 2:
        return K[tf.newaxis, tf.newaxis, tf.newaxis]
    return K[:, tf.newaxis, tf.newaxis]


def _apply_3x3(mat, vec):
    """`mat[B,1,1,3,3]` times `vec[B,H,W,3]` -> `[B,H,W,3]`, exact float32 (no TF32)."""
    return tf.reduce_sum(mat * vec[..., tf.newaxis, :], axis=-1)


def _static_dims(x):
    """Static dims where known, dynamic scalars otherwise."""
    static = x.shape.as_list()
    dynamic = tf.shape(x)
    return [s if s is not None else dynamic[i] for i, s in enumerate(static)]


def homogeneous_pixel_grid(batch, height, width):
    """`[B, H, W, 3]` float32 `(u, v, 1)` at pixel centres."""
    grid = camera.pixel_grid(batch, height, width)
    return tf.concat([grid, tf.ones_like(grid[..., :1])], axis=-1)


def backproject(depth, K):
    """Lifts every pixel to 3-D in its own camera: `X(p) = D(p) K^-1 (u, v, 1)^T`.

    Args:
      depth: `[B, H, W, 1]` z-depth.
      K: `[B, 3, 3]` (or `[3, 3]`) intrinsics at this resolution.

    Returns:
      `[B, H, W, 3]` float32 points `(X, Y, Z)`, `Z == depth`.
    """
    depth = _f32(depth)
    b, h, w, _ = _static_dims(depth)
    pix = homogeneous_pixel_grid(b, h, w)
    rays = _apply_3x3(_batch_k(camera.invert_intrinsics(K)), pix)
    return depth * rays


def transform_points(transform, points):
    """`X' = R X + t` for `transform[B, 4, 4]` and `points[B, H, W, 3]` (float32)."""
    transform = _f32(transform)
    points = _f32(points)
    rot = transform[:, tf.newaxis, tf.newaxis, :3, :3]
    trans = transform[:, tf.newaxis, tf.newaxis, :3, 3]
    return _apply_3x3(rot, points) + trans


def project(points, K):
    """Pinhole projection with the depth clamp `z >= 1e-3`.

    `(x, y, z) = K X`; `p = (x / z_c, y / z_c)` with `z_c = max(z, 1e-3)`: points behind
    the camera land far away instead of flipping sign (docs/decisions.md C2).

    Args:
      points: `[B, H, W, 3]` in the camera frame.
      K: `[B, 3, 3]` (or `[3, 3]`).

    Returns:
      `(coords[B, H, W, 2], z[B, H, W, 1])`, float32; `z` is the clamped depth used for
      the division (the point's depth in this camera wherever it is >= 1e-3).
    """
    points = _f32(points)
    cam = _apply_3x3(_batch_k(K), points)
    z = tf.maximum(cam[..., 2:3], MIN_DEPTH_CLAMP)
    return cam[..., :2] / z, z


def rigid_flow(depth, T_target_to_source, K):
    """Rigid flow of the target frame (paper Eq. 5): `F(p) = p_s(p) - p`.

    `p_s(p) = proj(K (R D_t(p) K^-1 p~ + t))`, differentiable w.r.t. depth and pose.

    Args:
      depth: `[B, H, W, 1]` target depth.
      T_target_to_source: `[B, 4, 4]`, `X_s = R X_t + t`.
      K: `[B, 3, 3]` (or `[3, 3]`) at the depth's resolution.

    Returns:
      `[B, H, W, 2]` float32 flow in pixels, channel 0 = x.
    """
    depth = _f32(depth)
    b, h, w, _ = _static_dims(depth)
    points_s = transform_points(T_target_to_source, backproject(depth, K))
    coords, _ = project(points_s, K)
    return coords - camera.pixel_grid(b, h, w)


def bilinear_corners(x, y, x0=None, y0=None):
    """The four pixel centres around `(x, y)` and their bilinear weights.

    Args:
      x, y: float coordinates (any shape).
      x0, y0: the top-left corner; default `floor(x)`, `floor(y)` (the border sampler
        passes clipped ones so that the right/bottom neighbour stays inside).

    Returns:
      `[(x0, y0, w00), (x1, y0, w10), (x0, y1, w01), (x1, y1, w11)]`, float corners
      (callers clip and cast them), weights summing to 1.
    """
    x0 = tf.floor(x) if x0 is None else x0
    y0 = tf.floor(y) if y0 is None else y0
    x1 = x0 + 1.0
    y1 = y0 + 1.0
    wx1 = x - x0
    wx0 = 1.0 - wx1
    wy1 = y - y0
    wy0 = 1.0 - wy1
    return [(x0, y0, wx0 * wy0), (x1, y0, wx1 * wy0), (x0, y1, wx0 * wy1), (x1, y1, wx1 * wy1)]


def bilinear_sample(image, coords, padding=BORDER):
    """Gather-based bilinear sampling in pixel coordinates (pixel centres at integers).

    Replaces `grid_sample`/`tfa.image.resampler` without their normalisation ambiguity.
    The bilinear weights are differentiable functions of `coords` (`x - floor(x)`), so
    gradients reach both the image values and the coordinates; they are finite
    everywhere, including at integer coordinates (zero flow) and at the borders.

    Args:
      image: `[B, H, W, C]`.
      coords: `[B, Ho, Wo, 2]` sampling positions in `image`'s pixels, channel 0 = x.
      padding: `"border"`: coordinates are clamped to the image, so samples outside
        repeat the edge pixels (`grid_sample(padding_mode="border")`, Monodepth2);
        `"zeros"`: neighbours outside the image contribute 0 (GeoNet-style).

    Returns:
      `(samples[B, Ho, Wo, C], in_bounds_mask[B, Ho, Wo, 1])`, both float32;
      `in_bounds = 1` iff `0 <= x <= W - 1` and `0 <= y <= H - 1`.
    """
    if padding not in (BORDER, ZEROS):
        raise ValueError(f"padding must be 'border' or 'zeros', got {padding!r}")
    image = _f32(image)
    coords = _f32(coords)
    b, h, w, c = _static_dims(image)
    w_max = tf.cast(w - 1, tf.float32)
    h_max = tf.cast(h - 1, tf.float32)
    x = coords[..., 0]
    y = coords[..., 1]
    in_bounds = (x >= 0.0) & (x <= w_max) & (y >= 0.0) & (y <= h_max)
    # Non-finite coordinates (a NaN batch or a diverged network) would become INT_MIN
    # indices and crash the gather; send them outside the image instead, so the step's
    # non-finite guard sees the NaN loss and skips the update.
    x = tf.where(tf.math.is_finite(x), x, -2.0)
    y = tf.where(tf.math.is_finite(y), y, -2.0)

    if padding == BORDER:
        x = tf.clip_by_value(x, 0.0, w_max)
        y = tf.clip_by_value(y, 0.0, h_max)
        # Keep the right/bottom neighbour inside the image: at x == W-1 use
        # x0 = W-2 with weight 1 on x1 (same value, and a finite one-sided gradient).
        x0 = tf.clip_by_value(tf.floor(x), 0.0, tf.maximum(w_max - 1.0, 0.0))
        y0 = tf.clip_by_value(tf.floor(y), 0.0, tf.maximum(h_max - 1.0, 0.0))
    else:
        # Bound far-away (or inf) coordinates before the int cast; the clipped
        # corners are all outside the image and get weight 0 below.
        x = tf.clip_by_value(x, -2.0, w_max + 2.0)
        y = tf.clip_by_value(y, -2.0, h_max + 2.0)
        x0 = tf.floor(x)
        y0 = tf.floor(y)

    flat = tf.reshape(image, tf.stack([b, h * w, c]))
    out = 0.0
    for xi, yi, wgt in bilinear_corners(x, y, x0, y0):
        if padding == ZEROS:
            inside = (xi >= 0.0) & (xi <= w_max) & (yi >= 0.0) & (yi <= h_max)
            wgt = wgt * tf.cast(inside, tf.float32)
        xi = tf.cast(tf.clip_by_value(xi, 0.0, w_max), tf.int32)
        yi = tf.cast(tf.clip_by_value(yi, 0.0, h_max), tf.int32)
        idx = tf.reshape(yi * w + xi, tf.stack([b, -1]))
        vals = tf.gather(flat, idx, batch_dims=1)  # [B, Ho*Wo, C]
        vals = tf.reshape(vals, tf.concat([tf.shape(coords)[:3], [c]], axis=0))
        out = out + wgt[..., tf.newaxis] * vals
    return out, tf.cast(in_bounds, tf.float32)[..., tf.newaxis]


def flow_warp(source, flow, padding=BORDER):
    """Warps the source image to the target with a flow (paper Eq. 4).

    `warped(p) = I_s(p + F(p))`.

    Args:
      source: `[B, H, W, C]` source image (or any field, e.g. a backward flow).
      flow: `[B, H, W, 2]` target -> source flow in pixels, channel 0 = x.
      padding: see `bilinear_sample`.

    Returns:
      `(warped[B, H, W, C], in_bounds[B, H, W, 1])`, float32.
    """
    flow = _f32(flow)
    b, h, w, _ = _static_dims(flow)
    return bilinear_sample(source, camera.pixel_grid(b, h, w) + flow, padding=padding)


def rigid_warp(source, depth, T, K, padding=BORDER):
    """Warps the source image to the target by depth and pose (paper Eq. 3).

    `warped(p) = I_s(p + F_rigid(p))` with `F_rigid = rigid_flow(depth, T, K)`.

    Args:
      source: `[B, H, W, C]` source image at the depth's resolution.
      depth: `[B, H, W, 1]` target depth.
      T: `[B, 4, 4]` `T_target_to_source`.
      K: `[B, 3, 3]` (or `[3, 3]`).
      padding: see `bilinear_sample` (default border, as Monodepth2).

    Returns:
      `(warped[B, H, W, C], in_bounds[B, H, W, 1], flow[B, H, W, 2])`, float32.
    """
    flow = rigid_flow(depth, T, K)
    warped, in_bounds = flow_warp(source, flow, padding=padding)
    return warped, in_bounds, flow
