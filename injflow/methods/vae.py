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

**Where the log-variance network lives.** A method never owns networks, and the encoder must keep its
(B, d) contract, so :meth:`VAE.prepare` (for the engine to call before training and whenever it rebuilds the model
from its config) wraps the model's encoder in a :class:`GaussianEncoder` whose ``forward`` is the unchanged mean
network and whose ``posterior(x)`` also returns :math:`s(x)`, computed by a freshly initialised copy of the encoder
followed by a zero-initialised d×d linear layer (so training starts from :math:`q = \mathcal N(\mu, I)`).
:meth:`VAE.finalize` optionally unwraps it, leaving a plain encoder/decoder pair with :math:`f = \mu`. An encoder
that already has ``posterior(x) -> (mean, log_variance)`` is used as it is.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..distributions import IsotropicNormal
from ..errors import OptionError
from .base import Clock, Method, ModelLike, register_method
from .regularised import core_terms

__all__ = ["GaussianEncoder", "VAE", "BetaVAE", "gaussian_kl"]


class GaussianEncoder(nn.Module):
    r"""An encoder with a diagonal Gaussian posterior: ``forward(x)`` = mean (B, d), ``posterior(x)`` = (mean, log-variance).

    Arguments:
        mean_net: The mean network (the model's original encoder).
        log_variance_net: Maps ``(B, *data_shape)`` to the log-variance (B, d).
        attached: True when :meth:`VAE.prepare` built it (then :meth:`VAE.finalize` unwraps it).

    Example:
        >>> enc = GaussianEncoder(nn.Linear(3, 2), nn.Linear(3, 2))
        >>> [t.shape for t in enc.posterior(torch.randn(4, 3))]
        [torch.Size([4, 2]), torch.Size([4, 2])]
    """

    def __init__(self, mean_net: nn.Module, log_variance_net: nn.Module, *, attached: bool = False) -> None:
        super().__init__()
        self.mean_net = mean_net
        self.log_variance_net = log_variance_net
        self.attached = attached

    @classmethod
    def around(cls, encoder: nn.Module, latent_dim: int) -> GaussianEncoder:
        """Wraps ``encoder`` with a re-initialised copy of it plus a zero-initialised d×d head as log-variance net."""
        body = copy.deepcopy(encoder)
        for m in body.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        head = nn.Linear(latent_dim, latent_dim)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        ref = next(iter(encoder.parameters()), None)
        if ref is not None:
            head = head.to(device=ref.device, dtype=ref.dtype)
        return cls(encoder, nn.Sequential(body, head), attached=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.mean_net(x)

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The posterior mean and log-variance, each (B, d)."""
        return self.mean_net(x), self.log_variance_net(x)


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
        model.encoder = GaussianEncoder.around(encoder, model.latent.dim)

    def finalize(self, model: ModelLike) -> None:
        """Unwraps an encoder that :meth:`prepare` wrapped: the exported encoder is the mean network."""
        encoder = getattr(model, "encoder", None)
        if isinstance(encoder, GaussianEncoder) and encoder.attached:
            model.encoder = encoder.mean_net

    def terms(self, batch: Tensor, model: ModelLike) -> dict[str, Tensor]:
        """The per-sample pieces: core terms at the mean, the sampled reconstruction, KL and posterior variance."""
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
        sampled = (model.decode(z) - batch).flatten(1).pow(2).sum(1)
        latent = model.latent
        if isinstance(latent, IsotropicNormal):
            kl = gaussian_kl(mean, log_var, latent.sigma)
        else:  # one-sample Monte-Carlo KL, log q(z|x) - log p(z)
            log_q = -0.5 * (eps.pow(2) + log_var + math.log(2 * math.pi)).sum(1)
            kl = log_q - latent.log_prob(z)
        with torch.no_grad():  # the deterministic reconstruction every method reports (one extra decoder pass)
            core = core_terms(batch, mean, model.decode(mean))
        core["latent_sq_norm"] = mean.pow(2).sum(1)  # keeps its graph, like the other methods' latent term
        return {**core, "sampled_reconstruction": sampled, "kl": kl, "posterior_variance": log_var.exp().mean(1)}


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
        expected_nll = t["sampled_reconstruction"] / (2 * s2) + 0.5 * data_dim * math.log(2 * math.pi * s2)
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
        return {"loss": 0.5 * t["sampled_reconstruction"] + self.weight("beta", clock) * t["kl"], **t}
