r"""Class-conditional encoder/decoder pairs from any registered architecture (``model.conditional: true``).

The FIF paper trains FIF on *conditional* MNIST (figs. 6, 8, 9) without saying how the label enters the nets;
injflow's choice (marked as such in docs/architectures.md) works with every architecture of the registry:

- decoder :math:`g(z, c) = g_0([z, \mathrm{onehot}(c)])`: the architecture's decoder built for a latent of size
  :math:`d + K` — the label changes the manifold itself, not only where a class lies on a shared one;
- encoder :math:`f(x, c) = f_0(x + b_c)`: the architecture's encoder after a learned per-class offset
  :math:`b_c` of the data's shape (initialised at zero, so an untrained conditional encoder is the unconditional
  one), which tells every layer the class without changing the input shape the architecture expects.

Both maps stay differentiable in their first argument, so every estimator (JVPs and VJPs through ``x`` and ``z``)
applies to ``lambda x: f(x, c)`` and ``lambda z: g(z, c)`` unchanged.

*Continuous* context (a vector :math:`c \in \mathbb R^C` per sample, e.g. the observation of a simulation-based
inference task, where the model is the posterior :math:`p(\theta \mid c)`; FFF §5.2) enters both nets in full, as
in the FFF reference code: :func:`build_context_autoencoder` builds the architecture for the augmented data
:math:`[x, c]` of size D + C,

- encoder :math:`f(x, c) = f_0([x, c])` (the architecture's encoder on D + C inputs);
- decoder :math:`g(z, c) = g_0([z, c])_{1..D}` (the architecture's decoder from d + C latents to D + C outputs, of
  which the first D are kept), so the context acts on every layer and not only as an offset.

:class:`ContextView` holds one batch's context and gives any method the ``encode``/``decode``/``latent`` it expects.

Example:
    >>> f, g = build_conditional_autoencoder("mlp", data_shape=(3,), latent_dim=1, num_classes=4, hidden_features=(8,))
    >>> c = torch.tensor([0, 3])
    >>> g(f(torch.randn(2, 3), c), c).shape
    torch.Size([2, 3])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .core import numel
from .registry import ARCHITECTURES, build_autoencoder

__all__ = [
    "ConditionalEncoder",
    "ConditionalDecoder",
    "build_conditional_autoencoder",
    "ContextEncoder",
    "ContextDecoder",
    "ContextView",
    "build_context_autoencoder",
]


class ConditionalEncoder(nn.Module):
    r""":math:`f(x, c) = f_0(x + b_c)` with a learned offset :math:`b_c` per class (zero at initialisation).

    Arguments:
        net: The unconditional encoder :math:`f_0`.
        data_shape: The shape of one sample.
        num_classes: K.
    """

    def __init__(self, net: nn.Module, data_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.net = net
        self.data_shape = tuple(data_shape)
        self.offset = nn.Embedding(num_classes, numel(data_shape))
        nn.init.zeros_(self.offset.weight)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        return self.net(x + self.offset(c).reshape(x.shape[0], *self.data_shape))


class ConditionalDecoder(nn.Module):
    r""":math:`g(z, c) = g_0([z, \mathrm{onehot}(c)])`.

    Arguments:
        net: A decoder :math:`g_0` that takes ``d + num_classes`` inputs.
        num_classes: K.
    """

    def __init__(self, net: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.net = net
        self.num_classes = int(num_classes)

    def forward(self, z: Tensor, c: Tensor) -> Tensor:
        onehot = nn.functional.one_hot(c, self.num_classes).to(z.dtype)
        return self.net(torch.cat([z, onehot], dim=1))


def build_conditional_autoencoder(
    architecture: str,
    *,
    data_shape: tuple[int, ...],
    latent_dim: int,
    num_classes: int,
    full_dimensional: bool = False,
    **options,
) -> tuple[ConditionalEncoder, ConditionalDecoder]:
    """A class-conditional pair (see the module docstring) from a registered architecture and its options.

    Arguments:
        architecture: A name of :data:`~injflow.nets.registry.ARCHITECTURES`.
        data_shape: The shape of one sample.
        latent_dim: d.
        num_classes: K ≥ 2.
        full_dimensional: d = D (a free-form flow), see :func:`~injflow.nets.registry.build_autoencoder`.
        options: The architecture's options.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    data_shape = tuple(int(s) for s in data_shape)
    encoder, _ = build_autoencoder(architecture, data_shape=data_shape, latent_dim=latent_dim,
                                   full_dimensional=full_dimensional, **options)
    # The decoder's input is [z, onehot(c)]; d + K may exceed D for tiny toy data, which is fine for a decoder
    # input, so this one is built without the injectivity check (its shapes are checked below).
    _, decoder = ARCHITECTURES.build(architecture, data_shape=data_shape, latent_dim=latent_dim + num_classes, **options)
    f, g = ConditionalEncoder(encoder, data_shape, num_classes), ConditionalDecoder(decoder, num_classes)
    with torch.no_grad():
        was = (f.training, g.training)
        f.eval(), g.eval()
        c = torch.zeros(1, dtype=torch.long)
        x = g(f(torch.zeros(1, *data_shape), c), c)
        f.train(was[0]), g.train(was[1])
    if tuple(x.shape) != (1, *data_shape):
        raise ValueError(f"conditional {architecture!r} maps to {tuple(x.shape)}, expected (1, *{data_shape})")
    return f.train(), g.train()


class ContextEncoder(nn.Module):
    r""":math:`f(x, c) = f_0([x, c])` for flat data x (B, D) and a continuous context c (B, C).

    Arguments:
        net: The encoder :math:`f_0` on D + C inputs.
        context_features: C.
    """

    def __init__(self, net: nn.Module, context_features: int) -> None:
        super().__init__()
        self.net = net
        self.context_features = int(context_features)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        return self.net(torch.cat([x, c.to(x.dtype)], dim=1))


class ContextDecoder(nn.Module):
    r""":math:`g(z, c) = g_0([z, c])_{1..D}`: the decoder of the augmented data, keeping the first D outputs.

    Arguments:
        net: A decoder :math:`g_0` from d + C latents to D + C outputs.
        data_features: D.
    """

    def __init__(self, net: nn.Module, data_features: int) -> None:
        super().__init__()
        self.net = net
        self.data_features = int(data_features)

    def forward(self, z: Tensor, c: Tensor) -> Tensor:
        return self.net(torch.cat([z, c.to(z.dtype)], dim=1))[:, : self.data_features]


def build_context_autoencoder(
    architecture: str,
    *,
    data_shape: tuple[int, ...],
    latent_dim: int,
    context_features: int,
    **options,
) -> tuple[ContextEncoder, ContextDecoder]:
    r"""A pair conditioned on a continuous context vector (see the module docstring), for flat data.

    The latent dimension may be anything up to D (d = D: a conditional free-form flow, e.g. a posterior
    :math:`p(\theta \mid c)`); the nets are the architecture's, built for the augmented data of size D + C.

    Arguments:
        architecture: A name of :data:`~injflow.nets.registry.ARCHITECTURES` (a dense one: the data are flat).
        data_shape: ``(D,)``.
        latent_dim: d ≤ D.
        context_features: C ≥ 1.
        options: The architecture's options.

    Example:
        >>> f, g = build_context_autoencoder("toy_resnet", data_shape=(2,), latent_dim=2, context_features=3, n_blocks=1)
        >>> theta, c = torch.randn(5, 2), torch.randn(5, 3)
        >>> f(theta, c).shape, g(f(theta, c), c).shape
        (torch.Size([5, 2]), torch.Size([5, 2]))
    """
    if isinstance(context_features, bool) or not isinstance(context_features, int) or context_features < 1:
        raise ValueError(f"context_features must be an int >= 1, got {context_features!r}")
    data_shape = tuple(int(s) for s in data_shape)
    if len(data_shape) != 1:
        raise ValueError(f"a continuous context needs flat data of shape (D,), got data_shape {data_shape}; flatten it first")
    big_d = data_shape[0]
    if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or not 1 <= latent_dim <= big_d:
        raise ValueError(f"latent_dim must be an int in 1..{big_d} (the data dimension), got {latent_dim!r}")
    augmented = (big_d + context_features,)
    # The encoder maps D + C inputs to d < D + C; the decoder's latent d + C equals D + C exactly when d = D.
    encoder, _ = build_autoencoder(architecture, data_shape=augmented, latent_dim=latent_dim, **options)
    _, decoder = build_autoencoder(architecture, data_shape=augmented, latent_dim=latent_dim + context_features,
                                   full_dimensional=latent_dim == big_d, **options)
    return ContextEncoder(encoder, context_features).train(), ContextDecoder(decoder, big_d).train()


class ContextView:
    """A context-conditioned pair with one batch's context fixed: the ``encode``/``decode``/``latent`` a method takes.

    Estimators that form bigger batches (a chunk of Jacobian directions, K Hutchinson vectors) stack copies of the
    whole batch, so a batch of m·B rows gets the context repeated m times.

    Arguments:
        encoder, decoder: A pair from :func:`build_context_autoencoder` (``f(x, c)``, ``g(z, c)``).
        latent: The latent distribution (anything with ``log_prob``).
        context: The batch's context, (B, C).

    Example:
        >>> from injflow.distributions import StandardNormal
        >>> f, g = build_context_autoencoder("mlp", data_shape=(2,), latent_dim=2, context_features=1, hidden_features=(8,))
        >>> view = ContextView(f, g, StandardNormal(2), torch.randn(4, 1))
        >>> view.decode(view.encode(torch.randn(4, 2))).shape
        torch.Size([4, 2])
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent: object, context: Tensor) -> None:
        if not isinstance(context, Tensor) or context.ndim != 2 or not context.is_floating_point():
            raise ValueError(f"context must be a floating-point tensor of shape (B, C), got {getattr(context, 'shape', context)}")
        self.encoder, self.decoder, self.latent, self.context = encoder, decoder, latent, context

    def _c(self, t: Tensor) -> Tensor:
        n, b = t.shape[0], self.context.shape[0]
        if n == b:
            return self.context
        if n % b:
            raise ValueError(f"a batch of {n} rows does not fit the {b} context rows of this batch")
        return self.context.repeat(n // b, 1)

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x, self._c(x))

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z, self._c(z))
