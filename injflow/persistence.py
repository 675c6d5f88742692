r"""Everything about a model that is not the model: building it from a config, saving it, loading it.

:class:`~injflow.model.InjectiveFlow` keeps the maps (encode, decode, sample, log_prob); its ``from_config``,
``save``, ``load``, ``load_from_checkpoint`` and ``load_nets`` are one-line doors into this module, which never
imports the model class (it is handed ``cls``), so the layering stays one-way.

Two file kinds, both plain tensors and data (loading never runs code, :func:`injflow.io.load_torch`):

- ``model.pt`` (format ``injflow-model``, version 2): the model's description (:meth:`InjectiveFlow.describe`: config,
  data shape and kind, image shape, classes, whether the nets are the finalized ones), the latent's spec and state,
  the post-fit samplers' specs, and the encoder/decoder weights under ``nets``;
- training checkpoints (``last.ckpt``/``best.ckpt``, written by the engine): Lightning's ``state_dict`` (keys
  ``flow.…``) plus the same description under ``injflow`` (format ``injflow-checkpoint``).

A model built from a config gets its nets rebuilt from that config; a model of your own modules needs them passed in
(``encoder=``, ``decoder=``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .distributions import LatentDistribution, build_latent, distribution_from_spec
from .errors import CheckpointError
from .io import atomic_torch_save, load_torch

if TYPE_CHECKING:
    from .model import InjectiveFlow

__all__ = ["FORMAT", "FORMAT_VERSION", "CHECKPOINT_FORMAT", "build_flow", "save_model", "load_model",
           "load_checkpoint_model", "load_nets"]

FORMAT = "injflow-model"
FORMAT_VERSION = 2
CHECKPOINT_FORMAT = "injflow-checkpoint"


def build_flow(
    cls: type[InjectiveFlow],
    config: Any,
    *,
    data_shape: tuple[int, ...] | None = None,
    data_kind: str | None = None,
    image_shape: tuple[int, ...] | None = None,
    num_classes: int | None = None,
    prepare: bool = True,
) -> InjectiveFlow:
    """The nets and latent a config describes (see :meth:`InjectiveFlow.from_config`)."""
    from .config import as_config, config_to_dict
    from .nets import build_autoencoder
    from .nets.conditional import build_conditional_autoencoder

    config = as_config(config)
    if data_shape is None:
        from .data import load_data_section

        splits = load_data_section(config.data)
        data_shape, data_kind, image_shape = splits.data_shape, splits.kind, splits.image_shape
        num_classes = splits.num_classes if config.model.conditional else None
    m = config.model
    # d = D only passes the config's dimension check for a free-form flow (method fff), so it means one here.
    square = {"full_dimensional": True} if m.latent_dim == math.prod(data_shape) else {}
    if m.conditional:
        if num_classes is None:
            raise ValueError("model.conditional is true, so the number of classes is needed (the data set's labels)")
        encoder, decoder = build_conditional_autoencoder(
            m.architecture, data_shape=tuple(data_shape), latent_dim=m.latent_dim, num_classes=num_classes, **square,
            **m.options
        )
    else:
        num_classes = None
        encoder, decoder = build_autoencoder(m.architecture, data_shape=tuple(data_shape), latent_dim=m.latent_dim,
                                             **square, **m.options)
    latent = build_latent(m.latent.name, m.latent_dim, **m.latent.options)
    flow = cls(encoder, decoder, latent, data_shape=tuple(data_shape), config=config_to_dict(config),
               data_kind=data_kind, image_shape=image_shape, num_classes=num_classes)
    if prepare:
        config.method.prepare(flow)  # the nets as the method trains them (e.g. AE+SN's spectral norm, a VAE's head)
    return flow


def save_model(flow: InjectiveFlow, path: str | Path) -> Path:
    """Writes ``model.pt``: weights, latent, post-fit samplers and the description, atomically."""
    # the scaler's buffers (user units -> model units, injflow.scaling) travel with the nets
    nets = {k: v for k, v in flow.state_dict().items() if k.startswith(("encoder.", "decoder.", "scaler."))}
    blob = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        **flow.describe(),
        "latent": flow.latent.spec(),
        "latent_state": flow.latent.state_dict(),
        "samplers": {k: v.spec() for k, v in flow.samplers.items()},
        "nets": nets,
    }
    return atomic_torch_save(blob, path)


def _rebuild(cls: type[InjectiveFlow], info: dict[str, Any], source: Path, encoder: nn.Module | None,
             decoder: nn.Module | None, latent: LatentDistribution | None = None) -> InjectiveFlow:
    """A model with the architecture ``info`` describes (from its config, or the given custom modules)."""
    shape = info.get("data_shape")
    options = dict(data_shape=None if shape is None else tuple(shape), data_kind=info.get("data_kind"),
                   image_shape=None if info.get("image_shape") is None else tuple(info["image_shape"]),
                   num_classes=info.get("num_classes"))
    finalized = bool(info.get("finalized"))
    if encoder is None or decoder is None:
        if not info.get("config") or info.get("custom_nets"):
            raise CheckpointError(f"{source} was saved from custom modules: pass encoder= and decoder= to load it")
        if shape is None:
            raise CheckpointError(f"{source} does not record the data shape, so its nets cannot be rebuilt: pass "
                                  f"encoder= and decoder=")
        try:
            built = build_flow(cls, info["config"], prepare=not finalized, **options)
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{source}: its saved config does not build a model ({e})") from None
        if latent is None:
            built.finalized = finalized
            return built
        encoder, decoder = built.encoder, built.decoder
    flow = cls(encoder, decoder, latent, latent_dim=None if latent is not None else _latent_dim(info),
               config=info.get("config"), **options)
    if info.get("config") and not finalized:  # the nets as the method trained them (idempotent)
        from .config import config_from_dict

        config_from_dict(info["config"]).method.prepare(flow)
    flow.finalized = finalized
    return flow


def _latent_dim(info: dict[str, Any]) -> int | None:
    config = info.get("config") or {}
    return (config.get("model") or {}).get("latent_dim")


def load_nets(flow: InjectiveFlow, state: dict[str, Tensor], *, source: str | Path, prefix: str = "") -> InjectiveFlow:
    """Loads encoder/decoder(/latent) weights from ``state`` (keys under ``prefix``); a mismatch names ``source``.

    Post-fit sampler entries are ignored (they are fitted after training and saved in ``model.pt``).
    """
    state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    state = {k: v for k, v in state.items() if not k.startswith("samplers.")}
    try:
        result = flow.load_state_dict(state, strict=False)
    except RuntimeError as e:  # size mismatch: another architecture or another data shape
        first = str(e).split("\n\t")[1] if "\n\t" in str(e) else str(e)
        raise CheckpointError(
            f"{source} does not fit this model ({first.strip()[:200]}): it was trained with another architecture, "
            f"latent dimension or data shape"
        ) from None
    missing = [k for k in result.missing_keys if k.startswith(("encoder.", "decoder."))]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{source} does not match the model (missing: {missing[:4]}, unexpected: {list(result.unexpected_keys)[:4]}): "
            f"it was trained with another architecture or config"
        )
    return flow


def _device(map_location: Any) -> torch.device | None:
    """The device a ``map_location`` names (``None`` for mappings and callables, which only torch.load understands)."""
    if isinstance(map_location, (str, torch.device)):
        return torch.device(map_location)
    return None


def load_model(cls: type[InjectiveFlow], path: str | Path, *, encoder: nn.Module | None = None,
               decoder: nn.Module | None = None, map_location: Any = "cpu") -> InjectiveFlow:
    """Reads ``model.pt`` (see :meth:`InjectiveFlow.load`); the whole model — nets, latent, samplers — ends on the
    device ``map_location`` names."""
    path = Path(path)
    blob = load_torch(path, what="model file", map_location=map_location)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an injflow model file (use a run's model.pt, or load a checkpoint "
                              f"with InjectiveFlow.load_from_checkpoint)")
    if blob.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has model-file version {blob.get('version')!r}; this injflow reads version "
                              f"{FORMAT_VERSION}: load it with the injflow that wrote it, or retrain")
    try:
        latent = distribution_from_spec(blob["latent"])
        latent.load_state_dict(blob["latent_state"])
        samplers = {name: distribution_from_spec(spec) for name, spec in blob.get("samplers", {}).items()}
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: its latent or sampler entries are damaged ({e})") from None
    info = dict(blob)
    info["custom_nets"] = not blob.get("config")
    flow = _rebuild(cls, info, path, encoder, decoder, latent)
    load_nets(flow, blob["nets"], source=path).restore_scaling(blob)
    for name, sampler in samplers.items():
        flow.samplers[name] = sampler
    device = _device(map_location)
    return flow.to(device) if device is not None else flow


def load_checkpoint_model(cls: type[InjectiveFlow], path: str | Path, *, encoder: nn.Module | None = None,
                          decoder: nn.Module | None = None, map_location: Any = "cpu") -> InjectiveFlow:
    """The model inside a training checkpoint (see :meth:`InjectiveFlow.load_from_checkpoint`)."""
    path = Path(path)
    blob = load_torch(path, what="checkpoint", map_location=map_location)
    if not isinstance(blob, dict) or "state_dict" not in blob:
        raise CheckpointError(f"{path} is not a training checkpoint (no state_dict)")
    info = blob.get("injflow")
    if not isinstance(info, dict) or info.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an injflow training checkpoint (it does not describe its model)")
    flow = load_nets(_rebuild(cls, info, path, encoder, decoder), blob["state_dict"], source=path, prefix="flow.")
    flow.restore_scaling(info)
    device = _device(map_location)
    return flow.to(device) if device is not None else flow
