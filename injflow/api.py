"""Python API mirroring the command line, for notebooks and scripts.

Example:
    >>> import injflow.api as inj
    >>> result = inj.fit(overrides=["train.max_epochs=5", "run.dir=runs/demo"])   # doctest: +SKIP
    >>> flow = result.flow                                                          # doctest: +SKIP
    >>> x = flow.sample(500, sampler="gmm")                                         # doctest: +SKIP
    >>> log_p, recon = flow.log_prob(x, return_reconstruction=True)                # doctest: +SKIP

Your own networks::

    flow = inj.InjectiveFlow(encoder, decoder, latent_dim=2, data_shape=(5,))
    result = inj.train(flow, x_train, val=x_val, method=inj.FIF(beta=10), overrides=["train.max_epochs=20"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from .distributions import build_latent, fit_gaussian, fit_gmm
from .methods import AE, FIF, Method, build_method
from .train.config import Config, ConfigError, config_from_dict, config_to_dict, load_config
from .train.model import InjectiveFlow
from .train.runner import FitResult, RunData, fit_config, load_run_model, resume_run

__all__ = [
    "AE",
    "FIF",
    "Config",
    "ConfigError",
    "FitResult",
    "InjectiveFlow",
    "Method",
    "build_latent",
    "build_method",
    "config_from_dict",
    "config_to_dict",
    "fit",
    "fit_gaussian",
    "fit_gmm",
    "load",
    "load_config",
    "resume",
    "train",
]


def fit(config: Config | str | Path | dict | None = None, *, overrides: list[str] | tuple[str, ...] = (), run_dir: str | Path | None = None, verbose: bool = True) -> FitResult:
    """Trains from a config (object, dict, YAML path, or ``None`` for the embedded default), like ``injflow fit``.

    Arguments:
        config: The config.
        overrides: Dotted ``key=value`` overrides.
        run_dir: The run folder (default: ``run.dir`` or a fresh timestamped folder).
        verbose: Print where artefacts went.

    Returns:
        A :class:`FitResult` with ``flow`` (the trained :class:`InjectiveFlow`) and ``run_dir``.
    """
    if config is None or isinstance(config, (str, Path)):
        config = load_config(config, overrides)
    else:
        from .train.config import apply_overrides

        data = config_to_dict(config) if isinstance(config, Config) else config
        config = config_from_dict(apply_overrides(data, overrides))
    return fit_config(config, run_dir=run_dir, verbose=verbose)


def train(
    flow: InjectiveFlow,
    train_data: Tensor,
    *,
    val: Tensor | None = None,
    test: Tensor | None = None,
    method: Method | str = "fif",
    overrides: list[str] | tuple[str, ...] = (),
    run_dir: str | Path | None = None,
    verbose: bool = True,
) -> FitResult:
    """Trains your own :class:`InjectiveFlow` (any encoder/decoder modules) on tensors with the same engine.

    Arguments:
        flow: The model; its nets are trained in place.
        train_data: Training data ``(N, *data_shape)``.
        val: Optional validation data (enables ``val/*`` logs and best checkpoints).
        test: Optional data for the pictures (default: ``val`` or ``train_data``).
        method: A :class:`Method` object (e.g. ``FIF(beta=10)``) or a registered name.
        overrides: Dotted overrides of the default config's ``optim``, ``train``, ``data.batch_size``, ``run`` keys.
        run_dir: The run folder.
        verbose: Print where artefacts went.

    Returns:
        A :class:`FitResult`; ``result.flow is flow``.
    """
    from .train.config import apply_overrides

    method_obj = build_method(method) if isinstance(method, str) else method
    base = {
        "model": {"latent_dim": flow.latent_dim},
        "method": {"name": method_obj.name, **method_obj.options()},
        "run": {"name": "custom"},
    }
    config = config_from_dict(apply_overrides(base, overrides))
    shape = tuple(train_data.shape[1:])
    if flow.data_shape is None:
        flow.data_shape = shape
    kind = "image" if len(shape) == 3 else ("toy" if shape in ((2,), (3,)) else "tabular")
    return fit_config(config, run_dir=run_dir, flow=flow, data=RunData(train_data, val, test, kind), verbose=verbose)


def load(path: str | Path, **kwargs: Any) -> InjectiveFlow:
    """Loads a trained model from a run folder or a ``model.pt`` file (see :meth:`InjectiveFlow.load`)."""
    path = Path(path)
    if path.is_dir():
        return load_run_model(path) if not kwargs else InjectiveFlow.load(path / "model.pt", **kwargs)
    return InjectiveFlow.load(path, **kwargs)


def resume(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> FitResult:
    """Continues a killed run from its last checkpoint (like ``injflow fit --resume RUN``)."""
    return resume_run(run_dir, overrides)
