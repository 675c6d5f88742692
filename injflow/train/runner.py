"""Runs a fit from a config: builds data, nets, method and trainer, trains, and writes the run folder.

Run folder layout::

    <run>/config.yaml              the resolved, validated config
    <run>/checkpoints/last.ckpt    latest state (resumable), written atomically
    <run>/checkpoints/best.ckpt    best by ``train.monitor`` (default ``val/loss``)
    <run>/metrics.csv              every logged term, train and validation
    <run>/tensorboard/             TensorBoard event files
    <run>/plots/                   loss_curves.png, manifold.png (2-D/3-D) or reconstructions/samples_*.png (images)
    <run>/model.pt                 the trained model with its post-fit samplers (InjectiveFlow.load)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .config import Config, ConfigError, check_dimensions, config_to_dict, load_config
from .model import InjectiveFlow
from .module import FlowModule, NonFiniteLossError

__all__ = ["FitResult", "RunData", "fit_config", "resume_run", "load_run_data", "load_run_model", "new_run_dir", "print_artefacts"]


@dataclass
class RunData:
    """The tensors a run trains on; ``kind`` is ``toy``, ``tabular`` or ``image`` (decides the pictures)."""

    train: Tensor
    val: Tensor | None = None
    test: Tensor | None = None
    kind: str = "tabular"

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])


@dataclass
class FitResult:
    """What :func:`fit_config` returns: the run folder, the model (``None`` if stopped early), and the artefacts."""

    run_dir: Path
    flow: InjectiveFlow | None
    completed: bool
    global_step: int
    artefacts: dict[str, Path] = field(default_factory=dict)


def load_run_data(config: Config) -> RunData:
    """Loads the config's data set (``injflow.data.load_dataset``), naming the key on bad options."""
    from ..data import load_dataset

    dc = config.data
    try:
        splits = load_dataset(dc.name, seed=dc.seed, root=dc.root, download=dc.download, **dc.options)
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"data: {e}") from None
    return RunData(splits.train, splits.val, splits.test, splits.kind)


def new_run_dir(config: Config) -> Path:
    """``run.dir`` if set, else a fresh ``<run.root>/<run.name>-<YYYYmmdd-HHMMSS>`` folder."""
    if config.run.dir:
        return Path(config.run.dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(config.run.root) / f"{config.run.name}-{stamp}"
    path, i = base, 1
    while path.exists():
        path, i = Path(f"{base}-{i}"), i + 1
    return path


def _write_config(config: Config, path: Path) -> None:
    import yaml

    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    tmp.replace(path)


def _build(config: Config, data: RunData, flow: InjectiveFlow | None):
    method = config.build_method()
    check_dimensions(config, data.data_shape, method)
    if flow is None:
        try:
            flow = InjectiveFlow.from_config(config, data_shape=data.data_shape)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"model: {e}") from None
    method.prepare(flow)  # e.g. spectral norm (ae_sn), posterior network (vae); before the optimiser and EMA exist
    return flow, method


def fit_config(
    config: Config,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    flow: InjectiveFlow | None = None,
    data: RunData | None = None,
    verbose: bool = True,
) -> FitResult:
    """Trains what ``config`` describes and writes the run folder.

    Arguments:
        config: A validated config.
        run_dir: The run folder (default: :func:`new_run_dir`).
        resume: Continue from ``<run_dir>/checkpoints/last.ckpt``.
        flow: Train these nets instead of building them from ``config.model`` (Python API).
        data: Train on these tensors instead of loading ``config.data``.
        verbose: Print where the artefacts went.

    Returns:
        A :class:`FitResult`.
    """
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    from .callbacks import AtomicCheckpointIO, MetricsCSVLogger, PeriodicCheckpoint, PlotCallback, StopAfterSteps, StopRun
    from .data import TensorDataModule
    from .plots import draw_run_pictures

    t = config.train
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    # Everything that can be wrong with the config is found here, before any training.
    data = data if data is not None else load_run_data(config)
    L.seed_everything(t.seed, verbose=False)
    built_here = flow is None
    flow, method = _build(config, data, flow)

    run_dir = Path(run_dir) if run_dir is not None else new_run_dir(config)
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    resume_step = None
    if resume:
        if not last.is_file():
            raise FileNotFoundError(f"cannot resume: {last} does not exist")
        resume_step = int(torch.load(last, map_location="cpu", weights_only=False).get("global_step", 0))
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_config(config, run_dir / "config.yaml")

    module = FlowModule(flow, method, config.optim, input_noise=t.input_noise, ema_decay=t.ema_decay, seed=t.seed)
    dm = TensorDataModule(
        data.train,
        data.val,
        batch_size=config.data.batch_size,
        val_batch_size=config.data.val_batch_size,
        seed=t.seed,
        drop_last=config.data.drop_last,
    )
    has_val = data.val is not None
    monitor = t.monitor if has_val or not t.monitor.startswith("val/") else "train/loss_epoch"
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor=monitor,
        mode=t.monitor_mode,
        save_top_k=1,
        save_last=True,
        enable_version_counter=False,
    )
    csv_logger = MetricsCSVLogger(run_dir / "metrics.csv", resume_step=resume_step)
    loggers: list[Any] = [csv_logger, TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False)]
    callbacks: list[Any] = [checkpoint, LearningRateMonitor(logging_interval="step")]
    if t.checkpoint_every_n_steps:
        callbacks.append(PeriodicCheckpoint(t.checkpoint_every_n_steps, last))
    stopper = None
    if t.stop_after_steps is not None:
        stopper = StopAfterSteps(t.stop_after_steps, last)
        callbacks.append(stopper)

    def draw(pl_module: FlowModule) -> list[Path]:
        return draw_run_pictures(
            pl_module.flow, kind=data.kind, test=data.test if data.test is not None else (data.val if data.val is not None else data.train),
            plots_dir=run_dir / "plots", metrics_csv=run_dir / "metrics.csv", seed=t.seed,
        )

    if t.plot_every_n_epochs:
        callbacks.append(PlotCallback(draw, t.plot_every_n_epochs))

    trainer = L.Trainer(
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
        num_nodes=t.num_nodes,
        precision=t.precision,
        gradient_clip_val=config.optim.grad_clip,
        gradient_clip_algorithm=config.optim.grad_clip_algorithm,
        logger=loggers,
        callbacks=callbacks,
        enable_progress_bar=t.progress_bar,
        enable_model_summary=False,
        log_every_n_steps=t.log_every_n_steps,
        check_val_every_n_epoch=t.val_every_n_epochs,
        num_sanity_val_steps=0,  # sanity validation would shift the RNG stream and break identical resume
        deterministic=t.deterministic,
        default_root_dir=str(run_dir),
        plugins=[AtomicCheckpointIO()],
        inference_mode=False,  # validation needs autograd (the FIF surrogate is built from JVP/VJP)
        use_distributed_sampler=False,  # TensorBatches shards the global batch itself
        limit_val_batches=1.0 if has_val else 0,
    )
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resume else None)
    except StopRun:
        pass
    except NonFiniteLossError:
        for logger in loggers:
            logger.save()
        raise
    for logger in loggers:
        logger.save()
    stopped_early = stopper is not None and stopper.stopped
    result = FitResult(run_dir, None, not stopped_early, int(trainer.global_step))
    if not trainer.is_global_zero:
        return result
    result.artefacts.update(
        {"run folder": run_dir, "config": run_dir / "config.yaml", "checkpoints": ckpt_dir, "metrics": run_dir / "metrics.csv",
         "tensorboard": run_dir / "tensorboard"}
    )
    if stopped_early:
        if verbose:
            print(f"[injflow] stopped after {trainer.global_step} steps (train.stop_after_steps); resume with: injflow fit --resume {run_dir}")
            print_artefacts(result)
        return result

    flow = module.export_flow()
    if built_here:  # custom modules cannot be rebuilt from the config: InjectiveFlow.load then asks for them
        flow.config = config_to_dict(config)
    if t.samplers:
        n_fit = min(data.train.shape[0], 50_000)
        flow.fit_samplers(data.train[:n_fit], names=t.samplers, n_components=t.gmm_components, seed=t.seed)
    result.artefacts["model"] = flow.save(run_dir / "model.pt")
    pictures = [] if not t.pictures else draw_run_pictures(
        flow, kind=data.kind, test=data.test if data.test is not None else (data.val if data.val is not None else data.train),
        plots_dir=run_dir / "plots", metrics_csv=run_dir / "metrics.csv", seed=t.seed,
    )
    for p in pictures:
        result.artefacts[f"picture {p.stem}"] = p
    result.flow = flow
    if verbose:
        print_artefacts(result)
    return result


def print_artefacts(result: FitResult) -> None:
    """Prints where each artefact of a run went."""
    width = max(len(k) for k in result.artefacts) if result.artefacts else 0
    print(f"[injflow] artefacts ({result.global_step} optimiser steps):")
    for k, v in result.artefacts.items():
        print(f"  {k:<{width}}  {v}")


def resume_run(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = (), *, verbose: bool = True) -> FitResult:
    """Continues a run from ``<run_dir>/checkpoints/last.ckpt`` with its saved config (plus ``overrides``)."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.yaml)")
    config = load_config(cfg_path, overrides)
    return fit_config(config, run_dir=run_dir, resume=True, verbose=verbose)


def load_run_model(run: str | Path) -> InjectiveFlow:
    """The trained model of a run folder: ``model.pt``, else the best/last checkpoint's weights (no post-fit samplers)."""
    run = Path(run)
    if (run / "model.pt").is_file():
        return InjectiveFlow.load(run / "model.pt")
    for name in ("best.ckpt", "last.ckpt"):
        ckpt = run / "checkpoints" / name
        if ckpt.is_file():
            flow = InjectiveFlow.from_config(load_config(run / "config.yaml"))
            try:
                state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
            except Exception as e:  # truncated file, not a checkpoint, ...
                raise RuntimeError(
                    f"{ckpt} cannot be read ({type(e).__name__}: {e}); it is corrupt or not a Lightning checkpoint. "
                    f"Move it away to fall back to the other checkpoint, or retrain."
                ) from e
            # Not strict only for the post-fit samplers, which are fitted after training and live in model.pt.
            result = flow.load_state_dict(
                {k.removeprefix("flow."): v for k, v in state.items() if k.startswith("flow.")}, strict=False
            )
            missing = [k for k in result.missing_keys if not k.startswith("samplers.")]
            unexpected = [k for k in result.unexpected_keys if not k.startswith("samplers.")]
            if missing or unexpected:
                raise ValueError(
                    f"{ckpt} does not match the model that {run / 'config.yaml'} describes (missing: {missing[:4]}, "
                    f"unexpected: {unexpected[:4]}); was config.yaml edited after training?"
                )
            return flow
    raise FileNotFoundError(f"{run} has no model.pt and no checkpoint: is it a run folder written by `injflow fit`?")
