"""Flow network: ResNet50 U-Net with linear flow heads at 4 scales (docs/decisions.md C9, D6).

Direct mode (project default): input = target and source frames stacked, `[B, H, W, 6]`.
Residual mode (GeoNet ResFlowNet's idea, `residual=True`): a second input carries the
rigid quantities, `[B, H, W, 6]` = rigidly warped source (3), rigid flow in pixels (2),
L2 norm over channels of the rigid reconstruction error (1); it is stop-gradient inside
the model (so the flow loss never trains depth/pose through it) and concatenated to the
pair (12 channels into the encoder); each scale's output = predicted residual + rigid
flow resized to that scale (2^s x 2^s average, values / 2^s).

Flow head: reflection pad -> 3x3 conv -> 2 channels, no activation, then GeoNet's
scaling: x by 0.1 * W_s, y by 0.1 * H_s (W_s, H_s = that scale's size), so the conv
predicts flow as a fraction of the image size and the output is in pixels of scale s.
The head kernel starts small (`head_init_scale`) so that the initial flow is a few
pixels (not tens), see docs/models.md.

No gin here; the configurable factory is `coopnet_tf.models.factory.build_flow_net`.
"""
from typing import Optional, Sequence

import keras
from keras import layers

from coopnet_tf.models import blocks, resnet

DECODER_CHANNELS = (16, 32, 64, 128, 256)
RIGID_CHANNELS = 6  # warped source (3), rigid flow (2), error norm (1)


def build_flow_model(
    height: Optional[int] = 128,
    width: Optional[int] = 416,
    num_layers: int = 50,
    residual: bool = False,
    decoder_channels: Sequence[int] = DECODER_CHANNELS,
    flow_scale_factor: float = 0.1,
    head_init_scale: float = 0.01,
    name: str = "flow_net",
) -> keras.Model:
    """Builds the flow network with random initialisation.

    Args:
      height, width: input size, multiples of 32 (None = dynamic).
      num_layers: ResNet depth, 18, 34 or 50 (default 50), or 10 (small variant for
        tests and quick experiments, no ImageNet weights).
      residual: ResFlowNet variant with a second (rigid) input; see module docstring.
      decoder_channels: decoder widths per level ([16..256], docs/decisions.md C9).
      flow_scale_factor: head output x factor x (W_s, H_s) gives pixels (GeoNet: 0.1).
      head_init_scale: variance scale of the head kernel (glorot = 1.0).
      name: model name.

    Returns:
      keras.Model: `image_pair [B, H, W, 6]` in [0, 1] (target, source)
      (+ `rigid [B, H, W, 6]` when residual) -> list of 4 flows target -> source,
      scale s `[B, H/2^s, W/2^s, 2]` in pixels of that scale, channel 0 = x,
      float32 under any mixed-precision policy.

    Raises:
      ValueError: when height or width is not a multiple of 32.
    """
    blocks.check_input_size(height, width)
    pair = keras.Input((height, width, 6), name="image_pair")
    inputs = [pair]
    if residual:
        rigid_in = keras.Input((height, width, RIGID_CHANNELS), name="rigid")
        inputs.append(rigid_in)
        rigid = blocks.StopGradient(dtype="float32", name="rigid_stop_gradient")(rigid_in)
        x = layers.Concatenate(axis=-1, name="concat_rigid")([pair, rigid])
        # target, source and warped source are images; rigid flow and error are not.
        image_channels = 9
    else:
        x = pair
        image_channels = 6
    channels = x.shape[-1]
    x = blocks.ImageNormalization(image_channels=image_channels, name="normalize")(x)
    encoder = resnet.build_resnet_encoder(num_layers, channels, height, width, name="encoder")
    features = encoder(x)
    head_init = keras.initializers.VarianceScaling(
        scale=head_init_scale, mode="fan_avg", distribution="uniform")

    if residual:
        rigid_flow = blocks.ChannelSlice(3, 5, dtype="float32", name="rigid_flow")(rigid)

    def head(x, s):
        x = blocks.conv3x3_head(x, 2, name=f"flowconv_{s}", kernel_initializer=head_init)
        if not residual:
            return blocks.FlowScale(flow_scale_factor, dtype="float32", name=f"flow_{s}")(x)
        x = blocks.FlowScale(flow_scale_factor, dtype="float32", name=f"residual_{s}")(x)
        prior = rigid_flow
        if s > 0:
            prior = layers.AveragePooling2D(2 ** s, dtype="float32", name=f"rigid_pool_{s}")(prior)
            prior = layers.Rescaling(1.0 / 2 ** s, dtype="float32", name=f"rigid_flow_{s}")(prior)
        return layers.Add(dtype="float32", name=f"flow_{s}")([x, prior])

    flows = blocks.unet_decoder(features, decoder_channels, head)
    return keras.Model(inputs if residual else pair, flows, name=name)
