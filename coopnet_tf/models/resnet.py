"""ResNet18/34/50 encoders in the torchvision layout, and their ImageNet initialisation.

Also a ResNet10 (ResNet18 with one BasicBlock per stage instead of two, same widths and
feature shapes): a small variant for tests and quick experiments, without ImageNet weights.

Why our own ResNets (docs/decisions.md C9): keras.applications has no ResNet18/34, and its
ResNet50 is the original Caffe v1 (stride 2 in the first 1x1 conv of a downsampling
bottleneck) trained with "caffe" preprocessing (BGR, mean subtraction on 0-255). The
networks of the field (Monodepth2, SC-SfMLearner, and the ImageNet weights they start
from) are torchvision's ResNets: v1.5 bottlenecks (stride in the 3x3 conv), symmetric
padding, BN eps 1e-5. Building that layout in Keras lets torchvision's ImageNet weights
be loaded exactly (see `tools/convert_torchvision_weights.py`) with Monodepth2's input
normalisation (x - 0.45) / 0.225 on [0, 1] images, which approximates the torchvision
ImageNet mean/std.

The encoder is a Keras functional model `[B, H, W, C]` (already normalised) -> 5
features: `relu(bn1(conv1))` at H/2 (64 ch), `layer1(maxpool(.))` at H/4 (64 / 256),
`layer2` H/8 (128 / 512), `layer3` H/16 (256 / 1024), `layer4` H/32 (512 / 2048).
`build_resnet_stages` builds the same encoder as 5 chained models (stem, layer1..4), for
networks that put modules between ResLayers (the motion net's DAM).
Layer names are the torchvision `state_dict` prefixes with "." replaced by "_"
(`layer1.0.conv1.weight` -> layer `layer1_0_conv1`), which is what the loader relies on.

Pretrained weights file format (".npz"): one array per torchvision `state_dict` entry,
under its torchvision name (`conv1.weight` [64, 3, 7, 7] OIHW, `bn1.running_mean`, ...).
`fc.*` and `*.num_batches_tracked` entries are ignored.
"""
import os
import pathlib
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Union

import keras
import numpy as np
from keras import layers

# num_layers -> (block type, blocks per stage)
RESNET_SPECS = {
    10: ("basic", (1, 1, 1, 1)),    # small variant for tests and quick experiments
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
}
STAGE_WIDTHS = (64, 128, 256, 512)
# num_layers -> channels of the 5 returned features
ENCODER_CHANNELS = {
    10: (64, 64, 128, 256, 512),
    18: (64, 64, 128, 256, 512),
    34: (64, 64, 128, 256, 512),
    50: (64, 256, 512, 1024, 2048),
}

# Depths with torchvision ImageNet weights (tools/convert_torchvision_weights.py).
IMAGENET_NUM_LAYERS = (18, 34, 50)
# Where pretrained_weights="imagenet" looks for resnet{N}.npz (read at call time).
PRETRAINED_DIR_ENV = "COOPNET_PRETRAINED_DIR"
DEFAULT_PRETRAINED_DIR = pathlib.Path("~/.cache/coopnet_tf/pretrained")

_BN_EPS = 1e-5        # torchvision
_BN_MOMENTUM = 0.9    # = torch momentum 0.1
# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu") for every conv.
_CONV_INIT = {"class_name": "VarianceScaling",
              "config": {"scale": 2.0, "mode": "fan_out", "distribution": "untruncated_normal"}}


def _check_num_layers(num_layers: int) -> None:
    if num_layers not in RESNET_SPECS:
        raise ValueError(f"num_layers must be one of {sorted(RESNET_SPECS)}, got {num_layers}")


def _conv(x, filters: int, kernel: int, stride: int, name: str):
    """Bias-free conv with torchvision (symmetric) padding kernel // 2."""
    pad = kernel // 2
    if stride > 1 and pad > 0:
        # Keras "same" pads asymmetrically for stride 2 (0 before, 1 after); torch pads
        # both sides. Explicit padding keeps the pretrained weights' alignment.
        x = layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"
    return layers.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=False,
                         kernel_initializer=keras.initializers.get(_CONV_INIT), name=name)(x)


def _bn(x, name: str):
    return layers.BatchNormalization(momentum=_BN_MOMENTUM, epsilon=_BN_EPS, name=name)(x)


def _basic_block(x, width: int, stride: int, name: str):
    shortcut = x
    y = _conv(x, width, 3, stride, f"{name}_conv1")
    y = layers.ReLU(name=f"{name}_relu1")(_bn(y, f"{name}_bn1"))
    y = _bn(_conv(y, width, 3, 1, f"{name}_conv2"), f"{name}_bn2")
    if stride != 1 or x.shape[-1] != width:
        shortcut = _bn(_conv(x, width, 1, stride, f"{name}_downsample_0"), f"{name}_downsample_1")
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_relu2")(y)


def _bottleneck_block(x, width: int, stride: int, name: str):
    out = 4 * width
    shortcut = x
    y = _bn(_conv(x, width, 1, 1, f"{name}_conv1"), f"{name}_bn1")
    y = layers.ReLU(name=f"{name}_relu1")(y)
    # v1.5: the stride sits in the 3x3 conv.
    y = _bn(_conv(y, width, 3, stride, f"{name}_conv2"), f"{name}_bn2")
    y = layers.ReLU(name=f"{name}_relu2")(y)
    y = _bn(_conv(y, out, 1, 1, f"{name}_conv3"), f"{name}_bn3")
    if stride != 1 or x.shape[-1] != out:
        shortcut = _bn(_conv(x, out, 1, stride, f"{name}_downsample_0"), f"{name}_downsample_1")
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_relu3")(y)


def _stem(inputs):
    """conv1 -> bn1 -> ReLU: the H/2 feature (64 channels)."""
    x = _conv(inputs, 64, 7, 2, "conv1")
    return layers.ReLU(name="relu")(_bn(x, "bn1"))


def _res_layer(x, num_layers: int, stage: int):
    """ResLayer `stage` (1-4) of torchvision's ResNet; stage 1 starts with the max-pool."""
    block_type, blocks = RESNET_SPECS[num_layers]
    block_fn = _basic_block if block_type == "basic" else _bottleneck_block
    if stage == 1:
        # Inputs of the max-pool are >= 0 (after ReLU): zero padding == torch's -inf padding.
        x = layers.ZeroPadding2D(1, name="maxpool_pad")(x)
        x = layers.MaxPooling2D(3, strides=2, name="maxpool")(x)
    for b in range(blocks[stage - 1]):
        stride = 2 if (b == 0 and stage > 1) else 1
        x = block_fn(x, STAGE_WIDTHS[stage - 1], stride, f"layer{stage}_{b}")
    return x


def build_resnet_encoder(
    num_layers: int = 18,
    input_channels: int = 3,
    height: Optional[int] = None,
    width: Optional[int] = None,
    name: str = "encoder",
) -> keras.Model:
    """Torchvision-layout ResNet without avgpool/fc, returning 5 feature levels.

    Args:
      num_layers: 18, 34 or 50, or 10 (one BasicBlock per stage: a small variant for
        tests and quick experiments).
      input_channels: channels of the (normalised) input, 3 per stacked frame.
      height, width: static input size, or None for dynamic.
      name: model name.

    Returns:
      keras.Model `[B, H, W, C] -> [f0 (H/2), f1 (H/4), f2 (H/8), f3 (H/16), f4 (H/32)]`.
    """
    _check_num_layers(num_layers)
    inputs = keras.Input((height, width, input_channels), name=f"{name}_input")
    features = [_stem(inputs)]
    for stage in range(1, 5):
        features.append(_res_layer(features[-1], num_layers, stage))
    return keras.Model(inputs, features, name=name)


def build_resnet_stages(
    num_layers: int = 18,
    input_channels: int = 3,
    height: Optional[int] = None,
    width: Optional[int] = None,
    name: str = "encoder",
) -> List[keras.Model]:
    """The encoder of `build_resnet_encoder` as 5 chained models, one per feature level.

    For networks that insert modules between ResLayers or run a ResLayer on several
    branches with shared weights (the motion net's DAM). Same layers and layer names as
    `build_resnet_encoder`, so `load_pretrained_encoder(stages, ...)` loads them.

    Returns:
      [`{name}_stem` (input -> f0), `{name}_layer1` (f0 -> f1), ..., `{name}_layer4`
      (f3 -> f4)]; chaining them gives the 5 features of `build_resnet_encoder`.
    """
    _check_num_layers(num_layers)
    channels = (input_channels,) + ENCODER_CHANNELS[num_layers][:4]
    stages = []
    for stage in range(5):
        scale = 2 ** stage  # input of stage s is at H/2^s
        h = None if height is None else height // scale
        w = None if width is None else width // scale
        label = "stem" if stage == 0 else f"layer{stage}"
        x_in = keras.Input((h, w, channels[stage]), name=f"{name}_{label}_input")
        x = _stem(x_in) if stage == 0 else _res_layer(x_in, num_layers, stage)
        stages.append(keras.Model(x_in, x, name=f"{name}_{label}"))
    return stages


# --- Pretrained weights -------------------------------------------------------


def resolve_pretrained_weights(
    pretrained_weights: Union[None, str, os.PathLike], num_layers: int
) -> Optional[pathlib.Path]:
    """Maps the `pretrained_weights` argument of the factories to a local file.

    Args:
      pretrained_weights: None (random init), a path to an .npz file, or "imagenet":
        `resnet{num_layers}.npz` in $COOPNET_PRETRAINED_DIR, else in
        ~/.cache/coopnet_tf/pretrained/. Nothing is ever downloaded.
      num_layers: encoder depth (names the file for "imagenet").

    Returns:
      the file path, or None for random init.

    Raises:
      FileNotFoundError: with instructions, when the file is not there.
      ValueError: "imagenet" for a depth without ImageNet weights (10).
    """
    if pretrained_weights is None:
        return None
    if str(pretrained_weights).lower() == "imagenet":
        if num_layers not in IMAGENET_NUM_LAYERS:
            raise ValueError(
                f"pretrained_weights='imagenet': there are no ImageNet weights for "
                f"ResNet{num_layers} (torchvision publishes ResNet"
                f"{'/'.join(str(n) for n in IMAGENET_NUM_LAYERS)}); use "
                "pretrained_weights=None (random initialisation), an .npz path, or "
                f"num_layers in {IMAGENET_NUM_LAYERS}")
        filename = f"resnet{num_layers}.npz"
        env_dir = os.environ.get(PRETRAINED_DIR_ENV)
        candidates = ([pathlib.Path(env_dir).expanduser() / filename] if env_dir else []) + [
            DEFAULT_PRETRAINED_DIR.expanduser() / filename
        ]
        for path in candidates:
            if path.is_file():
                return path
        raise FileNotFoundError(
            f"pretrained_weights='imagenet' asks for ImageNet weights of ResNet{num_layers}, "
            f"but no local file was found (looked at: {', '.join(str(p) for p in candidates)}). "
            "coopnet-tf never downloads weights. To provide them, on any machine with PyTorch "
            "and torchvision run\n"
            f"  python tools/convert_torchvision_weights.py --num_layers={num_layers} "
            f"--output={DEFAULT_PRETRAINED_DIR / filename}\n"
            "(add --pth=FILE to convert a torchvision .pth you already have instead of "
            f"downloading it), then copy the file there or to ${PRETRAINED_DIR_ENV}/{filename}, "
            "or pass pretrained_weights='/path/to/file.npz'. Use pretrained_weights=None for "
            "random initialisation."
        )
    path = pathlib.Path(pretrained_weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained weights file {path} does not exist (expected an .npz written by "
            "tools/convert_torchvision_weights.py)"
        )
    return path


def tile_first_conv(kernel: np.ndarray, input_channels: int,
                    image_channels: Optional[int] = None) -> np.ndarray:
    """Adapts a 3-channel first-conv kernel to stacked frames (Monodepth2).

    The RGB kernel is tiled over the n = image_channels / 3 stacked frames and divided by
    n, so that n identical frames give the single-frame response. Channels after
    `image_channels` (non-image inputs, e.g. a rigid flow) get zero weights.

    Args:
      kernel: [kh, kw, 3, out] (Keras HWIO).
      input_channels: channels of the network input.
      image_channels: leading image channels (multiple of 3); default all.

    Returns:
      [kh, kw, input_channels, out] float32.
    """
    image_channels = input_channels if image_channels is None else image_channels
    if kernel.shape[2] != 3 or image_channels % 3 or image_channels > input_channels:
        raise ValueError(
            f"cannot tile a first conv of {kernel.shape[2]} input channels over "
            f"{image_channels} image channels of {input_channels}"
        )
    n = image_channels // 3
    tiled = np.concatenate([kernel] * n, axis=2) / float(n)
    extra = np.zeros(kernel.shape[:2] + (input_channels - image_channels, kernel.shape[3]),
                     kernel.dtype)
    return np.concatenate([tiled, extra], axis=2).astype(np.float32)


def _torch_prefix(layer_name: str) -> str:
    """`layer1_0_downsample_1` -> `layer1.0.downsample.1`."""
    return layer_name.replace("_", ".")


def _leaf_layers(models: Sequence[keras.Model]) -> Iterator[layers.Layer]:
    """The layers of `models`, descending into nested models."""
    for model in models:
        for layer in model.layers:
            if isinstance(layer, keras.Model):
                yield from _leaf_layers([layer])
            else:
                yield layer


def load_pretrained_encoder(
    encoder: Union[keras.Model, Sequence[keras.Model]],
    weights: Union[str, os.PathLike, Mapping[str, np.ndarray]],
    image_channels: Optional[int] = None,
) -> None:
    """Loads torchvision ResNet weights into an encoder of `build_resnet_encoder`.

    Args:
      encoder: the encoder model (for a whole network: `model.get_layer("encoder")`),
        or the list of models of `build_resnet_stages`.
      weights: an .npz path or a dict, torchvision `state_dict` names -> arrays.
      image_channels: leading image channels of the input (see `tile_first_conv`);
        default all input channels.

    Raises:
      ValueError: on a missing entry or a shape mismatch (naming it).
    """
    if not isinstance(weights, Mapping):
        with np.load(weights) as data:
            weights = {k: data[k] for k in data.files}
    encoders = [encoder] if isinstance(encoder, keras.Model) else list(encoder)
    names = ", ".join(e.name for e in encoders)
    used = set()

    def get(key, shape):
        if key not in weights:
            raise ValueError(f"pretrained weights lack '{key}' (needed by {names})")
        value = np.asarray(weights[key], np.float32)
        if tuple(value.shape) != tuple(shape):
            raise ValueError(f"pretrained '{key}' has shape {value.shape}, expected {tuple(shape)}")
        used.add(key)
        return value

    for layer in _leaf_layers(encoders):
        prefix = _torch_prefix(layer.name)
        if isinstance(layer, layers.Conv2D):
            k = layer.kernel
            kh, kw, cin, cout = k.shape
            if layer.name == "conv1":
                torch_w = get("conv1.weight", (cout, 3, kh, kw))
                value = tile_first_conv(torch_w.transpose(2, 3, 1, 0), cin, image_channels)
            else:
                value = get(f"{prefix}.weight", (cout, cin, kh, kw)).transpose(2, 3, 1, 0)
            k.assign(value)
        elif isinstance(layer, layers.BatchNormalization):
            c = layer.gamma.shape
            layer.gamma.assign(get(f"{prefix}.weight", c))
            layer.beta.assign(get(f"{prefix}.bias", c))
            layer.moving_mean.assign(get(f"{prefix}.running_mean", c))
            layer.moving_variance.assign(get(f"{prefix}.running_var", c))
    unused = [k for k in weights if k not in used and not k.startswith("fc.")
              and not k.endswith("num_batches_tracked")]
    if unused:
        raise ValueError(
            f"pretrained weights have entries the encoder does not use (wrong depth?): {unused[:5]}"
        )


def maybe_load_pretrained(model: keras.Model, pretrained_weights, num_layers: int,
                          image_channels: Optional[int] = None,
                          encoder_names: Sequence[str] = ("encoder",)) -> Optional[pathlib.Path]:
    """Resolves `pretrained_weights` and loads it into the encoder layers of `model`
    named `encoder_names` (one nested encoder, or the stages of `build_resnet_stages`)."""
    path = resolve_pretrained_weights(pretrained_weights, num_layers)
    if path is not None:
        load_pretrained_encoder([model.get_layer(n) for n in encoder_names], path,
                                image_channels)
    return path


def torchvision_state_dict_shapes(num_layers: int, input_channels: int = 3) -> Dict[str, tuple]:
    """Shapes of the torchvision `state_dict` entries an encoder needs (for tests/tools)."""
    encoder = build_resnet_encoder(num_layers, input_channels, 64, 64)
    shapes = {}
    for layer in encoder.layers:
        prefix = _torch_prefix(layer.name)
        if isinstance(layer, layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            shapes[f"{prefix}.weight"] = (cout, 3 if layer.name == "conv1" else cin, kh, kw)
        elif isinstance(layer, layers.BatchNormalization):
            for suffix in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{prefix}.{suffix}"] = tuple(layer.gamma.shape)
    return shapes

