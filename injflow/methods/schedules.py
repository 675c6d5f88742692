r"""Weight schedules: a hyper-parameter as a function of the optimiser step.

A config value for a schedulable weight is either a number (constant) or a mapping with a
``schedule`` key:

* ``{schedule: linear, start: 20, end: 40}`` — linear from ``start`` at step 0 to ``end`` at the last
  step (or at ``steps``, then held), as FIF's β in App. E.3; with ``begin`` it holds ``start`` until that step
  (a warm-up such as Caterini et al.'s likelihood weight, 0 → 1 between two epochs); a run with a wall-clock
  budget (``train.max_time``) goes from ``start`` to ``end`` over the budget instead;
* ``{schedule: penalty, start: 1, rate: 0.001, nu: 1.3}`` — :math:`\text{start} + \text{rate}\cdot i^\nu`,
  Kumar et al.'s penalty growth :math:`1 + i^\nu/1000` (§4);
* ``{schedule: constant, value: 10}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import OptionError

__all__ = ["Schedule", "Constant", "Linear", "Penalty", "as_schedule", "SCHEDULES"]


class Schedule:
    """A weight as a function of ``(step, total_steps, progress)``.

    ``total_steps`` may be ``None`` when unknown; ``progress`` in [0, 1] is the spent fraction of a wall-clock
    budget (``None`` when the run is measured in steps).
    """

    def __call__(self, step: int, total_steps: int | None = None, progress: float | None = None) -> float:  # pragma: no cover
        raise NotImplementedError

    def bounds(self) -> tuple[float, float]:
        """The smallest and largest values over any training length (for validation)."""
        raise NotImplementedError  # pragma: no cover

    @property
    def spans_run(self) -> bool:
        """Whether the schedule is defined over the run's length (so changing the length bends it)."""
        return False


@dataclass(frozen=True)
class Constant(Schedule):
    """A constant weight."""

    value: float

    def __call__(self, step: int, total_steps: int | None = None, progress: float | None = None) -> float:
        return float(self.value)

    def bounds(self) -> tuple[float, float]:
        return (float(self.value), float(self.value))


@dataclass(frozen=True)
class Linear(Schedule):
    r"""Linear interpolation :math:`a + (b - a)\,\mathrm{clip}\big((i - i_0) / (n - 1 - i_0), 0, 1\big)`.

    :math:`n` = ``steps`` or the run's length, :math:`i_0` = ``begin`` (default 0): ``start`` is held until step
    ``begin``, ``end`` from step n − 1 on. Over a wall-clock budget (``progress`` given, ``steps`` not), the fraction
    is the spent share of the budget.

    Example:
        >>> [Linear(0, 1, steps=5, begin=2)(i) for i in range(6)]
        [0.0, 0.0, 0.0, 0.5, 1.0, 1.0]
    """

    start: float
    end: float
    steps: int | None = None
    begin: int = 0

    def __call__(self, step: int, total_steps: int | None = None, progress: float | None = None) -> float:
        if self.steps is None and progress is not None:
            frac = min(1.0, max(0.0, float(progress)))
            return float(self.start + (self.end - self.start) * frac)
        n = self.steps if self.steps is not None else total_steps
        if not n or n - 1 <= self.begin:  # unknown length, or the ramp would start at or after the last step
            return float(self.start)
        frac = min(1.0, max(0.0, (step - self.begin) / (n - 1 - self.begin)))
        return float(self.start + (self.end - self.start) * frac)

    def bounds(self) -> tuple[float, float]:
        return (min(self.start, self.end), max(self.start, self.end))

    @property
    def spans_run(self) -> bool:
        return self.steps is None


@dataclass(frozen=True)
class Penalty(Schedule):
    r"""Penalty-method growth :math:`\text{start} + \text{rate}\cdot i^{\nu}` (Kumar et al. 2020, §4: 1 + i^ν/1000)."""

    start: float = 1.0
    rate: float = 1e-3
    nu: float = 1.0

    def __call__(self, step: int, total_steps: int | None = None, progress: float | None = None) -> float:
        return float(self.start + self.rate * float(step) ** self.nu)

    def bounds(self) -> tuple[float, float]:
        return (self.start, float("inf")) if self.rate >= 0 else (float("-inf"), self.start)


SCHEDULES: dict[str, type[Schedule]] = {"constant": Constant, "linear": Linear, "penalty": Penalty}


def as_schedule(value: Any, key: str = "value") -> Schedule:
    """Turns a number or a ``{schedule: ..., ...}`` mapping into a :class:`Schedule`.

    Arguments:
        value: A number, a :class:`Schedule`, or a mapping with a ``schedule`` key and its arguments.
        key: The config key, named in error messages.

    Returns:
        The schedule.

    Example:
        >>> as_schedule({"schedule": "linear", "start": 20, "end": 40})(5, total_steps=11)
        30.0
    """
    if isinstance(value, Schedule):
        return value
    if isinstance(value, bool):
        raise OptionError(f"expected a number or a schedule mapping, got {value!r}", key=key)
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise OptionError(f"must be a finite number, got {value}", key=key)
        return Constant(float(value))
    if isinstance(value, dict):
        options = dict(value)
        name = options.pop("schedule", None)
        if not isinstance(name, str) or name not in SCHEDULES:
            raise ValueError(f"{key}.schedule: must be one of {sorted(SCHEDULES)}, got {name!r}")
        for k, v in options.items():
            if v is None and k == "steps":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"{key}.{k}: expected a number, got {v!r}")
            if not math.isfinite(v):
                raise ValueError(f"{key}.{k}: must be a finite number, got {v}")
        try:
            sched = SCHEDULES[name](**options)
        except TypeError as e:
            raise OptionError(f"bad arguments for schedule {name!r}: {e}", key=key) from None
        if isinstance(sched, Linear) and sched.steps is not None and sched.steps < 1:
            raise ValueError(f"{key}.steps: must be >= 1, got {sched.steps}")
        if isinstance(sched, Penalty) and not sched.nu > 0:
            raise ValueError(f"{key}.nu: the penalty grows as i^nu, so nu must be > 0, got {sched.nu}")
        if isinstance(sched, Penalty) and sched.rate < 0:
            raise ValueError(f"{key}.rate: a penalty weight grows, so rate must be >= 0, got {sched.rate}")
        if isinstance(sched, Linear) and (isinstance(sched.begin, bool) or not isinstance(sched.begin, int) or sched.begin < 0):
            raise ValueError(f"{key}.begin: must be an int >= 0, got {sched.begin!r}")
        if isinstance(sched, Linear) and sched.steps is not None and sched.begin >= sched.steps - 1:
            raise ValueError(f"{key}.begin: must be < steps - 1 = {sched.steps - 1}, got {sched.begin}")
        return sched
    raise OptionError(f"expected a number or a schedule mapping, got {value!r}", key=key)
