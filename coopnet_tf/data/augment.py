"""Pure tensor ops on one parsed snippet: resize, horizontal flip, colour jitter.

A snippet here is the dict of `coopnet_tf.data.records.parse_snippet` after the frames
are converted to float32 in [0, 1] (keys `specs.KEY_*`, unbatched: frames [3, H, W, 3],
intrinsics [3, 3], optional gt_depth [H, W, 1], gt_pose [S, 4, 4], gt_flow [S, H, W, 2],
gt_moving_mask [S, H, W, 1], gt_object_motion [S, H, W, 3], and the padded boxes of
`records.padded_boxes`: boxes [3, N, 4], box_mask, box_scores, box_classes [3, N]).
Every random op is *stateless*: it takes a `seed` of shape [2] (int32/int64), so a
pipeline is reproducible whatever its parallelism.

Geometry conventions are those of `coopnet_tf.geometry.camera` (pixel centres at integer
coordinates; a resize scales K's rows by the size ratios, ignoring the half-pixel term as
every reference repository does; a flip maps column x to W - 1 - x, so cx' = W - 1 - cx).
Boxes move with the image content: x' = (x + 0.5) W'/W - 0.5 under a resize (the
half-pixel sampling of tf.image.resize), [x1, x2] -> [W-1-x2, W-1-x1] under a flip, then
clipped to the image [-0.5, W - 0.5] x [-0.5, H - 0.5] (`data/boxes.py` does the same in
NumPy for the converters).
No gin here: the pipeline factory (`pipeline.make_dataset`) is the configurable edge.
"""
from typing import Dict

import tensorflow as tf

from coopnet_tf import specs
from coopnet_tf.geometry.camera import flip_intrinsics, scale_intrinsics

Snippet = Dict[str, tf.Tensor]


def resize_snippet(snippet: Snippet, height: int, width: int) -> Snippet:
    """Resizes frames (and ground truth, when present) to (height, width); rescales K.

    Frames (uint8, or float32 in [0, 1]) come out float32 in [0, 1]: bilinear with
    antialiasing (a widened triangle filter when shrinking, like PIL's resize in
    Monodepth2). Depth, moving masks and object motion: nearest neighbour. Flow: bilinear,
    values multiplied by the size ratios (x by W'/W, y by H'/H). K: `scale_intrinsics`.
    Boxes: `resize_boxes`, then `clip_boxes`.
    A snippet already at (height, width) keeps its values (uint8 frames divided by 255).

    Args:
      snippet: dict with `frames` uint8 or float32 [N, h, w, 3] and `intrinsics` [3, 3]
        (plus GT).
      height, width: target size (python ints).

    Returns:
      a new dict with the same keys, spatial size (height, width).
    """
    out = dict(snippet)
    frames = snippet[specs.KEY_FRAMES]
    in_hw = tf.shape(frames)[1:3]
    same = tf.reduce_all(tf.equal(in_hw, [height, width]))
    sy = tf.cast(height, tf.float32) / tf.cast(in_hw[0], tf.float32)
    sx = tf.cast(width, tf.float32) / tf.cast(in_hw[1], tf.float32)
    size = [height, width]

    def keep_or(value, fn):
        return tf.cond(same, lambda: tf.identity(value), lambda: fn(value))

    def frames_to(x):
        # uint8 frames are resized as they are (resize returns float32) and scaled to [0, 1]
        # after, on the smaller image
        scale = 1.0 / 255.0 if x.dtype == tf.uint8 else 1.0
        return tf.cond(
            same, lambda: tf.cast(x, tf.float32) * scale,
            lambda: tf.clip_by_value(
                tf.image.resize(x, size, "bilinear", antialias=True) * scale, 0.0, 1.0))

    out[specs.KEY_FRAMES] = tf.ensure_shape(frames_to(frames), [frames.shape[0], height, width, 3])
    if specs.KEY_FRAMES_AUG in snippet:
        out[specs.KEY_FRAMES_AUG] = tf.ensure_shape(
            frames_to(snippet[specs.KEY_FRAMES_AUG]), [frames.shape[0], height, width, 3])
    out[specs.KEY_INTRINSICS] = scale_intrinsics(snippet[specs.KEY_INTRINSICS], sx, sy)
    if specs.KEY_BOXES in snippet:
        out.update(clip_boxes(resize_boxes(snippet, sx, sy), height, width))

    def nearest(x):
        return tf.image.resize(x, size, "nearest")

    if specs.KEY_GT_DEPTH in snippet:
        out[specs.KEY_GT_DEPTH] = tf.ensure_shape(
            keep_or(snippet[specs.KEY_GT_DEPTH], nearest), [height, width, 1])
    if specs.KEY_GT_MOVING in snippet:
        out[specs.KEY_GT_MOVING] = tf.ensure_shape(
            keep_or(snippet[specs.KEY_GT_MOVING], nearest), [specs.NUM_SOURCES, height, width, 1])
    if specs.KEY_GT_OBJECT_MOTION in snippet:
        out[specs.KEY_GT_OBJECT_MOTION] = tf.ensure_shape(
            keep_or(snippet[specs.KEY_GT_OBJECT_MOTION], nearest),
            [specs.NUM_SOURCES, height, width, 3])
    if specs.KEY_GT_FLOW in snippet:
        def resize_flow(flow):
            return tf.image.resize(flow, size, "bilinear") * tf.stack([sx, sy])
        out[specs.KEY_GT_FLOW] = tf.ensure_shape(
            keep_or(snippet[specs.KEY_GT_FLOW], resize_flow), [specs.NUM_SOURCES, height, width, 2])
    return out


def resize_boxes(snippet: Snippet, sx, sy) -> Snippet:
    """The box keys of an image resized by (sx, sy) = (W'/W, H'/H): x' = (x + 0.5) sx - 0.5
    (where tf.image.resize moves the content); padding rows stay 0.

    Args:
      snippet: dict with `boxes` [..., N, 4] and `box_mask` [..., N] (and scores/classes).
      sx, sy: float32 scalars.

    Returns:
      dict of the four box keys.
    """
    scale = tf.stack([sx, sy, sx, sy])
    boxes = (snippet[specs.KEY_BOXES] + 0.5) * scale - 0.5
    out = {k: snippet[k] for k in _BOX_KEYS}
    out[specs.KEY_BOXES] = _zero_padding(boxes, snippet[specs.KEY_BOX_MASK])
    return out


def _zero_padding(boxes: tf.Tensor, box_mask: tf.Tensor) -> tf.Tensor:
    return tf.where(box_mask[..., None] > 0.0, boxes, tf.zeros_like(boxes))


def flip_boxes(boxes: tf.Tensor, box_mask: tf.Tensor, width) -> tf.Tensor:
    """Boxes [..., N, 4] of the image mirrored left-right: [x1, x2] -> [W-1-x2, W-1-x1]
    (column x -> W - 1 - x, as `flip_intrinsics`); padding rows (mask 0) stay 0."""
    w = tf.cast(width, boxes.dtype) - 1.0
    x1, y1, x2, y2 = tf.unstack(boxes, axis=-1)
    return _zero_padding(tf.stack([w - x2, y1, w - x1, y2], axis=-1), box_mask)


def clip_boxes(snippet: Snippet, height: int, width: int, min_size: float = 0.0) -> Snippet:
    """The box keys clipped to the image [-0.5, W - 0.5] x [-0.5, H - 0.5]; a box whose
    clipped width or height is <= `min_size` (e.g. entirely outside) becomes padding
    (mask 0, coordinates and score 0, class -1).

    Returns:
      dict of the four box keys.
    """
    boxes = snippet[specs.KEY_BOXES]
    lo = tf.constant([-0.5, -0.5, -0.5, -0.5], boxes.dtype)
    hi = tf.cast(tf.stack([width, height, width, height]), boxes.dtype) - 0.5
    boxes = tf.clip_by_value(boxes, lo, hi)
    keep = tf.logical_and(boxes[..., 2] - boxes[..., 0] > min_size,
                          boxes[..., 3] - boxes[..., 1] > min_size)
    keep = tf.logical_and(keep, snippet[specs.KEY_BOX_MASK] > 0.0)
    keep_f = tf.cast(keep, boxes.dtype)
    return {
        specs.KEY_BOXES: _zero_padding(boxes, keep_f),
        specs.KEY_BOX_MASK: keep_f,
        specs.KEY_BOX_SCORES: snippet[specs.KEY_BOX_SCORES] * keep_f,
        specs.KEY_BOX_CLASSES: tf.where(keep, snippet[specs.KEY_BOX_CLASSES], -1),
    }


_BOX_KEYS = (specs.KEY_BOXES, specs.KEY_BOX_MASK, specs.KEY_BOX_SCORES, specs.KEY_BOX_CLASSES)


# F = diag(-1, 1, 1, 1) of `flip_snippet`. A Python tuple, not a tensor: a module-level
# tensor would initialise TensorFlow's context on import (before a multi-worker strategy
# or a logical-device split can be configured).
_FLIP_DIAG = (-1.0, 1.0, 1.0, 1.0)


def flip_snippet(snippet: Snippet) -> Snippet:
    """Mirrors a snippet left-right, ground truth included, consistently with the geometry.

    Column x goes to W - 1 - x. K: cx' = W - 1 - cx (`flip_intrinsics`). Camera points
    mirror as X' = F X with F = diag(-1, 1, 1), so poses become F T F (F = diag(-1,1,1,1)),
    flows are mirrored and their x component negated, depth and masks are mirrored,
    object motion r mirrored with r' = F r, boxes mirrored (`flip_boxes`).

    Args:
      snippet: unbatched snippet dict (frames [N, H, W, 3] ...).

    Returns:
      the flipped snippet (same keys).
    """
    out = dict(snippet)
    for key in (specs.KEY_FRAMES, specs.KEY_FRAMES_AUG):
        if key in snippet:
            out[key] = tf.reverse(snippet[key], axis=[2])
    width = tf.shape(snippet[specs.KEY_FRAMES])[2]
    out[specs.KEY_INTRINSICS] = flip_intrinsics(snippet[specs.KEY_INTRINSICS], width)
    if specs.KEY_GT_DEPTH in snippet:
        out[specs.KEY_GT_DEPTH] = tf.reverse(snippet[specs.KEY_GT_DEPTH], axis=[1])
    if specs.KEY_GT_MOVING in snippet:
        out[specs.KEY_GT_MOVING] = tf.reverse(snippet[specs.KEY_GT_MOVING], axis=[2])
    if specs.KEY_GT_FLOW in snippet:
        out[specs.KEY_GT_FLOW] = tf.reverse(snippet[specs.KEY_GT_FLOW], axis=[2]) * [-1.0, 1.0]
    if specs.KEY_GT_OBJECT_MOTION in snippet:
        out[specs.KEY_GT_OBJECT_MOTION] = (tf.reverse(snippet[specs.KEY_GT_OBJECT_MOTION], axis=[2])
                                           * [-1.0, 1.0, 1.0])
    if specs.KEY_BOXES in snippet:
        out[specs.KEY_BOXES] = flip_boxes(snippet[specs.KEY_BOXES], snippet[specs.KEY_BOX_MASK],
                                          width)
    if specs.KEY_GT_POSE in snippet:
        flip = tf.linalg.diag(tf.constant(_FLIP_DIAG, snippet[specs.KEY_GT_POSE].dtype))
        out[specs.KEY_GT_POSE] = tf.matmul(tf.matmul(flip, snippet[specs.KEY_GT_POSE]), flip)
    return out


def random_flip(snippet: Snippet, seed: tf.Tensor, probability: float = 0.5) -> Snippet:
    """`flip_snippet` with probability `probability` (one draw for the whole snippet)."""
    if probability <= 0.0:
        return snippet
    u = tf.random.stateless_uniform([], seed=seed)
    return tf.cond(u < probability, lambda: flip_snippet(snippet),
                   lambda: {k: tf.identity(v) for k, v in snippet.items()})


def sample_jitter(seed: tf.Tensor, brightness: float = 0.2, contrast: float = 0.2,
                  saturation: float = 0.2, hue: float = 0.1) -> Dict[str, tf.Tensor]:
    """Draws one set of jitter factors (torchvision `ColorJitter` ranges, as Monodepth2).

    brightness, contrast, saturation factors uniform in [max(0, 1 - x), 1 + x]; hue shift
    uniform in [-hue, hue] (fraction of the hue circle). A zero range gives the identity.

    Returns:
      dict of float32 scalars `brightness`, `contrast`, `saturation`, `hue`.
    """
    seeds = tf.random.experimental.stateless_split(seed, 4)

    def factor(s, x):
        return tf.random.stateless_uniform([], s, max(0.0, 1.0 - x), 1.0 + x)

    return {
        "brightness": factor(seeds[0], brightness),
        "contrast": factor(seeds[1], contrast),
        "saturation": factor(seeds[2], saturation),
        "hue": tf.random.stateless_uniform([], seeds[3], -hue, hue),
    }


_LUMA = (0.299, 0.587, 0.114)
# RGB <-> YIQ (NTSC); a hue shift is a rotation of the (I, Q) chroma plane.
_RGB_TO_YIQ = ((0.299, 0.587, 0.114),
               (0.595716, -0.274453, -0.321263),
               (0.211456, -0.522591, 0.311135))


def _grayscale(images):
    """[..., 3] -> [..., 1] luma (matmul: much faster than a reduction over a size-3 axis)."""
    flat = tf.reshape(images, [-1, 3])
    return tf.reshape(tf.matmul(flat, tf.constant(_LUMA, shape=[3, 1])),
                      tf.concat([tf.shape(images)[:-1], [1]], 0))


def colour_matrix(saturation: tf.Tensor, hue: tf.Tensor) -> tf.Tensor:
    """3x3 RGB matrix of a saturation blend followed by a hue rotation (row vectors: x @ M).

    Saturation s: `s x + (1 - s) grey(x)` (torchvision's blend with the grey image).
    Hue h (fraction of the colour circle): rotation of YIQ's chroma plane by 2 pi h, the
    linear form of an HSV hue shift (it keeps luma; `tf.image.adjust_hue`'s HSV round trip
    costs ~5x more per pixel and is not linear).
    """
    grey = tf.matmul(tf.ones([3, 1]), tf.constant(_LUMA, shape=[1, 3]))  # x -> grey(x) 1
    sat = saturation * tf.eye(3) + (1.0 - saturation) * grey
    to_yiq = tf.constant(_RGB_TO_YIQ)
    angle = 2.0 * 3.141592653589793 * hue
    c, s = tf.cos(angle), tf.sin(angle)
    zero, one = tf.zeros_like(c), tf.ones_like(c)
    rot = tf.stack([tf.stack([one, zero, zero]), tf.stack([zero, c, -s]), tf.stack([zero, s, c])])
    hue_m = tf.linalg.inv(to_yiq) @ rot @ to_yiq           # acts on column vectors
    return tf.transpose(hue_m @ sat)                       # sat first; row-vector form


def color_jitter(frames: tf.Tensor, params: Dict[str, tf.Tensor],
                 hue_enabled: bool = True) -> tf.Tensor:
    """Applies ONE jitter (`sample_jitter`'s factors) identically to every frame.

    Fixed order: brightness (scale), contrast (blend with the mean grey level of the whole
    snippet, so every frame gets the same affine map), then saturation and hue as one 3x3
    colour matrix (`colour_matrix`); clipped to [0, 1] after brightness, contrast and the
    matrix. Every step but contrast is per pixel and contrast's pivot is shared, so the
    result is the same function of the pixel value in all frames.

    Args:
      frames: float32 [N, H, W, 3] in [0, 1] (the N frames of one snippet).
      params: dict from `sample_jitter`.
      hue_enabled: False skips the hue rotation (saturation only).

    Returns:
      float32 [N, H, W, 3] in [0, 1].
    """
    x = tf.clip_by_value(frames * params["brightness"], 0.0, 1.0)
    mean = tf.reduce_mean(_grayscale(x))
    c = params["contrast"]
    x = tf.clip_by_value(x * c + (1.0 - c) * mean, 0.0, 1.0)
    hue = params["hue"] if hue_enabled else tf.zeros_like(params["hue"])
    matrix = colour_matrix(params["saturation"], hue)
    shape = tf.shape(x)
    x = tf.reshape(tf.matmul(tf.reshape(x, [-1, 3]), matrix), shape)
    return tf.clip_by_value(x, 0.0, 1.0)


def random_color_jitter(frames: tf.Tensor, seed: tf.Tensor, probability: float = 0.5,
                        brightness: float = 0.2, contrast: float = 0.2,
                        saturation: float = 0.2, hue: float = 0.1) -> tf.Tensor:
    """With probability `probability`, `color_jitter` with one draw for the whole snippet.

    Args:
      frames: float32 [N, H, W, 3] in [0, 1].
      seed: [2] stateless seed.

    Returns:
      float32 [N, H, W, 3]; `frames` itself when no jitter is drawn.
    """
    if probability <= 0.0:
        return frames
    apply_seed, params_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    params = sample_jitter(params_seed, brightness, contrast, saturation, hue)
    apply = tf.random.stateless_uniform([], apply_seed) < probability
    return tf.cond(apply,
                   lambda: color_jitter(frames, params, hue_enabled=hue > 0.0),
                   lambda: tf.identity(frames))


def augment_snippet(snippet: Snippet, seed: tf.Tensor, flip_probability: float = 0.5,
                    jitter_probability: float = 0.5, brightness: float = 0.2,
                    contrast: float = 0.2, saturation: float = 0.2, hue: float = 0.1,
                    ) -> Snippet:
    """Training augmentation of one snippet: random flip, then colour jitter.

    The flip applies to everything (clean and jittered frames, K, ground truth); the
    jitter only produces `frames_aug` (what the networks see); `frames` stay clean (what
    the losses see).

    Args:
      snippet: unbatched snippet dict with float32 `frames` in [0, 1].
      seed: [2] stateless seed for this snippet.

    Returns:
      the snippet with `frames_aug` added.
    """
    flip_seed, jitter_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    out = random_flip(snippet, flip_seed, flip_probability)
    out[specs.KEY_FRAMES_AUG] = random_color_jitter(
        out[specs.KEY_FRAMES], jitter_seed, jitter_probability, brightness, contrast,
        saturation, hue)
    return out
