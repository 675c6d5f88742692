"""Engine overhead: ``injflow fit``'s training loop against a plain PyTorch loop doing the same steps.

Both loops train the same nets (same seed), with the same method, optimiser, LR schedule, batches (the engine's
seeded ``TensorBatches``) and one validation pass per epoch; the plain loop has nothing else (no logging, no
checkpoints, no progress bar, no finiteness checks). Timed: the training loop only (``train_run`` for the engine,
including Lightning's setup and its end-of-epoch checkpoints; not data loading, sampler fitting or pictures).
Rounds are interleaved (plain, engine, plain, engine, ...) so machine noise hits both alike; the report is the
median time per optimiser step and the ratio engine / plain, per config and thread count.

    .venv/bin/python benchmarks/engine_overhead.py                       # default config + small tabular, 1 and 2 threads
    .venv/bin/python benchmarks/engine_overhead.py --threads 1 --rounds 5 --epochs 10
    .venv/bin/python benchmarks/engine_overhead.py --threads 1 --engine-set train.compile=true   # compiled engine vs eager loop
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared harness beside this script
from harness import load_average  # noqa: E402

CONFIGS = {"default": None, "small/fif-tabular-power": REPO / "configs/small/fif-tabular-power.yaml"}


def _plan(config_path, epochs: int, run_dir: Path, extra: list[str]):
    from injflow.config import load_config
    from injflow.train import prepare_run

    overrides = [f"train.max_epochs={epochs}", "train.pictures=false", "train.samplers=[]", *extra]
    return prepare_run(load_config(config_path, overrides), run_dir=run_dir)


def plain_loop(config_path, epochs: int, extra: list[str]) -> tuple[float, int]:
    """The same steps without the engine: returns (seconds, steps)."""
    import lightning as L

    from injflow.train.data import TensorBatches

    with tempfile.TemporaryDirectory() as tmp:
        plan = _plan(config_path, epochs, Path(tmp) / "run", extra)
    config, flow, data = plan.config, plan.flow, plan.data
    method = config.method
    L.seed_everything(config.train.seed, verbose=False)
    o = config.optim
    optimizer = torch.optim.Adam(flow.parameters(), lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas))
    batches = TensorBatches(data.train, config.data.batch_size, shuffle=True, seed=config.train.seed)
    steps_total = epochs * len(batches)
    scheduler = None
    if o.scheduler.name == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=o.lr, total_steps=steps_total)
    val = TensorBatches(data.val, config.data.val_batch_size or config.data.batch_size, shuffle=False) \
        if data.val is not None else None
    step = 0
    t0 = time.perf_counter()
    for epoch in range(epochs):
        batches.set_epoch(epoch)
        flow.train()
        for x in batches:
            if config.train.input_noise:
                x = x + config.train.input_noise * torch.randn_like(x)
            loss = method.loss(x, step, flow)["loss"].mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            step += 1
        if val is not None:
            for i, xv in enumerate(val):
                with torch.random.fork_rng():
                    torch.manual_seed(i)
                    method.loss(xv, step, flow)["loss"].mean().item()
    return time.perf_counter() - t0, step


def engine_loop(config_path, epochs: int, extra: list[str]) -> tuple[float, int]:
    """``injflow fit``'s training loop (``train_run``): returns (seconds, steps)."""
    from injflow.train.callbacks import SignalFlag
    from injflow.train.trainer import train_run

    with tempfile.TemporaryDirectory() as tmp:
        plan = _plan(config_path, epochs, Path(tmp) / "run", extra)
        plan.run.open_for_writing()
        plan.run.write_config(plan.config)
        with SignalFlag() as flag:
            t0 = time.perf_counter()
            trainer, _, _ = train_run(plan, flag)
            seconds = time.perf_counter() - t0
    return seconds, int(trainer.global_step)


def whole_commands(config_path, *, threads: int, rounds: int, epochs: int | None, extra: list[str]) -> dict:
    """Wall time of the whole ``injflow fit`` command against ``plain_fit.py`` doing the same steps (two processes each
    round, interleaved): imports, data, set-up, training, and what ``fit`` adds (checkpoints, logs, samplers, pictures
    unless ``extra`` turns them off)."""
    import os
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    sets = [f"train.num_threads={threads}", "train.progress_bar=false", *extra]
    if epochs:
        sets.append(f"train.max_epochs={epochs}")
    config = [str(config_path)] if config_path else []
    plain, engine = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, str(REPO / "benchmarks" / "plain_fit.py"), *config, "--set", *sets,
                            "--out", f"{tmp}/plain{r}.pt"], check=True, env=env, capture_output=True)
            plain.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "injflow.cli", "fit", *config, "--set", *sets, f"run.dir={tmp}/run{r}"],
                           check=True, env=env, capture_output=True)
            engine.append(time.perf_counter() - t0)
    ratios = sorted(e / p for e, p in zip(engine, plain))
    return {"threads": threads, "epochs": epochs, "extra": extra, "plain_s": round(statistics.median(plain), 2),
            "engine_s": round(statistics.median(engine), 2), "ratio": round(statistics.median(ratios), 3),
            "ratio_range": [round(ratios[0], 3), round(ratios[-1], 3)], "rounds": rounds, "load_average": load_average()}


def measure(name: str, config_path, *, threads: int, rounds: int, epochs: int, extra: list[str],
            engine_extra: list[str] = ()) -> dict:
    torch.set_num_threads(threads)
    plain, engine = [], []
    for _ in range(rounds):
        s, n = plain_loop(config_path, epochs, extra)
        plain.append(1e3 * s / n)
        s, n_engine = engine_loop(config_path, epochs, [*extra, *engine_extra])
        engine.append(1e3 * s / n_engine)
        assert n == n_engine, (n, n_engine)
    p, e = statistics.median(plain), statistics.median(engine)
    ratios = sorted(a / b for a, b in zip(engine, plain))
    return {"config": name, "threads": threads, "steps": n, "plain_ms_per_step": round(p, 2),
            "engine_ms_per_step": round(e, 2), "ratio": round(e / p, 3),
            "ratio_range": [round(ratios[0], 3), round(ratios[-1], 3)], "rounds": rounds, "extra": extra,
            "engine_extra": list(engine_extra), "load_average": load_average()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8, help="epochs per run (the default config has 40)")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--progress-bar", action="store_true", help="keep the engine's progress bar on")
    parser.add_argument("--engine-set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="overrides for the engine runs only, e.g. train.compile=true (the plain loop stays eager)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    parser.add_argument("--whole", action="store_true",
                        help="time the whole `injflow fit` command against benchmarks/plain_fit.py (the default config's "
                             "full length unless --epochs is given explicitly), with and without samplers and pictures")
    args = parser.parse_args(argv)
    if args.whole:
        epochs = args.epochs if "--epochs" in (argv or sys.argv) else None
        results = []
        for threads in args.threads:
            for extra in ([], ["train.samplers=[]", "train.pictures=false"]):
                r = whole_commands(CONFIGS[args.configs[0]], threads=threads, rounds=args.rounds, epochs=epochs,
                                   extra=extra)
                results.append(r)
                print(json.dumps(r), flush=True)
        if args.out:
            args.out.write_text(json.dumps({"results": results}, indent=2) + "\n")
        return
    extra = [] if args.progress_bar else ["train.progress_bar=false"]
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads max, torch {torch.__version__}"
    try:
        machine = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                       if line.startswith("model name")) + f", torch {torch.__version__}"
    except (OSError, StopIteration):
        pass
    results = []
    print(f"machine: {machine}")
    print(f"{'config':<26} {'threads':>7} {'steps':>6} {'plain ms':>9} {'engine ms':>10} {'engine/plain':>13} {'range':>14}")
    for name in args.configs:
        for threads in args.threads:
            r = measure(name, CONFIGS[name], threads=threads, rounds=args.rounds, epochs=args.epochs, extra=extra,
                        engine_extra=args.engine_set)
            results.append(r)
            print(f"{name:<26} {threads:>7} {r['steps']:>6} {r['plain_ms_per_step']:>9.2f} {r['engine_ms_per_step']:>10.2f} "
                  f"{r['ratio']:>13.3f} {str(r['ratio_range']):>14}  load {r['load_average']}", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
