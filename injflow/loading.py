"""A finished (or checkpointed) run, loaded for inference: its data, its model, its post-fit samplers.

``injflow sample``, ``injflow evaluate``, :func:`injflow.api.load` and the scikit-learn estimator read runs through
this module; it imports neither Lightning nor the training engine (:mod:`injflow.train`), so loading a model costs
what torch and the model cost.

Example:
    >>> import tempfile
    >>> load_run_model(tempfile.mkdtemp())
    Traceback (most recent call last):
    ...
    injflow.errors.RunFolderError: ... is not a run folder (no config.yaml): give a folder written by `injflow fit`
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from .config import RESUMABLE_KEYS, Config, changed_keys, config_from_dict, config_to_dict, lookup_key
from .data import DataSplits, load_data_section
from .errors import CheckpointError, ConfigError
from .model import InjectiveFlow
from .rundir import RunDir
from .threads import limit_threads

__all__ = ["load_run_data", "load_run_model", "load_run", "ensure_samplers"]


def load_run_data(config: Config) -> DataSplits:
    """The data set a config names; an option error names its dotted key (``data.options.n_train``)."""
    return load_data_section(config.data)


def ensure_samplers(flow: InjectiveFlow, data: DataSplits, config: Config, names: list[str] | None = None) -> list[str]:
    """Fits the post-fit samplers the config asks for (or ``names``) that the model lacks; returns those fitted.

    The one place samplers are fitted for a run (``fit``, ``evaluate`` and ``sample`` all call it): on the training
    split's first :data:`~injflow.model.MAX_SAMPLER_POINTS` points, seeded with ``train.seed``, on the model's device.
    """
    wanted = list(names) if names is not None else list(config.train.samplers)
    missing = [n for n in wanted if n not in flow.samplers]
    if missing:
        with limit_threads(config.train.num_threads):  # scikit-learn's GMM would start one BLAS thread per core
            flow.fit_samplers(data.train, names=missing, n_components=config.train.gmm_components,
                              seed=config.train.seed, c=data.train_labels if flow.conditional else None)
    return missing


def _check_belongs(flow: InjectiveFlow, run: RunDir, path: Path) -> None:
    """A checkpoint describes its own model; inside a run folder it must be the model of the folder's config."""
    if not flow.config:
        return
    saved, own = config_to_dict(run.read_config()), flow.config
    try:  # a model saved before a config key existed was trained with that key's default: fill the defaults in
        own = config_to_dict(config_from_dict(copy.deepcopy(own)))
    except ConfigError:
        pass  # compared as saved: the first differing key is named below
    for section in ("model", "data"):
        changed = [k for k in changed_keys({section: saved[section]}, {section: own.get(section, {})})
                   if not k.startswith(RESUMABLE_KEYS)]
        if changed:
            raise CheckpointError(
                f"{path} does not belong to {run.path}: it was trained with {changed[0]}={lookup_key(own, changed[0])!r}, "
                f"the run's config.yaml says {lookup_key(saved, changed[0])!r}; put the run's own checkpoint back or retrain"
            )


def load_run_model(run: str | Path, *, checkpoint: str | None = None, map_location: Any = "cpu") -> InjectiveFlow:
    """The trained model of a run folder.

    Arguments:
        run: The run folder.
        checkpoint: ``None``: the finished model (``model.pt``, with its post-fit samplers); an unfinished run raises
            :class:`~injflow.errors.UnfinishedRunError` naming its last step. ``"last"`` or ``"best"``: that
            checkpoint's weights (no post-fit samplers), finished or not.
        map_location: Where the model goes (``"cpu"``, ``"cuda"``...).
    """
    folder = RunDir(run).require_run()
    if checkpoint is None:
        folder.require_finished(allow="--checkpoint last (or best)")
        flow = InjectiveFlow.load(folder.model, map_location=map_location)
        path = folder.model
    else:
        path = folder.checkpoint(checkpoint)
        if not path.is_file():
            raise CheckpointError(f"{path} does not exist; the run has: "
                                  f"{', '.join(p.name for p in folder.checkpoints.glob('*.ckpt')) or 'no checkpoints'}")
        flow = InjectiveFlow.load_from_checkpoint(path, map_location=map_location)
    _check_belongs(flow, folder, path)
    return flow


def load_run(run: str | Path, *, checkpoint: str | None = None, device: str | torch.device = "cpu",
             samplers: bool = True) -> tuple[RunDir, Config, InjectiveFlow]:
    """The folder, its config and its model (on ``device``); with ``samplers``, the config's post-fit samplers are
    fitted where the model lacks them (a model from a checkpoint), exactly as ``fit`` fits them."""
    folder = RunDir(run).require_run()
    config = folder.read_config()
    flow = load_run_model(folder.path, checkpoint=checkpoint, map_location=device)
    if samplers and any(name not in flow.samplers for name in config.train.samplers):
        ensure_samplers(flow, load_run_data(config), config)
    return folder, config, flow
