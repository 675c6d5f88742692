"""Moved to :mod:`injflow.model` (the model does not need the training engine); kept so old imports work."""

from ..model import *  # noqa: F401,F403
from ..model import __all__  # noqa: F401
