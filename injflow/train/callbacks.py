"""Callbacks and plugins of the engine: atomic checkpoints, a resumable CSV log, early stop for resume tests, plots."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from .model import atomic_torch_save

__all__ = ["AtomicCheckpointIO", "MetricsCSVLogger", "StopAfterSteps", "StopRun", "PeriodicCheckpoint", "PlotCallback"]


class AtomicCheckpointIO(CheckpointIO):
    """Writes checkpoints to a temporary file and renames it, so a kill never leaves a corrupt checkpoint."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        import torch

        return torch.load(path, map_location=map_location or "cpu", weights_only=False)

    def remove_checkpoint(self, path: Any) -> None:
        if os.path.exists(path):
            os.remove(path)


class MetricsCSVLogger(Logger):
    """Appends logged metrics to ``<run>/metrics.csv`` (one row per logging call: ``step`` plus metrics).

    Unlike Lightning's ``CSVLogger`` it keeps earlier rows when a run is resumed; rows logged after the
    resumed checkpoint's step (by the killed run) are dropped first so the file has no duplicates.

    Arguments:
        path: The CSV file.
        resume_step: When resuming, the checkpoint's global step.
    """

    def __init__(self, path: str | Path, *, resume_step: int | None = None):
        super().__init__()
        self.path = Path(path)
        self._rows: list[dict[str, Any]] = []
        self._keys: list[str] = []
        if self.path.exists():
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                rows = list(reader)
                self._keys = [k for k in (reader.fieldnames or []) if k != "step"]
            if resume_step is not None:
                rows = [r for r in rows if int(float(r.get("step") or 0)) < resume_step]
            else:
                rows = []
            self._write(rows, rewrite=True)

    @property
    def name(self) -> str:
        return "metrics"

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str:
        return str(self.path.parent)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        row = {"step": step}
        row.update({k: float(v) for k, v in metrics.items() if k != "epoch" or True})
        self._rows.append(row)

    def _write(self, rows: list[dict[str, Any]], rewrite: bool) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w" if rewrite else "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["step", *self._keys])
            if rewrite:
                writer.writeheader()
            writer.writerows(rows)

    @rank_zero_only
    def save(self) -> None:
        if not self._rows:
            return
        new = sorted({k for r in self._rows for k in r if k != "step"} - set(self._keys))
        if new or not self.path.exists():
            old = []
            if self.path.exists():
                with open(self.path, newline="") as f:
                    old = list(csv.DictReader(f))
            self._keys = sorted(set(self._keys) | set(new))
            self._write(old + self._rows, rewrite=True)
        else:
            self._write(self._rows, rewrite=False)
        self._rows = []

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()


class StopRun(Exception):
    """Raised by :class:`StopAfterSteps` to end an invocation abruptly, like a kill (no end-of-epoch saving)."""


class StopAfterSteps(L.Callback):
    """Ends the invocation after ``n`` optimiser steps with a resumable ``last.ckpt`` (simulates a killed job).

    Arguments:
        n: Global step at which to stop.
        path: Where to write the checkpoint.
    """

    def __init__(self, n: int, path: str | Path):
        self.n, self.path = int(n), Path(path)
        self.stopped = False

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step >= self.n and not self.stopped:
            trainer.save_checkpoint(self.path)
            self.stopped = True
            # Abort like a kill: a graceful `should_stop` would let end-of-epoch hooks overwrite last.ckpt.
            raise StopRun(f"stopped after {trainer.global_step} steps")


class PeriodicCheckpoint(L.Callback):
    """Writes ``last.ckpt`` every ``n`` optimiser steps (mid-epoch; resumable thanks to the stateful loader).

    Arguments:
        n: Period in optimiser steps.
        path: The checkpoint file.
    """

    def __init__(self, n: int, path: str | Path):
        self.n, self.path = int(n), Path(path)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step % self.n == 0:
            trainer.save_checkpoint(self.path)


class PlotCallback(L.Callback):
    """Draws the run's pictures every ``every_n_epochs`` epochs (the final set is drawn by the runner).

    Arguments:
        draw: A function ``draw(pl_module)`` that writes the pictures.
        every_n_epochs: Period in epochs.
    """

    def __init__(self, draw: Any, every_n_epochs: int):
        self.draw, self.every = draw, int(every_n_epochs)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and (trainer.current_epoch + 1) % self.every == 0:
            for logger in trainer.loggers:
                logger.save()
            self.draw(pl_module)
