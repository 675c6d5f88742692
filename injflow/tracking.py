r"""Experiment trackers of a run folder (MLflow, Weights & Biases): where a run is tracked, and what ``evaluate``
sends there.

Training is tracked by Lightning's own loggers, built by :func:`injflow.train.loggers.build_loggers` from
``train.loggers``. When a tracker starts a run it is recorded in ``RUN/trackers.json`` (the tracker, its run id, its
store), so that ``injflow fit --resume RUN`` continues the *same* tracked run and ``injflow evaluate RUN`` adds its
``metrics.json``, its numbers and its pictures to it (:func:`log_evaluation`). This module needs neither Lightning
nor the trackers' packages until a tracker is used; a missing package or an unreachable server is one line
(:class:`~injflow.errors.ConfigError` naming the key), found before training starts (:func:`check_trackers`), never
a hang.

MLflow's default store is a SQLite database next to the run folder, ``<folder holding RUN>/mlflow.db`` (a real
database, nothing to start; sibling runs such as a sweep's trials share it, so they form one table in MLflow's UI),
with the artefacts in ``<folder holding RUN>/mlartifacts/``; ``train.mlflow.tracking_uri`` points at a server
instead. W&B runs offline by default (``RUN/wandb/offline-run-*``, uploaded later by ``wandb sync``).

Example:
    >>> import tempfile
    >>> from injflow.config import load_config
    >>> from injflow.rundir import RunDir
    >>> run = RunDir(tempfile.mkdtemp() + "/runs/a")
    >>> mlflow_tracking_uri(load_config(None), run).endswith("/runs/mlflow.db")
    True
    >>> read_trackers(run)
    {}
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import Config
    from .rundir import RunDir

__all__ = [
    "TRACKERS",
    "PROBE_TIMEOUT",
    "require_package",
    "mlflow_tracking_uri",
    "mlflow_artifact_location",
    "wandb_base_url",
    "check_reachable",
    "check_trackers",
    "flat_config",
    "read_trackers",
    "write_trackers",
    "log_evaluation",
]

#: Trackers a run can record (``train.loggers`` beyond ``csv`` and ``tensorboard``), with their package and extra.
TRACKERS = {"mlflow": ("mlflow", "mlflow"), "wandb": ("wandb", "wandb")}
#: Seconds a tracking server may take to accept a connection before it counts as unreachable.
PROBE_TIMEOUT = 3.0


def require_package(tracker: str) -> Any:
    """Imports the tracker's package, or one line saying how to install it (:class:`~injflow.errors.ConfigError`)."""
    package, extra = TRACKERS[tracker]
    try:
        return importlib.import_module(package)
    except ImportError:
        raise ConfigError(f"{tracker} is not installed; install it with pip install 'injflow[{extra}]' (or remove "
                          f"{tracker} from train.loggers)", key="train.loggers") from None


def mlflow_tracking_uri(config: Config, run: RunDir) -> str:
    """``train.mlflow.tracking_uri``, or the SQLite store ``<folder holding the run folder>/mlflow.db``."""
    uri = config.train.mlflow.tracking_uri
    if uri:
        return uri
    return f"sqlite:///{run.path.resolve().parent / 'mlflow.db'}"


def mlflow_artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artefacts: ``mlartifacts/`` beside a SQLite file; the server decides otherwise.

    (MLflow's own default for a database store is ``./mlruns`` in the working directory, wherever that is.)
    """
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return None


def wandb_base_url() -> str:
    """The W&B server an online run talks to (``WANDB_BASE_URL``, default the public one)."""
    return os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")


def check_reachable(uri: str, key: str) -> None:
    """For an ``http(s)://`` address: one TCP connection within :data:`PROBE_TIMEOUT` seconds, else a one-line
    :class:`~injflow.errors.ConfigError` naming ``key`` (clients would otherwise retry for minutes)."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    host = parsed.hostname or "localhost"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ConfigError(f"cannot reach {uri} ({reason}); start the server, fix the address, or remove the tracker "
                          f"from train.loggers", key=key) from None


def check_trackers(config: Config, run: RunDir) -> None:
    """Checks, before anything is written, that every tracker of ``train.loggers`` can start: its package imports
    and its server (MLflow's tracking URI, W&B online) accepts a connection."""
    names = config.train.loggers
    if "mlflow" in names:
        require_package("mlflow")
        check_reachable(mlflow_tracking_uri(config, run), "train.mlflow.tracking_uri")
    if "wandb" in names:
        require_package("wandb")
        if config.train.wandb.mode == "online":
            check_reachable(wandb_base_url(), "train.wandb.mode=online")


def flat_config(config: Config) -> dict[str, Any]:
    """The resolved config as ``{dotted key: value}`` (the keys ``--set`` takes), for trackers' parameter tables;
    lists and empty mappings as JSON text."""
    from .config import config_to_dict

    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[prefix] = value if value is None or isinstance(value, (int, float, str, bool)) else json.dumps(value)

    walk("", config_to_dict(config))
    return flat


def read_trackers(run: RunDir) -> dict[str, dict[str, Any]]:
    """The tracked runs recorded in ``RUN/trackers.json`` (``{}`` when none or unreadable)."""
    try:
        data = json.loads(run.trackers.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_trackers(run: RunDir, entries: dict[str, dict[str, Any]]) -> Path:
    """Records tracked runs in ``RUN/trackers.json`` (atomically; entries of other trackers are kept)."""
    from .io import atomic_write_json

    return atomic_write_json(run.trackers, {**read_trackers(run), **entries})


def _scalars(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    """Finite numbers of a nested dict as ``{prefix/key/subkey: value}`` (lists and strings are left out)."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        key = f"{prefix}/{k}"
        if isinstance(v, dict):
            out.update(_scalars(v, key))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[key] = float(v)
    return out


def _evaluation_files(folder: RunDir) -> list[Path]:
    files = [folder.metrics_json]
    if folder.eval.is_dir():
        files += sorted(p for p in folder.eval.rglob("*") if p.is_file())
    return files


def _mlflow_evaluation(entry: dict[str, Any], folder: RunDir, values: dict[str, float], step: int) -> str:
    require_package("mlflow")
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    uri = entry["tracking_uri"]
    check_reachable(uri, "train.mlflow.tracking_uri")
    client = MlflowClient(uri)
    run_id = entry["run_id"]
    client.log_artifact(run_id, str(folder.metrics_json))
    if folder.eval.is_dir():
        client.log_artifacts(run_id, str(folder.eval), artifact_path="eval")
    now = int(time.time() * 1000)
    metrics = [Metric(key=k, value=v, timestamp=now, step=step) for k, v in values.items()]
    for i in range(0, len(metrics), 1000):  # MLflow's limit per batch
        client.log_batch(run_id, metrics=metrics[i: i + 1000])
    return f"MLflow run {run_id} ({uri})"


def _wandb_evaluation(entry: dict[str, Any], folder: RunDir, values: dict[str, float], step: int) -> str:
    wandb = require_package("wandb")
    if entry.get("mode") == "online":
        check_reachable(wandb_base_url(), "train.wandb.mode=online")
    run = wandb.init(id=entry["id"], project=entry.get("project"), entity=entry.get("entity"), dir=str(folder.path),
                     mode=entry.get("mode", "offline"), resume="allow", settings=wandb.Settings(silent=True))
    try:
        files_dir = Path(run.dir)
        for path in _evaluation_files(folder):
            # A copy inside the W&B run's folder is a snapshot (wandb.save would link to the live file).
            target = files_dir / path.relative_to(folder.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            run.save(str(target), base_path=str(files_dir), policy="now")
        run.summary.update({**values, "evaluate/step": step})
    finally:
        run.finish()
    return f"W&B run {entry['id']} ({entry.get('mode', 'offline')}, {run.dir})"


def log_evaluation(folder: RunDir, metrics: dict[str, Any], *, split: str, step: int, verbose: bool = True) -> list[str]:
    """Sends ``metrics.json``, the pictures of ``RUN/eval/`` and the metrics' numbers (``eval/<split>/<key>``) to the
    run's tracked runs (``RUN/trackers.json``); returns where they went.

    Evaluation has already succeeded when this runs: a tracker that fails (package gone, server down) costs a
    one-line warning, not the evaluation.
    """
    values = _scalars({k: v for k, v in metrics.items() if k != "run"}, f"eval/{split}")
    sent = []
    for name, entry in read_trackers(folder).items():
        send = {"mlflow": _mlflow_evaluation, "wandb": _wandb_evaluation}.get(name)
        if send is None:
            continue
        try:
            sent.append(send(entry, folder, values, step))
        except Exception as e:  # noqa: BLE001 - a tracker's failure must not undo a finished evaluation
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            print(f"[injflow] warning: the evaluation was not sent to {name}: {first}")
    if verbose:
        for where in sent:
            print(f"[injflow] evaluation -> {where}")
    return sent
