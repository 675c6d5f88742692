r"""Rectangular flows (Caterini et al. 2021) and exact-log-det injective flows with free-form networks.

Both train :math:`-\log p_Z(f(x)) + \tfrac12\log\det(g'^\top g') + \beta\|g(f(x)) - x\|^2` (FIF eq. 3/7): the
rectangular flow with the conjugate-gradient gradient estimator (FIF eq. 6), the exact method with the
log-determinant from full Jacobians (cost: d Jacobian-vector passes; for small d).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor

from ..errors import OptionError
from ..estimators import decoder_log_volume, encoder_log_volume, rectangular_flow_surrogate
from .base import Clock, Method, ModelLike, register_method

__all__ = ["RectangularFlow", "ExactFlow"]


@dataclass
class _BetaMethod(Method):
    beta: Any = 10.0
    scheduled = ("beta",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.schedules["beta"].bounds()[0] < 0:
            raise OptionError("the reconstruction weight must be >= 0", key="beta")

    def _assemble(
        self, batch: Tensor, z: Tensor, x_hat: Tensor, volume: Tensor, clock: Clock | int, model: ModelLike
    ) -> dict[str, Tensor]:
        reconstruction = (x_hat - batch).flatten(1).pow(2).sum(1)
        nll = -model.latent.log_prob(z) + volume
        return {
            "loss": nll + self.weight("beta", clock) * reconstruction,
            "nll": nll,
            "reconstruction": reconstruction,
            "latent_sq_norm": z.detach().flatten(1).pow(2).sum(1),  # logged only (every method reports it)
        }


@register_method("rectangular_flow")
@dataclass
class RectangularFlow(_BetaMethod):
    r"""Rectangular flow with the CG log-det gradient (FIF eq. 6), free-form encoder/decoder.

    Arguments:
        beta: Reconstruction weight (number or schedule).
        n_hutchinson, noise: Hutchinson samples and their distribution.
        grad_to: ``decoder`` (Caterini et al.) or ``encoder`` (FIF table 6 "RF" rows).
        jacobian_at: For ``grad_to=encoder``: ``x`` (off-manifold) or ``x_hat`` (on-manifold).
        cg_tol, cg_max_iter: Conjugate-gradient tolerance and iteration cap (``None`` = 2d; exact arithmetic needs d,
            float32 round-off often more).
    """

    n_hutchinson: int = 1
    noise: Literal["orthogonal", "gaussian", "rademacher", "sphere"] = "orthogonal"
    jacobian_at: Literal["x", "x_hat"] = "x"
    grad_to: Literal["decoder", "encoder"] = "decoder"
    cg_tol: float = 1e-6
    cg_max_iter: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.grad_to == "decoder" and self.jacobian_at != "x":
            raise OptionError("'x_hat' applies only with grad_to: encoder", key="jacobian_at")
        if not self.cg_tol > 0:
            raise OptionError(f"must be > 0, got {self.cg_tol}", key="cg_tol")
        if self.cg_max_iter is not None and self.cg_max_iter < 1:
            raise OptionError(f"must be >= 1 (or null for 2d), got {self.cg_max_iter}", key="cg_max_iter")
        if self.n_hutchinson < 1:
            raise OptionError(f"must be >= 1, got {self.n_hutchinson}", key="n_hutchinson")

    def check(self, *, latent_dim: int, data_dim: int) -> None:
        if self.n_hutchinson > latent_dim:
            raise OptionError(f"K={self.n_hutchinson} exceeds the latent dimension {latent_dim}", key="n_hutchinson")

    def loss(self, batch: Tensor, clock: Clock | int, model: ModelLike) -> dict[str, Tensor]:
        z, x_hat, surrogate, info = rectangular_flow_surrogate(
            batch, model.encode, model.decode, n_hutchinson=self.n_hutchinson, noise=self.noise,
            jacobian_at=self.jacobian_at, grad_to=self.grad_to, cg_tol=self.cg_tol, cg_max_iter=self.cg_max_iter,
        )
        terms = self._assemble(batch, z, x_hat, surrogate, clock, model)
        terms["cg_iterations"] = z.new_tensor(float(info["cg_iterations"]))
        return terms


@register_method("exact")
@dataclass
class ExactFlow(_BetaMethod):
    r"""Injective flow trained with the exact volume change from full Jacobians.

    ``side="decoder"``: :math:`+\tfrac12\log\det(g'(z)^\top g'(z))` (FIF eq. 2); ``side="encoder"``:
    :math:`-\tfrac12\log\det(f'(x)f'(x)^\top)`, the off-manifold encoder form (FIF eq. 31/46, theorem C.4).

    Arguments:
        beta: Reconstruction weight (number or schedule).
        side: Which Jacobian the log-determinant is taken of.
        chunk_size: Jacobian directions per pass (``None``: bounded automatically).
    """

    side: Literal["decoder", "encoder"] = "decoder"
    chunk_size: int | None = None

    def loss(self, batch: Tensor, clock: Clock | int, model: ModelLike) -> dict[str, Tensor]:
        if self.side == "decoder":
            z = model.encode(batch)
            x_hat = model.decode(z)
            volume = decoder_log_volume(model.decode, z, chunk_size=self.chunk_size)
        else:
            volume = -encoder_log_volume(model.encode, batch, chunk_size=self.chunk_size)
            z = model.encode(batch)
            x_hat = model.decode(z)
        return self._assemble(batch, z, x_hat, volume, clock, model)
