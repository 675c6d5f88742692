"""A plain PyTorch script doing the steps of ``injflow fit`` on a config: the baseline of ``engine_overhead --whole``.

It imports what it needs, loads the config's data, builds the same nets with the same seed, and runs the same
optimiser steps (same batches, method, Adam and LR schedule) with one validation pass per epoch, then saves the
weights — nothing else: no logging, checkpoints, progress bar, finiteness checks, post-fit samplers or pictures.

    .venv/bin/python benchmarks/plain_fit.py [CONFIG] [--set KEY=VALUE ...] --out weights.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default=None)
    parser.add_argument("--set", dest="overrides", nargs="+", default=[])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    from injflow.config import load_config
    from injflow.loading import load_run_data
    from injflow.methods import Clock
    from injflow.model import InjectiveFlow
    from injflow.train.data import TensorBatches

    config = load_config(args.config, args.overrides)
    if config.train.num_threads:
        torch.set_num_threads(config.train.num_threads)
    data = load_run_data(config)
    torch.manual_seed(config.train.seed)
    flow = InjectiveFlow.from_config(config, data_shape=data.data_shape, data_kind=data.kind)
    method, o, epochs = config.method, config.optim, config.train.max_epochs
    optimizer = torch.optim.Adam(flow.parameters(), lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas))
    batches = TensorBatches(data.train, config.data.batch_size, shuffle=True, seed=config.train.seed)
    total = epochs * len(batches)
    scheduler = (torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=o.lr, total_steps=total)
                 if o.scheduler.name == "onecycle" else None)
    val = TensorBatches(data.val, config.data.val_batch_size or config.data.batch_size, shuffle=False)
    step = 0
    for epoch in range(epochs):
        batches.set_epoch(epoch)
        flow.train()
        for x in batches:
            loss = method.loss(x, Clock(step, total), flow)["loss"].mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            step += 1
        for i, xv in enumerate(val):
            with torch.random.fork_rng():
                torch.manual_seed(i)
                method.loss(xv, Clock(step, total), flow)["loss"].mean().item()
    torch.save(flow.state_dict(), args.out)
    print(f"plain: {step} steps")


if __name__ == "__main__":
    main()
