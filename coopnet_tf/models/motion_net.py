"""Unified MotionNet of Lee et al. (ICCV 2021, Sec. 3.1-3.2, Fig. 3) with the dynamics
attention module (DAM).

Input `[B, H, W, 8]` = concat(I_t, I_s, D_t, D_s): two [0, 1] images and their depths
(metres, any common scale). Inside the model the images get Monodepth2's normalisation
and both depths are divided by the mean positive depth of channel 6 (D_t): one scale for
the two depths keeps their ratio, which carries the motion along the optical axis, and
makes the network invariant to the global depth scale. Holes (depth 0, e.g. where a
forward projection left no pixel) stay 0. Callers pass raw depths.

Shared ResNet encoder on 8 channels (`resnet.build_resnet_stages`). DAM follows ResLayer-2,
-3 and -4: at each of them one GCNet global-context block (Cao et al. 2019) per branch,
ego and residual, with its own weights (Lee Fig. 3: "two self-attention modules"). The
branches split after ResLayer-2 and run ResLayer-3 and -4 with shared weights. Each block:
context modelling (1x1 conv C -> C/r + ReLU, 1x1 conv -> 1 without bias, softmax over all
pixels = attention a, sum 1 per image; context = sum_p a_p x_p), transform (1x1 conv
C -> C/r, LayerNorm, ReLU, 1x1 conv -> C; r = 4), fusion x + transform. The paper's
"complementary relation" of the two attentions (Fig. 4) is learnt, not imposed (no
a / 1 - a coupling). The last transform conv starts at zero (GCNet), so at
initialisation DAM is the identity and the net equals its `dam=False` ablation.

Heads: ego decoder = the pose net's 4-conv decoder (Lee Sec. 3.2; Sec. 4.1 says three)
on the ego branch's last feature: axis-angle rotation, translation, x `ego_scale`.
Residual decoder = the depth net's U-Net decoder on [f0, f1, residual-branch f2..f4]
(Lee: "DecBlocks" with encoder skips) and a linear 3-channel head per scale: 3-D
translation in the depth's units (metres up to its scale), kernel initialised small
(`head_init_scale`) so the field starts near zero.

Lee's stage 1 runs the ego branch on (I_t, I_s, D_t, D_s); stage 2 runs the residual
branch on the ego-warped source and the target (Î^ego, I_t, D̂^ego, D_t; either pair
order works: the depth reference is channel 6 without its holes). `motion_branches`
gives a view per branch (shared weights) that computes only that branch. Which
transform the ego vector stands for (e.g. T_target_to_source) is set by the loss that
uses it; the paper gets the other direction by swapping the frames in the input.

No gin here; the configurable factory is `coopnet_tf.models.factory.build_motion_net`.
"""
from typing import Optional, Sequence, Tuple

import keras
from keras import layers, ops

from coopnet_tf.models import blocks, resnet
from coopnet_tf.models.depth_net import DECODER_CHANNELS

INPUT_CHANNELS = 8        # I_t (3), I_s (3), D_t (1), D_s (1)
IMAGE_CHANNELS = 6
DAM_LEVELS = (2, 3, 4)    # encoder features (ResLayers) followed by DAM
RESIDUAL_SIZE = 3         # 3-D translation per pixel
_BRANCHES = ("ego", "residual")
# the encoder stage models of `resnet.build_resnet_stages` inside the net
ENCODER_STAGES = ("encoder_stem", "encoder_layer1", "encoder_layer2", "encoder_layer3",
                  "encoder_layer4")
_PACKAGE = "coopnet_tf"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DepthScaleNormalization(layers.Layer):
    """Divides the channels from `depth_channel` on by the mean positive value of
    channel `depth_channel` (per image); earlier channels pass through.

    `[B, H, W, C] -> [B, H, W, C]`. An image whose reference depth has no positive
    pixel is left unchanged. Idempotent and invariant to a common scale of the depths.
    """

    def __init__(self, depth_channel: int = IMAGE_CHANNELS, **kwargs):
        super().__init__(**kwargs)
        self.depth_channel = int(depth_channel)

    def call(self, inputs):
        k = self.depth_channel
        depths = inputs[..., k:]
        reference = inputs[..., k: k + 1]
        positive = ops.cast(reference > 0, inputs.dtype)
        count = ops.sum(positive, axis=(1, 2, 3), keepdims=True)
        total = ops.sum(reference * positive, axis=(1, 2, 3), keepdims=True)
        mean = ops.where(count > 0, total / ops.maximum(count, 1.0), ops.ones_like(total))
        return ops.concatenate([inputs[..., :k], depths / mean], axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(depth_channel=self.depth_channel)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SpatialSoftmax(layers.Layer):
    """Softmax of `[B, h, w, 1]` logits over all h*w pixels (sum 1 per image)."""

    def call(self, inputs):
        shape = ops.shape(inputs)
        flat = ops.reshape(inputs, (shape[0], -1))
        return ops.reshape(ops.softmax(flat, axis=-1), shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AttentionPooling(layers.Layer):
    """GCNet context modelling: `[x [B, h, w, C], a [B, h, w, 1]] -> [B, 1, 1, C]`,
    sum over pixels of a * x."""

    def call(self, inputs):
        x, attention = inputs
        return ops.sum(x * attention, axis=(1, 2), keepdims=True)

    def compute_output_shape(self, input_shape):
        x_shape = input_shape[0]
        return (x_shape[0], 1, 1, x_shape[-1])


def global_context_block(x, ratio: int, name: str):
    """One DAM self-attention module (GCNet block, Lee Sec. 3.2).

    Returns:
      (x + transform(context), attention `[B, h, w, 1]` float32, sum 1 per image).
    """
    channels = x.shape[-1]
    hidden = max(channels // ratio, 1)
    logits = layers.Conv2D(hidden, 1, activation="relu", name=f"{name}_mask_0")(x)
    # no bias: the softmax over pixels ignores a constant logit (its gradient is 0)
    logits = layers.Conv2D(1, 1, use_bias=False, name=f"{name}_mask_1")(logits)
    attention = SpatialSoftmax(dtype="float32", name=f"{name}_attention")(logits)
    context = AttentionPooling(dtype="float32", name=f"{name}_pool")([x, attention])
    t = layers.Conv2D(hidden, 1, name=f"{name}_transform_0")(context)
    t = layers.LayerNormalization(epsilon=1e-5, name=f"{name}_norm")(t)
    t = layers.ReLU(name=f"{name}_relu")(t)
    t = layers.Conv2D(channels, 1, kernel_initializer="zeros",
                      name=f"{name}_transform_1")(t)
    return layers.Add(name=f"{name}_fuse")([x, t]), attention


def build_motion_model(
    height: Optional[int] = 128,
    width: Optional[int] = 416,
    num_layers: int = 18,
    dam: bool = True,
    dam_ratio: int = 4,
    decoder_channels: Sequence[int] = DECODER_CHANNELS,
    ego_scale: float = 0.01,
    head_init_scale: float = 1e-4,
    name: str = "motion_net",
) -> keras.Model:
    """Builds the unified motion network with random initialisation.

    Args:
      height, width: input size, multiples of 32 (None = dynamic).
      num_layers: ResNet depth, 18 (paper), 34, 50 or 10 (small variant for
        tests and quick experiments, no ImageNet weights).
      dam: True = DAM after ResLayers 2-4 with ego and residual branches; False = one
        plain encoder feeding both decoders (Lee Table 3, "without DAM").
      dam_ratio: GCNet bottleneck ratio r (paper: 4).
      decoder_channels: widths of the residual decoder (Monodepth2 [16..256]).
      ego_scale: multiplies the ego output (as the pose net's 0.01).
      head_init_scale: variance scale of the residual heads' kernel (glorot = 1.0).
      name: model name.

    Returns:
      keras.Model: `[B, H, W, 8]` = (I_t, I_s, D_t, D_s) -> dict with
        `ego` `[B, 6]` (axis-angle rotation, translation);
        `residual` list of 4, scale s `[B, H/2^s, W/2^s, 3]` (3-D translation);
        `attention` (only with dam) list over ResLayers 2, 3, 4 of
        `[B, H/2^(l+1), W/2^(l+1), 2]`, channel 0 = ego, 1 = residual branch;
      all float32 under any mixed-precision policy.

    Raises:
      ValueError: when height or width is not a multiple of 32 (at least 64).
    """
    blocks.check_input_size(height, width)
    inputs = keras.Input((height, width, INPUT_CHANNELS), name="motion_input")
    x = DepthScaleNormalization(IMAGE_CHANNELS, dtype="float32", name="depth_scale")(inputs)
    x = blocks.ImageNormalization(image_channels=IMAGE_CHANNELS, name="normalize")(x)
    stages = resnet.build_resnet_stages(num_layers, INPUT_CHANNELS, height, width,
                                        name="encoder")
    shared = [stages[0](x)]
    for stage in stages[1:3]:
        shared.append(stage(shared[-1]))
    if dam:
        branch = {b: shared[2] for b in _BRANCHES}
        features = {b: [] for b in _BRANCHES}
        attention = {b: [] for b in _BRANCHES}
        for level in DAM_LEVELS:
            for b in _BRANCHES:
                if level > 2:
                    branch[b] = stages[level](branch[b])
                branch[b], a = global_context_block(branch[b], dam_ratio, f"dam{level}_{b}")
                features[b].append(branch[b])
                attention[b].append(a)
        ego_feature = features["ego"][-1]
        residual_features = shared[:2] + features["residual"]
    else:
        f3 = stages[3](shared[2])
        residual_features = shared + [f3, stages[4](f3)]
        ego_feature = residual_features[-1]

    ego = blocks.pose_decoder(ego_feature, ego_scale, prefix="ego", mean_name="ego_mean",
                              output_name="ego")
    head_init = keras.initializers.VarianceScaling(
        scale=head_init_scale, mode="fan_avg", distribution="uniform")

    def head(x, s):
        x = blocks.conv3x3_head(x, RESIDUAL_SIZE, name=f"residualconv_{s}",
                                kernel_initializer=head_init)
        return layers.Activation("linear", dtype="float32", name=f"residual_{s}")(x)

    outputs = {"ego": ego,
               "residual": blocks.unet_decoder(residual_features, decoder_channels, head)}
    if dam:
        outputs["attention"] = [
            layers.Concatenate(axis=-1, dtype="float32", name=f"attention_{level}")(
                [attention["ego"][i], attention["residual"][i]])
            for i, level in enumerate(DAM_LEVELS)]
    return keras.Model(inputs, outputs, name=name)


def motion_branches(model: keras.Model) -> Tuple[keras.Model, keras.Model]:
    """Ego-only and residual-only views of a motion net, sharing its weights.

    Lee's two stages feed different inputs (stage 1: (I_t, I_s, D_t, D_s); stage 2 the
    ego-warped source in place of the source); each view computes only its branch.

    Returns:
      (ego_model: input -> {"ego", "attention"?}, residual_model: input ->
      {"residual", "attention"?}), "attention" (when built with DAM) = list over
      ResLayers 2-4 of that branch's `[B, h, w, 1]` map.
    """
    def view(branch: str, outputs: dict) -> keras.Model:
        names = [f"dam{level}_{branch}_attention" for level in DAM_LEVELS]
        if all(n in {layer.name for layer in model.layers} for n in names):
            outputs["attention"] = [model.get_layer(n).output for n in names]
        return keras.Model(model.inputs[0], outputs, name=f"{model.name}_{branch}")

    ego = view("ego", {"ego": model.get_layer("ego").output})
    residual = view("residual", {"residual": [
        model.get_layer(f"residual_{s}").output for s in range(blocks.NUM_SCALES)]})
    return ego, residual
