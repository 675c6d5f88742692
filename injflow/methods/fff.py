r"""Free-form flows (FFF; Draxler, Sorrenson et al., "Free-form flows: make any architecture a normalizing flow",
AISTATS 2024): FIF's estimator with d = D.

Any encoder/decoder pair of equal dimension becomes a normalizing flow. The loss is FFF eq. 9,

.. math::
    \mathcal L(x) = -\log p_Z(f(x)) - \frac1K \sum_k \epsilon_k^\top f'(x)\,\mathrm{sg}(g'(z)\epsilon_k)
        + \beta\|g(f(x)) - x\|^2,

whose middle term has the gradient of :math:`-\log|\det f'(x)|` when :math:`g \approx f^{-1}` (FFF theorem 4.1), so
the first two terms train the change of variables :math:`-\log p_Z(f(x)) - \log|\det f'(x)|` of the flow :math:`f`
and the reconstruction term keeps the free-form decoder close to its inverse. The estimator is FIF's
(:func:`injflow.estimators.fff_loss` calls :func:`~injflow.estimators.volume_change_surrogate` with
``full_dimensional=True``); ``exact: true`` trains with the exact :math:`\log|\det f'(x)|` instead (one ``slogdet``
of the full D × D Jacobian: small D only).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

from torch import Tensor

from ..errors import OptionError
from ..estimators import fff_loss
from .base import Clock, ModelLike, register_method
from .fif import FIF

__all__ = ["FFF"]

#: The surrogate's options, which the exact log-determinant does not use.
_SURROGATE_OPTIONS = ("n_hutchinson", "noise", "grad_to", "trace_space", "mode")


@register_method("fff")
@dataclass
class FFF(FIF):
    r"""The free-form flow objective at d = D (FFF eq. 9) with FIF's estimator options.

    Needs ``model.latent_dim`` equal to the data dimension D. Every FIF option applies (``n_hutchinson`` ≤ D,
    ``noise``, ``grad_to``, ``trace_space``, ``mode``) except ``jacobian_at: x_hat``, which is refused: at d = D
    there is no manifold to project onto and the change of variables of x needs :math:`f'(x)`.

    Arguments:
        beta: Reconstruction weight β ≥ 0, a number or a schedule.
        exact: Train with the exact :math:`\log|\det f'(x)|` (full Jacobian, one slogdet; D backward passes per
            step, so for small D) instead of the surrogate; the surrogate options must then keep their defaults.

    Example:
        >>> FFF(beta=25.0, exact=True).options()["exact"]
        True
    """

    exact: bool = False

    #: d = D: the engine's dimension check asks for latent_dim == D instead of d < D.
    full_dimensional: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.jacobian_at != "x":
            raise OptionError("'x_hat' does not apply to a free-form flow (d = D): there is no manifold to project onto, "
                              "and the change of variables of x needs f'(x); use jacobian_at: x", key="jacobian_at")
        if self.exact:
            defaults = {f.name: f.default for f in fields(FIF)}
            changed = [k for k in _SURROGATE_OPTIONS if getattr(self, k) != defaults[k]]
            if changed:
                raise OptionError("an option of the surrogate estimator, unused with exact: true (the exact "
                                  "log-determinant takes the full Jacobian, no Hutchinson samples); drop it or set exact: false",
                                  key=changed[0])

    def loss(self, batch: Tensor, clock: Clock | int, model: ModelLike) -> dict[str, Tensor]:
        options = {} if self.exact else {k: getattr(self, k) for k in _SURROGATE_OPTIONS}
        out = fff_loss(
            batch,
            model.encode,
            model.decode,
            beta=self.weight("beta", clock),
            latent_log_prob=model.latent.log_prob,
            exact=self.exact,
            **options,
        )
        terms = {k: out[k] for k in ("loss", "nll", "reconstruction", "surrogate", "log_det") if k in out}
        terms["latent_sq_norm"] = out["z"].detach().flatten(1).pow(2).sum(1)  # logged only (every method reports it)
        return terms
