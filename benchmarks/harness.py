"""The shared timing harness of the benchmarks: interleaved rounds, medians, IQRs, paired ratios, the machine.

Every benchmark here times several variants of one computation *in one process* and reports ratios, so the
variants must see the same machine: after warm-up calls, round r runs every variant once (in a fixed order), and
the statistics are taken over rounds. On a shared machine the load drifts between rounds; the **paired ratio**
(variant time / baseline time within the same round, then the median over rounds) cancels most of that drift, so
it is the number to quote, with its inter-quartile range.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["Timing", "time_interleaved", "paired_ratio", "machine", "load_average", "report"]


@dataclass
class Timing:
    """Seconds per call of one variant, one entry per round."""

    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def iqr(self) -> float:
        if len(self.seconds) < 2:
            return 0.0
        q = statistics.quantiles(self.seconds, n=4)
        return q[2] - q[0]


def time_interleaved(
    calls: dict[str, Callable[[], object]],
    *,
    rounds: int,
    warmup: int = 1,
    synchronize: Callable[[], None] = lambda: None,
    after_warmup: Callable[[str], None] | None = None,
) -> dict[str, Timing]:
    """Warm-up calls of every variant, then ``rounds`` rounds that each time every variant once, in order.

    Arguments:
        calls: name -> a function doing one unit of work (a training step, a distance).
        synchronize: called before and after each timed call (``torch.cuda.synchronize`` on a GPU).
        after_warmup: called with each name after its warm-up (e.g. to measure memory once).
    """
    for name, call in calls.items():
        for _ in range(warmup):
            call()
        if after_warmup is not None:
            after_warmup(name)
    out = {name: Timing([]) for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            synchronize()
            start = time.perf_counter()
            call()
            synchronize()
            out[name].seconds.append(time.perf_counter() - start)
    return out


def paired_ratio(variant: Timing, baseline: Timing) -> tuple[float, float, float]:
    """Median and quartiles (q1, q3) over rounds of variant / baseline timed in the same round."""
    ratios = [v / b for v, b in zip(variant.seconds, baseline.seconds)]
    if len(ratios) < 2:
        return ratios[0], ratios[0], ratios[0]
    q = statistics.quantiles(ratios, n=4)
    return statistics.median(ratios), q[0], q[2]


def report(result: dict[str, Any], out: Path | None) -> None:
    """Prints a benchmark's result as JSON and, with ``out``, writes it to ``out/summary.json``."""
    text = json.dumps(result, indent=2)
    print(text)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(text + "\n")


def load_average() -> str:
    """The 1-minute load average (how busy the shared machine was), or "n/a"."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def machine(device: torch.device | str = "cpu", threads: int | None = None) -> str:
    """CPU model (or GPU name), torch threads and version: the line every table carries."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    threads = torch.get_num_threads() if threads is None else threads
    return f"{cpu} ({os.cpu_count()} cores), {threads} torch thread{'s' if threads != 1 else ''}, torch {torch.__version__}"
