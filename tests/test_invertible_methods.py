"""Rectangular flows (rnf), DNF (dnf) and Trumpets (trumpet): their objectives against exact references, their
stages, and each learning a toy manifold (issue 15).

References are computed independently of the method code: full Jacobians (``torch.autograd.functional.jacobian``)
and the library's exact on-manifold likelihood of the whole decoder (``decoder_log_volume``), in float64.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

from injflow import estimators as E
from injflow.distributions import StandardNormal
from injflow.methods import DNF, FIF, Clock, RectangularNF, Trumpet, build_method
from injflow.nets import build_autoencoder

DTYPE = torch.float64
SMALL = {"outer_layers": 3, "outer_hidden_features": (16, 16), "inner_layers": 2, "inner_hidden_features": (8,)}


class Model(nn.Module):
    """What the engine hands a method: encoder, decoder (sharing one invertible net) and latent."""

    def __init__(self, arch="injective_coupling", shape=(5,), d=2, dtype=DTYPE, **options):
        super().__init__()
        self.encoder, self.decoder = build_autoencoder(arch, data_shape=shape, latent_dim=d, **(options or SMALL))
        self.to(dtype)
        self.latent = StandardNormal(d)

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z):
        return self.decoder(z)

    @property
    def net(self):
        return self.encoder.flow


def _grads(loss, params):
    grads = torch.autograd.grad(loss.sum(), params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


@pytest.fixture
def model_and_batch():
    torch.manual_seed(0)
    return Model(), torch.randn(16, 5, dtype=DTYPE, generator=torch.Generator().manual_seed(1))


# ----------------------------------------------------------------------------------------------- rectangular flow


def test_rnf_exact_nll_is_the_on_manifold_nll_of_the_whole_decoder(model_and_batch):
    model, x = model_and_batch
    out = RectangularNF(beta=3.0, likelihood_weight=0.5).loss(x, 0, model)
    z = model.encode(x)
    # FIF eq. 2 for the whole decoder g = w ∘ pad ∘ h, by full Jacobians: the split into the d-dimensional flow's
    # exact log-det and the injective part's volume must give the same number (sign and evaluation point of each).
    want = torch.stack([
        -StandardNormal(2).log_prob(z[i : i + 1])[0]
        + 0.5 * torch.linalg.slogdet((j := jacobian(lambda v: model.decode(v[None])[0], z[i])).T @ j)[1]
        for i in range(x.shape[0])
    ])
    assert torch.allclose(out["nll"], want, atol=1e-8)
    rec = (model.decode(z) - x).pow(2).sum(1)
    assert torch.allclose(out["reconstruction"], rec, atol=1e-8)
    assert torch.allclose(out["loss"], 0.5 * want + 3.0 * rec, atol=1e-8)


def test_rnf_cg_has_the_exact_gradient_including_the_path_through_the_latent(model_and_batch):
    model, x = model_and_batch
    params = list(model.parameters())
    exact = RectangularNF(beta=3.0).loss(x, 0, model)
    # K = d orthogonal Hutchinson vectors make the trace exact; a tight CG makes the solve exact.
    cg = RectangularNF(beta=3.0, log_det="cg", n_hutchinson=2, noise="orthogonal", cg_tol=1e-13).loss(x, 0, model)
    for a, b in zip(_grads(cg["loss"], params), _grads(exact["loss"], params)):
        assert torch.allclose(a, b, atol=1e-7)
    # Encoder and decoder share their parameters: detaching u (the estimator's default for free-form nets) loses
    # part of the log-det gradient, so the through-latent option is what makes the two agree.
    net = model.net
    u_detached = E.rectangular_flow_surrogate(x, net.project, net.lift, n_hutchinson=2, cg_tol=1e-13)[2]
    u_through = E.rectangular_flow_surrogate(x, net.project, net.lift, n_hutchinson=2, cg_tol=1e-13, through_latent=True)[2]
    exact_volume = E.decoder_log_volume(net.lift, net.project(x))
    g_detached, g_through, g_exact = (_grads(t, params) for t in (u_detached, u_through, exact_volume))
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(g_through, g_exact))
    assert max((a - b).abs().max().item() for a, b in zip(g_detached, g_exact)) > 1e-4
    assert torch.isfinite(cg["cg_iterations"]) and cg["cg_iterations"] <= 4


def test_rnf_likelihood_warm_up_and_errors(model_and_batch):
    model, x = model_and_batch
    m = build_method("rnf", likelihood_weight={"schedule": "linear", "start": 0, "end": 1, "begin": 10, "steps": 21})
    assert [m.weight("likelihood_weight", s) for s in (0, 10, 15, 20, 99)] == [0.0, 0.0, 0.5, 1.0, 1.0]
    out = m.loss(x, 0, model)
    assert torch.allclose(out["loss"], 50.0 * out["reconstruction"])
    with pytest.raises(ValueError, match="n_hutchinson"):
        RectangularNF(log_det="cg", n_hutchinson=3).check(latent_dim=2, data_dim=5)
    with pytest.raises(ValueError, match="architecture to 'injective_coupling'"):
        RectangularNF().prepare(type("M", (), {"encoder": nn.Linear(5, 2)})())


# ----------------------------------------------------------------------------------------------------------- DNF


def test_dnf_loss_is_the_inflated_nll_plus_the_denoising_error(model_and_batch):
    model, x = model_and_batch
    net = model.net
    method = DNF(noise_variance=0.04, reconstruction_weight=7.0, noise_latent_l2=0.3)
    model.train()
    torch.manual_seed(5)
    out = method.loss(x, 0, model)
    torch.manual_seed(5)
    noisy = x + 0.2 * torch.randn_like(x)  # σ = sqrt(0.04): noise only while training
    want_nll = []
    for i in range(x.shape[0]):
        h = net.outer(noisy[i : i + 1])[0]
        jac_outer = jacobian(lambda v: net.outer(v[None])[0], noisy[i])
        z = net.inner(h[None, :2])[0]
        jac_inner = jacobian(lambda v: net.inner(v[None])[0], h[:2])
        log_p = (
            StandardNormal(2).log_prob(z[None])[0] + torch.linalg.slogdet(jac_inner)[1]
            + torch.distributions.Normal(0.0, 0.2).log_prob(h[2:]).sum() + torch.linalg.slogdet(jac_outer)[1]
        )
        want_nll.append(-log_p)
    want_nll = torch.stack(want_nll)
    assert torch.allclose(out["nll"], want_nll, atol=1e-8)
    h = net.outer(noisy)
    denoised = net.outer.inverse(torch.cat([h[:, :2], torch.zeros(16, 3, dtype=DTYPE)], 1))
    rec = (denoised - x).pow(2).sum(1)  # the target is the clean point
    assert torch.allclose(out["reconstruction"], rec, atol=1e-8)
    assert torch.allclose(out["loss"], want_nll + 7.0 * rec / 5 + 0.3 * h[:, 2:].pow(2).mean(1), atol=1e-8)
    model.eval()  # validation / evaluation: clean data, no random draw
    assert torch.allclose(method.loss(x, 0, model)["reconstruction"], (model.decode(model.encode(x)) - x).pow(2).sum(1), atol=1e-8)


def test_dnf_needs_the_padded_architecture():
    trumpet = Model("trumpet", (6,), 2, stage_layers=1, hidden_features=(8,), inner_layers=1, inner_hidden_features=(4,))
    with pytest.raises(ValueError, match="padded architecture"):
        DNF().prepare(trumpet)
    with pytest.raises(ValueError, match="noise_variance"):
        DNF(noise_variance=0.0)


# ------------------------------------------------------------------------------------------------------- Trumpet


@pytest.mark.parametrize("arch", ["trumpet", "injective_coupling"])
def test_trumpet_stages_train_disjoint_parameters(arch):
    torch.manual_seed(0)
    options = {"stage_layers": 1, "hidden_features": (8,), "inner_layers": 2, "inner_hidden_features": (4,)} if arch == "trumpet" else SMALL
    model = Model(arch, (6,), 2, **options)
    x = torch.randn(8, 6, dtype=DTYPE)
    method = Trumpet(manifold_fraction=0.3)
    assert [method.stage(Clock(s, total_steps=10)) for s in (0, 2, 3, 9)] == [1, 1, 2, 2]
    net = model.net
    inner = {id(p) for p in net.inner.parameters()}
    injective = [p for p in model.parameters() if id(p) not in inner]
    for step, trained, frozen in ((0, injective, list(net.inner.parameters())), (5, list(net.inner.parameters()), injective)):
        out = method.loss(x, Clock(step, total_steps=10), model)
        grads = torch.autograd.grad(out["loss"].sum(), list(model.parameters()), allow_unused=True)
        by_id = {id(p): g for p, g in zip(model.parameters(), grads)}
        assert all(by_id[id(p)] is None for p in frozen)  # no gradient at all, so Adam leaves them alone
        assert any(by_id[id(p)] is not None and by_id[id(p)].abs().sum() > 0 for p in trained)
        assert set(out) == {"loss", "nll", "reconstruction", "latent_consistency", "stage", "latent_sq_norm"}
    # Stage 1 is their two per-element MSEs; stage 2 the d-dimensional flow's NLL of the codes.
    u = net.project(x)
    x_hat = net.lift(u)
    stage1 = (x_hat - x).pow(2).mean(1) + (net.project(x_hat) - u).pow(2).mean(1)
    assert torch.allclose(method.loss(x, Clock(0, total_steps=10), model)["loss"], stage1, atol=1e-10)
    z, ld = net.inner.forward_and_log_det(u)
    assert torch.allclose(method.loss(x, Clock(5, total_steps=10), model)["loss"], -StandardNormal(2).log_prob(z) - ld,
                          atol=1e-10)


def test_trumpet_switch_needs_a_run_length():
    with pytest.raises(ValueError, match="manifold_fraction"):
        Trumpet(manifold_fraction=1.0)
    with pytest.raises(ValueError, match="finite run length"):
        Trumpet(manifold_fraction=0.5).switch_step(None)
    assert Trumpet(manifold_steps=7).switch_step(None) == 7  # replaces the fraction
    assert Trumpet(manifold_fraction=0.5).stage(Clock(3, progress=0.6)) == 2  # a wall-clock budget: its spent share


# ------------------------------------------------------------------------------------------ learning a toy manifold


def _curve(n, generator):
    """Points on a parabola arc in R^2 (a 1-D manifold), t ~ U(-1.5, 1.5)."""
    t = 3 * torch.rand(n, 1, generator=generator) - 1.5
    return torch.cat([t, 0.5 * t**2 - 0.5], dim=1)


METHODS = {
    "rnf-exact": (lambda: RectangularNF(beta=50.0), "injective_coupling", 80),
    "rnf-cg": (lambda: RectangularNF(beta=50.0, log_det="cg"), "injective_coupling", 80),
    "dnf": (lambda: DNF(noise_variance=1e-3, reconstruction_weight=100.0), "injective_coupling", 100),
    "trumpet": (lambda: Trumpet(manifold_fraction=0.6), "trumpet", 150),
    "fif-coupling": (lambda: FIF(beta=50.0), "injective_coupling", 80),  # FIF table 6, "coupling flow" rows
}
UNIFORM_QUANTILES = torch.tensor([-1.35, -0.75, 0.0, 0.75, 1.35])  # of t ~ U(-1.5, 1.5) at 5/25/50/75/95 %


@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_learns_a_toy_manifold(name):
    make, arch, steps = METHODS[name]
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    options = (
        {"stage_layers": 2, "hidden_features": (32, 32), "inner_layers": 2, "inner_hidden_features": (16,)}
        if arch == "trumpet" else
        {"outer_layers": 3, "outer_hidden_features": (32, 32), "inner_layers": 2, "inner_hidden_features": (16,)}
    )
    model = Model(arch, (2,), 1, dtype=torch.float32, **options)
    method = make()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    test = _curve(512, gen)
    for step in range(steps):
        model.train()
        optimizer.zero_grad()
        method.loss(_curve(64, gen), Clock(step, total_steps=steps), model)["loss"].mean().backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        rec = (model.decode(model.encode(test)) - test).pow(2).sum(1).mean().item()
        samples = model.decode(torch.randn(2048, 1, generator=gen))
    # The manifold: test points are reconstructed (the data variance is about 0.8) ...
    assert rec < 0.01, rec
    # ... and the density on it: prior samples land on the arc, spread like t ~ U(-1.5, 1.5). A model trained on the
    # reconstruction alone (likelihood_weight=0) misses these quantiles by more than 1.5.
    t = samples[:, 0]
    off_curve = (samples[:, 1] - (0.5 * t**2 - 0.5)).abs().median().item()
    assert off_curve < 0.05, off_curve
    quantiles = t.quantile(torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95]))
    assert (quantiles - UNIFORM_QUANTILES).abs().max() < 0.35, quantiles
