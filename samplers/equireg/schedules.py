"""When the EquiReg penalty is switched on during sampling.

Step convention: ``step`` is the sampler step index counted from 0 upward (0 = the first, noisiest
step; ``total_steps - 1`` = the last). ``total_steps`` is the number of sampler steps.

Schedules:

- ``every``: active at every step.
- ``constant``: active every ``period = max(1, int(1 / freq))`` steps, i.e. when
  ``step % period == 0`` (the period is truncated like in the released library: freq 0.1 fires at
  0, 10, 20, ...; freq 0.3 fires every 3 steps).
- ``cutoff``: as ``constant``, but off for the last ``cutoff_steps`` steps, i.e. active only if
  ``step < total_steps - cutoff_steps``.

Differences from the released library (solvers.md §2.4, §7.4), fixed here on purpose: its README
passes a count-down index (DPS's ``idx`` 999..0) in one example and a count-up index in another, so
its "cutoff" dropped either the first or the last steps; and its cutoff length was a fixed 100 steps
with ``step > total_steps - 100``, which is identically zero for ``total_steps < 100``. Here the step
always counts up, the cutoff length is a parameter, and a cutoff that would switch the penalty off at
every step is an error rather than a silent no-op.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SCHEDULES", "Schedule"]

SCHEDULES: tuple[str, ...] = ("every", "constant", "cutoff")


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class Schedule:
    """A validated schedule: ``Schedule("constant", freq=0.1).is_active(step, total_steps)``.

    ``freq`` must be in (0, 1] and is only meaningful for ``constant`` and ``cutoff``;
    ``cutoff_steps`` (K >= 0) only for ``cutoff``. Passing a non-default value that the chosen
    schedule would ignore is an error, so that no setting is silently dropped.
    """

    name: str = "every"
    freq: float = 1.0
    cutoff_steps: int = 0

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.name!r}; valid schedules: {', '.join(SCHEDULES)}")
        if isinstance(self.freq, bool) or not isinstance(self.freq, (int, float)):
            raise TypeError(f"freq must be a number in (0, 1], got {self.freq!r}")
        if not 0.0 < float(self.freq) <= 1.0:
            raise ValueError(f"freq must be in (0, 1], got {self.freq}")
        _check_int(self.cutoff_steps, "cutoff_steps", 0)
        if self.name == "every" and float(self.freq) != 1.0:
            raise ValueError(
                f"freq={self.freq} has no effect with schedule='every'; use schedule='constant' "
                "(or 'cutoff') to apply EquiReg every int(1/freq) steps"
            )
        if self.name != "cutoff" and self.cutoff_steps != 0:
            raise ValueError(
                f"cutoff_steps={self.cutoff_steps} has no effect with schedule={self.name!r}; "
                "use schedule='cutoff'"
            )

    @property
    def period(self) -> int:
        """Steps between two active steps (1 = every step)."""
        return max(1, int(1.0 / float(self.freq)))

    def is_active(self, step: int, total_steps: int | None = None) -> bool:
        """Whether the penalty is applied at sampler step ``step`` (0-based, counting up).

        ``total_steps`` is required by ``cutoff``; when given, ``step`` must lie in
        ``[0, total_steps)``.
        """
        _check_int(step, "step", 0)
        if total_steps is not None:
            _check_int(total_steps, "total_steps", 1)
            if step >= total_steps:
                raise ValueError(
                    f"step must be in [0, total_steps) counting up from 0; got step={step}, "
                    f"total_steps={total_steps}"
                )
        if self.name == "every":
            return True
        if self.name == "cutoff":
            if total_steps is None:
                raise ValueError("schedule='cutoff' needs total_steps (the number of sampler steps)")
            if self.cutoff_steps >= total_steps:
                raise ValueError(
                    f"schedule='cutoff' with cutoff_steps={self.cutoff_steps} >= total_steps={total_steps} "
                    "would switch EquiReg off at every step; use fewer cutoff_steps"
                )
            if step >= total_steps - self.cutoff_steps:
                return False
        return step % self.period == 0

    def active_steps(self, total_steps: int) -> list[int]:
        """All steps in ``range(total_steps)`` at which the penalty is applied."""
        return [s for s in range(total_steps) if self.is_active(s, total_steps)]
