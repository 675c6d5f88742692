"""Where data files live, how they are fetched and verified, and the error raised when they are missing.

Files go under one cache folder (`root`): the `root=` argument, else `$INJFLOW_DATA`, else
`~/.cache/injflow/data`. Nothing is downloaded unless `download=True`; a missing file then raises a
:class:`MissingDataError` saying which files to put where, never an interactive prompt.
"""

from __future__ import annotations

__all__ = ["MissingDataError", "data_root", "md5sum", "fetch", "extract_members", "require_files"]

import hashlib
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import InjflowError

_CHUNK = 1 << 20


class MissingDataError(InjflowError, FileNotFoundError):
    """A data file is missing and could not (or may not) be downloaded; the message says where to put it."""


def data_root(root: str | Path | None = None) -> Path:
    r"""Returns the data cache folder: `root`, else `$INJFLOW_DATA`, else `~/.cache/injflow/data`.

    Example:
        >>> data_root("/tmp/somewhere")
        PosixPath('/tmp/somewhere')
    """
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("INJFLOW_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "injflow" / "data"


def md5sum(path: str | Path) -> str:
    r"""Returns the hexadecimal MD5 digest of a file (integrity check against the published sums)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, dest: str | Path, md5: str | None = None, *, timeout: float = 60.0) -> Path:
    r"""Downloads `url` to `dest` via a temporary file, verifying its MD5 if given.

    A partial or corrupt download never takes the final name, so a later call does not mistake it
    for a good file.

    Arguments:
        url: The source (any scheme urllib opens, `file://` included).
        dest: The destination file.
        md5: The expected MD5 digest, or None to skip the check.
        timeout: Seconds to wait for the connection.

    Returns:
        The destination path.

    Raises:
        OSError: if the download fails or the checksum does not match.
    """
    dest = Path(dest)
    if dest.is_file() and (md5 is None or md5sum(dest) == md5):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + f".part{os.getpid()}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            shutil.copyfileobj(response, out, _CHUNK)
        if md5 is not None and (got := md5sum(part)) != md5:
            raise OSError(f"checksum mismatch for {url}: expected MD5 {md5}, got {got}")
        part.replace(dest)
    finally:
        part.unlink(missing_ok=True)
    return dest


def extract_members(archive: str | Path, members: dict[str, Path]) -> None:
    r"""Extracts selected regular files of a tar archive by name suffix, writing only where told.

    Members are matched by the end of their path (archives differ in their top-level folder) and
    copied byte by byte, so a hostile archive cannot write outside the given destinations.

    Arguments:
        archive: A `.tar`, `.tar.gz` or similar file.
        members: Map from a path suffix inside the archive (e.g. `"power/data.npy"`) to its destination.
    """
    with tarfile.open(archive) as tar:
        entries = [m for m in tar.getmembers() if m.isfile()]
        for suffix, dest in members.items():
            found = [m for m in entries if ("/" + m.name).endswith("/" + suffix)]
            if not found:
                raise OSError(f"archive {archive} has no member ending in {suffix!r}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = dest.with_name(dest.name + f".part{os.getpid()}")
            try:
                with tar.extractfile(found[0]) as src, open(part, "wb") as out:  # type: ignore[union-attr]
                    shutil.copyfileobj(src, out, _CHUNK)
                part.replace(dest)
            finally:
                part.unlink(missing_ok=True)


def require_files(
    dataset: str,
    files: Sequence[Path],
    *,
    download: bool,
    fetcher: Callable[[], None] | None,
    how: str,
) -> list[Path]:
    r"""Returns `files` if they all exist; otherwise downloads them (if allowed) or raises.

    Arguments:
        dataset: The data set's name, for messages.
        files: The files the loader needs.
        download: Whether `fetcher` may be called.
        fetcher: Downloads and places the files, or None where no automatic download exists.
        how: A sentence saying where the files come from, appended to the error message.

    Raises:
        MissingDataError: naming every missing file and how to obtain it.
    """
    files = [Path(f) for f in files]
    missing = [f for f in files if not f.is_file()]
    if not missing:
        return files
    problem = ""
    if download and fetcher is not None:
        try:
            fetcher()
        except (OSError, urllib.error.URLError, tarfile.TarError) as error:
            problem = f"Download failed: {error}. "
        missing = [f for f in files if not f.is_file()]
        if not missing:
            return files
    elif download:
        problem = "This data set cannot be downloaded automatically. "
    else:
        problem = "Pass download=True to fetch it (needs a network), or place the files by hand. " if fetcher else ""
    listing = "\n".join(f"  {f}" for f in missing)
    raise MissingDataError(f"{dataset}: missing file(s):\n{listing}\n{problem}{how}")
