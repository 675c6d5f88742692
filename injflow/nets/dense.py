r"""Fully connected nets: MLP, residual blocks, and the FIF paper's toy and tabular autoencoders.

References:
    | Free-form Injective Flows (Sorrenson, Draxler et al., ICLR 2024)
    | https://arxiv.org/abs/2306.01843 (appendices E.1.1 and E.2, table 11)
"""

__all__ = [
    "MLP",
    "ResBlock",
    "LatentResNet",
    "mlp_autoencoder",
    "toy_resnet_autoencoder",
    "tabular_autoencoder",
]

from collections.abc import Sequence

import torch  # noqa: F401 (used by the examples)
import torch.nn as nn
from torch import Tensor

from .core import Flatten, Unflatten, make_activation, numel
from .registry import register_architecture


def _widths(hidden_features: int | Sequence[int], name: str = "hidden_features") -> tuple[int, ...]:
    if isinstance(hidden_features, int):
        hidden_features = (hidden_features,)

    try:
        widths = tuple(hidden_features)
    except TypeError:
        raise TypeError(f"{name} must be an int or a sequence of ints, got {hidden_features!r}") from None

    if not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
        raise ValueError(f"{name} must contain positive ints, got {hidden_features!r}")

    return widths


class MLP(nn.Sequential):
    r"""Multi-layer perceptron: affine layers with an activation between them, none at the output.

    Arguments:
        in_features: The input size.
        out_features: The output size.
        hidden_features: The hidden widths, one per hidden layer (an int means one layer).
        activation: The activation name (see :data:`injflow.nets.core.ACTIVATIONS`).

    Example:
        >>> net = MLP(5, 2, hidden_features=(64, 64), activation="relu")
        >>> net(torch.randn(3, 5)).shape
        torch.Size([3, 2])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: int | Sequence[int] = (256, 256),
        activation: str = "silu",
    ) -> None:
        widths = (in_features, *_widths(hidden_features), out_features)

        layers = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            if i > 0:
                layers.append(make_activation(activation))
            layers.append(nn.Linear(a, b))

        super().__init__(*layers)

        self.in_features = in_features
        self.out_features = out_features


class ResBlock(nn.Module):
    r"""Fully connected residual block :math:`x \mapsto x + \mathrm{MLP}(x)`.

    With ``hidden_features=(h, h)`` and ``activation="silu"`` this is the FIF paper's
    ``ResBlock(h)`` of table 11: Linear(d, h), SiLU, Linear(h, h), SiLU, Linear(h, d), with a skip.

    Arguments:
        features: The input and output size.
        hidden_features: The hidden widths of the residual branch.
        activation: The activation name.

    Example:
        >>> block = ResBlock(4, hidden_features=(512, 512))
        >>> block(torch.randn(2, 4)).shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        features: int,
        hidden_features: int | Sequence[int] = (256, 256),
        activation: str = "silu",
    ) -> None:
        super().__init__()

        self.branch = MLP(features, features, hidden_features, activation)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.branch(x)


class LatentResNet(nn.Sequential):
    r"""A stack of :class:`ResBlock` at constant width (e.g. in latent space).

    Arguments:
        features: The input and output size.
        n_blocks: The number of residual blocks.
        hidden_features: The hidden widths of each block's residual branch.
        activation: The activation name.

    Example:
        >>> net = LatentResNet(3, n_blocks=2, hidden_features=(256, 256), activation="relu")
        >>> net(torch.randn(2, 3)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        features: int,
        n_blocks: int = 2,
        hidden_features: int | Sequence[int] = (256, 256),
        activation: str = "silu",
    ) -> None:
        if not isinstance(n_blocks, int) or isinstance(n_blocks, bool) or n_blocks < 0:
            raise ValueError(f"n_blocks must be a non-negative int, got {n_blocks!r}")

        super().__init__(*(ResBlock(features, hidden_features, activation) for _ in range(n_blocks)))


def _flat_ends(data_shape: Sequence[int]) -> tuple[list[nn.Module], list[nn.Module]]:
    # Dense nets work on flat vectors; other data shapes (e.g. images) are flattened on the way in
    # and reshaped on the way out, so that the encode/decode contract holds for any data shape.
    if len(data_shape) == 1:
        return [], []

    return [Flatten()], [Unflatten(data_shape)]


@register_architecture("mlp")
def mlp_autoencoder(
    data_shape: Sequence[int],
    latent_dim: int,
    hidden_features: int | Sequence[int] = (256, 256),
    activation: str = "silu",
) -> tuple[nn.Module, nn.Module]:
    r"""Plain MLP encoder :math:`D \to \dots \to d` and its mirror-image decoder.

    Arguments:
        data_shape: The data shape (flattened to :math:`D`).
        latent_dim: The latent size :math:`d`.
        hidden_features: The encoder's hidden widths; the decoder uses them reversed.
        activation: The activation name.

    Returns:
        The pair ``(encoder, decoder)``.

    Example:
        >>> f, g = mlp_autoencoder((2,), 1, hidden_features=(32, 32))
        >>> g(f(torch.randn(4, 2))).shape
        torch.Size([4, 2])
    """

    D = numel(data_shape)
    widths = _widths(hidden_features)
    head, tail = _flat_ends(data_shape)

    encoder = nn.Sequential(*head, MLP(D, latent_dim, widths, activation))
    decoder = nn.Sequential(MLP(latent_dim, D, widths[::-1], activation), *tail)

    return encoder, decoder


@register_architecture("toy_resnet")
def toy_resnet_autoencoder(
    data_shape: Sequence[int],
    latent_dim: int,
    n_blocks: int = 4,
    hidden_features: int | Sequence[int] = 256,
    activation: str = "silu",
) -> tuple[nn.Module, nn.Module]:
    r"""The toy ResNet autoencoder of FIF App. E.1.1 (sinusoid, :math:`D = 2`, :math:`d = 1`).

    The paper: "four residual blocks and a 1D latent space [...] Each residual block is made up of a
    feedforward network with one hidden layer of width 256". The paper does not say how the width
    changes from :math:`D` to :math:`d`; we follow the authors' public ResNet model: the encoder is
    ``n_blocks`` residual blocks in data space followed by a linear projection ``Linear(D, d)``; the
    decoder is ``Linear(d, D)`` followed by ``n_blocks`` residual blocks with separate parameters.
    The activation is not stated in the paper; SiLU (smooth, as suits Jacobian-based losses) is the
    default.

    Arguments:
        data_shape: The data shape (flattened to :math:`D`).
        latent_dim: The latent size :math:`d`.
        n_blocks: The number of residual blocks in each of encoder and decoder.
        hidden_features: The hidden widths of each block's residual branch.
        activation: The activation name.

    Returns:
        The pair ``(encoder, decoder)``.

    Example:
        >>> f, g = toy_resnet_autoencoder((2,), 1)
        >>> g(f(torch.randn(4, 2))).shape
        torch.Size([4, 2])
    """

    D = numel(data_shape)
    widths = _widths(hidden_features)
    head, tail = _flat_ends(data_shape)

    encoder = nn.Sequential(
        *head,
        LatentResNet(D, n_blocks, widths, activation),
        nn.Linear(D, latent_dim),
    )
    decoder = nn.Sequential(
        nn.Linear(latent_dim, D),
        LatentResNet(D, n_blocks, widths[::-1], activation),
        *tail,
    )

    return encoder, decoder


@register_architecture("tabular")
def tabular_autoencoder(
    data_shape: Sequence[int],
    latent_dim: int,
    hidden_features: int | Sequence[int] = (256, 256),
    n_blocks: int = 2,
    block_hidden_features: int | Sequence[int] = (256, 256),
    activation: str = "relu",
) -> tuple[nn.Module, nn.Module]:
    r"""The tabular autoencoder of FIF App. E.2 (POWER, GAS, HEPMASS, MINIBOONE).

    Encoder: an MLP :math:`D \to 256 \to 256 \to d` with ReLU and no normalisation layers, then a
    ResNet of two blocks in latent space, each with two hidden layers of 256 and ReLU. Decoder: "the
    inverse", i.e. an identical latent ResNet (separate parameters) followed by an MLP
    :math:`d \to 256 \to 256 \to D`.

    Arguments:
        data_shape: The data shape (flattened to :math:`D`).
        latent_dim: The latent size :math:`d` (paper: 3, 2, 10, 21 for POWER, GAS, HEPMASS,
            MINIBOONE; table 5).
        hidden_features: The hidden widths of the MLP part.
        n_blocks: The number of latent residual blocks in each of encoder and decoder.
        block_hidden_features: The hidden widths of each block's residual branch.
        activation: The activation name.

    Returns:
        The pair ``(encoder, decoder)``.

    Example:
        >>> f, g = tabular_autoencoder((6,), 3)
        >>> g(f(torch.randn(4, 6))).shape
        torch.Size([4, 6])
    """

    D = numel(data_shape)
    widths = _widths(hidden_features)
    block_widths = _widths(block_hidden_features, "block_hidden_features")
    head, tail = _flat_ends(data_shape)

    encoder = nn.Sequential(
        *head,
        MLP(D, latent_dim, widths, activation),
        LatentResNet(latent_dim, n_blocks, block_widths, activation),
    )
    decoder = nn.Sequential(
        LatentResNet(latent_dim, n_blocks, block_widths[::-1], activation),
        MLP(latent_dim, D, widths[::-1], activation),
        *tail,
    )

    return encoder, decoder
