"""Moved to :mod:`injflow.config` (the config does not need the training engine); kept so old imports work."""

from ..config import *  # noqa: F401,F403
from ..config import __all__  # noqa: F401
