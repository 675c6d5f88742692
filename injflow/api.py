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

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from .config import Config, ConfigError, config_from_dict, config_to_dict, load_config
from .data import DataSplits
from .distributions import build_latent, fit_gaussian, fit_gmm
from .loading import load_run_model
from .methods import AE, FIF, Method, build_method
from .model import DATA_KINDS, InjectiveFlow
from .runs import evaluate_run as evaluate
from .runs import sample_run as sample
from .train.runner import FitResult, fit_config, resume_run

if TYPE_CHECKING:
    from .sweep import SweepResult, SweepSpec

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
    "evaluate",
    "fit",
    "fit_gaussian",
    "fit_gmm",
    "load",
    "load_config",
    "resume",
    "sample",
    "sweep",
    "train",
]


def fit(
    config: Config | str | Path | dict | None = None,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    run_dir: str | Path | None = None,
    overwrite: bool = False,
    verbose: bool = True,
) -> FitResult:
    """Trains from a config (object, dict, YAML path, or ``None`` for the embedded default), like ``injflow fit``.

    Arguments:
        config: The config.
        overrides: Dotted ``key=value`` overrides.
        run_dir: The run folder (default: ``run.dir`` or a fresh timestamped folder). A folder that already holds a
            run is refused: continue it with :func:`resume`, or pass ``overwrite=True`` to replace it.
        overwrite: Replace the run ``run_dir`` holds (its model, checkpoints, metrics and reports are deleted).
        verbose: Print where artefacts went.

    Returns:
        A :class:`FitResult` with ``flow`` (the trained :class:`InjectiveFlow`) and ``run_dir``.
    """
    if config is None or isinstance(config, (str, Path)):
        config = load_config(config, overrides)
    else:
        from .config import apply_overrides

        data = config_to_dict(config) if isinstance(config, Config) else config
        config = config_from_dict(apply_overrides(data, overrides))
    return fit_config(config, run_dir=run_dir, overwrite=overwrite, verbose=verbose)


def train(
    flow: InjectiveFlow,
    train_data: Tensor,
    *,
    val: Tensor | None = None,
    test: Tensor | None = None,
    method: Method | str = "fif",
    kind: str | None = None,
    labels: tuple[Tensor | None, Tensor | None, Tensor | None] | None = None,
    image_shape: tuple[int, int, int] | None = None,
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
        kind: What the data are: ``"toy"``, ``"tabular"`` or ``"image"`` (default: the flow's ``data_kind``, else
            ``"image"`` for ``(N, C, H, W)`` tensors and ``"tabular"`` otherwise). It decides pictures and metrics.
        labels: ``(train, val, test)`` class labels for a conditional flow.
        image_shape: ``(C, H, W)`` of flat image data.
        overrides: Dotted overrides of the default config's ``optim``, ``train``, ``data.batch_size``, ``run`` keys;
            ``data.standardize=features`` (or ``global``, ``range`` with ``data.value_range``) scales the data for the
            nets and keeps the scaling in the model (default ``none``: your tensors as they are, with a warning naming
            the columns when they are far from standardised).
        run_dir: The run folder.
        verbose: Print where artefacts went.

    Returns:
        A :class:`FitResult`; ``result.flow is flow``.
    """
    from .config import apply_overrides
    from .data.memory import describe_tensors

    method_obj = build_method(method) if isinstance(method, str) else method
    shape = tuple(train_data.shape[1:])
    if kind is None:
        kind = flow.data_kind or ("image" if len(shape) == 3 else "tabular")
    if kind not in DATA_KINDS:
        raise ConfigError(f"kind: expected one of {', '.join(DATA_KINDS)}, got {kind!r}")
    train_labels, val_labels, test_labels = labels if labels is not None else (None, None, None)
    num_classes = flow.num_classes if flow.conditional else None
    info = {} if num_classes is None else {"num_classes": num_classes}
    data = DataSplits("tensors", kind, train_data, val, test, None, train_labels, val_labels, test_labels, info,
                      image_shape or flow.image_shape)
    # The saved config tells what the data were (tensors in memory: kind, shapes, sizes), not the default data set.
    base = {"model": {"latent_dim": flow.latent_dim, "conditional": flow.conditional},
            "data": {**describe_tensors(data), "standardize": "none"}, "run": {"name": "custom"}}
    config = config_from_dict({**apply_overrides(base, overrides), "method": method_obj})
    return fit_config(config, run_dir=run_dir, flow=flow, data=data, verbose=verbose)


def load(path: str | Path, *, checkpoint: str | None = None, **kwargs: Any) -> InjectiveFlow:
    """Loads a trained model from a run folder, a ``model.pt`` file or a ``.ckpt`` checkpoint.

    Arguments:
        path: The run folder (its finished ``model.pt``; an unfinished run raises
            :class:`~injflow.errors.UnfinishedRunError` unless ``checkpoint`` is given), a model file, or a checkpoint.
        checkpoint: For a run folder: ``"last"`` or ``"best"`` loads that checkpoint's weights instead.
        kwargs: ``encoder=``, ``decoder=`` (models of custom modules), ``map_location=``.
    """
    path = Path(path)
    if path.is_dir():
        if kwargs:
            from .rundir import RunDir

            run = RunDir(path).require_run()
            if checkpoint is not None:
                return InjectiveFlow.load_from_checkpoint(run.checkpoint(checkpoint), **kwargs)
            run.require_finished(allow="checkpoint='last'")
            return InjectiveFlow.load(run.model, **kwargs)
        return load_run_model(path, checkpoint=checkpoint)
    if path.suffix == ".ckpt":
        return InjectiveFlow.load_from_checkpoint(path, **kwargs)
    return InjectiveFlow.load(path, **kwargs)


def resume(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = (), *, verbose: bool = True) -> FitResult:
    """Continues a killed run from its last checkpoint (like ``injflow fit --resume RUN``); ``verbose``: print where
    artefacts went."""
    return resume_run(run_dir, overrides, verbose=verbose)


def sweep(
    spec: SweepSpec | str | Path | None,
    *,
    folder: str | Path | None = None,
    resume: bool = False,
    address: str | None = None,
    cpus_per_trial: float = 1,
    gpus_per_trial: float = 0,
    max_concurrent: int | None = None,
    max_failures: int = 2,
    retry_failed: bool = False,
    dry_run: bool = False,
    log: Callable[[str], None] = print,
) -> SweepResult:
    """Runs a sweep on Ray Tune, like ``injflow sweep SPEC`` (:func:`injflow.sweep.run_sweep`, docs/sweeps.md).

    Arguments:
        spec: A spec file (YAML), a :class:`~injflow.sweep.SweepSpec`, or with ``resume`` the sweep folder.
        folder: The sweep folder (default ``runs/sweeps/<spec name>``).
        resume: Continue the sweep in ``folder``: finished trials are kept, interrupted ones resume.
        address: A Ray cluster (default ``$RAY_ADDRESS``, else Ray starts on this machine).
        cpus_per_trial, gpus_per_trial: Resources per trial (a GPU fraction shares a GPU).
        max_concurrent: At most this many trials at once.
        max_failures: Restarts of a trial whose process died.
        retry_failed: Run the trials that failed before again.
        dry_run: Only list the trials with their states and estimated times.
        log: Where progress lines go.

    Returns:
        A :class:`~injflow.sweep.SweepResult` (records, selections, ``complete``).
    """
    from .sweep import run_sweep

    return run_sweep(spec, folder=folder, resume=resume, address=address, cpus_per_trial=cpus_per_trial,
                     gpus_per_trial=gpus_per_trial, max_concurrent=max_concurrent, max_failures=max_failures,
                     retry_failed=retry_failed, dry_run=dry_run, log=log)
