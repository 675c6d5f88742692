"""injflow: injective flows with free-form encoder/decoder networks.

Implements free-form injective flows (FIF; Sorrenson, Draxler et al., ICLR 2024) and relaxed injective
probability flows (InjFlow, InjFlow-ln; Kumar, Poole & Murphy, AISTATS 2020), with the baselines, data,
architectures and metrics their papers use.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
