"""Parsers for the upstream on-disk formats: idx (MNIST family), pickled numpy arrays (the classic
`mnist.pkl.gz`, CIFAR-10 python batches), CSV with a header (HEPMASS) and the CelebA split file.

Pickles are read with a restricted unpickler that only rebuilds numpy arrays, lists, dicts and
scalars: a data file can never run code.
"""

from __future__ import annotations

__all__ = [
    "read_idx",
    "read_array_pickle",
    "read_cifar_batch",
    "read_csv_matrix",
    "read_csv_table",
    "read_parquet_table",
    "read_partition_file",
]

import csv
import gzip
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

# idx type codes (third byte of the magic number) -> big-endian numpy dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _open(path: str | Path) -> io.BufferedIOBase:
    path = Path(path)
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: str | Path) -> np.ndarray:
    r"""Reads an idx file (optionally gzipped), the format of MNIST and Fashion-MNIST.

    The header is two zero bytes, a type code, the number of dimensions n, then n big-endian
    uint32 sizes; the data follows in C order.

    Example:
        >>> import tempfile, os
        >>> f = os.path.join(tempfile.mkdtemp(), "x-idx1-ubyte")
        >>> _ = open(f, "wb").write(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
        >>> read_idx(f).tolist()
        [7, 8, 9]
    """
    with _open(path) as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an idx file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    shape = tuple(int(s) for s in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise ValueError(f"{path}: header promises shape {shape} ({expected} bytes) but holds {len(raw) - offset}")
    return np.frombuffer(raw, dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


class _ArrayUnpickler(pickle.Unpickler):
    # Only what numpy arrays need to be rebuilt (numpy 1.x and 2.x module names).
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


# What a pickled pandas DataFrame of numbers needs (pandas 0.2x to 3.x after pandas' own renaming table), and
# nothing that could run code: data-structure constructors only (no pandas.eval, no I/O functions).
_PANDAS_DATA_MODULES = (
    "pandas.core.frame", "pandas.core.series", "pandas.core.indexes.", "pandas.core.internals", "pandas._libs.internals",
    "pandas._libs.arrays", "pandas.core.arrays.", "pandas.arrays", "pandas.core.dtypes.dtypes", "pandas._libs.tslibs.",
)
_PANDAS_TOP_LEVEL = {"DataFrame", "Series", "Index", "RangeIndex", "MultiIndex", "CategoricalIndex", "DatetimeIndex",
                     "StringDtype", "CategoricalDtype", "Categorical", "Timestamp", "NaT"}
#: pandas 3 with pyarrow stores string columns as Arrow arrays: these rebuild them from buffers and type names only.
_PYARROW_DATA = {("pyarrow.lib", "_restore_array"), ("pyarrow.lib", "py_buffer"), ("pyarrow.lib", "type_for_alias"),
                 ("builtins", "bytearray")}


def read_dataframe_pickle(path: str | Path) -> Any:
    r"""Loads a pickled pandas DataFrame of data (the upstream GAS file) without running code.

    Like ``pandas.read_pickle`` (with pandas' renaming of old class locations), but only data-structure classes of
    pandas and numpy may be imported; anything else is refused with ``pickle.UnpicklingError`` naming it.
    """
    import pandas.compat.pickle_compat as compat

    class _DataFrameUnpickler(compat.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            module, name = compat._class_locations_map.get((module, name), (module, name))
            allowed = (
                (module, name) in _ArrayUnpickler._ALLOWED
                or (module, name) == ("builtins", "slice")
                or (module, name) in _PYARROW_DATA
                or (module == "pandas" and name in _PANDAS_TOP_LEVEL)
                or module.startswith(_PANDAS_DATA_MODULES)
            )
            if not allowed:
                raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file (it is not data)")
            return super().find_class(module, name)

    with _open(path) as f:
        return _DataFrameUnpickler(io.BufferedReader(f)).load()


def read_npy(path: str | Path, what: str) -> np.ndarray:
    r"""Loads a ``.npy`` array file (never a pickle); a file of another kind gets a message naming ``what`` it should be."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
        if magic != b"\x93NUMPY":
            kind = "text" if magic and all(32 <= b < 127 or b in (9, 10, 13) for b in magic) else "not a .npy array"
            raise ValueError(f"its content is {kind}")
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path} is not the upstream {what} (a numpy .npy array file): {e}; put the original file "
                         f"there or download it again (download=True)") from None


def read_array_pickle(path: str | Path) -> Any:
    r"""Loads a (possibly gzipped) pickle holding only numpy arrays and plain containers.

    Python 2 pickles (the classic `mnist.pkl.gz`, CIFAR-10 batches) are read with `latin1`
    encoding, which maps their byte strings one to one.
    """
    with _open(path) as f:
        return _ArrayUnpickler(io.BufferedReader(f), encoding="latin1").load()


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    r"""Reads one CIFAR-10 python batch: returns uint8 images (N, 3, 32, 32) and int64 labels (N,).

    A batch is a pickled dict with `data`, a uint8 array (N, 3072) holding each image's red, green
    and blue 32 × 32 planes in turn, and `labels`, a list of N ints.
    """
    batch = read_array_pickle(path)
    if not isinstance(batch, dict):
        raise ValueError(f"{path} is not a CIFAR-10 batch (expected a pickled dict)")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"{path} is not a CIFAR-10 batch (keys {sorted(batch)}; expected 'data' and 'labels')")
    data = np.asarray(batch["data"], dtype=np.uint8)
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: data has shape {data.shape} and labels {labels.shape}; expected (N, 3072) and (N,)")
    return data.reshape(-1, 3, 32, 32), labels


def read_csv_matrix(path: str | Path) -> tuple[list[str], np.ndarray]:
    r"""Reads a numeric CSV file with one header line: returns the column names and a float64 matrix.

    Trailing empty fields (a delimiter at the end of each line) are ignored.
    """
    with open(path) as f:
        header = [h.strip() for h in f.readline().rstrip("\r\n").split(",")]
        first = f.readline().rstrip("\r\n").rstrip(",")
    while header and header[-1] == "":
        header.pop()
    width = len(first.split(","))
    values = np.loadtxt(path, delimiter=",", skiprows=1, usecols=range(width), ndmin=2, dtype=np.float64)
    return header, values


#: Cells read as missing values (NaN) in a CSV file, as pandas reads them by default.
_MISSING = {"", "na", "nan", "n/a", "null", "none", "#n/a", "-nan", "<na>"}


def _number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return cell.strip().lower() in _MISSING
    return True


def _has_header(rows: list[list[str]]) -> bool:
    """Whether the first row names the columns: some column holds text there and numbers below it (as
    ``csv.Sniffer.has_header`` reasons), or the only row is text; an unnamed first cell (pandas' index) counts."""
    first, rest = rows[0], rows[1:21]
    if not rest:
        return not all(_number(c) for c in first)
    for j, cell in enumerate(first):
        below = [r[j] for r in rest if j < len(r)]
        if below and not _number(cell) and all(_number(c) for c in below):
            return True
    return False


def read_csv_table(path: str | Path, *, header: bool | None = None) -> tuple[list[str] | None, list[np.ndarray]]:
    r"""Reads a CSV file of numbers and text as columns: ``(names, columns)``.

    Each column is a float64 array when every cell is a number or a missing value (empty, ``NA``, ``nan``... read as
    NaN), else an array of strings. The header is detected (a column with text in the first row and numbers below it)
    unless ``header`` says; ``names`` is ``None`` without one. Quoted fields, ``\r\n`` line ends and a UTF-8 byte-order
    mark are handled; a row of another length is an error naming its line.

    Example:
        >>> import tempfile, os
        >>> f = os.path.join(tempfile.mkdtemp(), "t.csv")
        >>> _ = open(f, "w").write(",a,kind\n0,1.5,x\n1,,y\n")
        >>> names, cols = read_csv_table(f)
        >>> names, cols[1].tolist(), cols[2].tolist()
        (['', 'a', 'kind'], [1.5, nan], ['x', 'y'])
    """
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [row for row in csv.reader(f) if row]
    if not rows:
        raise ValueError(f"{path} is empty")
    if header is None:
        header = _has_header(rows)
    names = [c.strip() for c in rows[0]] if header else None
    body = rows[1:] if header else rows
    if not body:
        raise ValueError(f"{path} has a header but no rows")
    width = len(names) if names is not None else len(body[0])
    for i, row in enumerate(body):
        if len(row) != width:
            if len(row) == width + 1 and row[-1] == "":  # a delimiter at the end of each line
                row.pop()
                continue
            raise ValueError(f"line {i + 1 + bool(header)} has {len(row)} fields, expected {width}")
    columns = []
    for j in range(width):
        cells = [row[j].strip() for row in body]
        if all(_number(c) for c in cells):
            columns.append(np.array([float(c) if c.lower() not in _MISSING else np.nan for c in cells], dtype=np.float64))
        else:
            columns.append(np.array(cells, dtype=str))
    return names, columns


def read_parquet_table(path: str | Path) -> tuple[list[str], list[np.ndarray]]:
    r"""Reads a Parquet file (pandas with pyarrow, the ``data`` extra) as ``(names, columns)`` like
    :func:`read_csv_table`: numeric and boolean columns as float64 (missing values NaN), others as strings."""
    try:
        import pandas as pd

        frame = pd.read_parquet(path)
    except ImportError as e:
        raise ValueError(f"reading .parquet needs pandas and pyarrow ({e}); install them: pip install 'injflow[data]'") from None
    names, columns = [str(c) for c in frame.columns], []
    for name in frame.columns:
        col = frame[name]
        if pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
            columns.append(col.to_numpy(dtype=np.float64, na_value=np.nan))
        else:
            columns.append(col.astype(str).to_numpy(dtype=str))
    return names, columns


def read_partition_file(path: str | Path) -> dict[str, int]:
    r"""Reads CelebA's `list_eval_partition.txt`: lines `000001.jpg 0` (0 train, 1 validation, 2 test).

    Example:
        >>> import tempfile, os
        >>> f = os.path.join(tempfile.mkdtemp(), "list_eval_partition.txt")
        >>> _ = open(f, "w").write("000001.jpg 0\n000002.jpg 2\n")
        >>> read_partition_file(f)
        {'000001.jpg': 0, '000002.jpg': 2}
    """
    out: dict[str, int] = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise ValueError(f"{path}:{number}: expected '<image>.jpg <0|1|2>', got {line.strip()!r}")
            out[parts[0]] = int(parts[1])
    return out
