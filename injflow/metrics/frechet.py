r"""Fréchet distance between Gaussian fits: the core of FID and of the tabular FID-like W2 metric.

For two Gaussians :math:`\mathcal N(\mu_1, \Sigma_1)` and :math:`\mathcal N(\mu_2, \Sigma_2)` the squared
2-Wasserstein distance has the closed form (Dowson & Landau 1982; Heusel et al. 2017, eq. 6)

.. math::

    W_2^2 = \|\mu_1 - \mu_2\|^2 + \operatorname{tr}\Big(\Sigma_1 + \Sigma_2
            - 2\big(\Sigma_1^{1/2} \Sigma_2 \Sigma_1^{1/2}\big)^{1/2}\Big)
          = \|\mu_1 - \mu_2\|^2 + \operatorname{tr}\Sigma_1 + \operatorname{tr}\Sigma_2
            - 2 \operatorname{tr}\,(\Sigma_1 \Sigma_2)^{1/2}.

The last form (the product :math:`\Sigma_1\Sigma_2` is similar to the symmetric PSD matrix
:math:`\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2}`, so its principal square root has the same trace) is what FID
implementations compute, with :func:`scipy.linalg.sqrtm` (Schur method), in float64.

- **FID** is this distance between Gaussian fits of Inception pool-3 features (:mod:`injflow.metrics.fid`).
- **FID-like W2** for tabular data (FIF §5.1, after Caterini et al. 2021) is the same distance between Gaussian
  fits of the raw test points and of the model's samples: :func:`fid_like_w2`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.linalg
from torch import Tensor

__all__ = ["GaussianFit", "gaussian_fit", "frechet_distance", "fid_like_w2"]


@dataclass(frozen=True)
class GaussianFit:
    r"""Mean :math:`\mu` (shape (p,)), covariance :math:`\Sigma` (p, p, unbiased, ``ddof=1``) and count n of a sample.

    Float64 numpy arrays, so two fits of the same data are bit-identical and can be cached.
    """

    mean: np.ndarray
    cov: np.ndarray
    n: int

    def __post_init__(self) -> None:
        p = self.mean.shape[0] if self.mean.ndim == 1 else -1
        if self.mean.ndim != 1 or self.cov.shape != (p, p):
            raise ValueError(f"a Gaussian fit needs mean (p,) and cov (p, p), got {self.mean.shape} and {self.cov.shape}")


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

    Arguments:
        x: Points of shape ``(N, ...)``; every row is flattened to p numbers.
        name: Used in error messages.

    Example:
        >>> fit = gaussian_fit(np.array([[0.0, 1.0], [2.0, 3.0]]))
        >>> fit.mean.tolist(), fit.cov.tolist()
        ([1.0, 2.0], [[2.0, 2.0], [2.0, 2.0]])
    """
    x = _as_matrix(x, name)
    return GaussianFit(x.mean(0), np.atleast_2d(np.cov(x, rowvar=False)), int(x.shape[0]))


def frechet_distance(
    mu1: np.ndarray | GaussianFit,
    sigma1: np.ndarray | GaussianFit | None = None,
    mu2: np.ndarray | None = None,
    sigma2: np.ndarray | None = None,
    *,
    eps: float = 1e-6,
    imag_atol: float = 1e-3,
    residual_warn: float = 1e-4,
) -> float:
    r"""Squared Fréchet (2-Wasserstein) distance between two Gaussians.

    .. math:: d^2 = \|\mu_1-\mu_2\|^2 + \operatorname{tr}\Sigma_1 + \operatorname{tr}\Sigma_2
              - 2\operatorname{tr}(\Sigma_1\Sigma_2)^{1/2}

    Call it as ``frechet_distance(fit1, fit2)`` with two :class:`GaussianFit` or as
    ``frechet_distance(mu1, sigma1, mu2, sigma2)``. The square root is :func:`scipy.linalg.sqrtm`; if it is not
    finite (singular product, e.g. fewer points than feature dimensions), ``eps·I`` is added to both covariances
    and a warning says so. Imaginary parts from round-off are dropped when they are below ``imag_atol`` on the
    diagonal; larger ones raise ``ValueError`` (the covariances are then not PSD). Covariances of fewer points than
    dimensions (e.g. 500 images, 2048 features) are singular, which is fine: instead of scipy's generic singularity
    warning, the relative residual :math:`\|X^2 - \Sigma_1\Sigma_2\|_F / \|\Sigma_1\Sigma_2\|_F` of the root is
    checked and a warning is given above ``residual_warn``.

    Returns:
        A float; 0 for identical Gaussians up to round-off (tiny negative values are clipped to 0).

    Example:
        >>> frechet_distance(np.zeros(2), np.eye(2), np.ones(2), 4 * np.eye(2))  # 2 + 2·(2 − 1)²
        4.0
    """
    if isinstance(mu1, GaussianFit) and isinstance(sigma1, GaussianFit) and mu2 is None and sigma2 is None:
        mu1, sigma1, mu2, sigma2 = mu1.mean, mu1.cov, sigma1.mean, sigma1.cov
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
    diff = mu1 - mu2
    product = sigma1 @ sigma2
    covmean = _sqrtm(product)
    if not np.isfinite(covmean).all():
        warnings.warn(
            f"the product of the covariances is singular; adding {eps:g}·I to both before the square root",
            RuntimeWarning,
            stacklevel=2,
        )
        offset = np.eye(sigma1.shape[0]) * eps
        product = (sigma1 + offset) @ (sigma2 + offset)
        covmean = _sqrtm(product)
    scale = np.linalg.norm(product)
    residual = np.linalg.norm(covmean @ covmean - product) / scale if scale > 0 else 0.0
    if residual > residual_warn:
        warnings.warn(f"the matrix square root is inaccurate (relative residual {residual:.2g})", RuntimeWarning,
                      stacklevel=2)
    if np.iscomplexobj(covmean):
        imag = np.abs(np.diagonal(covmean).imag).max()
        if imag > imag_atol:
            raise ValueError(f"the matrix square root has an imaginary component {imag:.3g} > {imag_atol:g}: "
                             "are both covariances positive semi-definite?")
        covmean = covmean.real
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


def _sqrtm(a: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        # Singular products are expected (rank-deficient covariances); accuracy is checked by the caller.
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        return scipy.linalg.sqrtm(a)


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
