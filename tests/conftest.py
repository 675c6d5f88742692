"""Shared fixtures of the test suite."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
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
