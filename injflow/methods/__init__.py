"""Training objectives: one small dataclass per method, all behind :class:`Method` and a registry.

Importing this package registers the built-in methods (``fif``, ``fff`` (FIF at d = D), ``ae``, ``injflow_ln``, ``injflow``,
``rectangular_flow``, ``exact``), the baselines (``ae_l2``, ``ae_sn``, ``cae``, ``rae_l2``, ``rae_gp``, ``vae``,
``beta_vae``, ``wae_mmd``) and the injective flows built from invertible blocks (``rnf``, ``dnf``, ``trumpet``).
"""

from .ae import AE
from .base import METHODS, Clock, Method, ModelLike, build_method, method_class, register_method
from .fff import FFF
from .fif import FIF
from .invertible import DNF, RectangularNF, Trumpet
from .kumar import InjFlow, InjFlowLn
from .rectangular import ExactFlow, RectangularFlow
from .regularised import AEL2, AESN, CAE, RAEGP, RAEL2
from .schedules import Schedule, as_schedule
from .vae import VAE, BetaVAE, GaussianEncoder
from .wae import WAEMMD

__all__ = [
    "AE",
    "AEL2",
    "AESN",
    "BetaVAE",
    "Clock",
    "CAE",
    "GaussianEncoder",
    "RAEGP",
    "RAEL2",
    "VAE",
    "WAEMMD",
    "FIF",
    "FFF",
    "DNF",
    "RectangularNF",
    "Trumpet",
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
