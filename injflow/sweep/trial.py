r"""What runs inside a Ray worker for one trial: train (or resume) it through :mod:`injflow.api`, score it, report.

:func:`run_task` is the Ray Tune trainable; :func:`execute` does the work without Ray (and is what the tests call).
A task is a plain dict (it travels to the worker):

* ``stage: train`` — a finished trial is left as it is; a trial with a checkpoint (killed, preempted, or stopped
  by an error Ray retries) resumes from ``checkpoints/last.ckpt`` with :func:`injflow.api.resume` (the engine
  resumes bit-identically, so its final weights equal an uninterrupted trial's); otherwise it trains from the start
  with :func:`injflow.api.fit`. Then the validation scores, if the spec asks for them (kept in
  ``sweep-val.json``; a trial scored by the same evaluation is not scored again).
* ``stage: test`` — the test scores of a selected trial (``sweep-test.json``).

An error injflow can explain (:class:`~injflow.errors.InjflowError`: a config that fails on the data, a
non-finite loss...) is recorded in the trial's folder and reported as the trial's one-line error; the trial
returns normally, so Ray does not retry what would fail again, and the other trials go on. Anything else — the
process killed (SIGKILL, OOM, preemption: Ray sees the worker die), an unexpected exception — is Ray's to retry
(``--max-failures``), and the retry resumes from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import InjflowError, RunInterrupted, RunLockedError
from ..io import atomic_write_json
from ..rundir import RunDir
from .grid import Trial, trial_overrides
from .records import TRIAL_FILE, read_json, read_record, scores_file
from .spec import Evaluation, SweepSpec

__all__ = ["make_task", "execute", "run_task", "train_trial", "evaluate_trial"]

_KEEP_ON_RESTART = (TRIAL_FILE, ".lock", ".lock.held")


def make_task(spec: SweepSpec, trial: Trial, folder: Path, stage: str, *, cpus: float = 1, gpus: float = 0) -> dict[str, Any]:
    """The task of ``trial`` in ``folder`` for ``stage`` (``train`` or ``test``): what a worker needs, as plain data.

    A fresh trial trains with :func:`~injflow.sweep.grid.trial_overrides`; a resumed one keeps its saved config and
    gets only the sweep's settings (threads, device, checkpoint period), and runs to its end
    (``train.stop_after_steps`` ends one invocation, not the trial).
    """
    overrides = trial_overrides(trial, threads=max(1, int(cpus)), gpus=gpus)
    resume = [o for o in overrides if o not in trial.overrides] + ["train.stop_after_steps=null"]
    return {"name": trial.name, "folder": str(folder), "config": trial.config, "stage": stage, "overrides": overrides,
            "resume_overrides": resume, "evaluate": None if spec.evaluate is None else spec.evaluate.to_dict(),
            "test": None if spec.test is None else spec.test.to_dict(), "device": "cuda" if gpus > 0 else "cpu",
            "cwd": os.getcwd()}


def _evaluation(task: dict[str, Any], key: str) -> Evaluation | None:
    data = task.get(key)
    if data is None:
        return None
    data = dict(data)
    data["samplers"] = tuple(data["samplers"])
    return Evaluation(**data)


def _quiet() -> None:
    """One line per trial comes from the driver; the engine's own chatter stays out of the worker logs too."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def train_trial(task: dict[str, Any]) -> None:
    """Trains, resumes or leaves a trial (see the module docstring); raises what the engine raises."""
    import injflow.api as inj

    folder = Path(task["folder"])
    run = RunDir(folder)
    status = run.status() if run.status_file.is_file() else None
    if status is not None and status["state"] == "completed" and run.model.is_file():
        return
    if status is not None and run.is_run() and run.last_checkpoint.is_file():
        inj.resume(folder, overrides=list(task["resume_overrides"]), verbose=False)
        return
    # never reached a checkpoint (killed before its first one, or failed before training): start again, clean
    for child in list(folder.iterdir()) if folder.is_dir() else []:
        if child.name not in _KEEP_ON_RESTART:
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    inj.fit(task["config"], overrides=list(task["overrides"]), run_dir=folder, verbose=False)


def evaluate_trial(task: dict[str, Any], evaluation: Evaluation) -> None:
    """Scores a trained trial on ``evaluation.split`` unless its scores from the same evaluation are kept; an error
    injflow or the protocol can explain (e.g. ``n`` larger than the split) is kept instead of scores."""
    from .scoring import score_run

    folder = Path(task["folder"])
    path = scores_file(folder, evaluation.split)
    stored = read_json(path)
    if isinstance(stored, dict) and stored.get("evaluation") == evaluation.to_dict() and "error" not in stored:
        return
    try:
        scores = score_run(folder, evaluation, device=task.get("device", "cpu"))
    except (InjflowError, ValueError) as e:
        atomic_write_json(path, {"evaluation": evaluation.to_dict(), "error": f"{type(e).__name__}: {e}"})
        return
    atomic_write_json(path, {"evaluation": evaluation.to_dict(), **scores})


def _record_failure(folder: Path, error: Exception) -> None:
    """Marks the trial failed with its one-line error, unless the engine already did (or another process holds
    the folder: then its own status stands)."""
    run = RunDir(folder)
    status = run.status() if run.status_file.is_file() else {}
    if status.get("state") == "failed":
        return
    try:
        with run.lock("sweep"):
            run.write_status("failed", step=int(status.get("step") or 0), reason=f"{type(error).__name__}: {error}"[:500])
    except RunLockedError:
        pass


def execute(task: dict[str, Any]) -> dict[str, Any]:
    """Runs one task in this process; returns what the trial reports: ``sweep/state`` (``completed``, ``tested`` or
    ``failed``), ``sweep/error``, ``step``, ``train_seconds`` and its metrics (``val/...``, ``test/...``)."""
    _quiet()
    # relative paths in the overrides (data.options.path=X.npy) mean what they meant where the sweep started; on a
    # cluster node without that folder they must be absolute paths on shared storage (docs/sweeps.md)
    if task.get("cwd") and Path(task["cwd"]).is_dir():
        os.chdir(task["cwd"])
    folder = Path(task["folder"])
    evaluate, test = _evaluation(task, "evaluate"), _evaluation(task, "test")
    trial = Trial(task["name"], task["config"], tuple(task["overrides"]))
    try:
        if task["stage"] == "train":
            with contextlib.redirect_stdout(io.StringIO()):  # the engine's notes (e.g. removed temporary files)
                train_trial(task)
            if evaluate is not None:
                evaluate_trial(task, evaluate)
        elif task["stage"] == "test":
            assert test is not None, "a test task carries its evaluation"
            evaluate_trial(task, test)
        else:
            raise ValueError(f"unknown stage {task['stage']!r}")
    except RunLockedError as e:  # another process trains this folder: its status stands
        return {"sweep/state": "failed", "sweep/error": str(e)}
    except RunInterrupted:
        raise  # stopped by a signal with a checkpoint: Ray retries, and the retry resumes
    except InjflowError as e:
        _record_failure(folder, e)
        return {"sweep/state": "failed", "sweep/error": f"{type(e).__name__}: {e}".splitlines()[0]}
    record = read_record(folder, trial, evaluate, test)
    out: dict[str, Any] = {"sweep/state": "tested" if task["stage"] == "test" else record.state,
                           "sweep/error": record.error or "", "step": record.step or 0,
                           "train_seconds": record.train_seconds or 0.0, **record.metrics, **record.test}
    if record.state == "failed":
        out["sweep/state"] = "failed"
    return out


def run_task(config: dict[str, Any]) -> None:
    """The Ray Tune trainable: :func:`execute` on ``config["task"]``, then one ``tune.report`` of its result."""
    from ray import tune

    tune.report(execute(config["task"]))
