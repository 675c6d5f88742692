r"""The sweep driver: trials on Ray Tune, selection, the selected trials' test evaluation, the tables.

:func:`run_sweep` (``injflow sweep``):

1. reads and validates the spec and every trial's config (:mod:`~injflow.sweep.spec`, :mod:`~injflow.sweep.grid`)
   — before Ray is imported, so a mistake is answered at once;
2. takes the sweep folder's lock (:class:`injflow.rundir.RunLock`, the library's only lock: a second sweep on the
   folder is refused in one line) and records the spec (``DIR/sweep.json``) and each trial (``trial.json``);
3. reads every trial's state from its run folder (:mod:`~injflow.sweep.records`) and sends the trials left to
   Ray Tune, one Ray trial each (:func:`injflow.sweep.trial.run_task`) with ``--cpus-per-trial`` CPUs and
   ``--gpus-per-trial`` GPUs (a fraction shares a GPU) and up to ``--max-failures`` restarts of a trial whose process
   dies; Ray starts on this machine's cores, or joins the cluster at ``--address`` / ``$RAY_ADDRESS``;
4. selects per group and criterion on the validation metrics (:mod:`~injflow.sweep.selection`) and sends the
   selected trials' test evaluation to Ray (plain Ray tasks with the same resources: there is nothing to tune);
5. writes ``DIR/trials.csv`` and ``DIR/selection.json`` and prints the summary.

A killed driver loses nothing: ``--resume`` reads the same states and runs only what is left (finished trials are
not trained again; interrupted ones resume from their checkpoints). Folder layout::

    DIR/.lock                 the sweep's lock (names the driver)
    DIR/sweep.json            the spec and the trials' names
    DIR/trials/<name>/        each trial's run folder (every injflow command works on it)
    DIR/ray/                  Ray Tune's own experiment records (not needed to resume)
    DIR/trials.csv            one row per trial
    DIR/selection.json        per group and criterion, the selected trial
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InjflowError, RunFolderError
from ..io import atomic_write_json
from ..rundir import RunDir
from .estimate import estimate_trial, find_measured
from .grid import Trial, expand_grid
from .progress import Progress, describe_ray_error
from .records import TRIAL_FILE, TrialRecord, read_json, read_record
from .selection import Selection, select
from .spec import SpecError, SweepSpec, default_dir, load_spec, spec_from_dict
from .tables import summary_lines, write_selection_json, write_trials_csv
from .trial import make_task

__all__ = ["RayMissingError", "SweepResult", "run_sweep", "plan_sweep", "ray_session", "RAY_INSTALL_HINT"]

RAY_INSTALL_HINT = "pip install 'injflow[sweep]' (or pip install 'ray[tune]')"
SWEEP_FILE = "sweep.json"
#: Environment for Ray: its console output off (the driver prints one line per trial), no per-trial loggers (each
#: trial has its run folder), and trials keep the driver's working directory (relative data paths keep working).
RAY_ENVIRONMENT = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "RAY_CHDIR_TO_TRIAL_DIR": "0",
                   "RAY_DEDUP_LOGS": "0", "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "1000000"}


class RayMissingError(InjflowError):
    """Ray is not installed; the message says what to install."""


@dataclass
class SweepResult:
    """What a sweep left: its spec and folder, one record per trial, the selections, and whether it is complete
    (every valid trial finished or failed, and every selected trial evaluated on the test split)."""

    spec: SweepSpec
    folder: Path
    records: list[TrialRecord]
    selections: list[Selection] = field(default_factory=list)
    complete: bool = False

    def record(self, name: str) -> TrialRecord:
        return next(r for r in self.records if r.name == name)

    def selected(self, group: str, metric: str | None = None) -> TrialRecord | None:
        """The record selected for ``group`` (by ``metric``; default: the first criterion)."""
        for s in self.selections:
            if s.group == group and s.trial and (metric is None or s.metric == metric):
                return self.record(s.trial)
        return None


def _resolve(spec: SweepSpec | str | Path | None, folder: str | Path | None, resume: bool) -> tuple[SweepSpec, Path]:
    """The spec and the sweep folder: ``spec`` may be a spec, a spec file, or (with ``resume``) the sweep folder."""
    if isinstance(spec, (str, Path)) and Path(spec).is_dir():
        if not resume:
            raise SpecError(f"{spec} is a folder: give a spec file, or continue the sweep in that folder with --resume")
        if folder is not None and Path(folder).resolve() != Path(spec).resolve():
            raise SpecError(f"--resume {spec} and --dir {folder} name two folders; give one")
        spec, folder = None, spec
    if spec is None:
        if folder is None:
            raise SpecError("give a spec file, or --resume with the sweep folder (injflow sweep --resume DIR)")
        stored = _stored(Path(folder))
        if stored is None:
            raise RunFolderError(f"{folder} holds no sweep to resume (no {SWEEP_FILE}); start one with a spec file")
        spec = spec_from_dict(stored["spec"], source=str(Path(folder) / SWEEP_FILE))
    elif not isinstance(spec, SweepSpec):
        spec = load_spec(spec)
    return spec, Path(folder if folder is not None else default_dir(spec)).resolve()


def _stored(folder: Path) -> dict[str, Any] | None:
    stored = read_json(folder / SWEEP_FILE)
    return stored if isinstance(stored, dict) else None


def _check_folder(folder: Path, resume: bool) -> None:
    stored = _stored(folder)
    if stored is not None and not resume:
        raise RunFolderError(f"{folder} already holds sweep {stored.get('name')!r} ({len(stored.get('trials', []))} "
                             f"trials): continue it with --resume, or choose another --dir")
    if stored is None and resume:
        raise RunFolderError(f"{folder} holds no sweep to resume (no {SWEEP_FILE}); run without --resume to start one")


def _trial_folder(folder: Path, trial: Trial) -> Path:
    return folder / "trials" / trial.name


def _check_identities(folder: Path, trials: list[Trial]) -> None:
    """A trial folder made from other overrides is refused (the old one would be resumed as if it were this)."""
    for trial in trials:
        path = _trial_folder(folder, trial) / TRIAL_FILE
        if trial.error is not None or not path.exists():
            continue
        stored = read_json(path)
        if stored != trial.identity():
            raise SpecError(f"{path.parent} was made from {stored.get('overrides') if isinstance(stored, dict) else '?'}, "
                            f"not {list(trial.overrides)}: the spec changed under the same trial name; move the folder "
                            f"away or use another --dir")


def _records(folder: Path, spec: SweepSpec, trials: list[Trial]) -> list[TrialRecord]:
    return [read_record(_trial_folder(folder, t), t, spec.evaluate, spec.test) for t in trials]


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[Any]:
    """Ray, started on this machine (or joined at ``address`` / ``$RAY_ADDRESS``) unless this process already runs
    it; stopped at the end if started here. Several sweeps inside one session share one Ray start-up (seconds)."""
    for key, value in RAY_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    try:
        import ray
    except ImportError:
        raise RayMissingError(f"injflow sweep runs on Ray, which is not installed: {RAY_INSTALL_HINT}") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 runtime_env={"env_vars": {k: os.environ[k] for k in RAY_ENVIRONMENT}})
    with _quiet_ray():
        try:
            yield ray
        finally:
            if started:
                ray.shutdown()


@contextlib.contextmanager
def _quiet_ray() -> Iterator[None]:
    """Ray's console messages off while the sweep runs: Tune's tracebacks of failed trials (the trial's line says
    what failed) and the raylet's notes on dead workers (the ``restarting`` line says it; Ray's own switch for its
    debugger, ``ray._private.worker._worker_logs_enabled``). Everything stays in Ray's session logs."""
    import ray._private.worker as ray_worker

    loggers = {name: logging.getLogger(name) for name in ("ray.tune", "ray.train", "ray.air")}
    levels = {name: log.level for name, log in loggers.items()}
    enabled = getattr(ray_worker, "_worker_logs_enabled", True)
    for log in loggers.values():
        log.setLevel(logging.CRITICAL)
    ray_worker._worker_logs_enabled = False
    try:
        yield
    finally:
        ray_worker._worker_logs_enabled = enabled
        for name, log in loggers.items():
            log.setLevel(levels[name])


def _trial_name(trial: Any) -> str:
    return str(trial.config["task"]["name"])


def _callback(progress: Progress, max_failures: int) -> Any:
    from ray import tune

    class _ProgressCallback(tune.Callback):
        """Ray Tune's trial events as :class:`Progress` lines."""

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            progress.started(_trial_name(trial))

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            progress.finished(_trial_name(trial), dict(trial.last_result or {}))

        def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            attempt = trial.run_metadata.num_failures + 1
            progress.restarting(_trial_name(trial), _error_text(trial), attempt, max_failures)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            progress.errored(_trial_name(trial), _error_text(trial), trial.run_metadata.num_failures)

    return _ProgressCallback()


def _error_text(trial: Any) -> str:
    path = getattr(trial, "error_file", None)
    try:
        text = Path(path).read_text() if path else ""
    except OSError:
        text = ""
    return describe_ray_error(text or str(getattr(trial, "get_error", lambda: "")() or "unknown error"))


def _tune(tasks: list[dict[str, Any]], *, stage: str, folder: Path, cpus: float, gpus: float, max_concurrent: int | None,
          max_failures: int, log: Callable[[str], None], metrics: list[str] | None) -> None:
    from ray import tune

    from .trial import run_task

    progress = Progress(stage, len(tasks), log=log, metrics=metrics)
    tuner = tune.Tuner(
        tune.with_resources(run_task, {"cpu": cpus, "gpu": gpus}),
        param_space={"task": tune.grid_search(tasks)},
        # reuse_actors: a worker process imports torch and Lightning (and loads Inception) once, not once per trial
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, trial_name_creator=_trial_name,
                                    trial_dirname_creator=_trial_name, reuse_actors=True),
        run_config=tune.RunConfig(name=f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=str(folder / "ray"),
                                  verbose=0, failure_config=tune.FailureConfig(max_failures=max_failures),
                                  callbacks=[_callback(progress, max_failures)]),
    )
    tuner.fit()


def _remote(tasks: list[dict[str, Any]], *, stage: str, cpus: float, gpus: float, max_concurrent: int | None,
            max_failures: int, log: Callable[[str], None], metrics: list[str] | None) -> None:
    """Runs tasks as plain Ray tasks (the selected trials' test scoring: nothing to tune, so no Tuner to start);
    Ray retries a task whose worker died up to ``max_failures`` times."""
    import ray

    from .trial import execute

    remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=max_failures)(execute)
    progress = Progress(stage, len(tasks), log=log, metrics=metrics)
    pending, running = list(tasks), {}
    limit = max_concurrent or len(tasks)
    while pending or running:
        while pending and len(running) < limit:
            task = pending.pop(0)
            running[remote.remote(task)] = task["name"]
            progress.started(task["name"])
        ready, _ = ray.wait(list(running), num_returns=1)
        for ref in ready:
            name = running.pop(ref)
            try:
                progress.finished(name, ray.get(ref))
            except Exception as e:  # noqa: BLE001 - Ray's error of the task (a dead worker after its retries...)
                progress.errored(name, describe_ray_error(str(e)), max_failures + 1)


def plan_sweep(spec: SweepSpec, folder: Path, trials: list[Trial], *, max_concurrent: int | None = None,
               cpus_per_trial: float = 1, log: Callable[[str], None] = print) -> float | None:
    """The ``--dry-run`` listing: every trial with its state and estimated remaining time (and where the estimate
    came from), and the total; returns the total seconds (``None`` if some trial has no estimate)."""
    from ..config import load_config

    records = _records(folder, spec, trials)
    roots = [folder] + list(dict.fromkeys(Path(load_config(c).run.root) for c in dict.fromkeys(t.config for t in trials)))
    measured = find_measured(roots)
    scored = [r.eval_seconds["val"] for r in records if "val" in r.eval_seconds]
    eval_seconds = sum(scored) / len(scored) if scored else None
    slots = max_concurrent or max(1, int((os.cpu_count() or 1) // max(cpus_per_trial, 1e-9)))
    log(f"sweep {spec.name} in {folder}: {len(trials)} trials; selection "
        f"{'all' if spec.select_all else ', '.join(f'{c.mode} {c.metric}' for c in spec.select)} per group"
        + (f"; test evaluation of the selected trials (n = {spec.test.n})" if spec.test else ""))
    total, unknown = 0.0, 0
    width = max((len(t.name) for t in trials), default=5)
    group_width = max((len(t.group) for t in trials), default=5)
    for trial, record in zip(trials, records):
        if record.state == "invalid":
            log(f"  {trial.name:<{width}}  invalid: {record.error}")
            continue
        estimate = estimate_trial(trial, record, measured, eval_seconds=eval_seconds, needs_eval=spec.evaluate is not None)
        state = record.state + (f"@{record.step}" if record.state == "interrupted" and record.step else "")
        seconds = "?" if estimate.seconds is None else f"{estimate.seconds:7.0f} s"
        if estimate.seconds is None:
            unknown += 1
        else:
            total += estimate.seconds
        log(f"  {trial.name:<{width}}  {trial.group:<{group_width}}  {state:<15} {seconds:>9}  ({estimate.source})")
    log(f"estimated: {total:.0f} s of trials, ~{total / slots / 60:.1f} min with {slots} concurrent"
        + (f"; {unknown} trial(s) without an estimate" if unknown else "")
        + ("; plus the selected trials' test evaluation" if spec.test else ""))
    return None if unknown else total


def run_sweep(
    spec: SweepSpec | str | Path | None,
    *,
    folder: str | Path | None = None,
    resume: bool = False,
    address: str | None = None,
    cpus_per_trial: float = 1,
    gpus_per_trial: float = 0,
    max_concurrent: int | None = None,
    max_failures: int = 2,
    retry_failed: bool = False,
    dry_run: bool = False,
    log: Callable[[str], None] = print,
) -> SweepResult:
    """Runs a sweep (see the module docstring).

    Arguments:
        spec: A :class:`~injflow.sweep.spec.SweepSpec`, a spec file, or — with ``resume`` — the sweep folder
            (the spec stored there is used).
        folder: The sweep folder (default ``runs/sweeps/<spec name>``).
        resume: Continue the sweep in ``folder`` (required when it holds one).
        address: A Ray cluster to run on (default: ``$RAY_ADDRESS``, else Ray starts here).
        cpus_per_trial: CPUs Ray reserves per trial (also its torch threads).
        gpus_per_trial: GPUs per trial; fractions share a GPU.
        max_concurrent: At most this many trials at once (default: as the resources allow).
        max_failures: Restarts of a trial whose process died (each resumes from the last checkpoint).
        retry_failed: Also run again the trials that failed in an earlier invocation.
        dry_run: Only print the trials with their states and estimated times.
        log: Where progress lines go.

    Returns:
        A :class:`SweepResult`.

    Raises:
        SpecError: the spec (or a config it shares with every trial) is wrong — before anything runs.
        RunFolderError, RunLockedError: the folder holds another sweep, none to resume, or is in use.
        RayMissingError: Ray is not installed.
    """
    if cpus_per_trial <= 0 or gpus_per_trial < 0 or max_failures < 0 or (max_concurrent is not None and max_concurrent < 1):
        raise SpecError("--cpus-per-trial must be > 0, --gpus-per-trial >= 0, --max-failures >= 0 and "
                        "--max-concurrent >= 1")
    spec, folder = _resolve(spec, folder, resume)
    trials = expand_grid(spec)
    if dry_run:
        plan_sweep(spec, folder, trials, max_concurrent=max_concurrent, cpus_per_trial=cpus_per_trial, log=log)
        records = _records(folder, spec, trials)
        return SweepResult(spec, folder, records, select(records, spec), False)
    if importlib.util.find_spec("ray") is None:
        raise RayMissingError(f"injflow sweep runs on Ray, which is not installed: {RAY_INSTALL_HINT}")
    if _stored(folder) is None and folder.is_dir() and any(p.name not in (".lock", ".lock.held") for p in folder.iterdir()):
        raise RunFolderError(f"{folder} is not empty and holds no sweep; choose another --dir")
    folder.mkdir(parents=True, exist_ok=True)
    with RunDir(folder).lock("sweep"):  # a second sweep on this folder stops here, in one line
        _check_folder(folder, resume)
        _check_identities(folder, trials)
        atomic_write_json(folder / SWEEP_FILE, {"name": spec.name, "spec": spec.to_dict(), "trials": [t.name for t in trials],
                                                "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        for trial in trials:
            path = _trial_folder(folder, trial) / TRIAL_FILE
            if trial.error is None and not path.is_file():
                atomic_write_json(path, trial.identity())
        return _run(spec, folder, trials, address=address, cpus=cpus_per_trial, gpus=gpus_per_trial,
                    max_concurrent=max_concurrent, max_failures=max_failures, retry_failed=retry_failed, log=log)


def _run(spec: SweepSpec, folder: Path, trials: list[Trial], *, address: str | None, cpus: float, gpus: float,
         max_concurrent: int | None, max_failures: int, retry_failed: bool, log: Callable[[str], None]) -> SweepResult:
    records = _records(folder, spec, trials)
    todo = [r for r in records if r.state in ("new", "interrupted", "trained", "running")
            or (retry_failed and r.state == "failed")]
    counts: dict[str, int] = {}
    for r in records:
        counts[r.state] = counts.get(r.state, 0) + 1
    log(f"[sweep] {spec.name} in {folder}: {len(trials)} trials ({', '.join(f'{n} {s}' for s, n in counts.items())}); "
        f"{len(todo)} to run" + ("" if retry_failed or not counts.get("failed") else
                                 " (failed trials are not retried: --retry-failed)"))
    for r in records:
        if r.state == "invalid":
            log(f"[sweep] invalid    {r.name}  {r.error}")
    metrics = None if spec.select_all else [c.metric for c in spec.select]
    with contextlib.ExitStack() as stack:
        ray_started = False

        def tune_stage(names: list[str], stage: str) -> None:
            nonlocal ray_started
            if not ray_started:
                t0 = time.perf_counter()
                running = "ray" in sys.modules and sys.modules["ray"].is_initialized()
                stack.enter_context(ray_session(address))
                ray_started = True
                log("[sweep] in this process's Ray session" if running else
                    f"[sweep] Ray ready in {time.perf_counter() - t0:.1f} s")
            tasks = [make_task(spec, t, _trial_folder(folder, t), stage, cpus=cpus, gpus=gpus)
                     for t in trials if t.name in names]
            if stage == "train":
                _tune(tasks, stage=stage, folder=folder, cpus=cpus, gpus=gpus, max_concurrent=max_concurrent,
                      max_failures=max_failures, log=log, metrics=metrics)
            else:
                _remote(tasks, stage=stage, cpus=cpus, gpus=gpus, max_concurrent=max_concurrent, max_failures=max_failures,
                        log=log, metrics=spec.test.metric_names() if spec.test is not None else None)

        if todo:
            tune_stage([r.name for r in todo], "train")
            records = _records(folder, spec, trials)
        selections = select(records, spec)
        if spec.test is not None:
            chosen = list(dict.fromkeys(s.trial for s in selections if s.trial))
            untested = [n for n in chosen if not next(r for r in records if r.name == n).test]
            if untested:
                tune_stage(untested, "test")
                records = _records(folder, spec, trials)
                selections = select(records, spec)
    for s in selections:
        if s.note:
            log(f"[sweep] no selection: {s.note}")
    write_trials_csv(folder / "trials.csv", records, selections)
    write_selection_json(folder / "selection.json", spec, selections)
    for line in summary_lines(records, selections, spec):
        log(line)
    log(f"[sweep] tables -> {folder / 'trials.csv'}, {folder / 'selection.json'}")
    left = [r for r in records if r.state in ("new", "interrupted", "trained", "running")]
    untested = [s for s in selections if spec.test is not None and s.trial and not s.test]
    return SweepResult(spec, folder, records, selections, complete=not left and not untested)
