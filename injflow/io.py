r"""Files, safely: atomic writes (one implementation for every file injflow writes) and loads that never run code.

**Atomic writes.** :func:`atomic_write` writes to ``.<name>.tmp-<pid>`` in the same folder, flushes and fsyncs it,
then renames it over the target (``os.replace`` is atomic on POSIX), so a reader — or a run resumed after a
``kill -9`` in the middle of a write — sees the old file or the new one, never half of one. A failed write (full
disk, read-only folder) removes the temporary file, leaves the old file as it was, and raises
:class:`~injflow.errors.WriteError` with one line saying what to do. Temporary files left behind by a killed
process are removed by :func:`remove_stale_temp_files` (the run folder does this when it is opened for writing).

**Safe loads.** :func:`load_torch` reads checkpoints and model files with ``torch.load(weights_only=True)``:
tensors, numbers, strings and containers only. A pickle that would import anything else (and so could run code)
is refused with :class:`~injflow.errors.UnsafeFileError` naming the file and the global it asked for; an empty,
truncated or foreign file gets :class:`~injflow.errors.CheckpointError` instead of a raw traceback.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "state.pt"
    >>> _ = atomic_torch_save({"w": torch.ones(2)}, path)
    >>> load_torch(path)["w"]
    tensor([1., 1.])
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from .errors import CheckpointError, UnsafeFileError, WriteError

__all__ = [
    "TEMP_MARK",
    "pid_alive",
    "writable_folder",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_torch_save",
    "atomic_savez",
    "remove_stale_temp_files",
    "load_torch",
]

#: Infix of every temporary file: ``.<name>.tmp-<pid>``.
TEMP_MARK = ".tmp-"

_WRITE_HINTS = {
    errno.ENOSPC: "the disk is full: free space, or write the run elsewhere (run.dir=...)",
    errno.EDQUOT: "the disk quota is exhausted: free space, or write the run elsewhere (run.dir=...)",
    errno.EROFS: "the file system is read-only: choose a writable folder (run.dir=...)",
    errno.EACCES: "permission denied: choose a folder you can write to (run.dir=...)",
    errno.EPERM: "permission denied: choose a folder you can write to (run.dir=...)",
}


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")


def _write_error(path: Path, error: OSError) -> WriteError:
    hint = _WRITE_HINTS.get(error.errno, "check the folder and the disk")
    kept = " (the previous file is intact)" if path.exists() else ""
    return WriteError(error.errno or 0, f"cannot write {path}: {error.strerror or error}; {hint}{kept}")


def writable_folder(path: str | Path) -> Path:
    """Creates the folder ``path`` if needed and checks that files can be made in it.

    Raises:
        WriteError: the folder cannot be created or written (read-only file system, permissions, full disk), in one
            line naming it.

    Example:
        >>> import tempfile
        >>> writable_folder(tempfile.mkdtemp()).is_dir()
        True
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _write_error(path, e) from e
    if not os.access(path, os.W_OK | os.X_OK):
        raise WriteError(errno.EACCES, f"cannot write in {path}: {_WRITE_HINTS[errno.EACCES]}")
    return path


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Calls ``write(file)`` on a temporary file next to ``path``, then renames it to ``path``.

    Arguments:
        path: The target; its folder is created.
        write: Writes the content to a binary file object.

    Returns:
        ``path``.

    Raises:
        WriteError: the folder cannot be written (full disk, read-only, permissions); ``path`` is unchanged.
    """
    path = Path(path)
    tmp = _temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        try:  # make the rename itself durable (a crash right after must not bring the old file back)
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass
    except OSError as e:
        raise _write_error(path, e) from e
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Writes ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, **options: Any) -> Path:
    """Writes ``obj`` as JSON (``indent=2`` unless given) to ``path`` atomically."""
    options.setdefault("indent", 2)
    return atomic_write_text(path, json.dumps(obj, **options) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (readable with :func:`load_torch` if ``obj`` is plain data)."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_savez(path: str | Path, **arrays: Any) -> Path:
    """``numpy.savez`` to ``path`` atomically (exactly that name: no ``.npz`` is appended)."""
    import numpy as np

    return atomic_write(path, lambda f: np.savez(f, **arrays))


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Deletes temporary files of :func:`atomic_write` under ``folder`` whose writing process is gone.

    A process killed in the middle of a write leaves its ``.<name>.tmp-<pid>`` behind; the target itself is intact.

    Returns:
        The deleted paths.
    """
    removed = []
    pattern = re.compile(r"^\..+" + re.escape(TEMP_MARK) + r"(\d+)$")
    for tmp in Path(folder).rglob(f".*{TEMP_MARK}*"):
        match = pattern.match(tmp.name)
        if not match or not tmp.is_file() or pid_alive(int(match.group(1))):
            continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (this process counts; another user's process too)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_GLOBAL = re.compile(r"GLOBAL\s+([\w.]+)")


def _pickle_imports(path: Path) -> list[str]:
    """The globals a plain pickle file would import (``[]`` if it is not a readable pickle or imports nothing).

    Reads the opcodes only (``pickletools``), so nothing is executed.
    """
    import pickletools

    imports: list[str] = []
    strings: list[str] = []
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                    strings.append(str(arg))
                elif op.name == "GLOBAL":
                    imports.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    imports.append(f"{strings[-2]}.{strings[-1]}")
                elif op.name == "STOP":
                    break
    except Exception:  # not a pickle: corrupt, not unsafe
        return []
    return imports


def load_torch(path: str | Path, *, what: str = "file", map_location: Any = "cpu") -> Any:
    """Loads a file written by ``torch.save`` that holds plain data only (``weights_only=True``); never runs code.

    Arguments:
        path: The file.
        what: What the file is, for messages (``"checkpoint"``, ``"model file"``...).
        map_location: Passed to ``torch.load``.

    Raises:
        CheckpointError: the file is missing, empty, truncated or not a torch file.
        UnsafeFileError: the file is a pickle that imports code (it is refused, nothing is executed).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"{what} {path} is empty (0 bytes): it was never completely written; delete it (and resume from "
            f"another checkpoint) or retrain"
        )
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols say nothing about the file's safety
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        found = _GLOBAL.search(text)
        imports = [found.group(1)] if found else _pickle_imports(path)
        if imports:
            what_global = f" (it imports {', '.join(imports[:3])})"
            raise UnsafeFileError(
                f"refusing to load {what} {path}: it is a pickle that would import code{what_global}, and loading "
                f"it could run that code. injflow loads only tensors and plain data; if you made this file "
                f"yourself and trust it, save its tensors instead (e.g. a state_dict)"
            ) from None
        raise _corrupt(path, what, pickle.UnpicklingError("its bytes are not a torch file")) from None
    except Exception as e:  # arbitrary bytes reach the unpickler's internals (IndexError, struct.error,
        # UnicodeDecodeError, OverflowError, ...): whatever it raises, the file is corrupt, and nothing was executed
        # (weights_only=True never imports a global).
        raise _corrupt(path, what, e) from None


def _corrupt(path: Path, what: str, error: Exception) -> CheckpointError:
    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if len(detail) > 160:
        detail = detail[:157] + "..."
    return CheckpointError(
        f"{what} {path} cannot be read ({type(error).__name__}: {detail}): it is truncated, corrupt or not a "
        f"torch file; move it away (a run then falls back to its other checkpoint) or retrain"
    )
