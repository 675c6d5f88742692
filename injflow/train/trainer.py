"""The Lightning side of a run: the module, the data, the callbacks, the loggers and the ``Trainer`` — wired once.

:func:`train_run` is step 2 of :mod:`injflow.train.runner` (prepare → train → finish): it turns a checked
:class:`~injflow.train.runner.RunPlan` into a Lightning fit and returns the trainer, the module and the stop
callback. It writes nothing the runner does not expect: checkpoints (:class:`~injflow.train.callbacks.RunCheckpoints`,
atomic, never from non-finite weights), ``metrics.csv`` and the loggers' files.
"""

from __future__ import annotations

import datetime
import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runner import RunPlan

__all__ = ["train_run"]


def train_run(plan: RunPlan, flag: Any) -> tuple[Any, Any, Any]:
    """Trains with Lightning; returns ``(trainer, module, stopper)``. The caller holds the lock and the signal flag."""
    import lightning as L
    from lightning.pytorch.callbacks import TQDMProgressBar

    from ..config import config_to_dict
    from ..plots import draw_run_pictures
    from .callbacks import GracefulStop, MetricsCSVLogger, PeriodicCheckpoint, PlotCallback, RunCheckpoints, SafeCheckpointIO
    from .data import TensorDataModule
    from .distributed import resolve_strategy
    from .loggers import build_loggers
    from .module import FlowModule

    config, data, run, t = plan.config, plan.train_data, plan.run, plan.config.train
    L.seed_everything(t.seed, verbose=False)
    module = FlowModule(plan.flow, config.method, config.optim, input_noise=t.input_noise, ema_decay=t.ema_decay,
                        seed=t.seed, log_every_n_steps=t.log_every_n_steps,
                        check_finite_every_n_steps=t.check_finite_every_n_steps, max_time=t.max_time,
                        describe={**plan.flow.describe(), "config": config_to_dict(config), "custom_nets": not plan.built_here})
    if t.compile:
        from .compile import CompiledFIF

        module.compiled = CompiledFIF(plan.flow, config.method, backend="inductor" if t.compile is True else t.compile)
    dm = TensorDataModule(data.train, data.val, batch_size=config.data.batch_size, val_batch_size=config.data.val_batch_size,
                          seed=t.seed, drop_last=config.data.drop_last, train_labels=data.train_labels,
                          val_labels=data.val_labels)
    checkpoint = RunCheckpoints(run.last_checkpoint, run.best_checkpoint, plan.monitor, t.monitor_mode, t.checkpoint_interval)
    csv_logger = MetricsCSVLogger(run.metrics_csv, keep_rows=plan.csv_rows if plan.resume else None)
    module.csv_logger = csv_logger
    loggers = build_loggers(config, run, csv_logger, resume=plan.resume)
    stopper = GracefulStop(run.last_checkpoint, flag, t.stop_after_steps)
    callbacks: list[Any] = [checkpoint, stopper]
    if t.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, min(t.log_every_n_steps, 10))))
    if t.checkpoint_every_n_steps:
        callbacks.append(PeriodicCheckpoint(t.checkpoint_every_n_steps, run.last_checkpoint))
    if t.plot_every_n_epochs:
        callbacks.append(PlotCallback(lambda m: draw_run_pictures(m.flow, plan.data, run), t.plot_every_n_epochs))
    with _QuietLightning():
        trainer = L.Trainer(
            max_epochs=t.max_epochs,
            max_steps=t.max_steps,
            max_time=datetime.timedelta(seconds=t.max_time) if t.max_time else None,
            accelerator=t.accelerator,
            devices=t.devices,
            strategy=resolve_strategy(t, config.method),  # declares unused parameters for methods that leave some
            num_nodes=t.num_nodes,
            precision=t.precision,
            gradient_clip_val=config.optim.grad_clip,
            gradient_clip_algorithm=config.optim.grad_clip_algorithm,
            logger=loggers,
            callbacks=callbacks,
            enable_progress_bar=t.progress_bar,
            enable_model_summary=False,
            enable_checkpointing=False,  # RunCheckpoints writes last/best; Lightning's default callback would add its own
            log_every_n_steps=1,  # the module decides when to read values (train.log_every_n_steps)
            check_val_every_n_epoch=t.val_every_n_epochs,
            num_sanity_val_steps=0,  # sanity validation would shift the RNG stream and break identical resume
            deterministic=t.deterministic,
            default_root_dir=str(run.path),
            plugins=[SafeCheckpointIO()],
            inference_mode=False,  # validation needs autograd (the FIF surrogate is built from JVP/VJP)
            use_distributed_sampler=False,  # TensorBatches shards the global batch itself
            limit_val_batches=1.0 if data.val is not None else 0,
        )
        try:
            trainer.fit(module, datamodule=dm, ckpt_path=str(run.last_checkpoint) if plan.resume else None)
        finally:
            for logger in loggers:
                logger.save()
    return trainer, module, stopper


class _QuietLightning:
    """Silences Lightning's chatter that says nothing about the run (tips, device banners, known-benign warnings)."""

    PATTERNS = (r".*smaller than the logging interval.*", r".*`isinstance\(treespec, LeafSpec\)` is deprecated.*",
                r".*Trainer\(limit_val_batches=1.0\)` was configured.*", r".*does not have many workers.*")
    LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda", "lightning.fabric.utilities.seed")

    def __enter__(self) -> _QuietLightning:
        import logging

        self._levels = {}
        for name in self.LOGGERS:
            log = logging.getLogger(name)
            self._levels[name] = log.level
            log.setLevel(logging.WARNING)
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        for pattern in self.PATTERNS:
            warnings.filterwarnings("ignore", message=pattern)
        return self

    def __exit__(self, *exc: Any) -> None:
        import logging

        self._warnings.__exit__(*exc)
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
