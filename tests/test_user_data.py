"""Your own data from the command line (data.name=array) and the scikit-learn estimator."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from injflow.cli import main
from injflow.data import load_dataset

FAST = ["train.max_epochs=2", "train.progress_bar=false", "train.num_threads=1", "train.pictures=false",
        "train.samplers=[gaussian]", "data.batch_size=64", "model.architecture=mlp", "model.options={hidden_features: [16]}"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _curve(n: int = 300, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = rng.uniform(-2, 2, n)
    return np.stack([t, np.sin(2 * t), 0.1 * t**2, 0.05 * rng.normal(size=n)], 1)


@pytest.mark.parametrize("suffix", [".npy", ".csv", ".npz", ".pt"])
def test_fit_and_evaluate_your_own_file(tmp_path, suffix):
    x = _curve()
    path = tmp_path / f"x{suffix}"
    if suffix == ".npy":
        np.save(path, x)
    elif suffix == ".csv":
        np.savetxt(path, x, delimiter=",", header="a,b,c,d", comments="")
    elif suffix == ".npz":
        np.savez(path, x=x)
    else:
        torch.save(torch.tensor(x), path)
    run = tmp_path / "run"
    assert main(["fit", "--set", *FAST, "data.name=array", f"data.options.path={path}", "model.latent_dim=1",
                 f"run.dir={run}"]) == 0
    assert main(["evaluate", str(run), "--no-progress"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n"] == 30 and metrics["data_dim"] == 4 and metrics["sample_quality"]["metric"] == "fid_like_w2"
    splits = load_dataset("array", path=str(path))
    assert sum(s.shape[0] for s in (splits.train, splits.val, splits.test)) == 300
    assert torch.allclose(torch.cat([splits.train, splits.val, splits.test]).sum(0), torch.tensor(x.sum(0), dtype=torch.float32),
                          rtol=1e-4)


def test_labels_and_a_conditional_model(tmp_path, capsys):
    x, y = _curve(), np.arange(300) % 3
    x[:, 0] += y  # the class shifts the curve
    np.savez(tmp_path / "x.npz", x=x, y=y)
    run = tmp_path / "run"
    assert main(["fit", "--set", *FAST, "data.name=array", f"data.options.path={tmp_path / 'x.npz'}", "model.latent_dim=1",
                 "model.conditional=true", f"run.dir={run}"]) == 0
    assert main(["sample", str(run), "--n", "20", "--class", "2"]) == 0
    samples = torch.load(run / "samples" / "prior_T1_class2.pt")
    assert samples.shape == (20, 4) and (run / "samples" / "prior_T1_class2.png").is_file()
    assert main(["evaluate", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["sample", str(run), "--n", "5", "--class", "3"]) == 2
    assert "0..2" in capsys.readouterr().err


def test_flat_images_are_drawn_as_images_and_four_features_are_not(tmp_path):
    from injflow.model import InjectiveFlow

    digits = load_dataset("digits", flatten=True)
    np.savez(tmp_path / "digits.npz", x=digits.train.numpy()[:300])
    run = tmp_path / "images"
    assert main(["fit", "--set", *FAST, "data.name=array", f"data.options.path={tmp_path / 'digits.npz'}",
                 "data.options.kind=image", "data.options.image_shape=[1, 8, 8]", "model.latent_dim=4",
                 "train.pictures=true", f"run.dir={run}"]) == 0
    assert (run / "plots" / "samples_prior.png").is_file() and (run / "plots" / "reconstructions.png").is_file()
    flow = InjectiveFlow.load(run / "model.pt")
    assert flow.data_kind == "image" and flow.image_shape == (1, 8, 8)
    iris = tmp_path / "iris"
    assert main(["fit", "--set", *FAST, "data={name: iris}", "model.latent_dim=2", f"run.dir={iris}"]) == 0
    assert InjectiveFlow.load(iris / "model.pt").data_kind == "tabular"  # D = 4 = 2x2 is not an image


@pytest.mark.parametrize(
    "options, message",
    [
        ({}, "data.options.path: .*needs data.options.path"),
        ({"path": "missing.npy"}, "data.options.path: .*does not exist"),
        ({"path": "{text}"}, "data.options.path: .*not the upstream array"),
        ({"path": "{nan}"}, r"first offending rows: \[7\]"),
        ({"path": "{x}", "kind": "image", "image_shape": [1, 3, 3]}, "data.options.image_shape"),
        ({"path": "{x}", "n_val": 0.5, "n_test": 0.5}, "data.options.n_val: .*no training rows"),
        ({"path": "{x}", "labels": "{short}"}, "data.options.labels: expected one label per row"),
    ],
)
def test_bad_array_options_are_named(tmp_path, capsys, options, message):
    import re

    files = {"x": tmp_path / "x.npy", "text": tmp_path / "text.npy", "nan": tmp_path / "nan.npy", "short": tmp_path / "s.npy"}
    np.save(files["x"], _curve())
    files["text"].write_text("1 2 3\n")
    bad = _curve()
    bad[7, 2] = np.nan
    np.save(files["nan"], bad)
    np.save(files["short"], np.zeros(5, dtype=np.int64))
    options = {k: (v.format(**{n: str(p) for n, p in files.items()}) if isinstance(v, str) else v) for k, v in options.items()}
    overrides = [f"data.options.{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in options.items()]
    rc = main(["fit", "--set", *FAST, "data.name=array", *overrides, "model.latent_dim=1", f"run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert rc == 2 and re.search(message, err) and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_sklearn_estimator_in_a_pipeline(tmp_path):
    from sklearn.base import clone
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from injflow.sklearn import InjectiveFlowEstimator

    x = _curve(400)
    est = InjectiveFlowEstimator(latent_dim=1, max_epochs=3, hidden_features=(32,), sampler="gaussian", batch_size=100)
    model = make_pipeline(StandardScaler(), est).fit(x)
    z = model.transform(x)
    assert z.shape == (400, 1) and np.isfinite(z).all()
    x_hat = model[-1].inverse_transform(z)
    assert x_hat.shape == (400, 4)
    assert model.score_samples(x[:7]).shape == (7,) and np.isfinite(model.score(x))
    draws = model[-1].sample(11, random_state=3)
    assert draws.shape == (11, 4) and np.array_equal(draws, model[-1].sample(11, random_state=3))
    assert model[-1].reconstruction_error(model[0].transform(x[:5])).shape == (5,)
    twin = clone(est)
    assert twin.get_params() == est.get_params() and not hasattr(twin, "flow_")
    with pytest.raises(ValueError, match="3 features"):
        model[-1].transform(x[:, :3])
