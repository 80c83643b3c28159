"""Issue 14, the training loop's defects: each test reproduces one fault on a tiny
synthetic world (64x64, eager steps) and checks what the user now gets.

4  a typo in a strategy option is an error (another strategy's option is not);
7  a diverging run warns, then stops with a clear error; NaN is never "best";
8  best/ and the summary agree when no epoch beats the untrained network;
9  stale ``ckpt-N_temp`` left by a killed save is removed on start; a batch larger than the
   data set warns; non-chief workers remove their throw-away checkpoints;
11 TensorBoard's depth and disparity images differ; ``quantiles/current/*`` is written
   only once quantiles exist; predict's default output is git-ignored.
"""
import glob
import json
import logging
import os
import pathlib

import gin
import numpy as np
import pytest
import tensorflow as tf

import conftest

from coopnet_tf import export, run_layout, specs, summaries, visualize
from coopnet_tf import train as train_main
from coopnet_tf.data import records
from coopnet_tf.training import factories, loop

SIZE = 64
ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return conftest.tiny_world(tmp_path_factory, SIZE, frames_per_sequence=7)


def configure(data_dir, *extra):
    """synthetic.gin shrunk to seconds: eager steps, ResNet10 encoders, small decoders, no
    images."""
    gin.clear_config()
    train_main.parse_gin(["synthetic.gin"], [
        f"train_and_evaluate.data_dir = '{data_dir}'",
        f"HEIGHT = {SIZE}",
        f"WIDTH = {SIZE}",
        "train_and_evaluate.batch_size = 1",
        "train_and_evaluate.eval_batch_size = 1",
        "train_and_evaluate.max_eval_batches = 1",
        "train_and_evaluate.progress = False",
        "train_and_evaluate.run_eagerly = True",
        "train_and_evaluate.image_every_steps = 0",
        "train_and_evaluate.summary_every_steps = 1",
        "train_and_evaluate.checkpoint_every_steps = 1",
        "build_depth_net.decoder_channels = (4, 8, 8, 16, 16)",
        "build_flow_net.decoder_channels = (4, 8, 8, 16, 16)",
        "make_apportionment.sample_size = 64",
    ] + list(conftest.TINY_ENCODERS) + list(extra))


def _scalars(logdir):
    from tensorboard.backend.event_processing import event_accumulator
    values = {}
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        acc = event_accumulator.EventAccumulator(path, size_guidance={"tensors": 0})
        acc.Reload()
        for tag in acc.Tags()["tensors"]:
            values.setdefault(tag, []).extend(e.step for e in acc.Tensors(tag))
    return values


# ---------------------------------------------------------------- defect 4 ----

def test_unknown_strategy_option_is_an_error():
    gin.clear_config()
    gin.parse_config("make_apportionment.eta_ = 0.2")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['eta_'\] for strategy "
                                         r"'coopnet'; it accepts \[.*'eta'"):
        factories.make_apportionment()
    gin.clear_config()
    # base.gin binds eta; an ablation that selects baseline must still run
    gin.parse_config("make_apportionment.name = 'baseline'\nmake_apportionment.eta = 0.15")
    assert factories.make_apportionment().name == "baseline"
    gin.clear_config()


# ------------------------------------------------- defects 8, 9 (temp), 11 ----

@pytest.fixture(scope="module")
def no_improvement_run(tiny_dataset, tmp_path_factory):
    """Two one-step epochs whose validation never beats the untrained networks (scripted
    metrics), started over a checkpoint directory holding a killed save's leftovers."""
    model_dir = tmp_path_factory.mktemp("run")
    stale = [model_dir / run_layout.CHECKPOINT_SUBDIR / "ckpt-7_temp",
             model_dir / run_layout.BEST_SUBDIR / "ckpt-3_temp"]
    for path in stale:
        path.mkdir(parents=True)
        (path / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"\0" * 1024)
    scripted = iter([0.5, 0.6, 0.7])
    configure(tiny_dataset, "train_and_evaluate.num_epochs = 2",
              "train_and_evaluate.steps_per_epoch = 1",
              "train_and_evaluate.burn_in_epochs = 1",
              "make_learning_rate_schedule.boundary_epochs = (1,)")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop.Trainer, "evaluate", lambda self: {"abs_rel": next(scripted)})
        result = loop.train_and_evaluate(model_dir=str(model_dir))
    return model_dir, stale, result


def test_best_checkpoint_agrees_with_the_summary(no_improvement_run):
    model_dir, _, result = no_improvement_run
    assert result["step"] == 2
    history = loop.validation_history(str(model_dir))
    assert history.endswith("best 0.500 (step 0); no epoch improved on the untrained network")
    best = export.find_checkpoint(str(model_dir), "best")
    assert os.path.basename(best) == "ckpt-0"   # the untrained weights, as the summary says
    reader = tf.train.load_checkpoint(best)
    assert np.isclose(reader.get_tensor("best_metric/.ATTRIBUTES/VARIABLE_VALUE"), 0.5)


def test_stale_checkpoint_temporaries_are_removed_on_start(no_improvement_run):
    _, stale, _ = no_improvement_run
    assert not any(p.exists() for p in stale)
    assert loop.remove_stale_temporaries(str(stale[0].parent)) == []   # nothing else


def test_current_quantiles_are_written_once_they_exist(no_improvement_run):
    model_dir, _, _ = no_improvement_run
    steps = _scalars(str(model_dir / run_layout.SUMMARY_SUBDIR))
    # step 1: burn-in epoch (P² estimating, nothing frozen); step 2: quantiles frozen
    assert steps["quantiles/running/delta_q0.35"] == [1, 2]
    assert steps["quantiles/current/delta_q0.35"] == [2]


def test_depth_and_disparity_images_differ():
    depth = tf.constant(np.linspace(1.0, 50.0, 16 * 16, dtype=np.float32).reshape(1, 16, 16, 1))
    disparity = 1.0 / depth
    kinds = summaries.IMAGE_KINDS
    depth_rgb = summaries.colorize_endpoint(kinds["depth"], depth).numpy()
    disp_rgb = summaries.colorize_endpoint(kinds["disparity"], disparity).numpy()
    assert np.abs(depth_rgb - disp_rgb).mean() > 0.1
    # depth: near dark, far bright, on a fixed metric scale; disparity: near bright
    assert depth_rgb[0, 0, 0].sum() < depth_rgb[0, -1, -1].sum()
    assert disp_rgb[0, 0, 0].sum() > disp_rgb[0, -1, -1].sum()
    # the depth scale is fixed (metres), not per image: MIN_DEPTH is the darkest colour
    at_min = summaries.colorize_endpoint(kinds["depth"], tf.fill([1, 2, 2, 1], specs.MIN_DEPTH))
    np.testing.assert_allclose(at_min.numpy()[0, 0, 0], visualize.magma_lut()[0], atol=1e-6)


def test_predict_default_output_is_git_ignored():
    ignored = (ROOT / ".gitignore").read_text().split()
    for directory in ("/runs/", "/exports/", "/predictions/"):
        assert directory in ignored


# ---------------------------------------------------------------- defect 7 ----

def test_diverging_run_warns_then_stops(tiny_dataset, tmp_path, caplog):
    # an infinite weight makes every step's loss non-finite: every step is skipped
    configure(tiny_dataset, "train_and_evaluate.num_epochs = 1",
              "train_and_evaluate.steps_per_epoch = 5",
              "train_and_evaluate.burn_in_epochs = 0",
              "train_and_evaluate.steps_per_loop = 1",
              "train_and_evaluate.evaluate_before_training = False",
              "train_and_evaluate.max_consecutive_nonfinite_steps = 2",
              "loss_weights.lambda_s = 1e39")
    caplog.set_level(logging.WARNING)
    with pytest.raises(loop.TrainingDivergedError,
                       match=r"the last 2 steps \(up to step 2\) had non-finite losses"):
        loop.train_and_evaluate(model_dir=str(tmp_path))
    warned = [r.getMessage() for r in caplog.records if "skipped (non-finite" in r.getMessage()]
    assert len(warned) == 2 and "1 in a row" in warned[0] and "2 in a row" in warned[1]
    assert not glob.glob(str(tmp_path / run_layout.BEST_SUBDIR / "ckpt-*"))


def test_nan_is_never_the_best(tmp_path):
    for step, value in [(0, float("nan")), (90, 0.41), (180, float("nan"))]:
        with open(tmp_path / f"eval_{step}.json", "w") as f:
            json.dump({"step": step, "tag": "untrained" if step == 0 else "epoch",
                       "abs_rel": value}, f)
    assert loop.validation_history(str(tmp_path)).endswith("; best 0.410 (step 90)")
    (tmp_path / "eval_90.json").unlink()
    assert loop.validation_history(str(tmp_path)).endswith(
        "; best: none (no finite validation)")


# ---------------------------------------------------------------- defect 9 ----

def test_batch_larger_than_the_data_set_warns(tiny_dataset):
    pattern = records.file_pattern(tiny_dataset, "train")
    num = records.count_records(pattern)
    assert num == 5
    assert loop.batch_size_warning(pattern, num) is None
    assert loop.batch_size_warning(pattern, 8) == (
        f"batch_size 8 is larger than the 5 training snippets of {pattern}: "
        "every batch repeats snippets")


def test_non_chief_worker_removes_its_checkpoints(tiny_dataset, tmp_path, monkeypatch):
    worker_dir = tmp_path / run_layout.WORKER_TEMP_SUBDIR / "worker_1"
    monkeypatch.setattr(loop.distribution_lib, "is_chief", lambda strategy: False)
    monkeypatch.setattr(loop, "_write_dir", lambda model_dir, strategy: str(worker_dir))
    configure(tiny_dataset)
    config = loop.TrainConfig(model_dir=str(tmp_path), train_files="unused", height=SIZE,
                              width=SIZE, batch_size=2, steps_per_epoch=1)
    trainer = loop.Trainer(config, tf.distribute.get_strategy())
    for _ in range(2):   # two saves: the second one after the first was removed
        trainer.global_step.assign_add(1)
        trainer.save(best=True)
        assert not worker_dir.exists()
    assert not os.listdir(tmp_path / run_layout.WORKER_TEMP_SUBDIR)


def test_saturated_disparity_is_measured_and_warned(tiny_dataset, tmp_path, capsys):
    """Validation reports the share of pixels whose disparity sigmoid is stuck at a
    bound (`disparity_saturated`) with and without ground truth, and warns above half:
    0 for the untrained net, 1 once the scale-0 head's bias drives the sigmoid to 0 (the
    collapsed Lee runs of docs/lee.md); no warning at half."""
    configure(tiny_dataset)
    config = loop.TrainConfig(model_dir=str(tmp_path), height=SIZE, width=SIZE, batch_size=1,
                              steps_per_epoch=1, eval_batch_size=2, max_eval_batches=1,
                              run_eagerly=True, burn_in_epochs=0,
                              train_files=records.file_pattern(tiny_dataset, "train"),
                              val_files=records.file_pattern(tiny_dataset, "val"))
    trainer = loop.Trainer(config, tf.distribute.get_strategy())
    trainer.prepare_outputs()
    assert trainer.has_ground_truth
    head = trainer.depth_net.get_layer("dispconv_0")
    kernel, bias = head.get_weights()
    for with_gt in (True, False):
        trainer.has_ground_truth = with_gt
        head.set_weights([kernel, bias])
        result = trainer.evaluate()
        assert result[loop.SATURATED_KEY] == 0.0, with_gt
        head.set_weights([np.zeros_like(kernel), bias - 200.0])   # sigmoid(-200) = 0
        result = trainer.evaluate()
        assert result[loop.SATURATED_KEY] == 1.0, with_gt
        assert ("abs_rel" in result) == with_gt
        trainer.log_eval(result, 7, "test")
        assert "[WARNING] step 7: the depth net's disparity is saturated on 100 %" in \
            capsys.readouterr().out
    trainer.log_eval({loop.SATURATED_KEY: 0.5, "abs_rel": 0.3}, 8, "test")
    assert "WARNING" not in capsys.readouterr().out
    with open(run_layout.eval_json(trainer.write_dir, 7)) as f:
        assert json.load(f)[loop.SATURATED_KEY] == 1.0
