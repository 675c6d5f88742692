"""The training engine: config, Lightning module, data module, callbacks, plots and the fit runner."""

from .config import Config, ConfigError, config_from_dict, config_to_dict, load_config
from .model import InjectiveFlow
from .module import FlowModule, NonFiniteLossError
from .runner import FitResult, RunData, fit_config, resume_run

__all__ = [
    "Config",
    "ConfigError",
    "FitResult",
    "FlowModule",
    "InjectiveFlow",
    "NonFiniteLossError",
    "RunData",
    "config_from_dict",
    "config_to_dict",
    "fit_config",
    "load_config",
    "resume_run",
]
