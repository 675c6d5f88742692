r"""Exact on-manifold likelihood of test points (FIF eq. 2 and App. A), with the reconstruction error.

For an encoder :math:`f`, a decoder :math:`g` and a latent density :math:`p_Z`, a point :math:`x` is projected to
:math:`\hat x = g(f(x))` on the learned manifold, and the model's density there (with respect to the
d-dimensional volume on the manifold) is

.. math:: \log p(\hat x) = \log p_Z(z) - \tfrac12 \log\det\big(g'(z)^\top g'(z)\big), \qquad z = f(x).

This is a density *on the manifold*, so it is always reported together with the reconstruction error
:math:`\|\hat x - x\|^2` (how far x is from the manifold): a model can buy a high on-manifold likelihood with a
poor reconstruction. The log-determinant is exact: the full decoder Jacobian :math:`G \in \mathbb R^{D\times d}`
per point (d forward-mode passes), decomposed in float64; it gives the singular-value spectrum for free
(:mod:`injflow.metrics.spectrum`), since :math:`\tfrac12\log\det G^\top G = \sum_i \log\sigma_i`.
The points are processed ``batch_size`` at a time and the Jacobian ``chunk_size`` columns at a time, so the
whole test set fits in memory.

A free-form flow (d = D, method ``fff``) is a normalizing flow, and the log-volume is taken on the encoder side,
:math:`-\log|\det f'(x)|` (:func:`~injflow.estimators.log_abs_det_jacobian`), so ``log_prob`` is the exact density of
x itself, :math:`\log p_Z(f(x)) + \log|\det f'(x)|`, as :meth:`injflow.InjectiveFlow.log_prob` reports it; the
spectrum is still the decoder's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..devices import full_float32
from ..estimators import decoder_jacobian, log_abs_det_jacobian
from .spectrum import jacobian_singular_values, spectrum_summary

__all__ = ["OnManifoldLikelihood", "on_manifold_likelihood"]


@dataclass
class OnManifoldLikelihood:
    r"""Per-point results, float64 on the CPU.

    Attributes:
        log_prob: :math:`\log p(\hat x)`, shape (N,).
        reconstruction: :math:`\|\hat x - x\|^2` summed over data dimensions, shape (N,).
        log_volume: :math:`\tfrac12\log\det(G^\top G)`, shape (N,) (:math:`-\log|\det f'(x)|` when d = D).
        singular_values: :math:`\sigma_1 \ge \dots \ge \sigma_d` of :math:`G`, shape (N, d).
    """

    log_prob: Tensor
    reconstruction: Tensor
    log_volume: Tensor
    singular_values: Tensor

    @property
    def nll(self) -> Tensor:
        """:math:`-\\log p(\\hat x)`, shape (N,)."""
        return -self.log_prob

    def summary(self, data_dim: int) -> dict:
        """JSON-ready means: ``nll``, ``nll_std``, ``nll_per_dim`` (÷ D), ``reconstruction_error``, ``log_volume_mean``
        and the spectrum (:func:`~injflow.metrics.spectrum.spectrum_summary`)."""
        nll = self.nll
        return {
            "n": int(nll.shape[0]),
            "nll": float(nll.mean()),
            "nll_std": float(nll.std()) if nll.shape[0] > 1 else 0.0,
            "nll_per_dim": float(nll.mean() / data_dim),
            "reconstruction_error": float(self.reconstruction.mean()),
            "log_volume_mean": float(self.log_volume.mean()),
            "spectrum": spectrum_summary(self.singular_values),
        }


def on_manifold_likelihood(
    x: Tensor,
    encode: Callable[[Tensor], Tensor],
    decode: Callable[[Tensor], Tensor],
    latent_log_prob: Callable[[Tensor], Tensor] | None = None,
    *,
    batch_size: int = 256,
    chunk_size: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> OnManifoldLikelihood:
    r"""Exact :math:`\log p(\hat x)`, :math:`\|\hat x - x\|^2`, log-volume and Jacobian spectrum of every point of ``x``.

    Arguments:
        x: Points ``(N, *data_shape)``.
        encode, decode: The encoder and decoder (put modules in eval mode first).
        latent_log_prob: :math:`\log p_Z`, ``(B, d) -> (B,)``; default: the standard normal.
        batch_size: Points per Jacobian batch.
        chunk_size: Latent directions per forward pass (default bounds the expanded batch to ~2048 rows).
        device: Where the points go before encoding (default: where they are).
        progress: Show a progress bar.

    Example (a linear decoder :math:`g(z) = Wz`, :math:`f = W^+`):
        >>> w = torch.tensor([[2.0], [0.0]], dtype=torch.float64)
        >>> encode, decode = (lambda x: x @ torch.linalg.pinv(w).T), (lambda z: z @ w.T)
        >>> r = on_manifold_likelihood(torch.tensor([[1.0, 3.0]], dtype=torch.float64), encode, decode)
        >>> expected = -0.5 * 0.25 - 0.5 * math.log(2 * math.pi) - math.log(2.0)
        >>> round(float(r.log_prob), 6) == round(expected, 6), float(r.reconstruction)
        (True, 9.0)
    """
    if latent_log_prob is None:
        def latent_log_prob(z: Tensor) -> Tensor:
            return -0.5 * z.pow(2).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi)

    starts = range(0, x.shape[0], batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="exact NLL", unit="batch", leave=False, dynamic_ncols=True)
    parts: list[tuple[Tensor, ...]] = []
    # Exact numbers compared across devices (and with the CPU's in tests): no TF32 on a GPU (injflow.devices).
    with torch.no_grad(), full_float32():
        for start in starts:
            xb = x[start : start + batch_size]
            if device is not None:
                xb = xb.to(device)
            z = encode(xb)
            x_hat = decode(z)
            rec = (x_hat - xb).flatten(1).double().pow(2).sum(1)
            sv = jacobian_singular_values(decoder_jacobian(decode, z, chunk_size=chunk_size))
            if z.shape[1] == xb[0].numel():  # d = D, a free-form flow: the density of x itself, encoder side
                with torch.enable_grad():
                    log_vol = -log_abs_det_jacobian(encode, xb, chunk_size=chunk_size).detach().double()
            else:
                log_vol = sv.log().sum(-1)
            lp = latent_log_prob(z).double() - log_vol
            parts.append((lp.cpu(), rec.cpu(), log_vol.cpu(), sv.cpu()))
    lp, rec, log_vol, sv = (torch.cat(p) for p in zip(*parts))
    return OnManifoldLikelihood(lp, rec, log_vol, sv)
