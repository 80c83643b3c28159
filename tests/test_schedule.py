"""The epoch protocol (`training/schedule.py`): burn-in / P² estimation / quantile epochs
and the phase hook (a strategy's stages) against hand-written tables."""
import pytest

from coopnet_tf.training.schedule import EpochSchedule, Stages, quantile_schedule
from coopnet_tf.training.step import Phase


def test_quantile_schedule_paper_defaults():
    # 5 burn-in epochs, P² estimating in the last one, quantiles used from epoch 5 on.
    assert [quantile_schedule(e) for e in range(7)] == [
        (False, False)] * 4 + [(False, True), (True, True), (True, True)]
    assert quantile_schedule(0, burn_in_epochs=0) == (True, True)
    assert quantile_schedule(2, burn_in_epochs=4, estimation_epochs=2) == (False, True)


def test_epoch_schedule_phases_and_boundaries():
    s = EpochSchedule(steps_per_epoch=10, burn_in_epochs=2, estimation_epochs=1)
    table = {0: Phase(True, False), 9: Phase(True, False), 10: Phase(True, True),
             19: Phase(True, True), 20: Phase(False, True), 35: Phase(False, True)}
    for step, phase in table.items():
        assert s.phase(step) == phase, step
    assert [s.next_change(t) for t in (0, 9, 10, 25)] == [10, 10, 20, 30]
    assert s.phase(0).stage == ""


def test_alternating_stages_in_steps():
    """Competitive Collaboration's alternation: 3 steps of each, cycling, cut mid-epoch."""
    s = EpochSchedule(10, burn_in_epochs=0,
                      stages=(("competition", "collaboration"), (3, 3), "steps", True))
    stages = [s.phase(t).stage for t in range(14)]
    assert stages == (["competition"] * 3 + ["collaboration"] * 3) * 2 + ["competition"] * 2
    # chunks end at stage changes and at the epoch end, whichever comes first
    assert [s.next_change(t) for t in (0, 2, 3, 6, 9, 10, 12)] == [3, 3, 6, 9, 10, 12, 15]


def test_sequential_stages_in_epochs():
    """Three stages of 1, 2 and 1 epochs (Lee et al.-style); the last one stays."""
    s = EpochSchedule(5, burn_in_epochs=0,
                      stages=Stages(("a", "b", "c"), (1, 2, 1), "epochs", False))
    assert [s.phase(5 * e).stage for e in range(6)] == ["a", "b", "b", "c", "c", "c"]
    assert s.next_change(0) == 5 and s.next_change(7) == 10 and s.next_change(26) == 30


@pytest.mark.parametrize("bad", [
    (("a",), (1, 2)), (("a", "b"), (1, 0)), (("a",), (1,), "minutes"), ((), ())])
def test_bad_stages_are_refused(bad):
    with pytest.raises(ValueError):
        EpochSchedule(10, 0, stages=bad)
