r"""The sweep's tables: ``DIR/trials.csv`` (one row per trial), ``DIR/selection.json`` (per group and criterion, the
selected trial) and the summary a person reads at the end. Written atomically (:mod:`injflow.io`).

``trials.csv`` columns: ``trial, group, state, step, train_seconds``, one column per grid key, every metric the
trials reported (``val/...``), the test scores of the selected trials (``test/...``), ``selected`` (the criteria
that picked the trial) and ``error``.

Example:
    >>> from injflow.sweep.grid import Trial
    >>> from injflow.sweep.records import TrialRecord
    >>> rows = trial_rows([TrialRecord(Trial("beta1", "c", (), {"method.beta": 1}), "completed", 20, 1.5,
    ...                                {"val/nll": 2.0})], [])
    >>> rows[0]["trial"], rows[0]["method.beta"], rows[0]["val/nll"], rows[0]["selected"]
    ('beta1', 1, 2.0, '')
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from ..io import atomic_write_json, atomic_write_text
from .records import TrialRecord
from .selection import Selection
from .spec import SweepSpec

__all__ = ["trial_rows", "write_trials_csv", "write_selection_json", "summary_lines"]


def _selected_by(name: str, selections: list[Selection]) -> str:
    return ";".join(s.metric or "all" for s in selections if s.trial == name)


def trial_rows(records: list[TrialRecord], selections: list[Selection]) -> list[dict[str, Any]]:
    """One row per trial with the same columns (see the module docstring)."""
    keys = list(dict.fromkeys(k for r in records for k in r.trial.values))
    metrics = sorted({k for r in records for k in r.metrics})
    tests = sorted({k for r in records for k in r.test})
    rows = []
    for r in records:
        row: dict[str, Any] = {"trial": r.name, "group": r.trial.group, "state": r.state, "step": r.step,
                               "train_seconds": r.train_seconds}
        row.update({k: r.trial.values.get(k) for k in keys})
        row.update({k: r.metrics.get(k) for k in metrics})
        row.update({k: r.test.get(k) for k in tests})
        row["selected"] = _selected_by(r.name, selections)
        row["error"] = r.error
        rows.append(row)
    return rows


def _cell(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return "" if value is None else value


def write_trials_csv(path: str | Path, records: list[TrialRecord], selections: list[Selection]) -> Path:
    """Writes ``trials.csv``; returns its path."""
    rows = trial_rows(records, selections)
    text = io.StringIO(newline="")
    if rows:
        writer = csv.DictWriter(text, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows([{k: _cell(v) for k, v in row.items()} for row in rows])
    return atomic_write_text(path, text.getvalue())


def write_selection_json(path: str | Path, spec: SweepSpec, selections: list[Selection]) -> Path:
    """Writes ``selection.json``: the criteria and, per group and criterion, the selected trial, its overrides,
    grid values, metric and test scores."""
    return atomic_write_json(path, {
        "sweep": spec.name,
        "select": "all" if spec.select_all else [{"metric": c.metric, "mode": c.mode} for c in spec.select],
        "test": None if spec.test is None else spec.test.to_dict(),
        "selected": [s.to_dict() for s in selections],
    }, default=str)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def summary_lines(records: list[TrialRecord], selections: list[Selection], spec: SweepSpec) -> list[str]:
    """The end-of-sweep summary: one aligned line per trial (state, step, seconds, the selection metrics, which
    criteria selected it, the error) and a count per state."""
    metrics = [c.metric for c in spec.select] if not spec.select_all else []
    header = ["trial", "group", "state", "step", "train s", *metrics, "selected", "error"]
    table = [header]
    for r in records:
        table.append([r.name, r.trial.group, r.state, _fmt(r.step),
                      _fmt(None if r.train_seconds is None else round(r.train_seconds, 1)),
                      *[_fmt(r.metrics.get(m)) for m in metrics], _selected_by(r.name, selections) or "-",
                      (r.error or "")[:100]])
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths)) + "  " + row[-1] for row in table]
    counts = {}
    for r in records:
        counts[r.state] = counts.get(r.state, 0) + 1
    lines.append(", ".join(f"{n} {state}" for state, n in counts.items()))
    return [line.rstrip() for line in lines]
