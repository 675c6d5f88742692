r"""Injective flows built from invertible blocks: rectangular flows / DNF (pad) and Trumpets (progressive).

The papers FIF compares against build the decoder from exactly invertible pieces (FIF eq. 1):

.. math:: g = w \circ \mathrm{pad} \circ h, \qquad f = h^{-1} \circ \mathrm{slice} \circ w^{-1},

with :math:`h: \mathbb R^d \to \mathbb R^d` and :math:`w: \mathbb R^D \to \mathbb R^D` normalizing flows
(rectangular flows, Caterini et al. 2021; denoising normalizing flows, Horvat & Pfister 2021), or with
:math:`w \circ \mathrm{pad}` replaced by a *trumpet* of injective linear layers and flows of growing width
(Kothari et al. 2021). Either way the encoder is an exact left inverse on the manifold,
:math:`f(g(z)) = z`, and off it :math:`f` is one particular projection (slice of :math:`w^{-1}`, or least
squares through the injective layers).

The invertible blocks are `zuko <https://github.com/probabilists/zuko>`_ coupling (or masked autoregressive)
transforms (docs/architectures.md says why zuko). Every :class:`Bijection` here is oriented in the
*normalizing* direction, data → latent, which is zuko's forward direction: that is where its log-determinant
comes in the same pass (DNF's and RNF's likelihoods need it there); the generative direction (the decoder) uses
the plain inverse, one pass per coupling, without a log-determinant.

Notation (generative direction): :math:`z \xrightarrow{h} u \xrightarrow{g_\mathrm{inj}} x` with
:math:`u \in \mathbb R^d`; :attr:`InjectiveFlowNet.inner` is :math:`h^{-1}` (u → z),
:meth:`InjectiveFlowNet.lift` is :math:`g_\mathrm{inj}` and :meth:`InjectiveFlowNet.project` its left inverse.

References:
    | Rectangular Flows for Manifold Learning (Caterini et al., NeurIPS 2021)
    | Denoising Normalizing Flow (Horvat & Pfister, NeurIPS 2021)
    | Trumpets: Injective Flows for Inference and Inverse Problems (Kothari et al., UAI 2021)
"""

__all__ = [
    "TRANSFORMS",
    "Bijection",
    "InjectiveLinear",
    "InjectiveFlowNet",
    "PaddedFlow",
    "TrumpetFlow",
    "InjectiveEncoder",
    "InjectiveDecoder",
    "injective_flow_of",
    "injective_coupling_autoencoder",
    "trumpet_autoencoder",
]

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
import torch.nn as nn
import zuko
from torch import Tensor

from .core import ACTIVATIONS, numel
from .registry import register_architecture

#: Invertible block kinds of :class:`Bijection`: affine coupling (RealNVP), rational-quadratic spline coupling
#: (neural spline flow) and affine masked autoregressive (MAF; its inverse, the decoder, takes n passes).
TRANSFORMS = ("affine", "spline", "autoregressive")


def _widths(value: int | Sequence[int], name: str) -> tuple[int, ...]:
    widths = (value,) if isinstance(value, int) else tuple(value)
    if not widths or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
        raise ValueError(f"{name} must be a positive int or a non-empty sequence of positive ints, got {value!r}")
    return widths


def _positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


class Bijection(nn.Module):
    r"""An invertible map :math:`\phi: \mathbb R^n \to \mathbb R^n`: a stack of zuko transforms.

    ``forward`` is the normalizing direction (data → latent) with, on request, :math:`\log|\det \phi'(x)|` from
    the same pass; ``inverse`` is the generative direction. Coupling layers alternate checkerboard masks (zuko's
    NICE/RealNVP default); ``n = 1`` uses element-wise transforms (there is nothing to couple).

    Arguments:
        features: The dimension n.
        layers: The number of coupling (or autoregressive) transforms.
        hidden_features: The hidden widths of each transform's conditioner MLP.
        transform: One of :data:`TRANSFORMS`.
        bins: Spline bins (``transform="spline"``).
        bound: Spline domain :math:`[-B, B]`; the identity outside (``transform="spline"``).
        activation: The conditioner's activation (see :data:`injflow.nets.core.ACTIVATIONS`).

    Example:
        >>> phi = Bijection(4, layers=2, hidden_features=(16,))
        >>> x = torch.randn(3, 4)
        >>> y, log_det = phi.forward_and_log_det(x)
        >>> torch.allclose(phi.inverse(y), x, atol=1e-5), log_det.shape
        (True, torch.Size([3]))
    """

    def __init__(
        self,
        features: int,
        layers: int = 5,
        hidden_features: int | Sequence[int] = (128, 128),
        transform: str = "affine",
        bins: int = 8,
        bound: float = 5.0,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.features = _positive_int(features, "features")
        _positive_int(layers, "layers")
        hidden = _widths(hidden_features, "hidden_features")
        if transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        if transform == "spline":
            _positive_int(bins, "bins", 2)
            if not bound > 0:
                raise ValueError(f"bound must be > 0, got {bound!r}")
            univariate = partial(zuko.transforms.MonotonicRQSTransform, bound=float(bound))
            shapes = [(bins,), (bins,), (bins - 1,)]
        else:
            univariate, shapes = zuko.transforms.MonotonicAffineTransform, [(), ()]
        self.transform_kind = transform
        mlp = {"hidden_features": hidden, "activation": ACTIVATIONS[activation]}
        blocks = []
        for i in range(layers):
            if transform == "autoregressive" and features > 1:
                # Alternating orders reverse the autoregressive direction from layer to layer (zuko's MAF).
                order = torch.arange(features) if i % 2 == 0 else torch.arange(features).flip(0)
                blocks.append(zuko.flows.MaskedAutoregressiveTransform(features, order=order, **mlp))
            else:
                mask = torch.arange(features) % 2 == i % 2
                blocks.append(zuko.flows.GeneralCouplingTransform(
                    features, mask=mask, univariate=univariate, shapes=shapes, **mlp,
                ))
        self.blocks = nn.ModuleList(blocks)

    def extra_repr(self) -> str:
        return f"features={self.features}, transform={self.transform_kind!r}"

    def transform(self) -> torch.distributions.Transform:
        """The composed zuko transform (normalizing direction; ``.inv`` is the generative one)."""
        return zuko.transforms.ComposedTransform(*(block() for block in self.blocks))

    def forward(self, x: Tensor) -> Tensor:
        r""":math:`\phi(x)`, shape (B, n)."""
        return self.transform()(x)

    def forward_and_log_det(self, x: Tensor) -> tuple[Tensor, Tensor]:
        r""":math:`(\phi(x), \log|\det \phi'(x)|)`, shapes (B, n) and (B,), from one pass."""
        return self.transform().call_and_ladj(x)

    def inverse(self, y: Tensor) -> Tensor:
        r""":math:`\phi^{-1}(y)`, shape (B, n) (one pass per coupling; n passes per autoregressive layer)."""
        return self.transform().inv(y)


class InjectiveLinear(nn.Module):
    r"""An injective linear layer :math:`y = Wx + b`, :math:`W \in \mathbb R^{m\times n}`, :math:`m > n`, and
    its least-squares left inverse :math:`x = (W^\top W)^{-1} W^\top (y - b)`.

    The dense analogue of the Trumpet's injective 1×1 convolution (Kothari et al. 2021), which doubles the
    channels and is inverted by least squares. :math:`W` starts with orthonormal columns, so
    :math:`W^\top W = I` at initialisation and the left inverse is exact on the range of the layer.

    Example:
        >>> layer = InjectiveLinear(2, 5)
        >>> x = torch.randn(3, 2)
        >>> torch.allclose(layer.inverse(layer(x)), x, atol=1e-5)
        True
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        if not 0 < in_features < out_features:
            raise ValueError(f"an injective layer needs 0 < in_features < out_features, got {in_features} -> {out_features}")
        self.in_features, self.out_features = in_features, out_features
        q = torch.linalg.qr(torch.randn(out_features, in_features)).Q
        self.weight = nn.Parameter(q)
        self.bias = nn.Parameter(torch.zeros(out_features))

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}"

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.weight.T + self.bias

    def inverse(self, y: Tensor) -> Tensor:
        # Normal equations, one solve for the batch: rows of (y - b) W are W^T (y - b).
        w = self.weight
        return torch.linalg.solve(w.T @ w, ((y - self.bias) @ w).T).T


class InjectiveFlowNet(nn.Module):
    r"""Base class: :math:`g(z) = g_\mathrm{inj}(h(z))`, :math:`f(x) = h^{-1}(g_\mathrm{inj}^+(x))`.

    Subclasses define :meth:`lift` (:math:`g_\mathrm{inj}: \mathbb R^d \to` data) and :meth:`project` (its left
    inverse); :attr:`inner` is the d-dimensional flow :math:`h^{-1}` (u → z, with its log-determinant).

    Attributes:
        data_shape: The data shape; :meth:`lift` returns it, :meth:`project` accepts it.
        latent_dim: d.
    """

    def __init__(self, data_shape: Sequence[int], latent_dim: int, inner: Bijection) -> None:
        super().__init__()
        self.data_shape = tuple(int(s) for s in data_shape)
        self.latent_dim = int(latent_dim)
        self.inner = inner

    @property
    def data_dim(self) -> int:
        return numel(self.data_shape)

    def lift(self, u: Tensor) -> Tensor:  # pragma: no cover - abstract
        r""":math:`g_\mathrm{inj}(u)`: (B, d) → (B, *data_shape)."""
        raise NotImplementedError

    def project(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        r"""The left inverse of :meth:`lift`: (B, *data_shape) → (B, d)."""
        raise NotImplementedError

    def encode(self, x: Tensor) -> Tensor:
        r""":math:`z = f(x) = h^{-1}(g_\mathrm{inj}^+(x))`, shape (B, d)."""
        return self.inner(self.project(x))

    def decode(self, z: Tensor) -> Tensor:
        r""":math:`\hat x = g(z) = g_\mathrm{inj}(h(z))`, shape (B, *data_shape)."""
        return self.lift(self.inner.inverse(z))

    def _flat(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1)

    def _shaped(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], *self.data_shape)


class PaddedFlow(InjectiveFlowNet):
    r"""The rectangular-flow / DNF architecture :math:`g = w \circ \mathrm{pad} \circ h` (FIF eq. 1).

    :attr:`outer` is :math:`w^{-1}` (data → :math:`\mathbb R^D`, normalizing direction), :attr:`inner` is
    :math:`h^{-1}` (:math:`\mathbb R^d \to \mathbb R^d`). ``pad`` appends D − d zeros, ``slice`` keeps the first d
    coordinates, so :meth:`project` ∘ :meth:`lift` is the identity.

    Example:
        >>> net = PaddedFlow((5,), 2, Bijection(5, 2, (16,)), Bijection(2, 2, (8,)))
        >>> z = torch.randn(3, 2)
        >>> torch.allclose(net.encode(net.decode(z)), z, atol=1e-5)
        True
    """

    def __init__(self, data_shape: Sequence[int], latent_dim: int, outer: Bijection, inner: Bijection) -> None:
        super().__init__(data_shape, latent_dim, inner)
        if outer.features != self.data_dim or inner.features != self.latent_dim:
            raise ValueError(f"outer must act on D={self.data_dim} and inner on d={self.latent_dim} features")
        self.outer = outer

    def pad(self, u: Tensor) -> Tensor:
        """Appends D − d zeros: (B, d) → (B, D)."""
        return torch.cat([u, u.new_zeros(u.shape[0], self.data_dim - self.latent_dim)], dim=1)

    def normalize(self, x: Tensor) -> tuple[Tensor, Tensor]:
        r"""The full D-dimensional latent :math:`w^{-1}(x)` and :math:`\log|\det (w^{-1})'(x)|`: (B, D), (B,)."""
        return self.outer.forward_and_log_det(self._flat(x))

    def lift(self, u: Tensor) -> Tensor:
        return self._shaped(self.outer.inverse(self.pad(u)))

    def project(self, x: Tensor) -> Tensor:
        return self.outer(self._flat(x))[:, : self.latent_dim]


class TrumpetFlow(InjectiveFlowNet):
    r"""A Trumpet (Kothari et al. 2021) on vectors: widths grow from d to D through injective layers, each
    followed by a flow at the new width.

    .. math:: g_\mathrm{inj} = w_K \circ \iota_K \circ \dots \circ w_1 \circ \iota_1, \qquad
              \iota_k: \mathbb R^{n_{k-1}} \to \mathbb R^{n_k},\ n_0 = d,\ n_K = D,

    with :math:`n_k = \min(2 n_{k-1}, D)` (the paper's injective layers double the channels). Each
    :math:`\iota_k` is an :class:`InjectiveLinear` (``expansion="linear"``, the paper's injective 1×1 convolution)
    or zero padding (``expansion="pad"``, no parameters, for very wide data); each :math:`w_k` is a
    :class:`Bijection` stored in the normalizing direction (:attr:`stages` ``[k].flow`` is :math:`w_k^{-1}`).
    The left inverse runs the stages backwards: :math:`w_k^{-1}`, then least squares through :math:`\iota_k`.

    Example:
        >>> net = TrumpetFlow((12,), 3, Bijection(3, 2, (8,)), stage_layers=1, hidden_features=(16,))
        >>> [s.flow.features for s in net.stages]
        [6, 12]
        >>> z = torch.randn(2, 3)
        >>> torch.allclose(net.encode(net.decode(z)), z, atol=1e-4)
        True
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        latent_dim: int,
        inner: Bijection,
        *,
        stage_layers: int = 2,
        hidden_features: int | Sequence[int] = (128, 128),
        transform: str = "affine",
        expansion: str = "linear",
        activation: str = "relu",
    ) -> None:
        super().__init__(data_shape, latent_dim, inner)
        if expansion not in ("linear", "pad"):
            raise ValueError(f"expansion must be 'linear' or 'pad', got {expansion!r}")
        self.expansion = expansion
        widths = [self.latent_dim]
        while widths[-1] < self.data_dim:
            widths.append(min(2 * widths[-1], self.data_dim))
        self.stages = nn.ModuleList(
            _Stage(n_in, n_out, expansion, Bijection(n_out, stage_layers, hidden_features, transform, activation=activation))
            for n_in, n_out in zip(widths[:-1], widths[1:])
        )

    def lift(self, u: Tensor) -> Tensor:
        x = u
        for stage in self.stages:
            x = stage.flow.inverse(stage.widen(x))
        return self._shaped(x)

    def project(self, x: Tensor) -> Tensor:
        x = self._flat(x)
        for stage in reversed(self.stages):
            x = stage.narrow(stage.flow(x))
        return x


class _Stage(nn.Module):
    """One Trumpet stage: an injective layer n_in → n_out (learned or zero padding) and a flow on n_out."""

    def __init__(self, n_in: int, n_out: int, expansion: str, flow: Bijection) -> None:
        super().__init__()
        self.widths = (n_in, n_out)
        self.expand = InjectiveLinear(n_in, n_out) if expansion == "linear" else None
        self.flow = flow

    def widen(self, x: Tensor) -> Tensor:
        if self.expand is not None:
            return self.expand(x)
        return torch.cat([x, x.new_zeros(x.shape[0], self.widths[1] - self.widths[0])], dim=1)

    def narrow(self, y: Tensor) -> Tensor:
        return self.expand.inverse(y) if self.expand is not None else y[:, : self.widths[0]]


class InjectiveEncoder(nn.Module):
    r"""The encoder of an :class:`InjectiveFlowNet`: :math:`f(x)`. Shares its parameters with the decoder.

    Methods that need the pieces (rectangular flow, DNF, Trumpet) reach the net as ``encoder.flow``.
    """

    def __init__(self, flow: InjectiveFlowNet) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, x: Tensor) -> Tensor:
        return self.flow.encode(x)


class InjectiveDecoder(nn.Module):
    r"""The decoder of an :class:`InjectiveFlowNet`: :math:`g(z)`. Shares its parameters with the encoder."""

    def __init__(self, flow: InjectiveFlowNet) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, z: Tensor) -> Tensor:
        return self.flow.decode(z)


def injective_flow_of(model: Any, method: str) -> InjectiveFlowNet:
    """The :class:`InjectiveFlowNet` behind a model's encoder, or a ``ValueError`` naming what to configure.

    Arguments:
        model: Anything with an ``encoder`` (the engine's model, its EMA view, a test double).
        method: The method's name, for the message.
    """
    flow = getattr(getattr(model, "encoder", None), "flow", None)
    if not isinstance(flow, InjectiveFlowNet):
        raise ValueError(
            f"method {method!r} trains an injective flow built from invertible blocks: set model.architecture to "
            "'injective_coupling' (rectangular flow / DNF) or 'trumpet' (Trumpet); the model's encoder is a "
            f"{type(getattr(model, 'encoder', None)).__name__}"
        )
    return flow


def _pair(flow: InjectiveFlowNet) -> tuple[nn.Module, nn.Module]:
    return InjectiveEncoder(flow), InjectiveDecoder(flow)


@register_architecture("injective_coupling")  # rectangular flow / DNF: w ∘ pad ∘ h (FIF eq. 1)
def injective_coupling_autoencoder(
    data_shape: Sequence[int],
    latent_dim: int,
    outer_layers: int = 10,
    outer_hidden_features: int | Sequence[int] = (128, 128, 128, 128),
    inner_layers: int = 5,
    inner_hidden_features: int | Sequence[int] = (32, 32),
    transform: str = "affine",
    inner_transform: str | None = None,
    bins: int = 8,
    bound: float = 5.0,
    activation: str = "relu",
) -> tuple[nn.Module, nn.Module]:
    r"""The rectangular-flow architecture :math:`g = w \circ \mathrm{pad} \circ h` (:class:`PaddedFlow`).

    The defaults are Caterini et al.'s tabular RNF (their public configs: a 10-layer RealNVP on
    :math:`\mathbb R^D` with coupling nets of 4 × 128 hidden units, a 5-layer RealNVP on :math:`\mathbb R^d` with
    2 × 32); DNF uses rational-quadratic spline couplings (``transform="spline"``). The encoder and decoder share
    one :class:`PaddedFlow`; images are flattened.

    Arguments:
        data_shape: The data shape (flattened to D).
        latent_dim: d < D.
        outer_layers, outer_hidden_features: Layers and conditioner widths of the D-dimensional flow w.
        inner_layers, inner_hidden_features: Layers and conditioner widths of the d-dimensional flow h.
        transform: The block kind of w (:data:`TRANSFORMS`).
        inner_transform: The block kind of h (default: ``transform``).
        bins, bound: Spline bins and domain bound.
        activation: The conditioners' activation.

    Returns:
        The pair ``(encoder, decoder)``: :class:`InjectiveEncoder`, :class:`InjectiveDecoder`.

    Example:
        >>> f, g = injective_coupling_autoencoder((6,), 2)
        >>> z = torch.randn(4, 2)
        >>> torch.allclose(f(g(z)), z, atol=1e-5)
        True
    """
    D = numel(data_shape)
    outer = Bijection(D, outer_layers, outer_hidden_features, transform, bins, bound, activation)
    inner = Bijection(latent_dim, inner_layers, inner_hidden_features, inner_transform or transform, bins, bound, activation)
    return _pair(PaddedFlow(data_shape, latent_dim, outer, inner))


@register_architecture("trumpet")  # Kothari et al. 2021
def trumpet_autoencoder(
    data_shape: Sequence[int],
    latent_dim: int,
    stage_layers: int = 2,
    hidden_features: int | Sequence[int] = (128, 128),
    inner_layers: int = 8,
    inner_hidden_features: int | Sequence[int] = (128, 128),
    transform: str = "affine",
    expansion: str = "linear",
    activation: str = "relu",
) -> tuple[nn.Module, nn.Module]:
    r"""A vector Trumpet (:class:`TrumpetFlow`): a d-dimensional flow, then injective layers doubling the width
    to D, each followed by a flow.

    Kothari et al.'s image Trumpet alternates affine-coupling revnets with injective 1×1 convolutions that double
    the channels (six of each on CelebA) and puts an 8-revnet flow on the 192-dimensional latent; this is the
    dense counterpart (images are flattened).

    Arguments:
        data_shape: The data shape (flattened to D).
        latent_dim: d < D.
        stage_layers, hidden_features: Coupling layers and conditioner widths of each stage's flow.
        inner_layers, inner_hidden_features: Layers and conditioner widths of the d-dimensional flow.
        transform: The block kind (:data:`TRANSFORMS`).
        expansion: ``linear`` (learned injective layers) or ``pad`` (zero padding).
        activation: The conditioners' activation.

    Returns:
        The pair ``(encoder, decoder)``.

    Example:
        >>> _ = torch.manual_seed(0)  # a fixed draw: some random inits amplify float32 round-off past atol
        >>> f, g = trumpet_autoencoder((10,), 2, hidden_features=(16,), inner_hidden_features=(8,))
        >>> z = torch.randn(4, 2)
        >>> torch.allclose(f(g(z)), z, atol=1e-4)
        True
    """
    inner = Bijection(latent_dim, inner_layers, inner_hidden_features, transform, activation=activation)
    net = TrumpetFlow(
        data_shape, latent_dim, inner, stage_layers=stage_layers, hidden_features=hidden_features,
        transform=transform, expansion=expansion, activation=activation,
    )
    return _pair(net)
