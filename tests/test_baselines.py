"""Baselines of Kumar et al. (2020, table 1) and the Pythae benchmark: losses as written, and each one learns.

Every method gets (a) checks that its hyper-parameters reach the loss exactly as the papers write it and (b) a
short training run on a small problem (2-D manifold in R^5) with the fall of its loss terms stated in the asserts.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from injflow.distributions import StandardNormal, StudentT
from injflow.estimators import decoder_jacobian, encoder_jacobian
from injflow.methods import (
    AE,
    AEL2,
    AESN,
    CAE,
    METHODS,
    RAEGP,
    RAEL2,
    VAE,
    WAEMMD,
    BetaVAE,
    Clock,
    GaussianEncoder,
    build_method,
)
from injflow.methods.regularised import spectral_normalised_layers
from injflow.methods.wae import kernel_matrix, mmd_squared

DTYPE = torch.float64
BASELINES = ("ae_l2", "ae_sn", "cae", "rae_l2", "rae_gp", "vae", "beta_vae", "wae_mmd")
PENALTY = {"schedule": "penalty", "start": 0.5, "rate": 0.001, "nu": 1.3}  # 0.5 + i^1.3/1000


class Model(nn.Module):
    """A tiny encoder/decoder pair with the attributes the engine's model has (encoder, decoder, latent)."""

    def __init__(self, big_d: int = 5, d: int = 2, width: int = 16, dtype: torch.dtype = DTYPE, seed: int = 0, latent=None):
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = nn.Sequential(nn.Linear(big_d, width), nn.Tanh(), nn.Linear(width, d)).to(dtype)
        self.decoder = nn.Sequential(nn.Linear(d, width), nn.Tanh(), nn.Linear(width, big_d)).to(dtype)
        self.latent = latent if latent is not None else StandardNormal(d)

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z):
        return self.decoder(z)


def manifold_data(n: int = 512, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A curved 2-D manifold in R^5 (rotated), plus noise of std 0.05."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(n, 2, generator=g)
    x = torch.stack([t[:, 0], t[:, 1], torch.sin(t[:, 0]), 0.5 * t[:, 0] * t[:, 1], torch.cos(t[:, 1])], 1)
    q = torch.linalg.qr(torch.randn(5, 5, generator=g)).Q
    return ((x + 0.05 * torch.randn(n, 5, generator=g)) @ q.T).to(dtype)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread is fastest and keeps the timings stable on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def model_and_batch():
    return Model(), torch.randn(8, 5, dtype=DTYPE, generator=torch.Generator().manual_seed(1))


def rec(model, x):
    return (model.decode(model.encode(x)) - x).pow(2).sum(1)


def decoder_sq_norm(model):
    return sum(p.pow(2).sum() for p in model.decoder.parameters())


# ------------------------------------------------------------------------------------------------ registry & config


def test_every_baseline_is_registered_and_builds_from_a_config():
    from injflow.config import config_from_dict, config_to_dict

    for name in BASELINES:
        assert name in METHODS
        config = config_from_dict({"method": {"name": name}})
        assert config_to_dict(config)["method"] == {"name": name, **config.method.options()}


@pytest.mark.parametrize(
    "name,options,key",
    [
        ("ae_l2", {"weight_decay": -0.1}, "weight_decay"),
        ("ae_l2", {"weight_decay": {"schedule": "linear", "start": 1.0, "end": -1.0}}, "weight_decay"),
        ("ae_sn", {"n_power_iterations": 0}, "n_power_iterations"),
        ("cae", {"jacobian_weight": -1.0}, "jacobian_weight"),
        ("cae", {"n_hutchinson": 0}, "n_hutchinson"),
        ("cae", {"noise": "uniform"}, "noise"),
        ("cae", {"trace_space": "both"}, "trace_space"),
        ("rae_l2", {"latent_weight": -1e-4}, "latent_weight"),
        ("rae_l2", {"weight_decay": -1.0}, "weight_decay"),
        ("rae_gp", {"jacobian_weight": -1.0}, "jacobian_weight"),
        ("rae_gp", {"n_hutchinson": 0}, "n_hutchinson"),
        ("vae", {"sigma": 0.0}, "sigma"),
        ("vae", {"sigma": float("inf")}, "sigma"),
        ("beta_vae", {"beta": -0.5}, "beta"),
        ("wae_mmd", {"mmd_weight": -1.0}, "mmd_weight"),
        ("wae_mmd", {"kernel": "gauss"}, "kernel"),
        ("wae_mmd", {"bandwidth": 0.0}, "bandwidth"),
        ("wae_mmd", {"scales": []}, "scales"),
        ("wae_mmd", {"scales": [1.0, -2.0]}, "scales"),
    ],
)
def test_impossible_hyper_parameters_name_the_field(name, options, key):
    with pytest.raises(ValueError, match=rf"^{key}:"):
        build_method(name, **options)


@pytest.mark.parametrize("cls", [CAE, RAEGP])
def test_hutchinson_count_is_checked_against_the_trace_space(cls):
    cls(n_hutchinson=2).check(latent_dim=2, data_dim=5)
    with pytest.raises(ValueError, match="^n_hutchinson:"):
        cls(n_hutchinson=3).check(latent_dim=2, data_dim=5)
    cls(n_hutchinson=5, trace_space="data").check(latent_dim=2, data_dim=5)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_reports_the_core_terms(model_and_batch, name):
    """Same columns for every method: per-sample loss, reconstruction ‖g(f(x)) − x‖² and latent ‖f(x)‖²."""
    model, x = model_and_batch
    if name in ("rnf", "dnf", "trumpet"):  # they train injective flows built from invertible blocks (injflow.nets.invertible)
        from injflow.nets import build_autoencoder

        model.encoder, model.decoder = build_autoencoder(
            "injective_coupling", data_shape=(5,), latent_dim=2, outer_layers=2, outer_hidden_features=(16,),
            inner_layers=2, inner_hidden_features=(8,))
        model.to(DTYPE)
    if name == "fff":  # a free-form flow is square: d = D (methods/fff.py)
        model = Model(d=5)
    method = build_method(name)
    clock = Clock(0, total_steps=10)  # as the engine hands it (Trumpet's stage switch is a fraction of the run)
    getattr(method, "prepare", lambda m: None)(model)
    if name in ("vae", "beta_vae"):
        # Their reconstruction is at the sampled code z ~ q(z|x) (methods/vae.py); with q collapsed onto its mean
        # (variance e^-60) it is the deterministic ‖g(f(x)) − x‖² of the other methods.
        with torch.no_grad():
            model.encoder.log_variance_head.weight.zero_()
            model.encoder.log_variance_head.bias.fill_(-60.0)
    model.eval()  # spectral norm's power iteration would otherwise move the weights between the two passes
    out = method.loss(x, clock, model)
    for key in ("loss", "reconstruction", "latent_sq_norm"):
        assert out[key].shape == (8,), key
    assert torch.allclose(out["reconstruction"], rec(model, x))
    assert torch.allclose(out["latent_sq_norm"], model.encode(x).pow(2).sum(1))
    assert all(v.ndim in (0, 1) and torch.isfinite(v).all() for v in out.values())


# ------------------------------------------------------------------------------------------------ AE+L2, RAE-L2


def test_ae_l2_adds_half_the_weight_decay_times_the_decoder_norm(model_and_batch):
    model, x = model_and_batch
    method = AEL2(weight_decay=PENALTY)
    for step in (0, 100, 2000):
        out = method.loss(x, step, model)
        w = 0.5 + step**1.3 / 1000
        assert method.weight("weight_decay", step) == pytest.approx(w)
        assert torch.allclose(out["loss"], rec(model, x) + w * 0.5 * decoder_sq_norm(model))
    # The penalty is on the decoder: it sends no gradient to the encoder.
    grads = torch.autograd.grad(out["weight_penalty"], list(model.encoder.parameters()), allow_unused=True)
    assert all(g is None for g in grads)


def test_ae_l2_step_equals_adam_weight_decay_on_the_decoder_only(model_and_batch):
    """One optimiser step of AE+L2 is exactly Adam(weight_decay=w) on the decoder and no decay on the encoder."""
    model, x = model_and_batch
    twin = copy.deepcopy(model)
    w = 0.3
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    opt.zero_grad()
    AEL2(weight_decay=w).loss(x, 0, model)["loss"].mean().backward()
    opt.step()
    opt2 = torch.optim.Adam(
        [{"params": twin.encoder.parameters(), "weight_decay": 0.0}, {"params": twin.decoder.parameters(), "weight_decay": w}],
        lr=0.01,
    )
    opt2.zero_grad()
    AE().loss(x, 0, twin)["loss"].mean().backward()
    opt2.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(a, b, atol=1e-12)


def test_rae_l2_is_ghosh_et_al_with_latent_and_decoder_penalties(model_and_batch):
    model, x = model_and_batch
    method = RAEL2(latent_weight=PENALTY, weight_decay=0.2)
    step = 500
    beta = 0.5 + step**1.3 / 1000
    out = method.loss(x, step, model)
    z = model.encode(x)
    want = rec(model, x) + beta * 0.5 * z.pow(2).sum(1) + 0.2 * 0.5 * decoder_sq_norm(model)
    assert torch.allclose(out["loss"], want)
    assert torch.allclose(out["latent_penalty"], 0.5 * z.pow(2).sum(1))


# ------------------------------------------------------------------------------------------------ AE+SN


def test_ae_sn_prepare_normalises_every_decoder_layer_and_only_those(model_and_batch):
    model, x = model_and_batch
    method = AESN(n_power_iterations=1)
    with pytest.raises(ValueError, match="prepare"):
        method.loss(x, 0, model)
    method.prepare(model)
    method.prepare(model)  # idempotent
    layers = spectral_normalised_layers(model.decoder)
    assert len(layers) == 2 and all(len(m.parametrizations.weight) == 1 for m in layers)
    assert spectral_normalised_layers(model.encoder) == []
    for _ in range(50):  # power iterations converge over training-mode forward passes
        model.decode(torch.randn(4, 2, dtype=DTYPE))
    for m in layers:
        assert torch.linalg.matrix_norm(m.weight.detach(), 2) == pytest.approx(1.0, abs=1e-6)
    out = method.loss(x, 0, model)
    assert torch.allclose(out["loss"], out["reconstruction"])
    copy.deepcopy(model)  # the engine's EMA deep-copies the nets


def test_ae_sn_finalize_bakes_the_normalised_weights_into_plain_layers(model_and_batch):
    model, x = model_and_batch
    method = AESN()
    method.prepare(model)
    model.decode(model.encode(x))
    model.eval()
    before = model.decode(model.encode(x)).detach()
    method.finalize(model)
    assert spectral_normalised_layers(model.decoder) == []
    assert set(model.decoder.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert torch.allclose(model.decode(model.encode(x)), before, atol=1e-12)
    assert not model.training


# ------------------------------------------------------------------------------------------------ CAE, RAE-GP


@pytest.mark.parametrize("trace_space,k", [("latent", 2), ("data", 5)])
def test_cae_penalty_is_the_encoder_jacobian_frobenius_norm(model_and_batch, trace_space, k):
    """With K = dim orthogonal samples the Hutchinson estimate is exact: it must equal ‖f'(x)‖_F², not ‖g'‖_F²."""
    model, x = model_and_batch
    method = CAE(jacobian_weight=PENALTY, n_hutchinson=k, noise="orthogonal", trace_space=trace_space)
    out = method.loss(x, 1000, model)
    exact = encoder_jacobian(model.encode, x).pow(2).sum((1, 2))
    assert torch.allclose(out["encoder_jacobian_sq_norm"], exact, atol=1e-10)
    assert not torch.allclose(exact, decoder_jacobian(model.decode, model.encode(x)).pow(2).sum((1, 2)), atol=1e-2)
    assert torch.allclose(out["loss"], rec(model, x) + (0.5 + 1000**1.3 / 1000) * exact, atol=1e-10)
    # The penalty's gradient reaches the encoder only.
    dec = torch.autograd.grad(out["encoder_jacobian_sq_norm"].sum(), list(model.decoder.parameters()), allow_unused=True, retain_graph=True)
    (enc,) = torch.autograd.grad(out["encoder_jacobian_sq_norm"].sum(), [model.encoder[0].weight])
    assert all(g is None for g in dec) and enc.abs().sum() > 0


@pytest.mark.parametrize("trace_space", ["latent", "data"])
def test_cae_gaussian_hutchinson_is_unbiased(trace_space):
    """Kumar's v ~ N(0, I) noise: the mean over 4000 one-sample estimates is within 10 % of ‖f'(x)‖_F² (≈ 4 std)."""
    model = Model()
    x = torch.randn(2, 5, dtype=DTYPE, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    est = CAE(trace_space=trace_space).loss(x.repeat_interleave(2000, 0), 0, model)["encoder_jacobian_sq_norm"]
    exact = encoder_jacobian(model.encode, x).pow(2).sum((1, 2))
    assert torch.allclose(est.view(2, 2000).mean(1), exact, rtol=0.1)


@pytest.mark.parametrize("trace_space,k", [("latent", 2), ("data", 5)])
def test_rae_gp_penalty_is_the_decoder_jacobian_at_the_code(model_and_batch, trace_space, k):
    model, x = model_and_batch
    method = RAEGP(latent_weight=0.3, jacobian_weight=PENALTY, n_hutchinson=k, noise="orthogonal", trace_space=trace_space)
    out = method.loss(x, 200, model)
    z = model.encode(x)
    exact = decoder_jacobian(model.decode, z).pow(2).sum((1, 2))
    assert torch.allclose(out["decoder_jacobian_sq_norm"], exact, atol=1e-10)
    want = rec(model, x) + 0.3 * 0.5 * z.pow(2).sum(1) + (0.5 + 200**1.3 / 1000) * exact
    assert torch.allclose(out["loss"], want, atol=1e-10)
    # ‖∇D(E(x))‖² depends on the decoder and, through z = E(x), on the encoder.
    grads = torch.autograd.grad(out["decoder_jacobian_sq_norm"].sum(), [model.encoder[0].weight, model.decoder[0].weight])
    assert all(g.abs().sum() > 0 for g in grads)


# ------------------------------------------------------------------------------------------------ VAE, β-VAE


def test_vae_prepare_attaches_a_posterior_variance_and_finalize_removes_it(model_and_batch):
    """One trunk, two heads: the log-variance head reads the 16 hidden features the mean's Linear(16, 2) reads."""
    model, x = model_and_batch
    encoder = model.encoder
    method = VAE()
    with pytest.raises(ValueError, match="prepare"):
        method.loss(x, 0, model)
    method.prepare(model)
    method.prepare(model)  # idempotent
    assert isinstance(model.encoder, GaussianEncoder) and model.encoder.mean_net is encoder
    head = model.encoder.log_variance_head
    assert (head.in_features, head.out_features) == (16, 2)
    mean, log_var = model.encoder.posterior(x)
    hidden = torch.tanh(encoder[0](x))  # the trunk, by hand
    assert torch.equal(mean, encoder(x)) and model.encode(x).shape == (8, 2)
    assert torch.allclose(log_var, hidden @ head.weight.T + head.bias, atol=1e-12)
    names = {n for n, _ in model.named_parameters()}
    assert {n for n in names if n.startswith("encoder.")} == {  # trained by the engine's optimiser; no second trunk
        "encoder.mean_net.0.weight", "encoder.mean_net.0.bias", "encoder.mean_net.2.weight", "encoder.mean_net.2.bias",
        "encoder.log_variance_head.weight", "encoder.log_variance_head.bias"}
    method.finalize(model)
    assert model.encoder is encoder


def test_vae_loss_is_the_negative_elbo_with_a_gaussian_decoder(model_and_batch):
    from torch.distributions import Normal, kl_divergence

    model, x = model_and_batch
    method = VAE(sigma=0.7)
    method.prepare(model)
    with torch.no_grad():  # a non-trivial posterior variance
        model.encoder.log_variance_head.bias.copy_(torch.tensor([-1.0, 0.5]))
    torch.manual_seed(5)
    out = method.loss(x, 0, model)
    torch.manual_seed(5)
    hidden = torch.tanh(model.encoder.mean_net[0](x))
    mean, log_var = model.encoder.mean_net[2](hidden), model.encoder.log_variance_head(hidden)
    q = Normal(mean, (0.5 * log_var).exp())
    z = mean + q.stddev * torch.randn_like(mean)
    expected_nll = -Normal(model.decode(z), 0.7).log_prob(x).sum(1)
    kl = kl_divergence(q, Normal(torch.zeros_like(mean), 1.0)).sum(1)
    assert torch.allclose(out["kl"], kl) and torch.allclose(out["expected_nll"], expected_nll)
    assert torch.allclose(out["loss"], expected_nll + kl)
    # The reconstruction term is the loss's own decoder output, at the sampled code (no pass at the mean).
    assert torch.allclose(out["reconstruction"], (model.decode(z) - x).pow(2).sum(1))
    assert not torch.allclose(out["reconstruction"], (model.decode(mean) - x).pow(2).sum(1))
    assert torch.allclose(out["latent_sq_norm"], mean.pow(2).sum(1))


def test_vae_loss_runs_the_trunk_and_the_decoder_once(model_and_batch):
    """No second encoder copy and no extra decoder pass only for logging: one call of each per loss."""
    model, x = model_and_batch
    method = BetaVAE(beta=0.01)
    method.prepare(model)
    calls = {"trunk": 0, "decoder": 0}
    model.encoder.mean_net[0].register_forward_hook(lambda *a: calls.__setitem__("trunk", calls["trunk"] + 1))
    model.decoder.register_forward_hook(lambda *a: calls.__setitem__("decoder", calls["decoder"] + 1))
    method.loss(x, 0, model)
    assert calls == {"trunk": 1, "decoder": 1}


@pytest.mark.parametrize("sigma", [1.0, 0.1, 0.05])
def test_beta_vae_beta_is_the_decoder_variance(model_and_batch, sigma):
    """Kumar §4: β = σ²; the β-VAE loss is σ² times the VAE's negative ELBO with decoder std σ, minus a constant."""
    model, x = model_and_batch
    beta_vae, vae = BetaVAE(beta=sigma**2), VAE(sigma=sigma)
    beta_vae.prepare(model)
    torch.manual_seed(3)
    b = beta_vae.loss(x, 0, model)
    torch.manual_seed(3)
    v = vae.loss(x, 0, model)
    const = 0.5 * 5 * math.log(2 * math.pi * sigma**2)
    assert torch.allclose(b["loss"], sigma**2 * (v["loss"] - const), atol=1e-12)
    assert torch.allclose(b["loss"], 0.5 * b["reconstruction"] + sigma**2 * b["kl"])


def test_beta_vae_beta_schedule_and_non_gaussian_prior(model_and_batch):
    model, x = model_and_batch
    method = BetaVAE(beta={"schedule": "linear", "start": 0.0, "end": 0.01, "steps": 101})
    assert method.weight("beta", 50) == pytest.approx(0.005)
    model.latent = StudentT(2, df=5.0)  # no closed form: one-sample Monte-Carlo KL, log q(z|x) − log p(z)
    method.prepare(model)
    torch.manual_seed(4)
    out = method.loss(x, 50, model)
    torch.manual_seed(4)
    mean, log_var = model.encoder.posterior(x)
    eps = torch.randn_like(mean)
    z = mean + (0.5 * log_var).exp() * eps
    log_q = torch.distributions.Normal(mean, (0.5 * log_var).exp()).log_prob(z).sum(1)
    assert torch.allclose(out["kl"], log_q - model.latent.log_prob(z))
    assert torch.allclose(out["loss"], 0.5 * out["reconstruction"] + 0.005 * out["kl"])


# ------------------------------------------------------------------------------------------------ WAE-MMD


@pytest.mark.parametrize("kernel", ["imq", "rbf"])
def test_mmd_is_the_unbiased_u_statistic_of_the_multiscale_kernel(kernel):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 3, dtype=DTYPE, generator=g), 1.5 * torch.randn(6, 3, dtype=DTYPE, generator=g)
    scales, h = (0.5, 1.0, 4.0), 0.8
    c = 2 * 3 * h**2

    def k(u, v):
        sq = (u - v).pow(2).sum()
        return sum((s * c / (s * c + sq)) if kernel == "imq" else torch.exp(-sq / (s * c)) for s in scales)

    n = 6
    want = (
        sum(k(a[i], a[j]) + k(b[i], b[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        - 2 * sum(k(a[i], b[j]) for i in range(n) for j in range(n)) / n**2
    )
    got = mmd_squared(a, b, kernel=kernel, bandwidth=h, scales=scales)
    assert got.ndim == 0 and torch.allclose(got, want, atol=1e-12)
    assert torch.allclose(kernel_matrix(a, b, kernel=kernel, bandwidth=h, scales=scales)[1, 2], k(a[1], b[2]))


def test_mmd_separates_distributions():
    g = torch.Generator().manual_seed(1)
    same = mmd_squared(torch.randn(400, 2, generator=g), torch.randn(400, 2, generator=g))
    shifted = mmd_squared(torch.randn(400, 2, generator=g) + 1.0, torch.randn(400, 2, generator=g))
    assert abs(float(same)) < 0.01 and float(shifted) > 0.1
    with pytest.raises(ValueError, match="mmd"):
        mmd_squared(torch.zeros(1, 2), torch.zeros(1, 2))


def test_wae_loss_adds_the_weighted_batch_mmd_to_every_sample(model_and_batch):
    model, x = model_and_batch
    method = WAEMMD(mmd_weight=PENALTY, kernel="rbf", bandwidth=2.0, scales=[1.0, 3.0])
    torch.manual_seed(7)
    out = method.loss(x, 300, model)
    torch.manual_seed(7)
    prior = model.latent.sample(8).to(DTYPE)
    mmd = mmd_squared(model.encode(x), prior, kernel="rbf", bandwidth=2.0, scales=[1.0, 3.0])
    assert out["mmd"].ndim == 0 and torch.allclose(out["mmd"], mmd)
    assert torch.allclose(out["loss"], rec(model, x) + (0.5 + 300**1.3 / 1000) * mmd)


# ------------------------------------------------------------------------------------------------ learning


def _train(method, steps: int = 300, seed: int = 0):
    x = manifold_data()
    model = Model(width=32, dtype=torch.float32, seed=seed)
    getattr(method, "prepare", lambda m: None)(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    history = []
    for step in range(steps):
        out = method.loss(x[torch.randint(0, x.shape[0], (128,), generator=gen)], step, model)
        opt.zero_grad()
        out["loss"].mean().backward()
        opt.step()
        history.append({k: float(v.detach().mean()) for k, v in out.items()})
    return model, history


def _first_last(history, key):
    """Mean of a term over the first 10 and the last 20 steps."""
    return sum(h[key] for h in history[:10]) / 10, sum(h[key] for h in history[-20:]) / 20


def _diagnostics(model) -> dict[str, float]:
    x = manifold_data()[:256]
    with torch.enable_grad():
        jf = encoder_jacobian(model.encode, x).pow(2).sum((1, 2)).mean().detach()
        jg = decoder_jacobian(model.decode, model.encode(x).detach()).pow(2).sum((1, 2)).mean().detach()
    return {"encoder_jacobian": float(jf), "decoder_jacobian": float(jg), "decoder_norm": float(decoder_sq_norm(model).detach())}


@pytest.fixture(scope="module")
def ae_reference():
    model, history = _train(AE())
    return _diagnostics(model), history


@pytest.mark.parametrize(
    "method,regulariser,smaller_than_ae",
    [
        (AEL2(weight_decay=0.01), "weight_penalty", "decoder_norm"),
        (CAE(jacobian_weight=0.1), "encoder_jacobian_sq_norm", "encoder_jacobian"),
        (RAEL2(latent_weight=0.1, weight_decay=0.01), "weight_penalty", "decoder_norm"),
        (RAEGP(latent_weight=0.1, jacobian_weight=0.1), "decoder_jacobian_sq_norm", "decoder_jacobian"),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_regularised_autoencoders_learn_and_regularise(ae_reference, method, regulariser, smaller_than_ae):
    """300 Adam steps: loss falls ≥ 4x, reconstruction ≥ 10x; the regularised quantity ends ≥ 1.3x below the plain AE's."""
    model, history = _train(method)
    loss0, loss1 = _first_last(history, "loss")
    rec0, rec1 = _first_last(history, "reconstruction")
    assert loss1 < loss0 / 4 and rec1 < rec0 / 10, (loss0, loss1, rec0, rec1)
    assert math.isfinite(_first_last(history, regulariser)[1])
    ours, ae = _diagnostics(model)[smaller_than_ae], ae_reference[0][smaller_than_ae]
    assert ours < ae / 1.3, (smaller_than_ae, ours, ae)


def test_ae_sn_learns_with_unit_spectral_norm_layers(ae_reference):
    """Reconstruction falls ≥ 10x; after finalize every decoder layer has spectral norm within 5 % of 1 (AE: > 1.5)."""
    method = AESN()
    model, history = _train(method)
    rec0, rec1 = _first_last(history, "reconstruction")
    assert rec1 < rec0 / 10, (rec0, rec1)
    method.finalize(model)
    norms = [float(torch.linalg.matrix_norm(m.weight.detach(), 2)) for m in model.decoder if isinstance(m, nn.Linear)]
    assert all(abs(n - 1) < 0.05 for n in norms), norms


def test_vae_learns():
    """σ = 0.2 (data scale ≈ 1): the negative ELBO falls by ≥ 10 nats per sample and the reconstruction ≥ 3x."""
    model, history = _train(VAE(sigma=0.2))
    loss0, loss1 = _first_last(history, "loss")
    rec0, rec1 = _first_last(history, "reconstruction")
    assert loss1 < loss0 - 10 and rec1 < rec0 / 3, (loss0, loss1, rec0, rec1)


def test_beta_vae_learns():
    """β = 0.01 (σ = 0.1): loss falls ≥ 5x, reconstruction ≥ 10x, and the posterior variance shrinks ≥ 10x."""
    model, history = _train(BetaVAE(beta=0.01))
    loss0, loss1 = _first_last(history, "loss")
    rec0, rec1 = _first_last(history, "reconstruction")
    var0, var1 = _first_last(history, "posterior_variance")
    assert loss1 < loss0 / 5 and rec1 < rec0 / 10 and var1 < var0 / 10, (loss0, loss1, rec0, rec1, var0, var1)


def test_wae_mmd_learns():
    """λ = 10: loss falls ≥ 10x, reconstruction ≥ 10x, MMD² to N(0, I) ≥ 10x."""
    model, history = _train(WAEMMD(mmd_weight=10.0))
    for key in ("loss", "reconstruction", "mmd"):
        first, last = _first_last(history, key)
        assert last < first / 10, (key, first, last)


# ------------------------------------------------------------------------------------------------ engine & docs


@pytest.mark.parametrize("name", ["ae_sn", "vae"])
def test_prepared_methods_train_through_the_engine(tmp_path, name):
    """What the engine will do with the hooks: prepare → fit (with EMA, which deep-copies the nets) → finalize →
    save/load a plain model. A few seconds."""
    from injflow.api import load, train
    from injflow.model import InjectiveFlow

    x = manifold_data(1024)
    enc = nn.Sequential(nn.Linear(5, 32), nn.Tanh(), nn.Linear(32, 2))
    dec = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 5))
    flow = InjectiveFlow(enc, dec, latent_dim=2)
    method = build_method(name)
    method.prepare(flow)
    train(flow, x, val=x[:256], method=method, overrides=["train.max_epochs=3", "train.ema_decay=0.9", "train.samplers=[]", "train.plot_every_n_epochs=null"],
          run_dir=tmp_path / "run", verbose=False)
    method.finalize(flow)
    assert flow.encoder is enc and spectral_normalised_layers(flow.decoder) == []
    flow.save(tmp_path / "model.pt")
    again = load(tmp_path / "model.pt", encoder=copy.deepcopy(enc), decoder=copy.deepcopy(dec))
    assert torch.allclose(again.decode(again.encode(x[:8])), flow.decode(flow.encode(x[:8])))


def test_docs_methods_examples_run(tmp_path, monkeypatch):
    """Every ```python block of docs/methods.md runs as written."""
    doc = Path(__file__).resolve().parents[1] / "docs" / "methods.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
    assert len(blocks) >= 8
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(doc), "exec"), namespace)
