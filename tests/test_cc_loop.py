"""Competitive Collaboration's schedule in the training loop (64x64 synthetic world).

* the schedule's stage of every step (training/schedule.py, CC's `stages`) against a
  step-by-step enumeration of Algorithm 1's alternation after the burn-in;
* resume from another strategy's burn-in checkpoint (no moderator in it), then
  kill-and-resume inside the alternation: the resumed run continues in the right stage
  (the moderator is frozen in a competition step, the competitors in a collaboration
  step). That a resume reproduces an uninterrupted run is test_train_loop's business.
"""
import os

import numpy as np
import pytest
import tensorflow as tf

import conftest
import test_train_loop as tl

from coopnet_tf.losses import competitive_strategy as cs
from coopnet_tf import run_layout
from coopnet_tf.data import records
from coopnet_tf.training import loop, schedule


@pytest.mark.parametrize("unit,spe", [("steps", 7), ("epochs", 3)])
def test_schedule_enumerates_the_alternation(unit, spe):
    strategy = cs.CompetitiveCollaborationStrategy(None, None, period=2, period_unit=unit)
    per = spe if unit == "epochs" else 1
    burn = 4 * per if unit == "epochs" else 2 * spe     # 4 epochs | 2 epochs of 7 steps
    sched = schedule.EpochSchedule(spe, burn // spe, 0, stages=strategy.stages)
    want = []
    while len(want) < 80:
        want += [cs.COLLABORATION] * (2 * per) + [cs.COMPETITION] * (2 * per)
    for step in range(80):
        phase = sched.phase(step)
        assert phase.burn_in == (step < burn), step
        assert phase.stage == want[step], step
        if step >= burn:
            groups = strategy.trained_groups(phase.stage)
            assert groups == (("strategy",) if want[step] == cs.COLLABORATION
                              else ("depth_pose", "flow"))
        # the loop's tf.function chunks end where the stage (or the epoch) ends
        end = sched.next_change(step)
        assert all(want[s] == want[step] for s in range(step, min(end, 80)))
        assert end >= 80 or want[end] != want[step] or end % spe == 0

@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return conftest.tiny_world(tmp_path_factory, tl.SIZE, frames_per_sequence=7)


def _run(data_dir, model_dir, stop_at_step=None, strategy="cc"):
    # 2 basic (burn-in) steps, then collaboration at step 2, competition at step 3
    tl.configure(data_dir,
                 f"make_apportionment.name = '{strategy}'",
                 "make_apportionment.period = 1",
                 "make_apportionment.period_unit = 'steps'",
                 "build_moderator_net.decoder_channels = (4, 8, 8, 16, 16)",
                 "train_and_evaluate.num_epochs = 2",
                 "train_and_evaluate.steps_per_epoch = 2",
                 "train_and_evaluate.burn_in_epochs = 1",
                 "train_and_evaluate.batch_size = 1",
                 "train_and_evaluate.data_dir = None",
                 f"train_and_evaluate.train_files = '{records.file_pattern(data_dir, 'train')}'",
                 "train_and_evaluate.checkpoint_every_steps = 1",
                 "train_and_evaluate.keep_checkpoints = 10",
                 "train_and_evaluate.run_eagerly = True",
                 "train_and_evaluate.image_every_steps = 0")
    return loop.train_and_evaluate(model_dir=model_dir, stop_at_step=stop_at_step)


def _groups(tensors):
    mod = {k: v for k, v in tensors.items() if k.startswith(("moderator_net/",
                                                             "moderator_optimizer/"))}
    comp = {k: v for k, v in tensors.items() if k.split("/")[0] in COMPETITORS}
    assert len(mod) > 50 and len(comp) > 100
    return comp, mod


COMPETITORS = ("depth_net", "pose_net", "flow_net", "depth_pose_optimizer", "flow_optimizer")


def _ckpt_tensors(model_dir, number):
    path = os.path.join(model_dir, run_layout.CHECKPOINT_SUBDIR, f"ckpt-{number}")
    reader = tf.train.load_checkpoint(path)
    return {n: reader.get_tensor(n) for n, _ in tf.train.list_variables(path)
            if n.endswith("VARIABLE_VALUE")}


def _ckpt(model_dir, number):
    return _groups(_ckpt_tensors(model_dir, number))


def _diff(a, b):
    return [k for k in a if not np.array_equal(a[k], b[k])]


def test_resume_from_a_shared_burn_in_and_in_the_right_stage(tiny_dataset, tmp_path):
    """A CC run resumes from another strategy's burn-in checkpoint (the synthetic
    benchmark's shared coopnet burn-in: no moderator in it) with M as built; killed and
    resumed inside the alternation, it continues in the right stage; a coopnet checkpoint
    after the burn-in is refused."""
    from benchmarks import reproduce_synthetic
    burn_in, killed, late = (str(tmp_path / n) for n in ("burn_in", "killed", "late"))
    assert _run(tiny_dataset, burn_in, stop_at_step=2, strategy="coopnet")["step"] == 2
    reproduce_synthetic._copy_run(burn_in, killed)
    assert _run(tiny_dataset, killed, stop_at_step=3)["step"] == 3
    assert _run(tiny_dataset, killed)["step"] == 4            # resumed: step 3 only
    comp2 = {n: v for n, v in _ckpt_tensors(killed, 2).items() if n.split("/")[0] in COMPETITORS}
    comp3, mod3 = _ckpt(killed, 3)
    comp4, mod4 = _ckpt(killed, 4)
    # step 2 (collaboration): the competitors (weights, statistics, optimizers) stay the
    # burn-in's bit for bit, M leaves its initialisation (its Adam counted one step);
    # step 3 (competition, after the resume): only R, F move
    assert sorted(comp2) == sorted(comp3) and not _diff(comp2, comp3)
    iterations = [v for k, v in mod3.items()
                  if k.startswith("moderator_optimizer/") and "iteration" in k]
    assert iterations == [1]
    assert not _diff(mod3, mod4) and _diff(comp3, comp4)
    assert _run(tiny_dataset, burn_in, stop_at_step=3, strategy="coopnet")["step"] == 3
    reproduce_synthetic._copy_run(burn_in, late)
    with pytest.raises(ValueError, match=r"ckpt-3: has no \['moderator_net', "
                                         r"'moderator_optimizer'\] but is at step 3"):
        _run(tiny_dataset, late)
