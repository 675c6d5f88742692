r"""FIF-ConvNet: a conv autoencoder followed by fully connected latent ResNet blocks (FIF table 11).

References:
    | Free-form Injective Flows (Sorrenson, Draxler et al., ICLR 2024), App. E.3, table 11
    | https://arxiv.org/abs/2306.01843
"""

__all__ = ["fif_convnet_autoencoder"]

from collections.abc import Sequence

import torch  # noqa: F401 (used by the examples)
import torch.nn as nn

from .conv import conv_block, select_variant
from .core import Flatten, Unflatten
from .dense import LatentResNet
from .registry import register_architecture

MNIST, CELEBA = (1, 28, 28), (3, 64, 64)

# Per variant: the default channel factor c (encoder channels c, 2c, 4c, 8c) and ResBlock width.
_DEFAULTS = {"mnist": (32, 512), "celeba": (128, 256)}


def _check_positive(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


@register_architecture("fif_convnet")
def fif_convnet_autoencoder(
    data_shape: Sequence[int],
    latent_dim: int,
    channel_factor: int | None = None,
    n_blocks: int = 4,
    block_width: int | None = None,
    batch_norm: bool = True,
) -> tuple[nn.Module, nn.Module]:
    r"""FIF-ConvNet (FIF paper table 11) for MNIST or CelebA 64x64.

    Encoder: four ``Conv(k=4, s=2, p=1)`` + BN + ReLU with :math:`c, 2c, 4c, 8c` channels, a linear
    map to :math:`d`, then ``n_blocks`` fully connected residual blocks
    :math:`\mathrm{ResBlock}(w)` = Linear(d, w), SiLU, Linear(w, w), SiLU, Linear(w, d) + skip.
    Decoder: ``n_blocks`` such blocks (separate parameters), a linear map to an
    :math:`8c`-channel feature map and transposed convolutions back to the image.

    * CelebA (:math:`c = 128`, :math:`w = 256`): the convolutional part is exactly the Pythae
      ConvNet of table 9 (8 -> 15 -> 31 -> 62 -> 64 in the decoder). With :math:`d = 64` (the
      bottleneck of App. E.3) the count is table 11's 34.3M.
    * MNIST (:math:`c = 32`, :math:`w = 512`): 28 -> 14 -> 7 -> 3 -> 1 (256 features) in the
      encoder; ``Linear(d, 4096)`` to :math:`256 \times 4 \times 4`, then
      ``ConvT(256 -> 128, 3, 2, p=1)`` + BN + ReLU (4 -> 7), ``ConvT(128 -> 64, 3, 2, p=1, op=1)`` +
      BN + ReLU (-> 14), ``ConvT(64 -> 1, 3, 2, p=1, op=1)`` + Sigmoid (-> 28). Table 11 lists a
      fourth row, "ConvT(256, 3, 2)", which is the 256-channel map the linear layer produces (an
      extra 256 -> 256 layer would add 0.59M parameters, past the table's total, and could not
      reach 28x28 with the stride-2 "Conv(1, 3, 2)" that follows); like table 9, it calls the last
      transposed convolution "Conv". Any :math:`d` from 7 to 14 gives table 11's 3.3M; we state
      :math:`d = 10` (3,294,843 parameters). The authors' public MNIST config uses :math:`d = 5`
      and no BatchNorm (3.23M).

    Arguments:
        data_shape: ``(1, 28, 28)`` or ``(3, 64, 64)``.
        latent_dim: The latent size :math:`d` (CelebA: 64; MNIST: see above).
        channel_factor: :math:`c`; ``None`` for the table's value (32 MNIST, 128 CelebA). The
            conditional-MNIST net of App. E.1.2 has four times as many channels (:math:`c = 128`).
        n_blocks: The number of latent residual blocks in each of encoder and decoder.
        block_width: :math:`w`; ``None`` for the table's value (512 MNIST, 256 CelebA).
        batch_norm: Whether the (transposed) convolutions are followed by BatchNorm.

    Returns:
        The pair ``(encoder, decoder)``.

    Example:
        >>> f, g = fif_convnet_autoencoder((1, 28, 28), 10)
        >>> g(f(torch.rand(2, 1, 28, 28))).shape
        torch.Size([2, 1, 28, 28])
    """

    variant = select_variant("fif_convnet", data_shape, {MNIST: "mnist", CELEBA: "celeba"})
    default_c, default_w = _DEFAULTS[variant]
    c = default_c if channel_factor is None else channel_factor
    w = default_w if block_width is None else block_width

    _check_positive("channel_factor", c)
    _check_positive("block_width", w)
    if not isinstance(batch_norm, bool):
        raise ValueError(f"batch_norm must be a bool, got {batch_norm!r}")

    C = data_shape[0]
    widths = (C, c, 2 * c, 4 * c, 8 * c)
    side = 1 if variant == "mnist" else 4  # encoder output: MNIST 28 -> 1, CelebA 64 -> 4

    encoder = nn.Sequential(
        *(
            conv_block(nn.Conv2d(a, b, 4, 2, padding=1), b, batch_norm=batch_norm, activation="relu")
            for a, b in zip(widths[:-1], widths[1:])
        ),
        Flatten(),
        nn.Linear(8 * c * side * side, latent_dim),
        LatentResNet(latent_dim, n_blocks, (w, w), "silu"),
    )

    def up(a: int, b: int, *args, **kwargs) -> nn.Module:
        return conv_block(nn.ConvTranspose2d(a, b, *args, **kwargs), b, batch_norm=batch_norm)

    if variant == "mnist":
        convs = [
            nn.Linear(latent_dim, 8 * c * 4 * 4),
            Unflatten((8 * c, 4, 4)),
            up(8 * c, 4 * c, 3, 2, padding=1),  # 4 -> 7
            up(4 * c, 2 * c, 3, 2, padding=1, output_padding=1),  # -> 14
            nn.ConvTranspose2d(2 * c, C, 3, 2, padding=1, output_padding=1),  # -> 28
            nn.Sigmoid(),
        ]
    else:
        convs = [
            nn.Linear(latent_dim, 8 * c * 8 * 8),
            Unflatten((8 * c, 8, 8)),
            up(8 * c, 4 * c, 5, 2, padding=2),  # 8 -> 15
            up(4 * c, 2 * c, 5, 2, padding=1),  # -> 31
            up(2 * c, c, 5, 2, padding=2, output_padding=1),  # -> 62
            nn.ConvTranspose2d(c, C, 5, 1, padding=1),  # -> 64
            nn.Sigmoid(),
        ]

    decoder = nn.Sequential(LatentResNet(latent_dim, n_blocks, (w, w), "silu"), *convs)

    return encoder, decoder
