r"""Samples written as the file name says: ``.npy``, ``.csv`` (with the training columns' header), ``.pt`` or a ``.png``
picture (an image grid for images, a scatter otherwise) — what ``injflow sample --out`` writes.

Every file is written atomically (:mod:`injflow.io`): after an error there is the old file or none, never an empty or
half-written one; a name injflow cannot write is refused before anything is computed.

Example:
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "samples.csv"
    >>> _ = write_samples(torch.tensor([[1.0, 2.5]]), out, columns=["age", "income"])
    >>> out.read_text()
    'age,income\n1,2.5\n'
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["SAMPLE_SUFFIXES", "check_sample_path", "read_samples", "write_samples"]

#: What :func:`write_samples` writes, by file name suffix.
SAMPLE_SUFFIXES = (".npy", ".csv", ".pt", ".png")


def check_sample_path(path: str | Path) -> Path:
    """``path`` if :func:`write_samples` can write it, else a one-line ``ValueError`` naming the suffixes it can."""
    path = Path(path)
    if path.suffix.lower() not in SAMPLE_SUFFIXES:
        said = f"{path.suffix!r}" if path.suffix else "no suffix"
        raise ValueError(f"--out {path}: cannot write {said}; name the file .npy, .csv (with the columns' header), .pt "
                         f"or .png (a picture)")
    if path.is_dir():
        raise ValueError(f"--out {path} is a folder; give a file name ending in {', '.join(SAMPLE_SUFFIXES)}")
    return path


def _csv_text(x: np.ndarray, columns: Sequence[str] | None) -> str:
    buffer = io.StringIO()
    if columns is not None:
        buffer.write(",".join(_csv_cell(c) for c in columns) + "\n")
    # %.9g keeps every float32 digit; short numbers stay short (1, 2.5).
    np.savetxt(buffer, x, delimiter=",", fmt="%.9g")
    return buffer.getvalue()


def _csv_cell(name: str) -> str:
    return f'"{name.replace(chr(34), chr(34) * 2)}"' if any(ch in name for ch in ',"\n\r') else name


def write_samples(
    x: Tensor,
    path: str | Path,
    *,
    columns: Sequence[str] | None = None,
    data_kind: str = "tabular",
    image_shape: Sequence[int] | None = None,
    data_range: tuple[float, float] = (0.0, 1.0),
    title: str = "samples",
) -> Path:
    r"""Writes samples ``x`` of shape ``(n, *data_shape)`` to ``path``, in the format its suffix names.

    Arguments:
        x: The samples (in the user's units).
        path: ``.npy`` (numpy array), ``.csv`` (one row per sample, flattened; ``columns`` as the header), ``.pt``
            (tensor) or ``.png`` (a picture).
        columns: The training data's column names (the header of a ``.csv``; must match the number of values per row).
        data_kind, image_shape, data_range: What the picture of a ``.png`` draws (images in ``data_range``).
        title: The picture's title.

    Returns:
        ``path``.
    """
    from .io import atomic_torch_save, atomic_write, atomic_write_text

    path = check_sample_path(path)
    x = x.detach().cpu()
    suffix = path.suffix.lower()
    if suffix == ".pt":
        return atomic_torch_save(x, path)
    if suffix == ".npy":
        array = x.numpy()
        return atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))
    if suffix == ".csv":
        flat = x.reshape(x.shape[0], -1).numpy()
        if columns is not None and len(columns) != flat.shape[1]:
            raise ValueError(f"{len(columns)} column names for samples of {flat.shape[1]} values")
        return atomic_write_text(path, _csv_text(flat, columns))
    from .plots import plot_samples

    return plot_samples(x, path, data_kind=data_kind, title=title, image_shape=image_shape, data_range=data_range)


def read_samples(path: str | Path) -> Tensor:
    """Reads a file :func:`write_samples` wrote (``.npy``, ``.csv``, ``.pt``) back as a float tensor (for tests and
    scripts; a ``.csv`` header is skipped)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return torch.from_numpy(np.load(path, allow_pickle=False))
    if suffix == ".csv":
        from .data.formats import read_csv_table

        return torch.from_numpy(np.stack(read_csv_table(path)[1], 1))
    from .io import load_torch

    return load_torch(path, what="samples file")
