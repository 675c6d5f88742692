"""The loggers a run writes to: the resumable CSV log (always) and TensorBoard (``train.loggers``).

:func:`build_loggers` is the one place the engine's loggers are made; every logged value (step terms, epoch
means, learning rates) reaches each of them through Lightning's logger interface.
"""

from __future__ import annotations

from typing import Any

from ..config import Config
from ..rundir import RunDir
from .callbacks import MetricsCSVLogger

__all__ = ["build_loggers"]


def build_loggers(config: Config, run: RunDir, csv_logger: MetricsCSVLogger) -> list[Any]:
    """The run's loggers: ``csv_logger`` first (its row count travels in every checkpoint), then TensorBoard.

    Arguments:
        config: The run's config.
        run: The run folder.
        csv_logger: The run's CSV log (``RUN/metrics.csv``), continued exactly on resume.
    """
    from lightning.pytorch.loggers import TensorBoardLogger

    return [csv_logger, TensorBoardLogger(save_dir=str(run.path), name=run.tensorboard.name, version="",
                                          default_hp_metric=False)]
