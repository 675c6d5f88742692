"""Operators dispatched by one FIF training step, and its time on the CPU (issue 28: a step that is not launch-bound).

A small net on a GPU is launch-bound: the step costs about (number of kernels) × (launch latency), whatever the batch
size. Without a GPU the count is the measurable proxy: torch.profiler records every aten operator of one step (the
loss with its JVP/VJP products, the backward pass, the Adam update); "leaf" operators call no other aten operator and
are about the kernels a GPU would launch. The step is the engine's (inputs checked once, so no per-step input check),
without Lightning around it.

    python benchmarks/op_count.py --compare /path/to/older/checkout --markdown out.md   # before → after
    python benchmarks/op_count.py --device cuda --rounds 20             # CUDA kernels, host syncs, ms per step

``--compare`` builds the same steps in two processes, one per tree, and times one step of each in turn (never both at
once), so the paired ratio after/before of each round cancels the load drift of a shared machine (without
``--compare`` the tree is compared with itself, which shows the noise floor). Threads: ``--threads 1 2`` sets torch's
threads and bounds the BLAS/OpenMP pools with threadpoolctl.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import load_average, machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: name -> (config file or None for the embedded default, overrides, data shape, data kind)
DEFAULT = "default (FIF, toy ResNet 4x128, B=256, d=1, K=1)"
CASES = {
    DEFAULT: (None, [], (2,), "toy"),
    "MNIST ConvNet (FIF, Pythae ConvNet, B=100, d=16, K=1)": ("configs/small/fif-pythae-convnet-mnist.yaml", [], (1, 28, 28), "image"),
    "MNIST ConvNet, K=2": ("configs/small/fif-pythae-convnet-mnist.yaml", ["method.n_hutchinson=2"], (1, 28, 28), "image"),
    "MNIST ResNet (FIF, Pythae ResNet, B=100, d=16, K=1)": ("configs/small/fif-pythae-resnet-mnist.yaml", [], (1, 28, 28),
                                                           "image"),
}
#: The cases measured on the CPU by default (the ResNet step takes seconds there).
CPU_CASES = list(CASES)[:3]


def build_step(config: str | None, overrides: list[str], shape: tuple[int, ...], kind: str, device: str = "cpu"):
    """One engine-like training step on random data of the config's shape (the count does not depend on the values)."""
    import injflow
    from injflow import estimators
    from injflow.config import load_config
    from injflow.model import InjectiveFlow

    tree = Path(injflow.__file__).resolve().parents[1]  # the measured tree's own config files (--compare's "before")
    cfg = load_config(tree / config if config else None, overrides)
    torch.manual_seed(0)
    flow = InjectiveFlow.from_config(cfg, data_shape=shape, data_kind=kind,
                                     image_shape=shape if kind == "image" else None)
    method = cfg.build_method() if hasattr(cfg, "build_method") else cfg.method  # before and after issue 25
    flow.to(device).train()
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-4)
    x = torch.rand(cfg.data.batch_size, *shape, device=device)
    skip = estimators.skip_input_checks

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with skip():
            terms = method.loss(x, 10, flow)
        terms["loss"].mean().backward()
        optimizer.step()

    return step


#: Operators that only allocate, re-index or re-describe memory: no kernel on a GPU.
NO_KERNEL = {f"aten::{n}" for n in (
    "empty", "empty_strided", "empty_like", "as_strided", "view", "_unsafe_view", "reshape", "_reshape_alias", "expand",
    "expand_as", "permute", "transpose", "t", "numpy_T", "mT", "unsqueeze", "squeeze", "select", "slice", "narrow",
    "split", "split_with_sizes", "chunk", "unbind", "diagonal", "movedim", "flatten", "unflatten", "detach", "alias",
    "result_type", "resize_", "lift_fresh", "to", "_to_copy", "contiguous", "conj", "resolve_conj", "resolve_neg",
    "view_as", "broadcast_to", "set_", "_has_compatible_shallow_copy_type", "is_nonzero", "item", "size", "stride",
    "dim", "ones_like", "zeros_like", "zeros", "ones", "full", "full_like", "new_empty", "new_empty_strided",
    "new_zeros", "new_ones", "scalar_tensor", "_make_dual", "_unpack_dual", "_fw_primal", "zero_", "fill_",
    "clone", "repeat", "_efficientzerotensor")}
#: The host reads a value: a synchronisation on a GPU.
HOST_READ = "aten::_local_scalar_dense"


def count_cuda(step) -> dict[str, int]:
    """CUDA kernels launched by one step (the profiler's device events; ``Memcpy``/``Memset`` counted apart) and the
    host synchronisations torch reports (``set_sync_debug_mode``), outside the optimiser's step."""
    import warnings

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    device_events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    copies = sum(e.name.startswith(("Memcpy", "Memset")) for e in device_events)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = sum("synchroniz" in str(w.message).lower() for w in caught)
    return {"cuda_kernels": len(device_events) - copies, "cuda_copies": copies, "syncs": syncs}


def count_ops(step) -> dict[str, int]:
    """aten operators of one step: all of them; the innermost ones that compute (about a GPU's kernels: copies and fills
    count, allocations and views do not) of the loss and its backward pass, and of the optimiser apart (the CPU's
    per-parameter Adam; on a GPU torch's default multi-tensor Adam launches far fewer); host reads outside the optimiser
    (Adam's step counters live on the host and are no synchronisation on a GPU)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = [e for e in prof.events() if e.name.startswith("aten::")]

    def computes(name: str) -> bool:
        return name.startswith("aten::") and name not in NO_KERNEL and name != HOST_READ

    def computes_inside(e) -> bool:
        return any(computes(c.name) or computes_inside(c) for c in e.cpu_children)

    def in_optimizer(e) -> bool:
        parent = e.cpu_parent
        while parent is not None:
            if parent.name.startswith("Optimizer.step"):
                return True
            parent = parent.cpu_parent
        return False

    kernels = [e for e in events if (computes(e.name) or e.name in ("aten::fill_", "aten::zero_", "aten::clone"))
               and not computes_inside(e)]
    return {"operators": len(events), "kernels": sum(not in_optimizer(e) for e in kernels),
            "optimizer_kernels": sum(in_optimizer(e) for e in kernels),
            "host_reads": sum(e.name == HOST_READ and not in_optimizer(e) for e in events)}


def measure_cuda(rounds: int, warmup: int) -> dict:
    """Kernels, synchronisations and step times (ms, synchronised) of every case on the GPU."""
    out = {}
    for name, (config, overrides, shape, kind) in CASES.items():
        step = build_step(config, overrides, shape, kind, "cuda")
        for _ in range(warmup):
            step()
        row = {**count_ops(step), **count_cuda(step)}
        torch.cuda.synchronize()
        seconds = []
        for _ in range(rounds * (10 if name == DEFAULT else 1)):
            start = time.perf_counter()
            step()
            torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
        row["ms"] = 1e3 * statistics.median(seconds)
        out[name] = row
    return {"cases": out, "machine": machine("cuda")}


def markdown_cuda(result: dict) -> str:
    lines = ["| step | aten operators | kernels (CPU count) | CUDA kernels | CUDA copies | host syncs | ms/step |",
             "|" + " --- |" * 7]
    for name, r in result["cases"].items():
        lines.append(f"| {name} | {r['operators']} | {r['kernels']} | {r['cuda_kernels']} | {r['cuda_copies']} | "
                     f"{r['syncs']} | {r['ms']:.2f} |")
    lines += ["", f"{result['machine']}; eager steps (zero_grad, loss, backward, Adam), synchronised medians."]
    return "\n".join(lines)


def worker() -> None:
    """Serves one tree (the one on PYTHONPATH) to :func:`compare`: one JSON command per line on stdin, one JSON answer
    per line on stdout. ``["build", case]`` builds and warms a step; ``["count", case]`` counts its operators;
    ``["time", case, threads]`` times one step."""
    from threadpoolctl import threadpool_limits

    steps = {}
    for line in sys.stdin:
        command = json.loads(line)
        if command[0] == "build":
            config, overrides, shape, kind = CASES[command[1]]
            steps[command[1]] = build_step(config, overrides, shape, kind)
            steps[command[1]]()
            answer: object = "ok"
        elif command[0] == "count":
            answer = count_ops(steps[command[1]])
        else:
            threads = command[2]
            torch.set_num_threads(threads)
            with threadpool_limits(threads):
                start = time.perf_counter()
                steps[command[1]]()
                answer = time.perf_counter() - start
        print(json.dumps(answer), flush=True)


class _Worker:
    def __init__(self, tree: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker"], env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def ask(self, *command: object) -> object:
        self.proc.stdin.write(json.dumps(list(command)) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def compare(other: Path, threads: list[int], rounds: int, warmup: int, cases: list[str] | None = None) -> dict:
    """The same steps on two trees, one step of each in turn (two processes, never running at once): the paired ratio
    after/before of each round cancels the load drift of a shared machine; its median and quartiles are reported."""
    workers = {"before": _Worker(other.resolve()), "after": _Worker(ROOT)}
    loads, table = [load_average()], {}
    try:
        for name in cases or CPU_CASES:
            row: dict = {label: dict(w.ask("build", name) and w.ask("count", name)) for label, w in workers.items()}
            for t in threads:
                for _ in range(warmup):
                    for w in workers.values():
                        w.ask("time", name, t)
                seconds: dict[str, list[float]] = {label: [] for label in workers}
                for _ in range(rounds * (10 if name == DEFAULT else 1)):  # the default step takes milliseconds
                    for label, w in workers.items():
                        seconds[label].append(float(w.ask("time", name, t)))
                ratios = [a / b for a, b in zip(seconds["after"], seconds["before"])]
                q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
                for label in workers:
                    row[label][f"ms_{t}"] = 1e3 * statistics.median(seconds[label])
                row[f"ratio_{t}"] = (statistics.median(ratios), q[0], q[2])
            table[name] = row
            loads.append(load_average())
    finally:
        for w in workers.values():
            w.close()
    return {"cases": table, "machine": machine("cpu", 1).replace("1 torch thread, ", ""), "loads": loads,
            "rounds": rounds, "threads": threads, "before": str(other.resolve())}


def markdown(result: dict) -> str:
    threads = result["threads"]
    head = ("| step | aten operators | kernels: loss + backward | kernels: Adam | host reads (loss + backward) | "
            + " | ".join(f"ms/step, {t} thread{'s' if t > 1 else ''}" for t in threads) + " | "
            + " | ".join(f"after / before, {t} thread{'s' if t > 1 else ''} (IQR)" for t in threads) + " |")
    lines = [head, "|" + " --- |" * (5 + 2 * len(threads)),
             "| (each cell: before → after) |" + " |" * (4 + 2 * len(threads))]
    for name, row in result["cases"].items():
        b, a = row["before"], row["after"]
        counts = " | ".join(f"{b[k]} → {a[k]}" for k in ("operators", "kernels", "optimizer_kernels", "host_reads"))
        times = " | ".join(f"{b[f'ms_{t}']:.1f} → {a[f'ms_{t}']:.1f}" for t in threads)
        ratios = " | ".join("{:.3f} ({:.3f}–{:.3f})".format(*row[f"ratio_{t}"]) for t in threads)
        lines.append(f"| {name} | {counts} | {times} | {ratios} |")
    lines.append("")
    lines.append(f"{result['machine']}; {result['rounds']} rounds per thread count ({10 * result['rounds']} of the default "
                 f"step), each round one step of each tree in turn (two processes, never at once); medians, and the "
                 f"median paired ratio with its quartiles. 1-minute load averages: {', '.join(result['loads'])}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", type=Path, help="an older checkout to measure the same steps on")
    parser.add_argument("--device", default="cpu", help="cuda: CUDA kernels, host syncs and step times on the GPU")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--cases", nargs="+", metavar="TEXT",
                        help="only the CPU cases whose name contains one of these texts (default: all of them)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    if args.device != "cpu":
        result = measure_cuda(args.rounds, args.warmup)
        text = markdown_cuda(result)
        print(text)
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
        if args.markdown:
            args.markdown.write_text(text + "\n")
        return
    if args.worker:
        worker()
        return
    cases = [n for n in CPU_CASES if any(t in n for t in args.cases)] if args.cases else None
    if args.cases and not cases:
        parser.error(f"--cases {' '.join(args.cases)} matches none of: {'; '.join(CPU_CASES)}")
    result = compare(args.compare or ROOT, args.threads, args.rounds, args.warmup, cases)
    text = markdown(result)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
