"""Runs a fit from a config, in three steps that each do one thing.

1. :func:`prepare_run` — loads and checks the data, builds the nets (the method is the config's, built once when the
   config was validated), runs one dry loss on a few rows (which names every term, so ``train.monitor`` is checked, and
   turns a shape mismatch or a non-finite start into a one-line error), and checks the run folder and the resume
   (:mod:`injflow.train.resume`). Nothing is written: every error that can be found before training is found here,
   and nothing here imports Lightning.
2. :func:`~injflow.train.trainer.train_run` — trains with Lightning; :func:`fit_config` holds the run folder's lock
   and writes ``config.yaml`` and ``status.json`` around it (graceful stop on SIGTERM/SIGINT with a resumable
   checkpoint; never a checkpoint of non-finite weights).
3. :func:`finish_run` — exports the model, fits the post-fit samplers (:func:`injflow.loading.ensure_samplers`),
   writes ``model.pt`` (last: a run with ``model.pt`` is finished) and the pictures, and marks the run ``completed``.

:func:`fit_config` chains them. The layout of the folder is :class:`injflow.rundir.RunDir`'s.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import Config, ConfigError, check_dimensions, config_to_dict, run_name
from ..data import DataSplits
from ..errors import DataError, InjflowError, NonFiniteLossError, RunFolderError, RunInterrupted
from ..io import load_torch
from ..loading import ensure_samplers, load_run_data
from ..methods import Clock
from ..model import MAX_SAMPLER_POINTS, InjectiveFlow
from ..rundir import RunDir
from ..scaling import fit_data_scaler, scale_splits
from ..threads import limit_threads
from ..tracking import check_trackers
from .resume import check_resume, extends_run

__all__ = [
    "FitResult",
    "RunPlan",
    "REQUIRED_TERMS",
    "fit_config",
    "prepare_run",
    "finish_run",
    "resume_run",
    "new_run_dir",
    "print_artefacts",
]

#: Terms every method returns (:meth:`injflow.methods.Method.loss`): the objective, and what lets any two runs be
#: compared on one split.
REQUIRED_TERMS = ("loss", "reconstruction", "latent_sq_norm")


@dataclass
class FitResult:
    """What :func:`fit_config` returns: the run folder, the model (``None`` if stopped early), and the artefacts."""

    run_dir: Path
    flow: InjectiveFlow | None
    completed: bool
    global_step: int
    artefacts: dict[str, Path] = field(default_factory=dict)


@dataclass
class RunPlan:
    """Everything :func:`prepare_run` checked: what training needs, with nothing written yet."""

    config: Config
    data: DataSplits
    flow: InjectiveFlow
    run: RunDir
    resume: bool
    built_here: bool
    terms: list[str]
    monitor: str
    resume_step: int = 0
    csv_rows: int = 0
    #: The splits in the model's units (``data`` scaled by the model's scaler, :mod:`injflow.scaling`): what the
    #: nets train on. ``data`` stays in the user's units for samplers, pictures and metrics.
    train_data: DataSplits | None = None

    def __post_init__(self) -> None:
        if self.train_data is None:
            self.train_data = self.data


def new_run_dir(config: Config) -> Path:
    """``run.dir`` if set, else a fresh ``<run.root>/<run.name>-<YYYYmmdd-HHMMSS>`` folder (``run.name`` defaults to
    ``<method>-<data>``: ``fif-sinusoid``, or ``fif-cancer`` for ``data.options.path=cancer.csv``)."""
    if config.run.dir:
        return Path(config.run.dir)
    name = run_name(config)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(config.run.root) / f"{name}-{stamp}"
    path, i = base, 1
    while path.exists():
        path, i = Path(f"{base}-{i}"), i + 1
    return path


# --------------------------------------------------------------------------- 1. prepare


def _estimated_steps(config: Config, n_train: int) -> int:
    t = config.train
    per_epoch = n_train // config.data.batch_size if config.data.drop_last else -(-n_train // config.data.batch_size)
    steps = t.max_epochs * max(per_epoch, 1)
    return min(steps, t.max_steps) if t.max_steps != -1 else steps


def _dry_run(flow: InjectiveFlow, config: Config, data: DataSplits) -> dict[str, Tensor]:
    """One loss evaluation on the first rows, leaving weights, buffers and the RNG exactly as they were."""
    n = min(data.train.shape[0], config.data.batch_size, 16)
    x = data.train[:n]
    c = data.train_labels[:n] if data.train_labels is not None else None
    device = flow.device
    clock = Clock(0, _estimated_steps(config, data.train.shape[0]), 0.0 if config.train.max_time else None)
    state = {k: v.detach().clone() for k, v in flow.state_dict().items()}  # BatchNorm statistics move in a forward
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            terms = config.method.loss(x.to(device), clock, flow.given(None if c is None else c.to(device)))
    finally:
        flow.load_state_dict(state)
        flow.zero_grad(set_to_none=True)
    missing = [k for k in REQUIRED_TERMS if k not in (terms if isinstance(terms, dict) else {})]
    if missing:
        raise ConfigError(f"method {config.method.name!r} must return the terms {list(REQUIRED_TERMS)} (see "
                          f"injflow.methods.Method.loss); it returned {sorted(terms or {})}, without {missing}",
                          key="method.name")
    return {k: v.detach() for k, v in terms.items()}


def _check_monitor(config: Config, data: DataSplits, terms: list[str]) -> str:
    monitor = config.train.monitor
    if data.val is None and monitor.startswith("val/"):
        monitor = "train/loss_epoch"  # nothing to validate on: the best checkpoint follows the training loss
    stage, term = monitor.split("/", 1)
    known = terms if stage == "val" else terms + [f"{t}_epoch" for t in terms]
    if term not in known:
        choices = ", ".join(f"val/{t}" for t in terms) if data.val is not None else ", ".join(f"train/{t}_epoch" for t in terms)
        raise ConfigError(f"{monitor!r} is not a logged term of method {config.method.name!r}; choose from {choices}",
                          key="train.monitor")
    sched = config.optim.scheduler
    if sched.name == "plateau":
        stage, term = sched.monitor.split("/", 1)
        if term not in known or (stage == "val" and data.val is None):
            raise ConfigError(f"{sched.monitor!r} is not logged by this run; choose from "
                              f"{', '.join(f'val/{t}' for t in terms) if data.val is not None else 'train/<term>_epoch'}",
                              key="optim.scheduler.monitor")
    return monitor


def _check_devices(config: Config) -> None:
    """An accelerator the machine does not have is a config error now, not a Lightning traceback after set-up."""
    accelerator = config.train.accelerator
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{accelerator!r} asks for a GPU but this machine has none that torch can use "
                          f"(torch.cuda.is_available() is false); use train.accelerator=cpu (or auto)",
                          key="train.accelerator")
    if accelerator == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError("'mps' asks for Apple's Metal backend, which this machine lacks; use train.accelerator=cpu",
                          key="train.accelerator")


def _check_samplers(config: Config, data: DataSplits) -> None:
    n = min(data.train.shape[0], MAX_SAMPLER_POINTS)
    k = config.train.gmm_components
    if "gmm" in config.train.samplers and k > n:
        raise ConfigError(f"{k} GMM components cannot be fitted to the {n} training codes; use at most {n} (or drop "
                          f"gmm from train.samplers)", key="train.gmm_components")


def _build_flow(config: Config, data: DataSplits) -> InjectiveFlow:
    import random

    import numpy as np

    # The initial weights depend on the seed only (what Lightning's seed_everything seeds, without importing it).
    random.seed(config.train.seed)
    np.random.seed(config.train.seed)
    torch.manual_seed(config.train.seed)
    try:
        return InjectiveFlow.from_config(config, data_shape=data.data_shape, data_kind=data.kind,
                                         image_shape=data.image_shape, num_classes=data.num_classes, prepare=False)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e), key="model.options") from None
    except (RuntimeError, MemoryError) as e:  # e.g. the allocator refusing layers of absurd width
        raise ConfigError(f"the nets cannot be built ({str(e).splitlines()[0][:200]})", key="model.options") from None


def prepare_run(
    config: Config,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    flow: InjectiveFlow | None = None,
    data: DataSplits | None = None,
) -> RunPlan:
    """Checks everything about a run that can be checked before training; writes nothing.

    Arguments:
        config: A validated config (its method is the one trained).
        run_dir: The run folder (default: :func:`new_run_dir`).
        resume: Continue the folder's run from its last checkpoint.
        overwrite: Replace a run the folder already holds (its artefacts are cleared when training starts).
        flow: Your own model (default: the nets ``config.model`` describes).
        data: Your own splits (default: the data set ``config.data`` names).

    Raises:
        ConfigError, DataError, CheckpointError, RunFolderError: one line naming the key, split or file.
    """
    t = config.train
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    built_here = flow is None
    data = data if data is not None else load_run_data(config)
    check_dimensions(config, data.data_shape)
    _check_devices(config)
    if config.model.conditional and data.num_classes is None:
        raise ConfigError(f"data set {config.data.name!r} has no labels; use a labelled one (e.g. conditional_mnist) or "
                          f"set model.conditional=false", key="model.conditional")
    if flow is None:
        flow = _build_flow(config, data)
    else:
        if flow.data_shape is not None and tuple(flow.data_shape) != data.data_shape:
            raise DataError(f"the data have samples of shape {data.data_shape} but the model was built for "
                            f"{tuple(flow.data_shape)}")
        flow.describe_data(data.data_shape, data_kind=data.kind, image_shape=data.image_shape)
    config.method.prepare(flow)  # the nets as the method trains them (e.g. AE+SN's spectral norm), once
    param = next(flow.parameters(), None)
    data = data.for_model(dtype=param.dtype if param is not None else torch.float32, conditional=flow.conditional)
    _check_samplers(config, data)
    try:  # scaling fitted on the training split, kept by the model; the nets train on the scaled splits
        scaler, message = fit_data_scaler(data, config.data.standardize, config.data.value_range)
    except ValueError as e:
        raise ConfigError(str(e).removeprefix("data.standardize: "), key="data.standardize") from None
    if message:
        import warnings

        warnings.warn(message, UserWarning, stacklevel=2)
    flow.set_scaler(scaler, columns=data.info.get("columns"))
    user_data, data = data, scale_splits(data, scaler)
    try:
        terms = _dry_run(flow, config, data)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        if isinstance(e, InjflowError):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"one loss evaluation on the first rows failed before training ({type(e).__name__}: {first}); "
                        f"the data have samples of shape {data.data_shape}, the model was built for "
                        f"{flow.data_shape}") from None
    bad = [k for k, v in terms.items() if not torch.isfinite(v).all()]
    if bad:
        peak = float(data.train.abs().max())
        raise NonFiniteLossError(
            f"the loss terms {bad} are already NaN/inf on the first batch, before any update, so the learning rate is "
            f"not the cause: look at the data (largest |value| {peak:.3g}) and at the model's initialisation"
        )
    monitor = _check_monitor(config, data, sorted(terms))
    if t.compile:
        from .compile import check_compilable

        check_compilable(config.method, flow)
    s = config.optim.scheduler
    if t.max_time and s.name in ("onecycle", "cosine") and t.max_steps == -1:
        raise ConfigError(f"{s.name} spans a number of steps, but train.max_time sets a wall-clock budget; use constant "
                          f"or plateau (β schedules follow the budget), or also set train.max_steps",
                          key="optim.scheduler.name")
    run = RunDir(run_dir if run_dir is not None else new_run_dir(config))
    if not _is_secondary_process():  # rank 0 holds the lock and wrote the folder already
        run.check_unlocked()  # a folder in use is refused naming its writer, before anything else is said about it
        if not resume and not overwrite and run.is_run():
            raise RunFolderError(_occupied_message(run))
    check_trackers(config, run)  # a tracker's missing package or silent server: one line now, before anything is written
    plan = RunPlan(config, user_data, flow, run, resume, built_here, sorted(terms), monitor, train_data=data)
    if resume:
        plan.resume_step, plan.csv_rows = check_resume(config, run, flow)
    return plan


def _occupied_message(run: RunDir) -> str:
    status = run.status()
    state = status.get("state")
    what = (f"a finished run (model.pt, {status.get('step', '?')} optimiser steps)" if state == "completed"
            else f"an unfinished run ({state} at optimiser step {status.get('step', '?')})")
    return (f"{run.path} already holds {what}; continue it with `injflow fit --resume {run.path}`, choose another "
            f"folder (run.dir=...), or replace it with --overwrite (its model, checkpoints, metrics and reports are "
            f"deleted)")


# --------------------------------------------------------------------------- 3. finish


def finish_run(plan: RunPlan, trainer: Any, module: Any, flag: Any) -> FitResult:
    """Exports the model, fits the samplers, writes ``model.pt`` and the pictures; marks the run completed."""
    from ..plots import draw_run_pictures

    run, config = plan.run, plan.config
    result = FitResult(run.path, None, True, int(trainer.global_step))
    flow = module.export_flow()
    flow.config = config_to_dict(config) if plan.built_here else None
    if not trainer.is_global_zero:
        return result
    # Lightning hands the model back on the CPU after fit: the post-fit work (samplers, pictures) and the returned
    # model stay on the training device.
    flow.to(trainer.strategy.root_device)
    # The exported model holds plain nets (e.g. AE+SN's weights divided by their spectral norm, a VAE's mean
    # encoder); its file says so, and loading it does not prepare the nets again.
    config.method.finalize(flow)
    flow.finalized = True
    ensure_samplers(flow, plan.data, config)
    _raise_if_signalled(flag, run, trainer.global_step, "after training, before model.pt was written")
    result.artefacts.update({"run folder": run.path, "config": run.config, "status": run.status_file,
                             "checkpoints": run.checkpoints, "metrics": run.metrics_csv, "tensorboard": run.tensorboard})
    result.artefacts["model"] = flow.save(run.model)
    if config.train.pictures:
        for p in draw_run_pictures(flow, plan.data, run):
            result.artefacts[f"picture {p.stem}"] = p
    run.write_status("completed", step=result.global_step, total_steps=result.global_step, epoch=int(trainer.current_epoch))
    result.flow = flow
    return result


def _raise_if_signalled(flag: Any, run: RunDir, step: int, when: str) -> None:
    if flag.signal is not None:
        import signal

        name = signal.Signals(flag.signal).name
        raise RunInterrupted(f"stopped by {name} {when}; training itself is complete (step {step}): resume with "
                             f"`injflow fit --resume {run.path}` to write model.pt", signal_number=int(flag.signal))


def _is_secondary_process() -> bool:
    """A DDP process started by Lightning's launcher (rank > 0): it neither locks nor writes the folder."""
    return os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0"


def fit_config(
    config: Config,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    flow: InjectiveFlow | None = None,
    data: DataSplits | None = None,
    verbose: bool = True,
) -> FitResult:
    """Trains what ``config`` describes and writes the run folder (:func:`prepare_run` → train → finish).

    Arguments:
        config: A validated config.
        run_dir: The run folder (default: :func:`new_run_dir`). A folder that already holds a run is refused unless
            ``resume`` (continue it) or ``overwrite`` (replace it) is given.
        resume: Continue from ``<run_dir>/checkpoints/last.ckpt``.
        overwrite: Replace the run the folder holds: its artefacts are deleted before training.
        flow: Train these nets instead of building them from ``config.model`` (Python API).
        data: Train on these splits instead of loading ``config.data``.
        verbose: Print where the artefacts went.

    Returns:
        A :class:`FitResult` (``completed=False`` after ``train.stop_after_steps``).

    Raises:
        RunInterrupted: SIGTERM/SIGINT stopped training; a resumable checkpoint was written first.
        NonFiniteLossError: the loss or the weights became NaN/inf; the last checkpoint is intact.
        ConfigError, DataError, CheckpointError, RunFolderError, RunLockedError: found before anything was written.
    """
    with limit_threads(config.train.num_threads):  # torch and the BLAS/OpenMP pools of everything the run does
        return _fit(config, run_dir=run_dir, resume=resume, overwrite=overwrite, flow=flow, data=data, verbose=verbose)


def _fit(config: Config, *, run_dir: str | Path | None, resume: bool, overwrite: bool, flow: InjectiveFlow | None,
         data: DataSplits | None, verbose: bool) -> FitResult:
    plan = prepare_run(config, run_dir=run_dir, resume=resume, overwrite=overwrite, flow=flow, data=data)
    from .callbacks import SignalFlag, StopRun  # Lightning comes in here, once the whole run has been checked
    from .trainer import train_run

    run = plan.run
    if resume and run.status()["state"] == "completed" and run.model.is_file() and not extends_run(config, run):
        if verbose:
            print(f"[injflow] {run.path} already finished at optimiser step {plan.resume_step}; nothing to train "
                  f"(raise train.max_epochs or train.max_steps to train longer)")
        return FitResult(run.path, InjectiveFlow.load(run.model), True, plan.resume_step, {"model": run.model})
    secondary = _is_secondary_process()
    lock = run.lock("fit") if not secondary else None
    with SignalFlag() as flag:
        if lock is not None:
            lock.acquire()
        try:
            if not secondary:
                if overwrite and not resume:  # under the lock: no other process is writing the folder
                    cleared = run.clear()
                    if cleared and verbose:
                        print(f"[injflow] --overwrite: removed the previous run's {len(cleared)} artefact(s) from {run.path}")
                removed = run.open_for_writing()
                if removed and verbose:
                    print(f"[injflow] removed {len(removed)} temporary file(s) left by a killed writer")
                run.write_config(config)
                run.write_status("running", step=plan.resume_step, resumed=resume)
            try:
                trainer, module, stopper = train_run(plan, flag)
            except StopRun:
                step = stopper_step(run)
                if not secondary:
                    run.write_status("interrupted", step=step, reason="train.stop_after_steps")
                result = FitResult(run.path, None, False, step,
                                   {"run folder": run.path, "checkpoints": run.checkpoints, "metrics": run.metrics_csv})
                if verbose:
                    print(f"[injflow] stopped after {step} steps (train.stop_after_steps); resume with: "
                          f"injflow fit --resume {run.path}")
                return result
            except RunInterrupted as e:
                if not secondary:
                    run.write_status("interrupted", step=stopper_step(run), reason=str(e), signal=e.signal_number)
                raise
            except BaseException as e:
                if not secondary:
                    run.write_status("failed", step=stopper_step(run), reason=f"{type(e).__name__}: {e}"[:500])
                raise
            try:
                result = finish_run(plan, trainer, module, flag)
            except RunInterrupted as e:
                run.write_status("interrupted", step=int(trainer.global_step), reason=str(e), signal=e.signal_number)
                raise
        finally:
            if lock is not None:
                lock.release()
    if verbose and result.artefacts:
        print_artefacts(result)
    return result


def stopper_step(run: RunDir) -> int:
    """The optimiser step of the run's last checkpoint (0 if none)."""
    try:
        return int(load_torch(run.last_checkpoint, what="checkpoint").get("global_step", 0))
    except InjflowError:
        return 0


def print_artefacts(result: FitResult) -> None:
    """Prints where each artefact of a run went."""
    width = max(len(k) for k in result.artefacts) if result.artefacts else 0
    print(f"[injflow] artefacts ({result.global_step} optimiser steps):")
    for k, v in result.artefacts.items():
        print(f"  {k:<{width}}  {v}")


def resume_run(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = (), *, verbose: bool = True) -> FitResult:
    """Continues a run from ``<run_dir>/checkpoints/last.ckpt`` with its saved config (plus ``overrides``)."""
    run = RunDir(run_dir).require_run()
    return fit_config(run.read_config(overrides), run_dir=run.path, resume=True, verbose=verbose)
