r"""Relaxed injective probability flows (Kumar, Poole & Murphy 2020): InjFlow-ln (eq. 9) and InjFlow (eq. 10).

Both minimise a bound on the negative log-likelihood of an injective decoder :math:`g` with the stochastic
Frobenius-norm term :math:`\|J_g(z)v\|^2`, :math:`v \sim N(0, I)`, replacing the log-determinant, and treat
reconstruction and local injectivity as penalties whose weights grow with the step (penalty method, §4:
:math:`\mu_i = 1 + i^\nu/1000`, :math:`\nu \in \{1, 1.3\}`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor

from ..errors import OptionError
from ..estimators import injflow_ln_terms, injflow_terms
from .base import Clock, Method, ModelLike, register_method

__all__ = ["InjFlowLn", "InjFlow"]


def _penalty(nu: float = 1.0) -> dict[str, Any]:
    return {"schedule": "penalty", "start": 1.0, "rate": 1e-3, "nu": nu}  # 1 + i^ν/1000 (Kumar §4)


@dataclass
class _KumarMethod(Method):
    sigma: float = 1.0
    prior_weight: float = 1.0
    mu: Any = field(default_factory=_penalty)
    mu_in: Any = field(default_factory=_penalty)
    eta: float = 0.1
    jacobian: Literal["jvp", "finite_difference", "vjp"] = "jvp"
    fd_step: float = 0.01

    scheduled = ("mu", "mu_in")
    #: The key of the Jacobian term in the estimator's output.
    jacobian_term = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("mu", "mu_in"):
            if self.schedules[key].bounds()[0] < 0:
                raise OptionError("penalty weights must be >= 0", key=key)
        if not self.sigma > 0:
            raise OptionError(f"the prior's standard deviation must be > 0, got {self.sigma}", key="sigma")
        if self.prior_weight < 0:
            raise OptionError(f"must be >= 0, got {self.prior_weight}", key="prior_weight")
        if self.eta < 0:
            raise OptionError(f"the singular-value floor must be >= 0, got {self.eta}", key="eta")
        if not self.fd_step > 0:
            raise OptionError(f"must be > 0, got {self.fd_step}", key="fd_step")

    def terms(self, batch: Tensor, model: ModelLike) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, batch: Tensor, clock: Clock | int, model: ModelLike) -> dict[str, Tensor]:
        t = self.terms(batch, model)
        mu, mu_in = self.weight("mu", clock), self.weight("mu_in", clock)
        loss = self.prior_weight * t["prior"] + mu * t["reconstruction"] + t[self.jacobian_term] + mu_in * t["injectivity"]
        return {
            "loss": loss,
            "prior": t["prior"],
            "reconstruction": t["reconstruction"],
            self.jacobian_term: t[self.jacobian_term],
            "injectivity": t["injectivity"],
            "latent_sq_norm": t["z"].detach().flatten(1).pow(2).sum(1),  # logged only (every method reports it)
        }


@register_method("injflow_ln")
@dataclass
class InjFlowLn(_KumarMethod):
    r"""InjFlow-ln, Kumar eq. 9:

    .. math:: w_p\frac{\|f(x)\|^2}{2\sigma^2} + \mu_i \|x - g(f(x))\|^2 + \frac d2 \ln\max(\|J_g v\|^2, \eta^2\|v\|^2)
              + \mu_{in,i} \Big[\frac{\|J_g v\|}{\|v\|} - \eta\Big]_-^2

    Arguments:
        sigma: Prior standard deviation σ.
        prior_weight: Weight :math:`w_p` of the prior term (1 in the paper).
        mu: Reconstruction weight, a number or schedule (default :math:`1 + i/1000`).
        mu_in: Injectivity-penalty weight (same default).
        eta: Floor η on :math:`\|J_g v\|/\|v\|` (0.1).
        jacobian: ``jvp`` (eq. 7), ``finite_difference`` (eq. 8, step ``fd_step``) or ``vjp`` (footnote 2).

    Example:
        >>> InjFlowLn(mu={"schedule": "penalty", "start": 1, "rate": 0.001, "nu": 1.3}).weight("mu", 1000)
        8.943...
    """

    jacobian_term = "log_frobenius"

    def terms(self, batch: Tensor, model: ModelLike) -> dict[str, Tensor]:
        return injflow_ln_terms(batch, model.encode, model.decode, sigma=self.sigma, eta=self.eta,
                                jacobian=self.jacobian, fd_step=self.fd_step)


@register_method("injflow")
@dataclass
class InjFlow(_KumarMethod):
    r"""InjFlow, Kumar eq. 10: as :class:`InjFlowLn` with the log-Frobenius term replaced by the fixed-λ bound
    :math:`\frac1{2\lambda}\max(\|J_g v\|^2, \eta^2\|v\|^2)`.

    Arguments:
        lam: λ > 0 (default 1).
    """

    lam: float = 1.0
    jacobian_term = "frobenius"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.lam > 0:
            raise OptionError(f"must be > 0, got {self.lam}", key="lam")

    def terms(self, batch: Tensor, model: ModelLike) -> dict[str, Tensor]:
        return injflow_terms(batch, model.encode, model.decode, lam=self.lam, sigma=self.sigma, eta=self.eta,
                             jacobian=self.jacobian, fd_step=self.fd_step)
