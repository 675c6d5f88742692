"""Files as people have them: CSV with or without a header, pandas' row index, named label columns (text classes),
text features refused by name, Parquet, a label column of any array, image folders; samples written by extension."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from injflow.data import load_dataset
from injflow.data.arrays import read_array_file


def _table(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.round(rng.normal(size=(n, 3)) * [1, 10, 100], 3)
    return x, np.arange(n) % 3


def _all_rows(data) -> torch.Tensor:
    return torch.cat([data.train, data.val, data.test])


def _all_labels(data) -> torch.Tensor:
    return torch.cat([data.train_labels, data.val_labels, data.test_labels])


def _rows_match(data, x: np.ndarray, y: np.ndarray | None = None) -> None:
    """Every split's rows are rows of ``x`` (as float32), all rows appear once, and labels follow their rows."""
    got = _all_rows(data).double()
    want = torch.tensor(x).float().double()
    assert got.shape == want.shape
    order_got, order_want = got[:, 0].argsort(), want[:, 0].argsort()
    assert torch.equal(got[order_got], want[order_want])
    if y is not None:
        assert torch.equal(_all_labels(data)[order_got], torch.as_tensor(y)[order_want])


def test_csv_header_is_detected_and_a_headerless_file_has_none(tmp_path):
    x, _ = _table()
    with_header, without = tmp_path / "h.csv", tmp_path / "n.csv"
    np.savetxt(with_header, x, delimiter=",", header="a,b,c", comments="")
    np.savetxt(without, x, delimiter=",")
    a, b = read_array_file(with_header), read_array_file(without)
    assert a.columns == ["a", "b", "c"] and b.columns is None
    assert np.array_equal(a.data, x) and np.array_equal(b.data, x)
    # a declared header wins over detection (a first row of numbers named by numbers)
    assert read_array_file(without, header=True).data.shape == (39, 3)
    _rows_match(load_dataset("array", path=str(with_header)), x)


def test_pandas_to_csv_row_index_is_detected_and_can_be_declared(tmp_path):
    pd = pytest.importorskip("pandas")
    x, y = _table()
    frame = pd.DataFrame(x, columns=["a", "b", "c"]).assign(target=y)
    frame.index = frame.index + 100  # not 0..N-1: detected by its unnamed header, not by its values
    path = tmp_path / "pandas.csv"
    frame.to_csv(path)  # pandas' default: an unnamed index column first
    with pytest.warns(UserWarning, match="row index"):
        data = load_dataset("array", path=str(path), label_key="target")
    assert data.data_shape == (3,) and data.info["columns"] == ["a", "b", "c"] and data.num_classes == 3
    _rows_match(data, x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept = read_array_file(path, index_col=False, label_key="target")  # declared: no index column
        declared = read_array_file(path, index_col=0, label_key="target")
    assert kept.data.shape == (40, 4) and np.array_equal(kept.data[:, 0], np.arange(100, 140))
    assert np.array_equal(declared.data, x)
    named = tmp_path / "named.csv"
    frame.rename_axis("id").to_csv(named)  # a named index column is a feature unless declared
    assert read_array_file(named, label_key="target").data.shape == (40, 4)
    assert np.array_equal(read_array_file(named, label_key="target", index_col="id").data, x)


def test_text_labels_become_classes_and_text_features_are_refused_by_name(tmp_path):
    x, y = _table()
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    path = tmp_path / "iris.csv"
    rows = [",".join(f"{v:g}" for v in row) + f",{name},{'red' if i % 2 else 'blue'}" for i, (row, name) in enumerate(zip(x, names))]
    path.write_text("a,b,c,species,colour\n" + "\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"path: column 'species' of .* holds text \(e\.g\. 'setosa'\) \(also 'colour'\).*label_key=species"):
        load_dataset("array", path=str(path))
    with pytest.raises(ValueError, match="column 'colour' .*holds text .*'blue'"):
        load_dataset("array", path=str(path), label_key="species")
    with pytest.raises(ValueError, match="label_key: .*has no column 'kind'; its columns are"):
        load_dataset("array", path=str(path), label_key="kind")
    path.write_text("a,b,c,species\n" + "\n".join(r.rsplit(",", 1)[0] for r in rows) + "\n")
    data = load_dataset("array", path=str(path), label_key="species")
    assert data.info["classes"] == ["setosa", "versicolor", "virginica"] and data.num_classes == 3
    _rows_match(data, x, y)


def test_a_label_column_by_number_in_every_array_format(tmp_path):
    x, y = _table()
    xy = np.concatenate([x, y[:, None]], 1)
    files = {"npy": tmp_path / "d.npy", "npz": tmp_path / "d.npz", "pt": tmp_path / "d.pt", "csv": tmp_path / "d.csv"}
    np.save(files["npy"], xy)
    np.savez(files["npz"], x=xy)
    torch.save(torch.tensor(xy), files["pt"])
    np.savetxt(files["csv"], xy, delimiter=",")
    for path in files.values():
        data = load_dataset("array", path=str(path), label_key=-1)
        assert data.data_shape == (3,) and data.num_classes == 3, path
        _rows_match(data, x, y)
    with pytest.raises(ValueError, match="label_key: .*without column names: give the label column's number"):
        load_dataset("array", path=str(files["npy"]), label_key="y")
    with pytest.raises(ValueError, match=r"label_key: column 7 does not exist: .* has 4 columns"):
        load_dataset("array", path=str(files["npy"]), label_key=7)


def test_parquet_tables_read_like_csv(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    x, y = _table()
    path = tmp_path / "t.parquet"
    pd.DataFrame(x, columns=["a", "b", "c"]).assign(kind=np.array(["u", "v", "w"])[y]).to_parquet(path)
    data = load_dataset("array", path=str(path), label_key="kind")
    assert data.info["columns"] == ["a", "b", "c"] and data.info["classes"] == ["u", "v", "w"]
    _rows_match(data, x, y)
    with pytest.raises(ValueError, match="column 'kind' .*holds text"):
        load_dataset("array", path=str(path))


def test_val_and_test_files_share_the_training_classes_and_columns(tmp_path):
    x, y = _table(30)
    names = np.array(["a", "b", "c"])[y]

    def write(path, rows, labels, header="p,q,r,label"):
        path.write_text(header + "\n" + "\n".join(",".join(f"{v:g}" for v in r) + f",{c}" for r, c in zip(rows, labels)) + "\n")

    write(tmp_path / "train.csv", x[:20], names[:20])
    write(tmp_path / "val.csv", x[20:25], ["c"] * 5)  # only one class here: still class 2, as in training
    write(tmp_path / "test.csv", x[25:], names[25:])
    data = load_dataset("array", path=str(tmp_path / "train.csv"), val_path=str(tmp_path / "val.csv"),
                        test_path=str(tmp_path / "test.csv"), label_key="label")
    assert data.val_labels.tolist() == [2] * 5 and data.test_labels.tolist() == y[25:].tolist()
    write(tmp_path / "val.csv", x[20:25], ["z"] * 5)
    with pytest.raises(ValueError, match=r"labels \['z'\] that the training labels do not have"):
        load_dataset("array", path=str(tmp_path / "train.csv"), val_path=str(tmp_path / "val.csv"),
                     test_path=str(tmp_path / "test.csv"), label_key="label")
    write(tmp_path / "val.csv", x[20:25], names[20:25], header="p,q,s,label")
    with pytest.raises(ValueError, match=r"val_path: .*has the columns \['p', 'q', 's'\]"):
        load_dataset("array", path=str(tmp_path / "train.csv"), val_path=str(tmp_path / "val.csv"),
                     test_path=str(tmp_path / "test.csv"), label_key="label")


def test_missing_cells_and_ragged_rows_are_named(tmp_path):
    path = tmp_path / "gaps.csv"
    path.write_text("a,b\n1,2\n3,\n5,6\n7,8\n9,10\n11,12\n13,14\n15,16\n17,18\n19,20\n")
    with pytest.raises(ValueError, match=r"NaN or inf \(or missing values\) in 1 of 10 rows; first offending rows: \[1\] \(file rows, from 0\)"):
        load_dataset("array", path=str(path))
    path.write_text("a,b\n1,2\n3,4,5\n")
    with pytest.raises(ValueError, match="path: .*line 3 has 3 fields, expected 2"):
        load_dataset("array", path=str(path))


def _write_images(root, sizes, *, colour=False):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, size in sizes.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, size=(*size, 3) if colour else size, dtype=np.uint8)
        Image.fromarray(pixels).save(path)
    return root


def test_image_folder_with_class_folders_and_a_declared_size(tmp_path):
    from PIL import Image

    names = {f"{cls}/{i}.{ext}": (6, 5) for cls in ("cat", "dog") for i, ext in enumerate(["png", "png", "jpg", "png", "png"])}
    root = _write_images(tmp_path / "pets", names)
    data = load_dataset("image_folder", path=str(root), n_val=2, n_test=2)
    assert data.kind == "image" and data.data_shape == (1, 6, 5) and data.info["classes"] == ["cat", "dog"]
    assert data.num_classes == 2 and sorted(_all_labels(data).tolist()) == [0] * 5 + [1] * 5
    png = np.asarray(Image.open(root / "cat/0.png"), dtype=np.float32) / 255
    assert any(torch.allclose(row[0], torch.from_numpy(png)) for row in _all_rows(data))  # 8 bits / 255, unchanged
    assert float(_all_rows(data).min()) >= 0 and float(_all_rows(data).max()) <= 1
    resized = load_dataset("image_folder", path=str(root), size=[4, 4], flatten=True)
    assert resized.data_shape == (16,) and resized.image_shape == (1, 4, 4)
    colour = _write_images(tmp_path / "colour", {"a.png": (3, 3), "b.png": (3, 3), "c.png": (3, 3)}, colour=True)
    got = load_dataset("image_folder", path=str(colour), n_val=1, n_test=1)
    assert got.data_shape == (3, 3, 3) and got.train_labels is None


@pytest.mark.parametrize("case, message", [
    ("sizes", r"size: the images differ in size \(.*4x4.*6x5\): declare the size"),
    ("mixed", "has images both directly inside .*and in sub-folders"),
    ("empty", "holds no images"),
    ("broken", "is not a readable image"),
    ("file", "is a file: for a table or an array use data.name=array"),
])
def test_image_folder_mistakes_are_named(tmp_path, case, message):
    root = tmp_path / "imgs"
    if case == "sizes":
        _write_images(root, {"a.png": (4, 4), "b.png": (6, 5), "c.png": (4, 4)})
    elif case == "mixed":
        _write_images(root, {"a.png": (4, 4), "cls/b.png": (4, 4)})
    elif case == "empty":
        root.mkdir()
        (root / "notes.txt").write_text("no images")
    elif case == "broken":
        _write_images(root, {"a.png": (4, 4), "b.png": (4, 4)})
        (root / "c.png").write_bytes(b"not a png")
    else:
        root = tmp_path / "x.npy"
        np.save(root, np.zeros((3, 2)))
    with pytest.raises(ValueError, match=message):
        load_dataset("image_folder", path=str(root))


# ----------------------------------------------------------------------------- samples written as the name says


def test_write_samples_by_extension_and_refusals(tmp_path):
    from injflow.outputs import read_samples, write_samples

    x = torch.randn(5, 3)
    for suffix in (".npy", ".csv", ".pt"):
        out = write_samples(x, tmp_path / f"s{suffix}", columns=["a", "b,c", "d"])
        assert torch.allclose(read_samples(out).float(), x), suffix
    assert (tmp_path / "s.csv").read_text().splitlines()[0] == 'a,"b,c",d'
    assert np.load(tmp_path / "s.npy").dtype == np.float32
    picture = write_samples(torch.rand(4, 1, 3, 3), tmp_path / "grid.png", data_kind="image")
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for bad in ("s.txt", "s", "s.json"):
        with pytest.raises(ValueError, match="cannot write .*name the file .npy, .csv"):
            write_samples(x, tmp_path / bad)
        assert not (tmp_path / bad).exists()
    with pytest.raises(ValueError, match="2 column names for samples of 3 values"):
        write_samples(x, tmp_path / "t.csv", columns=["a", "b"])
    assert not (tmp_path / "t.csv").exists() and not list(tmp_path.glob(".*tmp*"))


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    from injflow.outputs import write_samples

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", fail)
    with pytest.raises(OSError, match="disk is full"):
        write_samples(torch.randn(3, 2), tmp_path / "s.npy")
    assert list(tmp_path.iterdir()) == []
