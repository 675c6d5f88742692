r"""Free-form injective flows (FIF; Sorrenson, Draxler et al., ICLR 2024).

The loss is FIF eq. 7 / 17,

.. math::
    \mathcal L(x) = -\log p_Z(f(x))
        - \frac1K \sum_k \epsilon_k^\top f'(x)\,\mathrm{sg}(g'(z)\epsilon_k) + \beta\|g(f(x)) - x\|^2,

computed by :func:`injflow.estimators.fif_loss`; every choice the paper discusses (evaluation point of the
encoder Jacobian, gradient to encoder or decoder, trace space, AD mode, noise, K) is a field here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor

from ..errors import OptionError
from ..estimators import fif_loss
from .base import Clock, Method, ModelLike, register_method

__all__ = ["FIF"]


@register_method("fif")
@dataclass
class FIF(Method):
    r"""The FIF objective (eq. 7) with its estimator options.

    Arguments:
        beta: Reconstruction weight β ≥ 0, a number or a schedule (App. E.3: ``{schedule: linear, start: 20, end: 40}``).
        n_hutchinson: Hutchinson samples K (≤ d for latent-space traces, ≤ D for data-space).
        noise: Hutchinson noise: ``orthogonal`` (App. D.3.5), ``gaussian``, ``rademacher``, ``sphere``.
        jacobian_at: ``x`` (off-manifold, eq. 15, the paper's choice) or ``x_hat`` (on-manifold, eq. 10).
        grad_to: Which network the surrogate's gradient flows to (table 4).
        trace_space: Hutchinson trace in the ``latent`` or the ``data`` space (table 4).
        mode: Automatic-differentiation mode of the surrogate (App. D.2).

    Example:
        >>> FIF(beta={"schedule": "linear", "start": 20, "end": 40}).weights(0)
        {'beta': 20.0}
    """

    beta: Any = 10.0
    n_hutchinson: int = 1
    noise: Literal["orthogonal", "gaussian", "rademacher", "sphere"] = "orthogonal"
    jacobian_at: Literal["x", "x_hat"] = "x"
    grad_to: Literal["encoder", "decoder"] = "encoder"
    trace_space: Literal["latent", "data"] = "latent"
    mode: Literal["mixed", "forward", "backward"] = "mixed"

    scheduled = ("beta",)

    def __post_init__(self) -> None:
        super().__post_init__()
        lo, _ = self.schedules["beta"].bounds()
        if lo < 0:
            raise OptionError(f"the reconstruction weight must be >= 0, got a minimum of {lo}", key="beta")
        if self.n_hutchinson < 1:
            raise OptionError(f"must be >= 1, got {self.n_hutchinson}", key="n_hutchinson")

    def check(self, *, latent_dim: int, data_dim: int) -> None:
        space_dim = latent_dim if self.trace_space == "latent" else data_dim
        if self.n_hutchinson > space_dim:
            raise OptionError(f"K={self.n_hutchinson} Hutchinson samples exceed the {self.trace_space}-space "
                              f"dimension {space_dim} (K <= {space_dim})", key="n_hutchinson")

    def loss(self, batch: Tensor, clock: Clock | int, model: ModelLike) -> dict[str, Tensor]:
        out = fif_loss(
            batch,
            model.encode,
            model.decode,
            beta=self.weight("beta", clock),
            latent_log_prob=model.latent.log_prob,
            n_hutchinson=self.n_hutchinson,
            noise=self.noise,
            jacobian_at=self.jacobian_at,
            grad_to=self.grad_to,
            trace_space=self.trace_space,
            mode=self.mode,
        )
        terms = {k: out[k] for k in ("loss", "nll", "reconstruction", "surrogate") if k in out}
        terms["latent_sq_norm"] = out["z"].detach().flatten(1).pow(2).sum(1)  # logged only (every method reports it)
        return terms
