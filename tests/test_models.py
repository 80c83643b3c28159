"""Tests of coopnet_tf.models: counts, shapes, ranges, save/load, gradients, mixed
precision, the size rule and the pretrained-weights loader.

Networks are built with the production code at tiny sizes (64x64, 64x96); the paper's
sizes are checked on the symbolic outputs only (building is fast, running is not).
"""
import numpy as np
import pytest
import tensorflow as tf
import gin
import keras

from coopnet_tf import models, specs
from coopnet_tf.models import blocks, resnet

TINY = (64, 64)
SEED = 1234


def _count(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


def _inputs(model, batch=2, seed=0):
    rng = np.random.RandomState(seed)
    arrays = [rng.uniform(0.0, 1.0, (batch,) + tuple(t.shape[1:])).astype(np.float32)
              for t in model.inputs]
    return arrays[0] if len(arrays) == 1 else arrays


def _as_list(outputs):
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


# name -> (factory, kwargs); the flow variants use the default R50 where it is cheap
# enough and R18 where a second copy would only cost time.
BUILDERS = {
    "depth": (models.build_depth_net, {}),
    "pose": (models.build_pose_net, {}),
    "flow": (models.build_flow_net, {}),
    "flow_residual": (models.build_flow_net, {"residual": True, "num_layers": 18}),
}


@pytest.fixture(scope="module")
def tiny_models():
    keras.utils.set_random_seed(SEED)
    return {name: fn(height=TINY[0], width=TINY[1], **kw) for name, (fn, kw) in BUILDERS.items()}


# --- Parameter counts (docs/decisions.md C9) -----------------------------------------


def test_parameter_counts_match_reference(tiny_models):
    depth, pose, flow = tiny_models["depth"], tiny_models["pose"], tiny_models["flow"]
    assert _count(depth.trainable_weights) == 14_329_236
    assert _count(depth.get_layer("encoder").trainable_weights) == 11_176_512
    assert _count(pose.trainable_weights) == 12_498_950
    assert _count(pose.get_layer("encoder").trainable_weights) == 11_185_920
    assert _count(flow.trainable_weights) == 32_533_704
    assert _count(flow.get_layer("encoder").trainable_weights) == 23_517_440
    # BN running statistics are the only non-trainable weights.
    assert _count(depth.non_trainable_weights) == 9_600
    assert _count(flow.non_trainable_weights) == 53_120


def test_encoder_is_torchvision_v15_layout():
    enc = resnet.build_resnet_encoder(50, 3, 64, 64)
    assert [tuple(f.shape[1:]) for f in enc.outputs] == [
        (32, 32, 64), (16, 16, 256), (8, 8, 512), (4, 4, 1024), (2, 2, 2048)]
    # v1.5: the stride of a downsampling bottleneck sits in its 3x3 conv.
    assert enc.get_layer("layer2_0_conv1").strides == (1, 1)
    assert enc.get_layer("layer2_0_conv2").strides == (2, 2)
    assert enc.get_layer("layer2_0_downsample_0").strides == (2, 2)
    assert "layer1_0_downsample_0" in [l.name for l in enc.layers]  # 64 -> 256 projection
    enc18 = resnet.build_resnet_encoder(18, 6, 64, 64)
    assert enc18.get_layer("conv1").kernel.shape == (7, 7, 6, 64)
    assert "layer1_0_downsample_0" not in [l.name for l in enc18.layers]


def test_resnet10_is_resnet18_with_one_block_per_stage(tmp_path, monkeypatch):
    """The tests' small encoder: stem + one BasicBlock per stage (2 convs each) + the 3
    projection shortcuts of stages 2-4; ResNet18's feature shapes and channels."""
    enc10 = resnet.build_resnet_encoder(10, 6, 64, 64)
    enc18 = resnet.build_resnet_encoder(18, 6, 64, 64)
    convs = [l.name for l in enc10.layers if isinstance(l, keras.layers.Conv2D)]
    assert len(convs) == 1 + 4 * 2 + 3
    assert sorted(convs) == sorted(
        ["conv1"] + [f"layer{s}_0_conv{i}" for s in range(1, 5) for i in (1, 2)]
        + [f"layer{s}_0_downsample_0" for s in (2, 3, 4)])
    assert [tuple(f.shape[1:]) for f in enc10.outputs] == [
        tuple(f.shape[1:]) for f in enc18.outputs] == [
        (32, 32, 64), (16, 16, 64), (8, 8, 128), (4, 4, 256), (2, 2, 512)]
    # the chained stages (motion net) build the same convs
    stages = resnet.build_resnet_stages(10, 6, 64, 64)
    assert sorted(l.name for s in stages for l in s.layers
                  if isinstance(l, keras.layers.Conv2D)) == sorted(convs)
    # no ImageNet weights exist for it: a clear error, not a file hunt
    np.savez(tmp_path / "resnet10.npz", **_fake_state_dict(10))
    monkeypatch.setenv(resnet.PRETRAINED_DIR_ENV, str(tmp_path))
    with pytest.raises(ValueError, match="no ImageNet weights for ResNet10"):
        resnet.resolve_pretrained_weights("imagenet", 10)
    # ResNet18 weights given by path do not fit it (layerN.1.* left over)
    with pytest.raises(ValueError, match=r"does not use \(wrong depth\?\).*layer1\.1\."):
        resnet.load_pretrained_encoder(enc10, _fake_state_dict(18))


# --- Shapes and ranges ---------------------------------------------------------


@pytest.mark.parametrize("size", [(128, 416), (192, 640)])
def test_output_shapes(size):
    h, w = size
    depth = models.build_depth_net(height=h, width=w)
    assert [tuple(t.shape) for t in depth.outputs] == [
        (None, h >> s, w >> s, 1) for s in range(models.NUM_SCALES)]
    pose = models.build_pose_net(height=h, width=w)
    assert tuple(pose.outputs[0].shape) == (None, 6)
    assert tuple(pose.inputs[0].shape) == (None, h, w, 6)
    flow = models.build_flow_net(height=h, width=w)
    assert [tuple(t.shape) for t in flow.outputs] == [
        (None, h >> s, w >> s, 2) for s in range(models.NUM_SCALES)]


def test_tiny_forward_shapes_and_ranges():
    keras.utils.set_random_seed(SEED)
    h, w = 64, 96
    depth = models.build_depth_net(height=h, width=w)
    disps = depth(_inputs(depth), training=False)
    assert len(disps) == 4
    for s, disp in enumerate(disps):
        disp = disp.numpy()
        assert disp.shape == (2, h >> s, w >> s, 1)
        assert np.all(disp > 0.0) and np.all(disp < 1.0)
        scaled, depth_m = models.disp_to_depth(disp)
        assert np.all(depth_m >= specs.MIN_DEPTH) and np.all(depth_m <= specs.MAX_DEPTH)
        np.testing.assert_allclose(scaled.numpy() * depth_m.numpy(), 1.0, rtol=1e-6)
    pose = models.build_pose_net(height=h, width=w)
    out = pose(_inputs(pose))
    assert out.shape == (2, 6) and np.all(np.isfinite(out))
    flow = models.build_flow_net(height=h, width=w, num_layers=18)
    for s, f in enumerate(flow(_inputs(flow))):
        assert f.shape == (2, h >> s, w >> s, 2) and np.all(np.isfinite(f))


def test_disp_to_depth_limits():
    scaled, depth = models.disp_to_depth(tf.constant([0.0, 1.0]))
    np.testing.assert_allclose(scaled.numpy(), [1.0 / specs.MAX_DEPTH, 1.0 / specs.MIN_DEPTH], rtol=1e-6)
    np.testing.assert_allclose(depth.numpy(), [specs.MAX_DEPTH, specs.MIN_DEPTH], rtol=1e-6)
    _, depth = models.disp_to_depth(tf.constant([0.5]), min_depth=1.0, max_depth=10.0)
    np.testing.assert_allclose(depth.numpy(), [1.0 / (0.1 + 0.9 * 0.5)], rtol=1e-6)


def test_flow_head_is_in_pixels_of_its_scale():
    h, w = TINY
    flow = models.build_flow_net(height=h, width=w, num_layers=18)
    for s in range(4):
        head = flow.get_layer(f"flowconv_{s}")
        head.kernel.assign(np.zeros(head.kernel.shape, np.float32))
        head.bias.assign(np.ones(2, np.float32))  # conv output 1 -> 0.1 x (W_s, H_s)
    for s, f in enumerate(flow(_inputs(flow))):
        np.testing.assert_allclose(f[..., 0], 0.1 * (w >> s), rtol=1e-6)
        np.testing.assert_allclose(f[..., 1], 0.1 * (h >> s), rtol=1e-6)


def test_residual_flow_adds_resized_stop_gradient_rigid_flow(tiny_models):
    flow = tiny_models["flow_residual"]
    assert [tuple(t.shape) for t in flow.inputs] == [(None, 64, 64, 6), (None, 64, 64, 6)]
    assert flow.get_layer("encoder").get_layer("conv1").kernel.shape[2] == 12
    saved = [flow.get_layer(f"flowconv_{s}").get_weights() for s in range(4)]
    try:
        for s in range(4):
            head = flow.get_layer(f"flowconv_{s}")
            head.set_weights([np.zeros_like(v) for v in saved[s]])
        pair, rigid = _inputs(flow)
        rigid[..., 3:5] = np.random.RandomState(3).normal(0.0, 20.0, rigid[..., 3:5].shape)
        rigid_t = tf.constant(rigid)
        with tf.GradientTape() as tape:
            tape.watch(rigid_t)
            flows = flow([tf.constant(pair), rigid_t])
            total = tf.add_n([tf.reduce_sum(f) for f in flows])
        for s, f in enumerate(flows):
            k = 2 ** s
            expected = rigid[..., 3:5].reshape(2, 64 // k, k, 64 // k, k, 2).mean(axis=(2, 4)) / k
            np.testing.assert_allclose(f.numpy(), expected, rtol=1e-5, atol=1e-5)
        assert tape.gradient(total, rigid_t) is None
    finally:
        for s in range(4):
            flow.get_layer(f"flowconv_{s}").set_weights(saved[s])


# --- Save / load, gradients -------------------------------------------------------


@pytest.mark.parametrize("name", list(BUILDERS))
def test_save_load_round_trip(tiny_models, tmp_path, name):
    model = tiny_models[name]
    x = _inputs(model)
    before = [o.numpy() for o in _as_list(model(x, training=False))]
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    after = [o.numpy() for o in _as_list(loaded(x, training=False))]
    assert len(before) == len(after)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


def _simple_loss(outputs, name):
    outputs = _as_list(outputs)
    target = {"depth": 0.3, "pose": 0.05, "flow": 1.0, "flow_residual": 1.0}[name]
    return tf.add_n([tf.reduce_mean(tf.square(tf.cast(o, tf.float32) - target))
                     for o in outputs]) / len(outputs)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_one_step_fit_lowers_loss_and_reaches_every_variable(name):
    fn, kwargs = BUILDERS[name]
    keras.utils.set_random_seed(SEED)
    model = fn(height=TINY[0], width=TINY[1], **kwargs)
    x = _inputs(model, batch=2, seed=7)
    optimizer = keras.optimizers.Adam(1e-4)
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        loss0 = _simple_loss(model(x, training=True), name)
    grads = tape.gradient(loss0, variables)
    missing = [v.path for v, g in zip(variables, grads) if g is None]
    assert not missing, f"variables without gradient: {missing[:10]}"
    assert all(np.all(np.isfinite(g)) for g in grads)
    optimizer.apply(grads, variables)
    loss1 = _simple_loss(model(x, training=True), name)
    assert float(loss1) < float(loss0)


# --- Mixed precision, size rule, gin ---------------------------------------------------


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_outputs_are_float32(policy):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        built = [
            models.build_depth_net(height=64, width=64),
            models.build_pose_net(height=64, width=64),
            # the residual variant has every float32 output layer of the direct one
            models.build_flow_net(height=64, width=64, num_layers=18, residual=True),
        ]
        for model in built:
            assert model.get_layer("encoder").get_layer("conv1").compute_dtype != "float32"
            outs = _as_list(model(_inputs(model, batch=1), training=False))
            for out in outs:
                assert out.dtype == tf.float32, (model.name, out.dtype)
                assert np.all(np.isfinite(out.numpy()))
    finally:
        keras.mixed_precision.set_global_policy(previous)


@pytest.mark.parametrize("factory", [models.build_depth_net, models.build_pose_net,
                                     models.build_flow_net])
def test_size_not_multiple_of_32_raises(factory):
    with pytest.raises(ValueError, match=r"100x416.*height=100"):
        factory(height=100, width=416)
    with pytest.raises(ValueError, match=r"128x400.*width=400"):
        factory(height=128, width=400)
    with pytest.raises(ValueError, match=r"32x416.*height=32.*at least 64"):
        factory(height=32, width=416)


def test_factories_are_gin_configurable():
    gin.clear_config()
    try:
        gin.parse_config("build_flow_net.residual = True\nbuild_flow_net.num_layers = 18")
        flow = models.build_flow_net(height=64, width=64)
        assert len(flow.inputs) == 2
        assert flow.get_layer("encoder").get_layer("conv1").kernel.shape[2] == 12
    finally:
        gin.clear_config()


def test_custom_layers_config_round_trip():
    for layer in [blocks.ReflectionPad2D(2), blocks.ImageNormalization(image_channels=9),
                  blocks.ChannelSlice(3, 5), blocks.StopGradient(), blocks.FlowScale(0.2)]:
        clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
        assert type(clone) is type(layer) and clone.get_config() == layer.get_config()
    x = np.arange(2 * 4 * 5 * 3, dtype=np.float32).reshape(2, 4, 5, 3)
    np.testing.assert_array_equal(
        blocks.ReflectionPad2D(1)(x), tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], "REFLECT"))


# --- Pretrained weights ------------------------------------------------------------


def _fake_state_dict(num_layers, seed=0):
    rng = np.random.RandomState(seed)
    state = {k: rng.standard_normal(shape).astype(np.float32)
             for k, shape in resnet.torchvision_state_dict_shapes(num_layers).items()}
    state["fc.weight"] = np.zeros((1000, 512), np.float32)  # ignored
    state["bn1.num_batches_tracked"] = np.array(7)          # ignored
    return state


def test_pretrained_loader_tiles_first_conv(tmp_path, monkeypatch):
    state = _fake_state_dict(18)
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    np.savez(weights_dir / "resnet18.npz", **state)
    monkeypatch.setenv(resnet.PRETRAINED_DIR_ENV, str(weights_dir))
    conv1 = state["conv1.weight"].transpose(2, 3, 1, 0)  # OIHW -> HWIO [7, 7, 3, 64]

    pose = models.build_pose_net(height=64, width=64, pretrained_weights="imagenet")
    enc = pose.get_layer("encoder")
    np.testing.assert_allclose(enc.get_layer("conv1").kernel.numpy(),
                               np.concatenate([conv1, conv1], axis=2) / 2.0, rtol=1e-6)
    np.testing.assert_array_equal(enc.get_layer("layer3_0_conv2").kernel.numpy(),
                                  state["layer3.0.conv2.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(enc.get_layer("layer2_0_downsample_0").kernel.numpy(),
                                  state["layer2.0.downsample.0.weight"].transpose(2, 3, 1, 0))
    bn = enc.get_layer("layer4_1_bn2")
    np.testing.assert_array_equal(bn.gamma.numpy(), state["layer4.1.bn2.weight"])
    np.testing.assert_array_equal(bn.beta.numpy(), state["layer4.1.bn2.bias"])
    np.testing.assert_array_equal(bn.moving_mean.numpy(), state["layer4.1.bn2.running_mean"])
    np.testing.assert_array_equal(bn.moving_variance.numpy(), state["layer4.1.bn2.running_var"])

    # Same file by path into the single-frame depth net: conv1 unchanged.
    depth = models.build_depth_net(height=64, width=64,
                                   pretrained_weights=str(weights_dir / "resnet18.npz"))
    np.testing.assert_array_equal(depth.get_layer("encoder").get_layer("conv1").kernel.numpy(), conv1)

    # Residual flow (12 channels): 3 images tiled / 3, rigid flow and error channels zero.
    flow = models.build_flow_net(height=64, width=64, num_layers=18, residual=True,
                                 pretrained_weights="imagenet")
    kernel = flow.get_layer("encoder").get_layer("conv1").kernel.numpy()
    np.testing.assert_allclose(kernel[:, :, :9], np.concatenate([conv1] * 3, axis=2) / 3.0, rtol=1e-6)
    np.testing.assert_array_equal(kernel[:, :, 9:], 0.0)


def test_pretrained_loader_rejects_wrong_weights():
    state = _fake_state_dict(18)
    encoder = resnet.build_resnet_encoder(34, 3, 64, 64)
    with pytest.raises(ValueError, match="lack 'layer1.2.conv1.weight'"):
        resnet.load_pretrained_encoder(encoder, state)
    state["layer1.0.conv1.weight"] = np.zeros((64, 64, 1, 1), np.float32)
    with pytest.raises(ValueError, match="layer1.0.conv1.weight' has shape"):
        resnet.load_pretrained_encoder(resnet.build_resnet_encoder(18, 3, 64, 64), state)


def test_imagenet_without_local_file_explains_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv(resnet.PRETRAINED_DIR_ENV, str(tmp_path / "empty"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(FileNotFoundError, match="convert_torchvision_weights.py --num_layers=50"):
        models.build_flow_net(height=64, width=64, pretrained_weights="imagenet")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.build_depth_net(height=64, width=64, pretrained_weights=str(tmp_path / "x.npz"))


def test_convert_tool_output_loads(tmp_path):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "tools" / "convert_torchvision_weights.py"
    spec = importlib.util.spec_from_file_location("convert_torchvision_weights", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    state = {f"module.{k}": v for k, v in _fake_state_dict(18, seed=5).items()}
    arrays = tool.convert_state_dict({"state_dict": state})
    assert "fc.weight" not in arrays and "bn1.num_batches_tracked" not in arrays
    tool._check(arrays, 18)
    np.savez(tmp_path / "r18.npz", **arrays)
    encoder = resnet.build_resnet_encoder(18, 3, 64, 64)
    resnet.load_pretrained_encoder(encoder, tmp_path / "r18.npz")
    np.testing.assert_array_equal(encoder.get_layer("bn1").gamma.numpy(), arrays["bn1.weight"])
