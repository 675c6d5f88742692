r"""Your own data from files: ``data.name=array`` with ``data.options.path`` (``.npy``, ``.csv``, ``.parquet``, ``.npz``,
``.pt``).

.. code-block:: bash

    injflow fit --set data.name=array data.options.path=X.npy model.architecture=mlp model.latent_dim=2
    injflow fit --set data.name=array data.options.path=table.csv data.options.label_key=species ...
    injflow fit --set data.name=array data.options.path=digits.npz 'data.options.image_shape=[1, 8, 8]' ...

The rows are the samples. A seeded shuffle splits them into train / validation / test (``n_val`` and ``n_test``:
fractions in (0, 1) or counts), unless ``val_path`` / ``test_path`` give the other splits. Optional class labels make
the data usable by conditional models: ``labels`` (a file), or ``label_key`` — a column of a table (its name in a CSV
header or a Parquet file, or its number in any 2-D array: ``-1`` is the last) or an entry of an ``.npz`` / ``.pt``
dict. Text labels (``setosa``, ``versicolor``...) become classes 0, 1, ... in sorted order. ``kind`` says what the
data are (``tabular``, ``toy`` or ``image``; ``(N, C, H, W)`` arrays are images); flat image data declare their
``image_shape``. Everything is checked once, before training, with messages naming the option.

Tables as people write them: a CSV header is detected (or declared: ``header``); pandas' ``to_csv`` row index (an
unnamed first column) is detected and dropped, or declared with ``index_col`` (a name or number; ``false``: none);
a column of text that is not the label is refused by name.

``.pt`` files are read with ``weights_only=True`` (tensors only, never code); ``.npy`` / ``.npz`` without pickles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError, OptionError
from .registry import register
from .splits import DataSplits, seeded_generator, validate_data

__all__ = ["ArrayFile", "load_array", "read_array_file", "seeded_splits"]

_KINDS = ("tabular", "toy", "image")
_DATA_KEYS = ("x", "data", "X", "features")
_LABEL_KEYS = ("y", "labels", "targets", "label")
#: Readable file types (lower-case suffixes).
SUFFIXES = (".npy", ".csv", ".parquet", ".npz", ".pt")
#: Names pandas gives (or writes) for its row index: ``to_csv`` writes an empty name, ``read_csv`` reads it back as
#: ``Unnamed: 0``.
_INDEX_NAMES = ("", "Unnamed: 0")


def _option(name: str, message: str) -> OptionError:
    return OptionError(message, key=name)


@dataclass
class ArrayFile:
    """What one data file holds: the values, the labels if any (numbers or text, as in the file), the column names of
    a table, and notes on what was detected (an index column dropped...)."""

    data: np.ndarray
    labels: np.ndarray | None = None
    columns: list[str] | None = None
    notes: list[str] = field(default_factory=list)


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


def _column_index(which: str | int, names: list[str] | None, width: int, option: str, path: Path) -> int:
    """The position of a column given by name (a header's) or number (negative counts from the end)."""
    if isinstance(which, bool):
        raise _option(option, f"expected a column name or number, got {which!r}")
    if isinstance(which, int):
        if not -width <= which < width:
            raise _option(option, f"column {which} does not exist: {path} has {width} columns (0..{width - 1})")
        return which % width
    if names is None:
        raise _option(option, f"{path} has no header, so there is no column {which!r}: give its number (-1 for the last)")
    if which not in names:
        raise _option(option, f"{path} has no column {which!r}; its columns are {names[:12]}{' ...' if len(names) > 12 else ''}")
    return names.index(which)


def _class_labels(values: np.ndarray, classes: list[str] | None, option: str, where: str) -> tuple[np.ndarray, list[str] | None]:
    """Labels as integer classes: numbers must be whole and >= 0; text becomes 0..K-1 in the sorted order of the
    training labels' names (``classes``: those names, for the other splits)."""
    if values.ndim == 2 and 1 in values.shape:
        values = values.reshape(-1)
    if values.dtype.kind in "fiub":
        if classes is not None:
            raise _option(option, f"{where} has numeric labels but the training labels are text {classes[:5]}")
        if values.size and not np.all(np.isfinite(values)):
            raise _option(option, f"{where} has missing (NaN) class labels")
        if values.dtype.kind not in "iub" and not np.all(np.mod(values, 1) == 0):
            bad = values[np.mod(values, 1) != 0][0]
            raise _option(option, f"class labels of {where} must be integers (or text), e.g. not {bad}")
        values = values.astype(np.int64)
        if values.size and values.min() < 0:
            raise _option(option, f"class labels must be >= 0, got {int(values.min())} in {where}")
        return values, None
    names = [str(v) for v in values.tolist()]
    if classes is None:
        classes = sorted(set(names))
    lookup = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(names) - set(lookup))
    if unknown:
        raise _option(option, f"{where} has labels {unknown[:5]} that the training labels do not have ({classes[:10]})")
    return np.array([lookup[v] for v in names], dtype=np.int64), classes


def _table(names: list[str] | None, columns: list[np.ndarray], path: Path, *, label_key: str | int | None,
           index_col: str | int | bool | None) -> ArrayFile:
    """Features, labels and column names of a table read as columns (CSV, Parquet)."""
    width, notes = len(columns), []
    drop: set[int] = set()
    if index_col is None:  # detect pandas' row index: an unnamed first column
        if names is not None and width > 1 and names[0] in _INDEX_NAMES:
            drop.add(0)
            notes.append(f"the unnamed first column of {path} is a row index (pandas' to_csv): not a feature "
                         f"(data.options.index_col=false keeps it)")
    elif index_col is not False:
        drop.add(_column_index(index_col, names, width, "index_col", path))
    labels = None
    if label_key is not None:
        j = _column_index(label_key, names, width, "label_key", path)
        if j in drop:
            raise _option("label_key", f"column {label_key!r} is the index column (index_col)")
        labels = columns[j]
        drop.add(j)
    keep = [j for j in range(width) if j not in drop]
    if not keep:
        raise _option("path", f"{path} has no feature columns left after the index and label columns")

    def name(j: int) -> str:
        return repr(names[j]) if names is not None else str(j)

    text = [j for j in keep if columns[j].dtype.kind not in "fiub"]
    if text:
        j = text[0]
        example = next((v for v in columns[j].tolist() if v.strip()), "")
        also = f" (also {', '.join(name(k) for k in text[1:4])}{' ...' if len(text) > 4 else ''})" if len(text) > 1 else ""
        raise _option("path", f"column {name(j)} of {path} holds text (e.g. {example!r}){also}: features must be numbers; "
                              f"drop it, or name it data.options.label_key={names[j] if names else j} if it is the class")
    data = np.stack([columns[j] for j in keep], 1).astype(np.float64)
    return ArrayFile(data, labels, None if names is None else [names[j] for j in keep], notes)


def read_array_file(path: str | Path, *, key: str | None = None, label_key: str | int | None = None,
                    index_col: str | int | bool | None = None, header: bool | None = None,
                    option: str = "path") -> ArrayFile:
    r"""The data (and labels, when the file holds them) of a ``.npy``, ``.csv``, ``.parquet``, ``.npz`` or ``.pt`` file.

    ``.csv`` / ``.parquet``: a table (see the module docstring for the header, index and label columns). ``.npz`` /
    ``.pt`` dicts: the array under ``key`` (default: ``x``, ``data``, ``X``, ``features``, or the only entry), labels
    under ``label_key`` (default: ``y``, ``labels``, ``targets``, ``label``). A number ``label_key`` takes that column
    of a 2-D array out as the labels, in any format.

    Example:
        >>> import tempfile, os
        >>> f = os.path.join(tempfile.mkdtemp(), "iris.csv")
        >>> _ = open(f, "w").write("a,b,species\n1,2,setosa\n3,4,virginica\n")
        >>> table = read_array_file(f, label_key="species")
        >>> table.data.tolist(), table.labels.tolist(), table.columns
        ([[1.0, 2.0], [3.0, 4.0]], ['setosa', 'virginica'], ['a', 'b'])
    """
    path = Path(path)
    if path.is_dir():
        raise _option(option, f"{path} is a folder; for a folder of images use data.name=image_folder")
    if not path.is_file():
        raise _option(option, f"{path} does not exist")
    suffix = path.suffix.lower()
    table = label_key if isinstance(label_key, int) and not isinstance(label_key, bool) else None
    try:
        if suffix in (".csv", ".parquet"):
            from .formats import read_csv_table, read_parquet_table

            names, columns = read_csv_table(path, header=header) if suffix == ".csv" else read_parquet_table(path)
            return _table(names, columns, path, label_key=label_key, index_col=index_col)
        if index_col is not None or header is not None:
            raise _option("index_col" if index_col is not None else "header",
                          f"is for tables (.csv, .parquet); {path} is a {suffix} array")
        labels = None
        if suffix == ".npy":
            from .formats import read_npy

            if isinstance(label_key, str):
                raise _option("label_key", f"{path} is an array without column names: give the label column's number "
                                           f"(data.options.label_key=-1 for the last)")
            data = read_npy(path, "array (.npy)")
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as blob:
                arrays = {k: blob[k] for k in blob.files}
            data = _pick(arrays, key, _DATA_KEYS, option, path)
            if table is None:
                labels = _pick(arrays, label_key, _LABEL_KEYS, "label_key", path)
        elif suffix == ".pt":
            from ..io import load_torch

            blob = load_torch(path, what="data file")
            if isinstance(blob, dict):
                arrays = {k: v for k, v in blob.items() if isinstance(v, torch.Tensor)}
                data = _pick(arrays, key, _DATA_KEYS, option, path)
                if table is None:
                    labels = _pick(arrays, label_key, _LABEL_KEYS, "label_key", path)
            else:
                if isinstance(label_key, str):
                    raise _option("label_key", f"{path} holds one tensor, not a dict: give the label column's number")
                data = blob
            data = data.numpy() if isinstance(data, torch.Tensor) else data
            labels = labels.numpy() if isinstance(labels, torch.Tensor) else labels
        else:
            raise _option(option, f"{path}: unsupported file type {suffix!r}; use {', '.join(SUFFIXES)} "
                                  f"(or data.name=image_folder for a folder of images)")
    except ValueError as e:
        if isinstance(e, OptionError):
            raise
        raise _option(option, f"{path} cannot be read: {e}") from None
    if data is None:
        raise _option(option, f"{path} holds several arrays and none is called x/data/X/features: set data.options.key")
    data = np.asarray(data)
    if data.dtype.kind not in "fiub":
        raise _option(option, f"{path} holds {data.dtype} values; expected numbers")
    if table is not None:
        if data.ndim != 2:
            raise _option("label_key", f"a column number needs a 2-D array (rows, columns); {path} holds shape {data.shape}")
        j = _column_index(table, None, data.shape[1], "label_key", path)
        labels, data = data[:, j], np.delete(data, j, axis=1)
    return ArrayFile(data, None if labels is None else np.asarray(labels))


def seeded_splits(data: torch.Tensor, target: torch.Tensor | None, *, seed: int, n_val: float | int, n_test: float | int,
                  source: str | Path) -> dict[str, torch.Tensor | None]:
    """Train / val / test rows after a seeded shuffle (``n_val`` and ``n_test``: fractions in [0, 1) or counts), with
    their labels: ``{"train": ..., "train_labels": ..., ...}``."""
    splits: dict[str, torch.Tensor | None] = {}
    n = data.shape[0]
    n_val_rows, n_test_rows = _count("n_val", n_val, n), _count("n_test", n_test, n)
    if n_val_rows + n_test_rows >= n:
        raise _option("n_val", f"n_val={n_val} and n_test={n_test} leave no training rows of the {n} in {source}")
    order = torch.randperm(n, generator=seeded_generator(seed, 70))
    cut = [n - n_val_rows - n_test_rows, n - n_test_rows]
    parts = {"train": order[: cut[0]], "val": order[cut[0]: cut[1]], "test": order[cut[1]:]}
    for name, idx in parts.items():
        if not idx.numel():
            raise _option(f"n_{name}" if name != "train" else "n_val",
                          f"gives no {name} rows of the {n} in {source}; each split needs at least one")
        splits[name] = data[idx]
        splits[f"{name}_labels"] = None if target is None else target[idx]
    return splits


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


def _as_rows(x: np.ndarray, path: str | Path, option: str) -> np.ndarray:
    x = x[:, None] if x.ndim == 1 else x
    if x.ndim not in (2, 4):
        raise _option(option, f"{path} holds an array of shape {x.shape}; expected (N, D) or (N, C, H, W)")
    return x


def _finite_tensor(x: np.ndarray, path: str | Path) -> torch.Tensor:
    data = torch.from_numpy(np.ascontiguousarray(x)).float()
    finite = torch.isfinite(data.reshape(data.shape[0], -1)).all(1)
    if not bool(finite.all()):
        rows = torch.nonzero(~finite).flatten()
        raise DataError(f"{path} has NaN or inf (or missing values) in {rows.numel()} of {data.shape[0]} rows; first "
                        f"offending rows: {rows[:5].tolist()} (file rows, from 0); drop or impute them first")
    return data


@register("array")
def load_array(
    *,
    seed: int,
    root: str | Path | None,
    download: bool,
    path: str | None = None,
    key: str | None = None,
    labels: str | None = None,
    label_key: str | int | None = None,
    index_col: str | int | bool | None = None,
    header: bool | None = None,
    kind: str | None = None,
    image_shape: list[int] | None = None,
    n_val: float = 0.1,
    n_test: float = 0.1,
    val_path: str | None = None,
    test_path: str | None = None,
) -> DataSplits:
    r"""Your own array or table (see the module docstring).

    Arguments:
        path: The data file (rows are samples).
        key: The data's entry in an ``.npz`` / ``.pt`` dict.
        labels: A file of class labels, one per row (or use ``label_key`` for a column or entry of the data file).
        label_key: The labels' column (name of a table's column, or number of a 2-D array's) or ``.npz`` / ``.pt``
            entry; the column is not a feature.
        index_col: A table's row-index column (name or number), not a feature; default: pandas' unnamed first column
            is detected; ``false``: none.
        header: Whether a CSV file's first row names the columns (default: detected).
        kind: ``tabular`` (default for flat data), ``toy`` or ``image`` (default for ``(N, C, H, W)``).
        image_shape: ``[C, H, W]`` of flat image rows.
        n_val, n_test: Validation and test shares (fractions in [0, 1)) or counts, split off after a seeded shuffle.
        val_path, test_path: Files of the validation / test splits instead (same columns and options).

    Example:
        >>> import tempfile, os
        >>> f = os.path.join(tempfile.mkdtemp(), "t.csv")
        >>> _ = open(f, "w").write(",a,b,y\n" + "".join(f"{i},{i},{2 * i},{'no' if i % 2 else 'yes'}\n" for i in range(10)))
        >>> data = load_array(seed=0, root=None, download=False, path=f, label_key="y")
        >>> data.train.shape, data.info["columns"], data.info["classes"], data.num_classes
        (torch.Size([8, 2]), ['a', 'b'], ['no', 'yes'], 2)
    """
    import warnings

    if path is None:
        raise _option("path", f"data.name=array needs data.options.path=<file> ({', '.join(SUFFIXES)})")
    options = dict(key=key, label_key=label_key, index_col=index_col, header=header)
    main = read_array_file(path, **options)
    for note in main.notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    x = _as_rows(main.data, path, "path")
    y, classes = (None, None) if main.labels is None else _class_labels(main.labels, None, "label_key", str(path))
    if labels is not None:
        if main.labels is not None:
            raise _option("labels", f"{path} has its own labels (label_key); give one or the other")
        y, classes = _class_labels(read_array_file(labels, option="labels").data, None, "labels", str(labels))
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
    if y is not None and y.shape != (x.shape[0],):
        raise _option("labels", f"expected one label per row ({x.shape[0]}), got shape {y.shape}")
    data = _finite_tensor(x, path)
    target = None if y is None else torch.from_numpy(y)
    validate_data(data, name=str(path))  # the magnitude check, on the file's rows (from 0)
    splits: dict[str, Any]
    if val_path is None and test_path is None:
        splits = seeded_splits(data, target, seed=seed, n_val=n_val, n_test=n_test, source=path)
    else:
        splits = {"train": data, "train_labels": target}
        for name, other in (("val", val_path), ("test", test_path)):
            if other is None:
                raise _option(f"{name}_path", "give both val_path and test_path (or neither: seeded splits of path)")
            part = read_array_file(other, option=f"{name}_path", **options)
            if part.columns != main.columns:
                raise _option(f"{name}_path", f"{other} has the columns {part.columns}, {path} has {main.columns}")
            ox = _as_rows(part.data, other, f"{name}_path")
            if ox.shape[1:] != x.shape[1:]:
                raise _option(f"{name}_path", f"{other} has samples of shape {ox.shape[1:]}, {path} has {x.shape[1:]}")
            splits[name] = _finite_tensor(ox, other)
            oy = None
            if target is not None and part.labels is not None:
                oy = torch.from_numpy(_class_labels(part.labels, classes, "label_key", str(other))[0])
            splits[f"{name}_labels"] = oy
    info: dict[str, Any] = {"source": str(path)}
    if main.columns is not None:
        info["columns"] = main.columns
    if y is not None:
        info["num_classes"] = max(int(y.max()) + 1, len(classes or ()))
        if classes is not None:
            info["classes"] = classes
    if main.notes:
        info["notes"] = main.notes
    return DataSplits(name="array", kind=kind, data_shape=tuple(data.shape[1:]), info=info,
                      image_shape=image_shape, **splits)
