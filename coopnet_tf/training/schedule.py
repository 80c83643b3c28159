"""The epoch protocol in one place: which `Phase` the train step runs at each global step.

The paper's protocol (Sec. 4.4; docs/decisions.md D11): ``burn_in_epochs`` epochs of
burn-in (Monodepth2 loss for depth+pose, uniform flow weights), P² estimating the
quantiles during the last ``estimation_epochs`` of them; from then on, every epoch uses
the quantiles frozen at the end of the previous one and estimates the next ones.

The phase hook. A `Phase` has a third field, ``stage``: the name of a strategy's own
sub-phase ("" when it has none). A strategy contributes stages by exposing ``stages``, a
plain `Stages` tuple (names, lengths, unit, repeat), so that it needs no import from
training; `EpochSchedule` turns it into the ``stage`` of every step's phase and cuts the
loop's `tf.function` calls at stage changes (one trace per distinct phase). Examples:

* Competitive Collaboration (Ranjan et al.): alternating competition / collaboration
  every P steps: ``Stages(("competition", "collaboration"), (P, P), "steps", True)``;
* Lee et al.'s three phases (`factories.LeeMethod`, the stages of a method rather than of
  a strategy): ``Stages(("phase1", "phase2", "phase3"), (e1, e2, 1), "epochs", False)``
  (the last stage lasts until the end).

The stage is a pure function of the global step (saved in every checkpoint), so a
resumed run continues in the stage it was interrupted in.
"""
from typing import NamedTuple, Optional, Sequence, Tuple

from coopnet_tf.training.step import Phase

UNITS = ("epochs", "steps")


def quantile_schedule(epoch, burn_in_epochs=5, estimation_epochs=1):
    """(use_quantiles, update_quantiles) for a 0-based epoch (docs/decisions.md D11).

    Quantile masks are used from epoch `burn_in_epochs` on; the estimators run from
    `estimation_epochs` epochs before that (the last burn-in epoch by default), so that
    the first masked epoch has quantiles. Works on Python ints and int tensors.
    """
    return epoch >= burn_in_epochs, epoch >= burn_in_epochs - estimation_epochs


class Stages(NamedTuple):
    """A strategy's own sub-phases: ``names[i]`` lasts ``lengths[i]`` ``unit``s; with
    ``repeat`` the sequence cycles, else the last stage lasts until the end."""
    names: Tuple[str, ...]
    lengths: Tuple[int, ...]
    unit: str = "epochs"
    repeat: bool = False

    def validate(self) -> "Stages":
        if not self.names or len(self.names) != len(self.lengths):
            raise ValueError(f"stages need as many names as lengths: {self}")
        if any(int(n) < 1 for n in self.lengths):
            raise ValueError(f"stage lengths must be >= 1: {self}")
        if self.unit not in UNITS:
            raise ValueError(f"stage unit must be one of {UNITS}: {self.unit!r}")
        return self

    def _at(self, position: int) -> Tuple[int, Optional[int]]:
        """(stage index, position where the next stage starts or None) at ``position``."""
        total = sum(self.lengths)
        start = (position // total) * total if self.repeat else 0
        for i, length in enumerate(self.lengths):
            if position < start + length:
                return i, start + length
            start += length
        return len(self.names) - 1, None   # not repeating: the last stage stays


class EpochSchedule:
    """Maps a global step to its epoch and `Phase`, and to the next step where the phase
    may change (the end of the loop's current `tf.function` chunk)."""

    def __init__(self, steps_per_epoch: int, burn_in_epochs: int, estimation_epochs: int = 1,
                 stages: Optional[Sequence] = None):
        self.steps_per_epoch = int(steps_per_epoch)
        self.burn_in_epochs = int(burn_in_epochs)
        self.estimation_epochs = int(estimation_epochs)
        self.stages = Stages(*stages).validate() if stages else None

    @property
    def burn_in_steps(self) -> int:
        return self.burn_in_epochs * self.steps_per_epoch

    def epoch(self, step: int) -> int:
        return int(step) // self.steps_per_epoch

    def _stage_position(self, step: int) -> int:
        return self.epoch(step) if self.stages.unit == "epochs" else int(step)

    def phase(self, step: int) -> Phase:
        """The static step phase at global ``step``."""
        use_quantiles, update = quantile_schedule(
            self.epoch(step), self.burn_in_epochs, self.estimation_epochs)
        stage = ""
        if self.stages is not None:
            stage = self.stages.names[self.stages._at(self._stage_position(step))[0]]
        return Phase(burn_in=not use_quantiles, update_quantiles=bool(update), stage=stage)

    def next_change(self, step: int) -> int:
        """The first step after ``step`` at which the phase may differ: the end of the
        epoch, or earlier where a stage ends."""
        end = (self.epoch(step) + 1) * self.steps_per_epoch
        if self.stages is not None:
            _, next_start = self.stages._at(self._stage_position(step))
            if next_start is not None:
                if self.stages.unit == "epochs":
                    next_start *= self.steps_per_epoch
                end = min(end, next_start)
        return end
