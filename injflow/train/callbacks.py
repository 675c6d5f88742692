"""Callbacks and plugins of the engine: safe checkpoints, a resumable CSV log, graceful stops on signals, plots."""

from __future__ import annotations

import csv
import math
import os
import signal
from pathlib import Path
from typing import IO, Any

import lightning as L
import torch
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from ..errors import NonFiniteStateError
from ..io import atomic_torch_save, load_torch
from .distributed import any_process, check_finite_state

__all__ = [
    "SafeCheckpointIO",
    "MetricsCSVLogger",
    "SignalFlag",
    "GracefulStop",
    "RunCheckpoints",
    "StopRun",
    "PeriodicCheckpoint",
    "PlotCallback",
    "non_finite_entries",
]


def non_finite_entries(checkpoint: dict[str, Any]) -> list[str]:
    """Names of the weights and optimiser-state tensors of a Lightning checkpoint that hold NaN or inf."""
    bad = [k for k, v in checkpoint.get("state_dict", {}).items()
           if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()]
    for i, opt in enumerate(checkpoint.get("optimizer_states", [])):
        for pid, state in opt.get("state", {}).items():
            for k, v in state.items():
                if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all():
                    bad.append(f"optimizer[{i}].state[{pid}].{k}")
    return bad


class SafeCheckpointIO(CheckpointIO):
    """Checkpoints written atomically, only from finite weights, and read without running code.

    A write goes to a temporary file that is renamed over the target (:func:`injflow.io.atomic_torch_save`), so a
    kill never leaves a corrupt checkpoint; a state with NaN/inf weights or optimiser moments is never written
    (:class:`~injflow.errors.NonFiniteStateError`), so the previous ``last.ckpt`` stays the last good one; reads
    use ``weights_only=True`` (:func:`injflow.io.load_torch`).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        bad = non_finite_entries(checkpoint)
        if bad:
            step = checkpoint.get("global_step")
            raise NonFiniteStateError(
                f"the weights became non-finite by optimiser step {step} ({len(bad)} tensors, e.g. {', '.join(bad[:3])}): "
                f"a NaN/inf gradient or learning rate; {Path(path).name} was not written, so the previous checkpoint is "
                f"the last good one. Try a lower optim.lr, optim.grad_clip, or a higher method.beta."
            )
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_torch(path, what="checkpoint", map_location=map_location or "cpu")

    def remove_checkpoint(self, path: Any) -> None:
        if os.path.exists(path):
            os.remove(path)


class MetricsCSVLogger(Logger):
    """Appends logged rows to ``<run>/metrics.csv`` (``step`` plus every metric; the header is the union, sorted).

    Unlike Lightning's ``CSVLogger`` it continues a resumed run's file exactly: every checkpoint records how many
    rows were written when it was saved (:meth:`flush` returns that count), and a resumed run first cuts the file
    back to that many rows — the rows the killed run wrote after its checkpoint are the ones the resumed run
    writes again, so the file equals an uninterrupted run's.

    Arguments:
        path: The CSV file.
        keep_rows: When resuming, the row count recorded in the checkpoint.
    """

    def __init__(self, path: str | Path, *, keep_rows: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self._pending: list[dict[str, Any]] = []
        self._rows: list[dict[str, str]] = []
        self._keys: list[str] = []
        if self.path.exists() and keep_rows is not None:
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                self._rows = list(reader)[:keep_rows]
                self._keys = [k for k in (reader.fieldnames or []) if k != "step"]
        if rank_zero_only.rank == 0:  # every DDP process builds the logger; one writes the file
            self._rewrite()

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
        self._pending.append({"step": step, **{k: float(v) for k, v in metrics.items()}})

    def _rewrite(self) -> None:
        from ..io import atomic_write

        def write(f: IO[bytes]) -> None:
            import io

            text = io.StringIO(newline="")
            writer = csv.DictWriter(text, fieldnames=["step", *self._keys])
            writer.writeheader()
            writer.writerows(self._rows)
            f.write(text.getvalue().encode())

        atomic_write(self.path, write)

    def flush(self) -> int:
        """Writes the pending rows; returns the number of rows in the file."""
        if self._pending:
            new = sorted({k for r in self._pending for k in r if k != "step"} - set(self._keys))
            rows = [{k: "" if v is None else str(v) for k, v in r.items()} for r in self._pending]
            self._pending = []
            self._rows.extend(rows)
            if new or not self.path.exists():
                self._keys = sorted(set(self._keys) | set(new))
                self._rewrite()
            else:
                with open(self.path, "a", newline="") as f:
                    csv.DictWriter(f, fieldnames=["step", *self._keys]).writerows(rows)
        return len(self._rows)

    @rank_zero_only
    def save(self) -> None:
        self.flush()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.flush()


class StopRun(Exception):
    """Raised by :class:`GracefulStop` for ``train.stop_after_steps`` (a simulated kill with a resumable checkpoint)."""


class SignalFlag:
    """Catches SIGTERM and SIGINT while installed: the first one asks training to stop after the current step; a
    second SIGINT stops at once (``KeyboardInterrupt``)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}
        self._launcher: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum
        if self._launcher is not None and hasattr(self._launcher, "kill"):  # forward to the other DDP processes
            try:
                self._launcher.kill(signum)
            except Exception:  # a launcher without children
                pass
        print(f"\n[injflow] received {signal.Signals(signum).name}: saving a checkpoint after this step, then stopping"
              + (" (Ctrl-C again to abort at once)" if signum == signal.SIGINT else ""), flush=True)

    def install(self, launcher: Any = None) -> SignalFlag:
        """(Re)installs the handlers (Lightning replaces SIGTERM's when a fit starts); only in the main thread."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            return self
        self._launcher = launcher
        for s in self.SIGNALS:
            previous = signal.signal(s, self._handle)
            if previous is not self._handle and s not in self._previous:
                self._previous[s] = previous
        return self

    def restore(self) -> None:
        """Puts back the handlers that were there before :meth:`install`."""
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def __enter__(self) -> SignalFlag:
        return self.install()

    def __exit__(self, *exc: Any) -> None:
        self.restore()


class GracefulStop(L.Callback):
    """Ends the invocation with a resumable ``last.ckpt`` on a signal or after ``stop_after_steps`` steps.

    The checkpoint is written after a whole optimiser step (at the end of an epoch, after validation, when the
    step is the epoch's last), then :class:`StopRun` (stop_after_steps) or
    :class:`~injflow.errors.RunInterrupted` (a signal) leaves the fit like a kill: no end-of-run work.
    Under DDP the decision is collective, so every process stops at the same step.

    Arguments:
        path: The checkpoint to write.
        flag: The signal flag to watch.
        stop_after_steps: Global step at which to stop (``None``: only on signals).
    """

    def __init__(self, path: str | Path, flag: SignalFlag, stop_after_steps: int | None = None) -> None:
        self.path, self.flag, self.n = Path(path), flag, stop_after_steps
        self.stopped_at: int | None = None
        self._deferred: str | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.flag.install(trainer.strategy.launcher if trainer.is_global_zero else None)

    def _reason(self, trainer: L.Trainer) -> str | None:
        reason = None
        if self.flag.signal is not None:
            reason = "signal"
        elif self.n is not None and trainer.global_step >= self.n:
            reason = "steps"
        if trainer.world_size > 1:
            stop = bool(trainer.strategy.reduce_boolean_decision(reason is not None, all=False))
            reason = (reason or "signal") if stop else None
        return reason

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        batch_idx = args[-1] if args else 0
        reason = self._reason(trainer)
        if reason is None:
            return
        if batch_idx + 1 >= trainer.num_training_batches:
            self._deferred = reason  # the epoch's validation and end-of-epoch checkpoint come first
            return
        self._stop(trainer, reason)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._deferred is not None:
            self._stop(trainer, self._deferred)

    def _stop(self, trainer: L.Trainer, reason: str) -> None:
        from ..errors import RunInterrupted

        checkpoints = next((cb for cb in trainer.callbacks if isinstance(cb, RunCheckpoints)), None)
        if checkpoints is not None:
            checkpoints.write(trainer)  # also the best checkpoint kept in memory
        else:
            check_finite_state(trainer, trainer.lightning_module, self.path)
            trainer.save_checkpoint(self.path, weights_only=False)
        self.stopped_at = trainer.global_step
        if reason == "steps":
            raise StopRun(f"stopped after {trainer.global_step} steps (train.stop_after_steps)")
        signum = self.flag.signal or signal.SIGTERM
        raise RunInterrupted(
            f"stopped by {signal.Signals(signum).name} after optimiser step {trainer.global_step}; a resumable "
            f"checkpoint is at {self.path}", signal_number=int(signum)
        )


class RunCheckpoints(L.Callback):
    """``last.ckpt`` and ``best.ckpt`` of a run, written at most every ``interval`` seconds (and always at the end).

    Writing a checkpoint costs a serialisation and an fsync (tens of milliseconds even for small nets), which on
    runs of short epochs would cost more than the training. So: at the end of every epoch (after validation) the
    monitored value is compared with the best so far, and an improvement is kept *in memory* (a copy of the weights:
    ``best.ckpt`` holds weights, the run's description and its step, not the optimiser state — ``last.ckpt`` is the
    one that resumes); the files are written once ``interval`` seconds have passed since the last write, at the end of
    training, and before a graceful stop. A ``kill -9`` therefore loses at most ``interval`` seconds plus one epoch
    (``train.checkpoint_every_n_steps`` adds mid-epoch checkpoints); a signal loses nothing.

    Arguments:
        last, best: The two files.
        monitor: The value of ``trainer.callback_metrics`` that decides the best checkpoint.
        mode: ``min`` or ``max``.
        interval: Seconds between writes (0: every epoch).
    """

    def __init__(self, last: str | Path, best: str | Path, monitor: str, mode: str = "min", interval: float = 30.0) -> None:
        self.last, self.best, self.monitor, self.mode, self.interval = Path(last), Path(best), monitor, mode, interval
        self.best_score: float | None = None
        self._pending_best: dict[str, Any] | None = None
        self._written_at = 0.0
        #: Set to write at the end of this epoch whatever the interval (a periodic checkpoint fell on its last step).
        self.write_at_epoch_end = False

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_score = state.get("best_score")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import time

        self._written_at = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import time

        value = trainer.callback_metrics.get(self.monitor)
        if value is not None:
            score = float(value)
            better = self.best_score is None or (score < self.best_score if self.mode == "min" else score > self.best_score)
            if better and math.isfinite(score):
                self.best_score = score
                self._pending_best = self._weights(trainer, pl_module)  # this epoch's weights, written with the next write
        due = self.write_at_epoch_end or time.monotonic() - self._written_at >= self.interval
        # Collective: a write ends in a barrier, and processes reading their own clocks may disagree (a hang).
        if any_process(trainer, due):
            self.write(trainer)
            self.write_at_epoch_end = False

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.write(trainer)

    @staticmethod
    def _weights(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """A weights-only checkpoint of now (no optimiser state: ``best.ckpt`` is for evaluation, ``last.ckpt`` resumes)."""
        checkpoint = {"epoch": trainer.current_epoch, "global_step": trainer.global_step,
                      "state_dict": {k: v.detach().clone() for k, v in pl_module.state_dict().items()}}
        pl_module.describe_checkpoint(checkpoint)
        return checkpoint

    def write(self, trainer: L.Trainer) -> None:
        """Writes the pending best checkpoint and the current state as ``last.ckpt`` now."""
        import time

        check_finite_state(trainer, trainer.lightning_module, self.last)  # on every process, before any barrier
        if self._pending_best is not None:
            if trainer.is_global_zero:
                trainer.strategy.checkpoint_io.save_checkpoint(self._pending_best, self.best)
            self._pending_best = None
        trainer.save_checkpoint(self.last, weights_only=False)
        self._written_at = time.monotonic()


class PeriodicCheckpoint(L.Callback):
    """Writes ``last.ckpt`` every ``n`` optimiser steps (mid-epoch; resumable thanks to the stateful loader).

    On the last step of an epoch the checkpoint is written at the end of the epoch instead (after validation), by
    :class:`RunCheckpoints`.

    Arguments:
        n: Period in optimiser steps.
        path: The checkpoint file.
    """

    def __init__(self, n: int, path: str | Path) -> None:
        self.n, self.path = int(n), Path(path)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        batch_idx = args[-1] if args else 0
        if trainer.global_step % self.n:
            return
        if batch_idx + 1 < trainer.num_training_batches:
            check_finite_state(trainer, trainer.lightning_module, self.path)
            trainer.save_checkpoint(self.path, weights_only=False)
            return
        for cb in trainer.callbacks:
            if isinstance(cb, RunCheckpoints):
                cb.write_at_epoch_end = True


class PlotCallback(L.Callback):
    """Draws the run's pictures every ``every_n_epochs`` epochs (the final set is drawn by the runner).

    Arguments:
        draw: A function ``draw(pl_module)`` that writes the pictures.
        every_n_epochs: Period in epochs.
    """

    def __init__(self, draw: Any, every_n_epochs: int) -> None:
        self.draw, self.every = draw, int(every_n_epochs)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and (trainer.current_epoch + 1) % self.every == 0:
            for logger in trainer.loggers:
                logger.save()
            self.draw(pl_module)
