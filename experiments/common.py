"""What every experiment script shares: the ``--scale`` switch, the results folder, tables, figures, timing.

Each script in ``experiments/`` reruns one table or figure of the two papers:

    .venv/bin/python experiments/<name>.py --scale {smoke,cpu,paper} [--out DIR] [--threads N]

* ``smoke`` runs in the test suite in seconds and only checks that the pipeline completes;
* ``cpu`` finishes on a 2-core CPU in at most 30 minutes; its results are the ones in ``docs/results.md``;
* ``paper`` is the paper's budget, meant for a GPU.

The results folder (default ``results/<name>/<scale>/``) gets the tables as CSV and JSON, the figures as PNG, and
``summary.json``: the experiment, scale, command line, wall time, machine, torch version and whatever the
script adds (the numbers quoted in ``docs/results.md`` come from these files).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import platform
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "SCALES", "REPO", "CONFIGS", "Experiment", "start", "write_table", "save_figure", "temporary_run_dir", "fit_run",
]

SCALES = ("smoke", "cpu", "paper")
REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def _machine() -> str:
    import os

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()}"


@dataclass
class Experiment:
    """A running experiment: its name, scale, results folder and the summary it will write.

    Use :func:`start` to make one and :meth:`finish` to write ``summary.json``.
    """

    name: str
    scale: str
    out: Path
    args: argparse.Namespace
    summary: dict[str, Any] = field(default_factory=dict)
    _t0: float = field(default_factory=time.perf_counter)

    def pick(self, smoke: Any, cpu: Any, paper: Any) -> Any:
        """The value for this scale."""
        return {"smoke": smoke, "cpu": cpu, "paper": paper}[self.scale]

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def log(self, message: str) -> None:
        """Prints a progress line with the elapsed time (long experiments show where they are)."""
        print(f"[{self.name} {self.scale} {self.elapsed:7.1f}s] {message}", flush=True)

    def finish(self, **extra: Any) -> Path:
        """Writes ``summary.json`` (scale, command, wall time, machine, ``extra``) and returns its path."""
        import torch

        self.summary.update(extra)
        summary = {
            "experiment": self.name,
            "scale": self.scale,
            "command": " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
            "wall_time_s": round(self.elapsed, 1),
            "machine": _machine(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            **self.summary,
        }
        path = self.out / "summary.json"
        path.write_text(json.dumps(summary, indent=2, default=_jsonable) + "\n")
        self.log(f"done in {self.elapsed:.0f} s; results in {self.out}")
        return path


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return value.as_posix()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def start(name: str, description: str, argv: Sequence[str] | None = None, *, extra_args: Iterable[tuple] = ()) -> Experiment:
    """Parses ``--scale/--out/--threads/--seed`` (plus ``extra_args``: ``(flags, kwargs)`` pairs) and makes the folder.

    Arguments:
        name: The experiment's name (its results folder).
        description: The ``--help`` text: which table or figure, of which paper.
        argv: The command line (default ``sys.argv[1:]``).
        extra_args: Further ``argparse`` arguments of this experiment.

    Returns:
        An :class:`Experiment`.
    """
    import torch

    parser = argparse.ArgumentParser(prog=f"experiments/{name}.py", description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=SCALES, default="cpu",
                        help="smoke: seconds, checks the pipeline; cpu: <= 30 min on 2 cores (docs/results.md); "
                             "paper: the paper's budget (GPU). Default: cpu")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default results/<name>/<scale>)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="device for training and evaluation (default cpu; pick a GPU with CUDA_VISIBLE_DEVICES)")
    for flags, kwargs in extra_args:
        parser.add_argument(*flags, **kwargs)
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    out = args.out if args.out is not None else REPO / "results" / name / args.scale
    out.mkdir(parents=True, exist_ok=True)
    exp = Experiment(name=name, scale=args.scale, out=out, args=args)
    exp.log(f"results go to {out}")
    return exp


def write_table(rows: list[dict[str, Any]], path: Path) -> tuple[Path, Path]:
    """Writes ``rows`` (one dict per row, same keys) as ``<path>.csv`` and ``<path>.json``.

    Returns:
        The two paths.
    """
    if not rows:
        raise ValueError(f"no rows for table {path}")
    keys = list(rows[0])
    for row in rows:
        if list(row) != keys:
            raise ValueError(f"rows of {path.name} have different columns: {keys} vs {list(row)}")
    csv_path, json_path = path.with_suffix(".csv"), path.with_suffix(".json")
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows([{k: _plain(v) for k, v in row.items()} for row in rows])
    json_path.write_text(json.dumps([{k: _plain(v) for k, v in row.items()} for row in rows], indent=1) + "\n")
    return csv_path, json_path


def _plain(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    return value


def save_figure(fig: Any, path: Path, *, note: str | None = None) -> Path:
    """Saves a matplotlib figure as PNG (150 dpi), with ``note`` (scale, sample counts) printed under it.

    Every figure should say its scale: pass e.g. ``note="cpu scale: 3 seeds, 2k points, 20 epochs"``.
    """
    import matplotlib.pyplot as plt

    if note:
        fig.text(0.01, 0.005, note, fontsize=7, color="0.3", ha="left", va="bottom")
    path = path.with_suffix(".png")
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return path


@contextlib.contextmanager
def temporary_run_dir(prefix: str) -> Iterator[Path]:
    """A fresh run folder under the system's temporary directory, deleted on exit.

    Sweeps train many models whose checkpoints nobody keeps; this keeps them out of the results folder.
    """
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def accelerator_overrides(device: str) -> list[str]:
    """Engine overrides for an experiment's ``--device``: ``cuda`` trains on one GPU; ``cpu`` needs none."""
    if device == "cpu":
        return []
    if device == "cuda":
        return ["train.accelerator=gpu", "train.devices=1"]
    raise ValueError(f"--device {device!r}: experiments train on 'cpu' or 'cuda' "
                     "(pick the GPU with CUDA_VISIBLE_DEVICES=N, e.g. CUDA_VISIBLE_DEVICES=1 ... --device cuda)")


def fit_run(
    config: str | Path | dict | None,
    overrides: Sequence[str] = (),
    *,
    run_dir: Path,
    threads: int | None = None,
    device: str = "cpu",
    progress: bool = False,
    pictures: bool = False,
) -> Any:
    """Trains one model with the engine (``injflow.api.fit``) into ``run_dir``, quietly.

    Arguments:
        config: A config path (relative paths resolve against ``configs/``), a dict, or ``None`` (the default config).
        overrides: Dotted ``key=value`` overrides (as ``injflow fit --set``).
        run_dir: The run folder.
        threads: ``train.num_threads`` (default: the config's).
        device: Train on this device (the experiment's ``--device``); the returned flow is on it, so evaluation is too.
        progress: Show the engine's progress bar (off: experiments print one line per run instead).
        pictures: Draw the engine's end-of-run pictures (off: seconds per run, and sweeps rarely keep run folders).

    Returns:
        The :class:`injflow.train.runner.FitResult`.
    """
    import injflow.api as inj

    if isinstance(config, (str, Path)) and not Path(config).is_absolute() and not Path(config).exists():
        config = CONFIGS / config
    overrides = list(overrides)
    if not progress:
        overrides.append("train.progress_bar=false")
    if not pictures:
        overrides.append("train.pictures=false")
    if threads is not None:
        overrides.append(f"train.num_threads={threads}")
    overrides += accelerator_overrides(device)
    result = inj.fit(config, overrides=overrides, run_dir=run_dir, verbose=False)
    if result.flow is None or not result.completed:
        raise RuntimeError(f"training in {run_dir} stopped early (see {run_dir}/metrics.csv)")
    # Lightning hands the module back on the CPU at teardown; evaluation belongs on the training device.
    result.flow = result.flow.to(device)
    return result
