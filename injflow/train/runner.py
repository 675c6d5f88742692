"""Runs a fit from a config, in three steps that each do one thing.

1. :func:`prepare_run` — loads and checks the data, builds nets and method, runs one dry loss on a few rows
   (which names every term, so ``train.monitor`` is checked, and turns a shape mismatch or a non-finite start into a
   one-line error), and checks the checkpoint and the overrides of a resume. Nothing is written: every error that
   can be found before training is found here.
2. :func:`train_run` — takes the run folder's lock, writes ``config.yaml`` and ``status.json``, and trains with
   Lightning (graceful stop on SIGTERM/SIGINT with a resumable checkpoint; never a checkpoint of non-finite weights).
3. :func:`finish_run` — exports the model, fits the post-fit samplers (:func:`ensure_samplers`), writes ``model.pt``
   (last: a run with ``model.pt`` is finished) and the pictures, and marks the run ``completed``.

:func:`fit_config` chains them. The layout of the folder is :class:`injflow.rundir.RunDir`'s.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import Config, ConfigError, check_dimensions, config_to_dict, load_config
from ..errors import CheckpointError, DataError, InjflowError, NonFiniteLossError, RunFolderError, RunInterrupted
from ..io import load_torch
from ..model import InjectiveFlow
from ..rundir import RunDir

__all__ = [
    "FitResult",
    "RunData",
    "RunPlan",
    "fit_config",
    "prepare_run",
    "train_run",
    "finish_run",
    "ensure_samplers",
    "resume_run",
    "load_run_data",
    "load_run_model",
    "new_run_dir",
    "print_artefacts",
]

#: Keys a resumed run may change: how long it trains, where, how it logs. Everything else shaped the saved state.
RESUMABLE_KEYS = (
    "train.max_epochs", "train.max_steps", "train.max_time", "train.stop_after_steps", "train.progress_bar",
    "train.num_threads", "train.checkpoint_every_n_steps", "train.checkpoint_interval", "train.log_every_n_steps",
    "train.pictures", "train.plot_every_n_epochs", "train.samplers", "train.gmm_components", "train.accelerator", "train.devices",
    "train.strategy", "train.num_nodes", "train.check_finite_every_n_steps", "train.compile", "run.",
    "data.root", "data.download",
)
#: Terms every method returns (:meth:`injflow.methods.Method.loss`): the objective, and what lets any two runs be
#: compared on one split.
REQUIRED_TERMS = ("loss", "reconstruction", "latent_sq_norm")
#: Data values at or above this magnitude cannot be trained on in float32 (squared errors overflow).
MAX_ABS_VALUE = 1e15
#: Above this magnitude the data are very likely not standardised: a warning says so.
WARN_ABS_VALUE = 1e4


@dataclass
class RunData:
    """The tensors a run trains on, with what they are (``kind`` decides the pictures and the metrics).

    Arguments:
        train, val, test: Splits ``(N, *data_shape)``; ``val`` and ``test`` may be ``None``.
        kind: ``"toy"``, ``"tabular"`` or ``"image"``.
        train_labels, val_labels, test_labels: Class labels ``(N,)`` (conditional models).
        image_shape: ``(C, H, W)`` of flat image data.
        num_classes: Number of classes of labelled data.
    """

    train: Tensor
    val: Tensor | None = None
    test: Tensor | None = None
    kind: str = "tabular"
    train_labels: Tensor | None = None
    val_labels: Tensor | None = None
    test_labels: Tensor | None = None
    image_shape: tuple[int, ...] | None = None
    num_classes: int | None = None

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])

    @classmethod
    def from_splits(cls, splits: Any) -> RunData:
        return cls(splits.train, splits.val, splits.test, splits.kind, splits.train_labels, splits.val_labels,
                   splits.test_labels, splits.image_shape, splits.num_classes)

    def split(self, name: str) -> tuple[Tensor | None, Tensor | None]:
        """``(x, labels)`` of ``train``, ``val`` or ``test``."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test, got {name!r}")
        return getattr(self, name), getattr(self, f"{name}_labels")

    def reference(self) -> tuple[Tensor, Tensor | None]:
        """The split the pictures show: test, else validation, else training."""
        for name in ("test", "val", "train"):
            x, c = self.split(name)
            if x is not None:
                return x, c
        raise AssertionError("RunData always has a training split")


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
    """Everything :func:`prepare_run` checked: what :func:`train_run` needs, with nothing written yet."""

    config: Config
    data: RunData
    flow: InjectiveFlow
    method: Any
    run: RunDir
    resume: bool
    built_here: bool
    terms: list[str]
    monitor: str
    resume_step: int = 0
    csv_rows: int | None = None


# --------------------------------------------------------------------------- data


def _data_error(error: Exception) -> InjflowError:
    """A loader's message under its dotted key (``option n_train ...`` → ``data.options.n_train: ...``)."""
    message = str(error)
    m = re.match(r"option (\w+)(:\s*)?", message)
    if m:
        return ConfigError(f"data.options.{m.group(1)}: {message[m.end():] if m.group(2) else message}")
    return DataError(f"data: {message}")


def load_run_data(config: Config) -> RunData:
    """Loads the config's data set (``injflow.data.load_dataset``), naming the dotted key on bad options."""
    from ..data import MissingDataError, load_dataset

    dc = config.data
    try:
        splits = load_dataset(dc.name, seed=dc.seed, root=dc.root, download=dc.download, **dc.options)
    except MissingDataError:
        raise
    except (ValueError, TypeError, KeyError) as e:
        raise _data_error(e) from None
    return RunData.from_splits(splits)


def check_run_data(data: RunData, *, dtype: torch.dtype = torch.float32, conditional: bool = False) -> RunData:
    """Checks every split once, before training; returns the data in the model's dtype.

    Empty splits, wrong or mismatched shapes, non-float data, NaN/inf (the rows are named), values too large to
    train on (the columns are named), and missing or out-of-range labels of a conditional model are errors
    (:class:`~injflow.errors.DataError`); float data in another dtype are converted with a warning.
    """
    shape = data.data_shape
    out = {}
    for name in ("train", "val", "test"):
        x, c = data.split(name)
        if x is None:
            if name == "train":
                raise DataError("data.train is missing: there is nothing to train on")
            out[name] = None
            continue
        if not isinstance(x, Tensor):
            raise DataError(f"data.{name} must be a torch.Tensor of shape (N, *data_shape), got {type(x).__name__}")
        where = f"data.{name}"
        if x.ndim < 2:
            raise DataError(f"{where} has shape {tuple(x.shape)}; expected (N, D) or (N, C, H, W) (one row per sample; "
                            f"a single feature needs shape (N, 1))")
        if x.shape[0] == 0:
            raise DataError(f"{where} holds no samples (shape {tuple(x.shape)}): there is nothing to "
                            f"{'train on' if name == 'train' else 'evaluate'}")
        if tuple(x.shape[1:]) != shape:
            raise DataError(f"{where} has samples of shape {tuple(x.shape[1:])} but data.train has {shape}")
        if not x.is_floating_point():
            raise DataError(f"{where} has dtype {x.dtype}; convert it to floats first (x.float())")
        if x.dtype != dtype:
            warnings.warn(f"{where} is {x.dtype} but the model's weights are {dtype}: converting the data to {dtype} "
                          f"(convert the model, e.g. flow.double(), to train in {x.dtype})", UserWarning, stacklevel=3)
            x = x.to(dtype)
        flat = x.reshape(x.shape[0], -1)
        finite = torch.isfinite(flat)
        if not bool(finite.all()):
            rows = torch.nonzero(~finite.all(1)).flatten()
            cols = torch.nonzero(~finite.all(0)).flatten()
            raise DataError(
                f"{where} has NaN or inf in {rows.numel()} of {x.shape[0]} rows (first rows: {rows[:5].tolist()}, "
                f"columns: {cols[:5].tolist()}); drop or impute them before training"
            )
        peak = flat.abs().amax(0)
        if bool((peak >= MAX_ABS_VALUE).any()):
            cols = torch.nonzero(peak >= MAX_ABS_VALUE).flatten()
            raise DataError(
                f"{where} has values up to {float(peak.max()):.3g} (columns {cols[:5].tolist()}): too large to train on "
                f"in float32; standardise the data first ((x - mean) / std per column; images scaled to [0, 1])"
            )
        if bool((peak > WARN_ABS_VALUE).any()):
            cols = torch.nonzero(peak > WARN_ABS_VALUE).flatten()
            warnings.warn(f"{where} has values up to {float(peak.max()):.3g} (columns {cols[:5].tolist()}): the nets "
                          f"expect standardised data ((x - mean) / std per column)", UserWarning, stacklevel=3)
        if conditional:
            if c is None:
                raise DataError(f"model.conditional is true but {where} has no labels: use a labelled data set "
                                f"(e.g. conditional_mnist) or set model.conditional=false")
            if c.shape != (x.shape[0],) or c.is_floating_point():
                raise DataError(f"{where} labels must be integers of shape ({x.shape[0]},), got {c.dtype} {tuple(c.shape)}")
            if data.num_classes is not None and (int(c.min()) < 0 or int(c.max()) >= data.num_classes):
                raise DataError(f"{where} labels must lie in 0..{data.num_classes - 1}, got {int(c.min())}..{int(c.max())}")
        out[name] = x
    return RunData(out["train"], out["val"], out["test"], data.kind,
                   *(data.split(s)[1] if conditional else None for s in ("train", "val", "test")),
                   data.image_shape, data.num_classes)


def new_run_dir(config: Config) -> Path:
    """``run.dir`` if set, else a fresh ``<run.root>/<run.name>-<YYYYmmdd-HHMMSS>`` folder."""
    if config.run.dir:
        return Path(config.run.dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(config.run.root) / f"{config.run.name}-{stamp}"
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


def _dry_run(flow: InjectiveFlow, method: Any, data: RunData, *, batch_size: int) -> dict[str, Tensor]:
    """One loss evaluation on the first rows, leaving weights, buffers and the RNG exactly as they were."""
    n = min(data.train.shape[0], batch_size, 16)
    x = data.train[:n]
    c = data.train_labels[:n] if data.train_labels is not None else None
    device = flow.device
    state = {k: v.detach().clone() for k, v in flow.state_dict().items()}  # BatchNorm statistics move in a forward
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            terms = method.loss(x.to(device), 0, flow.given(None if c is None else c.to(device)))
    finally:
        flow.load_state_dict(state)
        flow.zero_grad(set_to_none=True)
    missing = [k for k in REQUIRED_TERMS if k not in (terms if isinstance(terms, dict) else {})]
    if missing:
        raise ConfigError(f"method.name: method {method.name!r} must return the terms {list(REQUIRED_TERMS)} "
                          f"(see injflow.methods.Method.loss); it returned {sorted(terms or {})}, without {missing}")
    return {k: v.detach() for k, v in terms.items()}


def _check_monitor(config: Config, data: RunData, terms: list[str]) -> str:
    monitor = config.train.monitor
    if data.val is None and monitor.startswith("val/"):
        monitor = "train/loss_epoch"  # nothing to validate on: the best checkpoint follows the training loss
    stage, term = monitor.split("/", 1)
    known = terms if stage == "val" else terms + [f"{t}_epoch" for t in terms]
    if term not in known:
        choices = ", ".join(f"val/{t}" for t in terms) if data.val is not None else ", ".join(f"train/{t}_epoch" for t in terms)
        raise ConfigError(f"train.monitor: {monitor!r} is not a logged term of method {config.method['name']!r}; "
                          f"choose from {choices}")
    sched = config.optim.scheduler
    if sched.name == "plateau":
        stage, term = sched.monitor.split("/", 1)
        if term not in known or (stage == "val" and data.val is None):
            raise ConfigError(f"optim.scheduler.monitor: {sched.monitor!r} is not logged by this run; choose from "
                              f"{', '.join(f'val/{t}' for t in terms) if data.val is not None else 'train/<term>_epoch'}")
    return monitor


def _check_resume(config: Config, run: RunDir, flow: InjectiveFlow, method: Any, data: RunData) -> tuple[int, int | None]:
    """Checks a resume (checkpoint readable and matching, changed keys allowed); returns (step, csv rows)."""
    if not run.last_checkpoint.is_file():
        raise RunFolderError(f"cannot resume: {run.last_checkpoint} does not exist (the run never saved a checkpoint); "
                             f"start it again without --resume")
    ckpt = load_torch(run.last_checkpoint, what="checkpoint")
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{run.last_checkpoint} is not a training checkpoint; move it away and start again")
    flow.load_nets(ckpt["state_dict"], source=run.last_checkpoint, prefix="flow.")
    step = int(ckpt.get("global_step", 0))
    saved = load_config(run.config)
    changed = _changed_keys(config_to_dict(saved), config_to_dict(config))
    frozen = [k for k in changed if not k.startswith(RESUMABLE_KEYS)]
    if frozen:
        raise ConfigError(
            f"{frozen[0]}: cannot be changed when resuming (the checkpoint was trained with "
            f"{_lookup(config_to_dict(saved), frozen[0])!r}); start a new run with the new value instead"
        )
    length_changed = any(k in changed for k in ("train.max_epochs", "train.max_steps", "train.max_time"))
    if length_changed:
        if config.optim.scheduler.name in ("onecycle", "cosine"):
            raise ConfigError(
                f"train.max_epochs: a {config.optim.scheduler.name} learning-rate schedule spans the run's original length "
                f"and cannot be stretched when resuming (it is fixed in the checkpoint); start a new run, or resume "
                f"with the saved length"
            )
        spans = [k for k, sched in method._schedules.items() if getattr(sched, "steps", 0) is None]
        if spans and not config.train.max_time:
            raise ConfigError(
                f"train.max_epochs: method.{spans[0]} follows a schedule over the whole run; changing the run's length "
                f"when resuming would bend it after step {step}; start a new run, or give the schedule fixed `steps`"
            )
    return step, ckpt.get("injflow_csv_rows")


def _changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        key = f"{prefix}{k}"
        if isinstance(a, dict) and isinstance(b, dict) and key.count(".") < 1:
            keys += _changed_keys(a, b, f"{key}.")
        elif a != b:
            keys.append(key)
    return keys


def _lookup(d: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def prepare_run(
    config: Config,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    flow: InjectiveFlow | None = None,
    data: RunData | None = None,
) -> RunPlan:
    """Checks everything about a run that can be checked before training; writes nothing.

    Raises:
        ConfigError, DataError, CheckpointError, RunFolderError: one line naming the key, split or file.
    """
    t = config.train
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    built_here = flow is None
    data = data if data is not None else load_run_data(config)
    method = config.build_method()
    check_dimensions(config, data.data_shape, method)
    if config.model.conditional and data.num_classes is None:
        raise ConfigError(f"model.conditional: data set {config.data.name!r} has no labels; use a labelled one "
                          f"(e.g. conditional_mnist) or set model.conditional=false")
    if flow is None:
        import lightning as L

        L.seed_everything(t.seed, verbose=False)  # the initial weights depend on the seed only
        try:
            flow = InjectiveFlow.from_config(config, data_shape=data.data_shape, data_kind=data.kind,
                                             image_shape=data.image_shape, num_classes=data.num_classes)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"model.options: {e}") from None
        except (RuntimeError, MemoryError) as e:  # e.g. the allocator refusing layers of absurd width
            raise ConfigError(f"model.options: the nets cannot be built ({str(e).splitlines()[0][:200]})") from None
    else:
        if flow.data_shape is not None and tuple(flow.data_shape) != data.data_shape:
            raise DataError(f"the data have samples of shape {data.data_shape} but the model was built for "
                            f"{tuple(flow.data_shape)}")
        flow.describe_data(data.data_shape, data_kind=data.kind, image_shape=data.image_shape)
        method.prepare(flow)
    param = next(flow.parameters(), None)
    data = check_run_data(data, dtype=param.dtype if param is not None else torch.float32,
                          conditional=flow.conditional)
    method.total_steps = _estimated_steps(config, data.train.shape[0])  # the engine sets the exact one at the start
    try:
        terms = _dry_run(flow, method, data, batch_size=config.data.batch_size)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        if isinstance(e, InjflowError):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"one loss evaluation on the first rows failed before training ({type(e).__name__}: {first}); "
                        f"the data have samples of shape {data.data_shape}, the model was built for "
                        f"{flow.data_shape}") from None
    finally:
        method.total_steps = None
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

        check_compilable(method, flow)
    s = config.optim.scheduler
    if t.max_time and s.name in ("onecycle", "cosine") and t.max_steps == -1:
        raise ConfigError(f"optim.scheduler.name: {s.name} spans a number of steps, but train.max_time sets a wall-clock "
                          f"budget; use constant or plateau (β schedules follow the budget), or also set train.max_steps")
    run = RunDir(run_dir if run_dir is not None else new_run_dir(config))
    plan = RunPlan(config, data, flow, method, run, resume, built_here, sorted(terms), monitor)
    if resume:
        plan.resume_step, plan.csv_rows = _check_resume(config, run, flow, method, data)
    return plan


# --------------------------------------------------------------------------- 2. train


def _is_secondary_process() -> bool:
    """A DDP process started by Lightning's launcher (rank > 0): it neither locks nor writes the folder."""
    return os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0"


def _estimator_context() -> Any:
    """The estimators' switch for per-step input checks, off in the engine (the data were checked once)."""
    from contextlib import nullcontext

    from .. import estimators

    return getattr(estimators, "skip_input_checks", nullcontext)


def train_run(plan: RunPlan, flag: Any) -> tuple[Any, Any, Any]:
    """Trains with Lightning; returns ``(trainer, module, stopper)``. The caller holds the lock and the signal flag."""
    import datetime

    import lightning as L
    from lightning.pytorch.callbacks import TQDMProgressBar
    from lightning.pytorch.loggers import TensorBoardLogger

    from ..plots import draw_run_pictures
    from .callbacks import GracefulStop, MetricsCSVLogger, PeriodicCheckpoint, PlotCallback, RunCheckpoints, SafeCheckpointIO
    from .data import TensorDataModule
    from .distributed import resolve_strategy
    from .module import FlowModule

    config, data, run, t = plan.config, plan.data, plan.run, plan.config.train
    L.seed_everything(t.seed, verbose=False)
    module = FlowModule(plan.flow, plan.method, config.optim, input_noise=t.input_noise, ema_decay=t.ema_decay,
                        seed=t.seed, log_every_n_steps=t.log_every_n_steps,
                        check_finite_every_n_steps=t.check_finite_every_n_steps, max_time=t.max_time,
                        describe={**plan.flow.describe(), "config": config_to_dict(config), "custom_nets": not plan.built_here})
    module.step_context = _estimator_context()
    if t.compile:
        from .compile import CompiledFIF

        module.compiled = CompiledFIF(plan.flow, plan.method, backend="inductor" if t.compile is True else t.compile)
    dm = TensorDataModule(data.train, data.val, batch_size=config.data.batch_size, val_batch_size=config.data.val_batch_size,
                          seed=t.seed, drop_last=config.data.drop_last, train_labels=data.train_labels,
                          val_labels=data.val_labels)
    checkpoint = RunCheckpoints(run.last_checkpoint, run.best_checkpoint, plan.monitor, t.monitor_mode, t.checkpoint_interval)
    csv_logger = MetricsCSVLogger(run.metrics_csv, keep_rows=plan.csv_rows if plan.resume else None,
                                  resume_step=plan.resume_step if plan.resume and plan.csv_rows is None else None)
    module.csv_logger = csv_logger
    loggers: list[Any] = [csv_logger, TensorBoardLogger(save_dir=str(run.path), name=run.tensorboard.name, version="",
                                                        default_hp_metric=False)]
    stopper = GracefulStop(run.last_checkpoint, flag, t.stop_after_steps)
    callbacks: list[Any] = [checkpoint, stopper]
    if t.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, min(t.log_every_n_steps, 10))))
    if t.checkpoint_every_n_steps:
        callbacks.append(PeriodicCheckpoint(t.checkpoint_every_n_steps, run.last_checkpoint))
    if t.plot_every_n_epochs:
        callbacks.append(PlotCallback(lambda m: draw_run_pictures(m.flow, data, run), t.plot_every_n_epochs))
    quiet = _quiet_lightning().__enter__()
    trainer = L.Trainer(
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        max_time=datetime.timedelta(seconds=t.max_time) if t.max_time else None,
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=resolve_strategy(t, plan.method),  # declares unused parameters for methods that leave some (Trumpet)
        num_nodes=t.num_nodes,
        precision=t.precision,
        gradient_clip_val=config.optim.grad_clip,
        gradient_clip_algorithm=config.optim.grad_clip_algorithm,
        logger=loggers,
        callbacks=callbacks,
        enable_progress_bar=t.progress_bar,
        enable_model_summary=False,
        enable_checkpointing=False,  # RunCheckpoints writes last/best; Lightning's default callback would add its own
        log_every_n_steps=1,  # the module decides when to read values (train.log_every_n_steps)
        check_val_every_n_epoch=t.val_every_n_epochs,
        num_sanity_val_steps=0,  # sanity validation would shift the RNG stream and break identical resume
        deterministic=t.deterministic,
        default_root_dir=str(run.path),
        plugins=[SafeCheckpointIO()],
        inference_mode=False,  # validation needs autograd (the FIF surrogate is built from JVP/VJP)
        use_distributed_sampler=False,  # TensorBatches shards the global batch itself
        limit_val_batches=1.0 if data.val is not None else 0,
    )
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=str(run.last_checkpoint) if plan.resume else None)
    finally:
        quiet.__exit__(None, None, None)
        for logger in loggers:
            logger.save()
    return trainer, module, stopper


class _quiet_lightning:
    """Silences Lightning's chatter that says nothing about the run (tips, device banners, known-benign warnings)."""

    PATTERNS = (r".*smaller than the logging interval.*", r".*`isinstance\(treespec, LeafSpec\)` is deprecated.*",
                r".*Trainer\(limit_val_batches=1.0\)` was configured.*", r".*does not have many workers.*")

    def __enter__(self) -> _quiet_lightning:
        import logging

        self._levels = {}
        for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                     "lightning.fabric.utilities.seed"):
            log = logging.getLogger(name)
            self._levels[name] = log.level
            log.setLevel(logging.WARNING)
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        for pattern in self.PATTERNS:
            warnings.filterwarnings("ignore", message=pattern)
        return self

    def __exit__(self, *exc: Any) -> None:
        import logging

        self._warnings.__exit__(*exc)
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)


# --------------------------------------------------------------------------- 3. finish


def ensure_samplers(flow: InjectiveFlow, data: RunData, config: Config, names: list[str] | None = None) -> list[str]:
    """Fits the post-fit samplers the config asks for (or ``names``) that the model lacks; returns those fitted.

    The one place samplers are fitted for a run (``fit``, ``evaluate`` and ``sample`` all call it): on the training
    split's first :data:`~injflow.model.MAX_SAMPLER_POINTS` points, seeded with ``train.seed``.
    """
    wanted = list(names) if names is not None else list(config.train.samplers)
    missing = [n for n in wanted if n not in flow.samplers]
    if missing:
        flow.fit_samplers(data.train, names=missing, n_components=config.train.gmm_components, seed=config.train.seed,
                          c=data.train_labels if flow.conditional else None)
    return missing


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
    plan.method.finalize(flow)
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


def fit_config(
    config: Config,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    flow: InjectiveFlow | None = None,
    data: RunData | None = None,
    verbose: bool = True,
) -> FitResult:
    """Trains what ``config`` describes and writes the run folder (:func:`prepare_run` → train → finish).

    Arguments:
        config: A validated config.
        run_dir: The run folder (default: :func:`new_run_dir`).
        resume: Continue from ``<run_dir>/checkpoints/last.ckpt``.
        flow: Train these nets instead of building them from ``config.model`` (Python API).
        data: Train on these tensors instead of loading ``config.data``.
        verbose: Print where the artefacts went.

    Returns:
        A :class:`FitResult` (``completed=False`` after ``train.stop_after_steps``).

    Raises:
        RunInterrupted: SIGTERM/SIGINT stopped training; a resumable checkpoint was written first.
        NonFiniteLossError: the loss or the weights became NaN/inf; the last checkpoint is intact.
        ConfigError, DataError, CheckpointError, RunFolderError, RunLockedError: found before anything was written.
    """
    from .callbacks import SignalFlag, StopRun

    plan = prepare_run(config, run_dir=run_dir, resume=resume, flow=flow, data=data)
    run = plan.run
    if resume and run.status()["state"] == "completed" and run.model.is_file() and not _extends(plan):
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


def _extends(plan: RunPlan) -> bool:
    """Whether a resume of a finished run asks for more training than it had."""
    t, saved = plan.config.train, load_config(plan.run.config).train
    longer_steps = saved.max_steps != -1 and (t.max_steps == -1 or t.max_steps > saved.max_steps)
    return t.max_epochs > saved.max_epochs or longer_steps or (t.max_time or 0) > (saved.max_time or 0)


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


def _check_belongs(flow: InjectiveFlow, run: RunDir, path: Path) -> None:
    """A checkpoint describes its own model; inside a run folder it must be the model of the folder's config."""
    if not flow.config:
        return
    saved, own = config_to_dict(run.read_config()), flow.config
    for section in ("model", "data"):
        changed = _changed_keys({section: saved[section]}, {section: own.get(section, {})})
        changed = [k for k in changed if not k.startswith(RESUMABLE_KEYS)]
        if changed:
            raise CheckpointError(
                f"{path} does not belong to {run.path}: it was trained with {changed[0]}={_lookup(own, changed[0])!r}, "
                f"the run's config.yaml says {_lookup(saved, changed[0])!r}; put the run's own checkpoint back or retrain"
            )


def load_run_model(run: str | Path, *, checkpoint: str | None = None) -> InjectiveFlow:
    """The trained model of a run folder.

    Arguments:
        run: The run folder.
        checkpoint: ``None``: the finished model (``model.pt``, with its post-fit samplers); an unfinished run raises
            :class:`~injflow.errors.UnfinishedRunError` naming its last step. ``"last"`` or ``"best"``: that
            checkpoint's weights (no post-fit samplers), finished or not.
    """
    run = RunDir(run).require_run()
    if checkpoint is None:
        run.require_finished(allow="--checkpoint last (or best)")
        return InjectiveFlow.load(run.model)
    path = run.checkpoint(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; the run has: "
                              f"{', '.join(p.name for p in run.checkpoints.glob('*.ckpt')) or 'no checkpoints'}")
    try:
        flow = InjectiveFlow.load_from_checkpoint(path)
    except CheckpointError as e:
        if "older injflow" not in str(e):
            raise
    else:
        _check_belongs(flow, run, path)
        return flow
    # A checkpoint of an older injflow: the model's description comes from config.yaml and the data set.
    config = run.read_config()
    flow = InjectiveFlow.from_config(config)
    return flow.load_nets(load_torch(path, what="checkpoint")["state_dict"], source=path, prefix="flow.")
