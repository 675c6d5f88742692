"""Training objectives: one small dataclass per method, all behind :class:`Method` and a registry.

Importing this package registers the built-in methods (``fif``, ``ae``, ``injflow_ln``, ``injflow``,
``rectangular_flow``, ``exact``).
"""

from .ae import AE
from .base import METHODS, Method, ModelLike, build_method, method_class, register_method
from .fif import FIF
from .kumar import InjFlow, InjFlowLn
from .rectangular import ExactFlow, RectangularFlow
from .schedules import Schedule, as_schedule

__all__ = [
    "AE",
    "FIF",
    "ExactFlow",
    "InjFlow",
    "InjFlowLn",
    "RectangularFlow",
    "METHODS",
    "Method",
    "ModelLike",
    "Schedule",
    "as_schedule",
    "build_method",
    "method_class",
    "register_method",
]
