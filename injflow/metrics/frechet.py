r"""Fréchet distance between Gaussian fits: the core of FID and of the tabular FID-like W2 metric.

For two Gaussians :math:`\mathcal N(\mu_1, \Sigma_1)` and :math:`\mathcal N(\mu_2, \Sigma_2)` the squared
2-Wasserstein distance has the closed form (Dowson & Landau 1982; Heusel et al. 2017, eq. 6)

.. math::

    W_2^2 = \|\mu_1 - \mu_2\|^2 + \operatorname{tr}\Big(\Sigma_1 + \Sigma_2
            - 2\big(\Sigma_1^{1/2} \Sigma_2 \Sigma_1^{1/2}\big)^{1/2}\Big)
          = \|\mu_1 - \mu_2\|^2 + \operatorname{tr}\Sigma_1 + \operatorname{tr}\Sigma_2
            - 2 \operatorname{tr}\,(\Sigma_1 \Sigma_2)^{1/2}.

FID implementations usually take the last trace with :func:`scipy.linalg.sqrtm` of the non-symmetric product
(Schur method: ~15-100 s for 2048 features on one CPU core, and inaccurate when the product is singular). Only
the trace is needed, and it has an exact symmetric form. Write one covariance as a Gram matrix,
:math:`\Sigma_1 = A^\top A` with :math:`A \in \mathbb R^{r \times p}`. Then
:math:`\Sigma_1\Sigma_2 = A^\top (A \Sigma_2)` has the same non-zero eigenvalues as the symmetric PSD
:math:`r \times r` matrix :math:`M = A \Sigma_2 A^\top` (:math:`XY` and :math:`YX` share them), so

.. math:: \operatorname{tr}(\Sigma_1\Sigma_2)^{1/2} = \sum_i \sqrt{\lambda_i(A \Sigma_2 A^\top)},

one symmetric eigenvalue problem (``eigvalsh``, float64). :math:`A` is, in order of preference:

- the centred points themselves, :math:`A = (X - \bar x)/\sqrt{n-1}` (:math:`r = n`), which
  :func:`gaussian_fit` keeps when the fit has no more points than dimensions (then :math:`\Sigma` is singular,
  e.g. 500 images, 2048 features). With both fits low-rank, :math:`M = C C^\top` with
  :math:`C = A_1 A_2^\top` (:math:`n_1 \times n_2`): the trace is the nuclear norm of :math:`C`;
- the Cholesky factor :math:`\Sigma_1 = L L^\top`, :math:`A = L^\top` (:math:`r = p`), for a positive-definite
  covariance;
- :math:`A = \Lambda_+^{1/2} U_+^\top` from the eigendecomposition, keeping the positive eigenvalues, for a
  singular covariance given without its points.

- **FID** is this distance between Gaussian fits of Inception pool-3 features (:mod:`injflow.metrics.fid`).
- **FID-like W2** for tabular data (FIF §5.1, after Caterini et al. 2021) is the same distance between Gaussian
  fits of the raw test points and of the model's samples: :func:`fid_like_w2`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg.lapack
import torch
from torch import Tensor

__all__ = ["GaussianFit", "gaussian_fit", "frechet_distance", "fid_like_w2"]


@dataclass(frozen=True)
class GaussianFit:
    r"""Mean :math:`\mu` (shape (p,)), covariance :math:`\Sigma` (p, p, unbiased, ``ddof=1``) and count n of a sample.

    Float64 numpy arrays, so two fits of the same data are bit-identical and can be cached. ``factor`` is an
    optional (r, p) matrix :math:`A` with :math:`\Sigma = A^\top A`; :func:`gaussian_fit` stores the centred points
    over :math:`\sqrt{n-1}` when n ≤ p, which lets :func:`frechet_distance` work in r = n dimensions.
    """

    mean: np.ndarray
    cov: np.ndarray
    n: int
    factor: np.ndarray | None = None

    def __post_init__(self) -> None:
        p = self.mean.shape[0] if self.mean.ndim == 1 else -1
        if self.mean.ndim != 1 or self.cov.shape != (p, p):
            raise ValueError(f"a Gaussian fit needs mean (p,) and cov (p, p), got {self.mean.shape} and {self.cov.shape}")
        if self.factor is not None and (self.factor.ndim != 2 or self.factor.shape[1] != p):
            raise ValueError(f"a Gaussian fit's factor must have shape (r, p) = (r, {p}), got {self.factor.shape}")


def _as_matrix(x: Tensor | np.ndarray, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(f"{name} must have shape (N, ...) with one row per point, got shape {x.shape}")
    x = x.reshape(x.shape[0], -1)
    if x.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 points for a covariance, got {x.shape[0]}")
    if not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x).all(1))[:10].tolist()
        raise ValueError(f"{name} contains NaN or inf values (rows {bad})")
    return x


def gaussian_fit(x: Tensor | np.ndarray, *, name: str = "x") -> GaussianFit:
    r"""Fits :math:`\mu = \tfrac1N\sum_i x_i` and :math:`\Sigma = \tfrac1{N-1}\sum_i (x_i-\mu)(x_i-\mu)^\top`.

    With N ≤ p the fit also keeps ``factor`` = :math:`(X - \mu)/\sqrt{N-1}` (N × p, no larger than Σ), the exact
    low-rank form of the singular covariance.

    Arguments:
        x: Points of shape ``(N, ...)``; every row is flattened to p numbers.
        name: Used in error messages.

    Example:
        >>> fit = gaussian_fit(np.array([[0.0, 1.0], [2.0, 3.0]]))
        >>> fit.mean.tolist(), fit.cov.tolist(), fit.factor.shape
        ([1.0, 2.0], [[2.0, 2.0], [2.0, 2.0]], (2, 2))
    """
    x = _as_matrix(x, name)
    mean = x.mean(0)
    n, p = x.shape
    factor = (x - mean) / np.sqrt(n - 1) if n <= p else None
    return GaussianFit(mean, np.atleast_2d(np.cov(x, rowvar=False)), int(n), factor)


def frechet_distance(
    mu1: np.ndarray | GaussianFit,
    sigma1: np.ndarray | GaussianFit | None = None,
    mu2: np.ndarray | None = None,
    sigma2: np.ndarray | None = None,
    *,
    psd_rtol: float = 1e-8,
) -> float:
    r"""Squared Fréchet (2-Wasserstein) distance between two Gaussians, exactly and without a matrix square root.

    .. math:: d^2 = \|\mu_1-\mu_2\|^2 + \operatorname{tr}\Sigma_1 + \operatorname{tr}\Sigma_2
              - 2\operatorname{tr}(\Sigma_1\Sigma_2)^{1/2}

    Call it as ``frechet_distance(fit1, fit2)`` with two :class:`GaussianFit` or as
    ``frechet_distance(mu1, sigma1, mu2, sigma2)``. The trace of the square root is
    :math:`\sum_i \sqrt{\lambda_i(A\Sigma_2A^\top)}` for a Gram factor :math:`\Sigma_1 = A^\top A` (module docstring):
    the fits' stored factors when they have them (few points), else a Cholesky factor, else one from the
    eigendecomposition. Singular covariances (fewer points than dimensions) are handled exactly, without added
    jitter. It agrees with ``scipy.linalg.sqrtm`` to round-off where that is accurate, and takes about a second for
    2048 features on one CPU core (``benchmarks/fid_time.py``).

    Arguments:
        psd_rtol: eigenvalues below ``−psd_rtol × (largest eigenvalue)`` mean a covariance is not positive
            semi-definite and raise ``ValueError``; smaller negative ones are round-off and count as 0.

    Returns:
        A float; 0 for identical Gaussians up to round-off (tiny negative values are clipped to 0).

    Example:
        >>> frechet_distance(np.zeros(2), np.eye(2), np.ones(2), 4 * np.eye(2))  # 2 + 2·(2 − 1)²
        4.0
    """
    factor1 = factor2 = None
    if isinstance(mu1, GaussianFit) and isinstance(sigma1, GaussianFit) and mu2 is None and sigma2 is None:
        (mu1, sigma1, factor1), (mu2, sigma2, factor2) = (
            (fit.mean, fit.cov, fit.factor) for fit in (mu1, sigma1)
        )
    if sigma1 is None or mu2 is None or sigma2 is None:
        raise TypeError("call frechet_distance(fit1, fit2) or frechet_distance(mu1, sigma1, mu2, sigma2)")
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
        raise ValueError(
            f"shapes do not match: mu1 {mu1.shape}, sigma1 {sigma1.shape}, mu2 {mu2.shape}, sigma2 {sigma2.shape}"
        )
    for name, a in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN or inf values")
    for name, a in (("sigma1", sigma1), ("sigma2", sigma2)):
        # Only one triangle is read below. Rows spread over the matrix against the matching columns catch a
        # non-covariance (e.g. a product of two) at O(64 p) instead of a full transpose pass.
        rows = np.arange(0, a.shape[0], max(1, a.shape[0] // 64))
        asymmetry = np.abs(a[rows] - a[:, rows].T).max()
        if asymmetry > 1e-8 * max(np.abs(a[rows]).max(), np.finfo(np.float64).tiny):
            raise ValueError(f"{name} is not symmetric (|Σ − Σᵀ| up to {asymmetry:.3g}); pass a covariance matrix")
    diff = mu1 - mu2
    trace_sqrt = _trace_sqrt_product(sigma1, sigma2, factor1, factor2, psd_rtol)
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)
    return max(value, 0.0)


def _trace_sqrt_product(
    sigma1: np.ndarray, sigma2: np.ndarray, factor1: np.ndarray | None, factor2: np.ndarray | None, psd_rtol: float
) -> float:
    r""":math:`\operatorname{tr}(\Sigma_1\Sigma_2)^{1/2}` as :math:`\sum_i\sqrt{\lambda_i(M)}` for a PSD M with the
    eigenvalues of :math:`\Sigma_1\Sigma_2` (plus zeros); see the module docstring. float64 throughout."""
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731  (shares memory)
    names = ("sigma1", "sigma2")
    if factor2 is not None and (factor1 is None or factor2.shape[0] < factor1.shape[0]):
        sigma1, sigma2, factor1, factor2 = sigma2, sigma1, factor2, factor1  # the smaller stored factor first
        names = names[::-1]
    if factor1 is not None and factor2 is not None:
        c = t(factor1) @ t(factor2).T  # Σ1Σ2 ~ A1ᵀ(A1A2ᵀ)A2 → eigenvalues of CCᵀ, C = A1A2ᵀ (n1 × n2)
        m = c @ c.T if c.shape[0] <= c.shape[1] else c.T @ c
        return _sum_sqrt_eigenvalues(m, psd_rtol, "the covariances")
    if factor1 is not None:
        a = t(factor1)
        return _sum_sqrt_eigenvalues(a @ t(sigma2) @ a.T, psd_rtol, names[1])
    for (first, second), other in (((sigma1, sigma2), names[1]), ((sigma2, sigma1), names[0])):
        lower, info = torch.linalg.cholesky_ex(torch.from_numpy(first))
        if int(info) == 0:
            # M = Lᵀ Σ L for Σ_first = L Lᵀ: LAPACK's sygst (itype 2) forms it in p³ flops using the triangle and the
            # symmetry, half the cost of two matrix products; the result's lower triangle is M.
            m, info = scipy.linalg.lapack.dsygst(second, lower.numpy(), itype=2, lower=1)
            if info == 0:
                return _sum_sqrt_eigenvalues(torch.from_numpy(m), psd_rtol, other, uplo="L")
    # Neither covariance is positive definite: A from the positive part of sigma1's eigendecomposition.
    values, vectors = torch.linalg.eigh(torch.from_numpy(sigma1))
    _check_psd(values, psd_rtol, names[0])
    keep = values > values.shape[0] * torch.finfo(values.dtype).eps * values[-1].clamp_min(0)  # numerical rank
    a = values[keep].sqrt()[:, None] * vectors[:, keep].T
    return _sum_sqrt_eigenvalues(a @ t(sigma2) @ a.T, psd_rtol, names[1])


def _check_psd(values: Tensor, psd_rtol: float, name: str) -> None:
    top = float(values.abs().max()) if values.numel() else 0.0
    low = float(values.min()) if values.numel() else 0.0
    if low < -psd_rtol * top:
        raise ValueError(
            f"{name} is not positive semi-definite (eigenvalue {low:.3g}, largest {top:.3g}): pass covariance "
            "matrices (e.g. from gaussian_fit)"
        )


def _sum_sqrt_eigenvalues(m: Tensor, psd_rtol: float, name: str, uplo: str = "L") -> float:
    values = torch.linalg.eigvalsh(m, UPLO=uplo)
    _check_psd(values, psd_rtol, name)
    # Eigenvalues within round-off of zero (|λ| ≤ r·ε·λ_max, the numerical-rank threshold) are zero: their square
    # roots, ~sqrt(ε) λ_max^{1/2} each, would otherwise add noise where the product is singular.
    noise = values.shape[0] * torch.finfo(values.dtype).eps * float(values.abs().max()) if values.numel() else 0.0
    return float(values[values > noise].sqrt().sum())


def fid_like_w2(samples: Tensor | np.ndarray, reference: Tensor | np.ndarray) -> float:
    r"""FID-like metric for tabular data (FIF §5.1; Caterini et al. 2021): :math:`W_2^2` between Gaussian fits.

    .. math:: \mathrm{W2} = \|\mu_s-\mu_r\|^2 + \operatorname{tr}\big(\Sigma_s+\Sigma_r-2(\Sigma_s\Sigma_r)^{1/2}\big)

    with :math:`(\mu_r,\Sigma_r)` the mean and covariance of the reference (test) set and :math:`(\mu_s,\Sigma_s)`
    those of the model's samples, computed on the raw (already standardised) data coordinates. Report the number
    of samples with it: the estimate is biased upwards for small n.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(2000, 3))
        >>> fid_like_w2(x, x)
        0.0
    """
    return frechet_distance(gaussian_fit(samples, name="samples"), gaussian_fit(reference, name="reference"))
