r"""Variance heads: one encoder trunk with two linear heads, the posterior mean and log-variance of a VAE.

A Gaussian posterior :math:`q(z|x) = \mathcal N(\mu(x), \operatorname{diag} e^{s(x)})` needs a second output of the
encoder. As in the Pythae benchmark's VAE encoders (``Encoder_Conv_VAE_MNIST``, ``Encoder_ResNet_VAE_MNIST`` and
their CIFAR-10 / CelebA twins: the autoencoder's layers, then ``embedding`` and ``log_var``, two ``Linear`` layers
reading the same flattened features), the log-variance is one linear layer on the trunk's last hidden features,
parallel to the encoder's latent projection:

.. math:: h = \mathrm{trunk}(x),\qquad \mu = \mathrm{tail}(W_\mu h + b_\mu),\qquad s = W_s h + b_s,

where the *latent projection* :math:`W_\mu h + b_\mu` is the last ``nn.Linear`` with :math:`d` outputs along the
encoder's chain of layers (nested plain ``nn.Sequential`` opened) and the *tail* is what follows it (empty for the
Pythae, Kumar, MLP and toy nets; the latent ResNet blocks of ``tabular`` and ``fif_convnet``). An encoder without
such a layer (the injective flows' encoders, a custom module) gets the head on its output: :math:`s = W_s\mu + b_s`.
The mean network is the encoder itself, unchanged, so the exported model is the plain encoder.

Example:
    >>> from injflow.nets import build_autoencoder, count_parameters
    >>> f, g = build_autoencoder("pythae_resnet", data_shape=(1, 28, 28), latent_dim=16)
    >>> q = GaussianEncoder.around(f, 16)
    >>> q.log_variance_head
    Linear(in_features=2048, out_features=16, bias=True)
    >>> count_parameters(q, g)  # Pythae's VAE with Encoder_ResNet_VAE_MNIST
    766689
"""

from __future__ import annotations

__all__ = ["GaussianEncoder", "layer_chain", "latent_projection"]

import torch  # noqa: F401 (used by the examples)
import torch.nn as nn
from torch import Tensor


def layer_chain(module: nn.Module) -> list[nn.Module]:
    r"""The modules ``module`` applies one after the other, nested plain ``nn.Sequential`` opened.

    A subclass of ``nn.Sequential`` counts as a chain only if it keeps ``Sequential.forward`` (e.g.
    :class:`~injflow.nets.MLP`); anything else is one opaque link.

    Example:
        >>> layer_chain(nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.Tanh(), nn.Linear(4, 2))))
        [Linear(in_features=3, out_features=4, bias=True), Tanh(), Linear(in_features=4, out_features=2, bias=True)]
    """
    if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
        return [link for child in module for link in layer_chain(child)]
    return [module]


def latent_projection(encoder: nn.Module, latent_dim: int) -> int | None:
    r"""The index in :func:`layer_chain` of the encoder's latent projection: its last ``nn.Linear`` with
    ``latent_dim`` outputs (``None`` when there is none).

    Example:
        >>> latent_projection(nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2)), 2)
        2
    """
    chain = layer_chain(encoder)
    found = [i for i, link in enumerate(chain) if isinstance(link, nn.Linear) and link.out_features == latent_dim]
    return found[-1] if found else None


class GaussianEncoder(nn.Module):
    r"""An encoder with a diagonal Gaussian posterior: ``forward(x)`` = mean (B, d), ``posterior(x)`` = (mean, log-variance).

    ``posterior`` runs the trunk once and both heads on its features (see the module docstring); ``forward`` is the
    mean network alone, the same computation.

    Arguments:
        mean_net: The mean network (the model's encoder, unchanged).
        log_variance_head: A linear layer from the trunk's features (or from the mean, when ``split`` is ``None``)
            to the log-variance (B, d).
        split: The index of the latent projection in ``layer_chain(mean_net)``: the head reads that layer's input;
            ``None``: the head reads the mean.
        attached: True when :meth:`around` built it for a method's ``prepare`` (the method's ``finalize`` then
            unwraps it).

    Example:
        >>> q = GaussianEncoder(nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)), nn.Linear(5, 2), split=2)
        >>> [t.shape for t in q.posterior(torch.randn(4, 3))]
        [torch.Size([4, 2]), torch.Size([4, 2])]
    """

    def __init__(self, mean_net: nn.Module, log_variance_head: nn.Module, *, split: int | None,
                 attached: bool = False) -> None:
        super().__init__()
        self.mean_net = mean_net
        self.log_variance_head = log_variance_head
        # Stored as an index (not as references to the layers) so that deep copies (EMA), pickling and state dicts
        # see each layer once, under the mean network's own names.
        self.split = split
        self.attached = attached

    @classmethod
    def around(cls, encoder: nn.Module, latent_dim: int) -> GaussianEncoder:
        r"""Adds a log-variance head to ``encoder``: ``nn.Linear(h, d)`` parallel to its latent projection
        ``nn.Linear(h, d)`` (as Pythae's ``log_var``, with PyTorch's default initialisation), or ``nn.Linear(d, d)``
        on the mean for an encoder without one. The head is on the encoder's device and dtype."""
        split = latent_projection(encoder, latent_dim)
        features = latent_dim if split is None else layer_chain(encoder)[split].in_features
        head = nn.Linear(features, latent_dim)
        ref = next(iter(encoder.parameters()), None)
        if ref is not None:
            head = head.to(device=ref.device, dtype=ref.dtype)
        return cls(encoder, head, split=split, attached=True)

    def extra_repr(self) -> str:
        return f"split={self.split}"

    def forward(self, x: Tensor) -> Tensor:
        return self.mean_net(x)

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The posterior mean and log-variance, each (B, d), from one pass through the trunk."""
        if self.split is None:
            mean = self.mean_net(x)
            return mean, self.log_variance_head(mean)
        chain = layer_chain(self.mean_net)
        h = x
        for link in chain[: self.split]:
            h = link(h)
        mean = h
        for link in chain[self.split:]:
            mean = link(mean)
        return mean, self.log_variance_head(h)
