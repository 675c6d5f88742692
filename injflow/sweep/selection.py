r"""Selection: per group and criterion, the finished trial with the best reported metric.

Only ``completed`` trials take part, and only the metrics they reported on the validation split (or their
training terms): a criterion never reads a ``test/`` metric (the spec refuses one), so the test split cannot leak
into the choice (FIF App. E.4: "use the model which achieves the best FID on the validation set"; Kumar §4: the
best post-fit-GMM FID). Ties go to the trial listed first; a group where no trial reported the metric selects
nothing and says why. With ``select: all`` every completed trial is selected (tables without a search).

Example:
    >>> from injflow.sweep.grid import Trial
    >>> from injflow.sweep.records import TrialRecord
    >>> from injflow.sweep.spec import spec_from_dict
    >>> spec = spec_from_dict({"grid": {"method.beta": [1, 10]}}, name="demo")
    >>> records = [TrialRecord(Trial("beta1", "c", ("method.beta=1",)), "completed", metrics={"val/nll_D": 2.0}),
    ...            TrialRecord(Trial("beta10", "c", ("method.beta=10",)), "completed", metrics={"val/nll_D": 1.5})]
    >>> [(s.group, s.trial, s.value) for s in select(records, spec)]
    [('all', 'beta10', 1.5)]
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .records import TrialRecord
from .spec import SweepSpec

__all__ = ["Selection", "select"]


@dataclass
class Selection:
    """The winner of one group under one criterion.

    Arguments:
        group: The group.
        metric: The criterion's metric (``None`` for ``select: all``).
        mode: ``min`` or ``max``.
        trial: The selected trial's name (``None`` when no trial of the group reported the metric).
        value: Its metric.
        overrides: Its overrides (the spec's ``set`` and its grid values).
        values: Its grid values.
        candidates: How many trials of the group reported the metric.
        note: Why nothing was selected, if so.
        test: The selected trial's test scores (filled in once it was evaluated).
    """

    group: str
    metric: str | None
    mode: str | None
    trial: str | None
    value: float | None = None
    overrides: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    candidates: int = 0
    note: str | None = None
    test: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def select(records: list[TrialRecord], spec: SweepSpec) -> list[Selection]:
    """Per group (in the order of the trials) and criterion, the best ``completed`` trial; see the module docstring."""
    groups = list(dict.fromkeys(r.trial.group for r in records))
    out: list[Selection] = []
    for group in groups:
        members = [r for r in records if r.trial.group == group]
        done = [r for r in members if r.state == "completed"]
        if spec.select_all:
            out += [Selection(group, None, None, r.name, None, list(r.trial.overrides), dict(r.trial.values), 1,
                              test=dict(r.test)) for r in done]
            continue
        for criterion in spec.select:
            assert not criterion.metric.startswith("test/"), "the spec refuses test/ criteria"
            scored = [(r, r.metrics[criterion.metric]) for r in done
                      if isinstance(r.metrics.get(criterion.metric), (int, float)) and math.isfinite(r.metrics[criterion.metric])]
            best: tuple[TrialRecord, float] | None = None
            for record, value in scored:
                if best is None or criterion.better(value, best[1]):
                    best = (record, value)
            if best is None:
                reported = sorted({k for r in done for k in r.metrics})
                note = (f"no completed trial of group {group!r} reported {criterion.metric}"
                        + (f" (they report {reported})" if reported else f" ({len(done)} of {len(members)} completed)"))
                out.append(Selection(group, criterion.metric, criterion.mode, None, note=note))
                continue
            record, value = best
            out.append(Selection(group, criterion.metric, criterion.mode, record.name, value, list(record.trial.overrides),
                                 dict(record.trial.values), len(scored), test=dict(record.test)))
    return out
