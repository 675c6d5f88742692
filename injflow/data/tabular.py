"""Tabular data: the MAF benchmarks POWER, GAS, HEPMASS, MINIBOONE and BSDS300 with the exact
preprocessing of Papamakarios et al. (2017), as used by FIF App. E.2 (via Caterini et al. 2021),
and offline stand-ins from scikit-learn standardised the same way.

The MAF files come from the authors' archive (one `data.tar.gz`, Zenodo record 1161203). They are
read from `<root>/maf/<set>/...`; with `download=True` the archive is fetched, checked against its
MD5 and the five data sets' files extracted there.
"""

from __future__ import annotations

__all__ = [
    "MAF_URL",
    "MAF_MD5",
    "MAF_FILES",
    "preprocess_power",
    "preprocess_gas",
    "preprocess_hepmass",
    "preprocess_miniboone",
    "standardise_like_maf",
]

import pickle
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from .download import data_root, extract_members, fetch, require_files
from .formats import read_csv_matrix, read_dataframe_pickle, read_npy
from .registry import check_count, register
from .splits import DataSplits, seeded_generator, split_tail, take_subset

MAF_URL = "https://zenodo.org/record/1161203/files/data.tar.gz"
MAF_MD5 = "9b9c9b0375315ad270eba4ce80c093ab"
# Files of each data set, relative to <root>/maf/ and as named inside the archive.
MAF_FILES = {
    "power": ("power/data.npy",),
    "gas": ("gas/ethylene_CO.pickle",),
    "hepmass": ("hepmass/1000_train.csv", "hepmass/1000_test.csv"),
    "miniboone": ("miniboone/data.npy",),
    "bsds300": ("BSDS300/BSDS300.hdf5",),
}
_Splits = tuple[np.ndarray, np.ndarray, np.ndarray]


def _tail_splits(data: np.ndarray) -> _Splits:
    # MAF: test = last 10 % of the rows, validation = last 10 % of the rest (int() rounds down).
    rest, test = split_tail(data, int(0.1 * data.shape[0]))
    train, val = split_tail(rest, int(0.1 * rest.shape[0]))
    return train, val, test


def standardise_like_maf(train: np.ndarray, val: np.ndarray, test: np.ndarray) -> _Splits:
    r"""Standardises with the mean and (population, ddof 0) standard deviation of train ∪ validation.

    This is MAF's normalisation for POWER and MINIBOONE; the scikit-learn stand-ins reuse it.
    Constant columns are left unscaled instead of dividing by zero.

    Example:
        >>> tr, va, te = standardise_like_maf(np.array([[0.0], [2.0]]), np.array([[4.0]]), np.array([[2.0]]))
        >>> float(te[0, 0])
        0.0
    """
    both = np.concatenate([train, val])
    mu, s = both.mean(axis=0), both.std(axis=0)
    s = np.where(s > 0, s, 1.0)
    return (train - mu) / s, (val - mu) / s, (test - mu) / s


def preprocess_power(data: np.ndarray) -> _Splits:
    r"""MAF's POWER preprocessing of `power/data.npy` (N × 8: active power, reactive power, voltage,
    intensity, three sub-meterings, time).

    Rows are shuffled with `RandomState(42)`; columns 3 (intensity) and 1 (reactive power) are
    dropped; uniform noise de-quantises the columns (0.001·U for active power, 0.01·U for voltage,
    U for the sub-meterings, none for time), drawn in MAF's order (voltage, active power,
    sub-meterings); then tail splits and :func:`standardise_like_maf`. Result: 6 columns.
    """
    if data.ndim != 2 or data.shape[1] != 8:
        raise ValueError(f"POWER data.npy has shape {data.shape}; expected (N, 8)")
    rng = np.random.RandomState(42)
    data = np.array(data, dtype=np.float64)
    rng.shuffle(data)
    n = data.shape[0]
    data = np.delete(data, 3, axis=1)
    data = np.delete(data, 1, axis=1)
    voltage_noise = 0.01 * rng.rand(n, 1)
    gap_noise = 0.001 * rng.rand(n, 1)
    sm_noise = rng.rand(n, 3)
    data = data + np.hstack([gap_noise, voltage_noise, sm_noise, np.zeros((n, 1))])
    return standardise_like_maf(*_tail_splits(data))


def preprocess_gas(data: np.ndarray, columns: list[str]) -> _Splits:
    r"""MAF's GAS preprocessing of the `ethylene_CO.pickle` table.

    Drops the columns `Meth`, `Eth` and `Time`; then, while some column correlates above 0.98 with
    another, drops the first such column (Pearson correlation, recomputed after each drop);
    standardises with the mean and sample (ddof 1) standard deviation of *all* rows (pandas'
    default, before splitting); no shuffling; tail splits. Result: 8 columns on the real data.
    """
    columns = list(columns)
    for name in ("Meth", "Eth", "Time"):
        if name not in columns:
            raise ValueError(f"GAS table has no column {name!r} (columns: {columns})")
    keep = [i for i, c in enumerate(columns) if c not in ("Meth", "Eth", "Time")]
    data = np.asarray(data, dtype=np.float64)[:, keep]
    while True:
        counts = (np.corrcoef(data, rowvar=False) > 0.98).sum(axis=1)
        if not np.any(counts > 1):
            break
        data = np.delete(data, np.flatnonzero(counts > 1)[0], axis=1)
    data = (data - data.mean(axis=0)) / data.std(axis=0, ddof=1)
    return _tail_splits(data)


def preprocess_hepmass(train: np.ndarray, test: np.ndarray) -> _Splits:
    r"""MAF's HEPMASS preprocessing of `1000_train.csv` and `1000_test.csv` (numeric, header removed).

    Keeps the signal rows (first column == 1) and drops that label column; the test file carries one
    more trailing column than the training file, which MAF drops ("the data set is messed up");
    standardises both with the training mean and sample (ddof 1) standard deviation; removes every
    feature whose *smallest* value occurs more than 5 times in the training set (MAF's
    `sorted(Counter(...))[0]`: meant to catch discrete features, and it drops the constant mass
    column); validation = last 10 % of the training rows. Result: 21 columns on the real data.
    """
    train = np.asarray(train, dtype=np.float64)
    test = np.asarray(test, dtype=np.float64)
    train = train[train[:, 0] == 1][:, 1:]
    test = test[test[:, 0] == 1][:, 1:-1]
    if train.shape[1] != test.shape[1]:
        raise ValueError(
            f"HEPMASS: after dropping the label, the training file has {train.shape[1]} columns and the test "
            f"file {test.shape[1]} (after also dropping its last one); expected the test file to have one more"
        )
    mu, s = train.mean(axis=0), train.std(axis=0, ddof=1)
    s = np.where(s > 0, s, 1.0)  # pandas would give inf/NaN; such a column is removed just below anyway
    train, test = (train - mu) / s, (test - mu) / s
    smallest_count = (train == train.min(axis=0)).sum(axis=0)
    keep = smallest_count <= 5
    train, test = train[:, keep], test[:, keep]
    train, val = split_tail(train, int(0.1 * train.shape[0]))
    return train, val, test


def preprocess_miniboone(data: np.ndarray) -> _Splits:
    r"""MAF's MINIBOONE preprocessing of `miniboone/data.npy` (already cleaned upstream, 43 columns):
    tail splits, then :func:`standardise_like_maf`."""
    return standardise_like_maf(*_tail_splits(np.asarray(data, dtype=np.float64)))


def _maf_paths(name: str, root: str | Path | None, download: bool) -> list[Path]:
    base = data_root(root) / "maf"

    def fetcher() -> None:
        archive = fetch(MAF_URL, base / "data.tar.gz", MAF_MD5)
        wanted = {rel: base / rel for rels in MAF_FILES.values() for rel in rels if not (base / rel).is_file()}
        extract_members(archive, wanted)
        archive.unlink()  # ~1 GB; every MAF set is extracted now

    how = (
        f"Get the MAF archive {MAF_URL} (MD5 {MAF_MD5}), unpack it and copy "
        f"{', '.join('data/' + f for f in MAF_FILES[name])} to {base}/ keeping the sub-folders."
    )
    files = [base / f for f in MAF_FILES[name]]
    return require_files(name.upper(), files, download=download, fetcher=fetcher, how=how)


def _optional_import(module: str, what: str) -> ModuleType:
    try:
        return __import__(module)
    except ImportError as error:
        raise ImportError(f"{what} needs the optional package {module!r}: pip install {module}") from error


def _tabular_splits(
    name: str, splits: _Splits, seed: int, sizes: dict, info: dict, labels: tuple | None = None
) -> DataSplits:
    out: dict = {}
    for i, (split, x) in enumerate(zip(("train", "val", "test"), splits)):
        n = check_count(f"n_{split}", sizes[split], allow_none=True)
        y = None if labels is None else torch.as_tensor(labels[i], dtype=torch.int64)
        x = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)
        out[split], out[f"{split}_labels"] = take_subset(x, n, seeded_generator(seed, 10 + i), y)
    shape = (out["train"].shape[1],)
    return DataSplits(name=name, kind="tabular", data_shape=shape, info={"seed": seed, **info}, **out)


_MAF_INFO = "Papamakarios et al. 2017 (MAF) preprocessing, as in FIF App. E.2; n_* options keep a seeded subset"


def _maf_result(name: str, splits: _Splits, seed: int, sizes: dict, source: Path, note: str = _MAF_INFO) -> DataSplits:
    return _tabular_splits(name, splits, seed, sizes, {"source": str(source), "preprocessing": note})


@register("power")
def load_power(
    *, seed: int, root: str | Path | None, download: bool,
    n_train: int | None = None, n_val: int | None = None, n_test: int | None = None,
) -> DataSplits:
    r"""POWER (UCI household electric power), 6-D, MAF preprocessing (:func:`preprocess_power`)."""
    (path,) = _maf_paths("power", root, download)
    splits = preprocess_power(read_npy(path, "POWER data.npy"))
    return _maf_result("power", splits, seed, {"train": n_train, "val": n_val, "test": n_test}, path)


@register("gas")
def load_gas(
    *, seed: int, root: str | Path | None, download: bool,
    n_train: int | None = None, n_val: int | None = None, n_test: int | None = None,
) -> DataSplits:
    r"""GAS (UCI gas sensor array, ethylene + CO), 8-D, MAF preprocessing (:func:`preprocess_gas`).

    The upstream file is a pandas pickle, so reading it needs the optional package pandas.
    """
    (path,) = _maf_paths("gas", root, download)
    _optional_import("pandas", "reading GAS's ethylene_CO.pickle")
    try:
        frame = read_dataframe_pickle(path)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as e:
        raise ValueError(f"{path} is not the upstream GAS pickle (a pandas DataFrame of sensor readings): {e}") from None
    splits = preprocess_gas(frame.to_numpy(dtype=np.float64), [str(c) for c in frame.columns])
    return _maf_result("gas", splits, seed, {"train": n_train, "val": n_val, "test": n_test}, path)


@register("hepmass")
def load_hepmass(
    *, seed: int, root: str | Path | None, download: bool,
    n_train: int | None = None, n_val: int | None = None, n_test: int | None = None,
) -> DataSplits:
    r"""HEPMASS (UCI, mass 1000 signal events), 21-D, MAF preprocessing (:func:`preprocess_hepmass`)."""
    train_path, test_path = _maf_paths("hepmass", root, download)
    splits = preprocess_hepmass(read_csv_matrix(train_path)[1], read_csv_matrix(test_path)[1])
    return _maf_result("hepmass", splits, seed, {"train": n_train, "val": n_val, "test": n_test}, train_path.parent)


@register("miniboone")
def load_miniboone(
    *, seed: int, root: str | Path | None, download: bool,
    n_train: int | None = None, n_val: int | None = None, n_test: int | None = None,
) -> DataSplits:
    r"""MINIBOONE (UCI particle identification), 43-D, MAF preprocessing (:func:`preprocess_miniboone`)."""
    (path,) = _maf_paths("miniboone", root, download)
    splits = preprocess_miniboone(read_npy(path, "MINIBOONE data.npy"))
    return _maf_result("miniboone", splits, seed, {"train": n_train, "val": n_val, "test": n_test}, path)


@register("bsds300")
def load_bsds300(
    *, seed: int, root: str | Path | None, download: bool,
    n_train: int | None = None, n_val: int | None = None, n_test: int | None = None,
) -> DataSplits:
    r"""BSDS300 8×8 natural-image patches, 63-D, as stored by MAF (already preprocessed; HDF5 datasets
    `train`, `validation`, `test`). Reading HDF5 needs the optional package h5py."""
    (path,) = _maf_paths("bsds300", root, download)
    h5py = _optional_import("h5py", "reading BSDS300.hdf5")
    with h5py.File(path, "r") as f:
        missing = [k for k in ("train", "validation", "test") if k not in f]
        if missing:
            raise ValueError(f"{path} lacks the HDF5 dataset(s) {missing}")
        splits = tuple(np.asarray(f[k], dtype=np.float64) for k in ("train", "validation", "test"))
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    return _maf_result("bsds300", splits, seed, sizes, path, "MAF's stored patches, no further preprocessing")


def _sklearn_standin(name: str, seed: int, sizes: dict, conditional: bool) -> DataSplits:
    from sklearn import datasets

    loaders = {
        "breast_cancer": lambda: datasets.load_breast_cancer(return_X_y=True),
        "wine": lambda: datasets.load_wine(return_X_y=True),
        "iris": lambda: datasets.load_iris(return_X_y=True),
        # scaled=False: the raw features; the default pre-scaled copy would be standardised twice.
        "diabetes": lambda: datasets.load_diabetes(return_X_y=True, scaled=False),
    }
    x, y = loaders[name]()
    # Shuffle first (the files are ordered, e.g. wine by class), as MAF does for POWER, then take
    # MAF's tail splits and train ∪ validation standardisation.
    order = torch.randperm(x.shape[0], generator=seeded_generator(seed, 20)).numpy()
    x, y = np.asarray(x, dtype=np.float64)[order], np.asarray(y)[order]
    splits = standardise_like_maf(*_tail_splits(x))
    labels = _tail_splits(y.astype(np.int64)) if conditional else None
    info = {
        "source": f"sklearn.datasets.load_{name} (offline stand-in for the MAF tabular sets)",
        "preprocessing": "seeded shuffle; test = last 10 %, validation = last 10 % of the rest; "
        "standardised with train+validation mean/std (ddof 0), as MAF does for POWER/MINIBOONE",
    }
    if conditional:
        info["num_classes"] = int(y.max()) + 1
    return _tabular_splits(name, splits, seed, sizes, info, labels)


@register("breast_cancer", standin="breast_cancer")
@register("wine", standin="wine")
@register("iris", standin="iris")
# No labels for diabetes: its target is a regression value.
@register("diabetes", standin="diabetes", conditional=False)
def load_sklearn_standin(
    *,
    seed: int,
    root: str | Path | None,
    download: bool,
    standin: str,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    conditional: bool = False,
) -> DataSplits:
    r"""Offline scikit-learn stand-ins for the MAF tabular sets: breast_cancer (569 × 30), wine (178 × 13),
    iris (150 × 4), diabetes (442 × 10, raw features); `conditional=True` returns the class labels."""
    return _sklearn_standin(standin, seed, {"train": n_train, "val": n_val, "test": n_test}, conditional)
