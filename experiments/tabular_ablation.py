"""FIF vs. rectangular-flow estimator, off- vs. on-manifold, free-form vs. coupling-flow nets: FIF tables 6 and 7.

Reproduces FIF (Sorrenson, Draxler et al., ICLR 2024) **table 6** (FID-like W2, §5.1, App. E.2) and **table 7**
(test reconstruction error). Each NLL estimator is trained with two architectures on the same data, optimiser and
number of steps:

* **free-form net** — the tabular autoencoder of App. E.2 (MLP D → 256 → 256 → d plus two latent ResNet blocks,
  decoder mirrored; ``configs/*/fif-tabular-*.yaml`` as they are);
* **coupling flow** — the injective flow of Caterini et al. (2021) built from invertible blocks,
  g = w ∘ pad ∘ h with f its exact left inverse (``model.architecture=injective_coupling``: RealNVP 10 × 4·128 on
  R^D, 5 × 2·32 on R^d; ``injflow.nets.invertible``, zuko couplings) — the "injective architecture" rows, which FIF
  §5.1 credits with "a stabilizing regularization via the architecture".

NLL estimators:

* ``FIF, off manifold``: the FIF surrogate with the encoder Jacobian at the data point x (eq. 15 / 17, the paper's
  method);
* ``FIF, on manifold``: the same with the encoder Jacobian at the reconstruction x̂ (eq. 10;
  ``method.jacobian_at=x_hat``), which §4.2 predicts to diverge for free-form nets;
* ``RF, off / on manifold``: the rectangular-flow estimator (Caterini et al. 2021, FIF eq. 6; conjugate gradients
  instead of the single-sample surrogate) with its gradient through the encoder Jacobian at x resp. x̂
  (``method.name=rectangular_flow, grad_to=encoder, jacobian_at=x|x_hat``; docs/methods.md) — FIF's
  reimplementation of RF for table 6. "RF & free-form net" is a combination the paper does not report;
* ``RNF (Caterini et al.)`` with the coupling flow only: the rectangular flow *as published* (``method.name=rnf``,
  RNFs-ML with K = 1: decoder-side CG through the latent, exact log-det of the d-dimensional flow, β = 50; the
  ``configs/*/rnf-tabular-*.yaml`` method block, its likelihood warm-up rescaled to 2.5 → 5 % of the run). Its paper
  numbers are Caterini et al.'s, from FIF table 1.

Metrics (FIF §5.1, after Caterini et al. 2021): the FID-like W2 = squared 2-Wasserstein distance between the
Gaussian fits (mean, covariance) of the test split and of ``n_samples`` samples g(z), z ~ p_Z (the prior), and the
test reconstruction error mean ‖g(f(x)) − x‖² (summed over the D features, averaged over test points); mean ± std
over training seeds. Every table also lists the W2 between the *training* split and the test split: what an ideal
model would score given the tiny stand-in test splits ("data floor").

Scales (``--architectures`` picks free-form and/or coupling rows, default both):

* ``smoke``: the POWER stand-in only, all 9 variants, 1 seed, 15 optimiser steps (coupling rows: 10), 1,000 samples
  (pipeline check).
* ``cpu``: the offline scikit-learn stand-ins of ``configs/small/fif-tabular-*.yaml`` (configs/README.md) for
  POWER (``diabetes``, D = 10, d = 3) and HEPMASS (``breast_cancer``, D = 30, d = 10) — left out for time: GAS
  (``wine``, 17 test points) and MINIBOONE (``breast_cancer`` again, d = 21); ``--datasets`` adds them — with the
  small configs' net, β = 10, K = 1, batch 64, Adam + one-cycle LR, weight decay 1e-4, input noise 0.01, but
  only ``--steps`` (default 600) optimiser steps instead of the small configs' ~3,000 and the paper's ~50k
  (``--coupling-steps``, default the same, for the coupling rows, whose nets cost 3-8× a free-form step here);
  3 seeds (``--seeds``); 10,000 samples against the test split (44 / 56 points). One torch thread unless
  ``--threads`` (the nets are tiny; one thread is as fast as two and not slowed by other jobs on a shared machine).
* ``paper``: ``configs/paper/fif-tabular-{power,gas,hepmass,miniboone}.yaml`` with ``data.download=true`` (the
  MAF archive, ~1 GB, is not available offline), table 5's epochs, batch 512, 5 seeds (App. E.2), W2 on the full
  test split with as many samples.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CONFIGS, Experiment, fit_run, save_figure, start, temporary_run_dir, write_table  # noqa: E402

from injflow.metrics.frechet import fid_like_w2  # noqa: E402

NAME = "tabular_ablation"

# Paper data set -> config file name (configs/paper/<name>.yaml and its stand-in configs/small/<name>.yaml).
DATASETS = {
    "POWER": "fif-tabular-power",
    "GAS": "fif-tabular-gas",
    "HEPMASS": "fif-tabular-hepmass",
    "MINIBOONE": "fif-tabular-miniboone",
}

# The coupling-flow rows: Caterini et al.'s tabular RNF architecture (the builder's defaults) with the FIF config's d.
COUPLING = ["model.architecture=injective_coupling", "model.options={}"]
_RF = "method={{name: rectangular_flow, beta: 10.0, n_hutchinson: 1, noise: orthogonal, grad_to: encoder, jacobian_at: {at}}}"

# (method, architecture, manifold) -> config overrides. The configs are FIF off-manifold (eq. 15 / 17) as they are.
VARIANTS: dict[tuple[str, str, str], list[str]] = {
    ("FIF", "free-form", "off"): [],
    ("FIF", "free-form", "on"): ["method.jacobian_at=x_hat"],  # eq. 10: encoder Jacobian at x_hat
    ("RF", "free-form", "off"): [_RF.format(at="x")],  # FIF eq. 6 (CG), gradient through f'(x)
    ("RF", "free-form", "on"): [_RF.format(at="x_hat")],  # FIF eq. 6 (CG), gradient through f'(x_hat)
    ("FIF", "coupling", "off"): [*COUPLING],
    ("FIF", "coupling", "on"): [*COUPLING, "method.jacobian_at=x_hat"],
    ("RF", "coupling", "off"): [*COUPLING, _RF.format(at="x")],
    ("RF", "coupling", "on"): [*COUPLING, _RF.format(at="x_hat")],
    ("RNF", "coupling", "-"): [*COUPLING],  # + the rnf config's method block, see rnf_overrides()
}
ARCHITECTURES = ("free-form", "coupling")

# FIF table 6 (W2) and table 7 (reconstruction), mean ± std over 5 runs; RNF: Caterini et al.'s RNFs-ML (K = 1),
# FIF table 1. The paper has no "RF & free-form net" row.
PAPER_W2 = {
    ("FIF", "free-form", "off"): {"POWER": "0.041 ± 0.007", "GAS": "0.281 ± 0.031", "HEPMASS": "0.541 ± 0.034", "MINIBOONE": "0.598 ± 0.024"},
    ("FIF", "free-form", "on"): {"POWER": "19.54 ± 20.81", "GAS": "7.48 ± 5.40", "HEPMASS": "29.03 ± 5.42", "MINIBOONE": "77.23 ± 16.55"},
    ("FIF", "coupling", "off"): {"POWER": "0.11 ± 0.06", "GAS": "0.45 ± 0.09", "HEPMASS": "1.30 ± 0.14", "MINIBOONE": "1.55 ± 0.04"},
    ("FIF", "coupling", "on"): {"POWER": "3.71 ± 2.19", "GAS": "0.40 ± 0.22", "HEPMASS": "0.71 ± 0.05", "MINIBOONE": "3.13 ± 0.42"},
    ("RF", "coupling", "off"): {"POWER": "0.98 ± 0.69", "GAS": "6.16 ± 4.20", "HEPMASS": "2.02 ± 0.74", "MINIBOONE": "1.80 ± 0.10"},
    ("RF", "coupling", "on"): {"POWER": "0.33 ± 0.22", "GAS": "0.33 ± 0.17", "HEPMASS": "0.82 ± 0.07", "MINIBOONE": "1.84 ± 0.11"},
    ("RNF", "coupling", "-"): {"POWER": "0.083 ± 0.015 (t. 1)", "GAS": "0.110 ± 0.021 (t. 1)", "HEPMASS": "0.779 ± 0.191 (t. 1)", "MINIBOONE": "1.001 ± 0.051 (t. 1)"},
}
PAPER_RECONSTRUCTION = {
    ("FIF", "free-form", "off"): {"POWER": "0.072 ± 0.002", "GAS": "0.188 ± 0.012", "HEPMASS": "2.569 ± 0.098", "MINIBOONE": "1.077 ± 0.011"},
    ("FIF", "free-form", "on"): {"POWER": "237 ± 498", "GAS": "5835 ± 13006", "HEPMASS": "119 ± 34", "MINIBOONE": "300 ± 160"},
}


def rnf_overrides(folder: str, dataset_config: str, steps: int | None) -> list[str]:
    """The ``rnf`` method block of ``configs/<folder>/rnf-tabular-<ds>.yaml`` as one override.

    Its likelihood warm-up (epochs 25 → 50 of Caterini et al.'s up-to-1000) is rescaled to 2.5 → 5 % of this run's
    ``steps`` (kept as it is for a full paper-scale run, ``steps=None``).
    """
    import yaml


    block = yaml.safe_load((CONFIGS / folder / f"{dataset_config.replace('fif-', 'rnf-')}.yaml").read_text())["method"]
    if steps is not None:
        begin, end = max(1, round(0.025 * steps)), max(3, round(0.05 * steps))
        block["likelihood_weight"] = {"schedule": "linear", "start": 0, "end": 1, "begin": begin, "steps": end}
    return [f"method={yaml.safe_dump(block, default_flow_style=True).strip()}"]


@dataclass
class RunResult:
    """One trained and evaluated model."""

    w2: float
    reconstruction: float
    train_wall_s: float
    steps: int
    ms_per_step: float
    diverged: bool
    data_dim: int
    cg_iterations: float = math.nan  # mean CG iterations per step (rectangular flow only)


def step_time_ms(run_dir: Path) -> float:
    """Mean optimiser-step time of a run's training loop (ms), from the TensorBoard event wall times.

    The engine logs ``train/loss_step`` every ``log_every_n_steps`` steps; the time between the first and the last
    such event divided by the steps in between excludes start-up, the end-of-run pictures and model saving.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    if not files:
        return float("nan")
    acc = EventAccumulator(str(files[-1]), size_guidance={"scalars": 0})
    acc.Reload()
    if "train/loss_step" not in acc.Tags()["scalars"]:
        return float("nan")
    events = acc.Scalars("train/loss_step")
    if len(events) < 2 or events[-1].step == events[0].step:
        return float("nan")
    return 1e3 * (events[-1].wall_time - events[0].wall_time) / (events[-1].step - events[0].step)


def _metrics(run_dir: Path) -> list[dict[str, str]]:
    import csv

    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with path.open() as fh:
        return list(csv.DictReader(fh))


def last_logged_step(run_dir: Path) -> int:
    """The last optimiser step in a run's ``metrics.csv`` (-1 if none)."""
    return max((int(row["step"]) for row in _metrics(run_dir) if row.get("step")), default=-1)


def mean_cg_iterations(run_dir: Path) -> float:
    """Mean of the logged per-step conjugate-gradient iteration counts (``train/cg_iterations_step``; nan if none)."""
    values = [float(row["train/cg_iterations_step"]) for row in _metrics(run_dir) if row.get("train/cg_iterations_step")]
    return statistics.fmean(values) if values else math.nan


def train_and_evaluate(config: str, overrides: list[str], *, seed: int, n_samples: int, threads: int | None,
                       device: str = "cpu") -> RunResult:
    """Trains one model with the engine and returns its test W2 (FIF §5.1) and reconstruction error.

    A run whose loss turns non-finite (the engine stops it, ``NonFiniteLossError``) is evaluated from its last
    checkpoint (end of the previous epoch) and marked ``diverged``; without a checkpoint both metrics are inf.
    Sample sets with non-finite values give W2 = inf.
    """
    from injflow.errors import NonFiniteLossError
    from injflow.loading import load_run_model

    t0 = time.perf_counter()
    diverged = False
    with temporary_run_dir(NAME) as run_dir:
        try:
            result = fit_run(config, [*overrides, f"train.seed={seed}"], run_dir=run_dir, threads=threads, device=device)
            flow, steps = result.flow, result.global_step
        except NonFiniteLossError:
            diverged = True
            steps = last_logged_step(run_dir)
            try:
                flow = load_run_model(run_dir).to(device)
            except FileNotFoundError:
                flow = None
        wall = time.perf_counter() - t0
        ms, cg = step_time_ms(run_dir), mean_cg_iterations(run_dir)
        _, splits = load_splits(str(run_dir / "config.yaml"))
    x = splits.test
    if flow is None:
        return RunResult(math.inf, math.inf, wall, steps, ms, diverged, int(x[0].numel()), cg)
    flow.eval()
    x = x.to(flow.device)
    with torch.no_grad():
        reconstruction = float((flow.decode(flow.encode(x)) - x).flatten(1).pow(2).sum(1).mean())
        samples = flow.sample(n_samples, sampler="prior", seed=seed)
    w2 = fid_like_w2(samples, x) if torch.isfinite(samples).all() else math.inf
    return RunResult(w2, reconstruction, wall, steps, ms, diverged, int(x[0].numel()), cg)


def quiet_lightning() -> None:
    """Silences Lightning's per-run info lines and the known harmless warnings (one progress line per run instead)."""
    import logging
    import warnings

    import lightning.pytorch  # noqa: F401  (its import sets its loggers to INFO: import first, then lower them)

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*(LeafSpec|log_every_n_steps|limit_val_batches|litlogger).*")


def load_splits(config: str, overrides: list[str] = ()) -> tuple[Any, Any]:
    """A config (with overrides) and its data set's train/validation/test splits."""
    import injflow.api as inj
    from injflow.data import load_dataset

    cfg = inj.load_config(config, list(overrides))
    d = cfg.data
    return cfg, load_dataset(d.name, seed=d.seed, root=d.root, download=d.download, **d.options)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value; inf if any value is infinite)."""
    if any(not math.isfinite(v) for v in values):
        return math.inf, math.inf
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(mean: float, std: float) -> str:
    """``mean ± std`` with 3 significant digits."""
    if not math.isfinite(mean):
        return "inf"
    return f"{mean:.3g} ± {std:.2g}"


def _label(key: tuple[str, str, str]) -> tuple[str, str]:
    method, arch, manifold = key
    model = "RNF (Caterini et al.) & coupling flow" if method == "RNF" else f"{method} & {arch} net" if arch == "free-form" else f"{method} & coupling flow"
    return model, ("decoder side, CG (eq. 6)" if manifold == "-" else f"{manifold} manifold")


def summarise(rows: list[dict[str, Any]], datasets: list[str], floors: dict[str, float],
              variants: list[tuple[str, str, str]]) -> tuple[list[dict], list[dict]]:
    """Table 6 / table 7 layout: one row per (method, architecture, manifold), one column per data set, plus the paper's."""
    w2_rows, rec_rows = [], []
    for key in variants:
        model, estimator = _label(key)
        w2_row: dict[str, Any] = {"model": model, "nll_estimator": estimator}
        rec_row: dict[str, Any] = dict(w2_row)
        for ds in datasets:
            runs = [r for r in rows if (r["dataset"], r["method"], r["architecture"], r["manifold"]) == (ds, *key)]
            w2_row[f"{ds} (ours)"] = fmt(*mean_std([r["w2"] for r in runs]))
            w2_row[f"{ds} (paper)"] = PAPER_W2.get(key, {}).get(ds, "not reported")
            rec_row[f"{ds} (ours)"] = fmt(*mean_std([r["reconstruction"] for r in runs]))
            rec_row[f"{ds} (paper)"] = PAPER_RECONSTRUCTION.get(key, {}).get(ds, "not reported")
            n_div = sum(r["diverged"] for r in runs)
            if n_div:
                w2_row[f"{ds} (ours)"] += f" ({n_div} diverged)"
        w2_rows.append(w2_row)
        rec_rows.append(rec_row)
    floor_row: dict[str, Any] = {"model": "data floor: W2(train split, test split)", "nll_estimator": "-"}
    for ds in datasets:
        floor_row[f"{ds} (ours)"] = f"{floors[ds]:.3g}"
        floor_row[f"{ds} (paper)"] = "-"
    w2_rows.append(floor_row)
    return w2_rows, rec_rows


COLORS = {
    ("FIF", "free-form", "off"): "tab:blue", ("FIF", "free-form", "on"): "tab:cyan",
    ("RF", "free-form", "off"): "tab:red", ("RF", "free-form", "on"): "tab:orange",
    ("FIF", "coupling", "off"): "tab:green", ("FIF", "coupling", "on"): "yellowgreen",
    ("RF", "coupling", "off"): "tab:purple", ("RF", "coupling", "on"): "plum", ("RNF", "coupling", "-"): "tab:brown",
}


def plot(rows: list[dict[str, Any]], datasets: list[str], floors: dict[str, float], path: Path, note: str,
         variants: list[tuple[str, str, str]]) -> Path:
    """Grouped bars (data set × variant) of W2 and reconstruction error, mean ± std over seeds, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / len(variants)
    for ax, metric, label in ((axes[0], "w2", "FID-like W2 (test)"), (axes[1], "reconstruction", "test ‖g(f(x)) − x‖²")):
        for i, key in enumerate(variants):
            means, stds = [], []
            for ds in datasets:
                values = [r[metric] for r in rows if (r["dataset"], r["method"], r["architecture"], r["manifold"]) == (ds, *key)]
                finite = [v for v in values if math.isfinite(v)] or [float("nan")]
                means.append(statistics.fmean(finite))
                stds.append(statistics.stdev(finite) if len(finite) > 1 else 0.0)
            xs = [j + (i - (len(variants) - 1) / 2) * width for j in range(len(datasets))]
            model, estimator = _label(key)
            ax.bar(xs, means, width, yerr=stds, capsize=2, color=COLORS[key], label=f"{model}, {estimator}")
        if metric == "w2":
            for j, ds in enumerate(datasets):
                ax.hlines(floors[ds], j - 0.45, j + 0.45, colors="k", linestyles=":", label="W2(train, test)" if j == 0 else None)
        ax.set_yscale("log")
        ax.set_xticks(range(len(datasets)))
        ax.set_xticklabels([f"{ds}\nstand-in" for ds in datasets])
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=6, framealpha=0.85)
    fig.suptitle("FIF tables 6/7 ablation: NLL estimator × architecture (mean ± std over seeds)")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return save_figure(fig, path, note=note)


def main(argv: list[str] | None = None) -> None:
    exp: Experiment = start(NAME, __doc__, argv, extra_args=[
        (("--steps",), {"type": int, "default": None, "help": "optimiser steps per run at smoke/cpu scale (default 15 / 600)"}),
        (("--coupling-steps",), {"type": int, "default": None,
                                 "help": "optimiser steps of the coupling-flow rows (default 10 at smoke scale, else --steps)"}),
        (("--seeds",), {"type": int, "default": None, "help": "training seeds per variant (default 1 / 3 / 5)"}),
        (("--datasets",), {"nargs": "+", "choices": list(DATASETS), "default": None,
                           "help": "paper data sets (their stand-ins below paper scale); default POWER / POWER HEPMASS / all"}),
        (("--architectures",), {"nargs": "+", "choices": list(ARCHITECTURES), "default": list(ARCHITECTURES),
                                "help": "which rows: the free-form net and/or the coupling flow (default both)"}),
    ])
    args = exp.args
    quiet_lightning()
    if args.threads is None:  # tiny nets: one thread is as fast as two and not slowed by other jobs on the machine
        args.threads = 1
        torch.set_num_threads(1)
    datasets = args.datasets or exp.pick(["POWER"], ["POWER", "HEPMASS"], list(DATASETS))
    seeds = list(range(args.seeds if args.seeds else exp.pick(1, 3, 5)))
    steps = args.steps if args.steps else exp.pick(15, 600, None)
    coupling_steps = args.coupling_steps or (exp.pick(10, None, None) if not args.steps else None) or steps
    variants = [key for key in VARIANTS if key[1] in args.architectures]
    n_samples = exp.pick(1000, 10_000, None)  # paper: as many samples as test points
    folder = exp.pick("small", "small", "paper")
    base = ["train.samplers=[]", "train.val_every_n_epochs=1000000"]  # the metric uses the prior only
    if exp.scale == "paper":
        base += ["data.download=true"]  # the MAF archive (~1 GB, docs/data.md)

    def limits(n: int | None) -> list[str]:
        return [f"train.max_steps={n}", "train.max_epochs=100000", "train.log_every_n_steps=5"] if n is not None else []

    rows: list[dict[str, Any]] = []
    floors: dict[str, float] = {}
    for ds in datasets:
        config = str(Path(__file__).resolve().parents[1] / "configs" / folder / f"{DATASETS[ds]}.yaml")
        cfg, splits = load_splits(config, base)
        floors[ds] = fid_like_w2(splits.train, splits.test)
        n = n_samples if n_samples is not None else int(splits.test.shape[0])
        for key in variants:
            method, arch, manifold = key
            n_steps = coupling_steps if arch == "coupling" else steps
            overrides = [*base, *limits(n_steps), *VARIANTS[key]]
            if method == "RNF":
                overrides += rnf_overrides(folder, DATASETS[ds], n_steps)
            for seed in seeds:
                r = train_and_evaluate(config, overrides, seed=seed, n_samples=n, threads=args.threads, device=args.device)
                rows.append({
                    "dataset": ds, "standin": cfg.data.name if folder == "small" else "-", "data_dim": r.data_dim,
                    "latent_dim": cfg.model.latent_dim, "method": method, "architecture": arch, "manifold": manifold,
                    "seed": seed, "w2": r.w2, "reconstruction": r.reconstruction, "train_wall_s": round(r.train_wall_s, 2),
                    "steps": r.steps, "ms_per_step": round(r.ms_per_step, 2), "cg_iterations": round(r.cg_iterations, 2),
                    "diverged": r.diverged, "n_samples": n,
                })
                exp.log(f"{ds} ({cfg.data.name}) {method} & {arch} {manifold}-manifold seed {seed}: W2 {r.w2:.4g}, "
                        f"rec {r.reconstruction:.4g}, {r.steps} steps, {r.train_wall_s:.1f} s, {r.ms_per_step:.1f} ms/step")

    write_table(rows, exp.out / "runs")
    w2_table, rec_table = summarise(rows, datasets, floors, variants)
    write_table(w2_table, exp.out / "table6_w2")
    write_table(rec_table, exp.out / "table7_reconstruction")
    budget = f"{steps if steps else 'table 5 epochs of'} optimiser steps"
    if "coupling" in args.architectures and coupling_steps != steps:
        budget += f" ({coupling_steps} for the coupling flow)"
    note = (f"{exp.scale} scale: {'stand-ins ' if folder == 'small' else ''}{', '.join(datasets)}; {len(seeds)} seed(s); "
            f"{budget}; W2 of {n_samples or 'n_test'} prior samples vs the test split")
    plot(rows, datasets, floors, exp.out / "ablation", note, variants)
    exp.finish(datasets=datasets, standins={r["dataset"]: r["standin"] for r in rows}, seeds=seeds, steps=steps,
               coupling_steps=coupling_steps, architectures=list(args.architectures), n_samples=n_samples,
               data_floor_w2=floors, diverged_runs=sum(r["diverged"] for r in rows), runs=len(rows))


if __name__ == "__main__":
    main()
