"""What the three table scripts share: run their sweep specs (``configs/sweeps/``) with ``injflow.api.sweep`` and read
the results back for the tables. The sweeps themselves are the library's (``injflow sweep``, docs/sweeps.md); this
module only picks the spec of each data set / architecture at the script's scale and turns results into values.

A table script is one command per table and scale: it runs (or continues: the sweep folder is resumed when it
exists) every sweep it needs inside one Ray session, then assembles the table from each sweep's ``selection.json``
and the selected trials' test scores. Exit status 0 = table written, 3 = trials left (rerun to continue),
2 = dry run.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import REPO

SPECS = REPO / "configs" / "sweeps"

__all__ = ["SPECS", "sweep_args", "load_table_spec", "run_sweeps", "value", "real_data_floor", "example_images",
           "sweep_summary", "config_of"]


def sweep_args() -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    """The command-line options every table script adds to ``common.start``."""
    return [
        (("--sweep-dir",), {"type": Path, "default": None,
                            "help": "folder of the sweep folders (trial run folders, checkpoints; default <out>/sweeps, "
                                    "git-ignored)"}),
        (("--max-concurrent",), {"type": int, "default": None, "help": "at most N trials at once (default: as the CPUs allow)"}),
        (("--cpus-per-trial",), {"type": float, "default": 1, "help": "CPUs (torch threads) per trial (default 1)"}),
        (("--gpus-per-trial",), {"type": float, "default": None, "help": "GPUs per trial (default 1 with --device cuda, else 0)"}),
        (("--address",), {"default": None, "help": "Ray cluster address (default $RAY_ADDRESS, else Ray starts here)"}),
        (("--max-failures",), {"type": int, "default": 2, "help": "restarts of a trial whose process dies (default 2)"}),
        (("--retry-failed",), {"action": "store_true", "help": "run again the trials that failed before"}),
        (("--dry-run",), {"action": "store_true", "help": "list the trials, their states and estimated times; run nothing"}),
        (("--data-root",), {"default": None, "help": "data.root for CIFAR-10 / CelebA files (docs/data.md)"}),
    ]


def load_table_spec(name: str, exp: Any, keep: Callable[[dict[str, Any]], bool] | None = None) -> Any:
    """The spec ``configs/sweeps/<name>.yaml`` with the script's ``--data-root`` added to ``set``, and with only the
    grid entries ``keep`` accepts (e.g. ``--methods``)."""
    from injflow.sweep import load_spec

    spec = load_spec(SPECS / f"{name}.yaml")
    if exp.args.data_root:
        spec = dataclasses.replace(spec, set=(*spec.set, f"data.root={exp.args.data_root}"))
    if keep is not None:
        spec = dataclasses.replace(spec, grid=tuple(entry for entry in spec.grid if keep(entry)))
    return spec


def run_sweeps(exp: Any, specs: list[Any]) -> list[Any] | int:
    """Runs (or continues) each spec's sweep in ``<sweep-dir>/<spec name>`` inside one Ray session; returns the
    results, or the exit status when there is no table to write (2: dry run; 3: trials are left)."""
    import injflow.api as inj
    from injflow.sweep.runner import ray_session

    a = exp.args
    root = (a.sweep_dir if a.sweep_dir is not None else exp.out / "sweeps").resolve()
    gpus = a.gpus_per_trial if a.gpus_per_trial is not None else (1.0 if a.device == "cuda" else 0.0)
    options = {"cpus_per_trial": a.cpus_per_trial, "gpus_per_trial": gpus, "max_concurrent": a.max_concurrent,
               "max_failures": a.max_failures, "retry_failed": a.retry_failed, "log": exp.log}
    if a.dry_run:
        for spec in specs:
            inj.sweep(spec, folder=root / spec.name, dry_run=True, **options)
        return 2
    results = []
    with ray_session(a.address):
        for spec in specs:
            folder = root / spec.name
            results.append(inj.sweep(spec, folder=folder, resume=(folder / "sweep.json").is_file(), **options))
    if not all(r.complete for r in results):
        exp.log("not finished (trials left); rerun the same command to continue")
        return 3
    return results


def value(record: Any, key: str) -> float | None:
    """A reported metric or test score of a trial record (``val/fid_gmm``, ``test/fid_gmm``...), ``None`` if absent."""
    if record is None:
        return None
    v = {**record.metrics, **record.test}.get(key)
    return None if v is None else float(v)


def config_of(result: Any, record: Any) -> Any:
    """The resolved config of a trial (its run folder's ``config.yaml``)."""
    from injflow.config import load_config

    return load_config(result.folder / "trials" / record.name / "config.yaml")


def real_data_floor(result: Any, device: str = "cpu") -> float | None:
    """The test score of real images under the sweep's test protocol (:func:`injflow.sweep.scoring.real_data_score`):
    the lowest value n images can reach. Cached in ``<sweep>/floor-test.json``."""
    from injflow.sweep.scoring import real_data_score

    spec = result.spec.test
    record = next((r for r in result.records if r.state == "completed"), None)
    if spec is None or record is None:
        return None
    path = result.folder / "floor-test.json"
    cached = json.loads(path.read_text()) if path.is_file() else {}
    config = config_of(result, record)
    key = json.dumps([config.data.name, config.data.options, spec.to_dict()], sort_keys=True, default=str)
    if key not in cached:
        from injflow.io import atomic_write_json

        cached[key] = real_data_score(config, spec, device=device)
        atomic_write_json(path, cached)
    return cached[key]


def example_images(result: Any, record: Any, *, n: int = 8, sampler: str = "gmm", seed: int = 0) -> dict[str, Any] | None:
    """``n`` test images, their reconstructions and ``n`` samples of a finished trial (for the sample figures)."""
    import torch

    import injflow.api as inj
    from injflow.sweep.scoring import load_split

    if record is None or record.state != "completed":
        return None
    flow = inj.load(result.folder / "trials" / record.name).eval()
    x = load_split(config_of(result, record), "test")[:n]
    with torch.no_grad():
        return {"test": x, "reconstruction": flow(x), sampler: flow.sample(n, sampler=sampler, seed=seed)}


def run_table(exp: Any, specs: list[Any], assemble: Callable[[list[Any], Any], dict[str, Any]]) -> int:
    """A table script's whole run: its sweeps (:func:`run_sweeps`), then ``assemble(results, exp)`` writes the table
    and returns what ``summary.json`` adds to :func:`sweep_summary`; returns the exit status (0: table written)."""
    results = run_sweeps(exp, specs)
    if isinstance(results, int):
        return results
    extra = assemble(results, exp)
    exp.finish(**sweep_summary(results), **extra)
    return 0


def sweep_summary(results: list[Any]) -> dict[str, Any]:
    """What ``summary.json`` records about the sweeps: folders, selections, failures, seconds per trial."""
    return {
        "sweeps": {r.spec.name: str(r.folder) for r in results},
        "selection": {r.spec.name: [{"group": s.group, "metric": s.metric, "trial": s.trial, "value": s.value}
                                    for s in r.selections] for r in results},
        "failed_trials": {f"{r.spec.name}/{rec.name}": rec.error for r in results for rec in r.records if rec.error},
        "train_seconds": {f"{r.spec.name}/{rec.name}": rec.train_seconds for r in results for rec in r.records},
        "eval_seconds": {f"{r.spec.name}/{rec.name}": rec.eval_seconds for r in results for rec in r.records
                         if rec.eval_seconds},
    }
