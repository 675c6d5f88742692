r"""The trained model: encoder :math:`f`, decoder :math:`g`, latent prior :math:`p_Z` and post-fit samplers.

:class:`InjectiveFlow` is what the engine trains and what a user holds afterwards. It answers
``encode``, ``decode``, ``sample(n, sampler=...)`` and ``log_prob(x)``, the exact on-manifold
log-density of the projection :math:`\hat x = g(f(x))`,

.. math:: \log p(\hat x) = \log p_Z(f(x)) - \tfrac12 \log\det\big(g'(z)^\top g'(z)\big)\Big|_{z = f(x)},

always reported with the reconstruction error :math:`\|\hat x - x\|^2` (FIF eq. 3 with the exact
log-determinant). It describes itself — data shape, data kind (``toy``/``tabular``/``image``), the image shape
of flat image data, the number of classes of a conditional model, and the config that built it — and is saved
to (and loaded from) a file that holds tensors and plain data only.

A model may carry a *scaler* (:mod:`injflow.scaling`, ``data.standardize``): the affine map :math:`s` from the
user's units to the units the nets were trained in. The user-facing maps are then :math:`f \circ s` and
:math:`s^{-1} \circ g` — ``encode``, ``decode``, ``sample``, ``log_prob`` (its volume term is that of
:math:`s^{-1} \circ g`, exact) and everything built on them take and return the user's units — while
:meth:`InjectiveFlow.given`, what methods and estimators train through, is in the model's units.

A *conditional* model (``num_classes`` set) has nets ``encoder(x, c)`` and ``decoder(z, c)`` for integer class
labels ``c`` of shape ``(B,)``; every map then takes ``c`` (FIF figs. 6, 8, 9 use conditional MNIST).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import persistence
from .devices import full_float32
from .distributions import LatentDistribution, StandardNormal, fit_sampler
from .nets.normalization import use_composite_batchnorm
from .scaling import AffineScaler

__all__ = ["InjectiveFlow", "DATA_KINDS"]
#: What the data are; decides the pictures and the sample-quality metric (FID for images, W2 otherwise).
DATA_KINDS = ("toy", "tabular", "image")
#: Post-fit samplers are fitted on at most this many training points (a fixed prefix, so every caller agrees).
MAX_SAMPLER_POINTS = 50_000


def _batched(
    fn: Callable[..., Tensor | tuple[Tensor, ...]], x: Tensor, batch_size: int | None, c: Tensor | None = None
) -> Tensor | tuple[Tensor, ...]:
    if batch_size is None or x.shape[0] <= batch_size:
        return fn(x) if c is None else fn(x, c)
    outs = [fn(x[i : i + batch_size]) if c is None else fn(x[i : i + batch_size], c[i : i + batch_size])
            for i in range(0, x.shape[0], batch_size)]
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*outs))
    return torch.cat(outs)


class InjectiveFlow(nn.Module):
    r"""An injective flow :math:`x \mapsto z = f(x) \in \mathbb R^d`, :math:`z \mapsto \hat x = g(z) \in \mathbb R^D`.

    Arguments:
        encoder: Maps ``(B, *data_shape)`` to ``(B, d)`` (``encoder(x, c)`` for a conditional model).
        decoder: Maps ``(B, d)`` to ``(B, *data_shape)`` (``decoder(z, c)`` for a conditional model).
        latent: The prior :math:`p_Z`; default: standard normal of dimension ``latent_dim``.
        latent_dim: The latent dimension d (needed when ``latent`` is not given).
        data_shape: The shape of one sample (needed to save and rebuild from a config).
        config: The run config as a plain dict (saved with the model; rebuilds the nets on load).
        data_kind: ``"toy"``, ``"tabular"`` or ``"image"`` (default: ``"image"`` for ``(C, H, W)`` data, else
            ``"tabular"``).
        image_shape: ``(C, H, W)`` of one sample of image data stored flat (e.g. ``(1, 8, 8)`` for 64 features).
        num_classes: Number of class labels of a conditional model (``None``: unconditional).

    Fused ``torch.nn.BatchNorm{1,2,3}d`` layers inside ``encoder``/``decoder`` are swapped in place for
    :mod:`injflow.nets.normalization`'s composite twins (same parameters and ``state_dict``).

    Example:
        >>> f, g = nn.Linear(2, 1), nn.Linear(1, 2)
        >>> flow = InjectiveFlow(f, g, latent_dim=1, data_shape=(2,))
        >>> flow.sample(3).shape
        torch.Size([3, 2])
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        latent: LatentDistribution | None = None,
        *,
        latent_dim: int | None = None,
        data_shape: tuple[int, ...] | None = None,
        config: dict[str, Any] | None = None,
        data_kind: str | None = None,
        image_shape: tuple[int, ...] | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if latent is None:
            if latent_dim is None:
                raise ValueError("give either a latent distribution or latent_dim")
            latent = StandardNormal(latent_dim)
        if latent_dim is not None and latent.dim != latent_dim:
            raise ValueError(f"latent_dim={latent_dim} does not match the latent distribution's dim={latent.dim}")
        # Fused torch BatchNorm gives wrong gradients through JVP tangents and double VJPs in training
        # mode (see injflow.nets.normalization); the composite twin keeps every estimator path exact.
        self.encoder = use_composite_batchnorm(encoder)
        self.decoder = use_composite_batchnorm(decoder)
        self.latent = latent
        self.samplers = nn.ModuleDict()
        self.config = config
        self.data_shape: tuple[int, ...] | None = None
        self.data_kind: str | None = None
        self.image_shape: tuple[int, ...] | None = None
        self.num_classes = None if num_classes is None else int(num_classes)
        #: Whether the nets are the plain ones the method's :meth:`~injflow.methods.Method.finalize` exported.
        self.finalized = False
        #: User units → model units (:mod:`injflow.scaling`); the identity until :meth:`set_scaler`.
        self.scaler: AffineScaler | None = None
        #: The training data's column names (the header of the samples a ``.csv`` gets), if known.
        self.columns: list[str] | None = None
        if self.num_classes is not None and self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 for a conditional model, got {num_classes}")
        self.describe_data(data_shape, data_kind=data_kind, image_shape=image_shape)

    def describe_data(
        self, data_shape: tuple[int, ...] | None, *, data_kind: str | None = None, image_shape: tuple[int, ...] | None = None
    ) -> InjectiveFlow:
        """Sets what one sample looks like (shape, kind, image shape of flat image data); checks they agree."""
        if data_shape is None:
            if data_kind is not None or image_shape is not None:
                raise ValueError("data_kind and image_shape need a data_shape")
            return self
        data_shape = tuple(int(s) for s in data_shape)
        if data_kind is None:
            data_kind = "image" if len(data_shape) == 3 else "tabular"
        if data_kind not in DATA_KINDS:
            raise ValueError(f"data_kind must be one of {', '.join(DATA_KINDS)}, got {data_kind!r}")
        if image_shape is None and data_kind == "image" and len(data_shape) == 3:
            image_shape = data_shape
        if image_shape is not None:
            image_shape = tuple(int(s) for s in image_shape)
            if len(image_shape) != 3 or math.prod(image_shape) != math.prod(data_shape):
                raise ValueError(f"image_shape {image_shape} must be (C, H, W) with as many values as data_shape {data_shape}")
            if data_kind != "image":
                raise ValueError(f"image_shape is given but data_kind is {data_kind!r}, not 'image'")
        self.data_shape, self.data_kind, self.image_shape = data_shape, data_kind, image_shape
        if self.scaler is None or tuple(self.scaler.shift.shape) != data_shape:
            self.scaler = AffineScaler.identity(data_shape).to(self.device)
        return self

    def set_scaler(self, scaler: AffineScaler, *, columns: list[str] | None = None) -> InjectiveFlow:
        """Sets the map from the user's units to the model's (fitted on the training split; :mod:`injflow.scaling`)
        and the data's column names; the nets are unchanged."""
        if self.data_shape is not None and tuple(scaler.shift.shape) != tuple(self.data_shape):
            raise ValueError(f"a scaler for samples of shape {tuple(scaler.shift.shape)} does not fit data of shape "
                             f"{self.data_shape}")
        self.scaler = scaler.to(self.device)
        if columns is not None:
            self.columns = list(columns)
        return self

    def restore_scaling(self, info: dict[str, Any]) -> InjectiveFlow:
        """Takes the scaling method and the column names from a saved :meth:`describe` (the scaler's numbers come
        with the weights)."""
        spec = info.get("scaling") or {}
        if self.scaler is not None and spec:
            self.scaler.method = spec.get("method", self.scaler.method)
            self.scaler.value_range = spec.get("value_range")
        self.columns = info.get("columns") or self.columns
        return self

    @property
    def scaled(self) -> bool:
        """Whether the model's units differ from the user's (a scaler that is not the identity)."""
        return self.scaler is not None and not self.scaler.is_identity

    @property
    def value_range(self) -> tuple[float, float]:
        """The range of image values in the user's units (what pictures span): the declared ``data.value_range`` of
        ``range`` scaling, else the model's image range [0, 1]."""
        if self.scaler is not None and self.scaler.method == "range" and self.scaler.value_range:
            low, high = self.scaler.value_range
            return float(low), float(high)
        return 0.0, 1.0

    def to_model_units(self, x: Tensor) -> Tensor:
        """:math:`s(x)`: user units → the units the nets see (``x`` unchanged without a scaler)."""
        return x if self.scaler is None else self.scaler(x)

    def to_user_units(self, x: Tensor) -> Tensor:
        """:math:`s^{-1}(x)`: the nets' units → the user's."""
        return x if self.scaler is None else self.scaler.inverse(x)

    def in_model_units(self) -> InjectiveFlow:
        """The same model (shared nets, latent and samplers) without its scaler: every map in the model's units (e.g.
        images in [0, 1] for FID)."""
        if not self.scaled:
            return self
        twin = type(self)(self.encoder, self.decoder, self.latent, data_shape=self.data_shape, config=self.config,
                          data_kind=self.data_kind, image_shape=self.image_shape, num_classes=self.num_classes)
        twin.samplers, twin.finalized, twin.columns = self.samplers, self.finalized, self.columns
        return twin

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_config(
        cls,
        config: Any,
        *,
        data_shape: tuple[int, ...] | None = None,
        data_kind: str | None = None,
        image_shape: tuple[int, ...] | None = None,
        num_classes: int | None = None,
        prepare: bool = True,
    ) -> InjectiveFlow:
        """Builds the nets and latent a config describes (a :class:`~injflow.config.Config`, dict or YAML path).

        Arguments:
            config: The config.
            data_shape, data_kind, image_shape, num_classes: What the data look like; default: loads the config's
                data set to find out.
            prepare: Change the nets as the config's method trains them (:meth:`Method.prepare`, e.g. AE+SN's
                spectral norm); ``False`` for the plain nets a finished run exports (:meth:`Method.finalize`).

        Example:
            >>> flow = InjectiveFlow.from_config("configs/default.yaml", data_shape=(2,), data_kind="toy")
            >>> flow.latent_dim, flow.data_kind
            (1, 'toy')
        """
        return persistence.build_flow(cls, config, data_shape=data_shape, data_kind=data_kind, image_shape=image_shape,
                                      num_classes=num_classes, prepare=prepare)

    @property
    def latent_dim(self) -> int:
        return self.latent.dim

    @property
    def conditional(self) -> bool:
        """Whether the nets take a class label."""
        return self.num_classes is not None

    # ------------------------------------------------------------------ maps

    def _labels(self, c: Tensor | int | None, n: int, device: torch.device | None = None) -> Tensor | None:
        if not self.conditional:
            if c is not None:
                raise ValueError("this model is not conditional: do not pass class labels (c=)")
            return None
        if c is None:
            raise ValueError(f"this model is conditional on a class label: pass c= (integers 0..{self.num_classes - 1})")
        c = torch.as_tensor(c, device=device)
        if c.ndim == 0:
            c = c.expand(n)
        if c.shape != (n,) or c.dtype.is_floating_point or c.dtype == torch.bool:
            raise ValueError(f"class labels must be integers of shape ({n},), got dtype {c.dtype} shape {tuple(c.shape)}")
        if n and (int(c.min()) < 0 or int(c.max()) >= self.num_classes):
            raise ValueError(f"class labels must lie in 0..{self.num_classes - 1}, got {int(c.min())}..{int(c.max())}")
        return c.long()

    def _check_input(self, x: Tensor) -> None:
        """Data of another sample shape get one line naming both shapes (not a matrix-multiplication traceback)."""
        if not isinstance(x, Tensor):
            raise TypeError(f"expected a torch.Tensor of shape (B, *data_shape), got {type(x).__name__}")
        if self.data_shape is not None and tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"the data have samples of shape {tuple(x.shape[1:])} (a batch of shape {tuple(x.shape)}), but "
                             f"this model was made for samples of shape {self.data_shape}")

    def encode(self, x: Tensor, c: Tensor | int | None = None) -> Tensor:
        """:math:`z = f(s(x))` (or :math:`f(s(x), c)`) of ``x`` in the user's units, shape ``(B, d)``."""
        self._check_input(x)
        c = self._labels(c, x.shape[0], x.device)
        x = self.to_model_units(x)
        return self.encoder(x) if c is None else self.encoder(x, c)

    def decode(self, z: Tensor, c: Tensor | int | None = None) -> Tensor:
        r""":math:`\hat x = s^{-1}(g(z))` (or with :math:`g(z, c)`) in the user's units, shape ``(B, *data_shape)``."""
        c = self._labels(c, z.shape[0], z.device)
        return self.to_user_units(self.decoder(z) if c is None else self.decoder(z, c))

    def forward(self, x: Tensor, c: Tensor | int | None = None) -> Tensor:
        """The projection onto the learned manifold, :math:`g(f(x))`."""
        return self.decode(self.encode(x, c), c)

    def reconstruct(self, x: Tensor, c: Tensor | int | None = None) -> Tensor:
        """The projection :math:`s^{-1}(g(f(s(x))))` of ``x`` onto the learned manifold, in the user's units (the
        same as calling the model)."""
        return self(x, c)

    def with_label(self, k: int) -> Any:
        """A view with ``encode(x)``, ``decode(z)`` for one class ``k``, whatever the batch size (exact Jacobians)."""
        return _Label(self, int(k))

    def given(self, c: Tensor | None) -> Any:
        """A view with ``encode(x)``, ``decode(z)`` and ``latent`` in the model's units, for one batch of labels (or
        none: the model itself when it has no scaler).

        Methods and estimators take plain maps; the engine trains through this view on data in the model's units
        (scaled once, before training), a conditional model with each batch's labels.
        """
        return self if c is None and not self.scaled else _Given(self, c)

    @property
    def device(self) -> torch.device:
        """The device of the parameters (the CPU for a model without any); inputs and samples go there."""
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    # ------------------------------------------------------------------ sampling

    def sampler(self, name: str = "prior") -> LatentDistribution:
        """The latent distribution called ``name``: ``prior`` or a fitted post-fit sampler (``gaussian``, ``gmm``)."""
        if name == "prior":
            return self.latent
        if name not in self.samplers:
            raise ValueError(
                f"sampler {name!r} is not fitted; fitted: {['prior', *self.samplers]}. Call fit_samplers(train_data) first."
            )
        return self.samplers[name]

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        sampler: str = "prior",
        temperature: float = 1.0,
        seed: int | None = None,
        batch_size: int = 4096,
        c: Tensor | int | None = None,
    ) -> Tensor:
        """Draws ``n`` samples :math:`g(z)`, :math:`z \\sim` the chosen latent sampler at a temperature.

        Arguments:
            n: Number of samples.
            sampler: ``prior`` (the training latent), ``gaussian`` or ``gmm`` (post-fit).
            temperature: Scales the latent spread (1 = the distribution itself).
            seed: Seed for reproducible draws (the noise is drawn on the CPU, so a seed gives the same samples on
                every device).
            batch_size: Decoder batch size.
            c: Class label(s) of a conditional model: one integer for all samples, or ``(n,)`` labels.

        Returns:
            Samples of shape ``(n, *data_shape)``, on the model's device.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"the number of samples must be an integer >= 0, got {n!r}")
        dist = self.sampler(sampler)
        device = self.device
        labels = self._labels(c, n, device)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        was_training = self.training
        self.eval()
        try:
            z = dist.sample(n, temperature=temperature, generator=gen).to(device)
            return _batched(self.decode, z, batch_size, labels)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def encode_all(self, x: Tensor, *, batch_size: int = 4096, c: Tensor | None = None) -> Tensor:
        """Encodes a whole split in eval mode, batched, without gradients (on the model's device)."""
        self._check_input(x)
        device = self.device
        labels = self._labels(c, x.shape[0])
        was_training = self.training
        self.eval()
        try:
            if labels is None:
                return _batched(lambda b: self.encode(b.to(device)), x, batch_size)
            return _batched(lambda b, cb: self.encode(b.to(device), cb.to(device)), x, batch_size, labels)
        finally:
            self.train(was_training)

    def fit_samplers(
        self,
        x: Tensor,
        *,
        names: tuple[str, ...] | list[str] = ("gaussian", "gmm"),
        n_components: int = 10,
        seed: int = 0,
        c: Tensor | None = None,
        max_points: int | None = MAX_SAMPLER_POINTS,
    ) -> InjectiveFlow:
        """Fits post-fit latent samplers on the encoded training data (Kumar et al. 2020, §2.2.1).

        Every caller (``fit``, ``evaluate``, ``sample``) goes through here, so a run's samplers are the same
        whichever command fitted them.

        Arguments:
            x: Training data.
            names: Which samplers: ``gaussian`` (full covariance) and/or ``gmm`` (full covariances).
            n_components: GMM components.
            seed: GMM initialisation seed.
            c: Class labels of ``x`` for a conditional model (one sampler over all classes' codes).
            max_points: Fit on the first this many points (``None``: all).

        Returns:
            ``self``, with ``samplers[name]`` set.
        """
        if max_points is not None:
            x = x[:max_points]
            c = None if c is None else c[:max_points]
        z = self.encode_all(x, c=c).float()
        for name in names:
            options = {"n_components": n_components, "seed": seed} if name == "gmm" else {}
            self.samplers[name] = fit_sampler(name, z.cpu(), **options).to(self.device)
        return self

    # ------------------------------------------------------------------ likelihood

    def log_prob(
        self,
        x: Tensor,
        *,
        return_reconstruction: bool = False,
        batch_size: int | None = 512,
        chunk_size: int | None = None,
        c: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        r"""Exact on-manifold log-density of the projection :math:`\hat x = g(f(x))`.

        .. math:: \log p(\hat x) = \log p_Z(z) - \tfrac12\log\det(g'(z)^\top g'(z)),\quad z = f(x)

        The value is the density *on the manifold*; it is meaningful only together with the reconstruction
        error :math:`\|\hat x - x\|^2`, which ``return_reconstruction=True`` also returns. Costs d decoder JVPs
        per sample (the full decoder Jacobian), so it is meant for small d.

        A free-form flow (d = D, method ``fff``) is a normalizing flow :math:`f`, and this is instead the exact
        density of x itself by the change of variables on the *encoder* side,

        .. math:: \log p(x) = \log p_Z(f(x)) + \log|\det f'(x)|

        (:func:`~injflow.estimators.log_abs_det_jacobian`: one slogdet of the D × D Jacobian, D backward passes):
        the encoder is the flow whose density the FFF loss trains, and it is defined at every x, whereas the
        decoder's :math:`-\log|\det g'(f(x))|` equals it only where g inverts f. The reconstruction error still
        tells how far g is from :math:`f^{-1}` (and so how far samples :math:`g(z)` follow this density).

        Arguments:
            x: Data ``(B, *data_shape)``.
            return_reconstruction: Also return the per-sample squared reconstruction error.
            batch_size: Rows per chunk.
            chunk_size: Jacobian columns per pass (bounds memory), passed to the estimator.
            c: Class labels for a conditional model.

        Returns:
            ``log_prob`` of shape ``(B,)`` (and ``reconstruction`` of shape ``(B,)``), detached, on the model's
            device.
        """
        from .estimators import decoder_log_volume, log_abs_det_jacobian

        self._check_input(x)
        device = self.device
        labels = self._labels(c, x.shape[0])
        square = self.latent_dim == math.prod(x.shape[1:])  # a free-form flow: the density of x, encoder side

        def one(xb: Tensor, view: Any) -> tuple[Tensor, Tensor]:
            xb = xb.to(device)
            with torch.no_grad(), full_float32():  # exact numbers: no TF32 on a GPU (injflow.devices)
                z = view.encode(xb)
                x_hat = view.decode(z)
            with torch.enable_grad(), full_float32():
                if square:
                    log_vol = -log_abs_det_jacobian(view.encode, xb, chunk_size=chunk_size)
                else:
                    log_vol = decoder_log_volume(view.decode, z.detach(), chunk_size=chunk_size)
            lp = self.latent.log_prob(z) - log_vol.detach().to(z.dtype)
            return lp.detach(), (x_hat - xb).flatten(1).pow(2).sum(1)

        was_training = self.training
        self.eval()
        try:
            if labels is None:
                lp, rec = _batched(lambda xb: one(xb, self), x, batch_size)
            else:  # one class at a time: a constant label fits any batch the Jacobian code forms
                dtype = next(self.parameters()).dtype
                lp = torch.empty(x.shape[0], device=device, dtype=dtype)
                rec = torch.empty(x.shape[0], device=device, dtype=dtype)
                for k in labels.unique().tolist():
                    rows = (labels == k).nonzero().flatten()
                    # k=k binds this iteration's class (the lambda is only called inside _batched, right here).
                    lp[rows.to(device)], rec[rows.to(device)] = _batched(lambda xb, k=k: one(xb, self.with_label(k)), x[rows],
                                                                         batch_size)
        finally:
            self.train(was_training)
        return (lp, rec) if return_reconstruction else lp

    # ------------------------------------------------------------------ persistence

    def describe(self) -> dict[str, Any]:
        """What rebuilds this model: config, data shape/kind, image shape, classes (plain data, saved with it)."""
        return {
            "config": self.config,
            "data_shape": None if self.data_shape is None else list(self.data_shape),
            "data_kind": self.data_kind,
            "image_shape": None if self.image_shape is None else list(self.image_shape),
            "num_classes": self.num_classes,
            "finalized": self.finalized,
            "scaling": None if self.scaler is None else self.scaler.spec(),
            "columns": self.columns,
        }

    def save(self, path: str | Path) -> Path:
        """Saves weights, latent, post-fit samplers and :meth:`describe` to one file (atomically; tensors and plain
        data only, so loading it never runs code; :mod:`injflow.persistence`).

        Example:
            >>> flow.save("run/model.pt"); flow2 = InjectiveFlow.load("run/model.pt")  # doctest: +SKIP
        """
        return persistence.save_model(self, path)

    def load_nets(self, state: dict[str, Tensor], *, source: str | Path, prefix: str = "") -> InjectiveFlow:
        """Loads encoder/decoder(/latent) weights from ``state`` (keys under ``prefix``); a mismatch names ``source``."""
        return persistence.load_nets(self, state, source=source, prefix=prefix)

    @classmethod
    def load(
        cls, path: str | Path, *, encoder: nn.Module | None = None, decoder: nn.Module | None = None, map_location: Any = "cpu"
    ) -> InjectiveFlow:
        """Loads a model saved by :meth:`save`. Nets are rebuilt from the saved config unless given.

        Arguments:
            path: The file.
            encoder, decoder: Your own modules (same architecture as when saved) for models not built from a config.
            map_location: Where the model goes (``"cpu"``, ``"cuda"``, ...): nets, latent and samplers alike.

        Raises:
            CheckpointError: the file is not an injflow model, is corrupt, or does not fit the given modules.
            UnsafeFileError: the file would run code when unpickled (never loaded).
        """
        return persistence.load_model(cls, path, encoder=encoder, decoder=decoder, map_location=map_location)

    @classmethod
    def load_from_checkpoint(
        cls, path: str | Path, *, encoder: nn.Module | None = None, decoder: nn.Module | None = None, map_location: Any = "cpu"
    ) -> InjectiveFlow:
        """The model inside a training checkpoint (``last.ckpt``/``best.ckpt``); needs nothing else.

        Checkpoints carry the config, data shape and kind (see :meth:`describe`); post-fit samplers are not in
        checkpoints (they are fitted after training, see :meth:`fit_samplers`).
        """
        return persistence.load_checkpoint_model(cls, path, encoder=encoder, decoder=decoder, map_location=map_location)

    def save_pretrained(self, directory: str | Path, **options: Any) -> Path:
        """Writes a Hugging Face model folder (``config.json``, ``model.safetensors``, ``README.md``; no pickle):
        :func:`injflow.hub.save_pretrained` (needs ``injflow[hub]``)."""
        from .hub import save_pretrained

        return save_pretrained(self, directory, **options)

    @classmethod
    def from_pretrained(cls, source: str | Path, **options: Any) -> InjectiveFlow:
        """Loads a folder written by :meth:`save_pretrained` (or a Hub repo id): :func:`injflow.hub.from_pretrained`."""
        from .hub import from_pretrained

        return from_pretrained(source, flow_class=cls, **options)

    def push_to_hub(self, repo_id: str, **options: Any) -> str:
        """Uploads the model folder to the Hugging Face Hub: :func:`injflow.hub.push_to_hub` (network and token)."""
        from .hub import push_to_hub

        return push_to_hub(self, repo_id, **options)

    def extra_repr(self) -> str:
        shape = "?" if self.data_shape is None else "x".join(map(str, self.data_shape))
        extra = f", num_classes={self.num_classes}" if self.conditional else ""
        return f"data_shape={shape}, latent_dim={self.latent_dim}, kind={self.data_kind}{extra}"


class _Label:
    """A conditional model with one class for every row, whatever the batch (for Jacobian code that reshapes)."""

    def __init__(self, flow: InjectiveFlow, k: int) -> None:
        self.flow, self.k = flow, k
        self.latent = flow.latent

    def _c(self, t: Tensor) -> Tensor:
        return torch.full((t.shape[0],), self.k, dtype=torch.long, device=t.device)

    def encode(self, x: Tensor) -> Tensor:  # user units, like the model's own maps
        return self.flow.encoder(self.flow.to_model_units(x), self._c(x))

    def decode(self, z: Tensor) -> Tensor:
        return self.flow.to_user_units(self.flow.decoder(z, self._c(z)))


class _Given:
    """The nets in the model's units, with a conditional model's labels fixed for one batch: what methods and
    estimators see (``c`` is ``None`` for an unconditional model with a scaler).

    Estimators that form bigger batches (a chunk of Jacobian directions, K Hutchinson vectors) stack copies of the
    whole batch, so a batch of m·B rows gets the labels repeated m times.
    """

    def __init__(self, flow: InjectiveFlow, c: Tensor | None) -> None:
        self.flow, self.c = flow, c
        self.latent = flow.latent

    def _c(self, t: Tensor) -> Tensor:
        n, b = t.shape[0], self.c.shape[0]
        if n == b:
            return self.c
        if n % b:
            raise ValueError(f"a batch of {n} rows does not fit the {b} labels of this batch")
        return self.c.repeat(n // b)

    def encode(self, x: Tensor) -> Tensor:
        return self.flow.encoder(x) if self.c is None else self.flow.encoder(x, self._c(x))

    def decode(self, z: Tensor) -> Tensor:
        return self.flow.decoder(z) if self.c is None else self.flow.decoder(z, self._c(z))

    def __getattr__(self, name: str) -> Any:  # anything else (nets, samplers, latent_dim...) from the model
        return getattr(self.flow, name)
