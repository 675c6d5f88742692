r"""Plain autoencoder: reconstruction only (the reference baseline of Kumar et al. 2020, §4 "AE")."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .base import Clock, Method, ModelLike, register_method

__all__ = ["AE"]


@register_method("ae")
@dataclass
class AE(Method):
    r"""Autoencoder trained on the squared reconstruction error :math:`\|g(f(x)) - x\|^2` (summed over dimensions).

    Example:
        >>> method = AE()
        >>> terms = method.loss(x, clock=0, model=model)  # doctest: +SKIP
        >>> terms["loss"].shape                           # doctest: +SKIP
        torch.Size([B])
    """

    def loss(self, batch: Tensor, clock: Clock | int, model: ModelLike) -> dict[str, Tensor]:
        z = model.encode(batch)
        reconstruction = (model.decode(z) - batch).flatten(1).pow(2).sum(1)
        return {"loss": reconstruction, "reconstruction": reconstruction, "latent_sq_norm": z.detach().flatten(1).pow(2).sum(1)}
