"""Pose network: ResNet on two stacked frames + Monodepth2 pose decoder (docs/decisions.md C9).

No gin here; the configurable factory is `coopnet_tf.models.factory.build_pose_net`.
"""
from typing import Optional

import keras
from keras import layers

from coopnet_tf.models import blocks, resnet

POSE_SIZE = 6  # [axis-angle rotation (3), translation (3)]


def build_pose_model(
    height: Optional[int] = 128,
    width: Optional[int] = 416,
    num_layers: int = 18,
    num_input_frames: int = 2,
    output_scale: float = 0.01,
    name: str = "pose_net",
) -> keras.Model:
    """Builds the pose network with random initialisation.

    Decoder on the last encoder feature: 1x1 conv -> 256 + ReLU, 3x3 conv 256 + ReLU
    (x2, zero padding), 1x1 conv -> 6, spatial mean, x `output_scale`.

    Args:
      height, width: input size, multiples of 32 (None = dynamic).
      num_layers: ResNet depth, 18, 34, 50 or 10 (small variant for
        tests and quick experiments, no ImageNet weights).
      num_input_frames: frames stacked on the channel axis (2: [I_a, I_b]).
      output_scale: multiplies the output (Monodepth2 / SC-SfM: 0.01).
      name: model name.

    Returns:
      keras.Model: frames `[B, H, W, 3 * num_input_frames]` in [0, 1], stacked in
      temporal order -> `[B, 6]` = [axis-angle rotation (3), translation (3)] of
      T_a->b (float32 under any mixed-precision policy).

    Raises:
      ValueError: when height or width is not a multiple of 32.
    """
    blocks.check_input_size(height, width)
    channels = 3 * num_input_frames
    frames = keras.Input((height, width, channels), name="frames")
    x = blocks.ImageNormalization(name="normalize")(frames)
    encoder = resnet.build_resnet_encoder(num_layers, channels, height, width, name="encoder")
    x = encoder(x)[-1]
    x = layers.Conv2D(256, 1, activation="relu", name="pose_squeeze")(x)
    x = layers.Conv2D(256, 3, padding="same", activation="relu", name="pose_0")(x)
    x = layers.Conv2D(256, 3, padding="same", activation="relu", name="pose_1")(x)
    x = layers.Conv2D(POSE_SIZE, 1, name="pose_2")(x)
    x = layers.GlobalAveragePooling2D(dtype="float32", name="spatial_mean")(x)
    pose = layers.Rescaling(output_scale, dtype="float32", name="pose")(x)
    return keras.Model(frames, pose, name=name)
