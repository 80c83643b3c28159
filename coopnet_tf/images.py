"""The one image-file loader of the entry points (evaluate, predict). NumPy + PIL."""
from typing import Optional, Tuple

import numpy as np

RESAMPLING = ("lanczos", "bilinear")


def load_image(path: str, height: Optional[int] = None, width: Optional[int] = None,
               crop_bottom: float = 0.0,
               resample: str = "lanczos") -> Tuple[np.ndarray, Tuple[int, int]]:
    """Image file -> (float32 ``[H, W, 3]`` in [0, 1], original ``(height, width)``).

    Args:
      path: any image PIL reads (converted to RGB).
      height, width: resize to this size when both are given and differ.
      crop_bottom: fraction of rows cut from the bottom before resizing (KITTI's car hood).
      resample: "lanczos" (Monodepth2's PIL ANTIALIAS; the evaluators) or "bilinear".
    """
    from PIL import Image  # pylint: disable=import-outside-toplevel
    if resample not in RESAMPLING:
        raise ValueError(f"resample must be one of {RESAMPLING}, got {resample!r}")
    with Image.open(path) as im:
        im = im.convert("RGB")
        if crop_bottom:
            w, h = im.size
            im = im.crop((0, 0, w, int(round(h * (1.0 - crop_bottom)))))
        size = im.size[::-1]
        if height and width and (height, width) != size:
            im = im.resize((width, height),
                           Image.LANCZOS if resample == "lanczos" else Image.BILINEAR)
        return np.asarray(im, np.float32) / 255.0, size
