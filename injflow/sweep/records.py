r"""What a sweep knows about each trial, read from the trial's run folder — the only record there is.

A trial folder ``DIR/trials/<name>/`` is an ordinary injflow run folder (``config.yaml``, ``status.json``,
``checkpoints/``, ``metrics.csv``, ``model.pt``) plus three small files the sweep writes atomically:

* ``trial.json`` — what made the trial (base config and overrides); a folder made from another is refused;
* ``sweep-val.json`` — the validation scores the trial reported, with the evaluation that made them;
* ``sweep-test.json`` — the test scores of a selected trial.

Its state follows: ``invalid`` (its config is wrong; never run), ``new``, ``running`` (a live process trains
it), ``interrupted`` (killed or stopped: resumes from its last checkpoint), ``failed`` (the engine's status or the
evaluation says why), ``trained`` (training finished, the validation scores are missing or were made by another
evaluation) and ``completed``. A killed driver leaves nothing else to recover: ``--resume`` reads these states.

Example:
    >>> import tempfile
    >>> from injflow.sweep.grid import Trial
    >>> read_record(Path(tempfile.mkdtemp()), Trial("beta1", "c.yaml", ("method.beta=1",)), None).state
    'new'
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..rundir import RunDir
from .grid import Trial
from .spec import Evaluation

__all__ = ["TrialRecord", "read_record", "reported_terms", "scores_file", "read_json", "TRIAL_FILE", "STATES"]

TRIAL_FILE = "trial.json"
#: The states of a trial, in the order the summary lists them.
STATES = ("completed", "trained", "running", "interrupted", "new", "failed", "invalid")


def scores_file(folder: Path, split: str) -> Path:
    """Where a trial's scores on ``split`` (``val`` or ``test``) are kept."""
    return folder / f"sweep-{split}.json"


@dataclass
class TrialRecord:
    """A trial and what its folder says about it.

    Arguments:
        trial: The trial.
        state: One of :data:`STATES`.
        step: The optimiser step it reached (``None`` before it started).
        train_seconds: Wall seconds of its training, summed over resumes (``status.json``).
        metrics: What it reported: ``val/<term>`` of the last validation and the validation scores.
        test: Its test scores (``test/<score>``), when it was selected and evaluated.
        error: Why it failed or is invalid (one line).
        eval_seconds: Seconds of its evaluations (validation, test).
    """

    trial: Trial
    state: str
    step: int | None = None
    train_seconds: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    eval_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.trial.name


def read_json(path: Path) -> Any:
    """A JSON file's content; ``None`` if it is missing or unreadable (a sweep file is rewritten atomically)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def reported_terms(metrics_csv: Path) -> dict[str, float]:
    """The last logged value of every ``val/<term>`` column of a run's ``metrics.csv`` (the last validation).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "metrics.csv"
        >>> _ = path.write_text("step,train/loss_step,val/loss\\n9,2.0,\\n10,,1.5\\n19,1.0,\\n")
        >>> reported_terms(path)
        {'val/loss': 1.5}
    """
    out: dict[str, float] = {}
    try:
        with open(metrics_csv, newline="") as f:
            for row in csv.DictReader(f):
                for key, value in row.items():
                    if key and key.startswith("val/") and value not in (None, ""):
                        out[key] = float(value)
    except OSError:
        return {}
    return out


def _scores(folder: Path, evaluation: Evaluation | None, split: str) -> tuple[dict[str, Any] | None, str | None]:
    """``(stored scores, error)`` of ``split`` if they were made by ``evaluation``; ``(None, None)`` otherwise."""
    if evaluation is None:
        return None, None
    stored = read_json(scores_file(folder, split))
    if not isinstance(stored, dict) or stored.get("evaluation") != evaluation.to_dict():
        return None, None
    return stored, stored.get("error")


def read_record(folder: Path, trial: Trial, evaluate: Evaluation | None, test: Evaluation | None = None) -> TrialRecord:
    """The record of ``trial`` from its folder (see the module docstring for the states).

    Arguments:
        folder: The trial's run folder.
        trial: The trial.
        evaluate: The spec's validation evaluation (``None``: none is needed to be ``completed``).
        test: The spec's test evaluation (its scores are read when present).
    """
    if trial.error is not None:
        return TrialRecord(trial, "invalid", error=trial.error)
    run = RunDir(folder)
    if not run.status_file.is_file():
        return TrialRecord(trial, "new")
    status = run.status()
    state, step = status.get("state"), status.get("step")
    record = TrialRecord(trial, "new", step=None if step is None else int(step),
                         train_seconds=status.get("train_seconds"))
    if state == "running":
        record.state = "running"
    elif state == "interrupted":
        record.state = "interrupted"
    elif state == "failed":
        record.state, record.error = "failed", _one_line(status.get("reason") or "failed")
    elif state == "completed" and run.model.is_file():
        record.metrics = reported_terms(run.metrics_csv)
        val, error = _scores(folder, evaluate, "val")
        if error is not None:
            record.state, record.error = "failed", _one_line(error)
        elif evaluate is not None and val is None:
            record.state = "trained"
        else:
            record.state = "completed"
        if val is not None and error is None:
            record.metrics.update({f"val/{k}": v for k, v in val["scores"].items() if _finite(v)})
            record.eval_seconds["val"] = val.get("seconds", 0.0)
        tested, test_error = _scores(folder, test, "test")
        if tested is not None and test_error is None:
            record.test = {f"test/{k}": v for k, v in tested["scores"].items() if _finite(v)}
            record.eval_seconds["test"] = tested.get("seconds", 0.0)
        elif test_error is not None:
            record.error = _one_line(f"test evaluation: {test_error}")
    else:
        record.state, record.error = "failed", _one_line(status.get("reason") or f"status {state!r} without model.pt")
    return record


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _one_line(text: str) -> str:
    line = str(text).strip().splitlines()[0] if str(text).strip() else "unknown error"
    return line if len(line) <= 400 else line[:397] + "..."
