"""Shared visualisation: depth/disparity colour maps and the optical-flow colour wheel.

Every function exists twice with the same semantics:

* numpy versions (`colorize`, `colorize_disparity`, `colorize_depth`, `flow_to_color`,
  `mask_to_color`) for files and plots — no TensorFlow import;
* TensorFlow versions (`*_tf`) built only from TF ops, usable inside `tf.function`, for
  TensorBoard images (`tf.summary.image` takes float images in [0, 1]).

All of them return float32 RGB in [0, 1] with a trailing channel axis of 3; `to_uint8`
converts for PNG writing. Inputs may carry any leading batch axes; a trailing singleton
channel axis on scalar fields (`[..., H, W, 1]`) is accepted and dropped.

Colour maps:
* depth / disparity: matplotlib's "magma" (256-entry table; perceptually uniform, dark =
  far / small disparity, bright = near), normalised per image from 0 to the 95th
  percentile of the values as in Monodepth2's visualisations (`percentile=`), or to fixed
  `vmin`/`vmax` when given.
* flow: the Middlebury colour wheel of Baker et al. (2011), as in their `flowToColor.m`
  and `flowlib.py` (GeoNet/UnFlow): hue = direction (55-colour wheel RY 15, YG 6, GC 4,
  CB 11, BM 13, MR 6), saturation = magnitude / max magnitude (per image unless
  `max_flow` is given); values beyond the normaliser are darkened (×0.75).
"""
import functools
import math

import numpy as np

# --- Magma table ----------------------------------------------------------------
# 17 samples of matplotlib's "magma" (positions 0, 1/16, ..., 1): a fallback when
# matplotlib is unavailable, interpolated linearly to 256 entries.
_MAGMA_ANCHORS = np.array([
    [0.001462, 0.000466, 0.013866], [0.035520, 0.028397, 0.125209],
    [0.102815, 0.063010, 0.257854], [0.191460, 0.064818, 0.396152],
    [0.291366, 0.064553, 0.475462], [0.384299, 0.097855, 0.501002],
    [0.475780, 0.133743, 0.507993], [0.569172, 0.167454, 0.504105],
    [0.664915, 0.198075, 0.488836], [0.761077, 0.231214, 0.460162],
    [0.852126, 0.276106, 0.418573], [0.926106, 0.346980, 0.379779],
    [0.971029, 0.446213, 0.369492], [0.991209, 0.557243, 0.406485],
    [0.997228, 0.664850, 0.469030], [0.995680, 0.771093, 0.548461],
    [0.987053, 0.991438, 0.749504],
], dtype=np.float64)


@functools.lru_cache(maxsize=None)
def magma_lut(size=256):
    """The magma colour table.

    Args:
      size: number of entries.

    Returns:
      float32 [size, 3] RGB in [0, 1], entry 0 = value 0 (dark), last = value 1 (bright).
    """
    try:
        import matplotlib  # pylint: disable=import-outside-toplevel
        table = matplotlib.colormaps["magma"].resampled(size)(np.arange(size))[:, :3]
    except Exception:  # pragma: no cover - matplotlib is a pinned dependency
        x = np.linspace(0.0, 1.0, size)
        xp = np.linspace(0.0, 1.0, len(_MAGMA_ANCHORS))
        table = np.stack([np.interp(x, xp, _MAGMA_ANCHORS[:, c]) for c in range(3)], -1)
    table = np.asarray(table, np.float32)
    table.setflags(write=False)
    return table


def _squeeze_channel(x):
    x = np.asarray(x, np.float32)
    if x.ndim >= 3 and x.shape[-1] == 1:
        x = x[..., 0]
    return x


def _normalise(x, vmin, vmax, percentile):
    """Maps x [..., H, W] to [0, 1] per image (last two axes)."""
    if vmin is None:
        lo = np.zeros(x.shape[:-2] + (1, 1), np.float32)
    else:
        lo = np.broadcast_to(np.asarray(vmin, np.float32), x.shape[:-2])[..., None, None]
    if vmax is None:
        flat = x.reshape(x.shape[:-2] + (-1,))
        finite = np.where(np.isfinite(flat), flat, np.nan)
        hi = np.nanpercentile(finite, percentile, axis=-1)[..., None, None]
        hi = np.nan_to_num(hi, nan=1.0)
    else:
        hi = np.broadcast_to(np.asarray(vmax, np.float32), x.shape[:-2])[..., None, None]
    scale = np.maximum(hi - lo, 1e-8)
    return np.clip(np.nan_to_num((x - lo) / scale, nan=0.0), 0.0, 1.0).astype(np.float32)


def colorize(values, vmin=None, vmax=None, percentile=95.0):
    """Colours a scalar field with magma (numpy).

    Args:
      values: [..., H, W] or [..., H, W, 1] float; larger = brighter.
      vmin: value mapped to the darkest colour (default 0), scalar or per image [...].
      vmax: value mapped to the brightest colour (default: the `percentile`-th
        percentile of each image), scalar or per image [...].
      percentile: used when vmax is None.

    Returns:
      float32 [..., H, W, 3] RGB in [0, 1].
    """
    x = _normalise(_squeeze_channel(values), vmin, vmax, percentile)
    lut = magma_lut()
    idx = np.rint(x * (len(lut) - 1)).astype(np.int64)
    return lut[idx]


def colorize_disparity(disparity, vmax=None, percentile=95.0):
    """Disparity (inverse depth) with magma, near = bright (numpy).

    Args:
      disparity: [..., H, W] or [..., H, W, 1] float, >= 0.
      vmax: fixed normaliser; default: per-image `percentile`-th percentile.
      percentile: see `colorize`.

    Returns:
      float32 [..., H, W, 3] RGB in [0, 1].
    """
    return colorize(disparity, vmin=0.0, vmax=vmax, percentile=percentile)


def colorize_depth(depth, vmax=None, percentile=95.0, eps=1e-6):
    """Depth shown as its inverse with magma, so near = bright (numpy).

    Args:
      depth: [..., H, W] or [..., H, W, 1] float, > 0 (0 or non-finite = invalid, black).
      vmax: fixed normaliser of the inverse depth; default per-image percentile.
      percentile: see `colorize`.
      eps: depths below it are treated as invalid.

    Returns:
      float32 [..., H, W, 3] RGB in [0, 1].
    """
    d = _squeeze_channel(depth)
    valid = np.isfinite(d) & (d > eps)
    inv = np.where(valid, 1.0 / np.where(valid, d, 1.0), 0.0).astype(np.float32)
    return colorize(inv, vmin=0.0, vmax=vmax, percentile=percentile)


# --- Flow colour wheel (Baker et al., Middlebury) ---------------------------------

@functools.lru_cache(maxsize=None)
def make_color_wheel():
    """The Middlebury flow colour wheel.

    Returns:
      float32 [55, 3] RGB in [0, 1]: red -> yellow -> green -> cyan -> blue -> magenta.
    """
    ry, yg, gc, cb, bm, mr = 15, 6, 4, 11, 13, 6
    wheel = np.zeros((ry + yg + gc + cb + bm + mr, 3), np.float64)
    col = 0
    wheel[col:col + ry, 0] = 255
    wheel[col:col + ry, 1] = np.floor(255 * np.arange(ry) / ry)
    col += ry
    wheel[col:col + yg, 0] = 255 - np.floor(255 * np.arange(yg) / yg)
    wheel[col:col + yg, 1] = 255
    col += yg
    wheel[col:col + gc, 1] = 255
    wheel[col:col + gc, 2] = np.floor(255 * np.arange(gc) / gc)
    col += gc
    wheel[col:col + cb, 1] = 255 - np.floor(255 * np.arange(cb) / cb)
    wheel[col:col + cb, 2] = 255
    col += cb
    wheel[col:col + bm, 2] = 255
    wheel[col:col + bm, 0] = np.floor(255 * np.arange(bm) / bm)
    col += bm
    wheel[col:col + mr, 2] = 255 - np.floor(255 * np.arange(mr) / mr)
    wheel[col:col + mr, 0] = 255
    wheel = (wheel / 255.0).astype(np.float32)
    wheel.setflags(write=False)
    return wheel


_UNKNOWN_FLOW = 1e9


def flow_to_color(flow, max_flow=None, valid=None):
    """Colours optical flow with the Middlebury wheel (numpy).

    Args:
      flow: [..., H, W, 2] float, channel 0 = x (u), 1 = y (v), pixels.
      max_flow: magnitude mapped to full saturation; default: per image, the maximum
        magnitude over valid pixels.
      valid: optional [..., H, W] (or [..., H, W, 1]) bool; invalid pixels are black.
        Pixels with |u| or |v| > 1e9 or non-finite are also black.

    Returns:
      float32 [..., H, W, 3] RGB in [0, 1].
    """
    flow = np.asarray(flow, np.float32)
    u, v = flow[..., 0], flow[..., 1]
    ok = np.isfinite(u) & np.isfinite(v) & (np.abs(u) < _UNKNOWN_FLOW) & (np.abs(v) < _UNKNOWN_FLOW)
    if valid is not None:
        valid = np.asarray(valid)
        if valid.ndim == flow.ndim:          # [..., H, W, 1]
            valid = valid[..., 0]
        ok &= valid.astype(bool)
    u = np.where(ok, u, 0.0)
    v = np.where(ok, v, 0.0)
    rad = np.sqrt(u * u + v * v)
    if max_flow is None:
        norm = np.max(rad, axis=(-2, -1), keepdims=True)
    else:
        norm = np.broadcast_to(np.asarray(max_flow, np.float32), rad.shape[:-2])[..., None, None]
    norm = np.maximum(norm, np.finfo(np.float32).eps)
    u, v, rad = u / norm, v / norm, rad / norm
    wheel = make_color_wheel()
    ncols = len(wheel)
    a = np.arctan2(-v, -u) / np.pi
    fk = (a + 1.0) / 2.0 * (ncols - 1)
    k0 = np.floor(fk).astype(np.int64)
    k1 = k0 + 1
    k1[k1 == ncols] = 0
    f = (fk - k0)[..., None]
    col = (1.0 - f) * wheel[k0] + f * wheel[k1]
    r = rad[..., None]
    col = np.where(r <= 1.0, 1.0 - r * (1.0 - col), col * 0.75)
    col = np.where(ok[..., None], col, 0.0)
    return col.astype(np.float32)


def mask_to_color(mask, color=(1.0, 1.0, 1.0)):
    """A binary/soft mask [..., H, W] (or [..., H, W, 1]) as an RGB image (numpy)."""
    m = np.clip(_squeeze_channel(mask), 0.0, 1.0)[..., None]
    return (m * np.asarray(color, np.float32)).astype(np.float32)


def to_uint8(image):
    """float RGB in [0, 1] -> uint8 (rounded, clipped)."""
    return np.clip(np.rint(np.asarray(image, np.float32) * 255.0), 0, 255).astype(np.uint8)


# --- TensorFlow versions ----------------------------------------------------------

def _tf():
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    return tf


def _tf_squeeze_channel(tf, x):
    x = tf.convert_to_tensor(x)
    x = tf.cast(x, tf.float32)
    if x.shape.rank is not None and x.shape.rank >= 3 and x.shape[-1] == 1:
        x = x[..., 0]
    return x


def _tf_per_image(tf, value, x):
    """Scalar or per-image [...] value -> [..., 1, 1] broadcastable against x [..., H, W]."""
    value = tf.cast(tf.convert_to_tensor(value), tf.float32)
    if value.shape.rank:
        value = value[..., None, None]
    return value + tf.zeros_like(x[..., :1, :1])


def _tf_percentile(tf, x, q):
    """Per-image percentile over the last two axes (linear interpolation, as numpy).

    Non-finite values are ignored.
    """
    lead = tf.shape(x)[:-2]
    flat = tf.reshape(x, tf.concat([lead, [-1]], 0))
    finite = tf.math.is_finite(flat)
    big = tf.fill(tf.shape(flat), tf.constant(np.inf, tf.float32))
    srt = tf.sort(tf.where(finite, flat, big), axis=-1)
    n = tf.reduce_sum(tf.cast(finite, tf.int32), axis=-1)
    pos = tf.cast(tf.maximum(n - 1, 0), tf.float32) * (q / 100.0)
    lo_i = tf.cast(tf.floor(pos), tf.int32)
    hi_i = tf.minimum(lo_i + 1, tf.maximum(n - 1, 0))
    lo_v = tf.gather(srt, lo_i[..., None], batch_dims=len(x.shape) - 2)[..., 0]
    hi_v = tf.gather(srt, hi_i[..., None], batch_dims=len(x.shape) - 2)[..., 0]
    w = pos - tf.floor(pos)
    val = lo_v + w * (hi_v - lo_v)
    return tf.where(n > 0, val, tf.ones_like(val))


def colorize_tf(values, vmin=None, vmax=None, percentile=95.0):
    """TF version of `colorize` (usable inside tf.function; rank must be static).

    Args:
      values: [..., H, W] or [..., H, W, 1] float tensor.
      vmin, vmax, percentile: as in `colorize` (scalars or per-image tensors).

    Returns:
      float32 [..., H, W, 3] in [0, 1].
    """
    tf = _tf()
    raw = _tf_squeeze_channel(tf, values)
    x = tf.where(tf.math.is_finite(raw), raw, tf.zeros_like(raw))
    lo = tf.zeros_like(x[..., :1, :1]) if vmin is None else _tf_per_image(tf, vmin, x)
    if vmax is None:
        hi = _tf_percentile(tf, raw, percentile)[..., None, None]
    else:
        hi = _tf_per_image(tf, vmax, x)
    scale = tf.maximum(hi - lo, 1e-8)
    t = tf.clip_by_value((x - lo) / scale, 0.0, 1.0)
    lut = tf.constant(magma_lut())
    idx = tf.cast(tf.round(t * (lut.shape[0] - 1)), tf.int32)
    return tf.gather(lut, idx)


def colorize_disparity_tf(disparity, vmax=None, percentile=95.0):
    """TF version of `colorize_disparity`: [..., H, W(, 1)] -> float32 [..., H, W, 3]."""
    return colorize_tf(disparity, vmin=0.0, vmax=vmax, percentile=percentile)


def colorize_depth_tf(depth, vmax=None, percentile=95.0, eps=1e-6):
    """TF version of `colorize_depth`: [..., H, W(, 1)] -> float32 [..., H, W, 3]."""
    tf = _tf()
    d = _tf_squeeze_channel(tf, depth)
    valid = tf.math.is_finite(d) & (d > eps)
    inv = tf.where(valid, 1.0 / tf.where(valid, d, tf.ones_like(d)), tf.zeros_like(d))
    return colorize_tf(inv, vmin=0.0, vmax=vmax, percentile=percentile)


def colorize_log_depth_tf(depth, min_depth, max_depth):
    """Depth in metres on a fixed log scale from ``min_depth`` (black) to ``max_depth``
    (bright), magma: the same colour means the same distance at every step and in every
    image (unlike `colorize_disparity_tf`, normalised per image, near = bright).
    [..., H, W(, 1)] -> float32 [..., H, W, 3]."""
    tf = _tf()
    d = _tf_squeeze_channel(tf, tf.cast(depth, tf.float32))
    d = tf.clip_by_value(tf.where(tf.math.is_finite(d), d, max_depth), min_depth, max_depth)
    t = (tf.math.log(d) - math.log(min_depth)) / (math.log(max_depth) - math.log(min_depth))
    return colorize_tf(t, vmin=0.0, vmax=1.0)


def flow_to_color_tf(flow, max_flow=None, valid=None):
    """TF version of `flow_to_color`.

    Args:
      flow: [..., H, W, 2] float tensor (x, y), static rank.
      max_flow: optional scalar (or per-image tensor) saturation magnitude.
      valid: optional [..., H, W] or [..., H, W, 1] mask.

    Returns:
      float32 [..., H, W, 3] RGB in [0, 1].
    """
    tf = _tf()
    flow = tf.cast(tf.convert_to_tensor(flow), tf.float32)
    u, v = flow[..., 0], flow[..., 1]
    ok = (tf.math.is_finite(u) & tf.math.is_finite(v)
          & (tf.abs(u) < _UNKNOWN_FLOW) & (tf.abs(v) < _UNKNOWN_FLOW))
    if valid is not None:
        valid = tf.convert_to_tensor(valid)
        if valid.shape.rank == flow.shape.rank:
            valid = valid[..., 0]
        ok = ok & tf.cast(valid, tf.bool)
    u = tf.where(ok, u, tf.zeros_like(u))
    v = tf.where(ok, v, tf.zeros_like(v))
    rad = tf.sqrt(u * u + v * v)
    if max_flow is None:
        norm = tf.reduce_max(rad, axis=[-2, -1], keepdims=True)
    else:
        norm = _tf_per_image(tf, max_flow, rad)
    norm = tf.maximum(norm, np.finfo(np.float32).eps)
    u, v, rad = u / norm, v / norm, rad / norm
    wheel = tf.constant(make_color_wheel())
    ncols = int(wheel.shape[0])
    a = tf.atan2(-v, -u) / np.pi
    fk = (a + 1.0) / 2.0 * (ncols - 1)
    k0f = tf.floor(fk)
    k0 = tf.cast(k0f, tf.int32)
    k1 = tf.where(k0 + 1 == ncols, tf.zeros_like(k0), k0 + 1)
    f = (fk - k0f)[..., None]
    col = (1.0 - f) * tf.gather(wheel, k0) + f * tf.gather(wheel, k1)
    r = rad[..., None]
    col = tf.where(r <= 1.0, 1.0 - r * (1.0 - col), col * 0.75)
    return tf.where(ok[..., None], col, tf.zeros_like(col))


def mask_to_color_tf(mask, color=(1.0, 1.0, 1.0)):
    """TF version of `mask_to_color`."""
    tf = _tf()
    m = tf.clip_by_value(_tf_squeeze_channel(tf, mask), 0.0, 1.0)[..., None]
    return m * tf.constant(color, tf.float32)
