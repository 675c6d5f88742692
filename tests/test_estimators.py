"""Estimators against exact references (float64, small nets, full Jacobians).

Each test here fails if a sign, a stop-gradient or an evaluation point in `injflow.estimators` is wrong.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

from injflow import estimators as E
from injflow.nets.normalization import BatchNorm1d, BatchNorm2d, use_composite_batchnorm

DTYPE = torch.float64
MODES = ("mixed", "forward", "backward")
SPACES = ("latent", "data")
GRAD_TO = ("encoder", "decoder")
POINTS = ("x", "x_hat")


def mlp(n_in: int, n_out: int, hidden: int = 7, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, n_out)).to(DTYPE)


@pytest.fixture
def nets():
    big_d, d = 5, 2
    encoder, decoder = mlp(big_d, d, seed=1), mlp(d, big_d, seed=2)
    x = torch.randn(4, big_d, dtype=DTYPE, generator=torch.Generator().manual_seed(3))
    return encoder, decoder, x


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def grads(loss: torch.Tensor, *modules: nn.Module) -> list[torch.Tensor]:
    params = [p for m in modules for p in m.parameters()]
    out = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, out)]


def per_sample_jacobian(fn, point: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """Brute force: one full Jacobian per sample (no batching tricks), (B, out, in)."""
    return torch.stack([jacobian(lambda v: fn(v[None])[0], p, create_graph=create_graph) for p in point])


def exact_surrogate(x, encoder, decoder, *, jacobian_at, grad_to):
    """The surrogate with the trace computed exactly from full Jacobians (FIF eq. 17/10/9, table 4)."""
    z = encoder(x)
    x_hat = decoder(z)
    point = x if jacobian_at == "x" else x_hat.detach()
    if grad_to == "encoder":
        f_jac = per_sample_jacobian(encoder, point, create_graph=True)
        g_jac = per_sample_jacobian(decoder, z.detach(), create_graph=False)
        return -torch.einsum("bij,bji->b", f_jac, g_jac)
    f_jac = per_sample_jacobian(encoder, point.detach(), create_graph=False)
    g_jac = per_sample_jacobian(decoder, z.detach(), create_graph=True)
    return torch.einsum("bij,bji->b", f_jac, g_jac)


# ---------------------------------------------------------------------------------------------------------------
# Linear encoder, pseudo-inverse decoder: the surrogate gradient is the analytic log-volume gradient
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode,space,point", list(itertools.product(MODES, SPACES, POINTS)))
def test_linear_encoder_gradient_is_analytic_log_volume_gradient(mode, space, point):
    big_d, d, batch = 6, 3, 5
    weight = torch.randn(d, big_d, dtype=DTYPE, generator=gen(0)).requires_grad_(True)
    pinv = torch.linalg.pinv(weight.detach())
    x = torch.randn(batch, big_d, dtype=DTYPE, generator=gen(1))
    k = d if space == "latent" else big_d  # K = dim with orthogonal noise: exact trace
    _, _, surrogate = E.volume_change_surrogate(
        x, lambda v: v @ weight.T, lambda z: z @ pinv.T,
        n_hutchinson=k, mode=mode, trace_space=space, jacobian_at=point, generator=gen(2),
    )
    (grad,) = torch.autograd.grad(surrogate.sum(), weight)
    # d/dE of −½ log det(E Eᵀ) is −pinv(E)ᵀ, once per sample (FIF eqs. 31, 72-73).
    expected = -batch * pinv.T
    assert torch.allclose(grad, expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize("mode,space", list(itertools.product(MODES, SPACES)))
def test_linear_decoder_gradient_is_analytic_log_volume_gradient(mode, space):
    big_d, d, batch = 6, 3, 5
    enc_weight = torch.randn(d, big_d, dtype=DTYPE, generator=gen(0))
    dec_weight = torch.linalg.pinv(enc_weight).clone().requires_grad_(True)  # (D, d)
    x = torch.randn(batch, big_d, dtype=DTYPE, generator=gen(1))
    k = d if space == "latent" else big_d
    _, _, surrogate = E.volume_change_surrogate(
        x, lambda v: v @ enc_weight.T, lambda z: z @ dec_weight.T,
        n_hutchinson=k, mode=mode, trace_space=space, grad_to="decoder", generator=gen(2),
    )
    (grad,) = torch.autograd.grad(surrogate.sum(), dec_weight)
    # d/dG of +½ log det(GᵀG) is pinv(G)ᵀ = Eᵀ (FIF eqs. 25-29).
    assert torch.allclose(grad, batch * enc_weight.T, atol=1e-10, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# Nonlinear nets: every option combination against the exact-trace surrogate
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode,space,grad_to,point", list(itertools.product(MODES, SPACES, GRAD_TO, POINTS)))
def test_surrogate_matches_exact_trace(nets, mode, space, grad_to, point):
    encoder, decoder, x = nets
    k = 2 if space == "latent" else x.shape[1]
    z, x_hat, surrogate = E.volume_change_surrogate(
        x, encoder, decoder, n_hutchinson=k, mode=mode, trace_space=space,
        grad_to=grad_to, jacobian_at=point, generator=gen(5),
    )
    reference = exact_surrogate(x, encoder, decoder, jacobian_at=point, grad_to=grad_to)
    assert torch.allclose(surrogate, reference, atol=1e-10, rtol=0)
    assert torch.allclose(x_hat, decoder(encoder(x)), atol=1e-12)
    got, want = grads(surrogate.sum(), encoder, decoder), grads(reference.sum(), encoder, decoder)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-10, rtol=0)


@pytest.mark.parametrize("mode,space,point", list(itertools.product(MODES, SPACES, POINTS)))
def test_gradient_goes_only_to_the_chosen_network(nets, mode, space, point):
    encoder, decoder, x = nets
    for grad_to, silent, active in (("encoder", decoder, encoder), ("decoder", encoder, decoder)):
        _, _, surrogate = E.volume_change_surrogate(
            x, encoder, decoder, mode=mode, trace_space=space, grad_to=grad_to, jacobian_at=point, generator=gen(7)
        )
        assert max(g.abs().max() for g in grads(surrogate.sum(), silent)) <= 1e-12, grad_to
        assert max(g.abs().max() for g in grads(surrogate.sum(), active)) > 1e-3, grad_to


def batchnorm_nets() -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """Nets with (composite) BatchNorm in training mode: the path the image architectures take."""
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(6, 8), BatchNorm1d(8), nn.ELU(), nn.Linear(8, 2)).to(DTYPE).train()
    decoder = nn.Sequential(nn.Linear(2, 8), BatchNorm1d(8), nn.ELU(), nn.Linear(8, 6)).to(DTYPE).train()
    return encoder, decoder, torch.randn(10, 6, dtype=DTYPE, generator=gen(1))


def central_difference(fn, point: torch.Tensor, direction: torch.Tensor, h: float = 1e-5) -> torch.Tensor:
    """Batch-level directional derivative by central differences; differentiable in fn's parameters through
    plain forward passes only (first-order reverse mode, which BatchNorm gets right)."""
    return (fn(point + h * direction) - fn(point - h * direction)) / (2 * h)


def batch_reference_surrogate(x, encoder, decoder, eps, *, space, grad_to, point):
    """Batch sum of the surrogate with every Jacobian product taken by central differences on the whole batch
    (so BatchNorm's cross-sample terms are included) and every stop-gradient factor a constant (FIF eq. 17, 10,
    9 and table 4). Its autograd gradient is the reference for the estimator's gradient."""
    z0 = encoder(x).detach()
    p = x if point == "x" else decoder(z0).detach()
    total = 0.0
    for e in eps:
        if grad_to == "encoder" and space == "latent":  # −εᵀ f'(p) sg(g'(z) ε)
            c = central_difference(decoder, z0, e).detach()
            total = total - (e * central_difference(encoder, p, c)).sum()
        elif grad_to == "encoder":  # −sg(εᵀ g'(z)) f'(p) ε
            zz = z0.clone().requires_grad_(True)
            (c,) = torch.autograd.grad(decoder(zz), zz, e)
            total = total - (c * central_difference(encoder, p, e)).sum()
        elif space == "latent":  # +sg(εᵀ f'(p)) g'(z) ε
            pp = p.detach().clone().requires_grad_(True)
            (c,) = torch.autograd.grad(encoder(pp), pp, e)
            total = total + (c * central_difference(decoder, z0, e)).sum()
        else:  # +εᵀ g'(z) sg(f'(p) ε)
            c = central_difference(encoder, p, e).detach()
            total = total + (e * central_difference(decoder, z0, c)).sum()
    return total / len(eps)


@pytest.mark.parametrize("space,grad_to,point", list(itertools.product(SPACES, GRAD_TO, POINTS)))
def test_batchnorm_training_mode_gradients_match_batch_reference_in_every_mode(space, grad_to, point):
    """BatchNorm couples samples, so the batch Jacobian has cross-sample blocks. Forward mode books them to the
    output sample, reverse mode to the input sample: per-sample values differ, the batch sum and its gradients
    (what training uses) agree, and equal a finite-difference batch reference. With PyTorch's fused BatchNorm
    every path that differentiates through a JVP fails this (see injflow.nets.normalization)."""
    encoder, decoder, x = batchnorm_nets()
    k = 2
    dim = (2,) if space == "latent" else x.shape[1:]
    eps = E.sample_noise(x.shape[0], dim, k, "orthogonal", dtype=DTYPE, generator=gen(9))
    reference = batch_reference_surrogate(x, encoder, decoder, eps, space=space, grad_to=grad_to, point=point)
    want = grads(reference, encoder, decoder)
    for mode in MODES:
        _, _, s = E.volume_change_surrogate(
            x, encoder, decoder, n_hutchinson=k, mode=mode, trace_space=space, grad_to=grad_to,
            jacobian_at=point, generator=gen(9),
        )
        assert float(s.sum().detach()) == pytest.approx(float(reference), rel=1e-7, abs=1e-8), mode
        for g, w in zip(grads(s.sum(), encoder, decoder), want):
            assert torch.allclose(g, w, rtol=1e-6, atol=1e-8), mode


def test_batchnorm_training_mode_in_the_kumar_jvp_term():
    encoder, decoder, x = batchnorm_nets()
    terms = E.injflow_ln_terms(x, encoder, decoder, eta=0.0, generator=gen(3))
    v = torch.randn(x.shape[0], 2, dtype=DTYPE, generator=gen(3))  # the same draw as inside (Kumar §2.2)
    jv = central_difference(decoder, encoder(x), v)
    reference = (2 / 2 * jv.pow(2).sum(1).log()).sum()  # (d/2) log ‖Jv‖², d = 2, η = 0
    assert float(terms["log_frobenius"].sum()) == pytest.approx(float(reference), rel=1e-7)
    for g, w in zip(grads(terms["log_frobenius"].sum(), encoder, decoder), grads(reference, encoder, decoder)):
        assert torch.allclose(g, w, rtol=1e-6, atol=1e-8)


def test_fused_batchnorm_on_an_affected_path_warns():
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(6, 2)).to(DTYPE)
    decoder = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.Linear(8, 6)).to(DTYPE).train()
    x = torch.randn(10, 6, dtype=DTYPE)
    with pytest.warns(RuntimeWarning, match="use_composite_batchnorm"):
        E.volume_change_surrogate(x, encoder, decoder, grad_to="decoder")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        E.volume_change_surrogate(x, encoder, decoder)  # default path: plain reverse mode, correct with fused BN
        E.volume_change_surrogate(x, encoder, use_composite_batchnorm(decoder), grad_to="decoder")


def test_single_sample_gradients_average_to_the_exact_gradient(nets):
    """E over noise of the K = 1 surrogate gradient equals the K = d (exact trace) gradient."""
    encoder, decoder, x = nets
    _, _, exact = E.volume_change_surrogate(x, encoder, decoder, n_hutchinson=2, generator=gen(0))
    target = torch.cat([g.flatten() for g in grads(exact.sum(), encoder)])
    draws = []
    generator = gen(123)
    for _ in range(600):
        _, _, s = E.volume_change_surrogate(x, encoder, decoder, n_hutchinson=1, noise="gaussian", generator=generator)
        draws.append(torch.cat([g.flatten() for g in grads(s.sum(), encoder)]))
    draws = torch.stack(draws)
    mean, var = draws.mean(0), draws.var(0)
    # Squared distance of the mean is ~ chi-square with E = sum(var)/n; 3x that is far in the tail, while a wrong
    # sign or a missing stop-gradient would sit at |target|^2 >> sum(var)/n.
    n = draws.shape[0]
    assert (mean - target).pow(2).sum() < 3 * var.sum() / n
    assert target.pow(2).sum() > 30 * var.sum() / n


@pytest.mark.parametrize("k", [1, 2, 4, 5])
def test_orthogonal_noise_variance_follows_fif_eq_121_and_sphere_eq_122(k):
    d, n = 6, 40000
    eigenvalues = torch.tensor([-2.0, -0.5, 0.3, 1.0, 2.5, 4.0], dtype=DTYPE)
    basis = torch.linalg.qr(torch.randn(d, d, dtype=DTYPE, generator=gen(0))).Q
    a = basis @ torch.diag(eigenvalues) @ basis.T
    sigma2 = eigenvalues.var(unbiased=False)
    for kind, formula in (
        ("orthogonal", 2 * d**2 * (d - k) / (k * (d - 1) * (d + 2)) * sigma2),  # FIF eq. 121
        ("sphere", 2 * d**2 / (k * (d + 2)) * sigma2),  # FIF eq. 122
    ):
        eps = E.sample_noise(n, (d,), k, kind, dtype=DTYPE, generator=gen(k))
        estimates = torch.einsum("kbi,ij,kbj->b", eps, a, eps) / k
        assert abs(estimates.mean() - torch.trace(a)) < 5 * (formula / n).sqrt() + 1e-12
        assert abs(estimates.var() / formula - 1) < 0.05, kind
    exact = E.sample_noise(50, (d,), d, "orthogonal", dtype=DTYPE, generator=gen(1))
    assert torch.allclose(torch.einsum("kbi,ij,kbj->b", exact, a, exact) / d, torch.trace(a).expand(50), atol=1e-10)


@pytest.mark.parametrize("kind", E.NOISE_KINDS)
def test_noise_has_identity_second_moment(kind):
    eps = E.sample_noise(20000, (4,), 2, kind, dtype=DTYPE, generator=gen(0))
    second = torch.einsum("kbi,kbj->ij", eps, eps) / (eps.shape[0] * eps.shape[1])
    assert torch.allclose(second, torch.eye(4, dtype=DTYPE), atol=0.05)
    assert eps.shape == (2, 20000, 4)


def test_on_manifold_and_off_manifold_agree_on_the_manifold_and_differ_off_it():
    d, big_d = 2, 5
    torch.manual_seed(0)
    lift = mlp(d, big_d - d, seed=4)  # decoder manifold: graph of a nonlinear function
    mix = nn.Linear(big_d - d, d, bias=False).to(DTYPE)

    def decode(z):
        return torch.cat([z, lift(z)], 1)

    def encode(x):  # consistent with decode: off-manifold offsets are squashed, but change f'(x)
        return x[:, :d] + mix(torch.tanh(x[:, d:] - lift(x[:, :d])))

    on = decode(torch.randn(6, d, dtype=DTYPE, generator=gen(1))).detach()
    off = on + 0.5 * torch.randn(on.shape, dtype=DTYPE, generator=gen(2))
    for x, same in ((on, True), (off, False)):
        values, gradients = [], []
        for point in POINTS:
            _, x_hat, s = E.volume_change_surrogate(x, encode, decode, n_hutchinson=d, jacobian_at=point, generator=gen(3))
            values.append(s)
            gradients.append(torch.cat([g.flatten() for g in grads(s.sum(), mix)]))
        if same:
            assert torch.allclose(x_hat, x, atol=1e-12)
            assert torch.allclose(values[0], values[1], atol=1e-12)
            assert torch.allclose(gradients[0], gradients[1], atol=1e-12)
        else:
            assert (values[0] - values[1]).abs().max() > 1e-2
            assert (gradients[0] - gradients[1]).abs().max() > 1e-2


def test_fif_loss_terms_and_sign(nets):
    encoder, decoder, x = nets
    out = E.fif_loss(x, encoder, decoder, beta=3.0, n_hutchinson=2, generator=gen(0))
    reference = exact_surrogate(x, encoder, decoder, jacobian_at="x", grad_to="encoder")
    z = encoder(x)
    log_prob = -0.5 * z.pow(2).sum(1) - math.log(2 * math.pi)
    recon = (decoder(z) - x).pow(2).sum(1)
    assert torch.allclose(out["nll"], -log_prob + reference, atol=1e-10)
    assert torch.allclose(out["reconstruction"], recon, atol=1e-12)
    assert torch.allclose(out["loss"], out["nll"] + 3.0 * recon, atol=1e-10)
    custom = E.fif_loss(x, encoder, decoder, beta=0.0, latent_log_prob=lambda v: -v.abs().sum(1), generator=gen(0))
    assert torch.allclose(custom["log_prob"], -z.abs().sum(1), atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# Exact log-volumes and the rectangular-flow surrogate
# ---------------------------------------------------------------------------------------------------------------


def test_exact_log_volumes_match_brute_force_jacobian_and_slogdet(nets):
    encoder, decoder, x = nets
    z = encoder(x)
    got = E.decoder_log_volume(decoder, z, chunk_size=1)
    g_jac = per_sample_jacobian(decoder, z, create_graph=True)
    want = 0.5 * torch.linalg.slogdet(g_jac.transpose(1, 2) @ g_jac).logabsdet
    assert torch.allclose(got, want, atol=1e-10)
    for g, w in zip(grads(got.sum(), encoder, decoder), grads(want.sum(), encoder, decoder)):
        assert torch.allclose(g, w, atol=1e-9)

    got = E.encoder_log_volume(encoder, x)
    f_jac = per_sample_jacobian(encoder, x, create_graph=True)
    want = 0.5 * torch.linalg.slogdet(f_jac @ f_jac.transpose(1, 2)).logabsdet
    assert torch.allclose(got, want, atol=1e-10)
    for g, w in zip(grads(got.sum(), encoder), grads(want.sum(), encoder)):
        assert torch.allclose(g, w, atol=1e-9)
    assert torch.allclose(E.encoder_jacobian(encoder, x, chunk_size=1), f_jac, atol=1e-12)
    assert torch.allclose(E.decoder_jacobian(decoder, z), g_jac, atol=1e-12)


@pytest.mark.parametrize("grad_to,point", [("decoder", "x"), ("encoder", "x"), ("encoder", "x_hat")])
def test_rectangular_flow_gradient_matches_exact_log_det_gradient(nets, grad_to, point):
    encoder, decoder, x = nets
    z, x_hat, surrogate, info = E.rectangular_flow_surrogate(
        x, encoder, decoder, n_hutchinson=2, grad_to=grad_to, jacobian_at=point, cg_tol=1e-13, generator=gen(0)
    )
    assert 1 <= info["cg_iterations"] <= 4 and info["cg_residual"].max() < 1e-12
    if grad_to == "decoder":
        reference = E.decoder_log_volume(decoder, z.detach())  # ∇θ ½ log det(JᵀJ), Caterini et al.
    else:
        where = x if point == "x" else x_hat.detach()
        reference = -E.encoder_log_volume(encoder, where)
    for g, w in zip(grads(surrogate.sum(), encoder, decoder), grads(reference.sum(), encoder, decoder)):
        assert torch.allclose(g, w, atol=1e-9)


def test_conjugate_gradient_solves_batched_spd_systems():
    m = torch.randn(3, 5, 5, dtype=DTYPE, generator=gen(0))
    a = m @ m.transpose(1, 2) + 0.1 * torch.eye(5, dtype=DTYPE)
    b = torch.randn(3, 5, dtype=DTYPE, generator=gen(1))
    u, iterations, residual = E.conjugate_gradient(lambda v: torch.einsum("bij,bj->bi", a, v), b, tol=1e-12)
    assert torch.allclose(u, torch.linalg.solve(a, b), atol=1e-8)
    assert iterations <= 10 and residual.max() < 1e-12


# ---------------------------------------------------------------------------------------------------------------
# Kumar et al.: Frobenius terms
# ---------------------------------------------------------------------------------------------------------------


def test_finite_difference_frobenius_agrees_with_jvp_to_order_eps(nets):
    _, decoder, _ = nets
    z = torch.randn(6, 2, dtype=DTYPE, generator=gen(0))
    v = torch.randn(6, 2, dtype=DTYPE, generator=gen(1))
    _, exact, _ = E.decoder_jvp_sq_norm(decoder, z, v, method="jvp")
    errors = []
    for step in (1e-2, 1e-3):
        _, approx, _ = E.decoder_jvp_sq_norm(decoder, z, v, method="finite_difference", fd_step=step)
        errors.append((approx - exact).abs().max())
    assert errors[0] < 0.05 * exact.abs().max()
    assert 5 < errors[0] / errors[1] < 20  # first-order: error shrinks ~10x with the step


def test_frobenius_estimators_are_unbiased(nets):
    _, decoder, _ = nets
    z = torch.randn(1, 2, dtype=DTYPE, generator=gen(0)).expand(20000, 2)
    g_jac = per_sample_jacobian(decoder, z[:1], create_graph=False)[0]
    frobenius = g_jac.pow(2).sum()
    _, jvp_sq, v_sq = E.decoder_jvp_sq_norm(decoder, z, torch.randn(20000, 2, dtype=DTYPE, generator=gen(1)))
    _, vjp_sq, u_sq = E.decoder_jvp_sq_norm(decoder, z, torch.randn(20000, 5, dtype=DTYPE, generator=gen(2)), method="vjp")
    for estimate, length in ((jvp_sq, v_sq), (vjp_sq, u_sq)):
        assert abs(estimate.mean() / frobenius - 1) < 0.04
        assert abs(length.mean() / 2 - 1) < 0.03  # both report the latent-equivalent ‖v‖², E = d


def test_injflow_terms_follow_kumar_eq_9_and_10():
    d, big_d = 2, 4
    weight = torch.zeros(big_d, d, dtype=DTYPE)
    weight[0, 0], weight[1, 1] = 2.0, 0.05  # singular values 2 and 0.05 < η: the injectivity penalty can fire
    x = torch.randn(200, big_d, dtype=DTYPE, generator=gen(0))
    encode, decode = lambda v: v[:, :d] * 3, lambda z: z @ weight.T
    ln = E.injflow_ln_terms(x, encode, decode, sigma=2.0, eta=0.1, generator=gen(1))
    plain = E.injflow_terms(x, encode, decode, lam=0.5, sigma=2.0, eta=0.1, generator=gen(1))
    v = torch.randn(200, d, dtype=DTYPE, generator=gen(1))
    jv_sq, v_sq = (v @ weight.T).pow(2).sum(1), v.pow(2).sum(1)
    floored = torch.maximum(jv_sq, 0.01 * v_sq)
    z = 3 * x[:, :d]
    assert torch.allclose(ln["prior"], z.pow(2).sum(1) / 8)
    assert torch.allclose(ln["reconstruction"], (x - z @ weight.T).pow(2).sum(1))
    assert torch.allclose(ln["log_frobenius"], 0.5 * d * floored.log())
    assert torch.allclose(plain["frobenius"], floored / (2 * 0.5))
    injectivity = ((jv_sq / v_sq).sqrt() - 0.1).clamp_max(0).pow(2)
    assert torch.allclose(ln["injectivity"], injectivity) and (injectivity > 0).any() and (injectivity == 0).any()
    fd = E.injflow_ln_terms(x, encode, decode, jacobian="finite_difference", generator=gen(1))
    assert torch.allclose(fd["log_frobenius"], ln["log_frobenius"], atol=1e-8)  # exact for a linear decoder


# ---------------------------------------------------------------------------------------------------------------
# Fast paths: each against the plain computation it replaces
# ---------------------------------------------------------------------------------------------------------------


class Hyper(nn.Module):
    """A layer whose weight is computed from its input: the weight carries a tangent, so PyTorch's rule must run."""

    def __init__(self):
        super().__init__()
        self.net = nn.Linear(3, 12)

    def forward(self, u):
        weight = self.net(u.mean(0)).view(4, 3)
        return nn.functional.linear(u, weight, bias=weight.sum(1))


def linear_layer_nets() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    f = nn.functional
    return {
        "linear": nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4, bias=False), nn.SiLU(), nn.Linear(4, 6)),
        "functional": lambda u: f.linear(torch.tanh(f.linear(u, torch.ones(4, 3, dtype=DTYPE))), torch.eye(4, dtype=DTYPE)[:2],
                                         bias=torch.ones(2, dtype=DTYPE)),
        "conv1d": nn.Sequential(nn.Linear(3, 16), nn.Unflatten(1, (2, 8)), nn.Conv1d(2, 4, 3, stride=2, padding=1),
                                nn.Tanh(), nn.ConvTranspose1d(4, 2, 4, stride=2, padding=1), nn.Flatten()),
        "conv2d": nn.Sequential(nn.Linear(3, 32), nn.Unflatten(1, (2, 4, 4)),
                                nn.Conv2d(2, 4, 3, padding=1, groups=2, padding_mode="reflect"), BatchNorm2d(4), nn.ELU(),
                                nn.ConvTranspose2d(4, 1, 3, stride=2, padding=1, output_padding=1, bias=False), nn.Flatten()),
        "conv3d": nn.Sequential(nn.Linear(3, 16), nn.Unflatten(1, (2, 2, 2, 2)), nn.Conv3d(2, 3, 2, padding="same"),
                                nn.Tanh(), nn.ConvTranspose3d(3, 1, 2, stride=2), nn.Flatten()),
        "hyper": Hyper(),
    }


def plain_forward_ad(fn, primal, tangent):
    """PyTorch's own forward-mode rules (no injflow fast path)."""
    import torch.autograd.forward_ad as fwAD

    from injflow.estimators import prepare_forward_ad

    prepare_forward_ad()  # torch's own first-use notice, silenced as injflow's jvp does
    with fwAD.dual_level():
        out = fwAD.unpack_dual(fn(fwAD.make_dual(primal, tangent)))
    return out.primal, out.tangent


@pytest.mark.parametrize("name", ["linear", "functional", "conv1d", "conv2d", "conv3d", "hyper"])
def test_jvp_fast_linear_rule_matches_pytorch_forward_ad(name):
    """`jvp` propagates tangents through linear and convolutional layers with one product each instead of PyTorch's
    rule, which also multiplies by the weight's (zero) tangent: same primal, tangent, and gradients of both."""
    fn = linear_layer_nets()[name]
    if isinstance(fn, nn.Module):
        fn = fn.to(DTYPE).train()
    z = torch.randn(5, 3, dtype=DTYPE, generator=gen(0)).requires_grad_(True)
    t = torch.randn(5, 3, dtype=DTYPE, generator=gen(1)).requires_grad_(True)
    out, tangent = E.jvp(fn, z, t)
    ref_out, ref_tangent = plain_forward_ad(fn, z, t)
    assert torch.allclose(out, ref_out, atol=1e-12) and torch.allclose(tangent, ref_tangent, atol=1e-12)
    weights = [torch.randn(out.shape, dtype=DTYPE, generator=gen(k)) for k in (2, 3)]
    leaves = [z, t, *(fn.parameters() if isinstance(fn, nn.Module) else [])]
    loss = (weights[0] * out).sum() + (weights[1] * tangent).sum()  # reverse mode through the primal and the tangent
    ref_loss = (weights[0] * ref_out).sum() + (weights[1] * ref_tangent).sum()
    for g, w in zip(torch.autograd.grad(loss, leaves, allow_unused=True), torch.autograd.grad(ref_loss, leaves, allow_unused=True)):
        assert (g is None) == (w is None) and (g is None or torch.allclose(g, w, atol=1e-10))
    dense = per_sample_jacobian(fn, z.detach(), create_graph=False) if name != "conv2d" and name != "hyper" else None
    if dense is not None:  # and against the Jacobian itself
        assert torch.allclose(tangent, torch.einsum("bij,bj->bi", dense, t.detach()), atol=1e-10)


def test_batched_products_equal_one_at_a_time_with_batchnorm():
    """K stacked cotangents/tangents in one vectorised pass = K separate passes, for values and for gradients through
    differentiable products; with BatchNorm in training mode the batch statistics are the batch's for every k."""
    encoder, decoder, x = batchnorm_nets()
    x = x.detach().requires_grad_(True)
    z = encoder(x)
    x_hat = decoder(z)
    u = torch.randn(3, *z.shape, dtype=DTYPE, generator=gen(0))
    t = torch.randn(3, *z.shape, dtype=DTYPE, generator=gen(1))
    w = torch.randn(3, *x.shape, dtype=DTYPE, generator=gen(2))
    batched = E.vjp(z, x, u, create_graph=True, batched=True)
    looped = torch.stack([E.vjp(z, x, e, create_graph=True) for e in u])
    assert torch.allclose(batched, looped, atol=1e-12)
    for g, h in zip(grads((batched * w).sum(), encoder), grads((looped * w).sum(), encoder)):
        assert torch.allclose(g, h, atol=1e-10)
    operator = E.reverse_jvp_operator(x_hat, z, name="decode")
    batched = operator(t, create_graph=True, batched=True)
    looped = torch.stack([operator(e, create_graph=True) for e in t])
    assert torch.allclose(batched, looped, atol=1e-12)
    for g, h in zip(grads((batched * w).sum(), decoder), grads((looped * w).sum(), decoder)):
        assert torch.allclose(g, h, atol=1e-10)
    assert E.vjp(z, x, u[:1], batched=True).shape == (1, *x.shape)  # K = 1 skips the vectorisation


def test_one_orthogonal_sample_is_the_normalised_gaussian_direction():
    """K = 1 orthogonal noise skips the QR: the first column of the QR of the same Gaussian draw, up to its sign,
    which εᵀAε cannot see (FIF App. D.3.5)."""
    eps = E.sample_noise(7, (5,), 1, "orthogonal", dtype=DTYPE, generator=gen(4))
    q = torch.linalg.qr(torch.randn(7, 5, 1, dtype=DTYPE, generator=gen(4))).Q[..., 0] * math.sqrt(5)
    signs = (eps[0] * q).sum(1, keepdim=True).sign()
    assert torch.allclose(eps[0], signs * q, atol=1e-12) and signs.abs().min() == 1
    assert torch.allclose(eps.norm(dim=-1), torch.full((1, 7), math.sqrt(5), dtype=DTYPE))


def test_skip_input_checks_turns_off_only_the_finiteness_check(nets):
    encoder, decoder, x = nets
    bad = x.clone()
    bad[1, 0] = float("nan")
    with E.skip_input_checks():
        _, _, s = E.volume_change_surrogate(bad, encoder, decoder, generator=gen(0))  # the caller vouches for x
        assert s[1].isnan() and torch.isfinite(s[0])
        with pytest.raises(ValueError, match="must be smaller than the data dimension"):
            E.volume_change_surrogate(x, lambda v: torch.cat([v, v], 1), lambda z: z[:, :5])
        with pytest.raises(ValueError, match="floating-point"):
            E.volume_change_surrogate(x.long(), encoder, decoder)
    with pytest.raises(ValueError, match=r"NaN or inf values \(rows \[1\]"):  # on again after the block
        E.volume_change_surrogate(bad, encoder, decoder)


# ---------------------------------------------------------------------------------------------------------------
# Bad input: a clear ValueError, never a silent NaN
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_bad_input_raises_clear_errors(nets, mode):
    encoder, decoder, x = nets
    call = lambda **kw: E.volume_change_surrogate(  # noqa: E731
        kw.pop("x", x), kw.pop("encode", encoder), kw.pop("decode", decoder), mode=mode, **kw
    )
    with pytest.raises(ValueError, match="must be smaller than the data dimension"):
        call(encode=lambda v: torch.cat([v, v], 1), decode=lambda z: z[:, :5])
    with pytest.raises(ValueError, match="n_hutchinson=3 exceeds"):
        call(n_hutchinson=3)
    bad = x.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf values \(rows \[2\]"):
        call(x=bad)
    with pytest.raises(ValueError, match="decode must return the data shape"):
        call(decode=lambda z: decoder(z)[:, :4])
    with pytest.raises(ValueError, match="encode must return shape"):
        call(encode=lambda v: encoder(v)[0])
    with pytest.raises(ValueError, match="does not depend on its input"):
        call(decode=lambda z: torch.zeros(z.shape[0], 5, dtype=DTYPE) + 0 * z.detach().sum())
    with pytest.raises(ValueError, match="noise='uniform' is not one of"):
        call(noise="uniform")
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        E.fif_loss(x, encoder, decoder, beta=-1.0)
