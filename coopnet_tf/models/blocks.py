"""Keras 3 building blocks shared by the depth, pose and flow networks.

Custom layers are plain Keras layers (no gin) registered under the package name
"coopnet_tf", with `get_config`, so `.keras` files load back with
`keras.models.load_model(path)` once `coopnet_tf.models` is imported.

Also here: the Monodepth2-style U-Net decoder used by the depth and the flow nets
(`unet_decoder`), and the input-size rule (`check_input_size`).
"""
from typing import Callable, List, Optional, Sequence

import keras
from keras import layers, ops

# Every network predicts at 4 scales, scale s at H/2^s x W/2^s.
NUM_SCALES = 4
# ResNet encoders reach H/32: inputs must be multiples of this.
SIZE_MULTIPLE = 32
# ... and at least 2 pixels at H/32 (reflection padding of the decoder).
MIN_SIZE = 2 * SIZE_MULTIPLE
# Monodepth2 input normalisation of [0, 1] images.
IMAGE_MEAN = 0.45
IMAGE_STD = 0.225

_PACKAGE = "coopnet_tf"


def check_input_size(height: Optional[int], width: Optional[int]) -> None:
    """Raises ValueError unless height and width are multiples of 32 and at least 64.

    The encoders downsample 5 times (H/32), and the decoders' reflection padding needs
    at least 2 pixels at H/32. None (a dynamic dimension) is accepted; such a model
    must then be called on sizes that follow the same rule.
    """
    bad = [
        f"{name}={value}"
        for name, value in (("height", height), ("width", width))
        if value is not None and (int(value) < MIN_SIZE or int(value) % SIZE_MULTIPLE)
    ]
    if bad:
        raise ValueError(
            f"input size {height}x{width} (HxW) is not supported: {', '.join(bad)} is not a "
            f"multiple of {SIZE_MULTIPLE} of at least {MIN_SIZE} (the ResNet encoders "
            f"downsample 5 times). Resize or crop the images, e.g. to 128x416 or 192x640."
        )


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ReflectionPad2D(layers.Layer):
    """Reflection padding of the two spatial axes of an NHWC tensor.

    `[B, H, W, C] -> [B, H + 2p, W + 2p, C]`, mirror without repeating the edge
    (PyTorch `nn.ReflectionPad2d`, TF `mode='REFLECT'`).
    """

    def __init__(self, padding: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.padding = int(padding)

    def call(self, inputs):
        p = self.padding
        return ops.pad(inputs, [[0, 0], [p, p], [p, p], [0, 0]], mode="reflect")

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        p = 2 * self.padding
        return (b, None if h is None else h + p, None if w is None else w + p, c)

    def get_config(self):
        config = super().get_config()
        config.update(padding=self.padding)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ImageNormalization(layers.Layer):
    """`(x - mean) / std` on the first `image_channels` channels; others pass through.

    `[B, H, W, C] -> [B, H, W, C]`. With `image_channels=None` every channel is an
    image channel. Monodepth2 uses mean 0.45, std 0.225 on [0, 1] images.
    """

    def __init__(self, mean: float = IMAGE_MEAN, std: float = IMAGE_STD,
                 image_channels: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        self.mean = float(mean)
        self.std = float(std)
        self.image_channels = None if image_channels is None else int(image_channels)

    def call(self, inputs):
        if self.image_channels is None:
            return (inputs - self.mean) / self.std
        images = inputs[..., : self.image_channels]
        rest = inputs[..., self.image_channels:]
        return ops.concatenate([(images - self.mean) / self.std, rest], axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(mean=self.mean, std=self.std, image_channels=self.image_channels)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ChannelSlice(layers.Layer):
    """`x[..., start:stop]`: `[B, H, W, C] -> [B, H, W, stop - start]`."""

    def __init__(self, start: int, stop: int, **kwargs):
        super().__init__(**kwargs)
        self.start = int(start)
        self.stop = int(stop)

    def call(self, inputs):
        return inputs[..., self.start: self.stop]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.stop - self.start,)

    def get_config(self):
        config = super().get_config()
        config.update(start=self.start, stop=self.stop)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class StopGradient(layers.Layer):
    """Identity in the forward pass, no gradient to its input (`tf.stop_gradient`)."""

    def call(self, inputs):
        return ops.stop_gradient(inputs)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FlowScale(layers.Layer):
    """Turns a 2-channel head output into pixels of its own scale (GeoNet convention).

    `[B, h, w, 2] -> [B, h, w, 2]`: channel 0 (x) is multiplied by `factor * w`,
    channel 1 (y) by `factor * h`, with h, w read from the tensor at call time, so
    the head predicts flow as a fraction of the image size and the same weights work
    at any resolution.
    """

    def __init__(self, factor: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.factor = float(factor)

    def call(self, inputs):
        shape = ops.shape(inputs)
        h = ops.cast(shape[1], inputs.dtype)
        w = ops.cast(shape[2], inputs.dtype)
        scale = ops.stack([w, h]) * ops.cast(self.factor, inputs.dtype)
        return inputs * ops.reshape(scale, (1, 1, 1, 2))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(factor=self.factor)
        return config


def conv_block(x, filters: int, name: str):
    """Monodepth2 ConvBlock: reflection pad 1 -> 3x3 conv (bias) -> ELU."""
    x = ReflectionPad2D(1, name=f"{name}_pad")(x)
    x = layers.Conv2D(filters, 3, padding="valid", name=f"{name}_conv")(x)
    return layers.ELU(name=f"{name}_elu")(x)


def conv3x3_head(x, filters: int, name: str,
                 kernel_initializer="glorot_uniform"):
    """Monodepth2 Conv3x3: reflection pad 1 -> 3x3 conv (bias), no activation."""
    x = ReflectionPad2D(1, name=f"{name}_pad")(x)
    return layers.Conv2D(filters, 3, padding="valid", name=name,
                         kernel_initializer=kernel_initializer)(x)


def unet_decoder(
    features: Sequence,
    decoder_channels: Sequence[int],
    head: Callable[[object, int], object],
    num_scales: int = NUM_SCALES,
) -> List:
    """Monodepth2 depth decoder wiring (docs/decisions.md C9), with a pluggable head.

    Args:
      features: the 5 encoder features, level l at H/2^(l+1) (64, 64/256, 128/512,
        256/1024, 512/2048 channels for ResNet18/50).
      decoder_channels: 5 decoder widths, index i = level (Monodepth2 [16, 32, 64, 128, 256]).
      head: `head(x, scale) -> output` applied to the decoder feature at scale s
        (resolution H/2^s) for s < num_scales.
      num_scales: number of output scales (0..num_scales-1).

    Returns:
      list of head outputs, index = scale (finest first).
    """
    if len(features) != 5 or len(decoder_channels) != 5:
        raise ValueError("unet_decoder expects 5 encoder features and 5 decoder widths")
    outputs = {}
    x = features[-1]
    for i in range(4, -1, -1):
        x = conv_block(x, decoder_channels[i], name=f"upconv_{i}_0")
        x = layers.UpSampling2D(2, interpolation="nearest", name=f"upsample_{i}")(x)
        if i > 0:
            x = layers.Concatenate(axis=-1, name=f"skip_{i}")([x, features[i - 1]])
        x = conv_block(x, decoder_channels[i], name=f"upconv_{i}_1")
        if i < num_scales:
            outputs[i] = head(x, i)
    return [outputs[s] for s in range(num_scales)]


def pose_decoder(x, output_scale: float, prefix: str = "pose",
                 mean_name: str = "spatial_mean", output_name: str = "pose"):
    """Monodepth2 pose decoder on an encoder feature (4 conv layers -> 6-vector).

    1x1 conv -> 256 + ReLU, two 3x3 convs 256 + ReLU (zero padding), 1x1 conv -> 6,
    spatial mean, x `output_scale`; `[B, h, w, C] -> [B, 6]` float32 under any
    mixed-precision policy. Layers `{prefix}_squeeze`, `{prefix}_0..2`, `mean_name`,
    `output_name`.
    """
    x = layers.Conv2D(256, 1, activation="relu", name=f"{prefix}_squeeze")(x)
    x = layers.Conv2D(256, 3, padding="same", activation="relu", name=f"{prefix}_0")(x)
    x = layers.Conv2D(256, 3, padding="same", activation="relu", name=f"{prefix}_1")(x)
    x = layers.Conv2D(6, 1, name=f"{prefix}_2")(x)
    x = layers.GlobalAveragePooling2D(dtype="float32", name=mean_name)(x)
    return layers.Rescaling(output_scale, dtype="float32", name=output_name)(x)
