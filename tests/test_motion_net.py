"""Tests of Lee et al.'s MotionNet (coopnet_tf/models/motion_net.py): shapes, initial
values, DAM (attention, branch separation, identity at init, parameter count), depth
normalisation, gradients, mixed precision, branch views, checkpoint round trip, pretrained
loading, and that the staged encoder equals the plain one.

Built with the production code at 64x64 / 64x96 (the smallest sizes the size rule allows).
"""
import numpy as np
import pytest
import tensorflow as tf
import gin
import keras

from coopnet_tf import models
from coopnet_tf.models import motion_net, resnet

SEED = 4321
H, W = 64, 96


def _inputs(batch=2, seed=0, height=H, width=W):
    """Images in [0, 1], depths in [1, 50] m."""
    rng = np.random.RandomState(seed)
    images = rng.uniform(0.0, 1.0, (batch, height, width, 6))
    depths = rng.uniform(1.0, 50.0, (batch, height, width, 2))
    return np.concatenate([images, depths], -1).astype(np.float32)


def _randomize_dam_fusion(model, seed=0):
    """The DAM's last transform conv starts at zero (identity); give it random weights."""
    rng = np.random.RandomState(seed)
    for layer in model.layers:
        if layer.name.startswith("dam") and layer.name.endswith("_transform_1"):
            layer.set_weights([rng.normal(0.0, 0.5, w.shape).astype(np.float32)
                               for w in layer.get_weights()])


def _dam_parameter_count(channels=(128, 256, 512), ratio=4):
    """Two GCNet blocks per level: mask C->C/r->1 (no bias), transform C->C/r, LayerNorm,
    C/r->C."""
    total = 0
    for c in channels:
        h = c // ratio
        total += (c * h + h) + h + (c * h + h) + 2 * h + (h * c + c)
    return 2 * total


@pytest.fixture(scope="module")
def dam_net():
    keras.utils.set_random_seed(SEED)
    return models.build_motion_net(height=H, width=W)


def test_output_shapes_dtypes_and_initial_values(dam_net):
    x = _inputs()
    out = dam_net(x, training=False)
    assert set(out) == {"ego", "residual", "attention"}
    assert out["ego"].shape == (2, 6) and out["ego"].dtype == tf.float32
    # ego_scale 0.01 like the pose net: a few millimetres / milliradians at init
    assert 0.0 < float(tf.reduce_max(tf.abs(out["ego"]))) < 0.05
    assert len(out["residual"]) == models.NUM_SCALES
    for s, r in enumerate(out["residual"]):
        assert r.shape == (2, H >> s, W >> s, 3) and r.dtype == tf.float32
        rms = float(tf.sqrt(tf.reduce_mean(tf.square(r))))
        assert 0.0 < rms < 0.05, (s, rms)   # near zero, but not dead
    assert len(out["attention"]) == 3
    for level, a in zip(motion_net.DAM_LEVELS, out["attention"]):
        a = a.numpy()
        assert a.shape == (2, H >> (level + 1), W >> (level + 1), 2)
        assert np.all(a >= 0.0) and np.all(a <= 1.0)
        # a softmax over all pixels, per image and per branch
        np.testing.assert_allclose(a.sum(axis=(1, 2)), 1.0, rtol=1e-5)
        # the two branches have their own attention modules
        assert np.max(np.abs(a[..., 0] - a[..., 1])) > 1e-4
    # paper sizes, symbolically
    big = models.build_motion_net(height=128, width=416)
    assert [tuple(t.shape) for t in big.output["residual"]] == [
        (None, 128 >> s, 416 >> s, 3) for s in range(4)]
    assert tuple(big.output["ego"].shape) == (None, 6)
    assert tuple(big.inputs[0].shape) == (None, 128, 416, 8)


def test_dam_parameters_and_identity_at_init(dam_net):
    keras.utils.set_random_seed(SEED + 1)
    plain = models.build_motion_net(height=H, width=W, dam=False)
    assert "attention" not in plain.output
    assert not [l.name for l in plain.layers if l.name.startswith("dam")]
    count = lambda m: sum(int(np.prod(v.shape)) for v in m.trainable_weights)  # noqa: E731
    assert count(dam_net) - count(plain) == _dam_parameter_count()
    # Same weights everywhere else: at init (last transform conv = 0) DAM is the identity.
    for layer in plain.layers:
        if layer.weights:
            layer.set_weights(dam_net.get_layer(layer.name).get_weights())
    x = _inputs(seed=3)
    a, b = dam_net(x, training=False), plain(x, training=False)
    np.testing.assert_allclose(a["ego"], b["ego"], rtol=1e-5, atol=1e-7)
    for ra, rb in zip(a["residual"], b["residual"]):
        np.testing.assert_allclose(ra, rb, rtol=1e-5, atol=1e-7)
    saved = [l.get_weights() for l in dam_net.layers]
    try:
        _randomize_dam_fusion(dam_net)
        c = dam_net(x, training=False)
        assert np.max(np.abs(c["ego"] - b["ego"])) > 1e-6
        assert np.max(np.abs(c["residual"][0] - b["residual"][0])) > 1e-6
    finally:
        for layer, w in zip(dam_net.layers, saved):
            layer.set_weights(w)


def test_depth_normalisation_is_scale_invariant_and_keeps_holes():
    layer = motion_net.DepthScaleNormalization()
    x = _inputs(batch=2, seed=5)
    x[0, :10, :, 6:] = 0.0                      # holes in both depths of image 0
    x[1, ..., 6] = 0.0                          # no reference depth at all in image 1
    y = layer(x).numpy()
    np.testing.assert_array_equal(y[..., :6], x[..., :6])
    ref = x[0, ..., 6]
    mean = ref[ref > 0].mean()
    np.testing.assert_allclose(y[0, ..., 6:], x[0, ..., 6:] / mean, rtol=1e-5)
    assert np.all(y[0, :10, :, 6:] == 0.0)
    np.testing.assert_array_equal(y[1], x[1])   # left unchanged, no NaN
    # the ratio D_s / D_t survives (one scale for both depths)
    np.testing.assert_allclose(y[0, 20:, :, 7] / y[0, 20:, :, 6],
                               x[0, 20:, :, 7] / x[0, 20:, :, 6], rtol=1e-5)
    # the network sees the same input for any common depth scale
    scaled = x.copy()
    scaled[..., 6:] *= 7.3
    np.testing.assert_allclose(layer(scaled).numpy()[0], y[0], rtol=1e-5)


def test_whole_net_is_invariant_to_depth_scale(dam_net):
    x = _inputs(seed=6)
    scaled = x.copy()
    scaled[..., 6:] *= 0.37
    a, b = dam_net(x, training=False), dam_net(scaled, training=False)
    np.testing.assert_allclose(a["ego"], b["ego"], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(a["residual"][0], b["residual"][0], rtol=1e-4, atol=1e-7)


def _grad_norms(model, loss_fn, x):
    """{id(variable): gradient norm (0 for None)} of a loss on the outputs."""
    with tf.GradientTape() as tape:
        loss = loss_fn(model(x, training=True))
    variables = model.trainable_variables
    grads = tape.gradient(loss, variables)
    return {id(v): (0.0 if g is None else float(tf.norm(g))) for v, g in zip(variables, grads)}


def _group(model, norms, prefix):
    """Gradient norms of the variables of the (top-level) layers named prefix*."""
    vals = [norms[id(v)] for layer in model.layers if layer.name.startswith(prefix)
            for v in layer.trainable_variables]
    assert vals, prefix
    return vals


def test_gradients_reach_encoder_dam_and_each_decoder_only_through_its_branch():
    keras.utils.set_random_seed(SEED)
    model = models.build_motion_net(height=64, width=64)
    _randomize_dam_fusion(model)
    x = _inputs(height=64, width=64, seed=2)
    ego = _grad_norms(model, lambda o: tf.reduce_sum(tf.square(o["ego"] - 0.1)), x)
    res = _grad_norms(model, lambda o: tf.add_n(
        [tf.reduce_mean(tf.square(r - 0.5)) for r in o["residual"]]), x)
    nonzero = lambda norms, prefix: all(n > 0 for n in _group(model, norms, prefix))  # noqa: E731
    zero = lambda norms, prefix: all(n == 0 for n in _group(model, norms, prefix))  # noqa: E731
    for norms in (ego, res):
        assert nonzero(norms, "encoder_stem") and nonzero(norms, "encoder_layer4")
    # each loss trains its own DAM modules (attention and transform) and decoder ...
    assert nonzero(ego, "dam4_ego_mask_0") and nonzero(ego, "dam2_ego_transform_1")
    assert nonzero(ego, "ego_squeeze")
    assert nonzero(res, "dam2_residual_mask_1") and nonzero(res, "dam4_residual_transform_0")
    assert nonzero(res, "residualconv_0") and nonzero(res, "upconv_4_0_conv")
    # ... and nothing of the other branch
    assert zero(ego, "dam3_residual_") and zero(ego, "residualconv_")
    assert zero(res, "dam3_ego_") and zero(res, "ego_")
    # every variable is trained by the sum of the two losses
    missing = [v.path for v in model.trainable_variables if ego[id(v)] == 0 and res[id(v)] == 0]
    assert not missing, missing[:10]


def test_branch_views_compute_only_their_branch(dam_net):
    ego_view, residual_view = models.motion_branches(dam_net)
    names = lambda m: {l.name for l in m.layers}  # noqa: E731
    assert not {"residualconv_0", "dam2_residual_mask_0"} & names(ego_view)
    assert not {"ego_squeeze", "dam4_ego_mask_0"} & names(residual_view)
    x = _inputs(seed=8)
    full = dam_net(x, training=False)
    e, r = ego_view(x, training=False), residual_view(x, training=False)
    np.testing.assert_allclose(e["ego"], full["ego"], rtol=1e-6, atol=1e-8)
    for a, b in zip(r["residual"], full["residual"]):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)
    for i in range(3):
        np.testing.assert_allclose(e["attention"][i][..., 0], full["attention"][i][..., 0],
                                   rtol=1e-6)
        np.testing.assert_allclose(r["attention"][i][..., 0], full["attention"][i][..., 1],
                                   rtol=1e-6)
    plain_views = models.motion_branches(models.build_motion_net(height=64, width=64, dam=False))
    assert all("attention" not in v.output for v in plain_views)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_outputs_are_float32(policy):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    half = policy.split("_")[1]
    try:
        model = models.build_motion_net(height=64, width=64)
        assert model.get_layer("encoder_stem").get_layer("conv1").compute_dtype == half
        assert model.get_layer("dam3_ego_transform_0").compute_dtype == half
        _randomize_dam_fusion(model)
        out = model(_inputs(batch=1, height=64, width=64), training=False)
        flat = [out["ego"]] + out["residual"] + out["attention"]
        for t in flat:
            assert t.dtype == tf.float32
            assert np.all(np.isfinite(t.numpy()))
        for a in out["attention"]:
            np.testing.assert_allclose(a.numpy().sum(axis=(1, 2)), 1.0, rtol=1e-4)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def test_checkpoint_round_trip_gives_identical_outputs(dam_net, tmp_path):
    """The trainer's format (tf.train.Checkpoint); DAM weights randomised so they matter."""
    x = _inputs(seed=9)
    saved = [l.get_weights() for l in dam_net.layers]
    try:
        _randomize_dam_fusion(dam_net, seed=4)
        before = dam_net(x, training=False)
        path = tf.train.Checkpoint(model=dam_net).write(str(tmp_path / "ckpt"))
        keras.utils.set_random_seed(SEED + 7)
        other = models.build_motion_net(height=H, width=W)
        assert np.max(np.abs(other(x, training=False)["ego"] - before["ego"])) > 1e-6
        tf.train.Checkpoint(model=other).read(path).assert_consumed()
        after = other(x, training=False)
        np.testing.assert_array_equal(after["ego"], before["ego"])
        for a, b in zip(after["residual"] + after["attention"],
                        before["residual"] + before["attention"]):
            np.testing.assert_array_equal(a, b)
    finally:
        for layer, w in zip(dam_net.layers, saved):
            layer.set_weights(w)


def test_staged_encoder_equals_plain_encoder():
    keras.utils.set_random_seed(SEED)
    plain = resnet.build_resnet_encoder(18, 8, 64, 64)
    stages = resnet.build_resnet_stages(18, 8, 64, 64)
    assert [s.name for s in stages] == list(motion_net.ENCODER_STAGES)
    by_name = {l.name: l for s in stages for l in s.layers}
    copied = 0
    for layer in plain.layers:
        if layer.weights:
            by_name[layer.name].set_weights(layer.get_weights())
            copied += 1
    assert copied == len([l for l in by_name.values() if l.weights])
    x = np.random.RandomState(1).normal(size=(2, 64, 64, 8)).astype(np.float32)
    expected = plain(x, training=False)
    y = x
    for stage, e in zip(stages, expected):
        y = stage(y, training=False)
        np.testing.assert_allclose(y, e, rtol=1e-5, atol=1e-5)


def test_pretrained_weights_tile_images_and_zero_depth_channels(tmp_path):
    rng = np.random.RandomState(0)
    state = {k: rng.standard_normal(shape).astype(np.float32)
             for k, shape in resnet.torchvision_state_dict_shapes(18).items()}
    np.savez(tmp_path / "r18.npz", **state)
    model = models.build_motion_net(height=64, width=64,
                                    pretrained_weights=str(tmp_path / "r18.npz"))
    conv1 = state["conv1.weight"].transpose(2, 3, 1, 0)
    kernel = model.get_layer("encoder_stem").get_layer("conv1").kernel.numpy()
    np.testing.assert_allclose(kernel[:, :, :6], np.concatenate([conv1, conv1], 2) / 2.0,
                               rtol=1e-6)
    np.testing.assert_array_equal(kernel[:, :, 6:], 0.0)
    np.testing.assert_array_equal(
        model.get_layer("encoder_layer3").get_layer("layer3_1_conv2").kernel.numpy(),
        state["layer3.1.conv2.weight"].transpose(2, 3, 1, 0))
    bn = model.get_layer("encoder_layer4").get_layer("layer4_0_downsample_1")
    np.testing.assert_array_equal(bn.moving_variance.numpy(),
                                  state["layer4.0.downsample.1.running_var"])


def test_size_rule_and_gin():
    with pytest.raises(ValueError, match=r"100x416.*height=100"):
        models.build_motion_net(height=100, width=416)
    gin.parse_config("build_motion_net.dam = False")
    assert "attention" not in models.build_motion_net(height=64, width=64).output
