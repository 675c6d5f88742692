"""Own data end to end: a raw table trained scaled and answered in its own units, the warning when it is not scaled,
images with a declared value range, runs named after their file, and api.train runs that tell the truth."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from injflow.cli import main
from injflow.model import InjectiveFlow
from injflow.outputs import read_samples

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

FAST = ["train.max_epochs=3", "train.progress_bar=false", "train.num_threads=1", "train.pictures=false",
        "train.samplers=[gaussian]", "data.batch_size=64", "model.architecture=mlp", "model.options={hidden_features: [16]}"]


def _raw_table(tmp_path, n: int = 300):
    """A pandas to_csv file: row index, three columns of very different scales on a 1-D curve, a text label."""
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    t = rng.uniform(-1, 1, n)
    frame = pd.DataFrame({"radius": 14 + 3 * t, "area": 650 + 300 * t + 20 * t**2, "smooth": 0.1 + 0.01 * np.sin(3 * t),
                          "noise": 0.001 * rng.normal(size=n), "kind": np.where(t > 0, "malignant", "benign")})
    path = tmp_path / "cancer.csv"
    frame.to_csv(path)
    return path, frame


def test_a_raw_table_is_scaled_for_the_model_and_answered_in_its_own_units(tmp_path, capsys):
    path, frame = _raw_table(tmp_path)
    with pytest.warns(UserWarning, match="row index"):
        assert main(["fit", "--set", *FAST, "data.name=array", f"data.options.path={path}", "data.options.label_key=kind",
                     "model.latent_dim=1", f"run.root={tmp_path / 'runs'}"]) == 0
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("fif-cancer-")  # named after the data file
    run = runs[0]
    flow = InjectiveFlow.load(run / "model.pt")
    features = frame[["radius", "area", "smooth", "noise"]].to_numpy()
    assert flow.columns == ["radius", "area", "smooth", "noise"] and flow.scaler.method == "features"
    # fitted on the training split only: its mean is near, not equal to, the whole file's
    assert np.allclose(flow.scaler.shift.numpy(), features.mean(0), rtol=0.05, atol=1e-3)
    assert not np.allclose(flow.scaler.shift.numpy(), features.mean(0), rtol=1e-7, atol=0)
    saved = yaml.safe_load((run / "config.yaml").read_text())["data"]
    assert saved["standardize"] == "auto" and saved["options"]["path"] == str(path)
    assert main(["sample", str(run), "--n", "400", "--out", str(tmp_path / "s.csv")]) == 0
    header = (tmp_path / "s.csv").read_text().splitlines()[0]
    samples = read_samples(tmp_path / "s.csv").numpy()
    assert header == "radius,area,smooth,noise" and samples.shape == (400, 4)
    assert 400 < samples[:, 1].mean() < 900 and 10 < samples[:, 0].mean() < 18  # the file's units, not z-scores
    assert main(["sample", str(run), "--n", "5", "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (5, 4)
    capsys.readouterr()
    assert main(["sample", str(run), "--n", "5", "--out", str(tmp_path / "s.json")]) == 2
    assert "cannot write '.json'" in capsys.readouterr().err and not (tmp_path / "s.json").exists()
    assert main(["evaluate", str(run), "--no-progress"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["units"].startswith("the data's own units (data.standardize=features is inverted")
    x = torch.tensor(features[:3], dtype=torch.float32)
    log_p, rec = flow.log_prob(x, return_reconstruction=True)
    assert torch.isfinite(log_p).all() and float(rec.mean()) < float(((x - x.mean(0)) ** 2).sum(1).mean()) * 10


def test_label_key_names_the_classes_of_a_conditional_model(tmp_path):
    path, _ = _raw_table(tmp_path)
    run = tmp_path / "cond"
    with pytest.warns(UserWarning, match="row index"):
        assert main(["fit", "--set", *FAST, "data.name=array", f"data.options.path={path}", "data.options.label_key=kind",
                     "model.conditional=true", "model.latent_dim=1", f"run.dir={run}"]) == 0
    assert InjectiveFlow.load(run / "model.pt").num_classes == 2
    assert main(["sample", str(run), "--n", "6", "--class", "1", "--out", str(tmp_path / "c.pt")]) == 0
    assert torch.load(tmp_path / "c.pt").shape == (6, 4)


def test_unscaled_raw_data_get_one_warning_naming_the_columns(tmp_path):
    path, _ = _raw_table(tmp_path)
    with pytest.warns(UserWarning) as record:
        assert main(["fit", "--set", *FAST, "data.name=array", f"data.options.path={path}", "data.options.label_key=kind",
                     "data.standardize=none", "model.latent_dim=1", f"run.dir={tmp_path / 'raw'}"]) == 0
    far = [str(w.message) for w in record if "far from standardised" in str(w.message)]
    assert len(far) == 1 and "columns radius (mean 1" in far[0] and "area (mean 6" in far[0] and "smooth" not in far[0]
    assert not InjectiveFlow.load(tmp_path / "raw" / "model.pt").scaled


def test_images_with_a_declared_value_range(tmp_path):
    rng = np.random.default_rng(0)
    x = np.clip(np.round(rng.uniform(0, 16, size=(120, 1, 4, 4)) * np.linspace(0, 1, 16).reshape(1, 1, 4, 4)), 0, 16)
    np.savez(tmp_path / "digits.npz", x=x)
    run = tmp_path / "img"
    assert main(["fit", "--set", *FAST, "data.name=array", f"data.options.path={tmp_path / 'digits.npz'}",
                 "data.value_range=[0, 16]", "model.latent_dim=2", "train.pictures=true", f"run.dir={run}"]) == 0
    flow = InjectiveFlow.load(run / "model.pt")
    assert flow.scaler.method == "range" and flow.value_range == (0.0, 16.0)
    assert torch.allclose(flow.scaler.scale, torch.full((1, 4, 4), 16.0)) and (run / "plots" / "samples_prior.png").is_file()
    torch.testing.assert_close(flow.sample(50, seed=0), 16 * flow.in_model_units().sample(50, seed=0))  # pixels in 0..16
    assert main(["evaluate", str(run), "--no-progress"]) == 0
    assert "image range [0, 1] (the data's [0, 16]" in json.loads((run / "metrics.json").read_text())["units"]


def test_api_train_runs_tell_the_truth_about_their_data(tmp_path, capsys):
    import injflow.api as inj

    torch.manual_seed(0)
    x = torch.randn(200, 3) * torch.tensor([1.0, 100.0, 0.1])
    enc = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.SiLU(), torch.nn.Linear(16, 1))
    dec = torch.nn.Sequential(torch.nn.Linear(1, 16), torch.nn.SiLU(), torch.nn.Linear(16, 3))
    flow = inj.InjectiveFlow(enc, dec, latent_dim=1)
    run = tmp_path / "mine"
    inj.train(flow, x[:160], val=x[160:], overrides=[*FAST[:5], "data.standardize=features"], run_dir=run, verbose=False)
    data = yaml.safe_load((run / "config.yaml").read_text())["data"]
    assert data["name"] == "tensors" and data["standardize"] == "features"
    assert data["options"]["n_train"] == 160 and data["options"]["n_val"] == 40 and data["options"]["data_shape"] == [3]
    torch.testing.assert_close(flow.scaler.scale, x[:160].std(0, unbiased=False))  # fitted on the training tensors
    torch.testing.assert_close(flow.sample(20, seed=0), flow.scaler.inverse(flow.in_model_units().sample(20, seed=0)))
    capsys.readouterr()
    for command in (["evaluate", str(run), "--no-progress"], ["sample", str(run), "--n", "3"]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and ("injflow.metrics.evaluate_flow(model" in err or "custom modules" in err), err
    from injflow.metrics import evaluate_flow  # what the refusal points to works on the model in memory

    assert evaluate_flow(flow, x[160:], kind="tabular", log=None).metrics["n"] == 40
