r"""The loggers of a fit: Lightning's own, chosen by ``train.loggers`` (``csv``, ``tensorboard``, ``mlflow``, ``wandb``).

``metrics.csv`` (:class:`~injflow.train.callbacks.MetricsCSVLogger`, continued row-exactly on resume) is always
written; TensorBoard, MLflow and W&B are Lightning's :class:`~lightning.pytorch.loggers.TensorBoardLogger`,
:class:`~lightning.pytorch.loggers.MLFlowLogger` and :class:`~lightning.pytorch.loggers.WandbLogger`. Every logger
receives every logged row — each term per step (``train/<term>_step``) and per epoch (``train/<term>_epoch``,
``val/<term>``), the method's weights and the learning rate — and the trackers also get the resolved config as
parameters (dotted keys, as ``--set`` takes them), ``train.tags`` as tags, and the run folder's name as the run name.
A tracked run's identity goes to ``RUN/trackers.json`` (:mod:`injflow.tracking`), so ``fit --resume`` continues the
same tracked run and ``evaluate`` adds its results to it.

Example:
    >>> import tempfile
    >>> from injflow.config import load_config
    >>> from injflow.rundir import RunDir
    >>> from injflow.train.callbacks import MetricsCSVLogger
    >>> run = RunDir(tempfile.mkdtemp())
    >>> loggers = build_loggers(load_config(None), run, MetricsCSVLogger(run.metrics_csv))
    >>> [type(logger).__name__ for logger in loggers]
    ['MetricsCSVLogger', 'TensorBoardLogger']
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

from ..config import Config, run_name
from ..errors import ConfigError
from ..rundir import RunDir
from ..tracking import (
    check_trackers,
    flat_config,
    mlflow_artifact_location,
    mlflow_tracking_uri,
    read_trackers,
    write_trackers,
)

__all__ = ["build_loggers", "FinishingWandbLogger"]


class FinishingWandbLogger(WandbLogger):
    """Lightning's W&B logger that also finishes the W&B run when the fit ends (so an offline run's files are
    complete when ``fit`` returns, and the next ``fit --resume`` or ``evaluate`` can reopen it by its id)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Lightning 2.6 always passes wandb.init an ``anonymous`` setting, which wandb >= 0.2x only warns about.
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)

    def finalize(self, status: str) -> None:
        super().finalize(status)
        if self._experiment is not None and hasattr(self._experiment, "finish"):
            self._experiment.finish(exit_code=0 if status == "success" else 1)


def _is_rank_zero() -> bool:
    """The process that owns the run folder (DDP processes started by Lightning's launcher have a rank set)."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


@contextmanager
def _quiet_trackers() -> Iterator[None]:
    """Silences the trackers' start-up chatter (database migrations, banners) that says nothing about the run."""
    names = ("mlflow", "alembic", "wandb", "lightning.pytorch.loggers")
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _mlflow_logger(config: Config, run: RunDir, known: dict[str, Any] | None) -> tuple[MLFlowLogger, dict[str, Any]]:
    """The MLflow logger: the recorded run when resuming (same store, run still there), else a new run."""
    from mlflow.tracking import MlflowClient

    uri = mlflow_tracking_uri(config, run)
    client = MlflowClient(uri)
    run_id = None
    if known and known.get("tracking_uri") == uri:
        try:
            client.get_run(known["run_id"])
            run_id = known["run_id"]
            client.update_run(run_id, status="RUNNING")
        except Exception as e:  # noqa: BLE001 - deleted, or another store: say so and track a new run
            print(f"[injflow] MLflow run {known.get('run_id')} cannot be continued ({str(e).splitlines()[0][:200]}); "
                  f"tracking the resumed fit as a new MLflow run")
    elif known:
        print(f"[injflow] train.mlflow.tracking_uri changed ({known.get('tracking_uri')} -> {uri}): tracking the resumed "
              f"fit as a new MLflow run")
    experiment = config.train.mlflow.experiment or run_name(config)
    if run_id is None and client.get_experiment_by_name(experiment) is None:
        # Created here so its artefacts land beside a SQLite store rather than in ./mlruns of the working directory.
        client.create_experiment(experiment, artifact_location=mlflow_artifact_location(uri))
    tags = {**config.train.tags, "injflow.run_folder": str(run.path.resolve()), "injflow.method": config.method.name,
            "injflow.data": config.data.name}
    if run_id is not None:  # the logger sets tags only on a new run; a resume may have added or changed train.tags
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
    # synchronous=False: rows are queued and written by MLflow's background thread (a SQLite write per logged row would
    # cost the training loop milliseconds each); finalize() flushes the queue when the run is marked terminated.
    logger = MLFlowLogger(experiment_name=experiment, run_name=run.path.name, tracking_uri=uri, tags=tags, run_id=run_id,
                          synchronous=False)
    return logger, {"run_id": logger.run_id, "experiment_id": logger.experiment_id, "tracking_uri": uri,
                    "experiment": experiment}


def _log_mlflow_config(logger: MLFlowLogger, params: dict[str, Any], resumed: bool) -> None:
    """The resolved config as MLflow parameters. Parameters cannot change in MLflow, so a resumed fit that changed
    one (e.g. a longer ``train.max_epochs``) records the new value as the tag ``resumed.<key>``."""
    params = {k: ("null" if v is None else str(v))[:6000] for k, v in params.items()}  # null as in config.yaml
    if resumed:
        logged = logger.experiment.get_run(logger.run_id).data.params
        changed = {k: v for k, v in params.items() if k in logged and logged[k] != v}
        for k, v in changed.items():
            logger.experiment.set_tag(logger.run_id, f"resumed.{k}", v)
        params = {k: v for k, v in params.items() if k not in logged}
    if params:
        logger.log_hyperparams(params)


def _wandb_logger(config: Config, run: RunDir, known: dict[str, Any] | None) -> tuple[WandbLogger, dict[str, Any]]:
    """The W&B logger (offline unless ``train.wandb.mode=online``): the recorded run's id when resuming."""
    import wandb

    w = config.train.wandb
    project = w.project or run_name(config)
    run_id = known.get("id") if known and known.get("project") == project else None
    tags = [f"{k}={v}" for k, v in config.train.tags.items()]
    logger = FinishingWandbLogger(name=run.path.name, project=project, entity=w.entity, save_dir=str(run.path),
                                  offline=w.mode == "offline", id=run_id, resume="allow" if run_id else None,
                                  tags=tags or None, settings=wandb.Settings(silent=True))
    started = logger.experiment  # wandb.init: the run and its id exist from here on
    return logger, {"id": started.id, "project": project, "entity": w.entity, "mode": w.mode,
                    "dir": str(run.path / "wandb")}


def build_loggers(config: Config, run: RunDir, csv_logger: Logger, *, resume: bool | None = None) -> list[Logger]:
    """The Lightning loggers ``train.loggers`` asks for, ``csv_logger`` first.

    A tracker starts (or, resuming, reopens) its run here, records it in ``RUN/trackers.json`` and receives the
    resolved config; only the process that owns the run folder does this (under DDP the others build inert loggers).

    Arguments:
        config: The run's config.
        run: The run folder.
        csv_logger: The run's :class:`~injflow.train.callbacks.MetricsCSVLogger`.
        resume: Whether the fit resumes the run (default: what ``status.json`` says).

    Raises:
        ConfigError: a tracker's package is missing or its server does not answer (one line).
    """
    names = config.train.loggers
    loggers: list[Logger] = [csv_logger]
    if "tensorboard" in names:
        loggers.append(TensorBoardLogger(save_dir=str(run.path), name=run.tensorboard.name, version="",
                                         default_hp_metric=False))
    trackers = [name for name in ("mlflow", "wandb") if name in names]
    if not trackers:
        return loggers
    check_trackers(config, run)
    if resume is None:
        resume = bool(run.status().get("resumed"))
    known = read_trackers(run) if resume else {}
    owner = _is_rank_zero()
    params = flat_config(config)
    with _quiet_trackers():
        for name in trackers:
            if not owner:  # inert: Lightning's rank-zero guards keep other processes from logging
                loggers.append(MLFlowLogger(tracking_uri=mlflow_tracking_uri(config, run)) if name == "mlflow" else
                               FinishingWandbLogger(save_dir=str(run.path), offline=True))
                continue
            build = _mlflow_logger if name == "mlflow" else _wandb_logger
            try:
                logger, entry = build(config, run, known.get(name))
            except Exception as e:  # noqa: BLE001 - a tracker that cannot start its run (credentials, store): one line
                first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
                raise ConfigError(f"{name} could not start its run ({type(e).__name__}: {first}); fix train.{name}, "
                                  f"or remove {name} from train.loggers", key="train.loggers") from None
            resumed = bool(known.get(name)) and entry.get("run_id", entry.get("id")) == known[name].get(
                "run_id", known[name].get("id"))
            if name == "mlflow":
                _log_mlflow_config(logger, params, resumed)
            else:
                logger.log_hyperparams(params)
            write_trackers(run, {name: entry})
            loggers.append(logger)
    return loggers
