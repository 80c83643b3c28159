"""TensorBoard summaries from plain tensors (no trainer, no strategy, no step cadence).

The training loop owns the file writer, the step and the cadence (`tf.summary.record_if`);
these functions only turn named tensors into summaries, under fixed name scopes:

* ``losses/<term>``      — every loss term of the two objectives (`scalars`);
* ``train/<name>``       — learning rates, non-finite step count, throughput;
* ``apportion/<name>``   — quantile values, fraction of pixels in V and in the tails;
* ``histograms/delta``, ``histograms/delta_flow_x|y`` — the per-pixel Δ and Δflow values
  (the paper's Fig. 1, live);
* ``images/<name>``      — input frame, depth in metres (fixed log scale), disparity
  (per image), flow colour wheel, rigid flow, V mask, occlusion mask.

Colour maps come from `coopnet_tf.visualize` (magma for depth, the Middlebury wheel for
flow).
"""
from typing import Mapping, Optional

import tensorflow as tf

from coopnet_tf import specs, visualize

# Image endpoints understood by `write_images` (keys of the endpoint dict) and how they are
# drawn: "image" = RGB in [0, 1]; "log_depth" = depth in metres, fixed log scale
# [specs.MIN_DEPTH, specs.MAX_DEPTH] (near = dark); "depth" = magma of inverse depth;
# "disparity" = magma normalised per image (near = bright); "flow" = colour wheel;
# "mask" = grey; "heat" = magma scaled to the image's maximum.
IMAGE_KINDS = {
    "target": "image",
    "depth": "log_depth",
    "disparity": "disparity",
    "flow": "flow",
    "rigid_flow": "flow",
    "v_mask": "mask",
    "non_occluded": "mask",
    "automask": "mask",
    "flow_weight": "heat",
    "moderator_mask": "mask",    # CC's m_s (1 = static)
    "consensus_target": "mask",  # CC Eq. 12's label
    "gt_moving_mask": "mask",    # synthetic world: exact moving mask
}


def write_scalars(scalars: Mapping[str, tf.Tensor], step, prefix: str = "losses") -> None:
    """Writes every scalar of ``scalars`` as ``<prefix>/<key>``.

    Args:
      scalars: name -> scalar tensor / float (non-scalars are averaged).
      step: int64 step.
      prefix: name scope (``losses``, ``train``, ``apportion``).
    """
    with tf.name_scope(prefix):
        for key in sorted(scalars):
            value = tf.reduce_mean(tf.cast(scalars[key], tf.float32))
            tf.summary.scalar(key, value, step=step)


def write_histograms(values: Mapping[str, tf.Tensor], step, prefix: str = "histograms",
                     buckets: int = 60) -> None:
    """Histograms of per-pixel values (e.g. Δ, Δflow x/y), non-finite values dropped.

    Args:
      values: name -> tensor of any shape; an optional ``<name>_mask`` entry of the same
        number of elements selects the pixels to include (e.g. non-occluded).
      step: int64 step.
      prefix: name scope.
      buckets: histogram buckets.
    """
    with tf.name_scope(prefix):
        for key in sorted(values):
            if key.endswith("_mask"):
                continue
            flat = tf.reshape(tf.cast(values[key], tf.float32), [-1])
            keep = tf.math.is_finite(flat)
            mask = values.get(key + "_mask")
            if mask is not None:
                keep &= tf.reshape(tf.cast(mask, tf.float32), [-1]) > 0.5
            tf.summary.histogram(key, tf.boolean_mask(flat, keep), step=step, buckets=buckets)


def colorize_endpoint(kind: str, value: tf.Tensor) -> tf.Tensor:
    """One endpoint `[B, H, W, C]` -> RGB float `[B, H, W, 3]` in [0, 1] (see IMAGE_KINDS)."""
    value = tf.cast(value, tf.float32)
    if kind == "image":
        return tf.clip_by_value(value, 0.0, 1.0)
    if kind == "log_depth":
        return visualize.colorize_log_depth_tf(value, specs.MIN_DEPTH, specs.MAX_DEPTH)
    if kind == "depth":
        return visualize.colorize_depth_tf(value)
    if kind == "disparity":
        return visualize.colorize_disparity_tf(value)
    if kind == "flow":
        return visualize.flow_to_color_tf(value)
    if kind == "mask":
        return visualize.mask_to_color_tf(value)
    if kind == "heat":
        return visualize.colorize_tf(value, vmin=0.0, percentile=100.0)
    raise ValueError(f"unknown image kind {kind!r}")


def write_images(endpoints: Mapping[str, tf.Tensor], step, max_outputs: int = 2,
                 prefix: str = "images", kinds: Optional[Mapping[str, str]] = None) -> None:
    """Colourised image summaries of the step's endpoints.

    Args:
      endpoints: name -> `[B, H, W, C]` tensor; names are looked up in ``kinds``
        (default `IMAGE_KINDS`); a name ``<kind>_<suffix>`` (e.g. ``flow_next``) uses the
        kind of its longest known prefix; unknown names are skipped.
      step: int64 step.
      max_outputs: images per endpoint.
      prefix: name scope.
      kinds: optional override of `IMAGE_KINDS`.
    """
    kinds = dict(IMAGE_KINDS if kinds is None else kinds)
    with tf.name_scope(prefix):
        for key in sorted(endpoints):
            kind = _kind_of(key, kinds)
            if kind is None:
                continue
            value = endpoints[key][:max_outputs]
            tf.summary.image(key, colorize_endpoint(kind, value), step=step,
                             max_outputs=max_outputs)


def _kind_of(key: str, kinds: Mapping[str, str]) -> Optional[str]:
    if key in kinds:
        return kinds[key]
    best = None
    for name in kinds:
        if key.startswith(name + "_") and (best is None or len(name) > len(best)):
            best = name
    return kinds[best] if best is not None else None


def format_postfix(scalars: Mapping[str, float], keys=None) -> dict:
    """Short ``{name: '1.23e-01'}`` dict of the main losses for the progress bar."""
    keys = keys or [k for k in ("total_theta_alpha", "total_delta", "photo_theta_alpha",
                                "photo_delta") if k in scalars]
    return {k.replace("total_", "L_"): f"{float(scalars[k]):.4g}" for k in keys if k in scalars}
