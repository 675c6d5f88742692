"""Hugging Face model folders (injflow.hub): exact round trips without pickle, conditional and custom nets, the
model card, and one-line refusals of folders of another version or with a missing or corrupt file."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from injflow.config import load_config
from injflow.errors import CheckpointError
from injflow.hub import CONFIG_NAME, FORMAT_VERSION, WEIGHTS_NAME, from_pretrained, model_card, save_pretrained
from injflow.model import InjectiveFlow

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

METRICS = {"dataset": "sinusoid", "split": "test", "n": 64, "seed": 0, "reconstruction_error": 0.125, "nll": -1.5,
           "nll_std": 0.25, "sample_quality": {"metric": "fid_like_w2", "n_samples": 64, "n_reference": 64,
                                               "reference_split": "test", "prior": 0.5, "gmm": 0.25}}


def _flow(*overrides: str, data_shape=(5,), **options) -> InjectiveFlow:
    torch.manual_seed(0)
    config = load_config(None, ["model.architecture=tabular", "model.latent_dim=2",
                                "model.options={hidden_features: 16, n_blocks: 1}", *overrides])
    flow = InjectiveFlow.from_config(config, data_shape=data_shape, data_kind="tabular", **options)
    x = torch.randn(64, *data_shape)
    c = torch.randint(0, flow.num_classes, (64,)) if flow.conditional else None
    with torch.no_grad():  # non-trivial BatchNorm statistics and weights
        flow.train()
        flow.encode(x, c)
        for p in flow.parameters():
            p.add_(0.01 * torch.randn_like(p))
    flow.eval()
    flow.fit_samplers(x, names=("gaussian", "gmm"), n_components=3, c=c)
    return flow


def _same(a: InjectiveFlow, b: InjectiveFlow) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    assert a.describe() == b.describe() and list(a.samplers) == list(b.samplers)


def test_round_trip_is_exact_and_never_unpickles(tmp_path, monkeypatch):
    flow = _flow()
    folder = save_pretrained(flow, tmp_path / "model", metrics=METRICS)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", CONFIG_NAME, WEIGHTS_NAME]

    def refuse(*args, **kwargs):
        raise AssertionError("loading a model folder must not unpickle anything")

    for target, name in ((torch, "load"), (pickle, "load"), (pickle, "loads")):
        monkeypatch.setattr(target, name, refuse)
    loaded = InjectiveFlow.from_pretrained(folder)
    monkeypatch.undo()
    _same(flow, loaded)
    x = torch.randn(7, 5)
    torch.testing.assert_close(loaded.log_prob(x), flow.log_prob(x), rtol=0, atol=0)
    assert torch.equal(loaded.sample(9, sampler="gmm", seed=3), flow.sample(9, sampler="gmm", seed=3))
    # What is on disk: JSON, and a safetensors file (8-byte header length, JSON header), no pickle opcodes.
    info = json.loads((folder / CONFIG_NAME).read_text())
    assert info["format_version"] == FORMAT_VERSION and info["data_shape"] == [5] and info["method"]["name"] == "fif"
    assert info["samplers"]["gmm"]["tensors"] == ["weights", "means", "covariances", "scale_tril"]
    raw = (folder / WEIGHTS_NAME).read_bytes()
    header = json.loads(raw[8: 8 + int.from_bytes(raw[:8], "little")])
    assert header["samplers.gmm.means"]["shape"] == [3, 2] and not raw.startswith(b"\x80")
    # Saving again replaces the files (the folder stays loadable).
    save_pretrained(loaded, folder)
    _same(flow, from_pretrained(folder))


def test_model_card_states_method_data_metrics_with_their_scale(tmp_path):
    flow = _flow()
    card = (save_pretrained(flow, tmp_path / "fif-tabular", metrics=METRICS) / "README.md").read_text()
    front = card.split("---")[1]
    assert "library_name: injflow" in front and "- fif" in front
    assert "# fif-tabular" in card and "method **fif** (beta=20.0" in card and "| data | sinusoid" in card
    assert "the test split of sinusoid, n = 64 points, seed 0" in card
    assert "| reconstruction error ‖g(f(x)) − x‖², mean | 0.125 |" in card and "| -1.5 ± 0.25 |" in card
    assert "| sample quality, gmm | 0.25 |" in card and "fid_like_w2 between 64 samples" in card
    assert 'InjectiveFlow.from_pretrained("path/to/this/folder")' in card
    assert "## Metrics" not in model_card(flow, None)


def test_conditional_and_custom_nets(tmp_path):
    flow = _flow("model.conditional=true", num_classes=3)
    _same(flow, from_pretrained(save_pretrained(flow, tmp_path / "conditional")))
    assert from_pretrained(tmp_path / "conditional").num_classes == 3

    torch.manual_seed(1)
    enc = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.BatchNorm1d(8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    dec = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    custom = InjectiveFlow(enc, dec, latent_dim=1, data_shape=(3,))
    folder = save_pretrained(custom, tmp_path / "custom")
    with pytest.raises(CheckpointError, match="custom modules: pass encoder= and decoder="):
        from_pretrained(folder)
    fresh = (torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.BatchNorm1d(8), torch.nn.Tanh(), torch.nn.Linear(8, 1)),
             torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)))
    _same(custom, from_pretrained(folder, encoder=fresh[0], decoder=fresh[1]))


def _break(folder, how):
    config, weights = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    info = json.loads(config.read_text())
    if how == "no config":
        config.unlink()
    elif how == "no weights":
        weights.unlink()
    elif how == "corrupt config":
        config.write_text(config.read_text()[:50])
    elif how == "other version":
        config.write_text(json.dumps({**info, "format_version": FORMAT_VERSION + 1}))
    elif how == "not injflow":
        config.write_text(json.dumps({"model_type": "bert"}))
    elif how == "flipped byte":
        data = bytearray(weights.read_bytes())
        data[-3] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif how == "truncated, no checksum":
        weights.write_bytes(weights.read_bytes()[:100])
        info["weights"].pop("sha256")
        config.write_text(json.dumps(info))
    elif how == "other architecture":
        info["config"]["model"]["options"]["hidden_features"] = 32
        config.write_text(json.dumps(info))


@pytest.mark.parametrize("how, message", [
    ("no config", "has no config.json"),
    ("no weights", "has no model.safetensors"),
    ("corrupt config", "is not valid JSON"),
    ("other version", f"format version {FORMAT_VERSION + 1}; this injflow reads version {FORMAT_VERSION}"),
    ("not injflow", "does not describe an injflow model"),
    ("flipped byte", "does not match the checksum"),
    ("truncated, no checksum", "is not a readable safetensors file"),
    ("other architecture", "does not fit this model"),
])
def test_broken_folders_are_refused_in_one_line(tmp_path, how, message):
    folder = save_pretrained(_flow(), tmp_path / "model")
    _break(folder, how)
    with pytest.raises(CheckpointError, match=message) as error:
        from_pretrained(folder)
    assert "\n" not in str(error.value)


def test_missing_folder_is_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="is not a folder"):
        from_pretrained(tmp_path / "nothing" / "here")
