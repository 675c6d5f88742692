"""The training engine: the Lightning module, data module, callbacks and the fit runner.

The config (:mod:`injflow.config`) and the model (:mod:`injflow.model`) live outside this package — neither needs
Lightning — and are re-exported here for convenience.
"""

from ..config import Config, ConfigError, config_from_dict, config_to_dict, load_config
from ..errors import NonFiniteLossError, RunInterrupted
from ..model import InjectiveFlow
from .module import FlowModule
from .runner import FitResult, RunData, fit_config, prepare_run, resume_run

__all__ = [
    "Config",
    "ConfigError",
    "FitResult",
    "FlowModule",
    "InjectiveFlow",
    "NonFiniteLossError",
    "RunData",
    "RunInterrupted",
    "config_from_dict",
    "config_to_dict",
    "fit_config",
    "load_config",
    "prepare_run",
    "resume_run",
]
