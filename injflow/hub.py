r"""Model folders in the Hugging Face format: ``config.json`` + ``model.safetensors`` + a model card ``README.md``.

:func:`save_pretrained` writes a trained :class:`~injflow.model.InjectiveFlow` as a folder that any Hugging Face
tool understands and that cannot run code when loaded — JSON and `safetensors <https://huggingface.co/docs/safetensors>`_
only, no pickle anywhere:

- ``config.json``: the model's description (:meth:`InjectiveFlow.describe`: the run config, data shape and kind,
  image shape, classes), the method, the latent prior's and the post-fit samplers' specifications (their tensors
  are in the weights file), the format and its version, and the SHA-256 of the weights file;
- ``model.safetensors``: the encoder's and decoder's weights (``encoder.*``, ``decoder.*``), the prior's buffers
  (``latent.*``) and the post-fit samplers' parameters (``samplers.<name>.<parameter>``);
- ``README.md``: a model card (method, data, metrics of ``injflow evaluate`` with their scale, how to load).

:func:`from_pretrained` reads a local folder offline, or downloads a Hub repository (``owner/name``) first; a folder
of another format version, or with a missing, changed or corrupt file, is refused with one line
(:class:`~injflow.errors.CheckpointError`). The conventions (file names, model card metadata, ``push_to_hub``)
are those of ``huggingface_hub``'s :class:`~huggingface_hub.ModelHubMixin`, which does the Hub side.
``flow.save_pretrained``, ``InjectiveFlow.from_pretrained`` and ``flow.push_to_hub`` delegate here, and
``injflow export RUN --format pretrained`` writes a run's model with its ``metrics.json`` in the card.

Example:
    >>> import tempfile
    >>> from torch import nn
    >>> flow = InjectiveFlow.from_config("configs/default.yaml", data_shape=(2,), data_kind="toy")
    >>> folder = save_pretrained(flow, tempfile.mkdtemp() + "/fif-sinusoid")
    >>> sorted(p.name for p in folder.iterdir())
    ['README.md', 'config.json', 'model.safetensors']
    >>> again = from_pretrained(folder)
    >>> bool((again.decode(torch.ones(3, 1)) == flow.decode(torch.ones(3, 1))).all())
    True
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .distributions import LatentDistribution, distribution_from_spec
from .errors import CheckpointError, InjflowError
from .io import atomic_write_bytes, atomic_write_json, atomic_write_text
from .model import InjectiveFlow
from .persistence import _rebuild  # the one way a described model gets its nets (config or given modules)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "CARD_NAME",
    "save_pretrained",
    "from_pretrained",
    "push_to_hub",
    "export_pretrained",
    "model_card",
]

FORMAT = "injflow-pretrained"
#: Version of the folder layout; a folder of another version is refused (with what to do).
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"


def _require_hub() -> None:
    try:
        import huggingface_hub  # noqa: F401
        import safetensors  # noqa: F401
    except ImportError:
        raise InjflowError("model folders need huggingface_hub and safetensors: pip install 'injflow[hub]'") from None


# --------------------------------------------------------------------------- writing


def _split_spec(spec: dict[str, Any], prefix: str, tensors: dict[str, Tensor]) -> dict[str, Any]:
    """A distribution's spec with its tensors moved to ``tensors[prefix + key]`` (the JSON part names them)."""
    plain: dict[str, Any] = {}
    for key, value in spec.items():
        if isinstance(value, Tensor):
            tensors[f"{prefix}{key}"] = value
            plain.setdefault("tensors", []).append(key)
        else:
            plain[key] = value
    return plain


def _contiguous(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    # safetensors stores each tensor once, contiguous, on the CPU; tied weights are written twice.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def _folder_parts(flow: InjectiveFlow) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(config.json without the weights' checksum, tensors of model.safetensors)``."""
    state = flow.state_dict()
    # the scaler's buffers (data.standardize: user units -> model units) travel with the nets
    tensors = {k: v for k, v in state.items() if k.startswith(("encoder.", "decoder.", "latent.", "scaler."))}
    description = flow.describe()
    config = description.get("config") or {}
    info: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_name": "injflow",
        **description,
        "method": config.get("method"),
        "custom_nets": not config,
        "latent": _split_spec(flow.latent.spec(), "latent_spec.", tensors),
        "samplers": {name: _split_spec(s.spec(), f"samplers.{name}.", tensors) for name, s in flow.samplers.items()},
    }
    from . import __version__

    info["injflow_version"] = __version__
    return info, _contiguous(tensors)


def _write_folder(flow: InjectiveFlow, directory: Path, metrics: dict[str, Any] | None, title: str | None) -> None:
    """Writes the three files atomically; ``config.json`` last, so a folder with it is complete."""
    from safetensors.torch import save

    info, tensors = _folder_parts(flow)
    weights = save(tensors, metadata={"format": "pt", "injflow_format": FORMAT, "injflow_format_version": str(FORMAT_VERSION)})
    atomic_write_bytes(directory / WEIGHTS_NAME, weights)
    info["weights"] = {"file": WEIGHTS_NAME, "sha256": hashlib.sha256(weights).hexdigest(), "tensors": len(tensors)}
    atomic_write_text(directory / CARD_NAME, model_card(flow, metrics, title=title or directory.name))
    atomic_write_json(directory / CONFIG_NAME, info)


@functools.cache
def _hub_model_class() -> type:
    """The :class:`~huggingface_hub.ModelHubMixin` adapter (built on first use: ``huggingface_hub`` stays optional)."""
    from huggingface_hub import ModelHubMixin

    class InjflowHubModel(ModelHubMixin, library_name="injflow", tags=["injflow", "injective-flow"]):
        """An :class:`InjectiveFlow` as the Hub sees it: ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``."""

        def __init__(self, flow: InjectiveFlow) -> None:
            self.flow = flow
            self.metrics: dict[str, Any] | None = None
            self.title: str | None = None

        def _save_pretrained(self, save_directory: Path) -> None:
            _write_folder(self.flow, Path(save_directory), self.metrics, self.title)

        @classmethod
        def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir: str | Path | None,
                             force_download: bool, local_files_only: bool, token: str | bool | None,
                             **options: Any) -> InjflowHubModel:
            folder = Path(model_id)
            if not folder.is_dir():
                from huggingface_hub import snapshot_download

                folder = Path(snapshot_download(repo_id=model_id, revision=revision, cache_dir=cache_dir,
                                                force_download=force_download, local_files_only=local_files_only,
                                                token=token, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME]))
            return cls(_read_folder(folder, **options))

    return InjflowHubModel


def save_pretrained(flow: InjectiveFlow, directory: str | Path, *, metrics: dict[str, Any] | None = None,
                    title: str | None = None) -> Path:
    """Writes ``flow`` as a Hugging Face model folder (see the module docstring); returns the folder.

    Arguments:
        flow: The model (with its post-fit samplers, if fitted).
        directory: The folder (created; the three files are replaced).
        metrics: ``metrics.json`` of ``injflow evaluate`` for the model card (optional).
        title: The model card's title (default: the folder's name).
    """
    _require_hub()
    directory = Path(directory)
    adapter = _hub_model_class()(flow)
    adapter.metrics, adapter.title = metrics, title
    adapter.save_pretrained(directory)
    return directory


def push_to_hub(flow: InjectiveFlow, repo_id: str, *, metrics: dict[str, Any] | None = None, **options: Any) -> str:
    """Uploads the model folder to the Hugging Face Hub (``huggingface_hub``'s ``push_to_hub``: ``private=``,
    ``token=``, ``commit_message=``, ``branch=``...); returns the commit's URL. Needs a network and a token."""
    _require_hub()
    adapter = _hub_model_class()(flow)
    adapter.metrics, adapter.title = metrics, repo_id.split("/")[-1]
    return adapter.push_to_hub(repo_id, **options)


# --------------------------------------------------------------------------- reading


def _check_folder(folder: Path) -> dict[str, Any]:
    """``config.json`` of a complete folder of this format version, or one line saying what is wrong."""
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder: give a folder written by save_pretrained (or a Hub repo id)")
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(f"{folder} has no {CONFIG_NAME}: it is not a model folder, or its writing was interrupted; "
                              f"write it again with save_pretrained")
    try:
        info = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{config_path} is not valid JSON ({type(e).__name__}): it is corrupt; write the folder "
                              f"again with save_pretrained") from None
    found = info.get("format") if isinstance(info, dict) else None
    if found != FORMAT:
        raise CheckpointError(f"{config_path} does not describe an injflow model (format {found!r}, expected {FORMAT!r})")
    if info.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{folder} was written in model-folder format version {info.get('format_version')!r}; this "
                              f"injflow reads version {FORMAT_VERSION}: load it with the injflow that wrote it "
                              f"({info.get('injflow_version', 'unknown version')}) and save it again")
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{folder} has no {WEIGHTS_NAME}: the folder is incomplete; copy it again or write it again "
                              f"with save_pretrained")
    return info


def _read_weights(folder: Path, info: dict[str, Any]) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    data = (folder / WEIGHTS_NAME).read_bytes()
    expected = (info.get("weights") or {}).get("sha256")
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise CheckpointError(f"{folder / WEIGHTS_NAME} does not match the checksum in {CONFIG_NAME}: it is corrupt or was "
                              f"replaced; copy the folder again or write it again with save_pretrained")
    try:
        return load(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{folder / WEIGHTS_NAME} is not a readable safetensors file ({str(e).splitlines()[0][:160]})"
                              ) from None


def _distribution(spec: dict[str, Any], prefix: str, tensors: dict[str, Tensor], source: Path) -> LatentDistribution:
    spec = dict(spec)
    names = spec.pop("tensors", [])
    try:
        spec.update({name: tensors[f"{prefix}{name}"] for name in names})
        return distribution_from_spec(spec)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{source}: the distribution {spec.get('name')!r} is damaged ({type(e).__name__}: {e})") from None


def _read_folder(folder: Path, *, encoder: nn.Module | None = None, decoder: nn.Module | None = None,
                 map_location: Any = "cpu", flow_class: type[InjectiveFlow] = InjectiveFlow) -> InjectiveFlow:
    info = _check_folder(folder)
    tensors = _read_weights(folder, info)
    latent = _distribution(info.get("latent") or {}, "latent_spec.", tensors, folder)
    latent_state = {k.removeprefix("latent."): v for k, v in tensors.items() if k.startswith("latent.")}
    try:
        latent.load_state_dict(latent_state)
    except RuntimeError as e:
        raise CheckpointError(f"{folder}: the latent prior's buffers do not fit its specification ({e})") from None
    samplers = {name: _distribution(spec, f"samplers.{name}.", tensors, folder)
                for name, spec in (info.get("samplers") or {}).items()}
    flow = _rebuild(flow_class, info, folder, encoder, decoder, latent)
    nets = {k: v for k, v in tensors.items() if k.startswith(("encoder.", "decoder.", "latent.", "scaler."))}
    flow.load_nets(nets, source=folder / WEIGHTS_NAME).restore_scaling(info)
    for name, sampler in samplers.items():
        flow.samplers[name] = sampler.to(flow.device)
    return flow.to(map_location) if map_location is not None else flow


def from_pretrained(
    source: str | Path,
    *,
    encoder: nn.Module | None = None,
    decoder: nn.Module | None = None,
    map_location: Any = "cpu",
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    flow_class: type[InjectiveFlow] = InjectiveFlow,
) -> InjectiveFlow:
    """The model of a folder written by :func:`save_pretrained`: a local folder (offline), else a Hub repo id.

    Arguments:
        source: A folder, or a Hub repository ``owner/name``.
        encoder, decoder: Your own modules, for a model saved from custom nets (``config.json`` says so).
        map_location: Where the model goes (``"cpu"``, ``"cuda"``...).
        revision, cache_dir, local_files_only, token: Passed to ``huggingface_hub`` for a Hub repository.
        flow_class: The class to build (a subclass of :class:`InjectiveFlow`).

    Raises:
        CheckpointError: not a model folder, another format version, a missing or corrupt file, nets that do not fit.
    """
    _require_hub()
    path = Path(source)
    if path.exists() or str(source).startswith((".", "/", "~")) or str(source).count("/") != 1:
        _check_folder(path.expanduser())  # a local folder: every problem is one line, before the Hub code reads it
        source = str(path.expanduser())
    hub_model = _hub_model_class()
    try:
        return hub_model.from_pretrained(str(source), revision=revision, cache_dir=cache_dir,
                                         local_files_only=local_files_only, token=token, encoder=encoder,
                                         decoder=decoder, map_location=map_location, flow_class=flow_class).flow
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - the Hub's errors (no network, no such repo) as one line
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{source} is not a local folder and the Hugging Face Hub did not provide it "
                              f"({type(e).__name__}: {first})") from None


# --------------------------------------------------------------------------- model card


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–"
    return f"{value:.4g}"


def model_card(flow: InjectiveFlow, metrics: dict[str, Any] | None = None, *, title: str = "injflow model") -> str:
    """The model card (``README.md``): Hub metadata, method, data, metrics with their scale, how to load.

    Arguments:
        flow: The model.
        metrics: ``metrics.json`` of ``injflow evaluate`` (optional).
        title: The title.
    """
    from huggingface_hub import ModelCardData

    config = flow.config or {}
    method = dict(config.get("method") or {})
    method_name = method.pop("name", None)
    model = config.get("model") or {}
    data = config.get("data") or {}
    tags = ["injflow", "injective-flow"] + ([method_name] if method_name else [])
    front = ModelCardData(library_name="injflow", tags=tags).to_yaml()
    shape = "×".join(map(str, flow.data_shape)) if flow.data_shape else "unknown"
    lines = [f"---\n{front}\n---", f"# {title}", ""]
    options = ", ".join(f"{k}={v}" for k, v in method.items() if not isinstance(v, dict))
    what = (f"An injective flow trained with injflow: method **{method_name}**"
            f"{f' ({options})' if options else ''}" if method_name else "An injective flow saved by injflow (custom nets)")
    lines += [
        f"{what}. Encoder f: data of shape {shape} → latent of dimension {flow.latent_dim}; decoder g back; latent prior "
        f"{flow.latent.name}; exact on-manifold log-density of the projection g(f(x)) (FIF eq. 2).",
        "",
        "| | |",
        "|---|---|",
        f"| data | {data.get('name', 'unknown')} ({flow.data_kind or 'unknown'} data, one sample {shape}"
        f"{', image ' + '×'.join(map(str, flow.image_shape)) if flow.image_shape else ''}) |",
        f"| architecture | {model.get('architecture', 'custom')} |",
        f"| conditional | {f'yes, {flow.num_classes} classes' if flow.conditional else 'no'} |",
        f"| post-fit samplers | {', '.join(['prior', *flow.samplers])} |",
        f"| training | {(config.get('train') or {}).get('max_epochs', '?')} epochs at most, seed "
        f"{(config.get('train') or {}).get('seed', '?')} |",
        "",
    ]
    if metrics:
        scale = (f"the {metrics.get('split', '?')} split of {metrics.get('dataset', '?')}, n = {metrics.get('n', '?')} "
                 f"points, seed {metrics.get('seed', '?')}")
        quality = metrics.get("sample_quality") or {}
        lines += ["## Metrics", "", f"From `injflow evaluate` on {scale}.", "", "| metric | value |", "|---|---|",
                  f"| reconstruction error ‖g(f(x)) − x‖², mean | {_number(metrics.get('reconstruction_error'))} |",
                  f"| exact on-manifold NLL of g(f(x)), mean ± std (nats) | {_number(metrics.get('nll'))} ± "
                  f"{_number(metrics.get('nll_std'))} |"]
        for key in ("prior", "gaussian", "gmm", "reconstruction"):
            if key in quality:
                lines.append(f"| sample quality, {key} | {_number(quality[key])} |")
        lines.append("")
        if quality:
            lines += [f"Sample quality: {quality.get('metric', '?')} between {quality.get('n_samples', '?')} samples (of "
                      f"each sampler, or the reconstructions) and {quality.get('n_reference', '?')} "
                      f"{quality.get('reference_split', '')} points; lower is better.", ""]
    lines += ["## How to load", "", "```python", "from injflow.model import InjectiveFlow", "",
              'flow = InjectiveFlow.from_pretrained("path/to/this/folder")  # or its Hub repository id, "owner/name"',
              f'x = flow.sample(16, sampler="{next(iter(flow.samplers), "prior")}"' +
              (", c=0)" if flow.conditional else ")"),
              "```", "",
              f"`{CONFIG_NAME}` describes the model; `{WEIGHTS_NAME}` holds the tensors (safetensors: no pickle, loading "
              f"runs no code).", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- runs


def export_pretrained(run: str | Path, out: str | Path | None = None, *, checkpoint: str | None = None) -> Path:
    """Writes a run's model (with its post-fit samplers and ``metrics.json`` in the card) as a model folder.

    Arguments:
        run: The run folder.
        out: The model folder (default ``<run>/export/pretrained``).
        checkpoint: ``"last"``/``"best"`` for an unfinished run's checkpoint (samplers are fitted as ``fit`` would).
    """
    from .loading import load_run

    folder, _, flow = load_run(run, checkpoint=checkpoint)
    metrics = None
    if folder.metrics_json.is_file():
        try:
            metrics = json.loads(folder.metrics_json.read_text())
        except ValueError:
            metrics = None
    out = Path(out) if out is not None else folder.path / "export" / "pretrained"
    return save_pretrained(flow.to(torch.device("cpu")), out, metrics=metrics, title=folder.path.name)
