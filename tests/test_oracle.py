"""The ORACLE research switches on the tiny synthetic world (64x64, eager).

* `ground_truth_flow_inputs`: with the ground-truth flow in place of the flow net's and a
  rigid side from the ground-truth depth and pose, CoopNet's V admits no moving pixel;
* the step hands exactly those inputs to the strategy when the switch is on (and the
  flow net's when it is off), while the losses still use the networks' own Φ maps;
* `oracle_static`: the rigid mask equals the ground-truth static mask (moving in no
  source), flow weights uniform on the non-occluded pixels;
* gradient routing stays exact with both oracles on;
* a clear error without ground truth (in the step and at training start).
"""
import numpy as np
import pytest
import tensorflow as tf

import conftest

from coopnet_tf import geometry, specs
from coopnet_tf.losses import apportion, photometric
from coopnet_tf.training import step as step_lib
from coopnet_tf.training.step import Phase, StepOptions

from test_train_step import build_step

SIZE = 64
SEED = tf.constant([0, 0], tf.int64)
GT_OPTIONS = StepOptions(ground_truth_apportionment_inputs=True)


@pytest.fixture(scope="module")
def gt_batch(tmp_path_factory):
    from coopnet_tf.data import pipeline, synthetic
    data = conftest.tiny_world(tmp_path_factory, SIZE, frames_per_sequence=7)
    ds = pipeline.make_dataset(synthetic.file_pattern(data, "train"), batch_size=4,
                               height=SIZE, width=SIZE, training=True, seed=0,
                               deterministic=True, with_ground_truth=True)
    batch = next(iter(ds))
    assert float(tf.reduce_mean(batch[specs.KEY_GT_MOVING])) > 0.01   # something moves
    return batch


def _no_gt(batch):
    return {k: v for k, v in batch.items() if not k.startswith("gt_")}


def test_v_with_ground_truth_flow_inputs_admits_no_moving_pixel(gt_batch):
    frames = tf.cast(gt_batch[specs.KEY_FRAMES], tf.float32)
    K = gt_batch[specs.KEY_INTRINSICS]
    target = frames[:, specs.TARGET_INDEX]
    phi_r, rigid = [], []
    for k, i in enumerate(specs.SOURCE_INDICES):     # the rigid side from GT depth + pose
        warped, _, flow = geometry.rigid_warp(frames[:, i], gt_batch[specs.KEY_GT_DEPTH],
                                              gt_batch[specs.KEY_GT_POSE][:, k], K)
        phi_r.append(photometric.photometric_error(target, warped))
        rigid.append(flow)
    phi_flow, flow = step_lib.ground_truth_flow_inputs(gt_batch)
    np.testing.assert_array_equal(flow.numpy(), gt_batch[specs.KEY_GT_FLOW].numpy())
    inputs = apportion.ApportionInputs(
        phi_rigid=tf.stack(phi_r, 1), phi_flow=phi_flow, phi_identity=None,
        rigid_flow=tf.stack(rigid, 1), optical_flow=flow,
        non_occluded=tf.ones_like(phi_flow))
    strategy = apportion.make_strategy("coopnet", sample_size=4096, jit_compile=False)
    strategy.start_epoch()
    strategy(inputs, use_quantiles=False, update_quantiles=True)
    strategy.end_epoch()
    v = strategy(inputs, use_quantiles=True).rigid_mask.numpy() > 0.5
    moving = gt_batch[specs.KEY_GT_MOVING].numpy() > 0.5
    assert v.any() and v.mean() > 0.05
    assert not (v & moving).any()
    # a flow partner that only learned the rigid flow in its place: V admits moving pixels
    rigid_only = inputs._replace(optical_flow=inputs.rigid_flow, phi_flow=inputs.phi_rigid)
    strategy.start_epoch()
    strategy(rigid_only, use_quantiles=False, update_quantiles=True)
    strategy.end_epoch()
    v_noisy = strategy(rigid_only, use_quantiles=True).rigid_mask.numpy() > 0.5
    assert (v_noisy & moving).any()


class _Spy(apportion.BaselineStrategy):
    """Baseline that keeps the inputs it was given."""

    def __call__(self, inputs, use_quantiles=False, update_quantiles=False):
        self.seen = inputs
        return super().__call__(inputs, use_quantiles, update_quantiles)


@pytest.mark.parametrize("ground_truth", [False, True])
def test_step_hands_ground_truth_flow_inputs_to_the_strategy(gt_batch, ground_truth):
    step = build_step("baseline", options=StepOptions(
        ground_truth_apportionment_inputs=ground_truth))
    spy = _Spy()
    step.apportionment = step.burn_in_apportionment = spy
    losses, _, fwd = step.compute_losses(gt_batch, Phase(burn_in=False), SEED)
    want_phi, want_flow = (step_lib.ground_truth_flow_inputs(gt_batch) if ground_truth
                           else (fwd["phi_flow"][0], fwd["optical_flow"]))
    np.testing.assert_array_equal(spy.seen.phi_flow.numpy(), want_phi.numpy())
    np.testing.assert_array_equal(spy.seen.optical_flow.numpy(), want_flow.numpy())
    np.testing.assert_array_equal(spy.seen.phi_rigid.numpy(), fwd["phi_rigid"][0].numpy())
    # the flow loss is still the flow NET's Φ_F under the (uniform) weights
    want = sum(float(photometric.flow_photometric_loss(p, apportion.uniform_weights(
        fwd["non_occluded"] > 0.5)[1])) for p in fwd["phi_flow"]) / len(fwd["phi_flow"])
    np.testing.assert_allclose(float(losses["photo_delta"]), want, rtol=1e-5)


def test_oracle_static_mask_is_the_ground_truth_static_mask(gt_batch):
    step = build_step("oracle_static")
    assert step.burn_in_apportionment.name == "baseline"     # no quantiles: burn-in as all
    _, app, fwd = step.compute_losses(gt_batch, Phase(burn_in=False), SEED)
    moving = gt_batch[specs.KEY_GT_MOVING].numpy() > 0.5     # [B, S, H, W, 1]
    static_all = ~moving.any(axis=1, keepdims=True)
    want = np.broadcast_to(static_all, moving.shape).astype(np.float32)
    np.testing.assert_array_equal(app.rigid_mask.numpy(), want)
    assert 0.0 < want.mean() < 1.0
    non_occ = fwd["non_occluded"].numpy() > 0.5
    np.testing.assert_array_equal(app.flow_pixel_weight.numpy(), non_occ.astype(np.float32))


@pytest.mark.parametrize("name", ["oracle_static", "coopnet"])
def test_gradient_routing_with_oracles(gt_batch, name):
    step = build_step(name, options=GT_OPTIONS)
    if name == "coopnet":       # quantiles from one estimation pass: V active
        step.compute_losses(gt_batch, Phase(burn_in=True, update_quantiles=True), SEED)
        step.apportionment.end_epoch()
    grads = step_lib.gradient_routing(step, gt_batch, Phase(burn_in=False), SEED)
    for key in ("delta_wrt_depth_pose", "theta_alpha_wrt_flow"):
        assert all(np.count_nonzero(g.numpy()) == 0 for g in grads[key]), key
    for key in ("theta_alpha_wrt_depth_pose", "delta_wrt_flow"):
        assert any(np.count_nonzero(g.numpy()) > 0 for g in grads[key]), key


def test_oracles_refuse_batches_without_ground_truth(gt_batch):
    with pytest.raises(ValueError, match="gt_flow"):
        build_step("baseline", options=GT_OPTIONS).compute_losses(
            _no_gt(gt_batch), Phase(burn_in=False), SEED)
    with pytest.raises(ValueError, match="gt_moving_mask"):
        build_step("oracle_static").compute_losses(_no_gt(gt_batch), Phase(burn_in=False), SEED)


def test_training_refuses_oracles_on_records_without_ground_truth(tmp_path, capsys):
    import types

    from coopnet_tf.training import loop
    path = str(tmp_path / "train-00000-of-00001.tfrecord")
    example = tf.train.Example(features=tf.train.Features(feature={
        specs.FEATURE_FRAME_ID: tf.train.Feature(int64_list=tf.train.Int64List(value=[1]))}))
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(example.SerializeToString())
    trainer = types.SimpleNamespace(
        needs_ground_truth=True,
        config=types.SimpleNamespace(train_files=path, val_files=None),
        apportionment=apportion.make_strategy("oracle_static"),
        step=types.SimpleNamespace(options=GT_OPTIONS))
    with pytest.raises(ValueError, match="oracle.ground_truth_apportionment_inputs") as err:
        loop.check_oracles(trainer)
    assert "make_apportionment.name = 'oracle_static'" in str(err.value)
    assert path in str(err.value)
    trainer.needs_ground_truth = False        # no oracle: nothing to check, no warning
    loop.check_oracles(trainer)
    assert "ORACLE" not in capsys.readouterr().out
