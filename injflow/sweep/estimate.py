r"""``--dry-run`` estimates: the time a trial still needs, from what the library measured on runs like it.

Every finished run records in ``status.json`` its optimiser ``step`` and ``train_seconds`` (wall seconds summed over
resumes, :meth:`injflow.rundir.RunDir.write_status`). A trial's cost per step is the mean over finished runs of
the **same architecture, data set (with the same options other than the split sizes: the same data shape) and
batch size**, found in the sweep's own trial folders and under the base config's ``run.root`` (``runs/``). Its
number of steps is that of a measured run with the same data, batch size and length settings; else
``max_epochs × ⌈n_train / batch_size⌉`` when ``data.options.n_train`` says the training-set size, capped by
``max_steps``; else ``max_steps`` (an upper bound); a ``train.max_time`` budget caps the estimate. Evaluation
time is the mean measured by this sweep's scored trials. Every estimate says where it came from; there is no
table of guessed step times.

Example:
    >>> steps_from_config({"data": {"batch_size": 100, "options": {"n_train": 1000}, "drop_last": False},
    ...                    "train": {"max_epochs": 3, "max_steps": -1}})
    (30, 'max_epochs x n_train / batch_size')
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .grid import Trial
from .records import TrialRecord

__all__ = ["Measured", "Estimate", "find_measured", "estimate_trial", "steps_from_config", "run_key"]

#: Data options that change how many points a split holds, not the shape of a point.
_SIZE_OPTIONS = ("n_train", "n_val", "n_test")
#: At most this many ``status.json`` files are read when looking for measured runs.
MAX_SCANNED = 5000


def run_key(config: dict[str, Any]) -> tuple[str, str, str, int]:
    """``(architecture, data set, data options other than sizes, batch size)`` of a config dict: runs with the same
    key cost the same per step."""
    data, model = config.get("data", {}), config.get("model", {})
    options = {k: v for k, v in (data.get("options") or {}).items() if k not in _SIZE_OPTIONS}
    return (str(model.get("architecture")), str(data.get("name")), json.dumps(options, sort_keys=True, default=str),
            int(data.get("batch_size", 0)))


def _length_key(config: dict[str, Any]) -> str:
    data, train = config.get("data", {}), config.get("train", {})
    return json.dumps([data.get("name"), data.get("options"), data.get("batch_size"), data.get("drop_last"),
                       train.get("max_epochs"), train.get("max_steps"), train.get("max_time")], sort_keys=True, default=str)


@dataclass(frozen=True)
class Measured:
    """A finished run: where it is, its cost key, its length key, its steps and wall seconds."""

    path: Path
    key: tuple[str, str, str, int]
    length: str
    steps: int
    seconds: float


@dataclass(frozen=True)
class Estimate:
    """Seconds a trial still needs (``None``: unknown) and where the numbers came from."""

    seconds: float | None
    source: str


def find_measured(roots: list[Path]) -> list[Measured]:
    """The finished runs under ``roots`` (searched recursively) with a measured ``train_seconds``."""
    import yaml

    out: list[Measured] = []
    seen: set[Path] = set()
    scanned = 0
    for root in roots:
        if not root.is_dir():
            continue
        for status_file in root.rglob("status.json"):
            scanned += 1
            if scanned > MAX_SCANNED:
                return out
            folder = status_file.parent.resolve()
            if folder in seen:
                continue
            seen.add(folder)
            try:
                status = json.loads(status_file.read_text())
                config = yaml.safe_load((folder / "config.yaml").read_text()) or {}
            except (OSError, ValueError, yaml.YAMLError):
                continue
            steps, seconds = status.get("step"), status.get("train_seconds")
            if status.get("state") != "completed" or not steps or not seconds or not isinstance(config, dict):
                continue
            out.append(Measured(folder, run_key(config), _length_key(config), int(steps), float(seconds)))
    return out


def steps_from_config(config: dict[str, Any]) -> tuple[int | None, str]:
    """The optimiser steps a config trains for, from its settings alone, and how that was found."""
    data, train = config.get("data", {}), config.get("train", {})
    n_train, batch = (data.get("options") or {}).get("n_train"), int(data.get("batch_size") or 1)
    max_steps, max_epochs = int(train.get("max_steps", -1)), int(train.get("max_epochs", 1))
    if isinstance(n_train, int) and n_train > 0:
        per_epoch = n_train // batch if data.get("drop_last") else math.ceil(n_train / batch)
        steps = max_epochs * max(per_epoch, 1)
        if max_steps != -1 and max_steps < steps:
            return max_steps, "max_steps"
        return steps, "max_epochs x n_train / batch_size"
    if max_steps != -1:
        return max_steps, "max_steps (an upper bound: the training-set size is not in the config)"
    return None, "unknown length (neither max_steps nor data.options.n_train)"


def estimate_trial(trial: Trial, record: TrialRecord, measured: list[Measured], *,
                   eval_seconds: float | None = None, needs_eval: bool = False) -> Estimate:
    """The remaining seconds of one trial (training left, and its validation scoring if it needs one)."""
    from ..config import config_to_dict, load_config

    if record.state in ("completed", "invalid", "failed"):
        return Estimate(0.0, record.state)
    config = config_to_dict(load_config(trial.config, list(trial.overrides)))
    key, length = run_key(config), _length_key(config)
    alike = [m for m in measured if m.key == key]
    same_length = [m for m in alike if m.length == length]
    if same_length:
        steps, how = round(sum(m.steps for m in same_length) / len(same_length)), "steps as measured"
    else:
        steps, how = steps_from_config(config)
    budget = config.get("train", {}).get("max_time")
    total: float | None
    if alike:
        per_step = sum(m.seconds for m in alike) / sum(m.steps for m in alike)
        where = sorted({str(m.path.parent) for m in alike})
        source = f"{per_step:.3g} s/step measured by {len(alike)} run(s) in {', '.join(where[:2])}" + \
            (" ..." if len(where) > 2 else "") + f"; {how}"
        total = None if steps is None else per_step * max(steps - (record.step or 0), 0)
    else:
        total, source = None, f"no finished run of {key[0]} on {key[1]} with batch {key[3]} to measure"
    if budget:
        left = max(float(budget) - (record.train_seconds or 0.0), 0.0)
        total, source = (left, f"the train.max_time budget; {source}") if total is None or total > left else (total, source)
    if record.state == "trained":
        total, source = 0.0, "trained; scoring left"
    if needs_eval and total is not None:
        if eval_seconds is None:
            source += "; scoring not estimated (no trial scored yet)"
        else:
            total += eval_seconds
            source += f"; scoring {eval_seconds:.0f} s as measured"
    return Estimate(total, source)
