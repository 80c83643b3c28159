"""Checks of the evaluators' input files: each failure is an `InputError` naming the file
(and the line, image or pixel) and what was expected, so that no garbage becomes a number.

Numpy only; PNG headers are read directly (TensorFlow would silently widen 8-bit files).
"""
import struct

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOUR_TYPES = {0: "grey", 2: "RGB", 3: "palette", 4: "grey+alpha", 6: "RGBA"}


class InputError(ValueError):
    """An evaluator input is malformed; the message names the file and the problem."""


def png_header(path):
    """(height, width, bit_depth, colour) of a PNG file from its IHDR chunk.

    `colour` is one of "grey", "RGB", "palette", "grey+alpha", "RGBA".

    Raises:
      InputError: the file is not a PNG.
    """
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise InputError(f"{path}: not a PNG file")
    width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
    return height, width, depth, _PNG_COLOUR_TYPES.get(colour, f"colour type {colour}")


def check_png(path, bit_depth, colour, what):
    """Raises InputError unless `path` is a PNG of `bit_depth` bits and `colour` channels.

    Returns:
      (height, width).
    """
    height, width, depth, found = png_header(path)
    if (depth, found) != (bit_depth, colour):
        raise InputError(f"{path}: a {what} is a {bit_depth}-bit {colour} PNG; this file is "
                         f"{depth}-bit {found} ({height}x{width})")
    return height, width


def _where(index):
    names = ("image", "row", "col") if len(index) == 3 else ("row", "col")[-len(index):]
    return " ".join(f"{n} {int(i)}" for n, i in zip(names, index))


def check_finite(array, what, path, positive=False, non_negative=False):
    """Raises InputError naming `path` and the first offending element of `array`.

    Args:
      array: numpy array ([N, H, W] or [H, W]).
      what: the quantity, e.g. "disparity".
      path: the file (or source) quoted in the message.
      positive: also require > 0.
      non_negative: also require >= 0.
    """
    array = np.asarray(array)
    bad = ~np.isfinite(array)
    problem = "NaN or infinite"
    if not bad.any():
        if positive:
            bad, problem = array <= 0, "zero or negative"
        elif non_negative:
            bad, problem = array < 0, "negative"
    if bad.any():
        first = np.argwhere(bad)[0]
        need = " and > 0" if positive else (" and >= 0" if non_negative else "")
        raise InputError(
            f"{path}: {int(bad.sum())} {problem} {what} value(s), first at {_where(first)} "
            f"(value {float(array[tuple(first)]):g}); every {what} must be finite{need}")
