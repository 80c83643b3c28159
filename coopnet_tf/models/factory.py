"""gin-configurable factories of the networks (the only gin in coopnet_tf.models).

Bind them in a .gin file, e.g. `build_flow_net.residual = True`,
`build_depth_net.pretrained_weights = "imagenet"`. Arguments passed explicitly by the
caller win over gin bindings, so callers pass only what they must (the input size).
"""
import os
from typing import Optional, Sequence, Union

import gin
import keras

from coopnet_tf.models import depth_net, flow_net, moderator_net, motion_net, pose_net, resnet

PretrainedWeights = Union[None, str, os.PathLike]


@gin.configurable
def build_depth_net(
    height: Optional[int] = 128,
    width: Optional[int] = 416,
    num_layers: int = 18,
    pretrained_weights: PretrainedWeights = None,
    decoder_channels: Sequence[int] = depth_net.DECODER_CHANNELS,
    name: str = "depth_net",
) -> keras.Model:
    """DispResNet depth network (see `depth_net.build_depth_model`).

    Args:
      height, width: input size, multiples of 32 (ValueError otherwise); None = dynamic.
      num_layers: ResNet encoder depth: 18 (paper), 34, 50 or 10 (small variant for
        tests and quick experiments, no ImageNet weights).
      pretrained_weights: None (random init, default), "imagenet" (a local
        resnet{N}.npz, see `resnet.resolve_pretrained_weights`; never downloaded) or
        the path of an .npz written by tools/convert_torchvision_weights.py.
      decoder_channels: Monodepth2 decoder widths.
      name: model name.

    Returns:
      keras.Model: image `[B, H, W, 3]` in [0, 1] -> 4 sigmoid disparities, scale s
      `[B, H/2^s, W/2^s, 1]`.
    """
    model = depth_net.build_depth_model(height, width, num_layers, decoder_channels, name)
    resnet.maybe_load_pretrained(model, pretrained_weights, num_layers, image_channels=3)
    return model


@gin.configurable
def build_pose_net(
    height: Optional[int] = 128,
    width: Optional[int] = 416,
    num_layers: int = 18,
    pretrained_weights: PretrainedWeights = None,
    num_input_frames: int = 2,
    output_scale: float = 0.01,
    name: str = "pose_net",
) -> keras.Model:
    """Pose network (see `pose_net.build_pose_model`).

    Args:
      height, width: input size, multiples of 32 (ValueError otherwise); None = dynamic.
      num_layers: ResNet encoder depth: 18 (paper), 34, 50 or 10 (small variant for
        tests and quick experiments, no ImageNet weights).
      pretrained_weights: as for `build_depth_net`; conv1 is tiled over the frames
        and divided by their number.
      num_input_frames: frames stacked in temporal order on the channel axis.
      output_scale: output multiplier (0.01).
      name: model name.

    Returns:
      keras.Model: frames `[B, H, W, 3 * num_input_frames]` -> `[B, 6]`
      (axis-angle rotation, translation).
    """
    model = pose_net.build_pose_model(height, width, num_layers, num_input_frames,
                                      output_scale, name)
    resnet.maybe_load_pretrained(model, pretrained_weights, num_layers,
                                 image_channels=3 * num_input_frames)
    return model


@gin.configurable
def build_flow_net(
    height: Optional[int] = 128,
    width: Optional[int] = 416,
    num_layers: int = 50,
    residual: bool = False,
    pretrained_weights: PretrainedWeights = None,
    decoder_channels: Sequence[int] = flow_net.DECODER_CHANNELS,
    flow_scale_factor: float = 0.1,
    head_init_scale: float = 0.01,
    name: str = "flow_net",
) -> keras.Model:
    """Flow network (see `flow_net.build_flow_model`).

    Args:
      height, width: input size, multiples of 32 (ValueError otherwise); None = dynamic.
      num_layers: ResNet encoder depth: 50 (default), 34, 18 or 10 (small variant for
        tests and quick experiments, no ImageNet weights).
      residual: False = direct flow on the frame pair (project default);
        True = ResFlowNet-style residual on stop-gradient rigid inputs.
      pretrained_weights: as for `build_depth_net`; conv1 is tiled over the image
        channels (2 frames, or 3 in residual mode) and is zero on the rigid flow and
        error channels.
      decoder_channels: decoder widths.
      flow_scale_factor: head scaling, flow_s = factor * conv * (W_s, H_s).
      head_init_scale: variance scale of the head kernel initialiser.
      name: model name.

    Returns:
      keras.Model: `image_pair [B, H, W, 6]` (+ `rigid [B, H, W, 6]` when residual) ->
      4 flows target -> source, scale s `[B, H/2^s, W/2^s, 2]` in pixels of scale s.
    """
    model = flow_net.build_flow_model(height, width, num_layers, residual, decoder_channels,
                                      flow_scale_factor, head_init_scale, name)
    resnet.maybe_load_pretrained(model, pretrained_weights, num_layers,
                                 image_channels=9 if residual else 6)
    return model


@gin.configurable
def build_moderator_net(
    height: Optional[int] = 128,
    width: Optional[int] = 416,
    num_layers: int = 18,
    pretrained_weights: PretrainedWeights = None,
    decoder_channels: Sequence[int] = depth_net.DECODER_CHANNELS,
    name: str = "moderator_net",
) -> keras.Model:
    """Competitive Collaboration's moderator M_χ (see `moderator_net.build_moderator_model`).

    Args:
      height, width: input size, multiples of 32 (ValueError otherwise); None = dynamic.
      num_layers: ResNet encoder depth: 18 (default), 34, 50 or 10 (small variant for
        tests and quick experiments, no ImageNet weights).
      pretrained_weights: as for `build_depth_net`; conv1 is tiled over the 3 frames
        and divided by their number.
      decoder_channels: Monodepth2 decoder widths.
      name: model name.

    Returns:
      keras.Model: snippet `[B, H, W, 9]` (t−1, t, t+1) -> 4 sigmoid masks, scale s
      `[B, H/2^s, W/2^s, 2]`, channel k = P(static) w.r.t. source k (t−1, t+1).
    """
    model = moderator_net.build_moderator_model(height, width, num_layers, decoder_channels,
                                                name=name)
    resnet.maybe_load_pretrained(model, pretrained_weights, num_layers,
                                 image_channels=3 * moderator_net.NUM_FRAMES)
    return model


@gin.configurable
def build_motion_net(
    height: Optional[int] = 128,
    width: Optional[int] = 416,
    num_layers: int = 18,
    dam: bool = True,
    pretrained_weights: PretrainedWeights = None,
    dam_ratio: int = 4,
    decoder_channels: Sequence[int] = depth_net.DECODER_CHANNELS,
    ego_scale: float = 0.01,
    head_init_scale: float = 1e-4,
    name: str = "motion_net",
) -> keras.Model:
    """Lee et al.'s unified MotionNet with DAM (see `motion_net.build_motion_model`).

    Args:
      height, width: input size, multiples of 32 (ValueError otherwise); None = dynamic.
      num_layers: ResNet encoder depth: 18 (paper), 34, 50 or 10 (small variant for
        tests and quick experiments, no ImageNet weights).
      dam: True = dynamics attention module with ego and residual branches (paper);
        False = plain shared encoder (ablation "without DAM").
      pretrained_weights: as for `build_depth_net`; conv1 is tiled over the 2 images
        and divided by 2, the 2 depth channels get zero weights.
      dam_ratio: GCNet bottleneck ratio r (4).
      decoder_channels: residual decoder widths.
      ego_scale: ego output multiplier (0.01, as the pose net).
      head_init_scale: variance scale of the residual heads' kernel initialiser.
      name: model name.

    Returns:
      keras.Model: `[B, H, W, 8]` = (I_t, I_s, D_t, D_s) -> dict(ego `[B, 6]`,
      residual: 4 scales `[B, H/2^s, W/2^s, 3]`, attention: 3 maps `[B, h, w, 2]`
      (only with dam)).
    """
    model = motion_net.build_motion_model(height, width, num_layers, dam, dam_ratio,
                                          decoder_channels, ego_scale, head_init_scale, name)
    resnet.maybe_load_pretrained(model, pretrained_weights, num_layers,
                                 image_channels=motion_net.IMAGE_CHANNELS,
                                 encoder_names=motion_net.ENCODER_STAGES)
    return model
