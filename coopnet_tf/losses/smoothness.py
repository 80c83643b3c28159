"""Edge-aware first-order smoothness (docs/decisions.md C6), for disparity and for flow.

`L_s = mean(|d_x f| exp(-mean_c |d_x I|)) + mean(|d_y f| exp(-mean_c |d_y I|))` with forward
differences; the image is the target colour image at the same scale as the field.
For disparity the field is normalised first (`d / mean(d)`, Wang et al. 2018) so the term
cannot be lowered by shrinking the depth scale. For flow the same term is applied to each
component and averaged over the components (GeoNet).

Inputs are cast to float32 (under mixed precision the network's disparity may be float16);
static shapes only; runs under `tf.function(jit_compile=True)`.
"""
import tensorflow as tf

NORMALISE_EPS = 1e-7


def _f32(x):
    return tf.cast(tf.convert_to_tensor(x), tf.float32)


def normalise_disparity(disp):
    """Mean-normalised disparity `d / (mean_{H,W}(d) + 1e-7)`, per image and channel.

    Args:
      disp: `[B, h, w, 1]`.

    Returns:
      `[B, h, w, 1]` float32.
    """
    disp = _f32(disp)
    return disp / (tf.reduce_mean(disp, axis=[1, 2], keepdims=True) + NORMALISE_EPS)


def edge_aware_smoothness(field, image):
    """First-order edge-aware smoothness of `field` guided by `image` (same size).

    Args:
      field: `[B, h, w, C]` (normalised disparity, C = 1; or flow, C = 2).
      image: `[B, h, w, 3]` colour image at the same scale.

    Returns:
      scalar float32: mean over pixels and components of the x term plus that of the y term.
    """
    field = _f32(field)
    image = _f32(image)
    grad_fx = tf.abs(field[:, :, 1:] - field[:, :, :-1])
    grad_fy = tf.abs(field[:, 1:] - field[:, :-1])
    grad_ix = tf.reduce_mean(tf.abs(image[:, :, 1:] - image[:, :, :-1]), axis=-1, keepdims=True)
    grad_iy = tf.reduce_mean(tf.abs(image[:, 1:] - image[:, :-1]), axis=-1, keepdims=True)
    return tf.reduce_mean(grad_fx * tf.exp(-grad_ix)) + tf.reduce_mean(grad_fy * tf.exp(-grad_iy))


def disparity_smoothness(disp, image):
    """Monodepth2's smoothness: `edge_aware_smoothness(normalise_disparity(disp), image)`.

    Args:
      disp: `[B, h, w, 1]` disparity at scale s.
      image: `[B, h, w, 3]` target image at scale s (not upsampled).

    Returns:
      scalar float32 (the caller applies `lambda_s / 2^s`).
    """
    return edge_aware_smoothness(normalise_disparity(disp), image)


def flow_smoothness(flow, image, normalise=True):
    """Edge-aware smoothness of a flow field, averaged over its two components.

    Args:
      flow: `[B, h, w, 2]` flow in pixels of this scale, channel 0 = x.
      image: `[B, h, w, 3]` target image at this scale.
      normalise: divide the x component by `w` and y by `h` first, so magnitudes are
        comparable to normalised disparity (docs/decisions.md C6).

    Returns:
      scalar float32.
    """
    flow = _f32(flow)
    if normalise:
        shape = tf.shape(flow)
        size = tf.cast(tf.stack([shape[2], shape[1]]), tf.float32)
        flow = flow / size
    return edge_aware_smoothness(flow, image)
