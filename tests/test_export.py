"""ONNX and torch.export graphs of the encoder, the decoder and the samplers' decode paths (injflow.export), run in
onnxruntime against PyTorch: an MLP run through `injflow export` on its test split, a conv net with the composite
BatchNorm (evaluation mode), a conditional model; the sampler graphs' noise-to-latent maps against exact references."""

from __future__ import annotations

import json

import pytest
import torch

from injflow.cli import main
from injflow.config import load_config
from injflow.export import TOLERANCE, SamplerDecoder, check_export, export_flow
from injflow.model import InjectiveFlow
from injflow.nets.normalization import BatchNorm2d

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

FAST = ["data.options={noise: 0.1, n_train: 256, n_val: 64, n_test: 96}", "data.batch_size=64",
        "model.architecture=mlp", "model.options={hidden_features: [16, 16]}", "train.max_epochs=1",
        "train.progress_bar=false", "train.num_threads=1", "train.pictures=false", "train.gmm_components=3"]


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("export") / "mlp"
    assert main(["fit", "--set", *FAST, f"run.dir={run}"]) == 0
    return run


def _onnx(path, **inputs):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {k: v.numpy() for k, v in inputs.items()})[0])


def test_cli_onnx_export_of_an_mlp_run_checked_on_its_test_split(mlp_run, capsys):
    assert main(["export", str(mlp_run), "--format", "onnx"]) == 0
    out = mlp_run / "export" / "onnx"
    check = json.loads((out / "check.json").read_text())
    assert check["split"] == "test" and set(check["graphs"]) == {"encoder", "decoder", "sample_prior", "sample_gaussian",
                                                                  "sample_gmm"}
    for name, r in check["graphs"].items():
        assert r["rows"] == 96 and r["relative"] <= TOLERANCE and r["absolute"] < 1e-5, name
    assert "max difference on 96 test rows" in capsys.readouterr().out
    # The files are the model: encoder and decoder against InjectiveFlow itself, and the prior's decode path with
    # flow.sample's own noise gives flow.sample's samples.
    flow = InjectiveFlow.load(mlp_run / "model.pt").eval()
    x = torch.randn(5, 2)
    torch.testing.assert_close(_onnx(out / "encoder.onnx", x=x), flow.encode_all(x), rtol=1e-5, atol=1e-6)
    z = torch.randn(5, 1)
    with torch.no_grad():
        torch.testing.assert_close(_onnx(out / "decoder.onnx", z=z), flow.decode(z), rtol=1e-5, atol=1e-6)
    eps = torch.randn(7, 1, generator=torch.Generator().manual_seed(4))
    samples = flow.sample(7, temperature=0.5, seed=4)
    torch.testing.assert_close(_onnx(out / "sample_prior.onnx", eps=eps, temperature=torch.tensor(0.5)), samples,
                               rtol=1e-5, atol=1e-6)


def test_cli_torch_export_and_pretrained_of_a_run(mlp_run):
    assert main(["export", str(mlp_run), "--format", "torch-export"]) == 0
    check = json.loads((mlp_run / "export" / "torch-export" / "check.json").read_text())
    assert all(r["absolute"] == 0.0 for r in check["graphs"].values())  # the same kernels as eager PyTorch
    program = torch.export.load(str(mlp_run / "export" / "torch-export" / "decoder.pt2")).module()
    flow = InjectiveFlow.load(mlp_run / "model.pt").eval()
    z = torch.randn(3, 1)
    with torch.no_grad():
        assert torch.equal(program(z=z), flow.decode(z))
    assert main(["export", str(mlp_run), "--out", str(mlp_run / "hf")]) == 0  # --format pretrained is the default
    again = InjectiveFlow.from_pretrained(mlp_run / "hf")
    assert torch.equal(again.sample(5, sampler="gmm", seed=2), flow.sample(5, sampler="gmm", seed=2))


def test_cli_export_of_a_missing_run_is_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope"), "--format", "onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not exist" in err and len(err.splitlines()) == 1


def _with_statistics(flow: InjectiveFlow, x: torch.Tensor, c: torch.Tensor | None = None) -> InjectiveFlow:
    """Running statistics far from their initial values (so evaluation and training mode differ), samplers fitted."""
    flow.train()
    with torch.no_grad():
        for _ in range(3):
            flow.encode(3 * x + 1, c)
            flow.decode(2 * torch.randn(x.shape[0], flow.latent_dim) + 1, c)
    flow.fit_samplers(x, names=("gaussian", "gmm"), n_components=3, c=c)
    return flow.train()  # export_flow switches to evaluation mode itself and back


def test_onnx_conv_net_with_composite_batchnorm(tmp_path):
    torch.manual_seed(0)
    config = load_config(None, ["model.architecture=fif_convnet", "model.latent_dim=4",
                                "model.options={channel_factor: 2, block_width: 8, n_blocks: 1}"])
    flow = InjectiveFlow.from_config(config, data_shape=(1, 28, 28), data_kind="image")
    assert any(isinstance(m, BatchNorm2d) for m in flow.modules())  # injflow's composite BatchNorm
    x = torch.rand(24, 1, 28, 28)
    _with_statistics(flow, x)
    files = export_flow(flow, tmp_path, format="onnx", samplers=["gaussian"])
    assert flow.training  # restored
    report = check_export(flow, files, x, format="onnx")
    assert set(report) == {"encoder", "decoder", "sample_gaussian"}
    assert all(r["relative"] <= TOLERANCE for r in report.values()), report
    # A graph exported in training mode would normalise with the batch's statistics: one row alone would then differ.
    z_one = _onnx(files["encoder"], x=x[:1])
    z_all = _onnx(files["encoder"], x=x)
    torch.testing.assert_close(z_one, z_all[:1], rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        flow.train()
        assert not torch.allclose(flow.encode(x)[:1], z_all[:1], atol=1e-3)


def test_onnx_conditional_model(tmp_path):
    torch.manual_seed(0)
    config = load_config(None, ["model.architecture=mlp", "model.latent_dim=2", "model.conditional=true",
                                "model.options={hidden_features: [16]}"])
    flow = InjectiveFlow.from_config(config, data_shape=(5,), data_kind="tabular", num_classes=3)
    with torch.no_grad():  # non-zero class offsets (they start at zero)
        flow.encoder.offset.weight.normal_()
    x, c = torch.randn(30, 5), torch.arange(30) % 3
    _with_statistics(flow, x, c)
    files = export_flow(flow, tmp_path, format="onnx", samplers=["prior"])
    report = check_export(flow, files, x, c=c, format="onnx")
    assert set(report) == {"encoder", "decoder", "sample_prior"}
    assert all(r["relative"] <= TOLERANCE for r in report.values()), report
    z = torch.zeros(4, 2)
    g0 = _onnx(files["decoder"], z=z, c=torch.zeros(4, dtype=torch.long))
    g1 = _onnx(files["decoder"], z=z, c=torch.ones(4, dtype=torch.long))
    assert not torch.allclose(g0, g1)  # the label reaches the graph
    with torch.no_grad():
        torch.testing.assert_close(g1, flow.eval().decode(z, c=1), rtol=1e-5, atol=1e-6)


def test_sampler_noise_to_latent_maps_are_exact():
    """The decode paths' z from (eps, u, T), against the formulas in float64: the inverse CDF of the mixture weights
    picks component k on [w_1 + ... + w_{k-1}, w_1 + ... + w_k)."""
    torch.manual_seed(0)
    flow = InjectiveFlow(torch.nn.Linear(3, 2), torch.nn.Linear(2, 3), latent_dim=2, data_shape=(3,)).double()
    codes = torch.cat([torch.randn(50, 2) * 0.1 + torch.tensor([-4.0, 0.0]), torch.randn(120, 2) + 2.0,
                       torch.randn(30, 2) * 0.5 - torch.tensor([0.0, 5.0])]).double()
    from injflow.distributions import GaussianMixture, fit_gaussian

    weights = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    means = torch.tensor([[-4.0, 0.0], [2.0, 2.0], [0.0, -5.0]], dtype=torch.float64)
    covs = torch.stack([torch.eye(2) * s for s in (0.01, 1.0, 0.25)]).double() + 0.05
    flow.samplers["gmm"] = GaussianMixture(weights, means, covs)
    flow.samplers["gaussian"] = fit_gaussian(codes)
    eps = torch.randn(6, 2, dtype=torch.float64)
    u = torch.tensor([0.0, 0.1999, 0.2, 0.6999, 0.7, 0.9999], dtype=torch.float64)
    t = torch.tensor(0.7, dtype=torch.float64)
    k = torch.tensor([0, 0, 1, 1, 2, 2])
    expected = means[k] + 0.7 * torch.einsum("nij,nj->ni", torch.linalg.cholesky(covs)[k], eps)
    torch.testing.assert_close(SamplerDecoder(flow, "gmm").latent(eps, t, u), expected)
    g = flow.samplers["gaussian"]
    torch.testing.assert_close(SamplerDecoder(flow, "gaussian").latent(eps, t),
                               g.mean + 0.7 * eps @ torch.linalg.cholesky(g.covariance).T)
    torch.testing.assert_close(SamplerDecoder(flow, "prior").latent(eps, t), 0.7 * eps)


def test_student_t_prior_has_no_exported_decode_path():
    flow = InjectiveFlow.from_config(load_config(None, ["model.latent={name: student_t, options: {df: 3.0}}"]),
                                     data_shape=(2,), data_kind="toy")
    with pytest.raises(ValueError, match="has no exportable decode path"):
        SamplerDecoder(flow, "prior")
