"""Campaigns: a paper table as a set of runs that survives being killed at any point, and one command per table.

A table script (``pythae_benchmark.py``, ``kumar_table1.py``, ``fif_table2.py``) describes a :class:`Plan`: its runs
(config + overrides, a selection ``group`` and the grid ``params``), the evaluation on the **validation** split that
selects among the runs of a group, and the evaluation on the **test** split that only the selected runs get. This
module executes the plan in stages and assembles the table when the last stage ends:

1. ``train``    — ``injflow.api.fit`` into ``<campaign>/runs/<name>/``; a killed run resumes from
   ``checkpoints/last.ckpt`` with ``injflow.api.resume`` (the engine resumes bit-identically);
2. ``val``      — FID (and IS where a classifier exists) of every run on the validation split → ``val.json``;
3. selection    — per group and criterion, the run with the lowest validation FID → ``selection.json``
   (FIF App. E.4: "compute their validation FID ... use the model which achieves the best FID on the validation
   set"; Kumar §4: the model with the best post-fit-GMM FID);
4. ``test``     — the selected runs only, on the test split → ``test.json``;
5. the table script's ``assemble`` writes CSV + JSON + figures into the results folder.

Every stage leaves a file written atomically; a stage whose file exists is skipped, so rerunning the same command
after a kill, a preemption or the end of a machine lease continues where it stopped. A run is *trained* when its
folder has ``model.pt`` (and, once the engine writes it, ``status.json`` does not say otherwise: ``completed`` =
finished; ``interrupted`` / ``running`` with a checkpoint = resume; ``failed`` = reported, retried only with
``--retry-failed``). Runs execute serially in-process (``--jobs 1``) or in ``--jobs N`` worker processes
(``python experiments/campaign.py worker CAMPAIGN RUN STAGE``), each with ``train.num_threads`` =
``--threads-per-job`` (default 1) so that the cores are not oversubscribed. A lock file per run (with the owner's
pid) keeps two drivers from working on one run; a stale lock (dead pid) is taken over.

``--dry-run`` prints every run with its state and an estimated time: steps × seconds per step (measured by the
finished runs of this campaign with the same architecture and data shape, else :data:`STEP_SECONDS`, measured on
the project's 2-core CPU), plus the images each evaluation sends through Inception × :data:`INCEPTION_SECONDS`.

Folder layout::

    <campaign>/campaign.json           the plan (runs, evaluations, selection criteria)
    <campaign>/runs/<name>/spec.json   the run's spec; a different spec under the same name is refused
    <campaign>/runs/<name>/...         the engine's run folder (config.yaml, checkpoints/, metrics.csv, model.pt)
    <campaign>/runs/<name>/train.json  wall time and steps of the training (summed over resumes)
    <campaign>/runs/<name>/val.json    validation scores; test.json for the selected runs
    <campaign>/runs/<name>/failed.json the error of a failed stage
    <campaign>/selection.json          group → criterion → selected run and its validation FID
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CONFIGS, REPO, accelerator_overrides  # noqa: E402

from injflow.io import pid_alive  # noqa: E402

__all__ = [
    "EvalSpec", "RunSpec", "Plan", "RunRecord", "CampaignResult", "STEP_SECONDS", "INCEPTION_SECONDS",
    "PooledPixels", "campaign_args", "run_campaign", "run_from_args", "execute", "estimate_seconds", "value",
    "is_column_note", "metric_name", "real_data_floor", "example_images",
]

#: Seconds per optimiser step measured on the project's 2-core CPU with 1 torch thread (Intel Xeon, shared;
#: experiments/README.md), keyed by (architecture, data shape, batch size). Used by ``--dry-run`` until the
#: campaign has measured its own runs. FIF steps cost ~1.8-2x an AE step (docs/results.md, speed).
STEP_SECONDS: dict[tuple[str, tuple[int, ...], int], float] = {
    ("mlp", (1, 28, 28), 100): 0.025,
    ("mlp", (1, 28, 28), 128): 0.03,
    ("mlp", (64,), 64): 0.004,
    ("pythae_resnet", (1, 28, 28), 100): 0.36,
    ("pythae_resnet", (1, 28, 28), 64): 0.25,
    ("fif_convnet", (1, 28, 28), 256): 1.0,  # 298 steps in 300 s (fif_table2 cpu, 2026-12-03; 2.0 under load)
    ("fif_convnet", (1, 28, 28), 64): 0.7,
    ("injective_coupling", (1, 28, 28), 25): 0.105,  # DNF stand-in: 2,852 steps in 300 s (fif_table2 cpu)
    ("trumpet", (1, 28, 28), 64): 0.12,  # Trumpet stand-in: 2,487 steps in 300 s (fif_table2 cpu)
}
#: Seconds per image of the offline Inception at 299 × 299 on one CPU thread, channels-last (measured 0.12-0.21).
INCEPTION_SECONDS = 0.2
#: Seconds per image on a GPU, for --device cuda estimates (order of magnitude).
INCEPTION_SECONDS_GPU = 0.002
STAGES = ("train", "val", "test")


# ---------------------------------------------------------------------------------------------------- the plan

@dataclass
class EvalSpec:
    """One evaluation of a run on one split.

    Arguments:
        split: ``val`` (selection) or ``test`` (the reported numbers).
        n: Images per set: reference, reconstructions, and samples per sampler.
        samplers: Which samplers to score (``prior`` = the training latent, FIF's "N"; ``gaussian`` = the post-fit
            full-covariance Gaussian, Kumar's "N"; ``gmm``).
        reconstruction: Also score the reconstructions ("Rec.", Kumar table 1).
        disjoint: Reconstruct ``split[:n]`` and score against ``split[n:2n]`` (honest at small n), instead of the
            papers' ``split[:n]`` against itself (``injflow.metrics.fid_protocol``).
        features: ``inception`` (FID) or ``pixels`` (4×4-pooled pixels, a smoke-scale stand-in; not FID).
        inception_score: Compute IS where a logits classifier exists (``$INJFLOW_IS_CLASSIFIER``); else the
            column says why not.
    """

    split: str = "val"
    n: int = 1000
    samplers: list[str] = field(default_factory=lambda: ["prior", "gmm"])
    reconstruction: bool = False
    disjoint: bool = True
    features: str = "inception"
    inception_score: bool = False

    def sets(self) -> list[str]:
        return (["reconstruction"] if self.reconstruction else []) + list(self.samplers)

    def images(self) -> int:
        """Images sent through the feature extractor per run (the reference is cached once per campaign)."""
        return self.n * len(self.sets())


@dataclass
class RunSpec:
    """One training run: ``injflow fit CONFIG --set OVERRIDES`` into ``<campaign>/runs/<name>``.

    ``group`` is the set of runs one configuration is selected from (e.g. ``ResNet MNIST``, ``AE+L2``); ``params``
    are the grid values the tables show (e.g. ``{"beta": 5, "K": 1}``).
    """

    name: str
    config: str
    overrides: list[str] = field(default_factory=list)
    group: str = ""
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    """A table as runs, the two evaluations, and the selection criteria.

    ``criteria`` maps a criterion name to the validation set it minimises: FIF's Pythae selection is per sampler
    (``{"N": "prior", "GMM": "gmm"}``), Kumar's is one model per method by its GMM FID (``{"GMM": "gmm"}``).
    ``validation=None`` means nothing is selected: every group must hold exactly one run (e.g. one method and seed
    of FIF table 2), which is then evaluated on the test split.
    """

    name: str
    scale: str
    runs: list[RunSpec]
    validation: EvalSpec | None
    test: EvalSpec
    criteria: dict[str, str | None]
    seed: int = 0
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        d = dict(d)
        d["runs"] = [RunSpec(**r) for r in d["runs"]]
        d["validation"] = EvalSpec(**d["validation"]) if d["validation"] else None
        d["test"] = EvalSpec(**d["test"])
        return cls(**d)

    def check(self) -> None:
        names = [r.name for r in self.runs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"campaign {self.name}: run names must be unique, repeated: {dup}")
        bad = [n for n in names if not n or any(c in n for c in "/\\ ") or n.startswith(".")]
        if bad:
            raise ValueError(f"campaign {self.name}: run names must be plain folder names, got {bad}")
        if self.validation is None:
            groups = [r.group for r in self.runs]
            many = sorted({g for g in groups if groups.count(g) > 1})
            if many:
                raise ValueError(f"campaign {self.name}: without a validation stage every group needs one run; {many} "
                                 "have several")
            return
        if self.validation.split == "test":
            raise ValueError("selection must not look at the test split: the validation evaluation has split=test")
        for crit, key in self.criteria.items():
            if key not in self.validation.sets():
                raise ValueError(f"criterion {crit!r} selects on {key!r}, which the validation does not score "
                                 f"({self.validation.sets()})")


# ---------------------------------------------------------------------------------------------------- run state

def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: Any) -> None:
    """Atomic: a temporary file in the same folder, then rename (a kill never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, default=_jsonable) + "\n")
    os.replace(tmp, path)


def _jsonable(v: Any) -> Any:
    if hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, Path):
        return v.as_posix()
    raise TypeError(type(v).__name__)


def engine_state(run_dir: Path) -> str:
    """``trained`` | ``resumable`` | ``failed`` | ``partial`` (a folder without checkpoint) | ``new``.

    ``model.pt`` present means finished (today's engine); the engine's ``status.json`` (``state``: completed,
    interrupted, failed, running) is read when it exists.
    """
    if not run_dir.is_dir():
        return "new"
    status = _read_json(run_dir / "status.json") or {}
    state = status.get("state")
    if (run_dir / "model.pt").is_file() and state in (None, "completed"):
        return "trained"
    if state == "failed" or (_read_json(run_dir / "failed.json") or {}).get("stage") == "train":
        return "failed"
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        return "resumable"
    return "partial" if any(run_dir.iterdir()) else "new"


class RunLock:
    """``<run>/.lock`` holding the owner's pid, created with O_EXCL; a lock of a dead process is taken over."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"
        self.held = False

    def owner(self) -> int | None:
        try:
            pid = int(self.path.read_text().strip() or 0)
        except (OSError, ValueError):
            return None
        return pid if pid and pid_alive(pid) and pid != os.getpid() else None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if self.owner() is not None:
                    return False
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(str(os.getpid()))
            self.held = True
            return True
        return False

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


# ---------------------------------------------------------------------------------------------------- features

class PooledPixels(nn.Module):
    """Smoke-scale stand-in for Inception: 4×4-average-pooled pixels (all channels). Not FID; tables say so."""

    identity = "pooled-pixels-4x4-v1"

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        x = images.float()
        if x.ndim == 2:
            from injflow.metrics.inception import infer_image_shape

            x = x.reshape(x.shape[0], *infer_image_shape(x.shape[1]))
        return nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)


_EXTRACTORS: dict[tuple[str, str], Any] = {}


def feature_extractor(kind: str, device: str = "cpu") -> Any:
    """The extractor of an :class:`EvalSpec` (one per process)."""
    if (kind, device) not in _EXTRACTORS:
        if kind == "pixels":
            _EXTRACTORS[kind, device] = PooledPixels()
        elif kind == "inception":
            from injflow.metrics import InceptionFeatureExtractor

            _EXTRACTORS[kind, device] = InceptionFeatureExtractor(device=device, channels_last=device == "cpu")
        else:
            raise ValueError(f"features must be 'inception' or 'pixels', got {kind!r}")
    return _EXTRACTORS[kind, device]


def metric_name(kind: str) -> str:
    return "FID" if kind == "inception" else "Fréchet distance of 4x4-pooled pixels (stand-in, not FID)"


# ---------------------------------------------------------------------------------------------------- stages

@dataclass
class Context:
    """What a worker needs besides the plan: where things go and how many threads it may use."""

    campaign: Path
    threads: int = 1
    device: str = "cpu"
    fid_cache: str | None = None
    interrupt_after_steps: int | None = None
    retry_failed: bool = False

    def run_dir(self, name: str) -> Path:
        return self.campaign / "runs" / name


def _config_path(spec: RunSpec) -> Path:
    p = Path(spec.config)
    return p if p.is_absolute() or p.exists() else CONFIGS / spec.config


def run_overrides(spec: RunSpec, ctx: Context) -> list[str]:
    """The spec's overrides plus the driver's: threads, device, no progress bar, no pictures, a checkpoint period."""
    keys = {o.split("=", 1)[0] for o in spec.overrides}
    extra = [f"train.num_threads={ctx.threads}", "train.progress_bar=false", "train.pictures=false",
             *accelerator_overrides(ctx.device)]
    if "train.checkpoint_every_n_steps" not in keys:
        extra.append("train.checkpoint_every_n_steps=50")  # a kill loses at most 50 steps
    return list(spec.overrides) + extra


def _load_split(config: Any, split: str) -> Tensor:
    from injflow.data import load_dataset

    d = config.data
    data = load_dataset(d.name, seed=d.seed, root=d.root, download=d.download, **d.options)
    x = {"train": data.train, "val": data.val, "test": data.test}[split]
    if x is None:
        raise ValueError(f"data set {d.name} has no {split} split")
    return x


def train_stage(spec: RunSpec, ctx: Context) -> str:
    """Trains (or resumes) one run; returns ``trained`` or ``interrupted`` (raises on errors)."""
    import contextlib
    import logging

    import injflow.api as inj

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)  # one line per run from the driver instead

    run_dir = ctx.run_dir(spec.name)
    state = engine_state(run_dir)
    if state == "trained":
        return "trained"
    if state == "failed":  # execute() only gets here with --retry-failed
        state = "resumable" if (run_dir / "checkpoints" / "last.ckpt").is_file() else "partial"
    stop = [f"train.stop_after_steps={ctx.interrupt_after_steps if ctx.interrupt_after_steps else 'null'}"]
    timing = _read_json(run_dir / "train.json") or {"wall_s": 0.0, "invocations": 0}
    t0 = time.perf_counter()
    if state == "resumable":
        with contextlib.redirect_stdout(open(os.devnull, "w")):  # resume prints its artefact list
            result = inj.resume(run_dir, overrides=[f"train.num_threads={ctx.threads}", *stop])
    else:
        if state == "partial":  # killed before its first checkpoint: start again in a clean folder
            for child in run_dir.iterdir():
                if child.name not in ("spec.json", ".lock"):
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        result = inj.fit(_config_path(spec), overrides=run_overrides(spec, ctx) + stop, run_dir=run_dir, verbose=False)
    timing["wall_s"] = round(timing["wall_s"] + time.perf_counter() - t0, 2)
    timing["invocations"] += 1
    timing["global_step"] = int(result.global_step)
    timing["completed"] = bool(result.completed)
    _write_json(run_dir / "train.json", timing)
    return "trained" if result.completed and (run_dir / "model.pt").is_file() else "interrupted"


def score_run(run_dir: Path, spec: EvalSpec, *, seed: int, device: str = "cpu", fid_cache: str | None = None) -> dict:
    """Scores one trained run on ``spec.split``: FID of reconstructions and of each sampler's samples against the
    reference set of :func:`injflow.metrics.fid_protocol`, reconstruction error, and IS where possible."""
    import injflow.api as inj
    from injflow.config import load_config
    from injflow.metrics import (
        IS_UNAVAILABLE_REASON,
        LogitsUnavailableError,
        ReferenceStatsCache,
        feature_stats,
        fid_protocol,
        find_logits_classifier,
        frechet_distance,
        inception_score_of_images,
    )

    t0 = time.perf_counter()
    config = load_config(run_dir / "config.yaml")
    flow = inj.load(run_dir).to(device).eval()
    x = _load_split(config, spec.split)
    protocol = fid_protocol(x, dataset=config.data.name, split=spec.split, n=spec.n, disjoint=spec.disjoint)
    ext = feature_extractor(spec.features, device)
    cache = ReferenceStatsCache(fid_cache) if fid_cache else ReferenceStatsCache()
    ref, hit = protocol.reference.stats(ext, cache, batch_size=50)
    with torch.no_grad():
        recon = torch.cat([flow(protocol.reconstruct[i:i + 500].to(device)).cpu()
                           for i in range(0, spec.n, 500)])
    images = {"reconstruction": recon} if spec.reconstruction else {}
    for name in spec.samplers:
        images[name] = flow.sample(spec.n, sampler=name, seed=seed).cpu()
    fids = {k: frechet_distance(feature_stats(v, ext, batch_size=50), ref) for k, v in images.items()}
    scores: dict[str, Any] = {
        "split": spec.split, "n": spec.n, "metric": metric_name(spec.features),
        "feature_extractor": getattr(ext, "identity", type(ext).__name__), "protocol": protocol.describe(),
        "reference_from_cache": hit, "fid": fids,
        "reconstruction_error": float((recon - protocol.reconstruct).flatten(1).pow(2).sum(1).mean()),
    }
    if spec.inception_score:
        try:
            clf = find_logits_classifier(device=device)
            scores["is"] = {k: inception_score_of_images(v, clf)[0] for k, v in images.items()}
        except LogitsUnavailableError:
            scores["is"], scores["is_note"] = None, IS_UNAVAILABLE_REASON
    scores["seconds"] = round(time.perf_counter() - t0, 1)
    return scores


def execute(plan: Plan, name: str, stages: Sequence[str], ctx: Context) -> str:
    """Runs stages of one run in this process, in order (e.g. ``("train", "val")``); returns the outcome:
    ``done``, ``interrupted`` (training stopped with a checkpoint), ``failed`` (recorded in ``failed.json``) or
    ``busy`` (another live process holds the run's lock)."""
    spec = next(r for r in plan.runs if r.name == name)
    run_dir = ctx.run_dir(name)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir)
    if not lock.acquire():
        return "busy"
    stage = stages[0]
    try:
        stored = _read_json(run_dir / "spec.json")
        if stored is None:
            _write_json(run_dir / "spec.json", dataclasses.asdict(spec))
        elif stored != json.loads(json.dumps(dataclasses.asdict(spec))):
            raise SpecMismatchError(f"{run_dir} was made from a different spec ({stored}); move it away or use "
                                    f"another --campaign folder")
        if (run_dir / "failed.json").is_file() or engine_state(run_dir) == "failed":
            if not ctx.retry_failed:
                return "failed"
            (run_dir / "failed.json").unlink(missing_ok=True)
        torch.set_num_threads(ctx.threads)
        for stage in stages:
            if stage == "train":
                if train_stage(spec, ctx) != "trained":
                    return "interrupted"
                continue
            evaluation = plan.validation if stage == "val" else plan.test
            out = run_dir / f"{stage}.json"
            if not _matches(_read_json(out), evaluation):
                _write_json(out, score_run(run_dir, evaluation, seed=plan.seed, device=ctx.device,
                                           fid_cache=ctx.fid_cache))
        return "done"
    except SpecMismatchError:
        raise
    except Exception as e:  # noqa: BLE001 - recorded for the table; the campaign goes on with the other runs
        _write_json(run_dir / "failed.json", {"stage": stage, "error": f"{type(e).__name__}: {e}",
                                              "traceback": traceback.format_exc()[-4000:]})
        print(f"[campaign] {name} {stage} failed: {type(e).__name__}: {e}", flush=True)
        return "failed"
    finally:
        lock.release()


class SpecMismatchError(RuntimeError):
    """A run folder exists under this name but was made from another spec."""


# ---------------------------------------------------------------------------------------------------- scheduling

@dataclass
class RunRecord:
    """Everything the campaign knows about one run when the table is assembled."""

    spec: RunSpec
    state: str
    train: dict[str, Any] | None
    val: dict[str, Any] | None
    test: dict[str, Any] | None
    failed: dict[str, Any] | None


@dataclass
class CampaignResult:
    """The assembled campaign: the plan, one record per run, and the selection (group → criterion → run name)."""

    plan: Plan
    folder: Path
    records: dict[str, RunRecord]
    selection: dict[str, dict[str, str | None]]
    complete: bool

    def selected(self, group: str, criterion: str) -> RunRecord | None:
        name = self.selection.get(group, {}).get(criterion)
        return self.records[name] if name else None


def _matches(scores: dict | None, spec: EvalSpec | None) -> bool:
    """Whether stored scores were made by this evaluation (a changed n, split or set of samplers recomputes)."""
    if scores is None or spec is None:
        return False
    return (scores.get("split"), scores.get("n"), sorted(scores.get("fid", {}))) == (spec.split, spec.n, sorted(spec.sets()))


def _stage_done(plan: Plan, ctx: Context, name: str, stage: str) -> bool:
    run_dir = ctx.run_dir(name)
    if stage == "train":
        return engine_state(run_dir) == "trained"
    return _matches(_read_json(run_dir / f"{stage}.json"), plan.validation if stage == "val" else plan.test)


def _failed(ctx: Context, name: str) -> dict | None:
    f = _read_json(ctx.run_dir(name) / "failed.json")
    if f is None and engine_state(ctx.run_dir(name)) == "failed":
        f = {"stage": "train", "error": "the engine's status.json says failed"}
    return f


def select(plan: Plan, ctx: Context) -> dict[str, dict[str, str | None]]:
    """Per group and criterion, the run with the lowest validation score (runs without one are left out)."""
    out: dict[str, dict[str, str | None]] = {}
    if plan.validation is None:  # nothing to select: the one run of each group (Plan.check)
        return {r.group: {crit: r.name for crit in plan.criteria} for r in plan.runs
                if _failed(ctx, r.name) is None}
    for group in dict.fromkeys(r.group for r in plan.runs):
        out[group] = {}
        for crit, key in plan.criteria.items():
            scored = []
            for r in plan.runs:
                val = _read_json(ctx.run_dir(r.name) / "val.json") if r.group == group else None
                if _matches(val, plan.validation) and math.isfinite(val["fid"].get(key, math.nan)):
                    scored.append((val["fid"][key], r.name))
            out[group][crit] = min(scored)[1] if scored else None
    return out


def _worker_command(ctx: Context, name: str, stages: Sequence[str]) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "worker", str(ctx.campaign), name, ",".join(stages),
           "--threads", str(ctx.threads), "--device", ctx.device]
    if ctx.fid_cache:
        cmd += ["--fid-cache", ctx.fid_cache]
    if ctx.interrupt_after_steps:
        cmd += ["--interrupt-after-steps", str(ctx.interrupt_after_steps)]
    if ctx.retry_failed:
        cmd.append("--retry-failed")
    return cmd


Task = tuple[str, tuple[str, ...]]  # a run and the stages it still needs, executed in order by one worker


def _run_tasks(plan: Plan, tasks: list[Task], ctx: Context, *, jobs: int, budget: list[int],
               log: Callable[[str], None]) -> dict[Task, str]:
    """Executes tasks serially in-process (``jobs`` = 1) or in ``jobs`` worker processes; ``budget[0]`` = how many
    more tasks may start (``--max-tasks``: ends an invocation early, as a lease would; -1 = no limit)."""
    outcomes: dict[Task, str] = {}
    pending = list(tasks)
    running: dict[Task, tuple[subprocess.Popen, float]] = {}
    while pending or running:
        while pending and len(running) < max(jobs, 1) and budget[0] != 0:
            task = pending.pop(0)
            name, stages = task
            if RunLock(ctx.run_dir(name)).owner() is not None:
                outcomes[task] = "busy"
                log(f"busy  {'+'.join(stages):<9} {name} (another live process holds its lock)")
                continue
            budget[0] -= 1
            log(f"start {'+'.join(stages):<9} {name}")
            if jobs <= 1:
                t0 = time.perf_counter()
                outcomes[task] = execute(plan, name, stages, ctx)
                log(f"{outcomes[task]:<5} {'+'.join(stages):<9} {name} ({time.perf_counter() - t0:.0f} s)")
            else:
                running[task] = (subprocess.Popen(_worker_command(ctx, name, stages), cwd=REPO), time.perf_counter())
        if not running:
            break
        time.sleep(0.5)
        for task, (proc, t0) in list(running.items()):
            if proc.poll() is not None:
                del running[task]
                rc = proc.returncode
                outcomes[task] = {0: "done", 3: "interrupted", 4: "busy", 5: "failed"}.get(rc, "failed")
                log(f"{outcomes[task]:<5} {'+'.join(task[1]):<9} {task[0]} ({time.perf_counter() - t0:.0f} s, exit {rc})")
    for task in pending:
        outcomes.setdefault(task, "not started")
    return outcomes


def run_campaign(plan: Plan, ctx: Context, *, jobs: int = 1, max_tasks: int | None = None,
                 log: Callable[[str], None] = print) -> CampaignResult:
    """Runs every stage still to do; returns the result (``complete`` when every run reached its last stage)."""
    plan.check()
    ctx.campaign.mkdir(parents=True, exist_ok=True)
    stored = _read_json(ctx.campaign / "campaign.json")
    if stored is not None and stored.get("name") != plan.name:
        raise RuntimeError(f"{ctx.campaign} holds campaign {stored.get('name')!r}, not {plan.name!r}")
    _write_json(ctx.campaign / "campaign.json", plan.to_dict())
    budget = [-1 if max_tasks is None else int(max_tasks)]

    def todo(names: list[str], stages: Sequence[str]) -> list[Task]:
        out = []
        for name in names:
            if _failed(ctx, name) and not ctx.retry_failed:
                continue
            left = tuple(s for s in stages if not _stage_done(plan, ctx, name, s))
            if left:
                out.append((name, left))
        return out

    names = [r.name for r in plan.runs]
    first = ("train", "val") if plan.validation is not None else ("train",)
    tasks = todo(names, first)
    if tasks and budget[0] != 0:
        _run_tasks(plan, tasks, ctx, jobs=jobs, budget=budget, log=log)
    ready = not todo(names, first)
    selection = select(plan, ctx) if ready else {}
    complete = False
    if ready:
        _write_json(ctx.campaign / "selection.json", selection)
        chosen = list(dict.fromkeys(n for crit in selection.values() for n in crit.values() if n))
        tasks = todo(chosen, ("test",))
        if tasks and budget[0] != 0:
            _run_tasks(plan, tasks, ctx, jobs=jobs, budget=budget, log=log)
        complete = not todo(chosen, ("test",))
    records = {}
    for r in plan.runs:
        d = ctx.run_dir(r.name)
        records[r.name] = RunRecord(r, engine_state(d), _read_json(d / "train.json"), _read_json(d / "val.json"),
                                    _read_json(d / "test.json"), _failed(ctx, r.name))
    return CampaignResult(plan, ctx.campaign, records, selection, complete)


# ---------------------------------------------------------------------------------------------------- estimates

_RESOLVED: dict[str, Any] = {}


def _resolved(spec: RunSpec, ctx: Context) -> Any:
    from injflow.config import load_config

    key = json.dumps(dataclasses.asdict(spec), sort_keys=True)
    if key not in _RESOLVED:
        _RESOLVED[key] = load_config(_config_path(spec), run_overrides(spec, ctx))
    return _RESOLVED[key]


def _steps(config: Any, n_train: int | None) -> int | None:
    t = config.train
    by_epochs = None
    if n_train:
        per_epoch = n_train // config.data.batch_size if config.data.drop_last else -(-n_train // config.data.batch_size)
        by_epochs = t.max_epochs * per_epoch
    if t.max_steps and t.max_steps > 0:
        return min(t.max_steps, by_epochs) if by_epochs else t.max_steps
    return by_epochs


_N_TRAIN = {"mnist": 50_000, "fashion_mnist": 50_000, "cifar10": 40_000, "celeba": 162_770, "digits": None}
_SHAPES = {"mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32), "celeba": (3, 64, 64),
           "digits": (64,)}


def estimate_seconds(plan: Plan, ctx: Context, spec: RunSpec) -> tuple[float | None, str]:
    """Estimated seconds still needed by one run (train + val + test), and where the step cost came from."""
    config = _resolved(spec, ctx)
    d = config.data
    n_train = d.options.get("n_train") or _N_TRAIN.get(d.name)
    if d.name == "digits":
        n_train = 1797 - d.options.get("n_val", 180) - d.options.get("n_test", 360)
    shape = _SHAPES.get(d.name)
    if d.options.get("flatten") and shape:
        shape = (math.prod(shape),)
    key = (config.model.architecture, shape, d.batch_size)
    # measured by this campaign: finished runs with the same architecture, data shape and batch size
    measured = []
    for other in plan.runs:
        t = _read_json(ctx.run_dir(other.name) / "train.json")
        if t and t.get("completed") and t.get("global_step"):
            oc = _resolved(other, ctx)
            if (oc.model.architecture, oc.data.name, oc.data.batch_size) == (config.model.architecture, d.name, d.batch_size):
                measured.append(t["wall_s"] / t["global_step"])
    if measured:
        per_step, source = sum(measured) / len(measured), f"measured here ({len(measured)} runs)"
    elif key in STEP_SECONDS:
        per_step, source = STEP_SECONDS[key], "table"
    else:
        per_step, source = None, f"unknown step cost for {key}"
    run_dir = ctx.run_dir(spec.name)
    total = 0.0
    if not _stage_done(plan, ctx, spec.name, "train"):
        steps = _steps(config, n_train)
        done = (_read_json(run_dir / "train.json") or {}).get("global_step", 0)
        if per_step is None or steps is None:
            return None, source
        total += per_step * max(steps - done, 0)
        max_time = getattr(config.train, "max_time", None)
        if max_time:
            total = min(total, float(max_time))
    img_s = INCEPTION_SECONDS if ctx.device == "cpu" else INCEPTION_SECONDS_GPU
    for stage, ev in (("val", plan.validation), ("test", plan.test)):
        if ev is not None and not _stage_done(plan, ctx, spec.name, stage):
            share = 1.0 if stage == "val" else len(plan.criteria) / max(len([r for r in plan.runs if r.group == spec.group]), 1)
            total += share * ev.images() * (img_s if ev.features == "inception" else 0.0005)
    return total, source


def print_plan(plan: Plan, ctx: Context, jobs: int, log: Callable[[str], None] = print) -> float | None:
    """The ``--dry-run`` listing: every run, its state, its estimated remaining time; the total."""
    total, unknown = 0.0, 0
    how = (f"selection {plan.criteria} on {plan.validation.split} (n={plan.validation.n})" if plan.validation
           else "no selection")
    log(f"campaign {plan.name} ({plan.scale}) in {ctx.campaign}: {len(plan.runs)} runs, {how}, test n={plan.test.n}")
    for spec in plan.runs:
        d = ctx.run_dir(spec.name)
        state = engine_state(d)
        stages = [s for s in STAGES[1:] if (d / f"{s}.json").is_file()]
        if state == "resumable":
            state += f"@{(_read_json(d / 'train.json') or {}).get('global_step', '?')}"
        est, source = estimate_seconds(plan, ctx, spec)
        if est is None:
            unknown += 1
        else:
            total += est
        log(f"  {spec.name:<40} {spec.group:<18} {state + ('+' + '+'.join(stages) if stages else ''):<22} "
            f"{'?' if est is None else f'{est:8.0f} s'}  ({source})  {' '.join(spec.overrides)}")
    wall = total / max(jobs, 1)
    log(f"estimated: {total:.0f} s of work, ~{wall / 60:.1f} min with --jobs {jobs}"
        + (f"; {unknown} runs without an estimate" if unknown else ""))
    return total if not unknown else None


# ---------------------------------------------------------------------------------------------------- commands

def campaign_args() -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    """The command-line options every campaign script adds to ``common.start``."""
    return [
        (("--jobs",), {"type": int, "default": 1, "help": "parallel worker processes (default 1: serial, in-process)"}),
        (("--threads-per-job",), {"type": int, "default": 1, "help": "train.num_threads of each run (default 1)"}),
        (("--dry-run",), {"action": "store_true", "help": "print the runs, their state and the estimated time; run nothing"}),
        (("--campaign",), {"type": Path, "default": None,
                           "help": "campaign folder with the run folders and checkpoints (default <out>/campaign, "
                                   "git-ignored)"}),
        (("--fid-cache",), {"default": None, "help": "folder of cached FID reference statistics (default ~/.cache/injflow/fid)"}),
        (("--retry-failed",), {"action": "store_true", "help": "retry runs whose stage failed"}),
        (("--max-tasks",), {"type": int, "default": None, "help": "start at most this many stages, then stop (a lease)"}),
        (("--interrupt-after-steps",), {"type": int, "default": None,
                                        "help": "testing: stop each training after this many steps, resumable"}),
        (("--data-root",), {"default": None, "help": "data.root for CIFAR-10 / CelebA files (docs/data.md)"}),
        (("--seed",), {"type": int, "default": 0, "help": "training and sampling seed (default 0)"}),
    ]


def context_from_args(exp: Any) -> Context:
    a = exp.args
    folder = a.campaign if a.campaign is not None else exp.out / "campaign"
    return Context(Path(folder).resolve(), threads=a.threads_per_job, device=a.device, fid_cache=a.fid_cache,
                   interrupt_after_steps=a.interrupt_after_steps, retry_failed=a.retry_failed)


def run_from_args(exp: Any, plan: Plan, assemble: Callable[[CampaignResult, Any], dict[str, Any]]) -> int:
    """The body of every campaign script's ``main``: dry run, or run and assemble; the exit status.

    Exit status 0: the table was written; 3: runs are left (rerun the same command to continue); 2: dry run.
    """
    ctx = context_from_args(exp)
    if exp.args.dry_run:
        print_plan(plan, ctx, exp.args.jobs, log=exp.log)
        return 2
    result = run_campaign(plan, ctx, jobs=exp.args.jobs, max_tasks=exp.args.max_tasks, log=exp.log)
    failed = {n: r.failed for n, r in result.records.items() if r.failed}
    if not result.complete:
        left = [n for n, r in result.records.items() if r.state != "trained" and not r.failed]
        exp.log(f"not finished ({len(left)} runs not trained yet, or evaluations left); rerun the same command "
                "to continue")
        return 3
    extra = assemble(result, exp)
    exp.finish(campaign=str(ctx.campaign), plan=plan.to_dict(), selection=result.selection,
               failed_runs=failed, jobs=exp.args.jobs, threads_per_job=exp.args.threads_per_job,
               train_wall_s={n: (r.train or {}).get("wall_s") for n, r in result.records.items()},
               eval_wall_s={n: [(s or {}).get("seconds") for s in (r.val, r.test)] for n, r in result.records.items()},
               **extra)
    return 0


def value(record: RunRecord | None, stage: str, key: str, kind: str = "fid") -> float | None:
    """A score of a run's ``val`` or ``test`` evaluation (``kind`` = ``fid`` or ``is``), ``None`` if absent."""
    scores = getattr(record, stage, None) if record is not None else None
    table = (scores or {}).get(kind) or {}
    v = table.get(key)
    return None if v is None else float(v)


def real_data_floor(result: CampaignResult, fid_cache: str | None = None, device: str = "cpu") -> dict[str, float]:
    """Per group: the score of the real images ``test[:n]`` of its data set against the test reference set — the
    lowest value n images can reach under this protocol (FID is biased upwards at small n). Cached in
    ``floor-test.json`` (one computation per data set)."""
    from injflow.config import load_config
    from injflow.metrics import ReferenceStatsCache, feature_stats, fid_protocol, frechet_distance

    path = result.folder / "floor-test.json"
    cached = _read_json(path) or {}
    spec = result.plan.test
    out: dict[str, float] = {}
    for rec in result.records.values():
        run_dir = result.folder / "runs" / rec.spec.name
        if rec.test is None or not (run_dir / "config.yaml").is_file():
            continue
        config = load_config(run_dir / "config.yaml")
        key = f"{config.data.name}|{json.dumps(config.data.options, sort_keys=True)}|{spec.n}|{spec.disjoint}|{spec.features}"
        if key in cached:
            out[rec.spec.group] = cached[key]
            continue
        if not spec.disjoint:  # the papers' protocol: the reference *is* split[:n]; its floor is 0 by construction
            cached[key] = out[rec.spec.group] = 0.0
            continue
        x = _load_split(config, "test")
        protocol = fid_protocol(x, dataset=config.data.name, split="test", n=spec.n, disjoint=True)
        ext = feature_extractor(spec.features, device)
        ref, _ = protocol.reference.stats(ext, ReferenceStatsCache(fid_cache) if fid_cache else None, batch_size=50)
        cached[key] = out[rec.spec.group] = frechet_distance(feature_stats(protocol.reconstruct, ext, batch_size=50), ref)
        _write_json(path, cached)
    return out


@torch.no_grad()
def example_images(record: RunRecord | None, folder: Path, *, n: int = 8, sampler: str = "gmm",
                   seed: int = 0) -> dict[str, Tensor] | None:
    """``n`` test images, their reconstructions and ``n`` samples of a trained run (for the sample figures)."""
    import injflow.api as inj
    from injflow.config import load_config

    if record is None or record.state != "trained":
        return None
    run_dir = folder / "runs" / record.spec.name
    flow = inj.load(run_dir).eval()
    x = _load_split(load_config(run_dir / "config.yaml"), "test")[:n]
    return {"test": x, "reconstruction": flow(x), sampler: flow.sample(n, sampler=sampler, seed=seed)}


def is_column_note(plan: Plan) -> str:
    """What the IS columns hold: values, or why there are none."""
    from injflow.metrics import IS_UNAVAILABLE_REASON

    if not plan.test.inception_score:
        return "IS not computed at this scale"
    if plan.test.features != "inception":
        return "IS not computed: stand-in features at this scale"
    return "IS: " + ("computed with $INJFLOW_IS_CLASSIFIER" if os.environ.get("INJFLOW_IS_CLASSIFIER")
                     else IS_UNAVAILABLE_REASON)


def _worker_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="experiments/campaign.py worker", description="one stage of one campaign run")
    p.add_argument("campaign", type=Path)
    p.add_argument("run")
    p.add_argument("stages", help="comma-separated stages, e.g. train,val")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--fid-cache", default=None)
    p.add_argument("--interrupt-after-steps", type=int, default=None)
    p.add_argument("--retry-failed", action="store_true")
    a = p.parse_args(argv)
    plan = Plan.from_dict(json.loads((a.campaign / "campaign.json").read_text()))
    ctx = Context(a.campaign.resolve(), threads=a.threads, device=a.device, fid_cache=a.fid_cache,
                  interrupt_after_steps=a.interrupt_after_steps, retry_failed=a.retry_failed)
    stages = tuple(a.stages.split(","))
    if not stages or any(s not in STAGES for s in stages):
        p.error(f"stages must be among {STAGES}, got {a.stages!r}")
    outcome = execute(plan, a.run, stages, ctx)
    return {"done": 0, "interrupted": 3, "busy": 4, "failed": 5}.get(outcome, 1)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        sys.exit(_worker_main(sys.argv[2:]))
    sys.exit("experiments/campaign.py is the driver shared by the campaign scripts (pythae_benchmark.py, "
             "kumar_table1.py, fif_table2.py); its command-line use is `campaign.py worker CAMPAIGN RUN STAGE`.")
