"""Checks on a CUDA device (``-m gpu``; scripts/gpu_check.sh runs them): training, evaluation and sampling on the
GPU agree with the CPU, and the default training step reads nothing back from the device (no host synchronisation)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

FAST = ["data.options.n_train=2000", "data.options.n_val=200", "data.options.n_test=200", "data.batch_size=200",
        "model.options.n_blocks=2", "model.options.hidden_features=64", "train.progress_bar=false",
        "train.pictures=false", "train.samplers=[gaussian]", "train.gmm_components=2"]


def test_fit_evaluate_sample_on_the_gpu(tmp_path):
    from injflow.cli import main
    from injflow.model import InjectiveFlow

    run = tmp_path / "run"
    assert main(["fit", "--set", *FAST, "train.max_epochs=3", "train.accelerator=gpu", f"run.dir={run}"]) == 0
    for device in ("cuda", "cpu"):
        assert main(["evaluate", str(run), "--device", device, "--no-progress"]) == 0
        metrics = json.loads((run / "metrics.json").read_text())
        if device == "cuda":
            on_gpu = metrics
    assert on_gpu["reconstruction_error"] == pytest.approx(metrics["reconstruction_error"], rel=1e-4)
    assert on_gpu["nll"] == pytest.approx(metrics["nll"], rel=1e-3)
    flow = InjectiveFlow.load(run / "model.pt").cuda()
    a, b = flow.sample(50, seed=3), flow.cpu().sample(50, seed=3)
    torch.testing.assert_close(a.cpu(), b, rtol=1e-4, atol=1e-5)  # the noise is drawn on the CPU: same samples


def test_training_steps_do_not_synchronise(tmp_path):
    """With step logging and the non-finite read spaced out, a training step makes no host synchronisation: over 100
    steps, the synchronisations torch reports (set_sync_debug_mode) are far fewer than the steps."""
    from injflow.config import load_config
    from injflow.train import fit_config

    cfg = load_config(None, [*FAST, "data.batch_size=100", "train.max_epochs=5", "train.accelerator=gpu",
                             "train.log_every_n_steps=1000", "train.check_finite_every_n_steps=1000",
                             "optim.scheduler.name=constant", f"run.dir={tmp_path / 'run'}"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            result = fit_config(cfg, verbose=False)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    assert result.global_step == 100
    assert len(syncs) < 30, [str(w.message)[:200] for w in syncs[:5]]
