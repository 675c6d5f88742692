r"""Convolutional building blocks shared by the image architectures."""

__all__ = ["conv_block", "ConvResBlock", "Crop", "select_variant"]

from collections.abc import Mapping, Sequence
from typing import TypeVar

import torch  # noqa: F401 (used by the examples)
import torch.nn as nn
from torch import Tensor

from .core import make_activation
from .normalization import BatchNorm2d

V = TypeVar("V")


def conv_block(
    layer: nn.Module,
    channels: int,
    *,
    batch_norm: bool = True,
    activation: str | None = "relu",
) -> nn.Sequential:
    r"""Wraps a (transposed) convolution as ``layer -> [BatchNorm2d] -> [activation]``.

    Arguments:
        layer: The convolution or transposed convolution.
        channels: Its number of output channels (for the BatchNorm).
        batch_norm: Whether to add a BatchNorm (:class:`injflow.nets.normalization.BatchNorm2d`, the
            fused torch module's drop-in twin with correct higher-order derivatives).
        activation: An activation name, ``"sigmoid"``, or ``None`` for no activation.

    Returns:
        The block.

    Example:
        >>> block = conv_block(nn.Conv2d(1, 8, 4, 2, padding=1), 8)
        >>> block(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 8, 14, 14])
    """

    layers = [layer]
    if batch_norm:
        layers.append(BatchNorm2d(channels))
    if activation == "sigmoid":
        layers.append(nn.Sigmoid())
    elif activation is not None:
        layers.append(make_activation(activation))

    return nn.Sequential(*layers)


class ConvResBlock(nn.Module):
    r"""The Pythae benchmark's convolutional residual block (FIF paper table 10, footnote).

    :math:`x \mapsto x + \mathrm{Conv}_{1\times1}(\mathrm{ReLU}(\mathrm{Conv}_{3\times3}(\mathrm{ReLU}(x))))`,
    with the :math:`3\times3` convolution going to ``hidden_channels`` (32) and the :math:`1\times1`
    back to ``channels`` (128). Note the ReLU *before* the first convolution (pre-activation).

    Arguments:
        channels: The input and output channels.
        hidden_channels: The channels of the inner :math:`3\times3` convolution.

    Example:
        >>> block = ConvResBlock(128, 32)
        >>> block(torch.zeros(2, 128, 4, 4)).shape
        torch.Size([2, 128, 4, 4])
    """

    def __init__(self, channels: int = 128, hidden_channels: int = 32) -> None:
        super().__init__()

        self.branch = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, hidden_channels, 3, 1, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden_channels, channels, 1, 1, padding=0),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.branch(x)


class Crop(nn.Module):
    r"""Crops the two spatial dimensions: ``x[..., top:H-bottom, left:W-right]``.

    Used where a TensorFlow-style "same" transposed convolution needs an asymmetric crop
    that :class:`torch.nn.ConvTranspose2d`'s symmetric ``padding`` cannot express.

    Arguments:
        left, right, top, bottom: The number of pixels removed on each side.

    Example:
        >>> Crop(1, 2, 1, 2)(torch.zeros(1, 3, 10, 10)).shape
        torch.Size([1, 3, 7, 7])
    """

    def __init__(self, left: int, right: int, top: int, bottom: int) -> None:
        super().__init__()

        self.sides = (left, right, top, bottom)

    def extra_repr(self) -> str:
        return "left={}, right={}, top={}, bottom={}".format(*self.sides)

    def forward(self, x: Tensor) -> Tensor:
        left, right, top, bottom = self.sides
        H, W = x.shape[-2:]

        return x[..., top : H - bottom, left : W - right]


def select_variant(
    architecture: str,
    data_shape: Sequence[int],
    variants: Mapping[tuple[int, ...], V],
) -> V:
    r"""Picks a data-set variant of an image architecture from the data shape.

    Arguments:
        architecture: The architecture name (for the error message).
        data_shape: The data shape :math:`(C, H, W)`.
        variants: A mapping from supported shapes to variants.

    Returns:
        The variant for ``data_shape``.

    Example:
        >>> select_variant("net", (1, 28, 28), {(1, 28, 28): "mnist"})
        'mnist'
    """

    data_shape = tuple(data_shape)

    if data_shape not in variants:
        supported = ", ".join(str(s) for s in variants)
        raise ValueError(
            f"architecture {architecture!r} does not support data_shape {data_shape}; "
            f"supported data shapes: {supported}"
        )

    return variants[data_shape]
