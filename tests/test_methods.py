"""Methods compose the estimators with the papers' weights and schedules, as written."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from injflow import estimators as E
from injflow.distributions import StandardNormal
from injflow.methods import ExactFlow, InjFlow, InjFlowLn, RectangularFlow, build_method

DTYPE = torch.float64


class Model(nn.Module):
    def __init__(self, big_d: int = 5, d: int = 2):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Sequential(nn.Linear(big_d, 16), nn.Tanh(), nn.Linear(16, d)).to(DTYPE)
        self.decoder = nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, big_d)).to(DTYPE)
        self.latent = StandardNormal(d)

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z):
        return self.decoder(z)


@pytest.fixture
def model_and_batch():
    return Model(), torch.randn(32, 5, dtype=DTYPE, generator=torch.Generator().manual_seed(1))


def test_kumar_penalty_schedule_values():
    method = InjFlowLn(mu={"schedule": "penalty", "start": 1, "rate": 0.001, "nu": 1.3})
    for step in (0, 10, 1000, 5000):
        assert method.weight("mu", step) == pytest.approx(1 + step**1.3 / 1000)  # Kumar §4: 1 + i^ν/1000
        assert method.weight("mu_in", step) == pytest.approx(1 + step / 1000)  # default ν = 1


@pytest.mark.parametrize("cls,term", [(InjFlowLn, "log_frobenius"), (InjFlow, "frobenius")])
def test_kumar_losses_follow_eq_9_and_10(model_and_batch, cls, term):
    model, x = model_and_batch
    method = cls(sigma=0.5, prior_weight=2.0, eta=0.1, jacobian="finite_difference")
    step = 2000
    torch.manual_seed(3)
    out = method.loss(x, step, model)
    torch.manual_seed(3)
    v = torch.randn(x.shape[0], 2, dtype=DTYPE)
    z = model.encode(x)
    x_hat = model.decode(z)
    jv_sq = (model.decode(z + 0.01 * v) - x_hat).pow(2).sum(1) / 0.01**2
    floored = torch.maximum(jv_sq, 0.01 * v.pow(2).sum(1))
    jacobian_term = (2 / 2) * floored.log() if cls is InjFlowLn else floored / (2 * 1.0)
    gain = (jv_sq / v.pow(2).sum(1)).sqrt()
    mu = mu_in = 1 + step / 1000
    expected = (
        2.0 * z.pow(2).sum(1) / (2 * 0.25) + mu * (x - x_hat).pow(2).sum(1) + jacobian_term
        + mu_in * (gain - 0.1).clamp_max(0).pow(2)
    )
    assert torch.allclose(out[term], jacobian_term, atol=1e-10)
    assert torch.allclose(out["loss"], expected, atol=1e-10)


def test_exact_and_rectangular_flow_share_the_nll_and_its_gradient(model_and_batch):
    model, x = model_and_batch
    exact = ExactFlow(beta=3.0).loss(x, 0, model)
    z = model.encode(x)
    want = -StandardNormal(2).log_prob(z) + E.decoder_log_volume(model.decode, z)
    assert torch.allclose(exact["nll"], want, atol=1e-10)
    assert torch.allclose(exact["loss"], want + 3.0 * (model.decode(z) - x).pow(2).sum(1), atol=1e-10)
    # The CG surrogate with K = d exact noise has the same decoder gradient as the exact log-det.
    rf = RectangularFlow(beta=3.0, n_hutchinson=2, cg_tol=1e-12).loss(x, 0, model)
    grads = lambda t: torch.autograd.grad(t.sum(), list(model.decoder.parameters()), retain_graph=True)  # noqa: E731
    for a, b in zip(grads(rf["loss"]), grads(exact["loss"])):
        assert torch.allclose(a, b, atol=1e-8)


def test_exact_encoder_side_is_minus_encoder_log_volume(model_and_batch):
    model, x = model_and_batch
    out = ExactFlow(beta=0.0, side="encoder").loss(x, 0, model)
    want = -StandardNormal(2).log_prob(model.encode(x)) - E.encoder_log_volume(model.encode, x)
    assert torch.allclose(out["nll"], want, atol=1e-10)


@pytest.mark.parametrize(
    "name,options,key",
    [
        ("injflow_ln", {"eta": -1.0}, "eta"),
        ("injflow", {"lam": 0.0}, "lam"),
        ("injflow_ln", {"mu": -1.0}, "mu"),
        ("rectangular_flow", {"grad_to": "decoder", "jacobian_at": "x_hat"}, "jacobian_at"),
        ("rectangular_flow", {"beta": -2.0}, "beta"),
        ("exact", {"beta": -1.0}, "beta"),
    ],
)
def test_impossible_hyper_parameters_name_the_key(name, options, key):
    with pytest.raises(ValueError, match=key):
        build_method(name, **options)


@pytest.mark.parametrize(
    "method",
    [
        {"name": "injflow_ln", "mu": {"schedule": "penalty", "start": 10, "rate": 0.01, "nu": 1.0}},
        {"name": "injflow", "jacobian": "finite_difference", "mu": 10.0},
        {"name": "rectangular_flow", "beta": 10.0, "cg_tol": 1e-4},
        {"name": "exact", "beta": 10.0},
    ],
    ids=lambda m: m["name"],
)
def test_each_method_learns_the_sinusoid_through_the_engine(tmp_path, method):
    """A few hundred steps through the shared engine: the test reconstruction error falls ≥ 4x."""
    from injflow.api import fit
    from injflow.config import load_config
    from injflow.data import load_dataset
    from injflow.model import InjectiveFlow

    overrides = [
        f"method={method}", "train.max_epochs=4", "data.options.n_train=1500", "data.batch_size=64",
        "model.options.n_blocks=2", "model.options.hidden_features=64", "train.samplers=[]", f"run.dir={tmp_path}",
    ]
    config = load_config(None, overrides)
    test = load_dataset("sinusoid", n_train=1500, n_val=500, n_test=500).test
    torch.manual_seed(config.train.seed)
    before = InjectiveFlow.from_config(config, data_shape=(2,))
    rec0 = (before.decode(before.encode(test)) - test).pow(2).sum(1).mean()
    flow = fit(config, verbose=False).flow
    with torch.no_grad():
        rec1 = (flow.decode(flow.encode(test)) - test).pow(2).sum(1).mean()
    print(method["name"], float(rec0), float(rec1))
    assert rec1 < rec0 / 4, (float(rec0), float(rec1))


@pytest.mark.parametrize("name", ["vae", "ae_sn"])
def test_methods_that_prepare_the_nets_train_save_and_reload(tmp_path, name):
    """`Method.prepare` (VAE posterior network, AE+SN spectral norm) runs wherever a model is built or loaded."""
    from injflow.api import fit
    from injflow.config import load_config
    from injflow.model import InjectiveFlow

    overrides = [f"method={{name: {name}}}", "train.max_epochs=1", "data.options.n_train=512", "data.batch_size=128",
                 "model.options.n_blocks=1", "model.options.hidden_features=16", "train.samplers=[]", f"run.dir={tmp_path}"]
    flow = fit(load_config(None, overrides), verbose=False).flow
    again = InjectiveFlow.load(tmp_path / "model.pt")
    x = torch.randn(8, 2)
    flow.eval(), again.eval()
    with torch.no_grad():
        assert torch.allclose(flow.encode(x), again.encode(x), atol=1e-6)
        assert torch.allclose(flow.decode(flow.encode(x)), again.decode(again.encode(x)), atol=1e-6)
