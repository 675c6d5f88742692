r"""Your own data from files: ``data.name=array`` with ``data.options.path`` (``.npy``, ``.csv``, ``.npz``, ``.pt``).

.. code-block:: bash

    injflow fit --set data.name=array data.options.path=X.npy model.architecture=mlp model.latent_dim=2
    injflow fit --set data.name=array data.options.path=digits.npz 'data.options.image_shape=[1, 8, 8]' ...

The rows are the samples. A seeded shuffle splits them into train / validation / test (``n_val`` and ``n_test``:
fractions in (0, 1) or counts), unless ``val_path`` / ``test_path`` give the other splits. Optional integer class
labels (``labels``: a file, or a key of the ``.npz`` / ``.pt`` dict) make the data usable by conditional models.
``kind`` says what the data are (``tabular``, ``toy`` or ``image``; ``(N, C, H, W)`` arrays are images); flat image
data declare their ``image_shape``. Everything is checked once, before training, with messages naming the option.

``.pt`` files are read with ``weights_only=True`` (tensors only, never code); ``.npy`` / ``.npz`` without pickles.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import OptionError
from .registry import register
from .splits import DataSplits, seeded_generator, validate_data

__all__ = ["load_array", "read_array_file"]

_KINDS = ("tabular", "toy", "image")
_DATA_KEYS = ("x", "data", "X", "features")
_LABEL_KEYS = ("y", "labels", "targets", "label")


def _option(name: str, message: str) -> OptionError:
    return OptionError(message, key=name)


def _pick(arrays: dict[str, Any], key: str | None, candidates: tuple[str, ...], option: str, path: Path) -> Any:
    if key is not None:
        if key not in arrays:
            raise _option(option, f"{path} has no entry {key!r}; it has {sorted(arrays)}")
        return arrays[key]
    found = [k for k in candidates if k in arrays]
    if found:
        return arrays[found[0]]
    if option == "path" and len(arrays) == 1:
        return next(iter(arrays.values()))
    return None


def read_array_file(path: str | Path, *, key: str | None = None, label_key: str | None = None,
                    option: str = "path") -> tuple[np.ndarray, np.ndarray | None]:
    """The data (and labels, when the file holds them) of a ``.npy``, ``.csv``, ``.npz`` or ``.pt`` file.

    ``.csv``: numbers separated by commas, an optional header row. ``.npz`` / ``.pt`` dicts: the array under
    ``key`` (default: ``x``, ``data``, ``X``, ``features``, or the only entry), labels under ``label_key`` (default:
    ``y``, ``labels``, ``targets``).
    """
    path = Path(path)
    if not path.is_file():
        raise _option(option, f"{path} does not exist")
    suffix = path.suffix.lower()
    labels = None
    try:
        if suffix == ".npy":
            from .formats import read_npy

            data = read_npy(path, "array (.npy)")
        elif suffix == ".csv":
            from .formats import read_csv_matrix

            with open(path) as f:
                first = f.readline()
            try:
                [float(v) for v in first.strip().split(",")]
                data = np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float64)
            except ValueError:
                data = read_csv_matrix(path)[1]
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as blob:
                arrays = {k: blob[k] for k in blob.files}
            data = _pick(arrays, key, _DATA_KEYS, option, path)
            labels = _pick(arrays, label_key, _LABEL_KEYS, "label_key", path)
        elif suffix == ".pt":
            from ..io import load_torch

            blob = load_torch(path, what="data file")
            if isinstance(blob, dict):
                arrays = {k: v for k, v in blob.items() if isinstance(v, torch.Tensor)}
                data = _pick(arrays, key, _DATA_KEYS, option, path)
                labels = _pick(arrays, label_key, _LABEL_KEYS, "label_key", path)
            else:
                data = blob
            data = data.numpy() if isinstance(data, torch.Tensor) else data
            labels = labels.numpy() if isinstance(labels, torch.Tensor) else labels
        else:
            raise _option(option, f"{path}: unsupported file type {suffix!r}; use .npy, .csv, .npz or .pt")
    except ValueError as e:
        if str(e).startswith("option "):
            raise
        raise _option(option, f"{path} cannot be read: {e}") from None
    if data is None:
        raise _option(option, f"{path} holds several arrays and none is called x/data/X/features: set data.options.key")
    data = np.asarray(data)
    if data.dtype.kind not in "fiub":
        raise _option(option, f"{path} holds {data.dtype} values; expected numbers")
    return data, None if labels is None else np.asarray(labels)


def _count(option: str, value: float | int, n: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _option(option, f"expected a fraction in [0, 1) or a count, got {value!r}")
    if isinstance(value, float) and value < 1:
        if value < 0:
            raise _option(option, f"must be >= 0, got {value}")
        return int(round(value * n))
    if value < 0 or value != int(value):
        raise _option(option, f"expected a fraction in [0, 1) or a whole count >= 0, got {value}")
    return int(value)


@register("array")
def load_array(
    *,
    seed: int,
    root: str | Path | None,
    download: bool,
    path: str | None = None,
    key: str | None = None,
    labels: str | None = None,
    label_key: str | None = None,
    kind: str | None = None,
    image_shape: list[int] | None = None,
    n_val: float = 0.1,
    n_test: float = 0.1,
    val_path: str | None = None,
    test_path: str | None = None,
) -> DataSplits:
    r"""Your own array (see the module docstring).

    Arguments:
        path: The data file (rows are samples).
        key: The data's entry in an ``.npz`` / ``.pt`` dict.
        labels: A file of integer labels, one per row (or use ``label_key`` for an entry of the data file).
        label_key: The labels' entry in an ``.npz`` / ``.pt`` dict.
        kind: ``tabular`` (default for flat data), ``toy`` or ``image`` (default for ``(N, C, H, W)``).
        image_shape: ``[C, H, W]`` of flat image rows.
        n_val, n_test: Validation and test shares (fractions in [0, 1)) or counts, split off after a seeded shuffle.
        val_path, test_path: Files of the validation / test splits instead.
    """
    if path is None:
        raise _option("path", "data.name=array needs data.options.path=<file> (.npy, .csv, .npz or .pt)")
    x, y = read_array_file(path, key=key, label_key=label_key)
    if labels is not None:
        y, _ = read_array_file(labels, option="labels")
        y = y.reshape(-1) if y.ndim == 2 and 1 in y.shape else y
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim not in (2, 4):
        raise _option("path", f"{path} holds an array of shape {x.shape}; expected (N, D) or (N, C, H, W)")
    if kind is None:
        kind = "image" if x.ndim == 4 else "tabular"
    if kind not in _KINDS:
        raise _option("kind", f"expected one of {', '.join(_KINDS)}, got {kind!r}")
    if image_shape is not None:
        if kind != "image":
            raise _option("image_shape", f"is for image data; set data.options.kind=image (got kind={kind!r})")
        image_shape = tuple(int(s) for s in image_shape)
        if len(image_shape) != 3 or int(np.prod(image_shape)) != int(np.prod(x.shape[1:])):
            raise _option("image_shape", f"{list(image_shape)} must be [C, H, W] with {int(np.prod(x.shape[1:]))} values "
                                         f"(one row of {path})")
    elif kind == "image" and x.ndim != 4:
        raise _option("image_shape", f"flat image rows ({x.shape[1:]}) need data.options.image_shape=[C, H, W]")
    if y is not None:
        if y.shape != (x.shape[0],):
            raise _option("labels", f"expected one label per row ({x.shape[0]}), got shape {y.shape}")
        if y.dtype.kind not in "iub" and not np.all(np.mod(y, 1) == 0):
            raise _option("labels", "class labels must be integers")
        y = y.astype(np.int64)
        if y.min() < 0:
            raise _option("labels", f"class labels must be >= 0, got {int(y.min())}")
    data = torch.from_numpy(np.ascontiguousarray(x)).float()
    target = None if y is None else torch.from_numpy(y)
    validate_data(data, name=str(path))  # before splitting, so the rows it names are the file's rows (from 0)
    splits: dict[str, Any] = {}
    if val_path is None and test_path is None:
        n = data.shape[0]
        n_val_rows, n_test_rows = _count("n_val", n_val, n), _count("n_test", n_test, n)
        if n_val_rows + n_test_rows >= n:
            raise _option("n_val", f"n_val={n_val} and n_test={n_test} leave no training rows of the {n} in {path}")
        order = torch.randperm(n, generator=seeded_generator(seed, 70))
        cut = [n - n_val_rows - n_test_rows, n - n_test_rows]
        parts = {"train": order[: cut[0]], "val": order[cut[0]: cut[1]], "test": order[cut[1]:]}
        for name, idx in parts.items():
            if not idx.numel():
                raise _option(f"n_{name}" if name != "train" else "n_val",
                              f"gives no {name} rows of the {n} in {path}; each split needs at least one")
            splits[name] = data[idx]
            splits[f"{name}_labels"] = None if target is None else target[idx]
    else:
        splits["train"], splits["train_labels"] = data, target
        for name, other in (("val", val_path), ("test", test_path)):
            if other is None:
                raise _option(f"{name}_path", "give both val_path and test_path (or neither: seeded splits of path)")
            ox, oy = read_array_file(other, key=key, label_key=label_key, option=f"{name}_path")
            ox = ox[:, None] if ox.ndim == 1 else ox
            splits[name] = torch.from_numpy(np.ascontiguousarray(ox)).float()
            splits[f"{name}_labels"] = None if oy is None or target is None else torch.from_numpy(oy.astype(np.int64))
    info = {"source": str(path), "num_classes": int(y.max()) + 1} if y is not None else {"source": str(path)}
    return DataSplits(name="array", kind=kind, data_shape=tuple(data.shape[1:]), info=info,
                      image_shape=image_shape, **splits)
