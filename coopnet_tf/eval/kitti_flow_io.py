"""KITTI 2012/2015 16-bit PNG files: optical flow and disparity.

Flow PNG (KITTI devkit `io_flow.h`): 3 channels of uint16 in RGB order,
`u = (R - 2^15) / 64`, `v = (G - 2^15) / 64`, `valid = B > 0` (B is 1 or 0). Values are
therefore quantised to 1/64 px and limited to about ±512 px.
Disparity PNG (`io_disp.h`): 1 channel uint16, `d = value / 256`, 0 = invalid.

PNG encoding/decoding of 16-bit images uses `tf.io` (Pillow reads 48-bit PNGs as 8-bit);
TensorFlow is imported lazily so that the numpy converters stay TF-free.
"""
import os

import numpy as np

from coopnet_tf.eval.inputs import check_png

FLOW_OFFSET = 2.0 ** 15
FLOW_SCALE = 64.0
DISP_SCALE = 256.0


def _tf():
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    return tf


def read_png_uint16(path):
    """Reads a PNG keeping 16-bit depth.

    Args:
      path: file path.

    Returns:
      uint16 [H, W, C] (C = 1 for grey, 3 for RGB; 8-bit files are widened ×257 by TF).
    """
    tf = _tf()
    data = tf.io.read_file(os.fspath(path))
    return tf.io.decode_png(data, dtype=tf.uint16).numpy()


def write_png_uint16(path, image):
    """Writes a uint16 [H, W] or [H, W, C] array as a 16-bit PNG (parent dirs created)."""
    tf = _tf()
    image = np.asarray(image)
    if image.dtype != np.uint16:
        raise TypeError(f"expected uint16, got {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    tf.io.write_file(path, tf.io.encode_png(tf.constant(image)))


def decode_flow(image):
    """KITTI flow PNG pixels -> flow and validity.

    Args:
      image: uint16 [H, W, 3] in RGB channel order (as `read_png_uint16` returns; OpenCV's
        `imread` would give BGR — reverse the channels first).

    Returns:
      (flow float32 [H, W, 2] (u = x, v = y, pixels), valid bool [H, W]).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"a KITTI flow PNG has 3 channels, got shape {image.shape}")
    flow = (image[..., :2].astype(np.float32) - FLOW_OFFSET) / FLOW_SCALE
    valid = image[..., 2] > 0
    return flow, valid


def encode_flow(flow, valid=None):
    """Flow and validity -> KITTI flow PNG pixels (inverse of `decode_flow`).

    Args:
      flow: [H, W, 2] float pixels (x, y).
      valid: optional [H, W] bool; default: every finite pixel. Invalid pixels are written
        with u = v = 0 and B = 0.

    Returns:
      uint16 [H, W, 3] RGB. Values are rounded to the nearest 1/64 px and clipped to the
      representable range [-512, 512 - 1/64].
    """
    flow = np.asarray(flow, np.float64)
    finite = np.all(np.isfinite(flow), axis=-1)
    valid = finite if valid is None else (np.asarray(valid, bool) & finite)
    out = np.zeros(flow.shape[:2] + (3,), np.uint16)
    q = np.clip(np.rint(flow * FLOW_SCALE + FLOW_OFFSET), 0, 65535)
    q = np.where(valid[..., None], q, FLOW_OFFSET)
    out[..., :2] = q.astype(np.uint16)
    out[..., 2] = valid.astype(np.uint16)
    return out


def read_flow_png(path):
    """Reads a KITTI flow PNG.

    Returns:
      (flow float32 [H, W, 2], valid bool [H, W]).

    Raises:
      InputError: the file is not a 16-bit RGB PNG (an 8-bit picture would otherwise
        decode to flows of hundreds of pixels).
    """
    check_png(path, 16, "RGB", "KITTI flow file")
    return decode_flow(read_png_uint16(path))


def write_flow_png(path, flow, valid=None):
    """Writes flow [H, W, 2] (and optional valid [H, W]) as a KITTI flow PNG."""
    write_png_uint16(path, encode_flow(flow, valid))


def read_disp_png(path):
    """Reads a KITTI disparity PNG.

    Returns:
      (disparity float32 [H, W] in pixels, valid bool [H, W]).

    Raises:
      InputError: the file is not a 16-bit grey PNG.
    """
    check_png(path, 16, "grey", "KITTI disparity file")
    img = read_png_uint16(path)[..., 0]
    return img.astype(np.float32) / DISP_SCALE, img > 0


def write_disp_png(path, disparity, valid=None):
    """Writes disparity [H, W] (pixels) as a KITTI 16-bit PNG; invalid / <= 0 -> 0."""
    d = np.asarray(disparity, np.float64)
    ok = np.isfinite(d) & (d > 0)
    if valid is not None:
        ok &= np.asarray(valid, bool)
    q = np.clip(np.rint(np.where(ok, d, 0.0) * DISP_SCALE), 0, 65535).astype(np.uint16)
    write_png_uint16(path, q)


def read_label_png(path):
    """Reads an integer label map (KITTI `obj_map`, semantic ids, 8- or 16-bit grey) unscaled.

    `tf.io.decode_png(dtype=uint16)` would widen 8-bit values ×257, so Pillow is used.

    Returns:
      int32 [H, W] (first channel if the file has several).
    """
    from PIL import Image  # pylint: disable=import-outside-toplevel
    with Image.open(path) as im:
        arr = np.asarray(im)
    if arr.ndim == 3:
        arr = arr[..., 0]
    return arr.astype(np.int32)
