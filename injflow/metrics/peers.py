r"""Other projects' Fréchet-distance code, to check ours against (``tests/test_fid_protocol.py``,
``experiments/fid_protocol.py``).

The two packages are installed with ``--no-deps`` by ``scripts/setup.sh``: both depend on torchvision, which does
not import beside this project's torch, and their modules import it at the top. The Fréchet distance itself needs
only numpy and scipy, so each function is taken **from the installed package's source file** by parsing it
(:mod:`ast`) and compiling just that function in a namespace holding what it uses — their code, unchanged, without
running the rest of their module.

==================================  ==============================================================================
:func:`pytorch_fid_distance`         ``pytorch_fid.fid_score.calculate_frechet_distance`` (pytorch-fid 0.3.0; the
                                     PyTorch port of TF-FID's formula: ``scipy.linalg.sqrtm`` of Σ₁Σ₂)
:func:`torch_fidelity_distance`      ``torch_fidelity.metric_fid.fid_statistics_to_metric`` (torch-fidelity 0.4.0;
                                     tr (Σ₁Σ₂)^{1/2} as the sum of the square roots of the eigenvalues of Σ₁Σ₂)
==================================  ==============================================================================
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PeerUnavailableError", "pytorch_fid_distance", "torch_fidelity_distance", "peer_distances"]


class PeerUnavailableError(ImportError):
    """The peer package is not installed; the message says how to install it."""


def _function_from_source(package: str, module_file: str, name: str, namespace: dict[str, Any], pin: str) -> Callable:
    spec = importlib.util.find_spec(package)  # locates the package without importing (executing) it
    if spec is None or not spec.submodule_search_locations:
        raise PeerUnavailableError(f"{pin} is not installed: `.venv/bin/python -m pip install --no-deps {pin}` "
                                   "(scripts/setup.sh does this)")
    path = Path(list(spec.submodule_search_locations)[0]) / module_file
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
    if not nodes:
        raise PeerUnavailableError(f"{path} has no function {name} (another version than {pin}?)")
    namespace = dict(namespace)
    exec(compile(ast.Module(body=nodes, type_ignores=[]), str(path), "exec"), namespace)
    return namespace[name]


def pytorch_fid_distance() -> Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], float]:
    """pytorch-fid's ``calculate_frechet_distance(mu1, sigma1, mu2, sigma2)``."""
    from scipy import linalg

    return _function_from_source("pytorch_fid", "fid_score.py", "calculate_frechet_distance",
                                 {"np": np, "linalg": linalg}, "pytorch-fid==0.3.0")


def torch_fidelity_distance() -> Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], float]:
    """torch-fidelity's ``fid_statistics_to_metric``, wrapped to take ``(mu1, sigma1, mu2, sigma2)``."""
    fn = _function_from_source("torch_fidelity", "metric_fid.py", "fid_statistics_to_metric",
                               {"np": np, "KEY_METRIC_FID": "frechet_inception_distance", "vprint": lambda *a: None},
                               "torch-fidelity==0.4.0")

    def distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
        return fn({"mu": mu1, "sigma": sigma1}, {"mu": mu2, "sigma": sigma2}, False)["frechet_inception_distance"]

    return distance


def peer_distances() -> dict[str, Callable]:
    """Every installed peer, by name (missing ones are left out)."""
    out: dict[str, Callable] = {}
    for name, get in (("pytorch-fid", pytorch_fid_distance), ("torch-fidelity", torch_fidelity_distance)):
        try:
            out[name] = get()
        except PeerUnavailableError:
            pass
    return out
