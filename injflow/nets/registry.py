r"""The single entry point other code uses: :func:`build_autoencoder` by architecture name."""

__all__ = ["build_autoencoder", "available_architectures", "architecture_options"]

import inspect
import operator

import torch  # noqa: F401 (used by the examples)
import torch.nn as nn

from collections.abc import Callable, Sequence
from typing import Any

from .core import check_autoencoder, numel
from .dense import mlp_autoencoder, tabular_autoencoder, toy_resnet_autoencoder
from .fif_convnet import fif_convnet_autoencoder
from .invertible import injective_coupling_autoencoder, trumpet_autoencoder
from .kumar import kumar_conv_autoencoder
from .pythae import pythae_convnet_autoencoder, pythae_resnet_autoencoder

# name -> builder(data_shape, latent_dim, **options) -> (encoder, decoder). The builder's keyword
# parameters (besides data_shape and latent_dim) are exactly the accepted options.
_BUILDERS: dict[str, Callable[..., tuple[nn.Module, nn.Module]]] = {
    "mlp": mlp_autoencoder,
    "toy_resnet": toy_resnet_autoencoder,
    "tabular": tabular_autoencoder,
    "kumar_conv": kumar_conv_autoencoder,
    "pythae_convnet": pythae_convnet_autoencoder,
    "pythae_resnet": pythae_resnet_autoencoder,
    "fif_convnet": fif_convnet_autoencoder,
    "injective_coupling": injective_coupling_autoencoder,  # rectangular flow / DNF: w ∘ pad ∘ h (FIF eq. 1)
    "trumpet": trumpet_autoencoder,  # Kothari et al. 2021
}


def available_architectures() -> list[str]:
    r"""Lists the architecture names :func:`build_autoencoder` accepts.

    Returns:
        The sorted names.

    Example:
        >>> "tabular" in available_architectures()
        True
    """

    return sorted(_BUILDERS)


def architecture_options(architecture: str) -> dict[str, Any]:
    r"""Returns the options an architecture accepts, with their defaults.

    Arguments:
        architecture: An architecture name (see :func:`available_architectures`).

    Returns:
        A mapping from option name to default value.

    Example:
        >>> architecture_options("toy_resnet")["n_blocks"]
        4
    """

    builder = _lookup(architecture)
    params = inspect.signature(builder).parameters

    return {
        name: p.default
        for name, p in params.items()
        if name not in ("data_shape", "latent_dim")
    }


def _as_int(value: Any) -> int | None:
    # Accepts Python and NumPy integers (e.g. from a config or an array's shape), not bools/floats.
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _as_shape(data_shape: Any) -> tuple[int, ...]:
    try:
        shape = tuple(_as_int(s) for s in data_shape)
    except TypeError:
        raise ValueError(f"data_shape must be a tuple of positive ints, got {data_shape!r}") from None

    if not shape or any(s is None or s < 1 for s in shape):
        raise ValueError(f"data_shape must be a non-empty tuple of positive ints, got {data_shape!r}")

    return shape


def _lookup(architecture: str) -> Callable[..., tuple[nn.Module, nn.Module]]:
    if architecture not in _BUILDERS:
        raise ValueError(
            f"unknown architecture {architecture!r}; available: {', '.join(sorted(_BUILDERS))}"
        )

    return _BUILDERS[architecture]


def build_autoencoder(
    architecture: str,
    *,
    data_shape: Sequence[int],
    latent_dim: int,
    **options: Any,
) -> tuple[nn.Module, nn.Module]:
    r"""Builds an encoder/decoder pair by name and checks its shapes.

    Arguments:
        architecture: An architecture name (see :func:`available_architectures`).
        data_shape: The shape :math:`S` of one sample, without the batch dimension: ``(D,)`` for
            flat data, ``(C, H, W)`` for images. Dense nets accept any shape (they flatten it);
            the conv nets pick their MNIST / CIFAR-10 / CelebA variant from it.
        latent_dim: The latent size :math:`d`, with :math:`1 \le d < \prod S`.
        options: Architecture options (see :func:`architecture_options`); unknown names are errors.

    Returns:
        The pair ``(encoder, decoder)``: the encoder maps :math:`(B, *S) \to (B, d)`, the decoder
        :math:`(B, d) \to (B, *S)`. Both are in training mode.

    Example:
        >>> f, g = build_autoencoder("mlp", data_shape=(2,), latent_dim=1, hidden_features=(32,))
        >>> g(f(torch.randn(4, 2))).shape
        torch.Size([4, 2])
    """

    builder = _lookup(architecture)

    data_shape = _as_shape(data_shape)
    d = _as_int(latent_dim)

    if d is None or d < 1:
        raise ValueError(f"latent_dim must be a positive int, got {latent_dim!r}")

    latent_dim = d

    D = numel(data_shape)

    if latent_dim >= D:
        raise ValueError(
            f"latent_dim ({latent_dim}) must be smaller than the data dimension ({D} for data_shape "
            f"{data_shape}): an injective flow reduces dimension"
        )

    allowed = architecture_options(architecture)
    unknown = sorted(set(options) - set(allowed))

    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for architecture {architecture!r}; "
            f"accepted options: {', '.join(allowed) if allowed else '(none)'}"
        )

    encoder, decoder = builder(data_shape=data_shape, latent_dim=latent_dim, **options)
    check_autoencoder(encoder, decoder, data_shape, latent_dim)

    return encoder.train(), decoder.train()
