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

__all__ = ["ConditionalEncoder", "ConditionalDecoder", "build_conditional_autoencoder"]


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
    architecture: str, *, data_shape: tuple[int, ...], latent_dim: int, num_classes: int, **options
) -> tuple[ConditionalEncoder, ConditionalDecoder]:
    """A class-conditional pair (see the module docstring) from a registered architecture and its options.

    Arguments:
        architecture: A name of :data:`~injflow.nets.registry.ARCHITECTURES`.
        data_shape: The shape of one sample.
        latent_dim: d.
        num_classes: K ≥ 2.
        options: The architecture's options.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    data_shape = tuple(int(s) for s in data_shape)
    encoder, _ = build_autoencoder(architecture, data_shape=data_shape, latent_dim=latent_dim, **options)
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
