"""DispResNet: Monodepth2's ResNet encoder + depth decoder (docs/decisions.md C9, C5).

No gin here; the configurable factory is `coopnet_tf.models.factory.build_depth_net`.
"""
from typing import Optional, Sequence, Tuple

import keras
import tensorflow as tf
from keras import layers

from coopnet_tf import specs
from coopnet_tf.models import blocks, resnet

DECODER_CHANNELS = (16, 32, 64, 128, 256)


def build_depth_model(
    height: Optional[int] = 128,
    width: Optional[int] = 416,
    num_layers: int = 18,
    decoder_channels: Sequence[int] = DECODER_CHANNELS,
    name: str = "depth_net",
) -> keras.Model:
    """Builds the depth network with random initialisation.

    Args:
      height, width: input size, multiples of 32 (None = dynamic).
      num_layers: ResNet depth, 18, 34, 50 or 10 (small variant for
        tests and quick experiments, no ImageNet weights).
      decoder_channels: Monodepth2 decoder widths per level.
      name: model name.

    Returns:
      keras.Model: image `[B, H, W, 3]` in [0, 1] -> list of 4 sigmoid disparities,
      scale s `[B, H/2^s, W/2^s, 1]` in (0, 1), float32 under any mixed-precision policy.
      Convert with `disp_to_depth`.

    Raises:
      ValueError: when height or width is not a multiple of 32.
    """
    blocks.check_input_size(height, width)
    image = keras.Input((height, width, 3), name="image")
    x = blocks.ImageNormalization(name="normalize")(image)
    encoder = resnet.build_resnet_encoder(num_layers, 3, height, width, name="encoder")
    features = encoder(x)

    def head(x, s):
        x = blocks.conv3x3_head(x, 1, name=f"dispconv_{s}")
        return layers.Activation("sigmoid", dtype="float32", name=f"disp_{s}")(x)

    disparities = blocks.unet_decoder(features, decoder_channels, head)
    return keras.Model(image, disparities, name=name)


def disp_to_depth(
    disp: tf.Tensor, min_depth: float = specs.MIN_DEPTH, max_depth: float = specs.MAX_DEPTH
) -> Tuple[tf.Tensor, tf.Tensor]:
    """Sigmoid output -> (scaled disparity, depth) (Monodepth2, docs/decisions.md C5).

    Args:
      disp: sigmoid disparity in (0, 1), any shape (e.g. `[B, H, W, 1]`).
      min_depth, max_depth: depth range in metres (0.1, 100 by default).

    Returns:
      (scaled_disp, depth), same shape as `disp`: scaled_disp in
      [1/max_depth, 1/min_depth], depth = 1 / scaled_disp in [min_depth, max_depth].
    """
    disp = tf.convert_to_tensor(disp)
    min_disp = 1.0 / max_depth
    max_disp = 1.0 / min_depth
    scaled_disp = min_disp + (max_disp - min_disp) * disp
    return scaled_disp, 1.0 / scaled_disp
