"""P² quantile estimator: exactness vs a reference, accuracy vs np.quantile, layer contract
(config, weights, checkpoint, determinism, freeze/reset, masking, XLA, two replicas)."""
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import conftest

from coopnet_tf.losses import quantile as q_lib
from coopnet_tf.losses.quantile import P2Quantiles
from coopnet_tf.losses.quantile import p2_quantiles

PROBS = [0.15, 0.25, 0.35, 0.5, 0.65, 0.75, 0.85]
SAMPLE = 256  # one sample size (and the default 8 estimators) -> few XLA compilations


def p2_reference(xs, p):
    """Textbook P² (Jain & Chlamtac 1985; docs/decisions.md C8) in pure Python, one probability."""
    buf, q, n, nd = [], None, None, None
    dn = [0.0, p / 2, p, (1 + p) / 2, 1.0]
    for x in xs:
        if q is None:
            buf.append(float(x))
            if len(buf) == 5:
                q, n, nd = sorted(buf), [1, 2, 3, 4, 5], [1, 1 + 2 * p, 1 + 4 * p, 3 + 2 * p, 5]
            continue
        if x < q[0]:
            q[0], k = x, 0
        elif x < q[1]:
            k = 0
        elif x < q[2]:
            k = 1
        elif x < q[3]:
            k = 2
        elif x <= q[4]:
            k = 3
        else:
            q[4], k = x, 3
        for i in range(k + 1, 5):
            n[i] += 1
        for i in range(5):
            nd[i] += dn[i]
        for i in (1, 2, 3):
            d = nd[i] - n[i]
            if (d >= 1 and n[i + 1] - n[i] > 1) or (d <= -1 and n[i - 1] - n[i] < -1):
                d = 1 if d > 0 else -1
                qp = q[i] + d / (n[i + 1] - n[i - 1]) * (
                    (n[i] - n[i - 1] + d) * (q[i + 1] - q[i]) / (n[i + 1] - n[i])
                    + (n[i + 1] - n[i] - d) * (q[i] - q[i - 1]) / (n[i] - n[i - 1]))
                if q[i - 1] < qp < q[i + 1]:
                    q[i] = qp
                else:
                    q[i] = q[i] + d * (q[i + d] - q[i]) / (n[i + d] - n[i])
                n[i] += d
    if q is None:
        return float(np.quantile(buf, p)) if buf else float("nan")
    return q[2]


def _mixture(rng, n, weights, means, stds):
    c = rng.choice(len(weights), size=n, p=weights)
    return rng.normal(np.asarray(means)[c], np.asarray(stds)[c])


# ------------------------------------------------------------------ 1-D API ----

def test_p2_matches_textbook_reference_exactly():
    x = np.random.default_rng(0).standard_t(3, size=1000)
    for jit in (True, False):
        got = p2_quantiles(x, PROBS, jit_compile=jit)
        want = [p2_reference(x, p) for p in PROBS]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 6, 9])
def test_short_streams(n):
    """Exact sample quantile before 5 observations; P² (reference) from 5 on."""
    x = np.random.default_rng(n).normal(size=n)
    got = p2_quantiles(x, PROBS, jit_compile=False)
    if n == 0:
        assert np.all(np.isnan(got))
    elif n < 5:
        np.testing.assert_allclose(got, np.quantile(x, PROBS), atol=1e-12)
    else:
        np.testing.assert_allclose(got, [p2_reference(x, p) for p in PROBS], atol=1e-12)


def _streams(rng, n=100_000):
    return {
        "normal": rng.normal(size=n),
        # Fig. 1 shape: a central (rigid) mode and two overlapping side (moving) modes.
        "bimodal_fig1": _mixture(rng, n, [0.8, 0.1, 0.1], [0.0, -2.5, 3.0], [1.0, 1.0, 1.2]),
        "student_t3": rng.standard_t(3, size=n),
    }


@pytest.mark.parametrize("seed", [0, 1])
def test_accuracy_long_streams(seed):
    """|P² − np.quantile| <= 0.02 standard deviations on 10^5 values."""
    for name, x in _streams(np.random.default_rng(seed)).items():
        err = (p2_quantiles(x, PROBS) - np.quantile(x, PROBS)) / np.std(x)
        assert np.max(np.abs(err)) <= 0.02, (name, err)


def test_accuracy_separated_modes_in_rank():
    """Side modes separated from the centre by an almost empty gap put q0.15/q0.85 where the
    density is ~0: the *value* is ill-conditioned there (P² is off by up to ~0.04 std), but
    the estimate's rank stays within 0.005 of p."""
    rng = np.random.default_rng(3)
    x = _mixture(rng, 100_000, [0.7, 0.15, 0.15], [0.0, -4.0, 4.0], [1.0, 0.7, 0.7])
    est = p2_quantiles(x, PROBS)
    rank = np.searchsorted(np.sort(x), est) / x.size
    assert np.max(np.abs(rank - np.asarray(PROBS))) <= 0.005


# ----------------------------------------------------------------- the layer ----

def _batch(rng, shape=(2, 2, 16, 20, 1), occluded_fraction=0.2, scale=1.0, shift=0.0):
    values = {
        "delta": tf.constant(rng.normal(shift, scale, size=shape), tf.float32),
        "delta_flow_x": tf.constant(rng.standard_t(3, size=shape), tf.float32),
        "delta_flow_y": tf.constant(rng.uniform(-1, 1, size=shape), tf.float32),
    }
    valid = tf.constant(rng.random(shape) > occluded_fraction)
    return values, valid


def _state(layer):
    return {v.path.split("/")[-1]: np.array(v.numpy()) for v in layer.weights}


def test_layer_config_and_weights():
    layer = P2Quantiles(sample_size=128, seed=3)
    assert len(layer.trainable_weights) == 0
    assert len(layer.non_trainable_weights) == 7
    assert layer.num_estimators == 8
    config = json.loads(json.dumps(layer.get_config()))
    clone = P2Quantiles.from_config(config)
    assert clone.probabilities == layer.probabilities
    assert (clone.sample_size, clone.seed, clone.jit_compile) == (128, 3, True)
    assert clone.probabilities["delta"] == [0.15, 0.35, 0.65, 0.85]


def test_layer_equals_1d_api_on_its_samples():
    """The layer's update is p2_absorb on the drawn sample, in order."""
    rng = np.random.default_rng(0)
    layer = P2Quantiles(sample_size=SAMPLE, seed=1)
    stream = []
    for _ in range(3):
        values, valid = _batch(rng)
        samples, active = layer.update(values, valid)
        stream.append(samples["delta"].numpy()[active.numpy()])
    stream = np.concatenate(stream)
    assert stream.size == 3 * SAMPLE and layer.count.numpy()[0] == 3 * SAMPLE
    probs = layer.probabilities["delta"]
    np.testing.assert_allclose(layer.running_estimates().numpy()[:len(probs)],
                               p2_quantiles(stream, probs), atol=1e-6)


def test_only_valid_values_are_observed():
    layer = P2Quantiles({"delta": [0.5]}, sample_size=64, seed=0, jit_compile=False)
    values = np.full([4, 50], 1e6, np.float32)
    values[0, :10] = np.arange(10)  # 10 valid entries < sample_size
    valid = np.zeros([4, 50], bool)
    valid[0, :10] = True
    samples, active = layer.update({"delta": tf.constant(values)}, tf.constant(valid))
    assert int(layer.count.numpy()[0]) == 10
    assert sorted(samples["delta"].numpy()[active.numpy()]) == list(range(10))
    assert 0.0 <= float(layer.running("delta", 0.5)) <= 9.0
    hist = q_lib.fill_inactive(samples["delta"], active).numpy()
    assert hist.shape == (64,) and set(hist) <= set(range(10))


def test_exact_quantile_before_five_observations():
    layer = P2Quantiles({"delta": [0.25, 0.85]}, sample_size=8, seed=0, jit_compile=False)
    vals = np.array([[3.0, -1.0, 7.0, 100.0]], np.float32)
    valid = np.array([[True, True, True, False]])
    layer.update({"delta": tf.constant(vals)}, tf.constant(valid))
    np.testing.assert_allclose(layer.running_estimates().numpy(),
                               np.quantile([3.0, -1.0, 7.0], [0.25, 0.85]), atol=1e-6)


def test_determinism_and_seed():
    def run(seed):
        rng = np.random.default_rng(0)
        layer = P2Quantiles(sample_size=SAMPLE, seed=seed, jit_compile=False)
        for _ in range(4):
            layer.update(*_batch(rng))
        return _state(layer)

    a, b, c = run(5), run(5), run(6)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["heights"], c["heights"])


def test_checkpoint_round_trip_mid_stream(tmp_path):
    rng = np.random.default_rng(1)
    batches = [_batch(rng) for _ in range(6)]
    layer = P2Quantiles(sample_size=SAMPLE, seed=2, jit_compile=False)
    for b in batches[:3]:
        layer.update(*b)
    path = tf.train.Checkpoint(quantiles=layer).save(str(tmp_path / "ckpt"))
    for b in batches[3:]:
        layer.update(*b)
    restored = P2Quantiles(sample_size=SAMPLE, seed=2, jit_compile=False)
    tf.train.Checkpoint(quantiles=restored).restore(path).assert_consumed()
    assert int(restored.step_counter.numpy()) == 3
    for b in batches[3:]:
        restored.update(*b)
    sa, sb = _state(layer), _state(restored)
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


def test_freeze_and_reset():
    rng = np.random.default_rng(2)
    layer = P2Quantiles(sample_size=SAMPLE, seed=0, jit_compile=False)
    assert np.all(np.isnan(layer.current_values.numpy()))
    assert not bool(layer.current_is_valid("delta", 0.35))
    for _ in range(3):
        layer.update(*_batch(rng, scale=1.0))
    running = layer.running_estimates().numpy()
    assert np.all(np.isnan(layer.current_values.numpy()))  # not frozen yet
    layer.freeze()
    np.testing.assert_array_equal(layer.current_values.numpy(), running)
    assert bool(layer.current_is_valid("delta", 0.35))
    layer.reset()
    assert np.all(layer.count.numpy() == 0)
    assert np.all(np.isnan(layer.running_estimates().numpy()))
    np.testing.assert_array_equal(layer.current_values.numpy(), running)  # kept
    layer.freeze()  # nothing seen this epoch: previous values kept
    np.testing.assert_array_equal(layer.current_values.numpy(), running)
    # A new epoch with shifted data: running follows the new data, current lags an epoch.
    for _ in range(3):
        layer.update(*_batch(rng, scale=1.0, shift=5.0))
    assert float(layer.running("delta", 0.35)) > 4.0
    assert float(layer.current("delta", 0.35)) < 1.0
    layer.freeze()
    assert float(layer.current("delta", 0.35)) > 4.0


def test_update_in_tf_function_and_xla_matches_eager():
    rng = np.random.default_rng(4)
    batches = [_batch(rng) for _ in range(3)]
    eager = P2Quantiles(sample_size=SAMPLE, seed=9)
    graph = P2Quantiles(sample_size=SAMPLE, seed=9, jit_compile=False)
    xla = P2Quantiles(sample_size=SAMPLE, seed=9)
    step_graph = tf.function(lambda v, m: graph.update(v, m))
    step_xla = tf.function(lambda v, m: xla.update(v, m), jit_compile=True)
    for b in batches:
        eager.update(*b)
        step_graph(*b)
        step_xla(*b)
    se, sg, sx = _state(eager), _state(graph), _state(xla)
    for k in se:  # same draws; the float64 loop may differ in the last ulp between
        # XLA and the TF kernels (fusion), nowhere else
        np.testing.assert_allclose(se[k], sg[k], rtol=1e-12, atol=1e-12, err_msg=k)
        np.testing.assert_allclose(se[k], sx[k], rtol=1e-12, atol=1e-12, err_msg=k)
    np.testing.assert_array_equal(se["step_counter"], sx["step_counter"])


def test_two_replicas_stay_identical():
    strategy = conftest.two_cpu_mirrored_strategy()
    with strategy.scope():
        layer = P2Quantiles(sample_size=SAMPLE, seed=4)
    rng = np.random.default_rng(5)
    per_replica = [[_batch(rng, shift=float(r)) for r in range(2)] for _ in range(4)]

    @tf.function
    def step(values, valid):
        return strategy.run(layer.update, args=(values, valid))

    gathered = []
    for batches in per_replica:
        values = strategy.experimental_distribute_values_from_function(
            lambda ctx, b=batches: b[ctx.replica_id_in_sync_group][0])
        valid = strategy.experimental_distribute_values_from_function(
            lambda ctx, b=batches: b[ctx.replica_id_in_sync_group][1])
        samples, active = step(values, valid)
        s_loc = strategy.experimental_local_results(samples["delta"])
        a_loc = strategy.experimental_local_results(active)
        gathered.append(np.concatenate([s.numpy()[a.numpy()] for s, a in zip(s_loc, a_loc)]))
        # Replicas drew different pixels.
        assert not np.array_equal(s_loc[0].numpy(), s_loc[1].numpy())
    for var in layer.weights:
        copies = [np.array(c) for c in strategy.experimental_local_results(var.value)]
        np.testing.assert_array_equal(copies[0], copies[1], err_msg=var.path)
    # SAMPLE / 2 per replica per step, both replicas' samples absorbed, in order.
    assert layer.count.numpy()[0] == 4 * SAMPLE
    stream = np.concatenate(gathered)
    idx = layer.estimator_index("delta", 0.35)
    want = p2_quantiles(stream, [0.35])[0]
    np.testing.assert_allclose(layer.running_estimates().numpy()[idx], want, atol=1e-6)
    # Epoch hooks in cross-replica context keep the copies identical.
    layer.freeze()
    layer.reset()
    for var in layer.weights:
        copies = [np.array(c) for c in strategy.experimental_local_results(var.value)]
        np.testing.assert_array_equal(copies[0], copies[1], err_msg=var.path)
    assert bool(layer.current_is_valid("delta", 0.35))


def test_keras_call_runs_update():
    layer = P2Quantiles({"a": [0.5]}, sample_size=16, jit_compile=False)
    out = layer({"a": tf.range(10, dtype=tf.float32)})
    assert out.shape == (1,)
    assert float(out[0]) == pytest.approx(float(np.median(np.arange(10))), abs=1.0)
    assert isinstance(layer, keras.layers.Layer)
