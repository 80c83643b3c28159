"""Image resizing in numpy with OpenCV's and SciPy's sampling conventions.

The reference evaluation scripts resize with `cv2.resize` (Monodepth2 depth, UnDepthflow /
GeoNet flow) or `scipy.ndimage.zoom(order=0)` (Competitive Collaboration masks); OpenCV is
not a dependency here, so the same arithmetic is written out.
"""
import numpy as np


def _linear_taps(in_size, out_size):
    """Source indices and weights of cv2.INTER_LINEAR along one axis (half-pixel centres).

    Returns:
      (i0 [out], i1 [out], w1 [out]): out[o] = (1 - w1) * in[i0] + w1 * in[i1].
    """
    scale = in_size / out_size
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
    src = np.clip(src, 0.0, in_size - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, src - i0


def resize_bilinear(image, height, width):
    """Bilinear resize with cv2.resize(..., INTER_LINEAR) semantics for float images.

    Pixel centres are aligned (`src = (dst + 0.5) * in / out - 0.5`), samples outside the
    image are clamped to the border; no anti-aliasing when shrinking (as OpenCV).

    Args:
      image: [H, W] or [H, W, C] array.
      height, width: output size.

    Returns:
      float32 [height, width(, C)].
    """
    x = np.asarray(image, np.float64)
    in_h, in_w = x.shape[:2]
    if (in_h, in_w) == (height, width):
        return x.astype(np.float32)
    r0, r1, wr = _linear_taps(in_h, height)
    c0, c1, wc = _linear_taps(in_w, width)
    extra = (1,) * (x.ndim - 2)
    wr = wr.reshape((-1, 1) + extra)
    x = (1.0 - wr) * x[r0] + wr * x[r1]
    wc = wc.reshape((1, -1) + extra)
    x = (1.0 - wc) * x[:, c0] + wc * x[:, c1]
    return x.astype(np.float32)


def resize_nearest(image, height, width, mode="cv2"):
    """Nearest-neighbour resize.

    Args:
      image: [H, W] or [H, W, C] array (dtype kept).
      height, width: output size.
      mode: "cv2" — cv2.INTER_NEAREST, `src = floor(dst * in / out)`;
        "zoom" — scipy.ndimage.zoom(order=0) with its default corner alignment,
        `src = round(dst * (in - 1) / (out - 1))` (used by Competitive Collaboration).

    Returns:
      [height, width(, C)] array of the input dtype.
    """
    x = np.asarray(image)
    in_h, in_w = x.shape[:2]

    def idx(n_in, n_out):
        o = np.arange(n_out, dtype=np.float64)
        if mode == "cv2":
            return np.minimum(np.floor(o * (n_in / n_out)).astype(np.int64), n_in - 1)
        if mode == "zoom":
            if n_out == 1:
                return np.zeros(1, np.int64)
            return np.clip(np.floor(o * ((n_in - 1) / (n_out - 1)) + 0.5).astype(np.int64), 0, n_in - 1)
        raise ValueError(f"unknown nearest mode {mode!r} (expected 'cv2' or 'zoom')")

    return x[idx(in_h, height)][:, idx(in_w, width)]
