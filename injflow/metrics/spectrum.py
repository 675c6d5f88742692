r"""Singular-value spectra of the decoder Jacobian (FIF App. E.1.2, fig. 8).

For a decoder :math:`g: \mathbb R^d \to \mathbb R^D` the Jacobian :math:`G = g'(z) \in \mathbb R^{D\times d}` has
singular values :math:`\sigma_1 \ge \dots \ge \sigma_d \ge 0`. They say how much the decoder stretches each
latent direction; their log-sum is the exact log volume change of the likelihood (FIF eq. 2):

.. math:: \tfrac12 \log\det(G^\top G) = \sum_{i=1}^d \log \sigma_i .

A spectrum with a long tail of tiny :math:`\sigma_i` means the decoder collapses latent directions (the learned
manifold has a lower effective dimension than d).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..estimators import decoder_jacobian

__all__ = ["decoder_singular_values", "jacobian_singular_values", "log_volume_from_singular_values", "spectrum_summary"]


def decoder_singular_values(
    decode: Callable[[Tensor], Tensor],
    z: Tensor,
    *,
    batch_size: int = 256,
    chunk_size: int | None = None,
) -> Tensor:
    r"""Singular values of :math:`g'(z)` per latent point, shape ``(N, d)``, descending, float64, on the CPU.

    The Jacobian is built by forward mode (:func:`injflow.estimators.decoder_jacobian`) ``batch_size`` points at a
    time, ``chunk_size`` latent directions per pass, and decomposed in float64 (:func:`jacobian_singular_values`).
    Put modules with BatchNorm/dropout in eval mode first.

    Example:
        >>> dec = torch.nn.Linear(2, 4, bias=False)
        >>> with torch.no_grad(): _ = dec.weight.copy_(torch.tensor([[3.0, 0], [0, 1], [0, 0], [0, 0]]))
        >>> decoder_singular_values(dec, torch.zeros(1, 2)).tolist()
        [[3.0, 1.0]]
    """
    if z.ndim != 2 or z.shape[0] == 0:
        raise ValueError(f"z must have shape (N, d) with N >= 1, got {tuple(z.shape)}")
    out = []
    with torch.no_grad():
        for start in range(0, z.shape[0], batch_size):
            jac = decoder_jacobian(decode, z[start : start + batch_size], chunk_size=chunk_size)
            out.append(jacobian_singular_values(jac).cpu())
    return torch.cat(out)


def jacobian_singular_values(jacobian: Tensor) -> Tensor:
    r"""Singular values of tall Jacobians ``(B, D, d)``, D ≥ d, in float64, descending.

    Computed as the singular values of R in :math:`G = QR` (Q has orthonormal columns, so they are the same):
    the SVD then runs on d × d matrices, which is faster and avoids a pathological slowdown of batched LAPACK on
    tall matrices seen with several threads on busy CPUs.
    """
    jac = jacobian.double()
    if jac.shape[-2] > jac.shape[-1]:
        jac = torch.linalg.qr(jac).R
    return torch.linalg.svdvals(jac)


def log_volume_from_singular_values(singular_values: Tensor) -> Tensor:
    r""":math:`\tfrac12\log\det(G^\top G) = \sum_i \log\sigma_i` per row (``-inf`` where a singular value is 0)."""
    return singular_values.log().sum(-1)


def spectrum_summary(singular_values: Tensor | np.ndarray, quantiles: Sequence[float] = (0.1, 0.5, 0.9)) -> dict:
    """Per-index statistics of a spectrum ``(N, d)``: mean, quantiles, and the condition number's median.

    Returns a JSON-ready dict ``{"n", "d", "mean": [d], "q10": [d], "median": [d], "q90": [d],
    "condition_median": σ₁/σ_d median}`` (keys ``q<100·q>``, 0.5 is ``median``).
    """
    sv = torch.as_tensor(singular_values, dtype=torch.float64)
    if sv.ndim != 2:
        raise ValueError(f"singular values must have shape (N, d), got {tuple(sv.shape)}")
    out: dict = {"n": int(sv.shape[0]), "d": int(sv.shape[1]), "mean": sv.mean(0).tolist()}
    for q in quantiles:
        key = "median" if q == 0.5 else f"q{round(100 * q):d}"
        out[key] = torch.quantile(sv, q, dim=0).tolist()
    cond = sv[:, 0] / sv[:, -1]
    out["condition_median"] = float(cond.median())
    return out
