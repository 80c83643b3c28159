"""Two-stage warping of Lee et al. (ICCV 2021), Sec. 3.1, Eqs. 1-2 (docs/lee.md).

* `forward_project` (stage 1, Eq. 1): every source pixel is lifted with the source depth,
  moved by the ego-motion and splatted into the target grid with bilinear weights; a
  z-buffer keeps, at each target pixel, only the contributions of the nearest surface.
  Gives the ego-warped image and depth `(I^ego, D^ego)` and a validity mask.
* `total_motion_warp` (stage 2, Eq. 2): the total motion of target pixel p is the
  ego-motion applied after the residual object translation, `X_s = R (X_t + r(p)) + t`;
  the source is inverse-warped with the target depth.

Conventions as in `warp.py`: NHWC float32, pixel centres at integer coordinates, channel
0 = x; `T_target_to_source` maps target-camera points into the source camera. Static
shapes, no data-dependent shapes: both run under `tf.function(jit_compile=True)`.
"""
import tensorflow as tf

from coopnet_tf.geometry import camera, warp

# Splat weights below this do not take part in the z-test (a zero-weight corner of a near
# surface must not hide a far surface that really lands there).
MIN_SPLAT_WEIGHT = 1e-3
# Contributions within this relative depth of the nearest one count as the same surface.
DEPTH_TOLERANCE = 0.02


def forward_project(source_image, source_depth, T_source_to_target, K,
                    depth_tolerance=DEPTH_TOLERANCE, min_weight=MIN_SPLAT_WEIGHT):
    """Stage 1 of Lee et al. (Eq. 1): forward projection with a z-buffer.

    Source pixel q goes to `X = R D_s(q) K^-1 q~ + t` (`T_source_to_target`), lands at
    `p = proj(K X)` with depth `z = X_z`, and spreads bilinear weights `w_c` over the four
    pixel centres `c` around `p` (as `losses.consistency.range_map`). Z-buffer: at each
    target pixel, `z_min` = the smallest `z` among contributions with `w_c > min_weight`;
    a contribution is kept iff `z <= z_min (1 + depth_tolerance)` (hard test, no gradient).
    Outputs are the weight-normalised means of the kept contributions:
    `I^ego(c) = sum w I_s / sum w`, `D^ego(c) = sum w z / sum w`.

    Gradients: the kept set is piecewise constant (stop_gradient); the values reach
    `source_image` directly and the depth and pose through `z` and through the bilinear
    weights (functions of the landing position `p`). Points behind the camera
    (`z <= 1e-3`) and landings outside the image splat nothing.

    Args:
      source_image: `[B, H, W, C]` source frame.
      source_depth: `[B, H, W, 1]` source z-depth.
      T_source_to_target: `[B, 4, 4]` maps source-camera points into the target camera.
      K: `[B, 3, 3]` (or `[3, 3]`) at this resolution.
      depth_tolerance: relative depth band of the z-test.
      min_weight: splat weights at or below this are ignored.

    Returns:
      `(image[B, H, W, C], depth[B, H, W, 1], valid[B, H, W, 1])`, float32; `valid` = 1
      where some kept contribution landed, image and depth are 0 where `valid` = 0.
    """
    image = warp._f32(source_image)
    depth = warp._f32(source_depth)
    b, h, w, c = warp._static_dims(image)
    points = warp.transform_points(T_source_to_target, warp.backproject(depth, K))
    coords, z = warp.project(points, K)
    in_front = points[..., 2] > warp.MIN_DEPTH_CLAMP
    w_max = tf.cast(w - 1, tf.float32)
    h_max = tf.cast(h - 1, tf.float32)
    coords = tf.where(tf.math.is_finite(coords), coords, -2.0)
    x = tf.clip_by_value(coords[..., 0], -2.0, w_max + 2.0)
    y = tf.clip_by_value(coords[..., 1], -2.0, h_max + 2.0)
    x0 = tf.stop_gradient(tf.floor(x))
    y0 = tf.stop_gradient(tf.floor(y))
    batch_offset = tf.reshape(tf.range(b) * (h * w), [-1, 1, 1])
    weights, indices = [], []
    for xi, yi, wgt in warp.bilinear_corners(x, y, x0, y0):
        inside = (xi >= 0.0) & (xi <= w_max) & (yi >= 0.0) & (yi <= h_max) & in_front
        weights.append(wgt * tf.cast(inside, tf.float32))
        xi = tf.cast(tf.clip_by_value(xi, 0.0, w_max), tf.int32)
        yi = tf.cast(tf.clip_by_value(yi, 0.0, h_max), tf.int32)
        indices.append(batch_offset + yi * w + xi)
    num = b * h * w
    weights = tf.reshape(tf.stack(weights), [-1])              # [4 * B * H * W]
    indices = tf.reshape(tf.stack(indices), [-1])
    z_all = tf.reshape(tf.tile(z[tf.newaxis, ..., 0], [4, 1, 1, 1]), [-1])
    colours = tf.reshape(tf.tile(image[tf.newaxis], [4, 1, 1, 1, 1]), tf.stack([-1, c]))

    # Z-buffer (no gradient): nearest participating depth per target pixel.
    participates = tf.stop_gradient(weights) > min_weight
    z_test = tf.where(participates, tf.stop_gradient(z_all), tf.float32.max)
    z_min = tf.math.unsorted_segment_min(z_test, indices, num_segments=num)
    kept = participates & (tf.stop_gradient(z_all) <= tf.gather(z_min, indices) * (1.0 + depth_tolerance))
    kept_w = weights * tf.cast(kept, tf.float32)

    mass = tf.math.unsorted_segment_sum(kept_w, indices, num_segments=num)
    image_sum = tf.math.unsorted_segment_sum(kept_w[:, tf.newaxis] * colours, indices, num_segments=num)
    depth_sum = tf.math.unsorted_segment_sum(kept_w * z_all, indices, num_segments=num)
    valid = tf.cast(mass > 0.0, tf.float32)
    safe_mass = tf.where(mass > 0.0, mass, 1.0)
    out_image = tf.reshape(image_sum / safe_mass[:, tf.newaxis], tf.stack([b, h, w, c]))
    out_depth = tf.reshape(depth_sum / safe_mass, tf.stack([b, h, w, 1]))
    valid = tf.reshape(valid, tf.stack([b, h, w, 1]))
    return out_image * valid, out_depth * valid, valid


def total_motion_points(target_depth, T_target_to_source, residual, K):
    """Target pixels carried into the source camera by the total motion (Lee Eq. 2).

    `X_s(p) = R (D_t(p) K^-1 p~ + r(p)) + t`: the residual object translation `r` is
    expressed in the target camera and applied before the ego-motion (issue contract,
    `specs.KEY_GT_OBJECT_MOTION`).

    Args:
      target_depth: `[B, H, W, 1]`.
      T_target_to_source: `[B, 4, 4]` ego-motion.
      residual: `[B, H, W, 3]` residual translation field (m, target camera).
      K: `[B, 3, 3]` (or `[3, 3]`).

    Returns:
      `[B, H, W, 3]` float32 points in the source camera.
    """
    points_t = warp.backproject(target_depth, K) + warp._f32(residual)
    return warp.transform_points(T_target_to_source, points_t)


def total_motion_warp(source_image, target_depth, T_target_to_source, residual, K,
                      padding=warp.BORDER):
    """Stage 2 of Lee et al. (Eq. 2): inverse warp of the source with the total motion.

    `warped(p) = I_s(proj(K X_s(p)))` with `X_s = R (X_t + r) + t` (`total_motion_points`),
    sampled bilinearly; differentiable w.r.t. depth, pose, residual and image.

    Args:
      source_image: `[B, H, W, C]`.
      target_depth: `[B, H, W, 1]`.
      T_target_to_source: `[B, 4, 4]`.
      residual: `[B, H, W, 3]` residual object translation (m, target camera); zeros give
        `warp.rigid_warp`.
      K: `[B, 3, 3]` (or `[3, 3]`).
      padding: see `warp.bilinear_sample`.

    Returns:
      `(warped[B, H, W, C], in_bounds[B, H, W, 1], flow[B, H, W, 2])`, float32; `flow`
      is the total target -> source flow in pixels.
    """
    depth = warp._f32(target_depth)
    b, h, w, _ = warp._static_dims(depth)
    coords, _ = warp.project(total_motion_points(depth, T_target_to_source, residual, K), K)
    warped, in_bounds = warp.bilinear_sample(source_image, coords, padding=padding)
    return warped, in_bounds, coords - camera.pixel_grid(b, h, w)
