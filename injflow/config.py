"""Typed, validated run configuration: dataclasses, YAML loading and dotted ``key=value`` overrides.

A config has six sections (see ``configs/default.yaml``)::

    data:   {name, options, root, download, seed, batch_size, val_batch_size, drop_last}
    model:  {architecture, latent_dim, options, conditional, latent: {name, options}}
    method: {name, <the method's own fields, e.g. beta, n_hutchinson>}
    optim:  {name, lr, weight_decay, betas, grad_clip, grad_clip_algorithm,
             scheduler: {name, interval, monitor, options}}
    train:  {seed, max_epochs, max_steps, stop_after_steps, input_noise, ema_decay, ...}
    run:    {dir, root, name}

Every key is checked before training: an unknown key, a value of the wrong type or an impossible value
raises :class:`ConfigError` naming the dotted key (``train.max_epochs: expected int, got 'ten'``). Numbers must
be finite (no NaN/inf anywhere), names (data sets, architectures, latents, samplers, methods, schedulers) are
checked against their registries, and options against the signatures of what they configure — all before the
data are loaded or anything is written.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .errors import ConfigError

if TYPE_CHECKING:  # the methods import torch; the config module stays light
    from .methods import Method

__all__ = [
    "ConfigError",
    "Config",
    "DataConfig",
    "LatentConfig",
    "ModelConfig",
    "SchedulerConfig",
    "OptimConfig",
    "TrainConfig",
    "MlflowConfig",
    "WandbConfig",
    "LOGGERS",
    "RunConfig",
    "config_from_dict",
    "config_to_dict",
    "method_from_dict",
    "method_to_dict",
    "load_config",
    "apply_overrides",
    "default_config_path",
    "check_dimensions",
    "run_name",
    "changed_keys",
    "lookup_key",
    "RESUMABLE_KEYS",
    "as_config",
    "parse_duration",
]

_SEED_MAX = 2**32 - 1  # numpy's and Lightning's seed range


def _check_seed(key: str, seed: int) -> None:
    if not 0 <= seed <= _SEED_MAX:
        raise ConfigError(f"must be an integer in [0, {_SEED_MAX}], got {seed}", key=key)


def _check_options(key: str, registry: Any, name: str, options: dict[str, Any]) -> None:
    """Unknown option names of a registered entry, reported under the dotted ``key`` of the option."""
    try:
        registry.check_options(name, options)
    except ConfigError as e:  # the registry's one wording, under the option's dotted key
        raise e.under(key) from None
    _check_finite(key, options)


#: No width, depth or count of a network is larger (a larger one is a typo, and building it would exhaust memory).
MAX_NET_SIZE = 10**6


def _check_sizes(key: str, value: Any) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and value > MAX_NET_SIZE:
        raise ConfigError(f"{value} is larger than any sensible width, depth or count (at most {MAX_NET_SIZE})", key=key)
    if isinstance(value, dict):
        for k, v in value.items():
            _check_sizes(f"{key}.{k}", v)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_sizes(f"{key}[{i}]", v)


def _check_finite(key: str, value: Any) -> None:
    """NaN/inf anywhere inside free-form options (lists, dicts) is refused."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"must be a finite number, got {value}", key=key)
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(f"{key}.{k}", v)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_finite(f"{key}[{i}]", v)


@dataclass
class DataConfig:
    """Which data set and how to batch it (``batch_size`` is the global batch over all devices)."""

    name: str = "sinusoid"
    options: dict[str, Any] = field(default_factory=dict)
    root: str | None = None
    download: bool = False
    seed: int = 0
    batch_size: int = 256
    val_batch_size: int | None = None
    drop_last: bool = False
    #: Scaling fitted on the training split and kept in the model (injflow.scaling): auto, features, global, range, none.
    standardize: str = "auto"
    #: ``[low, high]`` of ``range`` scaling (images), mapped to [0, 1].
    value_range: list[float] | None = None

    def __post_init__(self) -> None:
        from .data import DATASETS
        from .scaling import STANDARDIZE_METHODS

        if self.name not in DATASETS:
            raise ConfigError(f"unknown data set {self.name!r}; choose from: {', '.join(DATASETS.names())}", key="name")
        _check_options("options", DATASETS, self.name, self.options)
        _check_seed("seed", self.seed)
        if self.batch_size < 1:
            raise ConfigError(f"must be >= 1, got {self.batch_size}", key="batch_size")
        if self.val_batch_size is not None and self.val_batch_size < 1:
            raise ConfigError(f"must be >= 1, got {self.val_batch_size}", key="val_batch_size")
        if self.standardize not in STANDARDIZE_METHODS:
            raise ConfigError(f"expected one of {', '.join(STANDARDIZE_METHODS)}, got {self.standardize!r}", key="standardize")
        if self.value_range is not None:
            vr = self.value_range
            if (not isinstance(vr, (list, tuple)) or len(vr) != 2 or not all(isinstance(v, (int, float)) for v in vr)
                    or not vr[0] < vr[1]):
                raise ConfigError(f"expected [low, high] with low < high, got {vr!r}", key="value_range")
            if self.standardize not in ("auto", "range"):
                raise ConfigError(f"is for range scaling, but data.standardize is {self.standardize!r}", key="value_range")


@dataclass
class LatentConfig:
    """The prior on the latent space: ``normal``, ``isotropic_normal`` (``sigma``), ``student_t`` (``df``, ``scale``)."""

    name: str = "normal"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from .distributions import LATENTS

        if self.name not in LATENTS:
            raise ConfigError(f"unknown latent {self.name!r}; choose from: {', '.join(LATENTS.names())}", key="name")
        _check_options("options", LATENTS, self.name, self.options)


@dataclass
class ModelConfig:
    """Architecture (built by :func:`injflow.nets.build_autoencoder`), latent dimension d and latent prior.

    ``conditional: true`` builds a class-conditional pair from the architecture (:mod:`injflow.nets.conditional`);
    the data set must then carry labels (e.g. ``conditional_mnist``).
    """

    architecture: str = "toy_resnet"
    latent_dim: int = 1
    options: dict[str, Any] = field(default_factory=dict)
    conditional: bool = False
    latent: LatentConfig = field(default_factory=LatentConfig)

    def __post_init__(self) -> None:
        from .nets import ARCHITECTURES

        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"unknown architecture {self.architecture!r}; choose from: {', '.join(ARCHITECTURES.names())}",
                              key="architecture")
        _check_options("options", ARCHITECTURES, self.architecture, self.options)
        _check_sizes("options", self.options)
        if self.latent_dim < 1:
            raise ConfigError(f"must be >= 1, got {self.latent_dim}", key="latent_dim")


#: The torch LR scheduler behind each ``optim.scheduler.name`` and the arguments injflow sets itself.
_SCHEDULERS: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "constant": (None, ()),
    "onecycle": ("OneCycleLR", ("optimizer", "max_lr", "total_steps", "epochs", "steps_per_epoch", "last_epoch",
                                "verbose")),
    "cosine": ("CosineAnnealingLR", ("optimizer", "T_max", "last_epoch")),
    "plateau": ("ReduceLROnPlateau", ("optimizer", "verbose")),
}


@dataclass
class SchedulerConfig:
    """Learning-rate schedule, stepped every optimiser step (``interval: step``) unless ``interval: epoch``.

    ``constant``; ``onecycle`` (``torch.optim.lr_scheduler.OneCycleLR``, ``max_lr`` = ``optim.lr``);
    ``cosine`` (``CosineAnnealingLR`` over the run); ``plateau`` (``ReduceLROnPlateau`` on ``monitor``,
    stepped per epoch by default). ``options`` go to the torch scheduler (checked against its signature).
    """

    name: Literal["constant", "onecycle", "cosine", "plateau"] = "constant"
    interval: Literal["step", "epoch"] | None = None
    monitor: str = "val/loss"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        import inspect

        import torch.optim.lr_scheduler as schedulers

        cls_name, fixed = _SCHEDULERS[self.name]
        if cls_name is None:
            if self.options:
                raise ConfigError(f"the constant schedule takes no options, got {sorted(self.options)}", key="options")
            return
        allowed = [p for p in inspect.signature(getattr(schedulers, cls_name)).parameters if p not in fixed]
        unknown = sorted(set(self.options) - set(allowed))
        if unknown:
            raise ConfigError(f"unknown option of torch's {cls_name} ({self.name}); it accepts: {', '.join(allowed)}",
                              key=f"options.{unknown[0]}")
        _check_finite("options", self.options)
        _check_monitor("monitor", self.monitor)


def _check_monitor(key: str, monitor: str) -> None:
    if not isinstance(monitor, str) or not monitor.startswith(("train/", "val/")) or monitor.count("/") != 1:
        raise ConfigError(f"expected 'val/<term>' or 'train/<term>' (e.g. val/loss), got {monitor!r}", key=key)


@dataclass
class OptimConfig:
    """Optimiser (Adam or AdamW), weight decay, gradient clipping and the LR schedule."""

    name: Literal["adam", "adamw"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float | None = None
    grad_clip_algorithm: Literal["norm", "value"] = "norm"
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"must be > 0, got {self.lr}", key="lr")
        if self.weight_decay < 0:
            raise ConfigError(f"must be >= 0, got {self.weight_decay}", key="weight_decay")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"expected two numbers in [0, 1), got {self.betas}", key="betas")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"must be > 0 (or null), got {self.grad_clip}", key="grad_clip")
        _try_scheduler(self)


def _try_scheduler(optim: OptimConfig) -> None:
    """Builds the LR scheduler once on a stand-in optimiser, so bad option values fail now, not after the run starts."""
    import torch

    name, options = optim.scheduler.name, optim.scheduler.options
    cls_name = _SCHEDULERS[name][0]
    if cls_name is None or not options:
        return
    import torch.optim.lr_scheduler as schedulers

    for key, value in options.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise ConfigError(f"must be >= 0 (rates, factors, steps and minimum learning rates are), got {value}",
                              key=f"scheduler.options.{key}")
        if isinstance(value, (list, tuple)) and any(isinstance(v, (int, float)) and v < 0 for v in value):
            raise ConfigError(f"must hold numbers >= 0, got {value}", key=f"scheduler.options.{key}")
    dummy = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=optim.lr)
    fixed = {"onecycle": {"max_lr": optim.lr, "total_steps": 100}, "cosine": {"T_max": 100}, "plateau": {}}[name]
    try:
        getattr(schedulers, cls_name)(dummy, **fixed, **options)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"torch's {cls_name} refuses {options}: {e}", key="scheduler.options") from None


# Lightning 2's names (its AcceleratorRegistry, StrategyRegistry and precision strings), listed here so a config is
# checked without importing Lightning.
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
STRATEGIES = (
    "auto", "ddp", "ddp_spawn", "ddp_fork", "ddp_notebook", "ddp_find_unused_parameters_false",
    "ddp_find_unused_parameters_true", "ddp_spawn_find_unused_parameters_false", "ddp_spawn_find_unused_parameters_true",
    "ddp_fork_find_unused_parameters_false", "ddp_fork_find_unused_parameters_true", "deepspeed", "deepspeed_stage_1",
    "deepspeed_stage_2", "deepspeed_stage_2_offload", "deepspeed_stage_3", "deepspeed_stage_3_offload", "fsdp",
    "fsdp_cpu_offload", "single_device",
)
PRECISIONS = ("32-true", "64-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true")
#: Lightning precisions that keep the weights in half precision: refused (docs/training.md, "Precision").
HALF_WEIGHTS = ("16-true", "bf16-true")


def parse_duration(value: float | str | None, key: str = "duration") -> float | None:
    """Seconds from a number of seconds or ``"[D:]HH:MM:SS"`` (``None`` stays ``None``).

    Example:
        >>> parse_duration("05:00:00"), parse_duration("1:00:00:30"), parse_duration(90)
        (18000.0, 86430.0, 90.0)
    """
    if value is None:
        return None
    if isinstance(value, str):
        parts = value.strip().split(":")
        try:
            numbers = [float(p) for p in parts]
        except ValueError:
            numbers = []
        if len(parts) not in (3, 4) or len(numbers) != len(parts) or any(n < 0 for n in numbers):
            raise ConfigError(f"expected seconds or 'HH:MM:SS' / 'D:HH:MM:SS', got {value!r}", key=key)
        seconds = sum(n * f for n, f in zip(reversed(numbers), (1, 60, 3600, 86400)))
    else:
        seconds = float(value)
    if not seconds > 0:
        raise ConfigError(f"must be > 0, got {value!r}", key=key)
    return seconds


#: Where the terms of a run are logged (``train.loggers``); ``csv`` (``metrics.csv``) is always one of them.
LOGGERS = ("csv", "tensorboard", "mlflow", "wandb")


@dataclass
class MlflowConfig:
    """MLflow tracking (``train.loggers`` with ``mlflow``; :mod:`injflow.train.loggers`).

    ``tracking_uri``: a server (``http://host:5000``) or a store URI; default: the SQLite store
    ``<folder holding the run folder>/mlflow.db`` (sibling runs, e.g. a sweep's trials, share it). ``experiment``:
    default ``run.name``.
    """

    tracking_uri: str | None = None
    experiment: str | None = None


@dataclass
class WandbConfig:
    """Weights & Biases tracking (``train.loggers`` with ``wandb``); ``mode: offline`` (default) writes the run under
    ``RUN/wandb/`` without a network (``wandb sync`` uploads it later). ``project``: default ``run.name``."""

    project: str | None = None
    entity: str | None = None
    mode: Literal["offline", "online"] = "offline"


@dataclass
class TrainConfig:
    """Loop, devices, regularisation of the inputs, checkpoints, plots and post-fit samplers.

    ``checkpoint_interval`` (seconds) spaces out the end-of-epoch checkpoint writes (0: every epoch); the best
    checkpoint is still the best epoch's, and a graceful stop or the end of training always writes.
    ``stop_after_steps`` ends this invocation after that many optimiser steps (counted from the start of
    the run) with a resumable checkpoint, as if the job were killed; unlike ``max_steps`` it does not
    change the LR or weight schedules. ``max_time`` is a wall-clock budget (seconds or ``"HH:MM:SS"``; FIF
    table 2 trains 5 h per model): training stops when it is spent, and schedules (β, the learning rate) are
    defined over the budget instead of the epochs. ``compile: true`` (or a ``torch.compile`` backend name) trains
    FIF's default estimator through one compiled function (:mod:`injflow.train.compile`).
    ``check_finite_every_n_steps`` is how often the host reads the non-finite flag (``null``: every step on the
    CPU, where reading it costs nothing, and every 50 steps on an accelerator, where every read is a
    synchronisation); the weights of a non-finite step never reach a checkpoint either way.
    """

    seed: int = 0
    max_epochs: int = 50
    max_steps: int = -1
    max_time: float | str | None = None
    stop_after_steps: int | None = None
    input_noise: float = 0.0
    ema_decay: float | None = None
    val_every_n_epochs: int = 1
    checkpoint_every_n_steps: int | None = None
    checkpoint_interval: float = 30.0
    monitor: str = "val/loss"
    monitor_mode: Literal["min", "max"] = "min"
    plot_every_n_epochs: int | None = None
    pictures: bool = True  # the end-of-run pictures (off for sweeps whose run folders are thrown away)
    log_every_n_steps: int = 10
    check_finite_every_n_steps: int | None = None
    compile: bool | Literal["inductor", "aot_eager"] = False
    accelerator: str = "auto"
    devices: int | str = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    deterministic: bool = False
    progress_bar: bool = True
    num_threads: int | None = None
    samplers: list[str] = field(default_factory=lambda: ["gaussian", "gmm"])
    gmm_components: int = 10
    loggers: list[str] = field(default_factory=lambda: ["csv", "tensorboard"])
    tags: dict[str, Any] = field(default_factory=dict)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self) -> None:
        from .distributions import SAMPLERS

        self._check_loggers()

        _check_seed("seed", self.seed)
        if self.max_epochs < 1:
            raise ConfigError(f"must be >= 1, got {self.max_epochs}", key="max_epochs")
        if self.max_steps != -1 and self.max_steps < 1:
            raise ConfigError(f"must be >= 1 or -1 (no limit), got {self.max_steps}", key="max_steps")
        self.max_time = parse_duration(self.max_time, "max_time")
        if self.stop_after_steps is not None and self.stop_after_steps < 1:
            raise ConfigError(f"must be >= 1 (or null), got {self.stop_after_steps}", key="stop_after_steps")
        if self.checkpoint_interval < 0:
            raise ConfigError(f"must be >= 0 seconds (0: every epoch), got {self.checkpoint_interval}", key="checkpoint_interval")
        if self.input_noise < 0:
            raise ConfigError(f"must be >= 0, got {self.input_noise}", key="input_noise")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(f"must be in (0, 1) (or null), got {self.ema_decay}", key="ema_decay")
        for key in ("val_every_n_epochs", "log_every_n_steps", "num_nodes", "gmm_components"):
            if getattr(self, key) < 1:
                raise ConfigError(f"must be >= 1, got {getattr(self, key)}", key=key)
        for key in ("checkpoint_every_n_steps", "plot_every_n_epochs", "num_threads", "check_finite_every_n_steps"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"must be >= 1 (or null), got {getattr(self, key)}", key=key)
        if self.num_threads is not None and self.num_threads > 4096:
            raise ConfigError(f"at most 4096, got {self.num_threads}", key="num_threads")
        _check_monitor("monitor", self.monitor)
        for key, allowed in (("accelerator", ACCELERATORS), ("strategy", STRATEGIES), ("precision", PRECISIONS)):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"expected one of {', '.join(allowed)}, got {getattr(self, key)!r}", key=key)
        if self.precision in HALF_WEIGHTS:
            raise ConfigError(f"{self.precision} keeps the weights and the optimiser state in half precision, where the "
                              f"log-determinant estimators and their conjugate gradients lose the digits they need; use "
                              f"16-mixed or bf16-mixed (half-precision products, float32 weights)", key="precision")
        devices = self.devices
        if isinstance(devices, int):
            if devices < 1 and devices != -1:
                raise ConfigError(f"expected a number >= 1, -1 (all), 'auto' or '0,1', got {devices}", key="devices")
        elif devices != "auto" and not all(part.strip().isdigit() for part in devices.split(",")):
            raise ConfigError(f"expected a number >= 1, -1 (all), 'auto' or a list like '0,1', got {devices!r}", key="devices")
        bad = [s for s in self.samplers if s not in SAMPLERS]
        if bad:
            raise ConfigError(f"unknown post-fit sampler(s) {bad}; choose from: {', '.join(SAMPLERS.names())}", key="samplers")

    def _check_loggers(self) -> None:
        unknown = [name for name in self.loggers if name not in LOGGERS]
        if unknown:
            raise ConfigError(f"unknown logger {unknown[0]!r}; choose from: {', '.join(LOGGERS)}", key="loggers")
        if len(set(self.loggers)) != len(self.loggers):
            raise ConfigError(f"{self.loggers} names a logger twice", key="loggers")
        if "csv" not in self.loggers:
            raise ConfigError(f"'csv' cannot be left out (metrics.csv is the run's own record: resume, reports and sweeps "
                              f"read it); add trackers after it, e.g. [csv, tensorboard, mlflow], got {self.loggers}",
                              key="loggers")
        tags = {}
        for key, value in self.tags.items():  # tracker tags are strings; YAML reads 20 or true as numbers and booleans
            if not isinstance(value, (str, int, float, bool)):
                raise ConfigError(f"a tag is a string (or a number), got {value!r}", key=f"tags.{key}")
            tags[str(key)] = value if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)
        self.tags = tags


@dataclass
class RunConfig:
    """Where artefacts go: ``dir`` if given, else ``<root>/<name>-<timestamp>``; ``name`` defaults to
    ``<method>-<data>``, the data being an own file's name without suffix (``fif-cancer``) or the data set's name."""

    dir: str | None = None
    root: str = "runs"
    name: str | None = None


def _default_method() -> Method:
    from .methods import FIF

    return FIF()


@dataclass
class Config:
    """A whole run. ``method`` is the training objective itself (a :class:`~injflow.methods.Method`, validated and
    built once, here); its YAML form is ``{name: <registered name>, <field>: <value>, ...}``."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: Method = field(default_factory=_default_method)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)


# --------------------------------------------------------------------------- validation


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is not None:
        return getattr(origin, "__name__", str(tp))
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Checks ``value`` against the annotation ``tp`` (int → float allowed); nested dataclasses recurse."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in typing.get_args(tp)):
            return value
        raise ConfigError(f"expected {_type_name(tp)}, got {value!r}", key=key)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _convert(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"expected {_type_name(tp)}, got {value!r}", key=key)
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"expected null, got {value!r}", key=key)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping, got {value!r}", key=key)
        return _from_dict(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # PyYAML reads "1e-3" (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):
                raise ConfigError(f"must be a finite number, got {value!r}", key=key)
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin is dict or tp is dict:
        if isinstance(value, dict):
            return dict(value)
    elif origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, (list, tuple)):
            args = typing.get_args(tp)
            item = args[0] if args else Any
            return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    else:  # pragma: no cover - annotation kinds not used in the schema
        return value
    raise ConfigError(f"expected {_type_name(tp)}, got {value!r}", key=key)


def _from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Builds dataclass ``cls`` from ``data``: unknown keys, wrong types and ``__post_init__`` errors name the key."""
    from .methods import Method

    hints = typing.get_type_hints(cls, localns={"Method": Method})
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    dot = f"{prefix}." if prefix else ""
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError("unknown config key" + (f" in section '{prefix}'" if prefix else "")
                          + f"; known keys: {', '.join(sorted(fields))}", key=f"{dot}{unknown[0]}")
    kwargs = {k: _convert(v, hints[k], f"{dot}{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:  # __post_init__ names the field; the section goes in front
        raise (e.under(prefix) if prefix else e) from None
    except ValueError as e:
        raise ConfigError(str(e), key=prefix or None) from None


def method_from_dict(data: Any) -> Method:
    """The method a config's ``method`` section describes (``{name: ..., <options>}``), validated."""
    from .methods import METHODS, Method, method_class

    if isinstance(data, Method):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping with a 'name', got {data!r}", key="method")
    options = dict(data)
    name = options.pop("name", "fif")
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose from {sorted(METHODS)}", key="method.name")
    return _from_dict(method_class(name), options, "method")


def method_to_dict(method: Method) -> dict[str, Any]:
    """A method's YAML form: ``{name: ..., <every field>: <value>}``."""
    import copy

    return {"name": method.name, **copy.deepcopy(method.options())}


def config_from_dict(data: dict[str, Any] | None) -> Config:
    """Validates a nested dict (e.g. parsed YAML) into a :class:`Config`; missing keys take defaults.

    Example:
        >>> config_from_dict({"method": {"name": "fif", "beta": -1}})
        Traceback (most recent call last):
        ...
        injflow.errors.OptionError: method.beta: the reconstruction weight must be >= 0, got a minimum of -1.0
    """
    data = dict(data or {})
    method = method_from_dict(data.pop("method", {"name": "fif"}))
    config = _from_dict(Config, data)
    config.method = method
    return config


def config_to_dict(config: Config) -> dict[str, Any]:
    """The config as plain nested dicts (YAML-serialisable); the method as its name and options."""
    return {f.name: method_to_dict(config.method) if f.name == "method" else dataclasses.asdict(getattr(config, f.name))
            for f in dataclasses.fields(config)}


# --------------------------------------------------------------------------- YAML and overrides


def default_config_path() -> Path:
    """Path of the embedded default config (FIF on the noisy sinusoid), shipped inside the package."""
    from importlib.resources import files

    return Path(str(files("injflow") / "configs" / "default.yaml"))


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Applies dotted ``key=value`` overrides; values are parsed as YAML (``1e-3``, ``null``, ``[1, 2]``).

    Example:
        >>> apply_overrides({"train": {"max_epochs": 5}}, ["train.max_epochs=2", "method.beta=20"])
        {'train': {'max_epochs': 2}, 'method': {'beta': 20}}
    """
    import yaml

    data = _deep_copy(data)
    _reset_options_of_renamed(data, overrides)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.max_epochs=10")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r}: empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"cannot parse value {raw!r}: {e}", key=key) from None
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"is a value, not a section; cannot set {key}", key=".".join(parts[: i + 1]))
            node = child
        node[parts[-1]] = value
    return data


#: A name and the options that belong to it: overriding the name drops the options the file gave for the old one.
_NAMED_OPTIONS = (("data.name", "data.options"), ("model.architecture", "model.options"),
                  ("model.latent.name", "model.latent.options"), ("optim.scheduler.name", "optim.scheduler.options"))


def _reset_options_of_renamed(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> None:
    """``--set data.name=array`` starts from that data set's defaults, not from the old data set's options (the
    same for architectures, latents, schedulers and methods); options given in the same overrides still apply."""
    import yaml

    def get(key: str) -> Any:
        node: Any = data
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    for item in overrides:
        key, _, raw = item.partition("=")
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            continue  # reported when the override is applied
        for name_key, options_key in _NAMED_OPTIONS:
            if key == name_key and value != get(name_key):
                section, _, leaf = options_key.rpartition(".")
                parent = get(section)
                if isinstance(parent, dict):
                    parent.pop(leaf, None)
        if key == "method.name" and isinstance(data.get("method"), dict) and value != data["method"].get("name"):
            data["method"] = {}


def _deep_copy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deep_copy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deep_copy(v) for v in d]
    return d


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Loads a YAML config (default: the embedded default config), applies overrides and validates it.

    Arguments:
        path: A YAML file; ``None`` for :func:`default_config_path`.
        overrides: Dotted ``key=value`` strings.

    Returns:
        The validated :class:`Config`.

    Example:
        >>> cfg = load_config(None, ["train.max_epochs=2"])
        >>> cfg.train.max_epochs
        2
    """
    import yaml

    path = Path(path) if path is not None else default_config_path()
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    with open(path) as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        raise ConfigError(f"{path} is empty: a config needs at least one section (e.g. `data: {{name: sinusoid}}`); "
                          f"run `injflow fit` without CONFIG for the embedded default")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return config_from_dict(apply_overrides(data, overrides))


def as_config(config: Config | dict[str, Any] | str | Path | None) -> Config:
    """A :class:`Config` from a config, a plain dict, a YAML path, or ``None`` (the embedded default)."""
    if isinstance(config, Config):
        return config
    if config is None or isinstance(config, (str, Path)):
        return load_config(config)
    if isinstance(config, dict):
        return config_from_dict(config)
    raise TypeError(f"config must be a Config, dict or YAML path, got {type(config).__name__}")


def check_dimensions(config: Config, data_shape: tuple[int, ...]) -> None:
    """Rejects impossible sizes once the data shape is known: d ≥ D (d ≠ D for a free-form flow), or K larger than the
    trace space."""
    data_dim = math.prod(data_shape)
    d = config.model.latent_dim
    method = config.method
    if getattr(method, "full_dimensional", False):  # a free-form flow (fff): a normalizing flow, d = D
        if d != data_dim:
            raise ConfigError(f"method {method.name} is a free-form flow and needs d = D, got d={d} for data of shape "
                              f"{tuple(data_shape)}; set model.latent_dim={data_dim}", key="model.latent_dim")
    elif d >= data_dim:
        hint = "; for d = D (a free-form flow, a normalizing flow) use method.name=fff" if d == data_dim else ""
        raise ConfigError(f"an injective flow needs d < D, got d={d} for data of shape {tuple(data_shape)} (D={data_dim})"
                          + hint, key="model.latent_dim")
    try:
        config.method.check(latent_dim=d, data_dim=data_dim)
    except ConfigError as e:
        raise e.under("method") from None


#: Keys a resumed run may change: how long it trains, where, how it logs. Everything else shaped the saved state.
RESUMABLE_KEYS = (
    "train.max_epochs", "train.max_steps", "train.max_time", "train.stop_after_steps", "train.progress_bar",
    "train.num_threads", "train.checkpoint_every_n_steps", "train.checkpoint_interval", "train.log_every_n_steps",
    "train.pictures", "train.plot_every_n_epochs", "train.samplers", "train.gmm_components", "train.accelerator",
    "train.devices", "train.strategy", "train.num_nodes", "train.check_finite_every_n_steps", "train.compile", "run.",
    "train.loggers", "train.tags", "train.mlflow", "train.wandb",
    "data.root", "data.download",
)


def changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two config dicts (sections compared key by key).

    Example:
        >>> changed_keys({"train": {"seed": 0, "max_epochs": 5}}, {"train": {"seed": 0, "max_epochs": 9}})
        ['train.max_epochs']
    """
    keys = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        key = f"{prefix}{k}"
        if isinstance(a, dict) and isinstance(b, dict) and key.count(".") < 1:
            keys += changed_keys(a, b, f"{key}.")
        elif a != b:
            keys.append(key)
    return keys


def lookup_key(d: dict[str, Any], key: str) -> Any:
    """The value at a dotted key of a config dict (``None`` when absent)."""
    for part in key.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def run_name(config: Config) -> str:
    """``run.name``, or ``<method>-<data>`` when it is not set: ``fif-sinusoid``, or ``fif-cancer`` for your own
    ``data.options.path=cancer.csv`` (the run folder's stem and the tracked experiment's default name).

    Example:
        >>> run_name(load_config(None))
        'fif-sinusoid'
    """
    if config.run.name:
        return config.run.name
    source = config.data.options.get("path") if config.data.name in ("array", "image_folder") else None
    return f"{config.method.name}-{Path(str(source)).stem if source else config.data.name}"
