r"""Architectures: plain :class:`torch.nn.Module` encoder/decoder pairs built from small specs.

Use :func:`build_autoencoder` to get an ``(encoder, decoder)`` pair by name; every pair is
shape-checked when it is built. See ``docs/architectures.md`` for layer lists, latent sizes and
parameter counts against the papers' tables.

Example:
    >>> from injflow.nets import build_autoencoder
    >>> f, g = build_autoencoder("tabular", data_shape=(6,), latent_dim=3)
"""

__all__ = [
    "ARCHITECTURES",
    "register_architecture",
    "build_autoencoder",
    "available_architectures",
    "architecture_options",
    "count_parameters",
    "MLP",
    "ResBlock",
    "LatentResNet",
    "ConvResBlock",
    "mlp_autoencoder",
    "toy_resnet_autoencoder",
    "tabular_autoencoder",
    "kumar_conv_autoencoder",
    "pythae_convnet_autoencoder",
    "pythae_resnet_autoencoder",
    "fif_convnet_autoencoder",
    "Bijection",
    "InjectiveEncoder",
    "InjectiveDecoder",
    "InjectiveFlowNet",
    "injective_coupling_autoencoder",
    "trumpet_autoencoder",
    "BatchNorm1d",
    "BatchNorm2d",
    "use_composite_batchnorm",
    "GaussianEncoder",
]

from .conv import ConvResBlock
from .core import count_parameters
from .dense import MLP, LatentResNet, ResBlock, mlp_autoencoder, tabular_autoencoder, toy_resnet_autoencoder
from .fif_convnet import fif_convnet_autoencoder
from .invertible import (
    Bijection,
    InjectiveDecoder,
    InjectiveEncoder,
    InjectiveFlowNet,
    injective_coupling_autoencoder,
    trumpet_autoencoder,
)
from .kumar import kumar_conv_autoencoder
from .normalization import BatchNorm1d, BatchNorm2d, use_composite_batchnorm
from .pythae import pythae_convnet_autoencoder, pythae_resnet_autoencoder
from .registry import ARCHITECTURES, architecture_options, available_architectures, build_autoencoder, register_architecture
from .variance import GaussianEncoder
