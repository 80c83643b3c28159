"""`train_and_evaluate(method='lee')` end to end on a tiny synthetic world (64x64, batch 1,
eager steps), with gin/lee_synthetic.gin shrunk to one step per phase:

* the schedule's phase of every step (Lee Table 1 via `schedule.Stages`);
* steps 0-1 (phases 1, 2), a stop, a resume for step 2: the checkpoints show the depth
  net frozen in phase 2 and everything moving in step 2 (the resumed run is in phase 3);
  the summaries hold Lee's loss terms and the attention / residual-magnitude images;
* the export: depth, pose and object_motion SavedModels; the pose SavedModel, reloaded
  with `tf.saved_model.load`, gives the motion net's ego-motion of the depth net's depths.
"""
import glob
import os

import gin
import numpy as np
import pytest
import tensorflow as tf

import conftest

from coopnet_tf import export, geometry, predict, run_layout, specs
from coopnet_tf import train as train_main
from coopnet_tf.data import pipeline, records
from coopnet_tf.models import disp_to_depth, motion_branches
from coopnet_tf.training import factories, lee_step, loop, schedule

SIZE = 64


pytestmark = pytest.mark.usefixtures("fast_graphs")   # conftest.py


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return conftest.tiny_world(tmp_path_factory, SIZE, frames_per_sequence=5)


def configure(data_dir, *bindings):
    """gin/lee_synthetic.gin at 64x64 with ResNet10 encoders, one step per epoch, phases of
    one epoch each (the warm-up: phase 1)."""
    gin.clear_config()
    train_main.parse_gin(["lee_synthetic.gin"], [
        "train_and_evaluate.data_dir = None",
        f"train_and_evaluate.train_files = '{records.file_pattern(data_dir, 'train')}'",
        f"train_and_evaluate.val_files = '{records.file_pattern(data_dir, 'val')}'",
        f"HEIGHT = {SIZE}",
        f"WIDTH = {SIZE}",
        "train_and_evaluate.batch_size = 1",
        "train_and_evaluate.eval_batch_size = 1",
        "train_and_evaluate.max_eval_batches = 1",
        "train_and_evaluate.evaluate_before_training = False",
        "train_and_evaluate.progress = False",
        "train_and_evaluate.run_eagerly = True",
        "train_and_evaluate.steps_per_epoch = 1",
        "train_and_evaluate.num_epochs = 3",
        "train_and_evaluate.summary_every_steps = 1",
        "train_and_evaluate.image_every_steps = 3",
        "train_and_evaluate.checkpoint_every_steps = 1",
        "train_and_evaluate.keep_checkpoints = 10",
        "lee.phase1_epochs = 1",
        "lee.phase2_epochs = 1",
        "train_and_evaluate.burn_in_epochs = 1",
        "lee.lambda_mc = 0.0",            # (L_mc doubles the motion-net work; test_lee_step)
        "build_depth_net.decoder_channels = (4, 8, 8, 16, 16)",
        "build_motion_net.decoder_channels = (4, 8, 8, 16, 16)",
    ] + list(conftest.TINY_ENCODERS) + list(bindings))


def test_phases_of_the_schedule():
    stages = schedule.Stages(lee_step.PHASES, (2, 3, 1), "epochs", False)
    sched = schedule.EpochSchedule(5, 0, 0, stages=stages)
    want = ["phase1"] * 10 + ["phase2"] * 15 + ["phase3"] * 30
    assert [sched.phase(s).stage for s in range(55)] == want
    assert [sched.next_change(s) for s in (0, 9, 10, 24, 25)] == [5, 10, 15, 25, 30]
    with pytest.raises(ValueError, match="phase1_epochs"):
        factories.lee(phase1_epochs=0)


def test_warm_up_longer_than_phase1_is_refused(tiny_dataset, tmp_path):
    configure(tiny_dataset, "train_and_evaluate.burn_in_epochs = 2")
    with pytest.raises(ValueError, match="cannot be longer than lee.phase1_epochs = 1"):
        loop.train_and_evaluate(model_dir=str(tmp_path / "run"))


def _checkpoint(model_dir, number):
    """(depth, ego branch, residual-only) name -> value of a checkpoint's networks."""
    path = os.path.join(model_dir, run_layout.CHECKPOINT_SUBDIR, f"ckpt-{number}")
    reader = tf.train.load_checkpoint(path)
    names = [n for n, _ in tf.train.list_variables(path) if n.endswith("VARIABLE_VALUE")]
    depth = {n: reader.get_tensor(n) for n in names if n.startswith("depth_net/")}
    motion = {n: reader.get_tensor(n) for n in names if n.startswith("motion_net/")}
    assert depth and motion
    return depth, motion


def _moved(a, b):
    return sum(not np.array_equal(a[k], b[k]) for k in a)


def _scalar_and_image_tags(model_dir):
    tags = set()
    for path in glob.glob(os.path.join(model_dir, run_layout.SUMMARY_SUBDIR, "events*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(v.tag for v in event.summary.value)
    return tags


def test_train_resume_in_the_right_phase_and_export(tiny_dataset, tmp_path, monkeypatch):
    model_dir = str(tmp_path / "run")
    configure(tiny_dataset)
    assert loop.train_and_evaluate(model_dir=model_dir, stop_at_step=2)["step"] == 2
    configure(tiny_dataset)
    result = loop.train_and_evaluate(model_dir=model_dir)        # resumed: step 2 only
    assert result["step"] == 3 and result["nonfinite_steps"] == 0
    assert np.isfinite(result["abs_rel"])

    (d1, m1), (d2, m2), (d3, m3) = (_checkpoint(model_dir, n) for n in (1, 2, 3))
    assert _moved(d1, d2) == 0 and _moved(m1, m2) > 0.5 * len(m1)     # step 1: phase 2
    assert _moved(d2, d3) > 0.5 * len(d2) and _moved(m2, m3) > 0.5 * len(m2)  # phase 3

    tags = _scalar_and_image_tags(model_dir)
    for tag in ("losses/photometric", "losses/geometric", "losses/csac", "losses/total",
                "train/learning_rate_depth", "train/learning_rate_motion"):
        assert tag in tags, tag
    assert "images/residual_magnitude" in tags and "images/attention_residual_4" in tags

    # export: the three SavedModels of a Lee run; the pose one reloads and gives the ego-motion
    export_dir = str(tmp_path / "exports")
    paths = export.export_from_model_dir(model_dir, export_dir)
    assert set(paths) == {specs.EXPORT_DEPTH, specs.EXPORT_POSE, specs.EXPORT_OBJECT_MOTION}
    assert all(p.endswith(os.sep + "3") and os.path.isdir(p) for p in paths.values())

    batch = next(iter(pipeline.make_dataset(records.file_pattern(tiny_dataset, "val"),
                                            batch_size=1, height=SIZE, width=SIZE,
                                            training=False, with_ground_truth=True)))
    image_a = batch[specs.KEY_FRAMES][:, specs.TARGET_INDEX]
    image_b = batch[specs.KEY_FRAMES][:, specs.SOURCE_INDICES[-1]]
    loaded = {}   # path -> SavedModel, each loaded once (the Predictor below reuses them)
    load = tf.saved_model.load
    monkeypatch.setattr(tf.saved_model, "load",
                        lambda path: loaded.get(path) or loaded.setdefault(path, load(path)))
    served = tf.saved_model.load(paths[specs.EXPORT_POSE]).signatures["serving_default"](
        image_a=image_a, image_b=image_b)

    depth_net, motion_net, _ = export.restore_lee_networks(model_dir)
    depths = [disp_to_depth(depth_net(x, training=False)[0])[1] for x in (image_a, image_b)]
    ego_net, _ = motion_branches(motion_net)
    want = ego_net(tf.concat([image_a, image_b] + depths, -1), training=False)["ego"]
    np.testing.assert_allclose(served["pose_vector"].numpy(), want.numpy(), rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(served["transform"].numpy(),
                               geometry.pose_vector_to_matrix(want).numpy(), atol=1e-6)
    assert float(tf.reduce_max(tf.abs(want))) > 0.0

    motion = tf.saved_model.load(paths[specs.EXPORT_OBJECT_MOTION]).signatures[
        "serving_default"](image_a=image_a, image_b=image_b,
                           intrinsics=batch[specs.KEY_INTRINSICS])
    assert motion["residual"].shape == (1, SIZE, SIZE, 3)
    assert np.all(np.isfinite(motion["residual"].numpy()))
    np.testing.assert_allclose(motion["pose_vector"].numpy(), want.numpy(), rtol=1e-4,
                               atol=1e-6)
    # predict --saved_model_dir finds the object_motion export (tests/test_predict_lee.py:
    # --model_dir)
    predictor = predict.Predictor.from_saved_model(export_dir)
    assert predictor.flow_fn is None and predictor.motion_fn is None
    assert sorted(loaded) == sorted(paths.values())   # it found depth and object_motion
    np.testing.assert_array_equal(
        predictor.object_motion_fn(image_a.numpy(), image_b.numpy(),
                                   batch[specs.KEY_INTRINSICS].numpy()),
        motion["residual"].numpy())
