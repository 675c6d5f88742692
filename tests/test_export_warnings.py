"""No deprecated TorchScript notice reaches users: torch's forward AD scripts its JVP decompositions with
``torch.jit.script`` on first use (torch/_decomp/decompositions_for_jvp.py); injflow loads them with that one notice
silenced (injflow.estimators.prepare_forward_ad), so the filter in pyproject.toml is gone.

A fresh interpreter each time: in a process where the decompositions were already loaded the check could not fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ERROR = "error:`torch.jit.script` is deprecated:DeprecationWarning"


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-W", ERROR, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)


def test_plain_forward_ad_warns_so_the_check_below_can_fail():
    done = _run("import torch, torch.autograd.forward_ad as fwAD\n"
                "with fwAD.dual_level(): fwAD.make_dual(torch.ones(2), torch.ones(2))")
    assert done.returncode != 0 and "torch.jit.script" in done.stderr


def test_injflow_jvp_and_torch_func_jvp_after_it_do_not_warn():
    done = _run("import torch\nfrom injflow.estimators import jvp\n"
                "out, tangent = jvp(torch.sin, torch.zeros(3), torch.ones(3))\n"
                "assert torch.allclose(tangent, torch.ones(3))\n"
                "from torch.func import jvp as func_jvp\nfunc_jvp(torch.sin, (torch.zeros(3),), (torch.ones(3),))")
    assert done.returncode == 0, done.stderr[-2000:]
