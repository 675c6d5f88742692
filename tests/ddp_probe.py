"""A DDP training run that records what each process did (used by tests/test_ddp.py; not collected by pytest).

    python tests/ddp_probe.py RECORD_DIR [--skew-rank1 F] [--nan-grad-at STEP] [--method NAME] -- OVERRIDES...

Every process trains the config (``OVERRIDES`` on the embedded default) through :func:`injflow.api.fit` with a
subclass of method ``NAME`` that records, per process, into ``RECORD_DIR/rank<r>.pt``:

- ``noise``: the first element of every Hutchinson draw (:func:`injflow.estimators.sample_noise`) per step;
- ``step0``: the batch, the labels, the Hutchinson draws and the initial weights of optimiser step 0, and the
  gradients the optimiser receives at that step (after DDP's all-reduce), to compare with one process;
- ``writes``: ``(epoch, step)`` of every ``last.ckpt`` write of :class:`~injflow.train.callbacks.RunCheckpoints`;
- ``error``: the exception that ended the run in this process (type and message), if any.

``--skew-rank1 F`` makes rank 1's monotonic clock run F times faster than rank 0's (ranks that read their own clock
disagree about time-based checkpoints); ``--nan-grad-at STEP`` gives every process a finite loss with a NaN gradient
at that optimiser step (the weights become NaN after the step while every loss stays finite).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import torch

import injflow.api as inj
from injflow import estimators
from injflow.methods import method_class, register_method
from injflow.train import callbacks
from injflow.train.module import FlowModule

RECORD: dict = {"noise": {}, "step0": None, "writes": [], "error": None}
#: The optimiser step of the training batch being processed (None before training, -1 in validation).
STEP: list[int | None] = [None]


def rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("LOCAL_RANK", "0"))


class _NanGradient(torch.autograd.Function):
    """Zero in the forward pass, NaN in the backward pass."""

    @staticmethod
    def forward(ctx, x):
        return torch.zeros_like(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("nan"))


def probe_method(base: str, nan_grad_at: int | None):
    cls = method_class(base)

    def loss(self, batch, clock, model):
        step = getattr(clock, "step", clock)
        if STEP[0] == 0 and RECORD["step0"] is None:  # the first training step (not the dry run, not validation)
            c = getattr(model, "c", None)
            RECORD["step0"] = {"x": batch.detach().cpu().clone(), "eps": [],
                               "c": None if c is None else c.detach().cpu().clone(),
                               "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
        terms = cls.loss(self, batch, clock, model)
        if nan_grad_at is not None and step == nan_grad_at and torch.is_grad_enabled():
            terms["loss"] = terms["loss"] + _NanGradient.apply(terms["loss"])
        return terms

    probe = dataclasses.dataclass(type(f"Probe{cls.__name__}", (cls,), {"loss": loss}))
    register_method(f"probe_{base}")(probe)
    return f"probe_{base}"


def install_hooks(skew: float | None) -> None:
    original_noise = estimators.sample_noise

    def sample_noise(*args, **kwargs):
        eps = original_noise(*args, **kwargs)
        if torch.is_grad_enabled():
            step = STEP[0]
            if step is None or step < 0:
                return eps
            RECORD["noise"].setdefault(step, []).append(eps.detach().flatten()[:4].cpu().clone())
            if step == 0 and RECORD["step0"] is not None and len(RECORD["step0"]["eps"]) < 8:
                RECORD["step0"]["eps"].append(eps.detach().cpu().clone())
        return eps

    estimators.sample_noise = sample_noise

    start_batch = FlowModule.on_train_batch_start

    def on_train_batch_start(self, batch, batch_idx):
        STEP[0] = int(self.global_step)
        return start_batch(self, batch, batch_idx)

    def on_validation_start(self):
        STEP[0] = -1

    def on_before_optimizer_step(self, optimizer):
        if self.global_step == 0 and RECORD["step0"] is not None and "grads" not in RECORD["step0"]:
            RECORD["step0"]["grads"] = {n: None if p.grad is None else p.grad.detach().cpu().clone()
                                        for n, p in self.flow.named_parameters()}

    FlowModule.on_train_batch_start = on_train_batch_start
    FlowModule.on_validation_start = on_validation_start
    FlowModule.on_before_optimizer_step = on_before_optimizer_step

    write = callbacks.RunCheckpoints.write

    def logged_write(self, trainer):
        RECORD["writes"].append((int(trainer.current_epoch), int(trainer.global_step)))
        return write(self, trainer)

    callbacks.RunCheckpoints.write = logged_write

    if skew and int(os.environ.get("LOCAL_RANK", "0")) == 1:
        real, t0 = time.monotonic, time.monotonic()
        time.monotonic = lambda: t0 + skew * (real() - t0)


def main() -> int:
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser()
    parser.add_argument("record_dir", type=Path)
    parser.add_argument("--skew-rank1", type=float, default=None)
    parser.add_argument("--nan-grad-at", type=int, default=None)
    parser.add_argument("--method", default="fif")
    parser.add_argument("--run-dir", type=Path, default=None)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv[:split])
    overrides = argv[split + 1:]
    probe_method(args.method, args.nan_grad_at)  # registered as probe_<method>: the overrides name it
    install_hooks(args.skew_rank1)
    run_dir = args.run_dir or args.record_dir / "run"
    code = 0
    try:
        if args.resume:
            inj.resume(run_dir, overrides=overrides)
        else:
            inj.fit(None, overrides=overrides, run_dir=run_dir, verbose=False)
    except BaseException as e:  # noqa: BLE001  every ending is recorded, then reported by the exit code
        RECORD["error"] = (type(e).__name__, str(e))
        code = 3
    finally:
        args.record_dir.mkdir(parents=True, exist_ok=True)
        torch.save(RECORD, args.record_dir / f"rank{rank()}.pt")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
