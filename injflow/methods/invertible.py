r"""Injective flows built from invertible blocks: rectangular flows, DNF and Trumpets, as their papers train them.

All three need an architecture from :mod:`injflow.nets.invertible` (``model.architecture: injective_coupling``
or ``trumpet``): they use its pieces, not just ``encode``/``decode``. Notation (FIF eq. 1): the decoder is
:math:`g = g_\mathrm{inj}\circ h` with :math:`h: \mathbb R^d\to\mathbb R^d` a flow, :math:`u = h(z)`, and for the
padded architecture :math:`g_\mathrm{inj} = w\circ\mathrm{pad}`; the encoder :math:`f` is its exact left inverse.

* :class:`RectangularNF` (``rnf``) — Caterini et al. (2021), "RNFs-ML": maximum likelihood on the manifold with
  the volume term of :math:`g_\mathrm{inj}` exact (full Jacobian) or by Hutchinson + conjugate gradients
  (FIF eq. 6), plus :math:`\beta\|x - g_\mathrm{inj}(u)\|^2`.
* :class:`DNF` (``dnf``) — Horvat & Pfister (2021): a D-dimensional flow on data inflated with Gaussian noise of
  variance :math:`\sigma^2`, whose last D − d latents model the noise, plus a denoising reconstruction term.
* :class:`Trumpet` (``trumpet``) — Kothari et al. (2021): two stages in one run, first the injective part on
  reconstruction, then the d-dimensional flow by maximum likelihood on the frozen manifold's codes.

FIF with these architectures (FIF table 6, "coupling flow" rows) is the plain ``fif`` method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from ..errors import OptionError
from ..estimators import decoder_log_volume, rectangular_flow_surrogate
from ..nets.invertible import InjectiveFlowNet, PaddedFlow, injective_flow_of
from .base import Clock, Method, ModelLike, register_method

__all__ = ["RectangularNF", "DNF", "Trumpet"]


def _sq(x: Tensor) -> Tensor:
    return x.flatten(1).pow(2).sum(1)


def _normal_log_prob(n: Tensor, std: float) -> Tensor:
    r""":math:`\log\mathcal N(n; 0, s^2 I)` per row."""
    k = n.shape[1]
    return -0.5 * _sq(n) / std**2 - k * math.log(std) - 0.5 * k * math.log(2 * math.pi)


@register_method("rnf")
@dataclass
class RectangularNF(Method):
    r"""Rectangular flow as published (Caterini et al. 2021, "RNFs-ML"), on :math:`g = g_\mathrm{inj}\circ h`.

    With :math:`u = g_\mathrm{inj}^+(x)` (for the padded net: the first d coordinates of :math:`w^{-1}(x)`) and
    :math:`z = h^{-1}(u)`:

    .. math::
        \mathcal L(x) = \lambda_t\Big[-\log p_Z(z) - \log\Big|\det\frac{\partial z}{\partial u}\Big|
            + \tfrac12\log\det\big(J^\top J\big)\Big] + \beta\,\|x - g_\mathrm{inj}(u)\|^2,
        \qquad J = g_\mathrm{inj}'(u),

    the negative log-density of FIF eq. 2 split by the chain rule (the d-dimensional flow's log-determinant is
    exact) plus Caterini et al.'s reconstruction penalty. ``log_det="exact"`` takes the volume term from the full
    Jacobian (their "RNFs-ML (exact)", d forward-mode passes); ``"cg"`` uses the Hutchinson / conjugate-gradient
    surrogate of FIF eq. 6 (their "RNFs-ML (K = 1)"), whose gradient, like theirs, also flows through
    :math:`u = f(x)` (``through_latent``). :math:`\lambda_t` is their likelihood warm-up (0 until one epoch,
    linear to 1 at a later one).

    Arguments:
        beta: Reconstruction weight β (number or schedule; Caterini et al.: 50).
        likelihood_weight: :math:`\lambda_t` (number or schedule, e.g. ``{schedule: linear, start: 0, end: 1,
            begin: 8100, steps: 16200}``).
        log_det: ``exact`` or ``cg``.
        n_hutchinson, noise: Hutchinson samples K and their distribution (``cg``; Caterini et al.: K = 1, normal).
        cg_tol, cg_max_iter: Conjugate-gradient tolerance and cap (``None`` = 2d).
        chunk_size: Jacobian columns per pass (``exact``).

    Example:
        >>> from injflow.nets import build_autoencoder
        >>> from injflow.distributions import StandardNormal
        >>> class Model:  # what the engine passes: encoder, decoder, latent
        ...     encoder, decoder = build_autoencoder("injective_coupling", data_shape=(4,), latent_dim=2)
        ...     latent = StandardNormal(2)
        >>> sorted(RectangularNF(log_det="cg").loss(torch.randn(8, 4), 0, Model()))[:4]
        ['cg_iterations', 'inner_log_det', 'latent_sq_norm', 'log_volume']
    """

    beta: Any = 50.0
    likelihood_weight: Any = 1.0
    log_det: Literal["exact", "cg"] = "exact"
    n_hutchinson: int = 1
    noise: Literal["orthogonal", "gaussian", "rademacher", "sphere"] = "gaussian"
    cg_tol: float = 1e-6
    cg_max_iter: int | None = None
    chunk_size: int | None = None

    scheduled = ("beta", "likelihood_weight")

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in self.scheduled:
            if self.schedules[key].bounds()[0] < 0:
                raise OptionError("must be >= 0", key=key)
        if self.n_hutchinson < 1:
            raise OptionError(f"must be >= 1, got {self.n_hutchinson}", key="n_hutchinson")
        if not self.cg_tol > 0:
            raise OptionError(f"must be > 0, got {self.cg_tol}", key="cg_tol")
        if self.cg_max_iter is not None and self.cg_max_iter < 1:
            raise OptionError(f"must be >= 1 (or null for 2d), got {self.cg_max_iter}", key="cg_max_iter")

    def check(self, *, latent_dim: int, data_dim: int) -> None:
        if self.log_det == "cg" and self.n_hutchinson > latent_dim:
            raise OptionError(f"K={self.n_hutchinson} exceeds the latent dimension {latent_dim}", key="n_hutchinson")

    def prepare(self, model: ModelLike) -> None:
        injective_flow_of(model, self.name)

    def loss(self, batch: Tensor, clock: Clock | int, model: ModelLike) -> dict[str, Tensor]:
        net: InjectiveFlowNet = injective_flow_of(model, self.name)
        terms: dict[str, Tensor] = {}
        if self.log_det == "exact":
            u = net.project(batch)
            x_hat = net.lift(u)
            log_volume = decoder_log_volume(net.lift, u, chunk_size=self.chunk_size)
        else:
            u, x_hat, log_volume, info = rectangular_flow_surrogate(
                batch, net.project, net.lift, n_hutchinson=self.n_hutchinson, noise=self.noise, grad_to="decoder",
                cg_tol=self.cg_tol, cg_max_iter=self.cg_max_iter, through_latent=True,
            )
            terms["cg_iterations"] = u.new_tensor(float(info["cg_iterations"]))
        z, inner_log_det = net.inner.forward_and_log_det(u)
        nll = -model.latent.log_prob(z) - inner_log_det + log_volume
        reconstruction = _sq(x_hat - batch)
        terms.update({
            "loss": self.weight("likelihood_weight", clock) * nll + self.weight("beta", clock) * reconstruction,
            "nll": nll,  # with the CG surrogate: its value is not the NLL, its gradient is
            "reconstruction": reconstruction,
            "log_volume": log_volume,
            "inner_log_det": inner_log_det,
            "latent_sq_norm": z.detach().pow(2).sum(1),
        })
        return terms


@register_method("dnf")
@dataclass
class DNF(Method):
    r"""Denoising normalizing flow (Horvat & Pfister 2021) on the padded architecture :math:`g = w\circ\mathrm{pad}\circ h`.

    Training inflates each point with Gaussian noise, :math:`\tilde x = x + \sigma\epsilon`,
    :math:`\epsilon\sim\mathcal N(0, I_D)` (their default "gaussian" noise; the theory adds it in the normal
    space, which full-dimensional noise approximates when D ≫ d), maps it with the D-dimensional flow
    :math:`(u, v) = w^{-1}(\tilde x)`, :math:`u\in\mathbb R^d`, and minimises

    .. math::
        \mathcal L = -\log p_Z(h^{-1}(u)) - \log\Big|\det\frac{\partial h^{-1}}{\partial u}\Big|
            - \log\mathcal N(v; 0, s^2 I_{D-d}) - \log|\det (w^{-1})'(\tilde x)|
            + \frac{\mu}{D}\,\|x - w(\mathrm{pad}(u))\|^2 + \frac{\rho}{D-d}\|v\|^2,

    the NLL of the inflated density plus the denoising reconstruction of the *clean* point from the noisy one's
    manifold coordinates (their ``msefactor`` μ times the per-element mean squared error) and their optional
    ``uvl2reg`` ρ on the noise latents. Their code matches the noise latents' scale to the noise,
    :math:`s = \sigma` (``noise_latent_std=None``). Noise is added only while the nets are in training mode
    (validation and evaluation see clean data, as in their trainer). Set ``train.input_noise: 0``: the method adds
    its own noise and needs the clean point as the target.

    Arguments:
        noise_variance: σ² (their ``sig2``; CelebA 0.01).
        reconstruction_weight: μ (number or schedule; their ``msefactor``, CelebA 1000).
        noise_latent_l2: ρ (their ``uvl2reg``; CelebA 0.01, default off).
        noise_latent_std: s (``None``: σ).
    """

    noise_variance: float = 0.01
    reconstruction_weight: Any = 1000.0
    noise_latent_l2: float = 0.0
    noise_latent_std: float | None = None

    scheduled = ("reconstruction_weight",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.noise_variance > 0:
            raise OptionError(f"the inflation noise σ² must be > 0, got {self.noise_variance}", key="noise_variance")
        if self.schedules["reconstruction_weight"].bounds()[0] < 0:
            raise OptionError("must be >= 0", key="reconstruction_weight")
        if self.noise_latent_l2 < 0:
            raise OptionError(f"must be >= 0, got {self.noise_latent_l2}", key="noise_latent_l2")
        if self.noise_latent_std is not None and not self.noise_latent_std > 0:
            raise OptionError(f"must be > 0 (or null for sqrt(noise_variance)), got {self.noise_latent_std}",
                              key="noise_latent_std")

    def prepare(self, model: ModelLike) -> None:
        self._net(model)

    def _net(self, model: ModelLike) -> PaddedFlow:
        net = injective_flow_of(model, self.name)
        if not isinstance(net, PaddedFlow):
            raise ValueError("method 'dnf' needs the padded architecture (model.architecture: injective_coupling): "
                             f"its D-dimensional flow models the noise; got {type(net).__name__}")
        return net

    def loss(self, batch: Tensor, clock: Clock | int, model: ModelLike) -> dict[str, Tensor]:
        net = self._net(model)
        sigma = math.sqrt(self.noise_variance)
        noisy = batch + sigma * torch.randn_like(batch) if net.training else batch
        h, outer_log_det = net.normalize(noisy)
        d = net.latent_dim
        u, v = h[:, :d], h[:, d:]
        z, inner_log_det = net.inner.forward_and_log_det(u)
        std = self.noise_latent_std if self.noise_latent_std is not None else sigma
        log_p = model.latent.log_prob(z) + inner_log_det + _normal_log_prob(v, std) + outer_log_det
        x_hat = net.lift(u)
        reconstruction = _sq(x_hat - batch)
        noise_sq = _sq(v)
        loss = (
            -log_p
            + self.weight("reconstruction_weight", clock) * reconstruction / batch[0].numel()
            + self.noise_latent_l2 * noise_sq / v.shape[1]
        )
        return {
            "loss": loss,
            "nll": -log_p,  # of the inflated (noisy) point under the D-dimensional density
            "reconstruction": reconstruction,
            "noise_latent_sq_norm": noise_sq.detach(),
            "latent_sq_norm": z.detach().pow(2).sum(1),
        }


@register_method("trumpet")
@dataclass
class Trumpet(Method):
    r"""Trumpet training (Kothari et al. 2021): two sequential stages inside one run.

    Stage 1 (steps before the switch) trains the injective part on reconstruction,

    .. math:: \mathcal L_1 = \tfrac1D\|x - g_\mathrm{inj}(u)\|^2 + \tfrac{\gamma}{d}\|u - g_\mathrm{inj}^+(g_\mathrm{inj}(u))\|^2,
              \qquad u = g_\mathrm{inj}^+(x),

    (per-element mean squared errors as in their code; the second term is their latent consistency term, "added for
    stability"); the d-dimensional flow :math:`h` is not in this graph and gets no gradient. Stage 2 trains only
    :math:`h` by maximum likelihood on the codes of the now fixed manifold,
    :math:`\mathcal L_2 = -\log p_Z(h^{-1}(u)) - \log|\det\partial h^{-1}/\partial u|` with ``u`` detached, so the
    injective part gets no gradient (and Adam leaves a parameter without a gradient untouched). Both stages report
    all terms; only the active stage's objective is differentiated.

    The switch is at ``round(manifold_fraction * total_steps)`` (the clock's run length), or at
    ``manifold_steps`` when that is set. FIF App. E.3 gave Trumpet 2, 5 or 10 manifold epochs of a 5-hour budget
    (10 was best); the authors' default is 2 of 400 epochs.

    Arguments:
        manifold_fraction: Fraction of the run spent in stage 1 (default 0.5: chosen, not from either paper).
        manifold_steps: The number of stage-1 optimiser steps; when set it replaces ``manifold_fraction``.
        latent_consistency_weight: γ (their code: 1).
    """

    unused_parameters: ClassVar[bool] = True  # each stage leaves the other stage's parameters without a gradient

    manifold_fraction: float = 0.5
    manifold_steps: int | None = None
    latent_consistency_weight: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.manifold_fraction < 1:
            raise OptionError(f"must be in (0, 1), got {self.manifold_fraction}", key="manifold_fraction")
        if self.manifold_steps is not None and self.manifold_steps < 1:
            raise OptionError(f"must be >= 1, got {self.manifold_steps}", key="manifold_steps")
        if self.latent_consistency_weight < 0:
            raise OptionError(f"must be >= 0, got {self.latent_consistency_weight}", key="latent_consistency_weight")

    def prepare(self, model: ModelLike) -> None:
        injective_flow_of(model, self.name)

    def switch_step(self, total_steps: int | None) -> int:
        """The first optimiser step of stage 2 in a run of ``total_steps`` steps."""
        if self.manifold_steps is not None:
            return self.manifold_steps
        if total_steps is None:
            raise OptionError("needs a finite run length (train.max_steps or train.max_epochs); or "
                             "give method.manifold_steps", key="manifold_fraction")
        return max(1, round(self.manifold_fraction * total_steps))

    def stage(self, clock: Clock | int) -> int:
        """1 (manifold) or 2 (density on the manifold) at ``clock``.

        Under a wall-clock budget (``train.max_time``: the clock carries ``progress``) and without ``manifold_steps``,
        the switch is at the ``manifold_fraction`` of the budget (FIF App. E.3 gives Trumpet part of a 5 h budget).
        """
        clock = Clock.of(clock)
        if self.manifold_steps is None and clock.progress is not None:
            return 1 if clock.progress < self.manifold_fraction else 2
        return 1 if clock.step < self.switch_step(clock.total_steps) else 2

    def loss(self, batch: Tensor, clock: Clock | int, model: ModelLike) -> dict[str, Tensor]:
        net = injective_flow_of(model, self.name)
        stage = self.stage(clock)
        d, big_d = net.latent_dim, batch[0].numel()
        with torch.set_grad_enabled(torch.is_grad_enabled() and stage == 1):
            u = net.project(batch)
            x_hat = net.lift(u)
            reconstruction = _sq(x_hat - batch)
            consistency = _sq(net.project(x_hat) - u)
            manifold_loss = reconstruction / big_d + self.latent_consistency_weight * consistency / d
        with torch.set_grad_enabled(torch.is_grad_enabled() and stage == 2):
            z, inner_log_det = net.inner.forward_and_log_det(u.detach())
            nll = -model.latent.log_prob(z) - inner_log_det
        loss = manifold_loss if stage == 1 else nll
        return {
            "loss": loss,
            "nll": nll.detach() if stage == 1 else nll,
            "reconstruction": reconstruction.detach() if stage == 2 else reconstruction,
            "latent_consistency": consistency.detach(),
            "stage": batch.new_full((), float(stage)),
            "latent_sq_norm": z.detach().pow(2).sum(1),
        }
