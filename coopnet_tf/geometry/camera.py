"""Pinhole intrinsics and pixel grids (docs/decisions.md C1).

Conventions (docs/ARCHITECTURE.md): `K = [[fx, s, cx], [0, fy, cy], [0, 0, 1]]` (skew `s`
is 0 for every dataset we use but is handled where it costs nothing). Pixel centres are
at integer coordinates `0..W-1` / `0..H-1`; coordinate channel 0 = x (column), 1 = y (row).

Every function here accepts `K` as `[3, 3]` or batched `[..., 3, 3]` and returns the same
rank. All arithmetic is float32: inputs are cast on entry (so the functions are safe under
a mixed-precision policy, where float16 intrinsics would lose whole pixels at 400 px).
Pure TF, no numpy in the graph, static shapes: usable in `tf.function(jit_compile=True)`.
"""
import tensorflow as tf


def _f32(x):
    return tf.cast(tf.convert_to_tensor(x), tf.float32)


def _split_k(K):
    """Returns the 3 rows of `K[..., 3, 3]` as `[..., 3]` tensors."""
    return K[..., 0, :], K[..., 1, :], K[..., 2, :]


def scale_intrinsics(K, sx, sy):
    """Intrinsics after resizing the image by factors `sx = W'/W`, `sy = H'/H`.

    `fx' = sx fx`, `cx' = sx cx`, `fy' = sy fy`, `cy' = sy cy` (row 0 scaled by `sx`,
    row 1 by `sy`). The strict pixel-centre form `cx' = sx (cx + 0.5) - 0.5` is
    deliberately NOT used: Monodepth2, SC-SfMLearner and SfMLearner all ignore the
    half-pixel term, and we keep their numbers comparable (docs/decisions.md C1).

    Args:
      K: `[..., 3, 3]` intrinsics.
      sx, sy: python floats or scalar tensors (or tensors broadcastable to `K[..., 0, 0]`).

    Returns:
      `[..., 3, 3]` float32 intrinsics.
    """
    K = _f32(K)
    sx = _f32(sx)[..., tf.newaxis]
    sy = _f32(sy)[..., tf.newaxis]
    r0, r1, r2 = _split_k(K)
    return tf.stack([r0 * sx, r1 * sy, r2], axis=-2)


def crop_intrinsics(K, offset_x, offset_y):
    """Intrinsics after cropping with top-left corner at `(offset_x, offset_y)` pixels.

    `cx' = cx - offset_x`, `cy' = cy - offset_y`; focal lengths unchanged.

    Args:
      K: `[..., 3, 3]`.
      offset_x, offset_y: scalars or tensors broadcastable to `K[..., 0, 0]`.

    Returns:
      `[..., 3, 3]` float32.
    """
    K = _f32(K)
    ox = _f32(offset_x)
    oy = _f32(offset_y)
    zeros = tf.zeros_like(K[..., 0, 0])
    shift = tf.stack(
        [
            tf.stack([zeros, zeros, zeros + ox], axis=-1),
            tf.stack([zeros, zeros, zeros + oy], axis=-1),
            tf.stack([zeros, zeros, zeros], axis=-1),
        ],
        axis=-2,
    )
    return K - shift


def flip_intrinsics(K, width):
    """Intrinsics after a horizontal flip of an image `width` pixels wide.

    With pixel centres at integers, a flip maps column `x` to `W - 1 - x`, so the
    principal point becomes `cx' = W - 1 - cx` (and a skew term changes sign). SC-SfMLearner
    uses `W - cx` and Monodepth2 leaves K alone (it assumes `cx = W/2`); the difference is
    one pixel of principal point and we follow our own pixel-centre convention, which
    makes flip(flip(K)) = K and keeps `flow_warp`/`rigid_flow` exact on flipped inputs.

    Args:
      K: `[..., 3, 3]`.
      width: image width in pixels (int or scalar tensor).

    Returns:
      `[..., 3, 3]` float32.
    """
    K = _f32(K)
    w = _f32(width)
    r0, r1, r2 = _split_k(K)
    fx, s, cx = r0[..., 0], r0[..., 1], r0[..., 2]
    r0 = tf.stack([fx, -s, w - 1.0 - cx], axis=-1)
    return tf.stack([r0, r1, r2], axis=-2)


def pyramid_intrinsics(K, level):
    """Intrinsics of pyramid level `level` (image downsampled by `2**level`).

    Divides `fx, fy, cx, cy` (and skew) by `2**level` (docs/decisions.md C1; same
    half-pixel convention as `scale_intrinsics`).

    Args:
      K: `[..., 3, 3]` at level 0.
      level: non-negative int (or scalar tensor).

    Returns:
      `[..., 3, 3]` float32.
    """
    factor = tf.pow(2.0, -_f32(level))
    return scale_intrinsics(K, factor, factor)


def invert_intrinsics(K):
    """Closed-form inverse of an upper-triangular intrinsics matrix.

    For `K = [[fx, s, cx], [0, fy, cy], [0, 0, 1]]`:
    `K^-1 = [[1/fx, -s/(fx fy), (s cy - cx fy)/(fx fy)], [0, 1/fy, -cy/fy], [0, 0, 1]]`.
    Closed form instead of `tf.linalg.inv`: exact to float32 rounding and cheap under XLA.

    Args:
      K: `[..., 3, 3]`.

    Returns:
      `[..., 3, 3]` float32.
    """
    K = _f32(K)
    fx, s, cx = K[..., 0, 0], K[..., 0, 1], K[..., 0, 2]
    fy, cy = K[..., 1, 1], K[..., 1, 2]
    zeros = tf.zeros_like(fx)
    ones = tf.ones_like(fx)
    r0 = tf.stack([1.0 / fx, -s / (fx * fy), (s * cy - cx * fy) / (fx * fy)], axis=-1)
    r1 = tf.stack([zeros, 1.0 / fy, -cy / fy], axis=-1)
    r2 = tf.stack([zeros, zeros, ones], axis=-1)
    return tf.stack([r0, r1, r2], axis=-2)


def pixel_grid(batch, height, width):
    """Pixel-centre coordinates of an image: `[B, H, W, 2]`, channel 0 = x, 1 = y.

    `grid[b, v, u] = (u, v)`: pixel centres sit at integer coordinates.

    Args:
      batch, height, width: python ints (or scalar int tensors; static under XLA).

    Returns:
      `[batch, height, width, 2]` float32.
    """
    xs = tf.range(width, dtype=tf.float32)
    ys = tf.range(height, dtype=tf.float32)
    gx, gy = tf.meshgrid(xs, ys)  # [H, W] each ("xy" indexing)
    grid = tf.stack([gx, gy], axis=-1)
    return tf.broadcast_to(grid[tf.newaxis], tf.stack([batch, height, width, 2]))
