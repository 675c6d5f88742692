"""Toy manifolds sampled on the fly: the noisy sinusoid of FIF App. E.1.1, circle, two moons,
swiss roll, and a linear subspace with anisotropic Gaussian noise (FIF App. C); and full-dimensional 2-D
densities with a known log-density (:func:`toy_log_prob`) for normalizing flows at d = D (free-form flows):
a correlated Gaussian, a Gaussian mixture, a checkerboard and eight Gaussians (two moons' density is known by
quadrature).

Each split is drawn from its own seeded random stream, so e.g. changing `n_test` leaves the
training set unchanged and the same `seed` always gives the same data.
"""

from __future__ import annotations

__all__ = [
    "sample_sinusoid",
    "sample_circle",
    "sample_moons",
    "sample_swiss_roll",
    "sample_linear_subspace",
    "random_orthogonal",
    "principal_angles",
    "sample_correlated_gaussian",
    "sample_gaussian_mixture",
    "sample_checkerboard",
    "sample_eight_gaussians",
    "toy_log_prob",
    "TOY_DENSITIES",
]

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from ..errors import OptionError
from .registry import check_count, check_noise, register
from .splits import DataSplits, seeded_generator

_SPLITS = ("train", "val", "test")


def sample_sinusoid(n: int, noise: float = 0.1, generator: torch.Generator | None = None) -> Tensor:
    r"""Samples the noisy sinusoid of FIF App. E.1.1.

    :math:`x \sim \mathcal{N}(0, 1)`, :math:`y = \sin(\pi x / 2)`, then isotropic Gaussian noise of
    standard deviation `noise` is added to both coordinates (the paper uses 0.1, 0.2 and 0.3).

    Arguments:
        n: The number of points.
        noise: The noise standard deviation σ.
        generator: The random generator.

    Returns:
        A tensor of shape `(n, 2)`.

    Example:
        >>> sample_sinusoid(5, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([5, 2])
    """
    x = torch.randn(n, generator=generator)
    clean = torch.stack([x, torch.sin(math.pi * x / 2)], dim=1)
    return clean + noise * torch.randn(n, 2, generator=generator)


def sample_circle(
    n: int, noise: float = 0.05, radius: float = 1.0, generator: torch.Generator | None = None
) -> Tensor:
    r"""Samples a circle of radius `radius` (uniform angle) plus isotropic Gaussian noise.

    Example:
        >>> sample_circle(5, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([5, 2])
    """
    angle = 2 * math.pi * torch.rand(n, generator=generator)
    clean = radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return clean + noise * torch.randn(n, 2, generator=generator)


def sample_moons(n: int, noise: float = 0.05, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    r"""Samples two interleaving half circles (the usual "two moons") plus isotropic noise.

    The upper moon is :math:`(\cos\theta, \sin\theta)`, the lower one
    :math:`(1 - \cos\theta, 0.5 - \sin\theta)`, with :math:`\theta \sim U[0, \pi]`; each point picks
    a moon with probability ½.

    Returns:
        Points of shape `(n, 2)` and the moon index (0 or 1) of shape `(n,)`.

    Example:
        >>> x, y = sample_moons(5, generator=torch.Generator().manual_seed(0))
        >>> x.shape, y.shape
        (torch.Size([5, 2]), torch.Size([5]))
    """
    theta = math.pi * torch.rand(n, generator=generator)
    moon = torch.randint(0, 2, (n,), generator=generator)
    upper = torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
    lower = torch.stack([1 - torch.cos(theta), 0.5 - torch.sin(theta)], dim=1)
    clean = torch.where(moon.unsqueeze(1) == 0, upper, lower)
    return clean + noise * torch.randn(n, 2, generator=generator), moon


def sample_swiss_roll(n: int, noise: float = 0.1, generator: torch.Generator | None = None) -> Tensor:
    r"""Samples the 3-D swiss roll (the convention of scikit-learn's `make_swiss_roll`).

    :math:`t = \tfrac{3\pi}{2}(1 + 2u)`, :math:`h = 21 v` with :math:`u, v \sim U[0, 1]`, and the
    point :math:`(t\cos t, h, t\sin t)` plus isotropic Gaussian noise. Coordinates span roughly
    [-10, 13] × [0, 21] × [-12, 15]: not standardised.

    Example:
        >>> sample_swiss_roll(5, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([5, 3])
    """
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator))
    h = 21 * torch.rand(n, generator=generator)
    clean = torch.stack([t * torch.cos(t), h, t * torch.sin(t)], dim=1)
    return clean + noise * torch.randn(n, 3, generator=generator)


def random_orthogonal(dim: int, generator: torch.Generator | None = None) -> Tensor:
    r"""Samples a Haar-random orthogonal matrix (QR of a Gaussian matrix with sign correction).

    Example:
        >>> q = random_orthogonal(3, torch.Generator().manual_seed(0))
        >>> torch.allclose(q @ q.T, torch.eye(3), atol=1e-6)
        True
    """
    a = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    return (q * torch.sign(torch.diagonal(r))).float()


def sample_linear_subspace(
    n: int, eigenvectors: Tensor, eigenvalues: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    r"""Samples :math:`\mathcal{N}(0, V \operatorname{diag}(\lambda) V^\top)`.

    Arguments:
        n: The number of points.
        eigenvectors: Orthogonal matrix V of shape `(D, D)`, one eigenvector per column.
        eigenvalues: Variances λ of shape `(D,)`, paired with the columns of V (zeros allowed).

    Example:
        >>> x = sample_linear_subspace(4, torch.eye(3), torch.tensor([1.0, 1.0, 0.0]))
        >>> bool((x[:, 2] == 0).all())
        True
    """
    z = torch.randn(n, eigenvalues.shape[0], generator=generator)
    return (z * eigenvalues.sqrt()) @ eigenvectors.T


def principal_angles(a: Tensor, b: Tensor) -> Tensor:
    r"""Principal angles (radians, ascending) between the column spans of `a` (D, p) and `b` (D, q).

    Useful to check that a learned linear decoder spans the true subspace of
    :func:`sample_linear_subspace` (FIF App. C: the optimum spans a subset of Σ's eigenvectors).

    Example:
        >>> e = torch.eye(3)
        >>> principal_angles(e[:, :2], e[:, [1, 0]]).abs().max().item() < 1e-6
        True
    """
    qa = torch.linalg.qr(a.double())[0]
    qb = torch.linalg.qr(b.double())[0]
    cos = torch.linalg.svdvals(qa.T @ qb).clamp(-1.0, 1.0)
    return torch.arccos(cos).flip(0).to(a.dtype).sort().values


def _toy_splits(
    name: str,
    seed: int,
    sizes: dict[str, int | None],
    sample: Callable[[int, torch.Generator], Tensor | tuple[Tensor, Tensor]],
    info: dict,
) -> DataSplits:
    # One independent stream per split (stream ids 0, 1, 2) so split sizes do not interact.
    out: dict[str, Tensor | None] = {}
    for i, split in enumerate(_SPLITS):
        n = check_count(f"n_{split}", sizes[split])
        drawn = sample(n, seeded_generator(seed, i))
        x, y = drawn if isinstance(drawn, tuple) else (drawn, None)
        out[split], out[f"{split}_labels"] = x.float().contiguous(), y
    if out["train_labels"] is not None:
        info = {**info, "num_classes": int(out["train_labels"].max()) + 1}
    return DataSplits(
        name=name, kind="toy", data_shape=(out["train"].shape[1],), info={"seed": seed, **info}, **out
    )


@register("sinusoid")
def load_sinusoid(
    *,
    seed: int,
    root: str | Path | None,
    download: bool,
    n_train: int = 10_000,
    n_val: int = 2_000,
    n_test: int = 2_000,
    noise: float = 0.1,
) -> DataSplits:
    r"""The noisy 2-D sinusoid of FIF App. E.1.1 (1-D manifold in 2-D); `noise` is σ (0.1, 0.2, 0.3 in the paper)."""
    noise = check_noise("noise", noise)
    return _toy_splits(
        "sinusoid",
        seed,
        {"train": n_train, "val": n_val, "test": n_test},
        lambda n, g: sample_sinusoid(n, noise, g),
        {
            "source": "FIF App. E.1.1: x ~ N(0,1), y = sin(pi x / 2), plus isotropic N(0, noise^2) noise",
            "noise": noise,
            "manifold_dim": 1,
        },
    )


@register("circle")
def load_circle(
    *,
    seed: int,
    root: str | Path | None,
    download: bool,
    n_train: int = 10_000,
    n_val: int = 2_000,
    n_test: int = 2_000,
    noise: float = 0.05,
    radius: float = 1.0,
) -> DataSplits:
    r"""A noisy circle (1-D manifold in 2-D)."""
    noise, radius = check_noise("noise", noise), check_noise("radius", radius)
    return _toy_splits(
        "circle",
        seed,
        {"train": n_train, "val": n_val, "test": n_test},
        lambda n, g: sample_circle(n, noise, radius, g),
        {"source": "circle, uniform angle, isotropic noise", "noise": noise, "radius": radius, "manifold_dim": 1},
    )


@register("moons")
def load_moons(
    *,
    seed: int,
    root: str | Path | None,
    download: bool,
    n_train: int = 10_000,
    n_val: int = 2_000,
    n_test: int = 2_000,
    noise: float = 0.05,
    conditional: bool = False,
) -> DataSplits:
    r"""Two moons (1-D manifold with two components in 2-D); `conditional=True` returns the moon index as labels."""
    noise = check_noise("noise", noise)
    return _toy_splits(
        "moons",
        seed,
        {"train": n_train, "val": n_val, "test": n_test},
        lambda n, g: sample_moons(n, noise, g) if conditional else sample_moons(n, noise, g)[0],
        {"source": "two interleaving half circles, isotropic noise", "noise": noise, "manifold_dim": 1},
    )


@register("swiss_roll")
def load_swiss_roll(
    *,
    seed: int,
    root: str | Path | None,
    download: bool,
    n_train: int = 10_000,
    n_val: int = 2_000,
    n_test: int = 2_000,
    noise: float = 0.1,
) -> DataSplits:
    r"""The 3-D swiss roll (2-D manifold in 3-D), scikit-learn's convention, not standardised."""
    noise = check_noise("noise", noise)
    return _toy_splits(
        "swiss_roll",
        seed,
        {"train": n_train, "val": n_val, "test": n_test},
        lambda n, g: sample_swiss_roll(n, noise, g),
        {"source": "swiss roll (t cos t, 21 v, t sin t), t = 1.5 pi (1 + 2u)", "noise": noise, "manifold_dim": 2},
    )


@register("linear_subspace")
def load_linear_subspace(
    *,
    seed: int,
    root: str | Path | None,
    download: bool,
    n_train: int = 10_000,
    n_val: int = 2_000,
    n_test: int = 2_000,
    eigenvalues: Sequence[float] = (4.0, 1.0, 0.04, 0.01),
    subspace_dim: int = 2,
    noise: float = 0.0,
    rotate: bool = True,
) -> DataSplits:
    r"""Gaussian data with a given covariance spectrum: a linear subspace with anisotropic noise (FIF App. C).

    The covariance is :math:`\Sigma = V \operatorname{diag}(\lambda + \sigma^2) V^\top` with the
    user's `eigenvalues` λ (length D, zeros allowed), `noise` σ added isotropically (App. C: this
    lifts every eigenvalue to at least σ², making the highest-variance subspace the optimum), and V
    a seeded random rotation (`rotate=True`) or the identity. `info` holds the true `covariance`,
    `eigenvalues` (λ + σ², paired with the columns of `eigenvectors`) and `basis`: the D × d
    eigenvectors of the `subspace_dim` largest eigenvalues, to compare a learned decoder with
    :func:`principal_angles`.
    """
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64)
    if lam.ndim != 1 or lam.numel() < 2 or not bool(torch.isfinite(lam).all()) or bool((lam < 0).any()):
        raise ValueError(
            f"option eigenvalues must be a sequence of >= 2 finite non-negative numbers, got {eigenvalues!r}"
        )
    dim = lam.numel()
    subspace_dim = check_count("subspace_dim", subspace_dim)
    if subspace_dim >= dim:
        raise OptionError(f"must be < the dimension {dim}, got {subspace_dim}", key="subspace_dim")
    noise = check_noise("noise", noise)
    # The rotation has its own stream (id 3): it depends on the seed only, not on the split sizes.
    vecs = random_orthogonal(dim, seeded_generator(seed, 3)) if rotate else torch.eye(dim)
    total = (lam + noise**2).float()
    top = torch.argsort(total, descending=True, stable=True)[:subspace_dim]
    info = {
        "source": "FIF App. C: Gaussian with covariance V diag(eigenvalues + noise^2) V^T",
        "noise": noise,
        "manifold_dim": subspace_dim,
        "eigenvalues": total,
        "eigenvectors": vecs,
        "covariance": (vecs * total) @ vecs.T,
        "basis": vecs[:, top],
    }
    return _toy_splits(
        "linear_subspace",
        seed,
        {"train": n_train, "val": n_val, "test": n_test},
        lambda n, g: sample_linear_subspace(n, vecs, total, g),
        info,
    )


# ------------------------------------------------------------------------------------------------------------------
# Full-dimensional 2-D densities with a known log-density (known answers for free-form flows at d = D)
# ------------------------------------------------------------------------------------------------------------------

#: The mixture of :func:`sample_gaussian_mixture`: weights, means and covariances of its three components.
_MIXTURE = (
    torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64),
    torch.tensor([[-1.5, -0.5], [1.5, -0.5], [0.0, 1.5]], dtype=torch.float64),
    torch.tensor([[[0.5, 0.3], [0.3, 0.4]], [[0.3, -0.2], [-0.2, 0.6]], [[0.2, 0.0], [0.0, 0.1]]], dtype=torch.float64),
)


def _correlation_covariance(correlation: float) -> Tensor:
    return torch.tensor([[1.0, correlation], [correlation, 1.0]], dtype=torch.float64)


def sample_correlated_gaussian(n: int, correlation: float = 0.8, generator: torch.Generator | None = None) -> Tensor:
    r"""Samples :math:`\mathcal N(0, \Sigma)` in 2-D with unit variances and correlation ρ.

    Its entropy is :math:`\log(2\pi e) + \tfrac12\log(1 - \rho^2)` nats (2.327 for ρ = 0.8).

    Example:
        >>> sample_correlated_gaussian(5, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([5, 2])
    """
    chol = torch.linalg.cholesky(_correlation_covariance(correlation)).float()
    return torch.randn(n, 2, generator=generator) @ chol.T


def sample_gaussian_mixture(n: int, generator: torch.Generator | None = None) -> Tensor:
    r"""Samples a fixed 2-D mixture of three Gaussians with weights (0.5, 0.3, 0.2), distinct full covariances.

    Example:
        >>> sample_gaussian_mixture(5, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([5, 2])
    """
    weights, means, covs = _MIXTURE
    component = torch.multinomial(weights, n, replacement=True, generator=generator)
    eps = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    chol = torch.linalg.cholesky(covs)[component]
    return (means[component] + (chol @ eps.unsqueeze(-1)).squeeze(-1)).float()


def sample_checkerboard(n: int, generator: torch.Generator | None = None) -> Tensor:
    r"""Samples the uniform density on the 8 dark squares (side 2) of a 4 × 4 checkerboard on :math:`[-4, 4]^2`.

    The density is :math:`1/32` on its support, so the true NLL is :math:`\log 32 = 3.466` nats.

    Example:
        >>> x = sample_checkerboard(1000, generator=torch.Generator().manual_seed(0))
        >>> bool(((x.div(2).floor().sum(1) % 2) == 1).all())  # dark squares: odd sum of the cell indices
        True
    """
    # Column i ∈ {-2..1} uniformly, then a row of the opposite parity, so that i + j is odd.
    column = torch.randint(-2, 2, (n,), generator=generator)
    row = 2 * torch.randint(-1, 1, (n,), generator=generator) + (column + 1) % 2
    cells = torch.stack([column, row], dim=1).float()
    return 2 * (cells + torch.rand(n, 2, generator=generator))


def _eight_centers(radius: float) -> Tensor:
    angles = torch.arange(8, dtype=torch.float64) * (math.pi / 4)
    return radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)


def sample_eight_gaussians(
    n: int, radius: float = 2.0, std: float = 0.2, generator: torch.Generator | None = None
) -> Tensor:
    r"""Samples an equal-weight mixture of 8 isotropic Gaussians (standard deviation ``std``) on a circle.

    Example:
        >>> sample_eight_gaussians(5, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([5, 2])
    """
    component = torch.randint(0, 8, (n,), generator=generator)
    return (_eight_centers(radius)[component] + std * torch.randn(n, 2, generator=generator, dtype=torch.float64)).float()


def _gaussian_mixture_log_prob(x: Tensor, weights: Tensor, means: Tensor, covs: Tensor) -> Tensor:
    dist = torch.distributions.MultivariateNormal(means, covariance_matrix=covs)
    return torch.logsumexp(dist.log_prob(x.unsqueeze(1)) + weights.log(), dim=1)


def _moons_log_prob(x: Tensor, noise: float, n_nodes: int = 1024) -> Tensor:
    # p(x) = ½ Σ_moon ∫_0^π (1/π) N(x; m_moon(θ), σ²I) dθ, by the midpoint rule: the nodes are π/1024 ≈ 0.003 apart,
    # far below σ = 0.05, so the sum is the integral to well below 1e-3 (tests/test_fff.py checks the total mass).
    theta = (torch.arange(n_nodes, dtype=torch.float64) + 0.5) * (math.pi / n_nodes)
    upper = torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
    lower = torch.stack([1 - torch.cos(theta), 0.5 - torch.sin(theta)], dim=1)
    nodes = torch.cat([upper, lower])  # (2M, 2), each node has weight 1/(2M)
    out = []
    for xb in x.split(1024):
        sq = torch.cdist(xb, nodes).pow(2)
        out.append(torch.logsumexp(-sq / (2 * noise**2), dim=1) - math.log(2 * n_nodes) - math.log(2 * math.pi * noise**2))
    return torch.cat(out)


#: The data sets :func:`toy_log_prob` knows the density of.
TOY_DENSITIES = ("correlated_gaussian", "gaussian_mixture", "checkerboard", "eight_gaussians", "moons")


def toy_log_prob(name: str, x: Tensor, **options: float) -> Tensor:
    r"""The true log-density of a 2-D toy data set at points x (N, 2), float64: the known answer for a flow's NLL.

    Arguments:
        name: One of :data:`TOY_DENSITIES`.
        x: Points (N, 2).
        options: The data set's shape options (``correlation``; ``radius``, ``std``; ``noise``), as loaded.

    Returns:
        :math:`\log p(x)`, shape (N,); ``-inf`` off the support of the checkerboard.

    Example:
        >>> x = sample_correlated_gaussian(20000, generator=torch.Generator().manual_seed(0))
        >>> round(-float(toy_log_prob("correlated_gaussian", x).mean()), 2)  # the entropy, 2.327
        2.33
    """
    x = x.double()
    if name == "correlated_gaussian":
        cov = _correlation_covariance(float(options.get("correlation", 0.8)))
        return torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64), cov).log_prob(x)
    if name == "gaussian_mixture":
        return _gaussian_mixture_log_prob(x, *_MIXTURE)
    if name == "checkerboard":
        inside = (x.abs() <= 4).all(1) & ((x.div(2).floor().sum(1) % 2) == 1)
        return torch.where(inside, torch.full_like(x[:, 0], -math.log(32.0)), torch.full_like(x[:, 0], -math.inf))
    if name == "eight_gaussians":
        radius, std = float(options.get("radius", 2.0)), float(options.get("std", 0.2))
        centers = _eight_centers(radius)
        covs = (std**2 * torch.eye(2, dtype=torch.float64)).expand(8, 2, 2)
        return _gaussian_mixture_log_prob(x, torch.full((8,), 1 / 8, dtype=torch.float64), centers, covs)
    if name == "moons":
        return _moons_log_prob(x, float(options.get("noise", 0.05)))
    raise ValueError(f"no known density for toy data set {name!r}; known: {', '.join(TOY_DENSITIES)}")


def _density_splits(name: str, seed: int, sizes: dict[str, int | None], sample: Callable, info: dict) -> DataSplits:
    return _toy_splits(name, seed, sizes, sample, {**info, "manifold_dim": 2, "known_density": True})


@register("correlated_gaussian")
def load_correlated_gaussian(
    *, seed: int, root: str | Path | None, download: bool, n_train: int = 10_000, n_val: int = 2_000,
    n_test: int = 2_000, correlation: float = 0.8,
) -> DataSplits:
    r"""A 2-D Gaussian with unit variances and correlation ρ (full-dimensional; entropy known, :func:`toy_log_prob`)."""
    if not -1 < correlation < 1:
        raise ValueError(f"option correlation must lie strictly between -1 and 1, got {correlation!r}")
    return _density_splits(
        "correlated_gaussian", seed, {"train": n_train, "val": n_val, "test": n_test},
        lambda n, g: sample_correlated_gaussian(n, correlation, g),
        {"source": "N(0, [[1, rho], [rho, 1]])", "correlation": correlation,
         "entropy": math.log(2 * math.pi * math.e) + 0.5 * math.log(1 - correlation**2)},
    )


@register("gaussian_mixture")
def load_gaussian_mixture(
    *, seed: int, root: str | Path | None, download: bool, n_train: int = 10_000, n_val: int = 2_000, n_test: int = 2_000,
) -> DataSplits:
    r"""A fixed 2-D mixture of three Gaussians (full-dimensional; density known, :func:`toy_log_prob`)."""
    return _density_splits(
        "gaussian_mixture", seed, {"train": n_train, "val": n_val, "test": n_test},
        lambda n, g: sample_gaussian_mixture(n, g), {"source": "3-component 2-D Gaussian mixture (injflow.data.toy)"},
    )


@register("checkerboard")
def load_checkerboard(
    *, seed: int, root: str | Path | None, download: bool, n_train: int = 10_000, n_val: int = 2_000, n_test: int = 2_000,
) -> DataSplits:
    r"""Uniform on the 8 dark squares of a checkerboard on [-4, 4]² (full-dimensional; true NLL log 32)."""
    return _density_splits(
        "checkerboard", seed, {"train": n_train, "val": n_val, "test": n_test},
        lambda n, g: sample_checkerboard(n, g), {"source": "uniform on a 4 x 4 checkerboard's dark squares, side 2"},
    )


@register("eight_gaussians")
def load_eight_gaussians(
    *, seed: int, root: str | Path | None, download: bool, n_train: int = 10_000, n_val: int = 2_000, n_test: int = 2_000,
    radius: float = 2.0, std: float = 0.2,
) -> DataSplits:
    r"""Eight equal Gaussians on a circle of radius ``radius`` (full-dimensional; density known, :func:`toy_log_prob`)."""
    radius, std = check_noise("radius", radius), check_noise("std", std)
    if std == 0:
        raise ValueError("option std must be > 0 (the components are Gaussians with a density)")
    return _density_splits(
        "eight_gaussians", seed, {"train": n_train, "val": n_val, "test": n_test},
        lambda n, g: sample_eight_gaussians(n, radius, std, g),
        {"source": "8 isotropic Gaussians at angles k pi / 4 on a circle", "radius": radius, "std": std},
    )
