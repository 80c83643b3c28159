"""Apportionment strategies: Δ/Δflow, the masks V_η, V_ζ, V (Eq. 14), the Eq. 11 weights
("mean of tails + mean of centre"), the loss functions, gradient routing and the
strategy interface."""
import pathlib
import sys

import numpy as np
import pytest
import tensorflow as tf
import keras

import conftest

from coopnet_tf.losses import apportion, photometric
from coopnet_tf.losses.apportion import ApportionInputs

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import apportion_selection  # noqa: E402

B, S, H, W = 2, 2, 6, 8
# Frozen quantiles of the constructed fields (set by hand, see _set_current).
Q_DELTA = {0.15: -0.30, 0.35: -0.10, 0.65: 0.10, 0.85: 0.30}
Q_FLOW = {0.25: -0.20, 0.75: 0.20}


def _fields(seed=0, occluded_fraction=0.25):
    rng = np.random.default_rng(seed)
    shape = (B, S, H, W, 1)
    phi_flow = rng.uniform(0.05, 0.5, shape).astype(np.float32)
    # Δ on a grid whose points stay >= 0.025 away from every quantile used (no ties).
    delta = rng.choice(np.linspace(-0.525, 0.525, 22), size=shape).astype(np.float32)
    phi_rigid = (phi_flow + delta).astype(np.float32)
    delta = phi_rigid - phi_flow  # the float32 Δ the code sees
    phi_identity = rng.uniform(0.05, 0.6, shape).astype(np.float32)
    optical = rng.normal(0, 3, (B, S, H, W, 2)).astype(np.float32)
    rigid = (optical + rng.normal(0, 1.5, optical.shape)).astype(np.float32)
    non_occ = (rng.random(shape) > occluded_fraction).astype(np.float32)
    return dict(phi_rigid=phi_rigid, phi_flow=phi_flow, phi_identity=phi_identity,
                rigid_flow=rigid, optical_flow=optical, non_occluded=non_occ, delta=delta)


def _inputs(f):
    return ApportionInputs(*(tf.constant(f[k]) for k in (
        "phi_rigid", "phi_flow", "phi_identity", "rigid_flow", "optical_flow",
        "non_occluded")))


def _np_dflow(f, eps=1e-3):
    r, o = f["rigid_flow"].astype(np.float64), f["optical_flow"].astype(np.float64)
    return (r - o) / (np.linalg.norm(r, axis=-1, keepdims=True)
                      + np.linalg.norm(o, axis=-1, keepdims=True) + eps)


def _set_current(strategy, delta_q=Q_DELTA, flow_q=Q_FLOW):
    layer = strategy.quantile_layer
    vals = layer.current_values.numpy().copy()
    for p, v in delta_q.items():
        if any(abs(p - q) < 1e-9 for q in layer.probabilities["delta"]):
            vals[layer.estimator_index("delta", p)] = v
    for name in ("delta_flow_x", "delta_flow_y"):
        for p, v in flow_q.items():
            vals[layer.estimator_index(name, p)] = v
    layer.current_values.assign(vals)
    layer.current_valid.assign(np.ones_like(vals))


def _np_group_loss(phi, in_gamma, domain):
    """mean over pairs with P != {} of (mean_tails + mean_centre), empty groups skipped."""
    total, pairs = 0.0, 0
    for b in range(phi.shape[0]):
        for s in range(phi.shape[1]):
            dom = domain[b, s] > 0.5
            if not dom.any():
                continue
            pairs += 1
            for grp in (in_gamma[b, s] & dom, ~in_gamma[b, s] & dom):
                if grp.any():
                    total += phi[b, s][grp].mean()
    return total / pairs


# --------------------------------------------------------------------- math ----

def test_delta_and_delta_flow():
    f = _fields()
    np.testing.assert_allclose(
        apportion.compute_delta(f["phi_rigid"], f["phi_flow"]).numpy(), f["delta"], atol=1e-7)
    got = apportion.compute_delta_flow(f["rigid_flow"], f["optical_flow"]).numpy()
    np.testing.assert_allclose(got, _np_dflow(f), atol=1e-6)
    zero = apportion.compute_delta_flow(tf.zeros([1, 2]), tf.zeros([1, 2])).numpy()
    np.testing.assert_array_equal(zero, 0.0)  # eps keeps it finite
    one = apportion.compute_delta_flow(tf.constant([[1.0, 0.0]]), tf.constant([[-1.0, 0.0]]))
    np.testing.assert_allclose(one.numpy(), [[2.0 / 2.001, 0.0]], rtol=1e-6)


@pytest.mark.parametrize("flow_weighting,use_flow_prior", [
    ("tails", True), ("tails", False), ("eq11", True)])
def test_coopnet_masks_and_weights_match_numpy(flow_weighting, use_flow_prior):
    f = _fields(1)
    strategy = apportion.make_strategy("coopnet", flow_weighting=flow_weighting,
                                       use_flow_prior=use_flow_prior, sample_size=64)
    _set_current(strategy)
    app = strategy(_inputs(f), use_quantiles=True, update_quantiles=False)

    d = f["delta"]
    dflow = _np_dflow(f)
    v_eta = (d >= Q_DELTA[0.35]) & (d <= Q_DELTA[0.65])
    v_zeta = ((dflow[..., :1] >= -0.2) & (dflow[..., :1] <= 0.2)
              & (dflow[..., 1:] >= -0.2) & (dflow[..., 1:] <= 0.2))
    v = v_eta & v_zeta if use_flow_prior else v_eta
    np.testing.assert_array_equal(app.rigid_mask.numpy(), v.astype(np.float32))
    assert 0.05 < v.mean() < 0.6  # the construction exercises both sides

    lo, hi = ((Q_DELTA[0.15], Q_DELTA[0.85]) if flow_weighting == "tails"
              else (Q_DELTA[0.35], Q_DELTA[0.65]))
    gamma = (d < lo) | (d > hi)
    dom = f["non_occluded"] > 0.5
    # Eq. 11 per (image, source) pair: |P|/|Γ| on Γ, |P|/|Γ̄| on Γ̄, over P = non-occluded.
    want_w = np.zeros_like(d)
    for b in range(B):
        for s in range(S):
            n_p = dom[b, s].sum()
            g = gamma[b, s] & dom[b, s]
            gb = ~gamma[b, s] & dom[b, s]
            want_w[b, s][g] = n_p / g.sum()
            want_w[b, s][gb] = n_p / gb.sum()
    np.testing.assert_allclose(app.flow_pixel_weight.numpy(), want_w, rtol=1e-6)
    got = float(photometric.flow_photometric_loss(f["phi_flow"], app.flow_weight))
    assert got == pytest.approx(_np_group_loss(f["phi_flow"], gamma, dom), rel=1e-6)
    # The identity of docs/decisions.md D15: (1/|P|) Σ w Φ = mean_Γ + mean_Γ̄, pair by pair.
    per_pair = [(want_w[b, s] * f["phi_flow"][b, s])[dom[b, s]].mean()
                for b in range(B) for s in range(S)]
    assert got == pytest.approx(np.mean(per_pair), rel=1e-6)
    st = {k: float(v) for k, v in app.stats.items()}
    assert st["apportion/fraction_V"] == pytest.approx(v.mean(), abs=1e-6)
    assert st["apportion/fraction_V_eta"] == pytest.approx(v_eta.mean(), abs=1e-6)
    assert st["apportion/fraction_V_zeta"] == pytest.approx(v_zeta.mean(), abs=1e-6)
    assert st["apportion/fraction_tails"] == pytest.approx(gamma[dom].mean(), abs=1e-6)
    assert st["quantiles/current/delta_q0.35"] == pytest.approx(-0.1)
    assert st["apportion/quantiles_in_use"] == 1.0


def test_empty_groups_are_skipped():
    f = _fields(2, occluded_fraction=0.0)
    d = f["delta"]
    d[0, 0] = 0.0  # pair (0, 0): centre only
    d[0, 1] = 0.5  # pair (0, 1): tails only
    f["phi_rigid"] = f["phi_flow"] + d
    f["delta"] = f["phi_rigid"] - f["phi_flow"]
    f["non_occluded"][1, 0] = 0.0  # pair (1, 0): fully occluded -> skipped
    strategy = apportion.make_strategy("coopnet", sample_size=64)
    _set_current(strategy)
    app = strategy(_inputs(f), use_quantiles=True, update_quantiles=False)
    gamma = (f["delta"] < -0.3) | (f["delta"] > 0.3)
    dom = f["non_occluded"] > 0.5
    got = float(photometric.flow_photometric_loss(f["phi_flow"], app.flow_weight))
    want = _np_group_loss(f["phi_flow"], gamma, dom)
    assert got == pytest.approx(want, rel=1e-6)
    assert np.all(np.isfinite(app.flow_weight.numpy()))
    w = app.flow_pixel_weight.numpy()
    np.testing.assert_allclose(w[0, 0], 1.0)  # one group only -> w ≡ 1
    np.testing.assert_allclose(w[0, 1], 1.0)
    np.testing.assert_array_equal(w[1, 0], 0.0)
    # pairs (0,0), (0,1) contribute their plain mean; (1,1) its two group means.
    plain = [f["phi_flow"][0, 0].mean(), f["phi_flow"][0, 1].mean()]
    g11 = gamma[1, 1]
    two = f["phi_flow"][1, 1][g11].mean() + f["phi_flow"][1, 1][~g11].mean()
    assert got == pytest.approx((sum(plain) + two) / 3.0, rel=1e-6)


def test_burn_in_and_missing_quantiles_fall_back_to_all_pixels():
    f = _fields(3)
    strategy = apportion.make_strategy("coopnet", sample_size=64)
    dom = f["non_occluded"] > 0.5
    want = np.mean([f["phi_flow"][b, s][dom[b, s]].mean() for b in range(B) for s in range(S)])
    # use_quantiles=True but nothing frozen yet, then burn-in with frozen quantiles.
    for use, frozen in ((True, False), (False, True)):
        if frozen:
            _set_current(strategy)
        app = strategy(_inputs(f), use_quantiles=use, update_quantiles=False)
        np.testing.assert_array_equal(app.rigid_mask.numpy(), 1.0)
        np.testing.assert_array_equal(app.flow_pixel_weight.numpy(), f["non_occluded"])
        got = float(photometric.flow_photometric_loss(f["phi_flow"], app.flow_weight))
        assert got == pytest.approx(want, rel=1e-6)
        assert float(app.stats["apportion/quantiles_in_use"]) == 0.0


def test_rigid_loss_normalisations_match_numpy():
    f = _fields(4)
    rng = np.random.default_rng(0)
    mask = (rng.random((B, S, H, W, 1)) > 0.5).astype(np.float32)
    mask[0, :, 0, 0] = 0.0  # a pixel with no admitted source
    phi_r, phi_id = f["phi_rigid"], f["phi_identity"]
    cand = np.concatenate([phi_id, np.where(mask > 0, phi_r, np.inf)], axis=1)
    valid = mask.max(axis=1) > 0
    want = cand.min(axis=1)[valid].mean()
    got = photometric.rigid_photometric_loss(phi_r, phi_id, mask, "masked")
    assert float(got) == pytest.approx(want, rel=1e-6)
    got_all = photometric.rigid_photometric_loss(phi_r, phi_id, mask, "all")
    assert float(got_all) == pytest.approx((mask * phi_r).mean(), rel=1e-6)
    with pytest.raises(ValueError):
        photometric.rigid_photometric_loss(phi_r, phi_id, mask, "sum")


def test_baseline_is_monodepth2_and_uniform_flow():
    f = _fields(5)
    app = apportion.make_strategy("baseline")(_inputs(f))
    assert app.rigid_normalisation == "masked"
    rigid = photometric.rigid_photometric_loss(f["phi_rigid"], f["phi_identity"],
                                             app.rigid_mask, app.rigid_normalisation)
    want = np.concatenate([f["phi_identity"], f["phi_rigid"]], axis=1).min(axis=1).mean()
    assert float(rigid) == pytest.approx(want, rel=1e-6)
    dom = f["non_occluded"] > 0.5
    want_f = np.mean([f["phi_flow"][b, s][dom[b, s]].mean() for b in range(B) for s in range(S)])
    got_f = photometric.flow_photometric_loss(f["phi_flow"], app.flow_weight)
    assert float(got_f) == pytest.approx(want_f, rel=1e-6)
    assert app.histograms["delta"].shape == (apportion.DEFAULT_HISTOGRAM_SIZE,)


def test_glnet_min_is_eq6():
    """With every pixel non-occluded, L_rigid + L_flow = mean over s, p of min(Φ_D, Φ_F)."""
    f = _fields(6, occluded_fraction=0.0)
    app = apportion.make_strategy("glnet_min")(_inputs(f))
    assert app.rigid_normalisation == "all"
    np.testing.assert_array_equal(app.rigid_mask.numpy(), (f["delta"] < 0).astype(np.float32))
    total = (photometric.rigid_photometric_loss(f["phi_rigid"], f["phi_identity"],
                                              app.rigid_mask, app.rigid_normalisation)
             + photometric.flow_photometric_loss(f["phi_flow"], app.flow_weight))
    want = np.minimum(f["phi_rigid"], f["phi_flow"]).mean()
    assert float(total) == pytest.approx(want, rel=1e-6)
    assert float(app.stats["apportion/fraction_delta_negative"]) == pytest.approx(
        (f["delta"] < 0).mean())


# ----------------------------------------------------------- gradient routing ----

class _Head(keras.Model):
    """A tiny "network": x -> (Φ map [B,S,H,W,1] > 0, flow [B,S,H,W,2])."""

    def __init__(self, seed):
        super().__init__()
        self.conv = keras.layers.Conv2D(3, 3, padding="same",
                                        kernel_initializer=keras.initializers.GlorotUniform(seed))

    def call(self, x):
        y = self.conv(tf.reshape(x, [B * S, H, W, 3]))
        y = tf.reshape(y, [B, S, H, W, 3])
        return tf.nn.softplus(y[..., :1]), 3.0 * y[..., 1:]


@pytest.mark.parametrize("name", ["coopnet", "baseline", "glnet_min"])
def test_gradient_routing_is_exact(name):
    rng = np.random.default_rng(7)
    x = tf.constant(rng.normal(size=(B, S, H, W, 3)), tf.float32)
    depth_pose, flow_net = _Head(1), _Head(2)
    depth_pose(x), flow_net(x)
    f = _fields(7)
    strategy = apportion.make_strategy(name, **({"sample_size": 64} if name == "coopnet" else {}))
    if name == "coopnet":
        _set_current(strategy, {0.15: -0.6, 0.35: -0.3, 0.65: 0.3, 0.85: 0.6},
                     {0.25: -0.6, 0.75: 0.6})
    with tf.GradientTape(persistent=True) as tape:
        phi_d, rigid_flow = depth_pose(x)
        phi_f, optical_flow = flow_net(x)
        inputs = ApportionInputs(phi_d, phi_f, tf.constant(f["phi_identity"]), rigid_flow,
                                 optical_flow, tf.constant(f["non_occluded"]))
        app = strategy(inputs, use_quantiles=True, update_quantiles=True)
        l_rigid = photometric.rigid_photometric_loss(phi_d, inputs.phi_identity, app.rigid_mask,
                                                   app.rigid_normalisation, seed=3)
        l_flow = photometric.flow_photometric_loss(phi_f, app.flow_weight)
    # The tf.Variables behind the Keras 3 variables (tape.gradient with
    # UnconnectedGradients.ZERO reads `.dtype` as a tf.DType, a Keras Variable has a str).
    dp_vars = [v.value for v in depth_pose.trainable_variables]
    fl_vars = [v.value for v in flow_net.trainable_variables]
    if name == "coopnet":
        assert 0.0 < float(tf.reduce_mean(app.rigid_mask)) < 1.0  # masks are not trivial
    # Connected only through stop_gradient: None by default ...
    assert all(g is None for g in tape.gradient(l_rigid, fl_vars))
    assert all(g is None for g in tape.gradient(l_flow, dp_vars))
    # ... and exact zeros when asked for zeros.
    zero = tf.UnconnectedGradients.ZERO
    for g in tape.gradient(l_rigid, fl_vars, unconnected_gradients=zero) + tape.gradient(
            l_flow, dp_vars, unconnected_gradients=zero):
        assert np.count_nonzero(g.numpy()) == 0
    # The intended paths carry gradient (rigid flow only feeds the sg'd masks: no grad).
    g_rigid = tape.gradient(l_rigid, dp_vars)
    g_flow = tape.gradient(l_flow, fl_vars)
    assert any(np.count_nonzero(g.numpy()) > 0 for g in g_rigid)
    assert any(np.count_nonzero(g.numpy()) > 0 for g in g_flow)
    del tape


# ------------------------------------------------------------------ interface ----

def test_factory_and_interface():
    for name in ("baseline", "glnet_min"):
        s = apportion.make_strategy(name)
        assert s.quantile_layer is None and s.trainable_variables == []
        assert s.checkpoint_items() == {}
        s.start_epoch(), s.end_epoch()
    c = apportion.make_strategy("coopnet", eta=0.1, zeta=0.2, tail_probability=0.05,
                                sample_size=64, seed=3)
    assert c.quantile_layer.probabilities == {
        "delta": [0.05, 0.4, 0.6, 0.95], "delta_flow_x": [0.3, 0.7],
        "delta_flow_y": [0.3, 0.7]}
    assert c.quantile_layer.seed == 3 and c.trainable_variables == []
    assert set(c.checkpoint_items()) == {"quantiles"}
    e11 = apportion.make_strategy("coopnet", flow_weighting="eq11")
    assert e11.quantile_layer.probabilities["delta"] == [0.35, 0.65]
    with pytest.raises(ValueError):
        apportion.make_strategy("cc")
    with pytest.raises(ValueError):
        apportion.make_strategy("coopnet", flow_weighting="head")
    with pytest.raises(TypeError):
        apportion.make_strategy("baseline", eta=0.1)


def test_epoch_protocol_in_tf_function():
    f = _fields(8)
    strategy = apportion.make_strategy("coopnet", sample_size=64)
    layer = strategy.quantile_layer

    @tf.function
    def step(inputs, use, update):
        app = strategy(inputs, use, update)
        return app.rigid_mask, app.stats, app.histograms

    inputs = _inputs(f)
    strategy.start_epoch()
    step(inputs, tf.constant(False), tf.constant(False))
    assert float(layer.count.numpy().max()) == 0.0  # no update requested
    _, _, hist = step(inputs, tf.constant(False), tf.constant(True))
    assert float(layer.count.numpy().max()) == 64.0
    assert hist["delta"].shape == (64,)
    observed = set(np.round(f["delta"][f["non_occluded"] > 0.5], 5))
    assert set(np.round(hist["delta"].numpy(), 5)) <= observed  # only non-occluded values
    strategy.end_epoch()
    mask, stats, _ = step(inputs, tf.constant(True), tf.constant(True))
    assert float(stats["apportion/quantiles_in_use"]) == 1.0
    assert 0.0 < float(tf.reduce_mean(mask)) < 1.0
    q35, q65 = float(layer.current("delta", 0.35)), float(layer.current("delta", 0.65))
    assert q35 < q65
    strategy.start_epoch()
    assert float(layer.count.numpy().max()) == 0.0
    assert float(layer.current("delta", 0.35)) == q35  # frozen values survive the reset


def test_coopnet_under_mirrored_strategy():
    dist = conftest.two_cpu_mirrored_strategy()
    with dist.scope():
        strategy = apportion.make_strategy("coopnet", sample_size=64)
    fields = [_fields(10 + r) for r in range(2)]

    @tf.function
    def step(use, update):
        def fn():
            ctx = tf.distribute.get_replica_context()
            inp = tf.nest.map_structure(
                lambda a, b: tf.where(ctx.replica_id_in_sync_group == 0, a, b),
                _inputs(fields[0]), _inputs(fields[1]))
            app = strategy(inp, use, update)
            return tf.reduce_mean(app.rigid_mask)
        return dist.run(fn)

    step(tf.constant(False), tf.constant(True))
    strategy.end_epoch()
    out = step(tf.constant(True), tf.constant(True))
    assert all(0.0 < float(v) < 1.0 for v in dist.experimental_local_results(out))
    layer = strategy.quantile_layer
    assert layer.count.numpy().max() == 2 * 64  # both replicas' samples, 32 each, twice
    for var in layer.weights:
        copies = [np.array(c) for c in dist.experimental_local_results(var.value)]
        np.testing.assert_array_equal(copies[0], copies[1], err_msg=var.path)


# ------------------------------------------------------------ synthetic world ----
# V against the synthetic world's moving masks; the metric (and a larger run for the notes)
# lives in benchmarks/apportion_selection.py.

def test_v_excludes_moving_pixels_on_the_synthetic_world():
    result = apportion_selection.synthetic_selection_metrics()
    apportion_selection.print_metrics(result)
    assert result["moving_fraction"] > 0.01  # the world has moving objects to exclude
    v = result["V"]
    assert v["precision"] > 0.995 > 1.0 - result["moving_fraction"]
    assert v["moving_admitted"] < 0.02  # V keeps < 2 % of the moving pixels
    assert v["recall"] > 0.05  # and still selects static pixels
    assert result["V_zeta"]["moving_admitted"] < result["V_eta"]["moving_admitted"] + 0.05
