"""Shared fixtures of the test suite."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import pytest
import torch


def selects_gpu_tests(markexpr: str) -> bool:
    """Whether a ``-m`` expression asks for the GPU-marked tests (``gpu``, ``slow or gpu``; not ``not gpu``)."""
    return re.search(r"(?<!not )\bgpu\b", markexpr or "") is not None


def pytest_configure(config: pytest.Config) -> None:
    # The suite is calibrated on CPUs, and train.accelerator defaults to "auto", which would move runs to a GPU
    # where CPU-calibrated tolerances and timings fail: only a run that selects the GPU-marked tests (-m gpu,
    # scripts/gpu_check.sh) sees the devices. Set before CUDA is initialised; subprocesses and xdist workers inherit it.
    if not selects_gpu_tests(config.getoption("markexpr", "")):
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    # Under xdist each worker gets one torch thread: two workers with two threads each on two cores only wait for
    # each other (OpenMP busy-waiting), which made the suite slower than running it serially.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test (small nets: two threads on two busy cores only wait for each other)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
