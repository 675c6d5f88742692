r"""The conv encoders/decoders of Kumar, Poole & Murphy (2020), appendix A (ELU + BatchNorm).

References:
    | Regularized Autoencoders via Relaxed Injective Probability Flow (Kumar et al., AISTATS 2020)
    | https://arxiv.org/abs/2002.08927
"""

__all__ = ["same_conv", "same_conv_transpose", "kumar_conv_autoencoder"]

import math
from collections.abc import Sequence

import torch  # noqa: F401 (used by the examples)
import torch.nn as nn

from .conv import Crop, conv_block, select_variant
from .core import Flatten, Unflatten
from .normalization import BatchNorm2d
from .registry import register_architecture

MNIST, CIFAR, CELEBA = (1, 28, 28), (3, 32, 32), (3, 64, 64)


def same_conv(in_channels: int, out_channels: int, kernel: int, stride: int, size: int) -> tuple[nn.Module, int]:
    r"""A convolution with TensorFlow's ``padding="same"`` for a known input size.

    The output size is :math:`\lceil n / s \rceil`; the padding is split as TensorFlow does (the
    extra pixel, if any, at the bottom/right), which :class:`torch.nn.Conv2d` cannot express
    with strides > 1, hence an explicit :class:`torch.nn.ZeroPad2d` when it is uneven.

    Arguments:
        in_channels: The input channels.
        out_channels: The output channels.
        kernel: The (square) kernel size.
        stride: The stride.
        size: The (square) input size :math:`n`.

    Returns:
        The layer and its output size.

    Example:
        >>> conv, n = same_conv(1, 8, 4, 2, 7)
        >>> n, conv(torch.zeros(1, 1, 7, 7)).shape
        (4, torch.Size([1, 8, 4, 4]))
    """

    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    before, after = total // 2, total - total // 2

    if before == after:
        return nn.Conv2d(in_channels, out_channels, kernel, stride, padding=before), out

    return (
        nn.Sequential(
            nn.ZeroPad2d((before, after, before, after)),
            nn.Conv2d(in_channels, out_channels, kernel, stride),
        ),
        out,
    )


def same_conv_transpose(
    in_channels: int, out_channels: int, kernel: int, stride: int, size: int
) -> tuple[nn.Module, int]:
    r"""A transposed convolution with TensorFlow's ``padding="same"`` for a known input size.

    The output size is :math:`n s`: the full output :math:`(n - 1) s + k` is cropped by
    :math:`k - s` pixels, split as TensorFlow does; uneven crops use :class:`Crop`.

    Arguments:
        in_channels: The input channels.
        out_channels: The output channels.
        kernel: The (square) kernel size.
        stride: The stride.
        size: The (square) input size :math:`n`.

    Returns:
        The layer and its output size.

    Example:
        >>> convt, n = same_conv_transpose(8, 4, 4, 1, 7)
        >>> n, convt(torch.zeros(1, 8, 7, 7)).shape
        (7, torch.Size([1, 4, 7, 7]))
    """

    total = max(kernel - stride, 0)
    before, after = total // 2, total - total // 2

    if before == after:
        layer = nn.ConvTranspose2d(in_channels, out_channels, kernel, stride, padding=before)
    else:
        layer = nn.Sequential(
            nn.ConvTranspose2d(in_channels, out_channels, kernel, stride),
            Crop(before, after, before, after),
        )

    return layer, size * stride


# Appendix A, per data set: encoder convs (filters, kernel, stride), each + BN + ELU, then FC_d;
# decoder: FC to (channels, size, size) + BN + ELU, then transposed convs (filters, kernel, stride,
# BN?) + ELU, then the output layer (kind, kernel, stride) + Sigmoid.
_SPECS = {
    "mnist": {
        "encoder": [(64, 4, 1), (128, 4, 2), (256, 4, 2), (512, 4, 2), (512, 4, 1)],
        "fc": (256, 7),
        "decoder": [(512, 4, 1, True), (256, 4, 1, True), (128, 4, 2, True), (64, 4, 2, False)],
        # The paper prints "ConvT_{64,4,1}" here, which cannot output a 1-channel image: we use
        # ConvT_{1,4,1} (same kernel and stride, one filter per image channel).
        "output": ("convt", 4, 1),
    },
    "cifar": {
        "encoder": [(128, 4, 1), (256, 4, 2), (512, 4, 2), (1024, 4, 2), (1024, 4, 1)],
        "fc": (512, 8),
        # The paper prints stride 2 for the last two ConvT_{128}, which would upsample 8x8 to
        # 128x128; with the FC's 8x8 start, only two stride-2 layers reach 32x32, so the last two
        # use stride 1 (kernel and filters as printed: the parameter count is unchanged).
        "decoder": [(1024, 4, 1, True), (512, 4, 2, True), (256, 4, 2, True), (128, 4, 1, False), (128, 4, 1, False)],
        "output": ("conv", 1, 1),
    },
    "celeba": {
        "encoder": [(128, 5, 1), (256, 5, 2), (512, 5, 2), (1024, 5, 2), (1024, 5, 2)],
        "fc": (512, 16),
        # As for CIFAR-10: 16x16 with four stride-2 layers would give 256x256; the last two
        # ConvT_{128,5} use stride 1 to reach 64x64.
        "decoder": [(1024, 5, 1, True), (512, 5, 2, True), (256, 5, 2, True), (128, 5, 1, False), (128, 5, 1, False)],
        "output": ("conv", 5, 1),
    },
}


@register_architecture("kumar_conv")
def kumar_conv_autoencoder(
    data_shape: Sequence[int],
    latent_dim: int,
) -> tuple[nn.Module, nn.Module]:
    r"""The conv autoencoder of Kumar et al. (2020), App. A, for MNIST, CIFAR-10 or CelebA 64x64.

    Five convolutions with BatchNorm and ELU, then a dense layer to the latent space; the decoder
    is a dense layer to a feature map, BatchNorm, ELU, five transposed convolutions (the last two
    without BatchNorm) and an output layer with a Sigmoid. The paper's latent sizes are
    :math:`d = 32` (MNIST) and 128 (CIFAR-10, CelebA).

    The paper gives filters, kernel sizes and strides only. We use TensorFlow-style "same"
    padding (output size :math:`\lceil n/s \rceil`, as in the Keras code of Ghosh et al. (2019)
    that the architecture extends), and BatchNorm over channels after the decoder's dense layer.
    Two printed details cannot be right and are fixed (see the comments in ``_SPECS``): the MNIST
    output layer has 1 filter instead of 64, and the CIFAR-10/CelebA decoders' last two
    ``ConvT_{128}`` layers use stride 1 so that the output has the data's size.

    Arguments:
        data_shape: ``(1, 28, 28)``, ``(3, 32, 32)`` or ``(3, 64, 64)``.
        latent_dim: The latent size :math:`d` (paper: 32, 128, 128).

    Returns:
        The pair ``(encoder, decoder)``.

    Example:
        >>> f, g = kumar_conv_autoencoder((1, 28, 28), 32)
        >>> g(f(torch.rand(2, 1, 28, 28))).shape
        torch.Size([2, 1, 28, 28])
    """

    spec = _SPECS[select_variant("kumar_conv", data_shape, {MNIST: "mnist", CIFAR: "cifar", CELEBA: "celeba"})]
    C, size = data_shape[0], data_shape[1]

    # Encoder
    layers, channels = [], C
    for filters, kernel, stride in spec["encoder"]:
        conv, size = same_conv(channels, filters, kernel, stride, size)
        layers.append(conv_block(conv, filters, activation="elu"))
        channels = filters

    encoder = nn.Sequential(*layers, Flatten(), nn.Linear(channels * size * size, latent_dim))

    # Decoder
    channels, size = spec["fc"]
    layers = [
        nn.Linear(latent_dim, channels * size * size),
        Unflatten((channels, size, size)),
        BatchNorm2d(channels),
        nn.ELU(),
    ]
    for filters, kernel, stride, batch_norm in spec["decoder"]:
        convt, size = same_conv_transpose(channels, filters, kernel, stride, size)
        layers.append(conv_block(convt, filters, batch_norm=batch_norm, activation="elu"))
        channels = filters

    kind, kernel, stride = spec["output"]
    if kind == "convt":
        out, size = same_conv_transpose(channels, C, kernel, stride, size)
    else:
        out, size = same_conv(channels, C, kernel, stride, size)
    layers.append(conv_block(out, C, batch_norm=False, activation="sigmoid"))

    decoder = nn.Sequential(*layers)

    return encoder, decoder
