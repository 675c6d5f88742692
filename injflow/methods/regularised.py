r"""Regularised autoencoders: the deterministic baselines of Kumar et al. (2020, §4, table 1) and Ghosh et al. (2020).

Every method here minimises the squared reconstruction error :math:`\|g(f(x)) - x\|^2` (summed over data
dimensions, as in :class:`~injflow.methods.AE`) plus one regulariser:

* ``ae_l2`` (:class:`AEL2`): :math:`\tfrac{w}{2}\|\theta_g\|^2`, weight decay on the decoder parameters (Kumar (ii));
* ``ae_sn`` (:class:`AESN`): nothing in the loss; spectral normalisation of every decoder layer (Kumar (iii));
* ``cae`` (:class:`CAE`): :math:`\lambda\|f'(x)\|_F^2`, the *encoder* Jacobian, by Hutchinson (Kumar (iv));
* ``rae_l2`` (:class:`RAEL2`): :math:`\beta\tfrac12\|z\|^2 + \tfrac{w}{2}\|\theta_g\|^2` (Ghosh et al., RAE-L2);
* ``rae_gp`` (:class:`RAEGP`): :math:`\beta\tfrac12\|z\|^2 + \lambda\|g'(z)\|_F^2`, the *decoder* Jacobian (RAE-GP).

Every method reports the same core per-sample quantities (:func:`core_terms`): ``reconstruction``
(:math:`\|g(f(x)) - x\|^2`) and ``latent_sq_norm`` (:math:`\|f(x)\|^2`), next to ``loss`` and its own terms.
Weights are schedulable (a number or ``{schedule: ...}``, see :mod:`injflow.methods.schedules`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from ..errors import OptionError
from ..estimators import NOISE_KINDS, jvp, sample_noise, vjp
from .base import Clock, Method, ModelLike, register_method

__all__ = [
    "AEL2",
    "AESN",
    "CAE",
    "RAEL2",
    "RAEGP",
    "core_terms",
    "decoder_weight_penalty",
    "jacobian_frobenius_sq",
    "spectral_normalised_layers",
]

_SN_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)


# --------------------------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------------------------


def core_terms(x: Tensor, z: Tensor, x_hat: Tensor) -> dict[str, Tensor]:
    r"""The per-sample quantities every baseline reports, so any two methods share table columns.

    Returns:
        ``reconstruction`` :math:`\|\hat x - x\|^2` (summed over data dimensions) and ``latent_sq_norm``
        :math:`\|z\|^2` (its mean is d under a standard-normal aggregate posterior), each of shape (B,).

    Example:
        >>> import torch
        >>> t = core_terms(torch.ones(2, 3), torch.ones(2, 1), torch.zeros(2, 3))
        >>> t["reconstruction"].tolist(), t["latent_sq_norm"].tolist()
        ([3.0, 3.0], [1.0, 1.0])
    """
    return {
        "reconstruction": (x_hat - x).flatten(1).pow(2).sum(1),
        "latent_sq_norm": z.flatten(1).pow(2).sum(1),
    }


def _decoder_module(model: ModelLike, key: str) -> nn.Module:
    decoder = getattr(model, "decoder", None)
    if not isinstance(decoder, nn.Module):
        raise ValueError(f"{key}: the model exposes no `decoder` nn.Module whose parameters could be used")
    return decoder


def decoder_weight_penalty(model: ModelLike) -> Tensor:
    r""":math:`\tfrac12\|\theta_g\|^2`, half the squared ℓ2 norm of all decoder parameters (a scalar).

    Its gradient is :math:`\theta_g`, so ``w * decoder_weight_penalty(model)`` in the loss is exactly
    PyTorch's (coupled) ``weight_decay=w`` applied to the decoder only.

    Example:
        >>> import torch
        >>> m = nn.Module(); m.decoder = nn.Linear(1, 2, bias=False)
        >>> with torch.no_grad(): _ = m.decoder.weight.fill_(2.0)
        >>> float(decoder_weight_penalty(m).detach())
        4.0
    """
    params = list(_decoder_module(model, "weight_decay").parameters())
    if not params:
        raise ValueError("weight_decay: the decoder has no parameters")
    return 0.5 * sum(p.pow(2).sum() for p in params)


def jacobian_frobenius_sq(
    fn: Any,
    inputs: Tensor,
    *,
    side: Literal["input", "output"],
    n_hutchinson: int = 1,
    noise: str = "gaussian",
) -> tuple[Tensor, Tensor]:
    r"""Hutchinson estimate of :math:`\|J\|_F^2` for :math:`J = \partial\,\mathrm{fn}/\partial\,\mathrm{inputs}`, per sample.

    ``side="input"``: :math:`\frac1K\sum_k\|J\epsilon_k\|^2` with :math:`\epsilon_k` in the input space
    (forward-mode JVPs); ``side="output"``: :math:`\frac1K\sum_k\|J^\top\epsilon_k\|^2` with :math:`\epsilon_k`
    in the output space (reverse-mode VJPs). Both are unbiased for :math:`\|J\|_F^2` because
    :math:`E[\epsilon\epsilon^\top] = I`; ``noise="orthogonal"`` with K equal to the noise dimension is exact.
    The estimate is differentiable: gradients reach the parameters of ``fn`` and, through ``inputs``,
    whatever produced them.

    Arguments:
        fn: Maps ``(B, *in_shape)`` to ``(B, *out_shape)``.
        inputs: The point, ``(B, *in_shape)``.
        side: Where the Hutchinson noise lives (see above).
        n_hutchinson: K.
        noise: One of :data:`injflow.estimators.NOISE_KINDS`.

    Returns:
        ``(fn(inputs), estimate)``; the first keeps its graph, the second has shape (B,).

    Example:
        >>> import torch
        >>> lin = nn.Linear(3, 2, bias=False)
        >>> _, est = jacobian_frobenius_sq(lin, torch.randn(4, 3), side="output", n_hutchinson=2, noise="orthogonal")
        >>> torch.allclose(est, lin.weight.pow(2).sum().expand(4), atol=1e-5)
        True
    """
    batch = inputs.shape[0]
    if side == "input":
        eps = sample_noise(batch, inputs.shape[1:], n_hutchinson, noise, dtype=inputs.dtype, device=inputs.device)
        out, total = None, 0.0
        for e in eps:
            primal, tangent = jvp(fn, inputs, e, name="the penalised network")
            out = primal if out is None else out
            total = total + tangent.flatten(1).pow(2).sum(1)
        return out, total / n_hutchinson
    if side != "output":
        raise ValueError(f"side must be 'input' or 'output', got {side!r}")
    if not inputs.requires_grad:
        inputs = inputs.detach().requires_grad_(True)
    out = fn(inputs)
    eps = sample_noise(batch, out.shape[1:], n_hutchinson, noise, dtype=out.dtype, device=out.device)
    total = 0.0
    for e in eps:
        total = total + vjp(out, inputs, e, create_graph=True, name="the penalised network").flatten(1).pow(2).sum(1)
    return out, total / n_hutchinson


def spectral_normalised_layers(module: nn.Module) -> list[nn.Module]:
    """The submodules of ``module`` whose ``weight`` carries a spectral-norm parametrisation."""
    from torch.nn.utils.parametrizations import _SpectralNorm

    return [
        m for m in module.modules()
        if parametrize.is_parametrized(m, "weight") and any(isinstance(p, _SpectralNorm) for p in m.parametrizations.weight)
    ]


def _check_nonnegative(method: Method, *keys: str) -> None:
    for key in keys:
        lo = method.schedules[key].bounds()[0]
        if lo < 0:
            raise OptionError(f"the weight must be >= 0, got a minimum of {lo}", key=key)


def _check_hutchinson(n_hutchinson: int, noise: str) -> None:
    if isinstance(n_hutchinson, bool) or not isinstance(n_hutchinson, int) or n_hutchinson < 1:
        raise OptionError(f"must be an integer >= 1, got {n_hutchinson!r}", key="n_hutchinson")
    if noise not in NOISE_KINDS:
        raise OptionError(f"must be one of {', '.join(NOISE_KINDS)}, got {noise!r}", key="noise")


def _check_trace_space(trace_space: str) -> None:
    if trace_space not in ("latent", "data"):
        raise OptionError(f"must be 'latent' or 'data', got {trace_space!r}", key="trace_space")


def _check_hutchinson_dim(n_hutchinson: int, trace_space: str, latent_dim: int, data_dim: int) -> None:
    dim = latent_dim if trace_space == "latent" else data_dim
    if n_hutchinson > dim:
        raise OptionError(f"K={n_hutchinson} exceeds the {trace_space}-space dimension {dim} (K <= {dim}; "
                          f"K = {dim} orthogonal samples are already exact)", key="n_hutchinson")


# --------------------------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------------------------


@register_method("ae_l2")
@dataclass
class AEL2(Method):
    r"""AE+L2 (Kumar et al. 2020, §4 (ii)): an autoencoder with weight decay on the decoder parameters.

    .. math:: \mathcal L = \|g(f(x)) - x\|^2 + \frac{w}{2}\|\theta_g\|^2

    The penalty is a batch scalar (added to every sample's loss, so the batch mean adds it once); its gradient
    :math:`w\,\theta_g` is exactly what ``torch.optim.Adam(decoder_params, weight_decay=w)`` adds.

    Arguments:
        weight_decay: w ≥ 0, a number or schedule (Kumar search {0.001, 0.01, 0.1, 0.5, 1}).

    Example:
        >>> AEL2(weight_decay=0.01).weights(0)
        {'weight_decay': 0.01}
    """

    weight_decay: Any = 0.001
    scheduled = ("weight_decay",)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_nonnegative(self, "weight_decay")

    def loss(self, batch: Tensor, clock: Clock | int, model: ModelLike) -> dict[str, Tensor]:
        z = model.encode(batch)
        terms = core_terms(batch, z, model.decode(z))
        penalty = decoder_weight_penalty(model)
        return {"loss": terms["reconstruction"] + self.weight("weight_decay", clock) * penalty, **terms,
                "weight_penalty": penalty}


@register_method("ae_sn")
@dataclass
class AESN(Method):
    r"""AE+SN (Kumar et al. 2020, §4 (iii)): an autoencoder whose decoder layers are spectrally normalised.

    The loss is the plain reconstruction :math:`\|g(f(x)) - x\|^2`; the regulariser is architectural: every
    ``Linear``/``Conv``/``ConvTranspose`` layer of the decoder uses :math:`W / \sigma_{\max}(W)` (Miyato et al.
    2018, σ by ``n_power_iterations`` power-iteration steps per training forward pass). A method never owns the
    networks, so the normalisation is added by :meth:`prepare` (for the engine to call before training and when it
    rebuilds the model from its config); :meth:`finalize` optionally bakes it into plain weights.

    Arguments:
        n_power_iterations: Power-iteration steps per forward pass (≥ 1).

    Example:
        >>> method = AESN()
        >>> method.prepare(model)          # doctest: +SKIP
        >>> method.loss(x, 0, model)       # doctest: +SKIP
    """

    n_power_iterations: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        n = self.n_power_iterations
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise OptionError(f"must be an integer >= 1, got {self.n_power_iterations!r}", key="n_power_iterations")

    def prepare(self, model: ModelLike) -> None:
        """Adds a spectral-norm parametrisation to every weight layer of ``model.decoder`` (idempotent)."""
        decoder = _decoder_module(model, "ae_sn")
        done = set(map(id, spectral_normalised_layers(decoder)))
        layers = [m for m in decoder.modules() if isinstance(m, _SN_LAYERS) and id(m) not in done]
        for m in layers:
            spectral_norm(m, n_power_iterations=self.n_power_iterations)
        if not layers and not done:
            raise ValueError("ae_sn: the decoder has no Linear/Conv/ConvTranspose layer to normalise")

    def finalize(self, model: ModelLike) -> None:
        r"""Replaces each parametrised weight by its current value :math:`W/\sigma` (eval-mode σ, no power step)."""
        decoder = _decoder_module(model, "ae_sn")
        was_training = decoder.training
        decoder.eval()
        try:
            for m in spectral_normalised_layers(decoder):
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
        finally:
            decoder.train(was_training)

    def loss(self, batch: Tensor, clock: Clock | int, model: ModelLike) -> dict[str, Tensor]:
        if not spectral_normalised_layers(_decoder_module(model, "ae_sn")):
            raise ValueError("ae_sn: the decoder is not spectrally normalised; call method.prepare(model) once before "
                             "training (the engine does this)")
        z = model.encode(batch)
        terms = core_terms(batch, z, model.decode(z))
        return {"loss": terms["reconstruction"], **terms}


@dataclass
class _JacobianPenalty(Method):
    jacobian_weight: Any = 0.01
    n_hutchinson: int = 1
    noise: Literal["gaussian", "orthogonal", "rademacher", "sphere"] = "gaussian"
    trace_space: Literal["latent", "data"] = "latent"

    scheduled = ("jacobian_weight",)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_nonnegative(self, *self.scheduled)
        _check_hutchinson(self.n_hutchinson, self.noise)
        _check_trace_space(self.trace_space)

    def check(self, *, latent_dim: int, data_dim: int) -> None:
        _check_hutchinson_dim(self.n_hutchinson, self.trace_space, latent_dim, data_dim)


@register_method("cae")
@dataclass
class CAE(_JacobianPenalty):
    r"""Contractive autoencoder (Rifai et al. 2011; Kumar et al. 2020, §4 (iv)): penalises the *encoder* Jacobian.

    .. math:: \mathcal L = \|g(f(x)) - x\|^2 + \lambda\,\|f'(x)\|_F^2,\qquad
              \|f'(x)\|_F^2 \approx \frac1K\sum_k \|f'(x)^\top u_k\|^2 \;(\text{latent}) \text{ or }
              \frac1K\sum_k \|f'(x)v_k\|^2 \;(\text{data})

    with Hutchinson noise :math:`E[uu^\top] = I_d` (VJPs) or :math:`E[vv^\top] = I_D` (JVPs), as Kumar et al.
    estimate their own Frobenius terms (v ~ N(0, I), hence the default ``noise="gaussian"``). Gradients of the
    penalty reach only the encoder; the decoder sees the reconstruction alone.

    Arguments:
        jacobian_weight: λ ≥ 0, number or schedule (Kumar search {0.001, 0.01, 0.1, 0.5, 1, 10}).
        n_hutchinson: K ≥ 1 (≤ the dimension of ``trace_space``).
        noise: ``gaussian`` (Kumar), ``orthogonal`` (K = d gives the exact norm), ``rademacher``, ``sphere``.
        trace_space: ``latent`` (u ∈ R^d, reverse mode) or ``data`` (v ∈ R^D, forward mode).

    Example:
        >>> CAE(jacobian_weight={"schedule": "penalty", "start": 0.1, "rate": 0.001, "nu": 1.0}).weight("jacobian_weight", 900)
        1.0
    """

    def loss(self, batch: Tensor, clock: Clock | int, model: ModelLike) -> dict[str, Tensor]:
        side = "output" if self.trace_space == "latent" else "input"
        z, penalty = jacobian_frobenius_sq(model.encode, batch, side=side, n_hutchinson=self.n_hutchinson, noise=self.noise)
        terms = core_terms(batch, z, model.decode(z))
        loss = terms["reconstruction"] + self.weight("jacobian_weight", clock) * penalty
        return {"loss": loss, **terms, "encoder_jacobian_sq_norm": penalty}


@dataclass
class _RAE(Method):
    latent_weight: Any = 1e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_nonnegative(self, *self.scheduled)

    def _assemble(self, batch: Tensor, z: Tensor, x_hat: Tensor, clock: Clock | int, name: str, penalty: Tensor,
                  weight_key: str) -> dict[str, Tensor]:
        terms = core_terms(batch, z, x_hat)
        latent_penalty = 0.5 * terms["latent_sq_norm"]
        loss = (terms["reconstruction"] + self.weight("latent_weight", clock) * latent_penalty
                + self.weight(weight_key, clock) * penalty)
        return {"loss": loss, **terms, "latent_penalty": latent_penalty, name: penalty}


@register_method("rae_l2")
@dataclass
class RAEL2(_RAE):
    r"""RAE-L2 (Ghosh et al. 2020): latent-norm penalty plus weight decay on the decoder.

    .. math:: \mathcal L = \|g(f(x)) - x\|^2 + \beta\,\tfrac12\|f(x)\|^2 + \frac{w}{2}\|\theta_g\|^2

    (Ghosh et al.'s :math:`\mathcal L_{REC} + \beta\mathcal L^{RAE}_Z + \lambda\mathcal L_{REG}` with
    :math:`\mathcal L_{REG} = \|\theta_g\|^2` applied as weight decay, so :math:`w = 2\lambda`.)

    Arguments:
        latent_weight: β ≥ 0 (Pythae default 1e-4), number or schedule.
        weight_decay: w ≥ 0 on the decoder parameters (Pythae ``reg_weight``, default 1e-7), number or schedule.

    Example:
        >>> RAEL2(latent_weight=1e-3, weight_decay=1e-6).weights(0)
        {'latent_weight': 0.001, 'weight_decay': 1e-06}
    """

    weight_decay: Any = 1e-7
    scheduled = ("latent_weight", "weight_decay")

    def loss(self, batch: Tensor, clock: Clock | int, model: ModelLike) -> dict[str, Tensor]:
        z = model.encode(batch)
        return self._assemble(batch, z, model.decode(z), clock, "weight_penalty", decoder_weight_penalty(model), "weight_decay")


@register_method("rae_gp")
@dataclass
class RAEGP(_RAE):
    r"""RAE-GP (Ghosh et al. 2020): latent-norm penalty plus the *decoder* Jacobian's Frobenius norm at z = f(x).

    .. math:: \mathcal L = \|g(z) - x\|^2 + \beta\,\tfrac12\|z\|^2 + \lambda\,\|g'(z)\|_F^2,\qquad z = f(x),

    with :math:`\|g'(z)\|_F^2` by Hutchinson (``latent``: :math:`\|g'(z)v\|^2`, v ∈ R^d, forward mode — the
    estimate of Kumar eq. 7; ``data``: :math:`\|g'(z)^\top u\|^2`, u ∈ R^D, reverse mode). The penalty depends on
    z, so its gradient reaches the decoder and, through z, the encoder (as :math:`\|\nabla D(E(x))\|^2` in Ghosh
    et al.).

    Arguments:
        latent_weight: β ≥ 0 (Pythae default 1e-4), number or schedule.
        jacobian_weight: λ ≥ 0 (Pythae ``reg_weight``, default 1e-7), number or schedule.
        n_hutchinson, noise, trace_space: As for :class:`CAE`.

    Example:
        >>> RAEGP(jacobian_weight=0.1).weight("jacobian_weight", 0)
        0.1
    """

    jacobian_weight: Any = 1e-7
    n_hutchinson: int = 1
    noise: Literal["gaussian", "orthogonal", "rademacher", "sphere"] = "gaussian"
    trace_space: Literal["latent", "data"] = "latent"
    scheduled = ("latent_weight", "jacobian_weight")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_hutchinson(self.n_hutchinson, self.noise)
        _check_trace_space(self.trace_space)

    def check(self, *, latent_dim: int, data_dim: int) -> None:
        _check_hutchinson_dim(self.n_hutchinson, self.trace_space, latent_dim, data_dim)

    def loss(self, batch: Tensor, clock: Clock | int, model: ModelLike) -> dict[str, Tensor]:
        z = model.encode(batch)
        side = "input" if self.trace_space == "latent" else "output"
        x_hat, penalty = jacobian_frobenius_sq(model.decode, z, side=side, n_hutchinson=self.n_hutchinson, noise=self.noise)
        return self._assemble(batch, z, x_hat, clock, "decoder_jacobian_sq_norm", penalty, "jacobian_weight")
