"""The two-tape train step on the synthetic world at 64x64 (eager: no tracing cost).

* gradient routing: L_δ gives exactly zero gradient to depth/pose, L_θ,α exactly zero to
  the flow net — with every auxiliary term on and CoopNet's quantile masks active;
* a non-finite batch is skipped: weights, BatchNorm statistics and optimizer state are
  bit-identical to before, the counter is incremented; the next finite step updates.
"""
import numpy as np
import pytest
import tensorflow as tf

import conftest

from coopnet_tf import models, specs
from coopnet_tf.losses import apportion
from coopnet_tf.training import optimizers
from coopnet_tf.training import step as step_lib
from coopnet_tf.training.step import CoopTrainStep, LossWeights, Phase

SIZE = 64
BATCH = 2
SEED = tf.constant([0, 0], tf.int64)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return conftest.tiny_world(tmp_path_factory, SIZE, frames_per_sequence=6)


@pytest.fixture(scope="module")
def batch(tiny_dataset):
    from coopnet_tf.data import pipeline, synthetic
    ds = pipeline.make_dataset(synthetic.file_pattern(tiny_dataset, "train"), batch_size=BATCH,
                               height=SIZE, width=SIZE, training=True, seed=0,
                               deterministic=True)
    out = next(iter(ds))
    return {k: out[k] for k in (specs.KEY_FRAMES, specs.KEY_FRAMES_AUG, specs.KEY_INTRINSICS)}


def build_step(strategy_name="coopnet", residual=False, weights=LossWeights(),
               options=step_lib.StepOptions()):
    """Small networks from the project's factories (ResNet10 encoders, thin decoders)."""
    tf.keras.utils.set_random_seed(1)
    depth = models.build_depth_net(height=SIZE, width=SIZE, num_layers=10,
                                   decoder_channels=(4, 8, 8, 16, 16))
    pose = models.build_pose_net(height=SIZE, width=SIZE, num_layers=10)
    flow = models.build_flow_net(height=SIZE, width=SIZE, num_layers=10, residual=residual,
                                 decoder_channels=(4, 8, 8, 16, 16))
    strategy_options = {"sample_size": 256} if strategy_name == "coopnet" else {}
    step = CoopTrainStep(depth, pose, flow, optimizers.FusedAdam(1e-4),
                         optimizers.FusedAdam(1e-4),
                         apportion.make_strategy(strategy_name, **strategy_options),
                         weights=weights, options=options, global_batch_size=BATCH)
    step.build()
    return step


def _all_state(step):
    """Every variable the step may touch, as numpy arrays."""
    variables = []
    for net in (step.depth_net, step.pose_net, step.flow_net):
        variables += net.weights
    variables += step.depth_pose_optimizer.variables + step.flow_optimizer.variables
    variables += step.apportionment.quantile_layer.non_trainable_variables
    return [np.array(v.numpy()) for v in variables]


@pytest.mark.parametrize("residual", [False, True])
def test_gradient_routing_is_exact(batch, residual):
    step = build_step(residual=residual)
    # one epoch of quantile estimation, then frozen: the masks V and weights w are active.
    step.compute_losses(batch, Phase(burn_in=True, update_quantiles=True), SEED)
    step.apportionment.end_epoch()
    phase = Phase(burn_in=False, update_quantiles=True)
    losses, app, _ = step.compute_losses(batch, phase, SEED, update_quantiles=False)
    assert float(app.stats["apportion/quantiles_in_use"]) == 1.0
    assert 0.0 < float(app.stats["apportion/fraction_V"]) < 1.0
    for key in ("gc", "ep_theta_alpha", "ep_delta", "var", "fwd_bwd", "smooth_depth"):
        assert key in losses and np.isfinite(float(losses[key])), key

    grads = step_lib.gradient_routing(step, batch, phase, SEED)
    for key in ("delta_wrt_depth_pose", "theta_alpha_wrt_flow"):
        assert all(not np.any(g.numpy()) for g in grads[key]), f"{key} is not exactly zero"
    for key in ("theta_alpha_wrt_depth_pose", "delta_wrt_flow"):
        nonzero = sum(bool(np.any(g.numpy())) for g in grads[key])
        assert nonzero > 0.9 * len(grads[key]), f"{key}: only {nonzero}/{len(grads[key])} nonzero"


def test_nonfinite_batch_is_skipped_and_next_step_updates(batch):
    step = build_step()
    phase = Phase(burn_in=False, update_quantiles=True)
    before = _all_state(step)
    bad = dict(batch)
    frames = batch[specs.KEY_FRAMES].numpy().copy()
    frames[0, specs.TARGET_INDEX, 10, 10, 0] = np.nan
    bad[specs.KEY_FRAMES] = tf.constant(frames)
    bad[specs.KEY_FRAMES_AUG] = tf.constant(frames)

    out = step.train_step(bad, phase, SEED)
    assert float(out["train/nonfinite"]) == 1.0
    assert int(step.nonfinite_steps.numpy()) == 1
    after = _all_state(step)
    assert len(before) == len(after)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert int(step.depth_pose_optimizer.iterations.numpy()) == 0
    assert int(step.flow_optimizer.iterations.numpy()) == 0

    out = step.train_step(batch, phase, tf.constant([0, 1], tf.int64))
    assert float(out["train/nonfinite"]) == 0.0
    assert int(step.nonfinite_steps.numpy()) == 1
    for key in ("losses/total_theta_alpha", "losses/total_delta"):
        assert np.isfinite(float(out[key])) and float(out[key]) > 0.0
    changed = [not np.array_equal(a, b) for a, b in zip(before, _all_state(step))]
    assert sum(changed) > 0.9 * len(changed)
    assert int(step.depth_pose_optimizer.iterations.numpy()) == 1
    assert int(step.flow_optimizer.iterations.numpy()) == 1


def test_burn_in_uses_monodepth2_loss_and_no_consistency_terms(batch):
    step = build_step(strategy_name="glnet_min")
    losses, app, _ = step.compute_losses(batch, Phase(burn_in=True, update_quantiles=False), SEED)
    # burn-in: the baseline strategy (every pixel), L_gc / L_ep / L_var off.
    assert float(app.stats["apportion/fraction_rigid"]) == 1.0
    assert app.rigid_normalisation == "masked"
    for key in ("gc", "var", "ep_theta_alpha", "ep_delta"):
        assert key not in losses
    losses, app, _ = step.compute_losses(batch, Phase(burn_in=False, update_quantiles=False), SEED)
    assert app.rigid_normalisation == "all"            # GLNet's Ψ after the burn-in
    assert {"gc", "var", "ep_theta_alpha", "ep_delta"} <= set(losses)


def test_zero_weight_switches_terms_off(batch):
    step = build_step(weights=LossWeights(gc=0.0, fb=0.0, smooth=0.0, ep=0.0, var=0.0))
    losses, _, _ = step.compute_losses(batch, Phase(burn_in=False, update_quantiles=False), SEED)
    assert set(losses) == {"photo_theta_alpha", "photo_delta", "total_theta_alpha",
                           "total_delta"}
    np.testing.assert_allclose(float(losses["total_theta_alpha"]),
                               float(losses["photo_theta_alpha"]), rtol=1e-6)


@pytest.mark.parametrize("automask", [True, False])
def test_automask_option_matches_numpy_min_reprojection(batch, automask):
    """Burn-in L_θ,α = mean over scales of the per-pixel minimum over sources of Φ_D,
    also over the un-warped Φ(I_t, I_s) with auto-masking (identity terms carry the 1e-5
    tie-break noise, hence the tolerance); `burn_in_terms` switches L_var on in burn-in."""
    step = build_step(strategy_name="baseline", options=step_lib.StepOptions(
        automask=automask, burn_in_terms=("var",)))
    losses, _, fwd = step.compute_losses(batch, Phase(burn_in=True, update_quantiles=False),
                                         SEED, training=False)
    identity = np.min(fwd["phi_identity"].numpy(), axis=1)
    expected = []
    for phi in fwd["phi_rigid"]:
        per_pixel = np.min(phi.numpy(), axis=1)
        if automask:
            per_pixel = np.minimum(per_pixel, identity)
        expected.append(per_pixel.mean())
    np.testing.assert_allclose(float(losses["photo_theta_alpha"]), np.mean(expected),
                               rtol=0, atol=1e-4)
    # the two readings differ on this batch (the check above can tell them apart).
    plain = np.mean([np.min(p.numpy(), axis=1).mean() for p in fwd["phi_rigid"]])
    masked = np.mean([np.minimum(np.min(p.numpy(), axis=1), identity).mean()
                      for p in fwd["phi_rigid"]])
    assert plain - masked > 1e-3
    assert "var" in losses and "gc" not in losses
