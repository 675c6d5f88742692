"""FIF App. C, theorem C.4, on the linear-Gaussian data set: which principal subspace a linear injective flow learns.

Loss (FIF eq. 50 with 1/(2σ²) = β): ½‖Ax‖² − ½ log det(AAᵀ) + β‖BAx − x‖² — the ``exact`` method with the
encoder-side log-volume. Theorem C.4: the optimum spans the eigenvectors of Σ with the d smallest values of
log λ − 2βλ, i.e. the top-d subspace when 1/(2β) < λ_min (PCA) and the bottom-d subspace when 1/(2β) > λ_max.

Set-up: D = 4, d = 2, Σ = V diag(2, 1, 0.5, 0.25) Vᵀ with V a seeded rotation (``linear_subspace`` data set,
FIF App. C). The 256 training points are transformed to have second moment exactly Σ, so the full-batch loss *is*
the population loss of the theorem and, in the two regimes tested, its minimiser is exactly an eigen-subspace (the
theorem assumes B = A⁺; with the freely trained B of the exact method the optimum is the same in these regimes,
not in between — docs/methods.md); the angle left over is the optimiser's alone. Tolerance: largest principal angle < 0.01 rad. Any other eigen-subspace is at π/2 (it misses
at least one eigenvector), so 0.01 rad identifies the subspace with a margin of 150x, and leaves room for the
optimiser (the runs below reach ≤ 1.3e-4 rad, except FIF at small β: 4e-3 rad, where only the β-weighted
reconstruction term turns the subspace).

FIF at small β (1/(2β) > λ_max) does *not* follow the theorem: it still learns the top-d subspace. Reason (checked
exactly below): with a reconstruction-optimal linear decoder B = ΣAᵀ(AΣAᵀ)⁻¹, FIF's likelihood part
½‖Ax‖² − tr(A sg(B)) has encoder gradient AΣ − Bᵀ, which vanishes at *every* whitened encoder (AΣAᵀ = I),
whatever its row space; so only the reconstruction term rotates the subspace, towards PCA. See docs/methods.md.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from injflow.data import load_dataset
from injflow.data.toy import principal_angles
from injflow.distributions import StandardNormal
from injflow.methods import FIF, ExactFlow

DTYPE = torch.float64
EIGENVALUES = (2.0, 1.0, 0.5, 0.25)
TOLERANCE = 0.01  # rad; see the module docstring
LARGE_BETA = 10.0  # 1/(2β) = 0.05 < λ_min = 0.25
SMALL_BETA = 0.05  # 1/(2β) = 10 > λ_max = 2


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Linear(nn.Module):
    """f(x) = Ax, g(z) = Bz (no biases: the data have zero mean), standard-normal latent."""

    def __init__(self, big_d: int, d: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.encoder = nn.Linear(big_d, d, bias=False).to(DTYPE)
        self.decoder = nn.Linear(d, big_d, bias=False).to(DTYPE)
        with torch.no_grad():
            self.encoder.weight.copy_(torch.randn(d, big_d, generator=g, dtype=DTYPE) / big_d**0.5)
            self.decoder.weight.copy_(torch.randn(big_d, d, generator=g, dtype=DTYPE) / d**0.5)
        self.latent = StandardNormal(d)

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z):
        return self.decoder(z)


@pytest.fixture(scope="module")
def problem():
    """Training data with second moment exactly Σ, plus Σ's top-d and bottom-d eigenvector bases."""
    splits = load_dataset("linear_subspace", seed=0, eigenvalues=EIGENVALUES, n_train=256, n_val=2, n_test=2)
    x = splits.train.to(DTYPE)
    vecs, vals = splits.info["eigenvectors"].to(DTYPE), splits.info["eigenvalues"].to(DTYPE)
    sigma = (vecs * vals) @ vecs.T
    empirical = x.T @ x / x.shape[0]
    # x ← x L_emp⁻ᵀ L_Σᵀ makes (1/N) XᵀX = L_Σ L_Σᵀ = Σ exactly.
    x = x @ torch.linalg.inv(torch.linalg.cholesky(empirical)).T @ torch.linalg.cholesky(sigma).T
    assert torch.allclose(x.T @ x / x.shape[0], sigma, atol=1e-12)
    order = torch.argsort(vals, descending=True)
    return {"x": x, "sigma": sigma, "top": vecs[:, order[:2]], "bottom": vecs[:, order[-2:]]}


def train(method, x, *, steps: int, lr: float, seed: int = 0) -> Linear:
    """Full-batch Adam with a cosine-decaying learning rate on the method's own loss."""
    torch.manual_seed(seed)
    model = Linear(x.shape[1], 2, seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for step in range(steps):
        loss = method.loss(x, step, model)["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    return model


def angle(model: Linear, basis: torch.Tensor) -> float:
    """Largest principal angle between the decoder's column space (the learned manifold) and ``basis``."""
    return float(principal_angles(model.decoder.weight.detach(), basis).max())


@pytest.mark.parametrize("seed", [0, 1])
def test_exact_encoder_log_volume_large_beta_learns_the_top_subspace(problem, seed):
    model = train(ExactFlow(beta=LARGE_BETA, side="encoder"), problem["x"], steps=600, lr=0.05, seed=seed)
    assert angle(model, problem["top"]) < TOLERANCE
    assert float(principal_angles(model.encoder.weight.detach().T, problem["top"]).max()) < TOLERANCE


@pytest.mark.parametrize("seed", [0, 1])
def test_exact_encoder_log_volume_small_beta_learns_the_bottom_subspace(problem, seed):
    model = train(ExactFlow(beta=SMALL_BETA, side="encoder"), problem["x"], steps=600, lr=0.05, seed=seed)
    assert angle(model, problem["bottom"]) < TOLERANCE
    assert float(principal_angles(model.encoder.weight.detach().T, problem["bottom"]).max()) < TOLERANCE


def test_fif_large_beta_learns_the_top_subspace(problem):
    # K = d orthogonal Hutchinson samples: the surrogate's trace is exact, so training is deterministic.
    model = train(FIF(beta=LARGE_BETA, n_hutchinson=2), problem["x"], steps=600, lr=0.05)
    assert angle(model, problem["top"]) < TOLERANCE


def test_fif_small_beta_still_learns_the_top_subspace(problem):
    """Where theorem C.4 (and the exact method) pick the bottom subspace, FIF picks PCA's top subspace."""
    model = train(FIF(beta=SMALL_BETA, n_hutchinson=2), problem["x"], steps=3000, lr=0.02)
    assert angle(model, problem["top"]) < TOLERANCE
    assert angle(model, problem["bottom"]) > 1.5


def test_fif_likelihood_gradient_vanishes_at_every_whitened_encoder(problem):
    """With B = ΣAᵀ(AΣAᵀ)⁻¹ and AΣAᵀ = I, FIF's NLL part has zero encoder gradient for any row space of A;
    the exact encoder-side NLL does not (its gradient AΣ − (AAᵀ)⁻¹A vanishes only on eigen-subspaces)."""
    x, sigma = problem["x"], problem["sigma"]
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        q = torch.linalg.qr(torch.randn(4, 2, dtype=DTYPE, generator=gen)).Q.T  # a generic 2-D row space
        s = q @ sigma @ q.T
        evals, evecs = torch.linalg.eigh(s)
        a = (evecs * evals.rsqrt()) @ evecs.T @ q  # whitened: AΣAᵀ = I
        b = sigma @ a.T @ torch.linalg.inv(a @ sigma @ a.T)  # reconstruction-optimal decoder
        model = Linear(4, 2, 0)
        with torch.no_grad():
            model.encoder.weight.copy_(a)
            model.decoder.weight.copy_(b)
        grad = {}
        for name, method in {"fif": FIF(beta=0.0, n_hutchinson=2), "exact": ExactFlow(beta=0.0, side="encoder")}.items():
            (grad[name],) = torch.autograd.grad(method.loss(x, 0, model)["loss"].mean(), [model.encoder.weight])
        assert grad["fif"].abs().max() < 1e-10
        assert grad["exact"].abs().max() > 1e-2
