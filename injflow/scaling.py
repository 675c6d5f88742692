r"""Scaling that travels with the model: the affine map between the user's units and the model's.

The nets, the latent prior :math:`\mathcal N(0, I)`, the reconstruction weight β and the noise levels all assume data
of order one (tables standardised, images in [0, 1]). Data as people have them are not: a table of areas up to 4,254
trains to latent norms in the hundreds of thousands. ``data.standardize`` fits an affine map on the *training split*

.. math:: s(x) = (x - \mu) \oslash \sigma \qquad\text{(user units} \to \text{model units, elementwise)}

and the model keeps it (buffers saved in checkpoints and ``model.pt``): training and the methods see :math:`s(x)`,
while ``encode``, ``decode``, ``sample``, ``log_prob`` and the files written by the command line are in the user's
units, :math:`f_u = f \circ s` and :math:`g_u = s^{-1} \circ g`.

Densities change with the units. On the manifold, the user-unit decoder's Jacobian is
:math:`G_u = \operatorname{diag}(\sigma)\, G` (``G = g'(z)``, D × d), so

.. math:: \log p_u(\hat x_u) = \log p_Z(z) - \tfrac12 \log\det\big(G^\top \operatorname{diag}(\sigma)^2 G\big),

which is :math:`\log p(\hat x) - \sum_i \log \sigma_i` only when d = D (then :math:`G` is square); for d < D the
correction depends on how the manifold is oriented against the axes and is computed exactly through the composed map
(:meth:`AffineScaler.log_abs_det` is the d = D term).

Methods (``data.standardize``):

- ``features``: per-feature mean and standard deviation (tables: each column on its own; constant columns are only
  shifted).
- ``global``: one mean and one standard deviation for all features (keeps the features' relative scales: coordinates
  in one unit, pixels).
- ``range``: a declared value range ``[low, high]`` mapped to the model's image range [0, 1] (images).
- ``none``: the identity.
- ``auto``: what :func:`resolve_standardize` decides (own data: ``features`` for tables, ``range`` for images).

Example:
    >>> x = torch.tensor([[1000.0, 1.0], [3000.0, 3.0]])
    >>> scaler = fit_scaler(x, "features")
    >>> scaler(x)
    tensor([[-1., -1.],
            [ 1.,  1.]])
    >>> torch.allclose(scaler.inverse(scaler(x)), x)
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "OWN_DATA",
    "STANDARDIZE_METHODS",
    "AffineScaler",
    "fit_data_scaler",
    "fit_scaler",
    "resolve_standardize",
    "scale_splits",
    "scale_warning",
    "scaled_maps",
]

#: The data sets that are the user's own (``auto`` scales them): files, image folders, tensors given to the API.
OWN_DATA = ("array", "image_folder", "tensors")
#: The values ``data.standardize`` accepts.
STANDARDIZE_METHODS = ("auto", "features", "global", "range", "none")
#: A column whose standard deviation is below this fraction of its magnitude (or below 1e-12) counts as constant: it
#: is only shifted, never divided by (almost) zero.
_CONSTANT = 1e-7
#: Tables whose columns exceed these are far from standardised: a warning names them (unless they are scaled).
WARN_STD, WARN_MEAN = 10.0, 10.0


class AffineScaler(nn.Module):
    r"""The elementwise affine map :math:`s(x) = (x - \text{shift}) / \text{scale}` from user units to model units.

    ``shift`` and ``scale`` are buffers of one sample's shape, so they are saved and loaded with the model's
    ``state_dict`` (checkpoints, ``model.pt``) and move with it between devices.

    Arguments:
        shift: :math:`\mu`, shape ``data_shape``.
        scale: :math:`\sigma > 0`, shape ``data_shape``.
        method: How it was fitted (``features``, ``global``, ``range`` or ``none``), saved with the model.
        value_range: The declared ``[low, high]`` of ``range`` scaling.

    Example:
        >>> scaler = AffineScaler.identity((3,))
        >>> scaler.is_identity, scaler.spec()
        (True, {'method': 'none', 'value_range': None})
    """

    shift: Tensor
    scale: Tensor

    def __init__(self, shift: Tensor, scale: Tensor, *, method: str = "none",
                 value_range: Sequence[float] | None = None) -> None:
        super().__init__()
        shift, scale = torch.as_tensor(shift, dtype=torch.float32), torch.as_tensor(scale, dtype=torch.float32)
        if shift.shape != scale.shape:
            raise ValueError(f"shift {tuple(shift.shape)} and scale {tuple(scale.shape)} must have one shape")
        if not bool(torch.isfinite(shift).all() and torch.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError("the scaler's shift must be finite and its scale finite and > 0")
        if method not in STANDARDIZE_METHODS or method == "auto":
            raise ValueError(f"method must be one of features, global, range, none; got {method!r}")
        self.register_buffer("shift", shift.clone())
        self.register_buffer("scale", scale.clone())
        self.method = method
        self.value_range = None if value_range is None else [float(v) for v in value_range]
        self._identity = self._is_identity()
        # Loading a state (a checkpoint, model.pt) may change the buffers: re-read whether the map is the identity, so
        # that the per-call question costs nothing (no device sync per training step).
        self.register_load_state_dict_post_hook(_reread_identity)

    @classmethod
    def identity(cls, data_shape: Sequence[int]) -> AffineScaler:
        """The map that changes nothing (``method='none'``), for data of shape ``data_shape``."""
        shape = tuple(int(s) for s in data_shape)
        return cls(torch.zeros(shape), torch.ones(shape))

    def _is_identity(self) -> bool:
        return bool((self.shift == 0).all() and (self.scale == 1).all())

    @property
    def is_identity(self) -> bool:
        """Whether the map changes nothing (then the model's units are the user's). Read when the scaler is made or
        loaded (``load_state_dict``); write the buffers through those, not in place."""
        return self._identity

    def forward(self, x: Tensor) -> Tensor:
        """User units → model units, :math:`(x - \\mu) / \\sigma` (``x`` of shape ``(B, *data_shape)``)."""
        if self.is_identity:  # exactly the input (no copy): models without scaling behave as before
            return x
        return (x - self.shift.to(x.dtype)) / self.scale.to(x.dtype)

    def inverse(self, y: Tensor) -> Tensor:
        """Model units → user units, :math:`y \\sigma + \\mu`."""
        if self.is_identity:
            return y
        return y * self.scale.to(y.dtype) + self.shift.to(y.dtype)

    def log_abs_det(self) -> Tensor:
        r""":math:`\log|\det s'(x)| = -\sum_i \log\sigma_i` (a constant): the density term of a bijective (d = D) model.

        ``log p_user(x) = log p_model(s(x)) + log_abs_det()``. For d < D the on-manifold term is not this sum (see the
        module docstring); :func:`scaled_maps` gives the exact maps to differentiate instead.

        Example:
            >>> float(AffineScaler(torch.zeros(2), torch.tensor([2.0, 5.0])).log_abs_det())  # -log 10
            -2.302585...
        """
        return -self.scale.double().log().sum()

    def spec(self) -> dict[str, Any]:
        """How it was fitted, as plain data (the numbers are the buffers)."""
        return {"method": self.method, "value_range": self.value_range}

    def describe(self, columns: Sequence[str] | None = None, max_columns: int = 4) -> str:
        """One line for logs: the method and the first columns' shift and scale."""
        if self.is_identity:
            return "none (the model's units are the data's)"
        shift, scale = self.shift.flatten(), self.scale.flatten()
        if self.method == "range":
            low, high = self.value_range or (float(shift[0]), float(shift[0] + scale[0]))
            return f"range: [{low:g}, {high:g}] -> [0, 1]"
        if self.method == "global":
            return f"global: (x - {float(shift[0]):.4g}) / {float(scale[0]):.4g}"
        names = list(columns) if columns is not None else [str(i) for i in range(shift.numel())]
        shown = range(min(max_columns, shift.numel()))
        parts = [f"{names[i]}: (x - {float(shift[i]):.4g}) / {float(scale[i]):.4g}" for i in shown]
        more = f", ... ({shift.numel()} columns)" if shift.numel() > max_columns else ""
        return "features: " + ", ".join(parts) + more

    def extra_repr(self) -> str:
        return f"method={self.method}, shape={tuple(self.shift.shape)}"


def _reread_identity(module: AffineScaler, incompatible_keys: Any) -> None:
    module._identity = module._is_identity()


def fit_scaler(x: Tensor, method: str, *, value_range: Sequence[float] | None = None) -> AffineScaler:
    r"""Fits the map ``method`` on training data ``x`` of shape ``(N, *data_shape)`` (statistics in float64).

    Arguments:
        x: The training split (never validation or test: their statistics would leak into the model).
        method: ``features``, ``global``, ``range`` or ``none`` (see the module docstring; resolve ``auto`` first
            with :func:`resolve_standardize`).
        value_range: ``[low, high]`` for ``range``, mapped to [0, 1].

    Returns:
        An :class:`AffineScaler`.

    Example:
        >>> fit_scaler(torch.tensor([[0.0], [16.0]]), "range", value_range=[0, 16]).scale
        tensor([16.])
    """
    shape = tuple(x.shape[1:])
    if method == "none":
        return AffineScaler.identity(shape)
    if method == "range":
        if value_range is None or len(value_range) != 2:
            raise ValueError("range scaling needs value_range=[low, high]")
        low, high = (float(v) for v in value_range)
        if not (math.isfinite(low) and math.isfinite(high) and high > low):
            raise ValueError(f"value_range must be two finite numbers [low, high] with low < high, got {list(value_range)}")
        return AffineScaler(torch.full(shape, low), torch.full(shape, high - low), method="range", value_range=[low, high])
    if x.shape[0] < 2:
        raise ValueError(f"{method} scaling needs at least 2 training rows to estimate a spread, got {x.shape[0]}")
    flat = x.detach().reshape(x.shape[0], -1).double().cpu()
    if method == "features":
        mean, std = flat.mean(0), flat.std(0, unbiased=False)
    elif method == "global":
        mean, std = flat.mean().expand(flat.shape[1]), flat.std(unbiased=False).expand(flat.shape[1])
    else:
        raise ValueError(f"unknown scaling {method!r}; choose from {', '.join(STANDARDIZE_METHODS)}")
    constant = std <= torch.clamp(mean.abs() * _CONSTANT, min=1e-12)
    std = torch.where(constant, torch.ones_like(std), std)  # constant columns: centred, not blown up
    return AffineScaler(mean.reshape(shape).float(), std.reshape(shape).float(), method=method)


def resolve_standardize(setting: str, *, kind: str, train: Tensor, value_range: Sequence[float] | None = None,
                        own_data: bool = True) -> tuple[str, list[float] | None, str | None]:
    r"""What ``data.standardize=setting`` means for these data: ``(method, value_range, note)``.

    ``auto`` (the default) scales **own data** (``data.name=array``, ``image_folder``, tensors given to
    :func:`injflow.api.train`): tables per feature (``features``), images by their declared ``value_range`` to
    [0, 1] — or, when none is declared and the values leave [0, 1], by the training split's [min, max] with a ``note``
    saying to declare it. A declared ``value_range`` means ``range`` scaling whatever the kind. The library's data
    sets arrive preprocessed as the papers do (``auto`` = ``none``).

    Arguments:
        setting: One of :data:`STANDARDIZE_METHODS`.
        kind: ``tabular``, ``toy`` or ``image``.
        train: The training split (only its values' range is read).
        value_range: The declared ``[low, high]`` (``data.value_range``).
        own_data: Whether the data are the user's own.

    Example:
        >>> resolve_standardize("auto", kind="image", train=torch.tensor([[0.0, 16.0]]), value_range=[0, 16])
        ('range', [0.0, 16.0], None)
    """
    if setting not in STANDARDIZE_METHODS:
        raise ValueError(f"data.standardize: expected one of {', '.join(STANDARDIZE_METHODS)}, got {setting!r}")
    declared = None if value_range is None else [float(v) for v in value_range]
    if declared is not None and setting not in ("auto", "range"):
        raise ValueError(f"data.value_range is for range scaling, but data.standardize is {setting!r}")
    if setting == "range" or declared is not None:
        if declared is None:
            lo, hi = float(train.min()), float(train.max())
            return "range", [lo, hi], (f"data.standardize=range without data.value_range: the training split's "
                                       f"[{lo:g}, {hi:g}] is mapped to [0, 1]; declare data.value_range=[low, high] to "
                                       f"fix it")
        return "range", declared, None
    if setting != "auto":
        return setting, None, None
    if not own_data:
        return "none", None, None
    if kind == "image":
        lo, hi = float(train.min()), float(train.max())
        if lo >= 0 and hi <= 1:
            return "none", None, None
        return "range", [lo, hi], (f"image values span [{lo:g}, {hi:g}], the model's image range is [0, 1]: scaled by the "
                                   f"training split's range; declare data.value_range=[low, high] (e.g. [0, 255]) to fix it")
    return "features", None, None


def scale_warning(x: Tensor, *, kind: str, columns: Sequence[str] | None = None, where: str = "data.train") -> str | None:
    r"""A warning naming the features of unscaled data far from what the model assumes, or ``None``.

    Tables: a column with standard deviation above :data:`WARN_STD` or mean of magnitude above :data:`WARN_MEAN`
    (the prior is :math:`\mathcal N(0, I)` and β weighs squared errors in data units). Images: values outside the
    model's image range [0, 1] (pictures clamp to it, FID assumes it).

    Example:
        >>> scale_warning(torch.tensor([[0.0, 1000.0], [1.0, 3000.0]]), kind="tabular", columns=["a", "area"])
        'data.train is far from standardised: column area (mean 2000, std 1000); ...'
    """
    flat = x.detach().reshape(x.shape[0], -1).double()
    if kind == "image":
        lo, hi = float(flat.min()), float(flat.max())
        if lo < -1e-6 or hi > 1 + 1e-6:
            return (f"{where} holds images with values in [{lo:g}, {hi:g}], outside the model's image range [0, 1] "
                    f"(pictures clamp to it, FID assumes it): set data.standardize=range and data.value_range=[low, high]")
        return None
    mean, std = flat.mean(0), flat.std(0, unbiased=False) if flat.shape[0] > 1 else torch.zeros(flat.shape[1], dtype=flat.dtype)
    far = torch.nonzero((std > WARN_STD) | (mean.abs() > WARN_MEAN)).flatten().tolist()
    if not far:
        return None
    names = list(columns) if columns is not None and len(columns) == flat.shape[1] else [str(i) for i in range(flat.shape[1])]
    listed = ", ".join(f"{names[i]} (mean {float(mean[i]):.4g}, std {float(std[i]):.4g})" for i in far[:5])
    more = f" and {len(far) - 5} more" if len(far) > 5 else ""
    noun = "column" if len(far) == 1 else "columns"
    return (f"{where} is far from standardised: {noun} {listed}{more}; the model assumes features of order one "
            f"(latent prior N(0, I), beta weighs squared errors): set data.standardize=features (or global)")


def scaled_maps(encode: Any, decode: Any, scaler: AffineScaler) -> tuple[Any, Any]:
    r"""The user-unit maps :math:`f_u = f \circ s` and :math:`g_u = s^{-1} \circ g` of model-unit maps ``encode``, ``decode``.

    Differentiating through them gives the exact densities in the user's units (e.g.
    :func:`injflow.estimators.decoder_log_volume` of ``g_u`` is :math:`\tfrac12\log\det(G^\top\operatorname{diag}
    (\sigma)^2 G)`).

    Example:
        >>> f, g = scaled_maps(lambda x: x.sum(1, keepdim=True), lambda z: z.expand(-1, 2), fit_scaler(torch.eye(2), "features"))
        >>> g(torch.zeros(1, 1))
        tensor([[0.5000, 0.5000]])
    """
    return (lambda x, *c: encode(scaler(x), *c)), (lambda z, *c: scaler.inverse(decode(z, *c)))


def fit_data_scaler(data: Any, standardize: str = "auto", value_range: Sequence[float] | None = None
                    ) -> tuple[AffineScaler, str | None]:
    r"""The scaler ``data.standardize`` asks for, fitted on the training split of ``data`` (a
    :class:`~injflow.data.DataSplits`), and the one message to show before training, if any: what ``auto`` chose
    when it had to guess, or :func:`scale_warning`'s when own data stay unscaled and look far from the model's
    assumptions.

    Example:
        >>> from injflow.data import DataSplits
        >>> x = torch.tensor([[1.0, 100.0], [3.0, 300.0], [5.0, 200.0]])
        >>> scaler, message = fit_data_scaler(DataSplits("array", "tabular", x, x, x, (2,)))
        >>> scaler.method, message
        ('features', None)
    """
    own = data.name in OWN_DATA
    method, declared, note = resolve_standardize(standardize, kind=data.kind, train=data.train, value_range=value_range,
                                                 own_data=own)
    scaler = fit_scaler(data.train, method, value_range=declared)
    if note is None and scaler.is_identity and (own or standardize == "none"):
        note = scale_warning(data.train, kind=data.kind, columns=data.info.get("columns"))
    return scaler, note


def scale_splits(data: Any, scaler: AffineScaler) -> Any:
    """``data`` (a :class:`~injflow.data.DataSplits`) in model units: every split mapped by ``scaler``, labels and
    description unchanged (the same object when the scaler is the identity)."""
    if scaler.is_identity:
        return data
    import dataclasses

    with torch.no_grad():
        mapped = {name: None if getattr(data, name) is None else scaler(getattr(data, name)).contiguous()
                  for name in ("train", "val", "test")}
    return dataclasses.replace(data, **mapped)
