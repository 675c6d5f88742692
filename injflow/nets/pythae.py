r"""The Pythae benchmark's ConvNet and ResNet autoencoders (FIF paper tables 9 and 10).

The FIF paper reruns the benchmark of Chadebec et al. (2022) with its open-source nets, which it
replicates in tables 9 and 10. The layer details the tables leave out (paddings, output paddings,
where activations sit) follow the published benchmark code; they fix the spatial sizes and hence
the parameter counts. Latent sizes of the benchmark: :math:`d = 16` (MNIST), 256 (CIFAR-10) and
64 (CelebA 64x64); with them the counts equal the tables' 17.2M / 39.4M / 33.5M (ConvNet) and
0.73M / 4.8M / 1.6M (ResNet).

References:
    | Pythae: Unifying Generative Autoencoders in Python (Chadebec et al., NeurIPS 2022)
    | https://arxiv.org/abs/2206.08309
"""

__all__ = ["pythae_convnet_autoencoder", "pythae_resnet_autoencoder"]

from collections.abc import Sequence

import torch  # noqa: F401 (used by the examples)
import torch.nn as nn

from .conv import ConvResBlock, conv_block, select_variant
from .core import Flatten, Unflatten
from .registry import register_architecture

MNIST, CIFAR, CELEBA = (1, 28, 28), (3, 32, 32), (3, 64, 64)


def _convnet_encoder(channels: int, latent_dim: int, flat: int) -> nn.Sequential:
    # Table 9, layers 1-5 (identical for the three data sets up to the input channels):
    # Conv(128|256|512|1024, 4, 2) + BN + ReLU, padding 1, halving the size; then a linear map.
    # MNIST: 28 -> 14 -> 7 -> 3 -> 1 (1024 features); CIFAR: 32 -> 2 (4096); CelebA: 64 -> 4 (16384).
    widths = (channels, 128, 256, 512, 1024)

    return nn.Sequential(
        *(
            conv_block(nn.Conv2d(a, b, 4, 2, padding=1), b, activation="relu")
            for a, b in zip(widths[:-1], widths[1:])
        ),
        Flatten(),
        nn.Linear(flat, latent_dim),
    )


@register_architecture("pythae_convnet")
def pythae_convnet_autoencoder(
    data_shape: Sequence[int],
    latent_dim: int,
) -> tuple[nn.Module, nn.Module]:
    r"""The Pythae benchmark ConvNet (FIF paper table 9) for MNIST, CIFAR-10 or CelebA 64x64.

    Quirks reproduced from the benchmark code:

    * MNIST decoder: the table's last layer "Conv(1, 3, 2), Sigmoid" is in fact a *transposed*
      convolution ``ConvT(256 -> 1, 3, 2, padding=1, output_padding=1)`` (14 -> 28); a strided
      convolution could not upsample. The parameter count is the same either way.
    * CIFAR-10 decoder: the last layer "Conv(3, 4, 1)" is likewise ``ConvT(256 -> 3, 4, 1,
      padding=2)``, which undoes the previous layer's overshoot (8 -> 16 -> 33 -> 32).
    * CelebA decoder: uneven paddings 8 -> 15 -> 31 -> 62 -> 64 (``ConvT(1024 -> 512, 5, 2, p=2)``,
      ``ConvT(512 -> 256, 5, 2, p=1)``, ``ConvT(256 -> 128, 5, 2, p=2, op=1)``,
      ``ConvT(128 -> 3, 5, 1, p=1)``).
    * The decoders' first linear layer has no BatchNorm or activation.

    Arguments:
        data_shape: ``(1, 28, 28)``, ``(3, 32, 32)`` or ``(3, 64, 64)``.
        latent_dim: The latent size :math:`d` (benchmark: 16, 256, 64).

    Returns:
        The pair ``(encoder, decoder)``.

    Example:
        >>> f, g = pythae_convnet_autoencoder((1, 28, 28), 16)
        >>> g(f(torch.rand(2, 1, 28, 28))).shape
        torch.Size([2, 1, 28, 28])
    """

    variant = select_variant("pythae_convnet", data_shape, {MNIST: "mnist", CIFAR: "cifar", CELEBA: "celeba"})
    C = data_shape[0]

    if variant == "mnist":
        encoder = _convnet_encoder(C, latent_dim, 1024 * 1 * 1)
        decoder = nn.Sequential(
            nn.Linear(latent_dim, 1024 * 4 * 4),  # 16384
            Unflatten((1024, 4, 4)),
            conv_block(nn.ConvTranspose2d(1024, 512, 3, 2, padding=1), 512),  # 4 -> 7
            conv_block(nn.ConvTranspose2d(512, 256, 3, 2, padding=1, output_padding=1), 256),  # -> 14
            conv_block(  # -> 28; listed as "Conv(1, 3, 2)" in table 9
                nn.ConvTranspose2d(256, C, 3, 2, padding=1, output_padding=1),
                C,
                batch_norm=False,
                activation="sigmoid",
            ),
        )
    elif variant == "cifar":
        encoder = _convnet_encoder(C, latent_dim, 1024 * 2 * 2)
        decoder = nn.Sequential(
            nn.Linear(latent_dim, 1024 * 8 * 8),  # 65536
            Unflatten((1024, 8, 8)),
            conv_block(nn.ConvTranspose2d(1024, 512, 4, 2, padding=1), 512),  # 8 -> 16
            conv_block(nn.ConvTranspose2d(512, 256, 4, 2, padding=1, output_padding=1), 256),  # -> 33
            conv_block(  # -> 32; listed as "Conv(3, 4, 1)" in table 9
                nn.ConvTranspose2d(256, C, 4, 1, padding=2),
                C,
                batch_norm=False,
                activation="sigmoid",
            ),
        )
    else:
        encoder = _convnet_encoder(C, latent_dim, 1024 * 4 * 4)
        decoder = nn.Sequential(
            nn.Linear(latent_dim, 1024 * 8 * 8),  # 65536
            Unflatten((1024, 8, 8)),
            conv_block(nn.ConvTranspose2d(1024, 512, 5, 2, padding=2), 512),  # 8 -> 15
            conv_block(nn.ConvTranspose2d(512, 256, 5, 2, padding=1), 256),  # -> 31
            conv_block(nn.ConvTranspose2d(256, 128, 5, 2, padding=2, output_padding=1), 128),  # -> 62
            conv_block(  # -> 64
                nn.ConvTranspose2d(128, C, 5, 1, padding=1),
                C,
                batch_norm=False,
                activation="sigmoid",
            ),
        )

    return encoder, decoder


def _res_blocks(n: int = 2) -> nn.Sequential:
    return nn.Sequential(*(ConvResBlock(128, 32) for _ in range(n)))


@register_architecture("pythae_resnet")
def pythae_resnet_autoencoder(
    data_shape: Sequence[int],
    latent_dim: int,
) -> tuple[nn.Module, nn.Module]:
    r"""The Pythae benchmark ResNet (FIF paper table 10) for MNIST, CIFAR-10 or CelebA 64x64.

    Every ``ResBlock`` is ReLU, Conv(128 -> 32, 3, 1), ReLU, Conv(32 -> 128, 1, 1) plus a skip
    (:class:`~injflow.nets.conv.ConvResBlock`). No BatchNorm anywhere. Quirks reproduced from the
    benchmark code:

    * The encoders' strided convolutions have *no* activation between them; the only
      nonlinearities before the final linear map are the ReLUs inside the residual blocks.
    * MNIST decoder: ReLU after the second residual block and after ``ConvT(128 -> 64)``; none after
      the first ``ConvT(128 -> 128)`` (4 -> 7 -> 14 -> 28).
    * CIFAR-10 decoder: no activation between the residual blocks and ``ConvT(128 -> 64, 4, 2)``,
      nor after it (8 -> 16 -> 32).
    * CelebA decoder: table 10 lists "Layer 6" twice: the decoder has seven layers, Linear,
      ``ConvT(128 -> 128, 3, 2)``, two residual blocks, ``ConvT(128 -> 128, 5, 2)`` *with a Sigmoid
      in the middle of the net*, ``ConvT(128 -> 64, 5, 2, output_padding=1)`` and
      ``ConvT(64 -> 3, 4, 2)`` + Sigmoid (4 -> 7 -> 15 -> 32 -> 64). The table also puts a Sigmoid
      after ``ConvT(128 -> 64)``; the benchmark code has no activation there, and we follow the
      code (the parameter count is the same).

    Arguments:
        data_shape: ``(1, 28, 28)``, ``(3, 32, 32)`` or ``(3, 64, 64)``.
        latent_dim: The latent size :math:`d` (benchmark: 16, 256, 64).

    Returns:
        The pair ``(encoder, decoder)``.

    Example:
        >>> f, g = pythae_resnet_autoencoder((3, 32, 32), 256)
        >>> g(f(torch.rand(2, 3, 32, 32))).shape
        torch.Size([2, 3, 32, 32])
    """

    variant = select_variant("pythae_resnet", data_shape, {MNIST: "mnist", CIFAR: "cifar", CELEBA: "celeba"})
    C = data_shape[0]

    if variant == "mnist":
        encoder = nn.Sequential(
            nn.Conv2d(C, 64, 4, 2, padding=1),  # 28 -> 14
            nn.Conv2d(64, 128, 4, 2, padding=1),  # -> 7
            nn.Conv2d(128, 128, 3, 2, padding=1),  # -> 4
            _res_blocks(),
            Flatten(),
            nn.Linear(128 * 4 * 4, latent_dim),  # 2048
        )
        decoder = nn.Sequential(
            nn.Linear(latent_dim, 128 * 4 * 4),
            Unflatten((128, 4, 4)),
            nn.ConvTranspose2d(128, 128, 3, 2, padding=1),  # 4 -> 7
            _res_blocks(),
            nn.ReLU(),
            nn.ConvTranspose2d(128, 64, 3, 2, padding=1, output_padding=1),  # -> 14
            nn.ReLU(),
            nn.ConvTranspose2d(64, C, 3, 2, padding=1, output_padding=1),  # -> 28
            nn.Sigmoid(),
        )
    elif variant == "cifar":
        encoder = nn.Sequential(
            nn.Conv2d(C, 64, 4, 2, padding=1),  # 32 -> 16
            nn.Conv2d(64, 128, 4, 2, padding=1),  # -> 8
            nn.Conv2d(128, 128, 3, 1, padding=1),  # -> 8
            _res_blocks(),
            Flatten(),
            nn.Linear(128 * 8 * 8, latent_dim),  # 8192
        )
        decoder = nn.Sequential(
            nn.Linear(latent_dim, 128 * 8 * 8),
            Unflatten((128, 8, 8)),
            _res_blocks(),
            nn.ConvTranspose2d(128, 64, 4, 2, padding=1),  # 8 -> 16
            nn.ConvTranspose2d(64, C, 4, 2, padding=1),  # -> 32
            nn.Sigmoid(),
        )
    else:
        encoder = nn.Sequential(
            nn.Conv2d(C, 64, 4, 2, padding=1),  # 64 -> 32
            nn.Conv2d(64, 128, 4, 2, padding=1),  # -> 16
            nn.Conv2d(128, 128, 3, 2, padding=1),  # -> 8
            nn.Conv2d(128, 128, 3, 2, padding=1),  # -> 4
            _res_blocks(),
            Flatten(),
            nn.Linear(128 * 4 * 4, latent_dim),  # 2048
        )
        decoder = nn.Sequential(
            nn.Linear(latent_dim, 128 * 4 * 4),
            Unflatten((128, 4, 4)),
            nn.ConvTranspose2d(128, 128, 3, 2, padding=1),  # 4 -> 7
            _res_blocks(),
            nn.ConvTranspose2d(128, 128, 5, 2, padding=1),  # -> 15
            nn.Sigmoid(),  # sic: a Sigmoid inside the decoder, as in the benchmark
            nn.ConvTranspose2d(128, 64, 5, 2, padding=1, output_padding=1),  # -> 32
            nn.ConvTranspose2d(64, C, 4, 2, padding=1),  # -> 64
            nn.Sigmoid(),
        )

    return encoder, decoder
