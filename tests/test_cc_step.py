"""Competitive Collaboration in the train step (64x64 synthetic world, eager).

* competition stage: depth, pose and flow change; the moderator M (weights, BatchNorm
  statistics, optimizer) does not;
* collaboration stage: only M changes (the competitors' weights, BatchNorm statistics
  and optimizers are bit-identical);
* burn-in ("basic" phase): the baseline apportionment, M untouched;
* the masks the competitors see are stop-gradient: their objectives give M no gradient.
"""
import numpy as np
import pytest
import tensorflow as tf

import conftest

from coopnet_tf import models, specs
from coopnet_tf.losses import competitive_strategy as cs
from coopnet_tf.training import optimizers
from coopnet_tf.training.step import CoopTrainStep, LossWeights, Phase

SIZE = 64
BATCH = 2
SEED = tf.constant([0, 0], tf.int64)
THIN = (4, 8, 8, 16, 16)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return conftest.tiny_world(tmp_path_factory, SIZE, frames_per_sequence=6)


@pytest.fixture(scope="module")
def batch(world):
    from coopnet_tf.data import pipeline, synthetic
    ds = pipeline.make_dataset(synthetic.file_pattern(world, "train"), batch_size=BATCH,
                               height=SIZE, width=SIZE, training=True, seed=0,
                               deterministic=True)
    out = next(iter(ds))
    return {k: out[k] for k in (specs.KEY_FRAMES, specs.KEY_FRAMES_AUG, specs.KEY_INTRINSICS)}


def build_step(**strategy_options):
    tf.keras.utils.set_random_seed(1)
    depth = models.build_depth_net(height=SIZE, width=SIZE, num_layers=10, decoder_channels=THIN)
    pose = models.build_pose_net(height=SIZE, width=SIZE, num_layers=10)
    flow = models.build_flow_net(height=SIZE, width=SIZE, num_layers=10, decoder_channels=THIN)
    moderator = models.build_moderator_net(height=None, width=None, num_layers=10,
                                           decoder_channels=THIN)
    strategy = cs.CompetitiveCollaborationStrategy(
        moderator, optimizers.FusedAdam(1e-3), **strategy_options)
    step = CoopTrainStep(depth, pose, flow, optimizers.FusedAdam(1e-3),
                         optimizers.FusedAdam(1e-3), strategy,
                         weights=LossWeights(gc=0.0, ep=0.0, var=0.0), global_batch_size=BATCH)
    step.build()
    return step


def _state(step):
    """(competitor state, moderator state): every variable, numpy copies."""
    comp = []
    for net in (step.depth_net, step.pose_net, step.flow_net):
        comp += net.weights
    comp += step.depth_pose_optimizer.variables + step.flow_optimizer.variables
    mod = step.apportionment.moderator.weights + step.strategy_optimizer.variables
    snap = lambda vs: [np.array(v.numpy()) for v in vs]  # noqa: E731
    return snap(comp), snap(mod)


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def _changed_fraction(a, b):
    return np.mean([not np.array_equal(x, y) for x, y in zip(a, b)])


@pytest.fixture(scope="module")
def step():
    return build_step()


def test_competition_step_leaves_the_moderator_alone(step, batch):
    comp0, mod0 = _state(step)
    out = step.train_step(batch, Phase(burn_in=False, stage=cs.COMPETITION), SEED)
    comp1, mod1 = _state(step)
    assert float(out["train/nonfinite"]) == 0.0
    assert _same(mod0, mod1)
    assert _changed_fraction(comp0, comp1) > 0.5
    assert "losses/total_strategy" not in out


def test_collaboration_step_updates_only_the_moderator(step, batch):
    comp0, mod0 = _state(step)
    out = step.train_step(batch, Phase(burn_in=False, stage=cs.COLLABORATION), SEED)
    comp1, mod1 = _state(step)
    assert float(out["train/nonfinite"]) == 0.0
    assert _same(comp0, comp1)
    assert _changed_fraction(mod0, mod1) > 0.5
    for key in ("cc_rigid", "cc_flow", "cc_mask", "cc_consensus", "cc_smooth",
                "total_strategy"):
        assert np.isfinite(float(out[f"losses/{key}"])), key


def test_burn_in_is_the_basic_phase(step, batch):
    comp0, mod0 = _state(step)
    losses, app, _ = step.compute_losses(batch, Phase(burn_in=True, stage=cs.COLLABORATION),
                                         SEED)
    assert app.extras is None and "total_strategy" not in losses   # baseline apportionment
    step.train_step(batch, Phase(burn_in=True, stage=cs.COLLABORATION), SEED)
    comp1, mod1 = _state(step)
    assert _same(mod0, mod1) and _changed_fraction(comp0, comp1) > 0.5


def test_competitors_see_stop_gradient_masks(step, batch):
    mod_vars = [v.value for v in step.apportionment.moderator.trainable_variables]
    with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
        tape.watch(mod_vars)
        losses, app, _ = step.compute_losses(
            batch, Phase(burn_in=False, stage=cs.COMPETITION), SEED, training=False)
    for key in ("total_theta_alpha", "total_delta"):
        assert all(g is None for g in tape.gradient(losses[key], mod_vars)), key
    # the apportionment is CC's: soft masks in (0, 1), flow weights on 1 − m
    m = app.rigid_mask.numpy()
    assert app.rigid_normalisation == "all" and np.all((m > 0) & (m < 1))
    np.testing.assert_allclose(
        app.flow_pixel_weight.numpy(), (1 - m) * step.compute_losses(
            batch, Phase(burn_in=False, stage=cs.COMPETITION), SEED,
            training=False)[2]["non_occluded"].numpy(), rtol=1e-6)
    del tape


def test_stages_and_bad_stage():
    strategy = cs.CompetitiveCollaborationStrategy(None, None, period=3, period_unit="steps")
    assert strategy.stages == ((cs.COLLABORATION, cs.COMPETITION), (3, 3), "steps", True)
    with pytest.raises(ValueError, match="unknown stage"):
        strategy.trained_groups("")
    with pytest.raises(ValueError, match="period_unit"):
        cs.CompetitiveCollaborationStrategy(None, None, period_unit="iterations")


def test_cc_gin_builds_the_strategy():
    import gin
    from coopnet_tf import train
    from coopnet_tf.training import factories as configurables
    train.parse_gin(["cc.gin"], [])
    strategy = configurables.make_apportionment()
    assert isinstance(strategy, cs.CompetitiveCollaborationStrategy)
    assert strategy.stages == ((cs.COLLABORATION, cs.COMPETITION), (5, 5), "epochs", True)
    assert strategy.flow_threshold == 0.001
    assert strategy.moderator.get_layer("encoder").get_layer("conv1").kernel.shape[2] == 9
    assert float(strategy.optimizer.learning_rate) == pytest.approx(1e-4)
    assert gin.query_parameter("train_and_evaluate.burn_in_epochs") % (2 * strategy.period) == 0
    gin.clear_config()
    gin.parse_config("make_apportionment.name = 'cc'")
    assert isinstance(configurables.make_apportionment(), cs.CompetitiveCollaborationStrategy)


def test_motion_export_signature(step, batch, tmp_path):
    """The exported ``motion`` model (CC Eqs. 14-15) equals the direct computation."""
    from coopnet_tf import export, geometry
    module = export.MotionServing(step.apportionment.moderator, step.depth_net, step.pose_net,
                                  step.flow_net, SIZE, SIZE, flow_threshold=0.5)
    path = export.save_serving_module(module, str(tmp_path / "motion" / "1"))
    serve = tf.saved_model.load(path).signatures["serving_default"]
    frames = batch[specs.KEY_FRAMES]
    K = batch[specs.KEY_INTRINSICS]
    out = serve(image_prev=frames[:, 0], image=frames[:, 1], image_next=frames[:, 2],
                intrinsics=K)
    m = step.apportionment.moderator(cs.snippet(frames), training=False)[0].numpy()
    np.testing.assert_allclose(out["m_plus"].numpy(), m[..., 1:2], atol=1e-5)
    np.testing.assert_allclose(out["m_minus"].numpy(), m[..., 0:1], atol=1e-5)
    _, depth = models.disp_to_depth(step.depth_net(frames[:, 1], training=False)[0])
    vec = step.pose_net(tf.concat([frames[:, 1], frames[:, 2]], -1), training=False)
    nu = geometry.rigid_flow(depth, geometry.pose_vector_to_matrix(vec, "axis_angle"), K).numpy()
    u = step.flow_net(tf.concat([frames[:, 1], frames[:, 2]], -1), training=False)[0].numpy()
    dist = np.linalg.norm(nu - u, axis=-1, keepdims=True)
    masknet = m[..., 1:2] * m[..., 0:1] > 0.5
    consensus = dist < 0.5
    stable = np.abs(dist - 0.5) > 1e-3   # float32 noise at the threshold
    np.testing.assert_array_equal(out["masknet"].numpy(), masknet)
    np.testing.assert_array_equal(out["consensus"].numpy()[stable], consensus[stable])
    joint = out["joint"].numpy() > 0.5
    np.testing.assert_array_equal(joint[stable], (masknet | consensus)[stable])
    np.testing.assert_allclose(out["composite_flow"].numpy(),
                               np.where(joint, nu, u), atol=1e-3)


def test_diagnostics_images_change_no_state(step, world):
    """The TensorBoard images (m_s beside the GT moving mask) come from a forward that
    leaves every variable -- weights, BatchNorm statistics, optimizers -- unchanged."""
    from coopnet_tf.data import pipeline, synthetic
    gt_batch = next(iter(pipeline.make_dataset(
        synthetic.file_pattern(world, "val"), batch_size=BATCH, height=SIZE, width=SIZE,
        training=False, with_ground_truth=True, seed=0, deterministic=True)))
    comp0, mod0 = _state(step)
    _, images, _ = step.diagnostics(gt_batch, Phase(burn_in=False, stage=cs.COLLABORATION),
                                    SEED)
    comp1, mod1 = _state(step)
    assert _same(comp0, comp1) and _same(mod0, mod1)
    m_s, gt = images["moderator_mask"].numpy(), images["gt_moving_mask"].numpy()
    assert m_s.shape == gt.shape == (BATCH, SIZE, SIZE, 1)
    assert 0.0 <= m_s.min() and m_s.max() <= 1.0
    expected = gt_batch[specs.KEY_GT_MOVING].numpy()[:, len(specs.SOURCE_INDICES) - 1]
    np.testing.assert_array_equal(gt, expected.astype(np.float32).reshape(gt.shape))
