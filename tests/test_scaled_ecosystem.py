"""A model with a scaler (``data.standardize``) keeps the user's units through model folders and exported graphs."""

from __future__ import annotations

import pytest
import torch

from injflow.model import InjectiveFlow
from injflow.scaling import fit_scaler


@pytest.fixture
def scaled_flow() -> tuple[InjectiveFlow, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(64, 3) * torch.tensor([1000.0, 0.01, 5.0]) + torch.tensor([4000.0, 0.5, -20.0])
    enc = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    dec = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    flow = InjectiveFlow(enc, dec, latent_dim=2, data_shape=(3,))
    flow.set_scaler(fit_scaler(x, "features"), columns=["area", "smoothness", "offset"])
    assert flow.scaled
    return flow.eval(), x


def test_model_folder_keeps_the_scaler(scaled_flow, tmp_path):
    flow, x = scaled_flow
    flow.save_pretrained(tmp_path / "folder")
    enc = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))  # own nets: passed in
    dec = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    again = InjectiveFlow.from_pretrained(tmp_path / "folder", encoder=enc, decoder=dec).eval()
    assert again.scaled and again.columns == ["area", "smoothness", "offset"]
    with torch.no_grad():
        assert torch.equal(again.encode(x), flow.encode(x))  # the nets see s(x), as when trained
        z = torch.randn(5, 2)
        assert torch.equal(again.decode(z), flow.decode(z))  # and answer in the user's units


def test_exported_graphs_take_and_give_the_users_units(scaled_flow, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    from injflow.export import export_flow

    flow, x = scaled_flow
    files = export_flow(flow, tmp_path / "onnx", format="onnx", samplers=[])

    def run(name: str, **inputs: torch.Tensor) -> torch.Tensor:
        session = onnxruntime.InferenceSession(str(files[name]), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {k: v.numpy() for k, v in inputs.items()})[0])

    with torch.no_grad():
        z = flow.encode(x)
        x_hat = flow.decode(z)
    assert torch.allclose(run("encoder", x=x), z, rtol=1e-4, atol=1e-5)
    assert torch.allclose(run("decoder", z=z), x_hat, rtol=1e-4, atol=1e-3)  # values in the thousands: float32
    assert (x_hat[:, 0] - 4000).abs().mean() < 5000  # in the user's units, not standardised ones
