r"""The trained model: encoder :math:`f`, decoder :math:`g`, latent prior :math:`p_Z` and post-fit samplers.

:class:`InjectiveFlow` is what the engine trains and what a user holds afterwards. It answers
``encode``, ``decode``, ``sample(n, sampler=...)`` and ``log_prob(x)``, the exact on-manifold
log-density of the projection :math:`\hat x = g(f(x))`,

.. math:: \log p(\hat x) = \log p_Z(f(x)) - \tfrac12 \log\det\big(g'(z)^\top g'(z)\big)\Big|_{z = f(x)},

always reported with the reconstruction error :math:`\|\hat x - x\|^2` (FIF eq. 3 with the exact
log-determinant), and is saved together with its config.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..distributions import LatentDistribution, StandardNormal, build_latent, distribution_from_spec, fit_sampler
from ..nets.normalization import use_composite_batchnorm

__all__ = ["InjectiveFlow", "atomic_torch_save"]

FORMAT = "injflow-model"
FORMAT_VERSION = 1


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename, so ``path`` is never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _batched(fn, x: Tensor, batch_size: int | None):
    if batch_size is None or x.shape[0] <= batch_size:
        return fn(x)
    outs = [fn(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*outs))
    return torch.cat(outs)


class InjectiveFlow(nn.Module):
    r"""An injective flow :math:`x \mapsto z = f(x) \in \mathbb R^d`, :math:`z \mapsto \hat x = g(z) \in \mathbb R^D`.

    Arguments:
        encoder: Maps ``(B, *data_shape)`` to ``(B, d)``.
        decoder: Maps ``(B, d)`` to ``(B, *data_shape)``.
        latent: The prior :math:`p_Z`; default: standard normal of dimension ``latent_dim``.
        latent_dim: The latent dimension d (needed when ``latent`` is not given).
        data_shape: The shape of one sample (needed to save and rebuild from a config).
        config: The run config as a plain dict (saved with the model; rebuilds the nets on load).

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
    ):
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
        self.data_shape = tuple(data_shape) if data_shape is not None else None
        self.config = config

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_config(cls, config: Any, *, data_shape: tuple[int, ...] | None = None) -> "InjectiveFlow":
        """Builds the nets and latent a config describes (a :class:`~injflow.train.config.Config`, dict or YAML path).

        Arguments:
            config: The config.
            data_shape: The shape of one sample; default: loads the config's data set to find it.

        Example:
            >>> flow = InjectiveFlow.from_config("configs/default.yaml")  # doctest: +SKIP
        """
        from ..nets import build_autoencoder
        from .config import Config, config_from_dict, config_to_dict, load_config

        if isinstance(config, (str, Path)):
            config = load_config(config)
        elif isinstance(config, dict):
            config = config_from_dict(config)
        elif not isinstance(config, Config):
            raise TypeError(f"config must be a Config, dict or path, got {type(config).__name__}")
        if data_shape is None:
            from ..data import load_dataset

            dc = config.data
            data_shape = load_dataset(dc.name, seed=dc.seed, root=dc.root, download=dc.download, **dc.options).data_shape
        m = config.model
        encoder, decoder = build_autoencoder(m.architecture, data_shape=tuple(data_shape), latent_dim=m.latent_dim, **m.options)
        latent = build_latent(m.latent.name, m.latent_dim, **m.latent.options)
        flow = cls(encoder, decoder, latent, data_shape=tuple(data_shape), config=config_to_dict(config))
        config.build_method().prepare(flow)  # the nets as the config's method trains them (e.g. ae_sn, vae)
        return flow

    @property
    def latent_dim(self) -> int:
        return self.latent.dim

    # ------------------------------------------------------------------ maps

    def encode(self, x: Tensor) -> Tensor:
        """:math:`z = f(x)`, shape ``(B, d)``."""
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        r""":math:`\hat x = g(z)`, shape ``(B, *data_shape)``."""
        return self.decoder(z)

    def forward(self, x: Tensor) -> Tensor:
        """The projection onto the learned manifold, :math:`g(f(x))`."""
        return self.decode(self.encode(x))

    def _device(self) -> torch.device:
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
        self, n: int, *, sampler: str = "prior", temperature: float = 1.0, seed: int | None = None, batch_size: int = 4096
    ) -> Tensor:
        """Draws ``n`` samples :math:`g(z)`, :math:`z \\sim` the chosen latent sampler at a temperature.

        Arguments:
            n: Number of samples.
            sampler: ``prior`` (the training latent), ``gaussian`` or ``gmm`` (post-fit).
            temperature: Scales the latent spread (1 = the distribution itself).
            seed: Seed for reproducible draws.
            batch_size: Decoder batch size.

        Returns:
            Samples of shape ``(n, *data_shape)``.
        """
        dist = self.sampler(sampler)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        was_training = self.training
        self.eval()
        try:
            z = dist.sample(n, temperature=temperature, generator=gen).to(self._device())
            return _batched(self.decode, z, batch_size)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def encode_all(self, x: Tensor, *, batch_size: int = 4096) -> Tensor:
        """Encodes a whole split in eval mode, batched, without gradients."""
        was_training = self.training
        self.eval()
        try:
            return _batched(lambda b: self.encode(b.to(self._device())), x, batch_size)
        finally:
            self.train(was_training)

    def fit_samplers(
        self, x: Tensor, *, names: tuple[str, ...] | list[str] = ("gaussian", "gmm"), n_components: int = 10, seed: int = 0
    ) -> "InjectiveFlow":
        """Fits post-fit latent samplers on the encoded training data (Kumar et al. 2020, §2.2.1).

        Arguments:
            x: Training data.
            names: Which samplers: ``gaussian`` (full covariance) and/or ``gmm`` (full covariances).
            n_components: GMM components.
            seed: GMM initialisation seed.

        Returns:
            ``self``, with ``samplers[name]`` set.
        """
        z = self.encode_all(x).float()
        for name in names:
            options = {"n_components": n_components, "seed": seed} if name == "gmm" else {}
            self.samplers[name] = fit_sampler(name, z.cpu(), **options).to(self._device())
        return self

    # ------------------------------------------------------------------ likelihood

    def log_prob(
        self, x: Tensor, *, return_reconstruction: bool = False, batch_size: int | None = 512, chunk_size: int | None = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        r"""Exact on-manifold log-density of the projection :math:`\hat x = g(f(x))`.

        .. math:: \log p(\hat x) = \log p_Z(z) - \tfrac12\log\det(g'(z)^\top g'(z)),\quad z = f(x)

        The value is the density *on the manifold*; it is meaningful only together with the reconstruction
        error :math:`\|\hat x - x\|^2`, which ``return_reconstruction=True`` also returns. Costs d decoder JVPs
        per sample (the full decoder Jacobian), so it is meant for small d.

        Arguments:
            x: Data ``(B, *data_shape)``.
            return_reconstruction: Also return the per-sample squared reconstruction error.
            batch_size: Rows per chunk.
            chunk_size: Jacobian columns per pass (bounds memory), passed to the estimator.

        Returns:
            ``log_prob`` of shape ``(B,)`` (and ``reconstruction`` of shape ``(B,)``), detached.
        """
        from ..estimators import decoder_log_volume

        def one(xb: Tensor) -> tuple[Tensor, Tensor]:
            xb = xb.to(self._device())
            with torch.no_grad():
                z = self.encode(xb)
                x_hat = self.decode(z)
            with torch.enable_grad():
                log_vol = decoder_log_volume(self.decode, z.detach(), chunk_size=chunk_size)
            lp = self.latent.log_prob(z) - log_vol.detach().to(z.dtype)
            return lp.detach(), (x_hat - xb).flatten(1).pow(2).sum(1)

        was_training = self.training
        self.eval()
        try:
            lp, rec = _batched(one, x, batch_size)
        finally:
            self.train(was_training)
        return (lp, rec) if return_reconstruction else lp

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> Path:
        """Saves weights, latent, post-fit samplers, data shape and config to one file (atomically).

        Example:
            >>> flow.save("run/model.pt"); flow2 = InjectiveFlow.load("run/model.pt")  # doctest: +SKIP
        """
        path = Path(path)
        nets = {k: v for k, v in self.state_dict().items() if k.startswith(("encoder.", "decoder."))}
        atomic_torch_save(
            {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "config": self.config,
                "data_shape": self.data_shape,
                "latent": self.latent.spec(),
                "latent_state": self.latent.state_dict(),
                "samplers": {k: v.spec() for k, v in self.samplers.items()},
                "nets": nets,
            },
            path,
        )
        return path

    @classmethod
    def load(
        cls, path: str | Path, *, encoder: nn.Module | None = None, decoder: nn.Module | None = None, map_location: Any = "cpu"
    ) -> "InjectiveFlow":
        """Loads a model saved by :meth:`save`. Nets are rebuilt from the saved config unless given.

        Arguments:
            path: The file.
            encoder, decoder: Your own modules (same architecture as when saved) for models not built from a config.
            map_location: Passed to ``torch.load``.
        """
        blob = torch.load(path, map_location=map_location, weights_only=False)
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise ValueError(f"{path} is not an injflow model file (use a run's model.pt)")
        latent = distribution_from_spec(blob["latent"])
        latent.load_state_dict(blob["latent_state"])
        if encoder is None or decoder is None:
            if not blob.get("config"):
                raise ValueError(f"{path} was saved from custom modules: pass encoder= and decoder= to load it")
            flow = cls.from_config(blob["config"], data_shape=tuple(blob["data_shape"]))
            encoder, decoder = flow.encoder, flow.decoder
        flow = cls(encoder, decoder, latent, data_shape=blob["data_shape"], config=blob.get("config"))
        if blob.get("config"):  # the nets as the saved method trained them (idempotent for rebuilt nets)
            from .config import config_from_dict

            config_from_dict(blob["config"]).build_method().prepare(flow)
        missing, unexpected = flow.load_state_dict(blob["nets"], strict=False)
        bad = [k for k in missing if k.startswith(("encoder.", "decoder."))] + list(unexpected)
        if bad:
            raise ValueError(f"{path}: weights do not fit the networks: {bad[:5]}")
        for name, spec in blob.get("samplers", {}).items():
            flow.samplers[name] = distribution_from_spec(spec)
        return flow

    def extra_repr(self) -> str:
        shape = "?" if self.data_shape is None else "x".join(map(str, self.data_shape))
        return f"data_shape={shape}, latent_dim={self.latent_dim}, D={math.prod(self.data_shape) if self.data_shape else '?'}"
