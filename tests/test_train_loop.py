"""`train_and_evaluate` end to end on a tiny synthetic world (64x64, batch 2).

* the `tf.function` loop (several steps per call) under the default strategy and under
  MirroredStrategy over the two logical CPU devices of conftest.py: losses finite, weights
  change, the operative gin config and checkpoints are written;
* kill-and-resume: N steps, stop, resume to M — the state equals that of an uninterrupted
  run to M (weights within float tolerance, P² quantile state and counters equal). These
  runs use `run_eagerly=True` (same code path minus `tf.function`: no tracing cost).
"""
import glob
import os

import gin
import numpy as np
import pytest
import tensorflow as tf

from coopnet_tf import train as train_main
from coopnet_tf.training import loop

SIZE = 64


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    from coopnet_tf.data import synthetic
    return synthetic.ensure_synthetic_dataset(
        cache_dir=tmp_path_factory.mktemp("synthetic"), progress=False, height=SIZE,
        width=SIZE, num_sequences=1, num_val_sequences=1, num_test_sequences=0,
        frames_per_sequence=7, num_objects=4, train_shards=1, eval_shards=1)


def configure(data_dir, *extra):
    """gin: the project's synthetic.gin shrunk to seconds (same factories, small widths)."""
    gin.clear_config()
    train_main.parse_gin(["synthetic.gin"], [
        f"train_and_evaluate.data_dir = '{data_dir}'",
        f"HEIGHT = {SIZE}",
        f"WIDTH = {SIZE}",
        "train_and_evaluate.batch_size = 2",
        "train_and_evaluate.eval_batch_size = 2",
        "train_and_evaluate.max_eval_batches = 1",
        "train_and_evaluate.evaluate_before_training = False",
        "train_and_evaluate.progress = False",
        "train_and_evaluate.summary_every_steps = 2",
        "train_and_evaluate.image_every_steps = 2",
        "build_depth_net.decoder_channels = (4, 8, 8, 16, 16)",
        "build_flow_net.decoder_channels = (4, 8, 8, 16, 16)",
        "make_apportionment.sample_size = 256",
    ] + list(extra))


def _weights(nets):
    return [np.array(v.numpy()) for net in nets for v in net.weights]


def _restore_state(model_dir, data_dir):
    """The networks, optimizers and P² state of the latest checkpoint in model_dir."""
    configure(data_dir)
    trainer = loop.Trainer(
        model_dir, loop.file_pattern(data_dir, "train"), None, SIZE, SIZE, 2, 2, 2, 0, 1,
        tf.distribute.get_strategy(), None, False, 2, 3, 0, True, True, 2, 1)
    trainer.restore()
    state = {
        "weights": _weights([trainer.depth_net, trainer.pose_net, trainer.flow_net]),
        "optimizer": [np.array(v.numpy()) for v in trainer.depth_pose_optimizer.variables
                      + trainer.flow_optimizer.variables],
        "quantiles": [np.array(v.numpy()) for v in
                      trainer.apportionment.quantile_layer.non_trainable_variables],
        "step": int(trainer.global_step.numpy()),
        "learning_rate": float(trainer.depth_pose_optimizer.learning_rate.numpy()),
    }
    return state


@pytest.mark.parametrize("distribution", ["default", "mirrored"])
def test_loop_runs_and_learns(tiny_dataset, tmp_path, distribution):
    model_dir = str(tmp_path / distribution)
    configure(tiny_dataset,
              f"train_and_evaluate.distribution = '{distribution}'",
              "train_and_evaluate.num_epochs = 1",
              "train_and_evaluate.steps_per_epoch = 3",
              "train_and_evaluate.burn_in_epochs = 0",
              "train_and_evaluate.steps_per_loop = 3",
              "train_and_evaluate.checkpoint_every_steps = 1",
              "train_and_evaluate.keep_checkpoints = 5")
    result = loop.train_and_evaluate(model_dir=model_dir)
    assert result["step"] == 3 and result["nonfinite_steps"] == 0
    assert np.isfinite(result["abs_rel"]) and result["abs_rel"] > 0
    assert os.path.exists(os.path.join(model_dir, loop.OPERATIVE_CONFIG))
    config = open(os.path.join(model_dir, loop.OPERATIVE_CONFIG)).read()
    assert "train_and_evaluate.distribution" in config and "loss_weights.lambda_gc" in config
    assert tf.train.latest_checkpoint(os.path.join(model_dir, loop.CHECKPOINT_SUBDIR))
    assert tf.train.latest_checkpoint(os.path.join(model_dir, loop.BEST_SUBDIR))
    assert glob.glob(os.path.join(model_dir, loop.SUMMARY_SUBDIR, "events.out.tfevents.*"))
    # the scalars of the losses were written and are finite.
    scalars = _read_scalars(os.path.join(model_dir, loop.SUMMARY_SUBDIR))
    for tag in ("losses/total_theta_alpha", "losses/total_delta", "apportion/fraction_V",
                "train/learning_rate_depth_pose", "train/nonfinite_steps"):
        assert tag in scalars and all(np.isfinite(v) for v in scalars[tag]), tag
    # weights change from step to step (checkpoints of steps 1 and 3).
    manager_dir = os.path.join(model_dir, loop.CHECKPOINT_SUBDIR)
    first, last = (tf.train.load_checkpoint(os.path.join(manager_dir, f"ckpt-{i}"))
                   for i in (1, 3))
    names = [n for n, _ in tf.train.list_variables(os.path.join(manager_dir, "ckpt-3"))
             if n.split("/")[0] in ("depth_net", "pose_net", "flow_net")
             and n.endswith("VARIABLE_VALUE")]
    assert len(names) > 100
    changed = [not np.array_equal(first.get_tensor(n), last.get_tensor(n)) for n in names]
    assert np.mean(changed) > 0.9


def _read_scalars(logdir):
    from tensorboard.backend.event_processing import event_accumulator
    values = {}
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        acc = event_accumulator.EventAccumulator(path, size_guidance={"tensors": 0})
        acc.Reload()
        for tag in acc.Tags()["tensors"]:
            values.setdefault(tag, []).extend(
                float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)
                if e.tensor_proto.tensor_shape.dim == [])
    return values


def test_kill_and_resume_matches_uninterrupted(tiny_dataset, tmp_path):
    common = ("train_and_evaluate.num_epochs = 2",
              "train_and_evaluate.steps_per_epoch = 2",
              "train_and_evaluate.burn_in_epochs = 1",
              "train_and_evaluate.checkpoint_every_steps = 1",
              "train_and_evaluate.run_eagerly = True",
              "make_learning_rate_schedule.boundary_epochs = (1,)")
    # uninterrupted: 4 steps (epoch 0 burn-in with P² estimation, epoch 1 CoopNet masks).
    straight = str(tmp_path / "straight")
    configure(tiny_dataset, *common)
    loop.train_and_evaluate(model_dir=straight)
    # interrupted after 3 steps (mid-epoch 1: quantiles frozen, running estimators fed),
    # then resumed in a fresh Trainer.
    resumed = str(tmp_path / "resumed")
    configure(tiny_dataset, *common)
    first = loop.train_and_evaluate(model_dir=resumed, stop_at_step=3)
    assert first["step"] == 3
    configure(tiny_dataset, *common)
    second = loop.train_and_evaluate(model_dir=resumed)
    assert second["step"] == 4

    a = _restore_state(straight, tiny_dataset)
    b = _restore_state(resumed, tiny_dataset)
    assert a["step"] == b["step"] == 4
    for x, y in zip(a["quantiles"], b["quantiles"]):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(a["weights"], b["weights"]):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    for x, y in zip(a["optimizer"], b["optimizer"]):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    # the learning rate followed the schedule by global step (1e-5 from epoch 1 on).
    assert a["learning_rate"] == b["learning_rate"] == pytest.approx(1e-5)
