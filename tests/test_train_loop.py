"""`train_and_evaluate` end to end on a tiny synthetic world (64x64, batch 2).

* the `tf.function` loop (two calls of two steps) under the default strategy, and the
  same loop eagerly under MirroredStrategy over the two logical CPU devices of
  conftest.py: losses finite, weights change, the operative gin config and checkpoints
  are written;
* kill-and-resume: N steps, stop, copy the model_dir as the benchmark does, resume to M —
  every variable (weights, Adam moments, BatchNorm statistics, P² state, counters) is
  bit-identical to an uninterrupted run to M. These runs use `run_eagerly=True` (same
  code path minus `tf.function`: no tracing cost) and batch 1 (an eager step costs its
  ops' dispatch more than their arithmetic; batch 2 adds ~20 % to it).
"""
import glob
import json
import os
import pathlib
import sys

import gin
import numpy as np
import pytest
import tensorflow as tf

import conftest

from coopnet_tf import run_layout
from coopnet_tf import train as train_main
from coopnet_tf.data import records
from coopnet_tf.training import loop

REPO_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if REPO_ROOT not in sys.path:      # the benchmarks package (its copy-the-burn-in helper)
    sys.path.insert(0, REPO_ROOT)

SIZE = 64


pytestmark = pytest.mark.usefixtures("fast_graphs")   # conftest.py


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return conftest.tiny_world(tmp_path_factory, SIZE, frames_per_sequence=7)


def configure(data_dir, *extra):
    """gin: the project's synthetic.gin shrunk to seconds (same factories, small widths,
    ResNet10 encoders)."""
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
        "build_depth_net.decoder_channels = (4, 8, 8, 16, 16)",
        "build_flow_net.decoder_channels = (4, 8, 8, 16, 16)",
        "make_apportionment.sample_size = 256",
    ] + list(conftest.TINY_ENCODERS) + list(extra))


def _checkpoint_tensors(model_dir, step=None):
    """name -> value of every variable in the latest checkpoint of a run (or at `step`)."""
    path = tf.train.latest_checkpoint(os.path.join(model_dir, run_layout.CHECKPOINT_SUBDIR))
    if step is not None:
        path = path.rsplit("-", 1)[0] + f"-{step}"
    reader = tf.train.load_checkpoint(path)
    return {name: reader.get_tensor(name) for name, _ in tf.train.list_variables(path)
            if name.endswith("VARIABLE_VALUE")}


@pytest.mark.parametrize("distribution", ["default", "mirrored"])
def test_loop_runs_and_learns(tiny_dataset, tmp_path, distribution):
    model_dir = str(tmp_path / distribution)
    mirrored = distribution == "mirrored"
    steps = 2 if mirrored else 4     # two checkpoints: after steps / 2 and steps
    extra = [f"train_and_evaluate.distribution = '{distribution}'",
             "train_and_evaluate.num_epochs = 1",
             f"train_and_evaluate.steps_per_epoch = {steps}",
             "train_and_evaluate.burn_in_epochs = 0",
             f"train_and_evaluate.steps_per_loop = {steps}",
             "train_and_evaluate.summary_every_steps = 2",
             f"train_and_evaluate.checkpoint_every_steps = {steps // 2}",   # 2 calls
             "train_and_evaluate.keep_checkpoints = 5"]
    if mirrored:   # training only (validation and images are covered by the default run);
        # eager replicas: the same per-replica code and cross-replica reductions without
        # tracing the step twice (the graph is traced by the default run); 2 eager steps
        extra += ["train_and_evaluate.run_eagerly = True",
                  "train_and_evaluate.data_dir = None",
                  f"train_and_evaluate.train_files = '{records.file_pattern(tiny_dataset, 'train')}'",
                  "train_and_evaluate.image_every_steps = 0"]
    else:
        extra += ["train_and_evaluate.image_every_steps = 4"]
    configure(tiny_dataset, *extra)
    result = loop.train_and_evaluate(model_dir=model_dir)
    assert result["step"] == steps and result["nonfinite_steps"] == 0
    assert os.path.exists(os.path.join(model_dir, run_layout.OPERATIVE_CONFIG))
    config = open(os.path.join(model_dir, run_layout.OPERATIVE_CONFIG)).read()
    assert f"train_and_evaluate.distribution = '{distribution}'" in config
    assert "loss_weights.lambda_gc" in config and "build_depth_net.num_layers" in config
    assert tf.train.latest_checkpoint(os.path.join(model_dir, run_layout.CHECKPOINT_SUBDIR))
    assert glob.glob(os.path.join(model_dir, run_layout.SUMMARY_SUBDIR, "events.out.tfevents.*"))
    if not mirrored:
        assert np.isfinite(result["abs_rel"]) and result["abs_rel"] > 0
        assert f"{result['abs_rel']:.3f} (4)" in loop.validation_history(model_dir)
        assert tf.train.latest_checkpoint(os.path.join(model_dir, run_layout.BEST_SUBDIR))
    # the scalars of the losses were written and are finite.
    scalars = _read_scalars(os.path.join(model_dir, run_layout.SUMMARY_SUBDIR))
    for tag in ("losses/total_theta_alpha", "losses/total_delta", "apportion/fraction_V",
                "train/learning_rate_depth_pose", "train/nonfinite_steps"):
        assert tag in scalars and all(np.isfinite(v) for v in scalars[tag]), tag
    # the trainable weights of the three networks change from step to step (checkpoints of
    # steps / 2 and steps). A checkpoint stores each variable once: the trainable weights under
    # the optimizer that tracks them (`<optimizer>/_trainable_variables/<i>`), leaving only
    # the BatchNorm statistics under `depth_net/...` etc.
    manager_dir = os.path.join(model_dir, run_layout.CHECKPOINT_SUBDIR)
    first, last = (tf.train.load_checkpoint(os.path.join(manager_dir, f"ckpt-{i}"))
                   for i in (steps // 2, steps))
    names = [n for n, _ in tf.train.list_variables(os.path.join(manager_dir, f"ckpt-{steps}"))
             if n.split("/")[:2] in (["depth_pose_optimizer", "_trainable_variables"],
                                     ["flow_optimizer", "_trainable_variables"])
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


def test_kill_and_resume_equals_uninterrupted_exactly(tiny_dataset, tmp_path):
    """Bit-identical on CPU (deterministic_ops, the default): an uninterrupted run, and a
    run stopped after the burn-in, copied to another model_dir the way the benchmark
    copies its shared burn-in (`reproduce_synthetic._copy_run`) and resumed there in a
    fresh Trainer."""
    from benchmarks import reproduce_synthetic

    common = ("train_and_evaluate.num_epochs = 3",
              "train_and_evaluate.steps_per_epoch = 1",
              "train_and_evaluate.burn_in_epochs = 1",
              "train_and_evaluate.batch_size = 1",
              "train_and_evaluate.data_dir = None",
              f"train_and_evaluate.train_files = '{records.file_pattern(tiny_dataset, 'train')}'",
              "train_and_evaluate.checkpoint_every_steps = 1",
              "train_and_evaluate.run_eagerly = True",
              "train_and_evaluate.image_every_steps = 0",
              "make_learning_rate_schedule.boundary_epochs = (1,)",
              "make_apportionment.sample_size = 64")
    # uninterrupted: 3 steps, one per epoch: epoch 0 burn-in with P² estimation, epochs 1
    # and 2 CoopNet with the previous epoch's quantiles.
    straight = str(tmp_path / "straight")
    configure(tiny_dataset, *common)
    loop.train_and_evaluate(model_dir=straight)
    # interrupted after 2 steps (quantiles frozen twice, estimators fed), copied, resumed.
    burn_in, resumed = str(tmp_path / "burn_in"), str(tmp_path / "resumed")
    configure(tiny_dataset, *common)
    first = loop.train_and_evaluate(model_dir=burn_in, stop_at_step=2)
    assert first["step"] == 2
    reproduce_synthetic._copy_run(burn_in, resumed)
    configure(tiny_dataset, *common)
    second = loop.train_and_evaluate(model_dir=resumed)
    assert second["step"] == 3

    a = _checkpoint_tensors(straight)
    b = _checkpoint_tensors(resumed)
    assert sorted(a) == sorted(b)
    assert int(a["global_step/.ATTRIBUTES/VARIABLE_VALUE"]) == 3
    quantile_keys = [k for k in a if k.startswith("quantiles/")]
    assert len(quantile_keys) >= 6
    assert any(k.startswith("depth_pose_optimizer/") for k in a)    # Adam moments too
    unequal = [k for k in sorted(a) if not k.startswith("save_counter")
               and not np.array_equal(a[k], b[k])]
    assert not unequal, f"{len(unequal)} of {len(a)} variables differ, e.g. {unequal[:5]}"
    # the learning rate follows the schedule by global step (1e-5 from epoch 1 on).
    lr_keys = [k for k in a if "learning_rate" in k]
    assert lr_keys and all(np.isclose(a[k], 1e-5) for k in lr_keys)

    # A longer burn-in trains the same up to the shorter one's end: epoch 0 without the P²
    # estimation (burn_in_epochs = 2) leaves every network, statistic and optimizer state
    # bitwise as epoch 0 with it (burn_in_epochs = 1); only the estimators differ. What
    # benchmarks/flow_competence.py relies on to continue burn6 from the default burn-in,
    # and reproduce_synthetic on to start coopnet_gt_inputs' estimation from a burn-in
    # that estimated with the learned flow.
    longer = str(tmp_path / "longer")
    configure(tiny_dataset, *common, "train_and_evaluate.burn_in_epochs = 2")
    assert loop.train_and_evaluate(model_dir=longer, stop_at_step=1)["step"] == 1
    a1, c1 = _checkpoint_tensors(straight, step=1), _checkpoint_tensors(longer)
    assert sorted(a1) == sorted(c1)
    differ = [k for k in sorted(a1) if not np.array_equal(a1[k], c1[k])]
    assert differ and all(k.startswith("quantiles/") for k in differ), differ


def test_validation_history_line(tmp_path):
    for step, tag, value in [(0, "untrained", 0.6), (90, "epoch 1", 0.41), (180, "epoch 2", 0.45)]:
        with open(tmp_path / f"eval_{step}.json", "w") as f:
            json.dump({"step": step, "tag": tag, "abs_rel": value}, f)
    assert loop.validation_history(str(tmp_path)) == (
        "abs_rel 0.600 (0, untrained) -> 0.410 (90) -> 0.450 (180); best 0.410 (step 90)")
    assert loop.validation_history(str(tmp_path / "missing")) == ""
