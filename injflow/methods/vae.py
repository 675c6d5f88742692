r"""Variational autoencoders with a Gaussian decoder: VAE and β-VAE as Kumar et al. (2020, §4) run them.

The decoder is :math:`p(x|z) = \mathcal N(g(z), \sigma^2 I_D)`, the posterior
:math:`q(z|x) = \mathcal N(\mu(x), \operatorname{diag} e^{s(x)})` with :math:`\mu = f` (the model's encoder, so
``encode`` still returns (B, d)) and a log-variance network :math:`s`, and the prior is the model's latent
(closed-form KL for (isotropic) normals, a one-sample Monte-Carlo KL otherwise). With one reparametrised sample
:math:`\tilde z = \mu + e^{s/2}\odot\epsilon`:

.. math::
    \text{VAE:}\quad \mathcal L = \frac{\|x - g(\tilde z)\|^2}{2\sigma^2} + \frac D2\log(2\pi\sigma^2)
        + \mathrm{KL}(q(z|x)\,\|\,p_Z) \qquad(\text{the negative ELBO})

    \beta\text{-VAE:}\quad \mathcal L = \tfrac12\|x - g(\tilde z)\|^2 + \beta\,\mathrm{KL}(q(z|x)\,\|\,p_Z)
        = \sigma^2\Big(\mathcal L_{\text{VAE}} - \frac D2\log(2\pi\sigma^2)\Big) \text{ with } \beta = \sigma^2.

Kumar et al.: "For VAE, σ² is taken to be 1, while for β-VAE, varying σ directly controls β, with β = σ²".

**Where the log-variance lives.** A method never owns networks, and the encoder must keep its (B, d) contract, so
:meth:`VAE.prepare` (for the engine to call before training and whenever it rebuilds the model from its config)
wraps the model's encoder in a :class:`~injflow.nets.variance.GaussianEncoder`: one trunk, two linear heads, as the
Pythae benchmark's VAE encoders — the encoder's own latent projection gives :math:`\mu`, a second ``nn.Linear``
parallel to it gives :math:`s` (on the encoder's output for encoders without such a layer). ``forward`` stays the
unchanged mean network; :meth:`VAE.finalize` optionally unwraps it, leaving a plain encoder/decoder pair with
:math:`f = \mu`. An encoder that already has ``posterior(x) -> (mean, log_variance)`` is used as it is.

**What ``reconstruction`` is here.** The decoder runs once per step, at the sampled code :math:`\tilde z`; the term
``reconstruction`` is :math:`\|g(\tilde z) - x\|^2`, the reconstruction of the stochastic encoder
:math:`f(x) = \tilde z \sim q(z|x)`, the quantity the loss uses. It is not :math:`\|g(\mu) - x\|^2` (which would need a
second decoder pass only for logging); that deterministic error of the exported mean encoder is
``reconstruction_error`` of ``injflow evaluate``. The two agree as the posterior variance goes to zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..distributions import IsotropicNormal
from ..errors import OptionError
from ..nets.variance import GaussianEncoder
from .base import Clock, Method, ModelLike, register_method

__all__ = ["GaussianEncoder", "VAE", "BetaVAE", "gaussian_kl"]


def gaussian_kl(mean: Tensor, log_variance: Tensor, prior_sigma: float = 1.0) -> Tensor:
    r""":math:`\mathrm{KL}(\mathcal N(\mu, \operatorname{diag} e^{s}) \,\|\, \mathcal N(0, \sigma_p^2 I))` per sample, (B,).

    .. math:: \tfrac12\sum_i \big(e^{s_i}/\sigma_p^2 + \mu_i^2/\sigma_p^2 - 1 - s_i + \log\sigma_p^2\big)

    Example:
        >>> float(gaussian_kl(torch.zeros(1, 3), torch.zeros(1, 3)))
        0.0
    """
    s2 = prior_sigma**2
    return 0.5 * (log_variance.exp() / s2 + mean.pow(2) / s2 - 1.0 - log_variance + math.log(s2)).sum(1)


@dataclass
class _GaussianVAE(Method):
    def prepare(self, model: ModelLike) -> None:
        """Wraps ``model.encoder`` in a :class:`GaussianEncoder` unless it already has ``posterior`` (idempotent)."""
        encoder = getattr(model, "encoder", None)
        if not isinstance(encoder, nn.Module):
            raise ValueError(f"{self.name}: the model exposes no `encoder` nn.Module to attach a posterior variance to")
        if hasattr(encoder, "posterior"):
            return
        if getattr(model, "conditional", False):
            raise ValueError(f"{self.name}: a class-conditional model has no posterior variance head; set "
                             "model.conditional=false to train a VAE")
        model.encoder = GaussianEncoder.around(encoder, model.latent.dim)

    def finalize(self, model: ModelLike) -> None:
        """Unwraps an encoder that :meth:`prepare` wrapped: the exported encoder is the mean network."""
        encoder = getattr(model, "encoder", None)
        if isinstance(encoder, GaussianEncoder) and encoder.attached:
            model.encoder = encoder.mean_net

    def terms(self, batch: Tensor, model: ModelLike) -> dict[str, Tensor]:
        """The per-sample pieces from one trunk pass and one decoder pass: reconstruction at the sampled code, ‖μ‖²,
        KL and posterior variance."""
        posterior = getattr(getattr(model, "encoder", None), "posterior", None)
        if posterior is None:
            raise ValueError(f"{self.name}: the model's encoder has no posterior variance; call method.prepare(model) once "
                             "before training (the engine does this), or give an encoder with posterior(x) -> (mean, "
                             "log_variance)")
        mean, log_var = posterior(batch)
        if log_var.shape != mean.shape:
            raise ValueError(f"{self.name}: posterior log-variance shape {tuple(log_var.shape)} != mean shape "
                             f"{tuple(mean.shape)}")
        eps = torch.randn_like(mean)
        z = mean + (0.5 * log_var).exp() * eps
        # The loss's own decoder output: no second pass at the mean only to log it (module docstring).
        reconstruction = (model.decode(z) - batch).flatten(1).pow(2).sum(1)
        latent = model.latent
        if isinstance(latent, IsotropicNormal):
            kl = gaussian_kl(mean, log_var, latent.sigma)
        else:  # one-sample Monte-Carlo KL, log q(z|x) - log p(z)
            log_q = -0.5 * (eps.pow(2) + log_var + math.log(2 * math.pi)).sum(1)
            kl = log_q - latent.log_prob(z)
        return {"reconstruction": reconstruction, "latent_sq_norm": mean.pow(2).sum(1), "kl": kl,
                "posterior_variance": log_var.exp().mean(1)}


@register_method("vae")
@dataclass
class VAE(_GaussianVAE):
    r"""VAE (Kingma & Welling 2014) with Gaussian decoder :math:`\mathcal N(g(z), \sigma^2 I)`; ``loss`` is the negative ELBO.

    .. math:: \mathcal L = \frac{\|x - g(\tilde z)\|^2}{2\sigma^2} + \frac D2\log(2\pi\sigma^2) + \mathrm{KL}(q(z|x)\|p_Z)

    Arguments:
        sigma: The decoder's standard deviation σ > 0 (Kumar et al.: σ² = 1 for the VAE).

    Example:
        >>> method = VAE(sigma=1.0)
        >>> method.prepare(model)        # doctest: +SKIP
        >>> method.loss(x, 0, model)     # doctest: +SKIP
    """

    sigma: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        sigma = self.sigma
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0 or not math.isfinite(sigma):
            raise OptionError(f"the decoder's standard deviation must be a finite number > 0, got {self.sigma!r}", key="sigma")

    def loss(self, batch: Tensor, clock: Clock | int, model: ModelLike) -> dict[str, Tensor]:
        t = self.terms(batch, model)
        s2 = float(self.sigma) ** 2
        data_dim = batch[0].numel()
        expected_nll = t["reconstruction"] / (2 * s2) + 0.5 * data_dim * math.log(2 * math.pi * s2)
        return {"loss": expected_nll + t["kl"], **t, "expected_nll": expected_nll}


@register_method("beta_vae")
@dataclass
class BetaVAE(_GaussianVAE):
    r"""β-VAE (Higgins et al. 2017) as Kumar et al. run it: β = σ² of the Gaussian decoder.

    .. math:: \mathcal L = \tfrac12\|x - g(\tilde z)\|^2 + \beta\,\mathrm{KL}(q(z|x)\|p_Z)

    which is :math:`\sigma^2` times the VAE's negative ELBO with decoder variance :math:`\sigma^2 = \beta`, minus
    a constant. Kumar et al. search σ ∈ {0.001, 0.01, 0.05, 0.1, 0.5}, i.e. β ∈ {1e-6, 1e-4, 0.0025, 0.01, 0.25}.

    Arguments:
        beta: β ≥ 0, a number or schedule (e.g. a KL warm-up ``{schedule: linear, start: 0, end: 0.01, steps: 5000}``).

    Example:
        >>> BetaVAE(beta=0.05**2).weight("beta", 0)
        0.0025000000000000005
    """

    beta: Any = 1.0
    scheduled = ("beta",)

    def __post_init__(self) -> None:
        super().__post_init__()
        lo = self.schedules["beta"].bounds()[0]
        if lo < 0:
            raise OptionError(f"the KL weight must be >= 0, got a minimum of {lo}", key="beta")

    def loss(self, batch: Tensor, clock: Clock | int, model: ModelLike) -> dict[str, Tensor]:
        t = self.terms(batch, model)
        return {"loss": 0.5 * t["reconstruction"] + self.weight("beta", clock) * t["kl"], **t}
