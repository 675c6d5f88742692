"""Shared fixtures of the test suite."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

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


#: The smallest settings that still train the default model end to end (a few seconds on one thread).
TINY = [
    "data.options.n_train=400", "data.options.n_val=100", "data.options.n_test=100", "data.batch_size=100",
    "model.options.n_blocks=1", "model.options.hidden_features=16", "train.max_epochs=2", "train.progress_bar=false",
    "train.num_threads=1", "train.gmm_components=2", "train.samplers=[gaussian]", "train.pictures=false",
]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished FIF run on the sinusoid (:data:`TINY` settings), trained once per test process.

    Shared by many tests: read it, or copy it (:func:`copy_run`) before changing anything in it.
    """
    from injflow.config import load_config
    from injflow.train import fit_config

    run = tmp_path_factory.mktemp("tiny") / "run"
    n = torch.get_num_threads()
    fit_config(load_config(None, [*TINY, f"run.dir={run}"]), verbose=False)
    torch.set_num_threads(n)
    return run


def copy_run(src: Path, dst: Path) -> Path:
    """A copy of a run folder (without its lock file) that a test may change."""
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def make_untrained_run(tmp_path: Path, name: str, overrides: list[str], *, loss_history: bool = False) -> tuple:
    """A finished run folder (config.yaml, status.json, model.pt with post-fit samplers) of an *untrained* model:
    enough for ``evaluate`` and ``report`` without training. Returns ``(run, flow, data)``."""
    import yaml

    from injflow.config import config_to_dict, load_config
    from injflow.loading import load_run_data
    from injflow.model import InjectiveFlow
    from injflow.rundir import RunDir

    run = tmp_path / name
    cfg = load_config(None, [*overrides, f"run.dir={run}", "train.gmm_components=3"])
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    data = load_run_data(cfg)
    torch.manual_seed(0)
    flow = InjectiveFlow.from_config(cfg, data_shape=data.data_shape)
    flow.fit_samplers(data.train, names=cfg.train.samplers, n_components=3, seed=0)
    flow.save(run / "model.pt")
    RunDir(run).write_status("completed", step=0)
    if loss_history:  # a short loss history, as the training engine logs it
        rows = ["step,epoch,train/loss_epoch,train/nll_epoch,val/loss,val/nll"]
        rows += [f"{s},{s // 10},{2.0 / (s + 1)},{1.0 / (s + 1)},{2.2 / (s + 1)},{1.1 / (s + 1)}" for s in range(10, 100, 10)]
        (run / "metrics.csv").write_text("\n".join(rows) + "\n")
    return run, flow, data
