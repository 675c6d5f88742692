"""Toy manifolds sampled on the fly: the noisy sinusoid of FIF App. E.1.1, circle, two moons,
swiss roll, and a linear subspace with anisotropic Gaussian noise (FIF App. C).

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
