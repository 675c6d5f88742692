r"""The single entry point other code uses: :func:`build_autoencoder` by architecture name."""

__all__ = ["ARCHITECTURES", "register_architecture", "build_autoencoder", "available_architectures", "architecture_options"]

import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch  # noqa: F401 (used by the examples)
import torch.nn as nn

from ..registry import Registry
from .core import check_autoencoder, numel

#: Every architecture by config name: ``builder(*, data_shape, latent_dim, **options) -> (encoder, decoder)``; the
#: builder's other keyword parameters are exactly the accepted options.
ARCHITECTURES: Registry[Callable[..., tuple[nn.Module, nn.Module]]] = Registry(
    "architecture", reserved=("data_shape", "latent_dim")
)


def register_architecture(name: str) -> Callable:
    r"""Decorator registering an encoder/decoder builder under a config name (``model.architecture``).

    The builder is called as ``builder(*, data_shape, latent_dim, **options)`` and returns ``(encoder, decoder)``;
    its other keyword parameters are the options a config may set, with their defaults.

    Example:
        >>> @register_architecture("doc_linear")
        ... def doc_linear(*, data_shape, latent_dim, bias: bool = True):
        ...     D = numel(data_shape)
        ...     return nn.Linear(D, latent_dim, bias=bias), nn.Linear(latent_dim, D, bias=bias)
        >>> f, g = build_autoencoder("doc_linear", data_shape=(3,), latent_dim=1, bias=False)
    """
    return ARCHITECTURES.register(name)


def available_architectures() -> list[str]:
    r"""Lists the architecture names :func:`build_autoencoder` accepts.

    Returns:
        The sorted names.

    Example:
        >>> "tabular" in available_architectures()
        True
    """
    return ARCHITECTURES.names()


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
    return ARCHITECTURES.options(architecture)


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


def build_autoencoder(
    architecture: str,
    *,
    data_shape: Sequence[int],
    latent_dim: int,
    full_dimensional: bool = False,
    **options: Any,
) -> tuple[nn.Module, nn.Module]:
    r"""Builds an encoder/decoder pair by name and checks its shapes.

    Arguments:
        architecture: An architecture name (see :func:`available_architectures`).
        data_shape: The shape :math:`S` of one sample, without the batch dimension: ``(D,)`` for
            flat data, ``(C, H, W)`` for images. Dense nets accept any shape (they flatten it);
            the conv nets pick their MNIST / CIFAR-10 / CelebA variant from it.
        latent_dim: The latent size :math:`d`, with :math:`1 \le d < \prod S` (:math:`d = \prod S` with
            ``full_dimensional``).
        full_dimensional: Build a pair with :math:`d = D`, the encoder and decoder of a free-form flow (method
            ``fff``) instead of an injective flow's bottleneck.
        options: Architecture options (see :func:`architecture_options`); unknown names are errors.

    Returns:
        The pair ``(encoder, decoder)``: the encoder maps :math:`(B, *S) \to (B, d)`, the decoder
        :math:`(B, d) \to (B, *S)`. Both are in training mode.

    Example:
        >>> f, g = build_autoencoder("mlp", data_shape=(2,), latent_dim=1, hidden_features=(32,))
        >>> g(f(torch.randn(4, 2))).shape
        torch.Size([4, 2])
    """

    ARCHITECTURES.key(architecture)  # an unknown name is reported before the shapes
    data_shape = _as_shape(data_shape)
    d = _as_int(latent_dim)

    if d is None or d < 1:
        raise ValueError(f"latent_dim must be a positive int, got {latent_dim!r}")

    latent_dim = d

    D = numel(data_shape)

    if full_dimensional and latent_dim != D:
        raise ValueError(
            f"latent_dim ({latent_dim}) must equal the data dimension ({D} for data_shape {data_shape}) for a "
            "full-dimensional pair (a free-form flow)"
        )
    if not full_dimensional and latent_dim >= D:
        raise ValueError(
            f"latent_dim ({latent_dim}) must be smaller than the data dimension ({D} for data_shape "
            f"{data_shape}): an injective flow reduces dimension (d = D: full_dimensional=True, method fff)"
        )

    encoder, decoder = ARCHITECTURES.build(architecture, data_shape=data_shape, latent_dim=latent_dim, **options)
    check_autoencoder(encoder, decoder, data_shape, latent_dim)

    return encoder.train(), decoder.train()
