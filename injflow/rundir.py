r"""The run folder: its layout, its status, its lock, and every write into it (atomic, via :mod:`injflow.io`).

Layout (every path other code uses comes from a :class:`RunDir` attribute, never spelled out by hand)::

    RUN/config.yaml              the resolved, validated config
    RUN/status.json              running | completed | interrupted | failed, with the step, the reason and the process
    RUN/.lock                    held (flock) by the process writing the folder; names that process
    RUN/.lock.held               the lock instead, on file systems without flock (O_EXCL; RunLock)
    RUN/checkpoints/last.ckpt    latest resumable state (written atomically, never from non-finite weights)
    RUN/checkpoints/best.ckpt    best by ``train.monitor``
    RUN/metrics.csv              every logged term, train and validation (continued exactly on resume)
    RUN/tensorboard/             TensorBoard event files
    RUN/plots/                   end-of-run pictures
    RUN/model.pt                 the trained model with its post-fit samplers (written last: a run is finished with it)
    RUN/samples/, RUN/eval/, RUN/metrics.json, RUN/report.*     from ``injflow sample | evaluate | report``
    RUN/trackers.json            the MLflow / W&B runs tracking this run (``train.loggers``; :mod:`injflow.tracking`)
    RUN/wandb/                   W&B's run files (``train.loggers`` with ``wandb``)

Example:
    >>> import tempfile
    >>> run = RunDir(tempfile.mkdtemp())
    >>> run.last_checkpoint.relative_to(run.path).as_posix()
    'checkpoints/last.ckpt'
    >>> with run.lock("doc"):
    ...     _ = run.write_status("running", step=0)
    >>> run.status()["state"]
    'running'
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import RunFolderError, RunLockedError, UnfinishedRunError, WriteError
from .io import atomic_write_json, atomic_write_text, remove_stale_temp_files, writable_folder

if TYPE_CHECKING:
    from .config import Config

__all__ = ["RunDir", "RunLock", "STATES"]

#: The states of ``status.json``.
STATES = ("running", "completed", "interrupted", "failed")


class RunLock:
    """An exclusive lock on a run folder for as long as it is held; the lock file names the holder.

    Normally an ``flock`` on ``RUN/.lock``: the kernel drops it when its process dies (even on ``kill -9``), so it is
    never stale. On a file system without ``flock`` (some network and cluster mounts refuse it with ``ENOLCK`` or
    ``EOPNOTSUPP``) the lock is instead the file ``RUN/.lock.held``, created with ``O_EXCL`` (only one process can
    create it) and naming the host and pid of its holder. Such a file outlives a killed holder; it is taken over only
    when it is provably stale — written on this host by a process that no longer exists. A holder on another host, or
    a file that cannot be read, keeps the folder locked (the message says which file to delete once nothing uses the
    folder). An ``flock`` holder also respects a live ``.lock.held`` (two machines may disagree about ``flock``).

    Arguments:
        path: The lock file (``RUN/.lock``).
        purpose: What the holder does (``fit``, ``sweep``...), named in messages.
    """

    def __init__(self, path: Path, purpose: str) -> None:
        self.path, self.purpose = Path(path), purpose
        self.held_file = self.path.with_name(self.path.name + ".held")
        self._fd: int | None = None
        self._holds_file = False

    def acquire(self) -> RunLock:
        """Takes the lock; :class:`~injflow.errors.RunLockedError` if another process holds it."""
        import fcntl

        writable_folder(self.path.parent)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:  # a read-only folder or file system: one line, as every other write
            raise WriteError(e.errno or 0, f"cannot create the lock file {self.path}: {e.strerror or e}; choose a "
                                           f"folder you can write to (run.dir=...)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._locked(self._holder(self.path)) from None
        except OSError:  # a file system without flock: the O_EXCL lock file instead (never "no lock")
            os.close(fd)
            return self._acquire_held_file()
        holder = self._read(self.held_file)
        if holder is not None and not self._stale(holder):  # held through the O_EXCL file from a flock-less mount
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise self._locked(self._describe(holder))
        self._fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self._me()).encode(), 0)
        return self

    def _me(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(), "since": _now(), "purpose": self.purpose,
                "command": " ".join(sys.argv)[:300]}

    def _acquire_held_file(self) -> RunLock:
        for _ in range(3):
            try:
                fd = os.open(self.held_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self._read(self.held_file)
                if holder is None or not self._stale(holder):
                    raise self._locked(self._describe(holder)) from None
                self._remove_stale(holder)
                continue
            try:
                os.write(fd, json.dumps(self._me()).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            self._holds_file = True
            return self
        raise self._locked(self._describe(self._read(self.held_file)))

    def _remove_stale(self, holder: dict[str, Any]) -> None:
        """Moves a stale lock file aside (an atomic rename) and deletes it if it is still the stale one; a file that
        another process wrote in between is put back."""
        aside = self.held_file.with_name(f"{self.held_file.name}.stale-{os.getpid()}")
        try:
            os.rename(self.held_file, aside)
        except FileNotFoundError:
            return
        if self._read(aside) == holder:
            aside.unlink(missing_ok=True)
            return
        try:  # not the file we judged stale: a live holder's, put it back
            os.link(aside, self.held_file)
        except OSError:
            pass
        aside.unlink(missing_ok=True)

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        """The holder a lock file names; ``None`` if it does not exist; ``{}`` if it cannot be read."""
        try:
            info = json.loads(path.read_text() or "{}")
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

    @staticmethod
    def _stale(holder: dict[str, Any]) -> bool:
        """Provably stale: written on this host by a process that no longer exists."""
        from .io import pid_alive

        pid = holder.get("pid")
        return holder.get("host") == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid)

    def _holder(self, path: Path) -> str:
        return self._describe(self._read(path))

    def _describe(self, info: dict[str, Any] | None) -> str:
        if not info:
            return (f"another process (its lock file {self.held_file} cannot be read; delete it if nothing uses the "
                    f"folder)") if info == {} and self.held_file.exists() else "another process"
        return (f"process {info.get('pid')} on {info.get('host')} ({info.get('purpose')}, since {info.get('since')}: "
                f"{info.get('command', '')!s})")

    def _locked(self, holder: str) -> RunLockedError:
        return RunLockedError(f"{self.path.parent} is in use by {holder}; wait for it to finish, or use another run "
                              f"folder (run.dir=...)")

    def release(self) -> None:
        """Gives the lock back (a no-op when not held)."""
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._holds_file:
            holder = self._read(self.held_file) or {}
            if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
                self.held_file.unlink(missing_ok=True)
            self._holds_file = False

    def __enter__(self) -> RunLock:
        return self.acquire() if self._fd is None and not self._holds_file else self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class RunDir:
    """A run folder (see the module docstring for the layout).

    Arguments:
        path: The folder (it need not exist yet).
    """

    CONFIG = "config.yaml"
    STATUS = "status.json"
    MODEL = "model.pt"
    #: Everything injflow writes into a run folder: what an explicit overwrite clears (other files are left alone).
    ARTEFACTS = ("config.yaml", "status.json", "checkpoints", "metrics.csv", "tensorboard", "plots", "model.pt", "samples",
                 "eval", "metrics.json", "report.html", "report.md", "report_files")

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config = self.path / self.CONFIG
        self.status_file = self.path / self.STATUS
        self.lock_file = self.path / ".lock"
        self.checkpoints = self.path / "checkpoints"
        self.last_checkpoint = self.checkpoints / "last.ckpt"
        self.best_checkpoint = self.checkpoints / "best.ckpt"
        self.metrics_csv = self.path / "metrics.csv"
        self.tensorboard = self.path / "tensorboard"
        self.plots = self.path / "plots"
        self.model = self.path / self.MODEL
        self.samples = self.path / "samples"
        self.eval = self.path / "eval"
        self.metrics_json = self.path / "metrics.json"
        self.trackers = self.path / "trackers.json"

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------ what it is

    def is_run(self) -> bool:
        """Whether the folder holds a run written by ``injflow fit`` (it has ``config.yaml``)."""
        return self.config.is_file()

    def require_run(self) -> RunDir:
        """``self``, or :class:`~injflow.errors.RunFolderError` when the folder is not a run folder."""
        if not self.path.is_dir():
            raise RunFolderError(f"{self.path} does not exist: give a run folder written by `injflow fit`")
        if not self.is_run():
            raise RunFolderError(f"{self.path} is not a run folder (no {self.CONFIG}): give a folder written by `injflow fit`")
        return self

    def checkpoint(self, which: str) -> Path:
        """``last`` or ``best`` → its path."""
        if which not in ("last", "best"):
            raise ValueError(f"checkpoint must be 'last' or 'best', got {which!r}")
        return self.last_checkpoint if which == "last" else self.best_checkpoint

    # ------------------------------------------------------------------ config

    def write_config(self, config: Any) -> Path:
        """Writes the resolved config (a :class:`~injflow.config.Config` or plain dict) as YAML."""
        import yaml

        from .config import Config, config_to_dict

        data = config_to_dict(config) if isinstance(config, Config) else config
        return atomic_write_text(self.config, yaml.safe_dump(data, sort_keys=False))

    def read_config(self, overrides: list[str] | tuple[str, ...] = ()) -> Config:
        """The run's config with ``overrides`` applied (validated)."""
        from .config import load_config

        self.require_run()
        return load_config(self.config, overrides)

    # ------------------------------------------------------------------ status

    def write_status(self, state: str, **fields: Any) -> Path:
        """Records the run's state (one of :data:`STATES`) with ``fields`` (step, reason, ...) and the process."""
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}, got {state!r}")
        fresh = state == "running" and not fields.get("resumed")
        previous = {} if fresh or not self.status_file.is_file() else self.status()
        # Wall seconds spent by the run's processes, summed over resumes (sweeps estimate trial times from it); a
        # process killed without a word loses only its own session's seconds.
        seconds = float(previous.get("train_seconds", 0.0))
        session = previous.get("session_started_at")
        if state == "running":
            session = time.time()
        elif session is not None:
            seconds += max(0.0, time.time() - float(session))
            session = None
        status = {"state": state, **fields, "pid": os.getpid(), "host": socket.gethostname(),
                  "started": previous.get("started") or _now(), "updated": _now(), "train_seconds": round(seconds, 3)}
        if session is not None:
            status["session_started_at"] = session
        return atomic_write_json(self.status_file, status)

    def status(self) -> dict[str, Any]:
        """The recorded status.

        A ``running`` run whose process is gone is reported as ``interrupted`` (reason: the process was killed); a
        folder without ``status.json`` (killed between writing its config and its status) as ``failed``.
        """
        if not self.status_file.is_file():
            return {"state": "failed", "reason": "no status.json: the run stopped before training started"}
        try:
            status = json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return {"state": "failed", "reason": f"{self.status_file} is unreadable"}
        if status.get("state") == "running" and not self._writer_alive(status):
            status = {**status, "state": "interrupted", "reason": "the process running it was killed"}
        return status

    def _writer_alive(self, status: dict[str, Any]) -> bool:
        if status.get("host") != socket.gethostname():
            return True  # cannot tell for another machine
        from .io import pid_alive

        return pid_alive(int(status.get("pid", -1)))

    def require_finished(self, *, allow: str | None = None) -> dict[str, Any]:
        """The status of a completed run; :class:`~injflow.errors.UnfinishedRunError` otherwise.

        Arguments:
            allow: What the caller offers instead (e.g. ``"--checkpoint last"``), named in the message.
        """
        status = self.status()
        if status["state"] == "completed" and self.model.is_file():
            return status
        step = status.get("step")
        total = status.get("total_steps")
        where = f" at optimiser step {step}" + (f" of {total}" if total else "") if step is not None else ""
        reason = f" ({status['reason']})" if status.get("reason") else ""
        what = {"running": "is still training", "interrupted": "was interrupted", "failed": "failed"}.get(
            status["state"], "did not finish")
        if status["state"] == "completed":
            what, where, reason = "has no model.pt", "", f" (training completed{where}, but model.pt was deleted)"
        hint = f"resume it with `injflow fit --resume {self.path}`"
        if allow:
            hint += f", or use {allow} to read its checkpoint anyway"
        raise UnfinishedRunError(f"{self.path} {what}{where}{reason}: it is unfinished; {hint}")

    # ------------------------------------------------------------------ writing

    def check_unlocked(self) -> None:
        """Raises :class:`~injflow.errors.RunLockedError` naming the holder when another process holds the lock."""
        if self.lock_file.exists():
            self.lock("probe").acquire().release()

    def lock(self, purpose: str = "fit") -> RunLock:
        """The folder's exclusive lock (use as a context manager); a second writer gets RunLockedError."""
        return RunLock(self.lock_file, purpose)

    def open_for_writing(self) -> list[Path]:
        """Creates the folder and removes temporary files left by a killed writer; returns what was removed."""
        writable_folder(self.path)
        return remove_stale_temp_files(self.path)

    def clear(self) -> list[Path]:
        """Deletes the folder's injflow artefacts (:attr:`ARTEFACTS`: model, checkpoints, logs, metrics, pictures,
        reports) so a new run starts clean; other files stay. Returns what was deleted. The caller holds the lock."""
        import shutil

        removed = []
        for name in self.ARTEFACTS:
            target = self.path / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            else:
                continue
            removed.append(target)
        return removed

    def write_json(self, path: str | Path, obj: Any) -> Path:
        """Writes JSON atomically at ``path``, one of this folder's paths (e.g. :attr:`metrics_json`).

        The paths are taken as they are: a run folder given relatively (``runs/default``, as the README does) has
        relative paths that already start with it, so joining them onto the folder again would nest it.
        """
        return atomic_write_json(Path(path), obj)
