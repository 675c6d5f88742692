r"""Small building blocks shared by every architecture: activations, reshaping, counting and checks."""

__all__ = [
    "ACTIVATIONS",
    "make_activation",
    "count_parameters",
    "Flatten",
    "Unflatten",
    "check_autoencoder",
    "numel",
]

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
from torch import Tensor

#: Activation names accepted by the ``activation`` option of the dense nets.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
}


def make_activation(name: str) -> nn.Module:
    r"""Instantiates an activation by name.

    Arguments:
        name: One of :data:`ACTIVATIONS` (``"relu"``, ``"silu"``, ``"elu"``, ...).

    Returns:
        A fresh activation module.

    Example:
        >>> make_activation("silu")
        SiLU()
    """

    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")

    return ACTIVATIONS[name]()


def count_parameters(*modules: nn.Module) -> int:
    r"""Counts the trainable parameters of one or more modules.

    Buffers (e.g. BatchNorm running statistics) are not parameters and are not counted, as in the
    papers' tables; a parameter shared by several modules counts once.

    Arguments:
        modules: The modules to count.

    Returns:
        The total number of trainable scalars.

    Example:
        >>> count_parameters(nn.Linear(3, 2))
        8
    """

    # Each parameter once: an injective flow's encoder and decoder share theirs (injflow.nets.invertible).
    unique = {id(p): p for m in modules for p in m.parameters() if p.requires_grad}
    return sum(p.numel() for p in unique.values())


class Flatten(nn.Module):
    r"""Flattens all but the batch dimension: :math:`(B, *S) \to (B, \prod S)`.

    Example:
        >>> Flatten()(torch.zeros(2, 1, 4, 4)).shape
        torch.Size([2, 16])
    """

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(start_dim=1)


class Unflatten(nn.Module):
    r"""Reshapes :math:`(B, \prod S) \to (B, *S)`.

    Arguments:
        shape: The target shape :math:`S`, without the batch dimension.

    Example:
        >>> Unflatten((1, 4, 4))(torch.zeros(2, 16)).shape
        torch.Size([2, 1, 4, 4])
    """

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()

        self.shape = tuple(int(s) for s in shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], *self.shape)


def check_autoencoder(
    encoder: nn.Module,
    decoder: nn.Module,
    data_shape: Sequence[int],
    latent_dim: int,
) -> None:
    r"""Checks at build time that a pair maps :math:`(B, *S) \to (B, d) \to (B, *S)`.

    The check runs one zero sample through both nets in evaluation mode without gradients (so that
    BatchNorm running statistics are left untouched and no RNG is consumed), then restores each
    net's training flag. A mismatch raises at construction instead of deep inside a training step.

    Arguments:
        encoder: The encoder :math:`f`.
        decoder: The decoder :math:`g`.
        data_shape: The data shape :math:`S`, without the batch dimension.
        latent_dim: The latent size :math:`d`.

    Example:
        >>> check_autoencoder(nn.Linear(3, 2), nn.Linear(2, 3), (3,), 2)
    """

    data_shape = tuple(data_shape)
    modes = (encoder.training, decoder.training)

    try:
        encoder.eval()
        decoder.eval()

        with torch.no_grad():
            param = next(encoder.parameters(), None)
            kwargs = {} if param is None else {"device": param.device, "dtype": param.dtype}
            z = encoder(torch.zeros(1, *data_shape, **kwargs))

            if tuple(z.shape) != (1, latent_dim):
                raise ValueError(
                    f"encoder maps (1, *{data_shape}) to {tuple(z.shape)}, expected (1, {latent_dim})"
                )

            x = decoder(z)

            if tuple(x.shape) != (1, *data_shape):
                raise ValueError(
                    f"decoder maps (1, {latent_dim}) to {tuple(x.shape)}, "
                    f"expected (1, *{data_shape})"
                )
    finally:
        encoder.train(modes[0])
        decoder.train(modes[1])


def numel(shape: Sequence[int]) -> int:
    r"""Returns :math:`\prod S` for a shape :math:`S`."""

    return math.prod(int(s) for s in shape)
