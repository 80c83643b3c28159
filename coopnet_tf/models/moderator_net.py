"""Moderator (motion-segmentation) network M_χ of Competitive Collaboration (CC Eq. 5).

Encoder-decoder: our ResNet encoder on the stacked snippet (I_{t−1}, I_t, I_{t+1} in
temporal order, 3 frames → 9 channels, conv1 widened like the pose net's stacked input)
and the depth net's Monodepth2 decoder, with a sigmoid head of one channel per source at
each of the depth net's scales. Channel k is m_s for source `specs.SOURCE_INDICES[k]`
(0: t−1, 1: t+1): the probability that the target pixel is *static* w.r.t. that source.

CC's own MaskResNet6 (authors' code) has 6 scales and a 5-frame input; ours keeps the
depth net's 4 scales and the 3-frame snippet of the rest of this project.

No gin here; the configurable factory is `coopnet_tf.models.factory.build_moderator_net`.
"""
from typing import Optional, Sequence

import keras
from keras import layers

from coopnet_tf import specs
from coopnet_tf.models import blocks, resnet
from coopnet_tf.models.depth_net import DECODER_CHANNELS

NUM_FRAMES = 3


def build_moderator_model(
    height: Optional[int] = 128,
    width: Optional[int] = 416,
    num_layers: int = 18,
    decoder_channels: Sequence[int] = DECODER_CHANNELS,
    num_sources: int = specs.NUM_SOURCES,
    name: str = "moderator_net",
) -> keras.Model:
    """Builds the moderator network with random initialisation.

    Args:
      height, width: input size, multiples of 32 (None = dynamic).
      num_layers: ResNet depth, 18, 34, 50 or 10 (small variant for
        tests and quick experiments, no ImageNet weights).
      decoder_channels: Monodepth2 decoder widths per level.
      num_sources: masks per scale (one per source frame).
      name: model name.

    Returns:
      keras.Model: snippet `[B, H, W, 9]` in [0, 1] (frames stacked in temporal order on
      the channel axis) -> list of 4 masks, scale s `[B, H/2^s, W/2^s, num_sources]` in
      (0, 1), float32 under any mixed-precision policy.

    Raises:
      ValueError: when height or width is not a multiple of 32.
    """
    blocks.check_input_size(height, width)
    channels = 3 * NUM_FRAMES
    snippet = keras.Input((height, width, channels), name="snippet")
    x = blocks.ImageNormalization(name="normalize")(snippet)
    encoder = resnet.build_resnet_encoder(num_layers, channels, height, width, name="encoder")
    features = encoder(x)

    def head(x, s):
        x = blocks.conv3x3_head(x, num_sources, name=f"maskconv_{s}")
        return layers.Activation("sigmoid", dtype="float32", name=f"mask_{s}")(x)

    masks = blocks.unet_decoder(features, decoder_channels, head)
    return keras.Model(snippet, masks, name=name)
