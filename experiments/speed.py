"""Training speed of FIF against the rectangular flow: FIF table 1 ("training time speedup") and table 5.

Reproduces, on one tabular data set, the speed claim of FIF (Sorrenson, Draxler et al., ICLR 2024) §5.1
**table 1** / App. E.2 **table 5**: FIF trains in less wall-clock time than the rectangular flow (RF, Caterini et
al. 2021), whose log-determinant gradient needs an iterative conjugate-gradient (CG) solve (FIF eq. 6, "up to
2(d+1)" Jacobian products, §4.1) where FIF's surrogate needs one JVP and one VJP (eq. 10 / 17).

Two parts:

1. **Training runs**: the same free-form tabular autoencoder (App. E.2) and optimiser trained with FIF (the
   config as it is: eq. 17, off-manifold, K = 1) and with RF (``method.name=rectangular_flow``, its default
   ``grad_to=decoder``: Caterini et al.'s decoder-side CG estimator, K = 1, β = 10, CG tolerance 1e-6 and the
   estimator's default cap of 2d iterations — 1e-6 is near float32 round-off, so CG mostly runs to the cap) for the same numbers of optimiser steps (several budgets, each a full one-cycle run); for each run
   the wall-clock time (whole ``fit`` call and training loop alone, from TensorBoard event times), the mean number
   of CG iterations, and the FID-like W2 (FIF §5.1: W2 between Gaussian fits of the test split and of samples from
   the prior) and test reconstruction error reached. The paper's RF numbers are Caterini et al.'s *coupling-flow*
   RF; ours uses the free-form nets for both methods, so only the estimator differs.
   A third method, **RNF**, is the rectangular flow *as published*: Caterini et al.'s injective coupling-flow
   architecture (``model.architecture=injective_coupling``: g = w ∘ pad ∘ h, RealNVP 10 × 4·128 on R^D and
   5 × 2·32 on R^d, zuko couplings) with their RNFs-ML (K = 1) objective (``method.name=rnf``: decoder-side CG
   through the latent, β = 50; the ``configs/*/rnf-tabular-hepmass.yaml`` method block with its warm-up rescaled to
   the run) on the same data, batch and optimiser as FIF; this is the comparison of FIF table 1 / 5 (FIF's free-form
   net against RF's own architecture), and its row gives the time per step relative to FIF's.
2. **Per-step time ratios** from ``benchmarks/step_time.py`` (imported, its ``run`` function): median step time
   of ``ae`` (reconstruction only), ``fif-mixed-k1``, ``rectangular-flow-cg`` (decoder-side CG, tolerance 1e-4)
   and ``exact-logdet`` (full decoder Jacobian) relative to the AE step, on the stand-in's nets and batch, on the
   same estimators with the stand-in-sized coupling flow (``coupling``), and on the benchmark's own
   MINIBOONE-sized MLP (D = 43, d = 21, batch 512).

Scales (runs use one torch thread unless ``--threads``: the nets are tiny and one thread is not slowed by other
jobs on a shared machine):

* ``smoke``: HEPMASS stand-in, budget 10 steps, 1 seed, 1,000 samples; step times of 3 variants on the stand-in
  nets, 2 rounds. RNF: budget 10.
* ``cpu``: the HEPMASS stand-in of ``configs/small/fif-tabular-hepmass.yaml`` (scikit-learn ``breast_cancer``,
  D = 30, d = 10, batch 64, LR 3e-4; the MAF HEPMASS files are not available offline), budgets 250 / 500 / 1,000
  optimiser steps (the small config: ~3,000; the paper: ~50k), 3 seeds, W2 of 10,000 samples against the 56 test
  points; step times of 4 variants on the three nets, 10 interleaved rounds after 2 warm-up steps. RNF (whose coupling
  nets cost several free-form steps here): ``--rnf-budgets``, default 250 only.
* ``paper``: ``configs/paper/fif-tabular-hepmass.yaml`` with ``data.download=true`` (MAF archive, ~1 GB), table 5's
  85 epochs (one budget: the full run), 5 seeds, W2 with as many samples as test points; step times with 50 rounds.
"""

from __future__ import annotations

import importlib.util
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, Experiment, save_figure, start, write_table  # noqa: E402
from tabular_ablation import (  # noqa: E402
    COUPLING,
    fmt,
    load_splits,
    mean_std,
    quiet_lightning,
    rnf_overrides,
    train_and_evaluate,
)

NAME = "speed"
DATASET = "HEPMASS"
CONFIG = "fif-tabular-hepmass"

# method -> config overrides; FIF is the config as it is. RF: Caterini et al.'s decoder-side CG estimator (FIF eq. 6).
METHODS: dict[str, list[str]] = {
    "FIF": [],
    "RF": ["method={name: rectangular_flow, beta: 10.0, n_hutchinson: 1, noise: orthogonal, grad_to: decoder}"],
    "RNF": [*COUPLING],  # + the rnf config's method block (rnf_overrides), the published architecture and objective
}
LABELS = {"FIF": "FIF & free-form net", "RF": "RF & free-form net", "RNF": "RNF (Caterini et al.) & coupling flow"}

# FIF table 1 (FID-like W2, mean ± std over 5 runs; RF from Caterini et al. 2021) and table 5 (training minutes).
PAPER_TABLE1 = {
    "RF": {"POWER": "0.083 ± 0.015", "GAS": "0.110 ± 0.021", "HEPMASS": "0.779 ± 0.191", "MINIBOONE": "1.001 ± 0.051"},
    "RNF": {"POWER": "0.083 ± 0.015", "GAS": "0.110 ± 0.021", "HEPMASS": "0.779 ± 0.191", "MINIBOONE": "1.001 ± 0.051"},
    "FIF": {"POWER": "0.041 ± 0.007", "GAS": "0.281 ± 0.031", "HEPMASS": "0.541 ± 0.034", "MINIBOONE": "0.598 ± 0.024"},
    "speedup": {"POWER": "3.9×", "GAS": "2.2×", "HEPMASS": "6.1×", "MINIBOONE": "1.5×"},
}
PAPER_TABLE5_MINUTES = {
    "FIF": {"POWER": 38, "GAS": 39, "HEPMASS": 41, "MINIBOONE": 49},
    "RF (published)": {"POWER": 113, "GAS": 75, "HEPMASS": 138, "MINIBOONE": 34},
    "RF (rerun, same hardware as FIF)": {"POWER": 147, "GAS": 86, "HEPMASS": 249, "MINIBOONE": 75},
}

STEP_VARIANTS = ["ae", "fif-mixed-k1", "rectangular-flow-cg", "exact-logdet"]


def load_step_time() -> Any:
    """``benchmarks/step_time.py`` as a module (it is a script, not part of the package)."""
    path = REPO / "benchmarks" / "step_time.py"
    spec = importlib.util.spec_from_file_location("injflow_bench_step_time", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def step_time_table(nets: list[str], variants: list[str], rounds: int, warmup: int, device: torch.device) -> list[dict]:
    """Median step time of each variant relative to the AE step (``benchmarks/step_time.py``'s ``run``).

    ``nets``: ``standin`` (the HEPMASS stand-in: D = 30, d = 10, batch 64, as trained here), ``coupling`` (the same
    sizes with Caterini et al.'s injective coupling flow, encoder and decoder sharing one invertible net) and/or ``mlp``
    (the benchmark's MINIBOONE-sized tabular MLP, D = 43, d = 21, batch 512).
    """
    from injflow.nets import build_autoencoder

    st = load_step_time()
    benches = st.make_benches([n for n in nets if n not in ("standin", "coupling")], device)
    stand_ins = {"standin": ("tabular", "tabular MLP"), "coupling": ("injective_coupling", "injective coupling flow")}
    for name in [n for n in ("coupling", "standin") if n in nets]:
        arch, label = stand_ins[name]
        f, g = build_autoencoder(arch, data_shape=(30,), latent_dim=10)
        x = torch.randn(64, 30, generator=torch.Generator().manual_seed(0))
        bench = st.Bench(name, f"{label}, D=30, d=10, batch 64 (HEPMASS stand-in)", f.to(device).train(),
                         g.to(device).train(), x.to(device))
        benches.insert(0, bench)
    rows = []
    for bench in benches:
        results = st.run(bench, variants, rounds, warmup, device)
        for variant, r in results.items():
            rows.append({"net": bench.description, "variant": variant, "median_ms": round(r["median_ms"], 2),
                         "iqr_ms": round(r["iqr_ms"], 2), "ratio_to_ae": round(r["ratio"], 3),
                         "rounds": rounds, "warmup": warmup})
    return rows


def speed_table(rows: list[dict[str, Any]], budget: int | None) -> list[dict[str, Any]]:
    """Table 1 / 5 layout: W2, times, and RF time / FIF time, next to the paper's HEPMASS.

    FIF and RF at ``budget``; RNF at its own largest budget (it may train shorter): its speedup row is the ratio of
    mean times *per optimiser step*, which is the training-time ratio at equal steps (FIF App. E.2: "approximately the
    same number of training iterations").
    """
    out = []
    times, per_step = {}, {}
    for method in METHODS:
        runs = [r for r in rows if r["method"] == method]
        if not runs:
            continue
        own = budget if method != "RNF" else max((r["budget_steps"] for r in runs), key=lambda b: b or 0)
        runs = [r for r in runs if r["budget_steps"] == own]
        loop = mean_std([r["train_loop_s"] for r in runs])
        times[method] = (statistics.fmean([r["train_wall_s"] for r in runs]), loop[0])
        per_step[method] = statistics.fmean([r["ms_per_step"] for r in runs])
        out.append({
            "method": LABELS[method], "steps": runs[0]["steps"], "seeds": len(runs),
            "w2_ours": fmt(*mean_std([r["w2"] for r in runs])),
            "reconstruction_ours": fmt(*mean_std([r["reconstruction"] for r in runs])),
            "train_loop_s": fmt(*loop), "fit_wall_s": fmt(*mean_std([r["train_wall_s"] for r in runs])),
            "ms_per_step": fmt(*mean_std([r["ms_per_step"] for r in runs])),
            "cg_iterations": fmt(*mean_std([r["cg_iterations"] for r in runs])) if method != "FIF" else "-",
            "w2_paper_hepmass": PAPER_TABLE1[method][DATASET] + (" (Caterini et al.)" if method != "FIF" else ""),
            "paper_train_minutes_hepmass": PAPER_TABLE5_MINUTES[method if method == "FIF" else "RF (rerun, same hardware as FIF)"][DATASET],
        })
    blank = {"w2_ours": "-", "reconstruction_ours": "-", "ms_per_step": "-", "cg_iterations": "-", "w2_paper_hepmass": "-"}
    if "RF" in times:
        out.append({
            "method": "speedup RF time / FIF time", "steps": out[0]["steps"], "seeds": out[0]["seeds"], **blank,
            "train_loop_s": f"{times['RF'][1] / times['FIF'][1]:.2f}×", "fit_wall_s": f"{times['RF'][0] / times['FIF'][0]:.2f}×",
            "paper_train_minutes_hepmass": PAPER_TABLE1["speedup"][DATASET],
        })
    if "RNF" in per_step:
        out.append({
            "method": "speedup RNF time / FIF time, per optimiser step", "steps": "-", "seeds": "-", **blank,
            "train_loop_s": f"{per_step['RNF'] / per_step['FIF']:.2f}×", "fit_wall_s": "-",
            "paper_train_minutes_hepmass": PAPER_TABLE1["speedup"][DATASET],
        })
    out = [{k: row[k] for k in ("method", "steps", "seeds", "w2_ours", "reconstruction_ours", "train_loop_s", "fit_wall_s",
                                "ms_per_step", "cg_iterations", "w2_paper_hepmass", "paper_train_minutes_hepmass")} for row in out]
    return out


def plot(rows: list[dict[str, Any]], steps_rows: list[dict[str, Any]], path: Path, note: str) -> Path:
    """Left: W2 reached against training-loop time per budget (mean ± std over seeds). Right: step-time ratios."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"FIF": "tab:blue", "RF": "tab:red", "RNF": "tab:brown"}
    for method in METHODS:
        budgets = sorted({r["budget_steps"] for r in rows if r["method"] == method}, key=lambda b: b or 0)
        if not budgets:
            continue
        xs, xe, ys, ye = [], [], [], []
        for b in budgets:
            runs = [r for r in rows if r["method"] == method and r["budget_steps"] == b]
            t, w = [r["train_loop_s"] for r in runs], [r["w2"] for r in runs if math.isfinite(r["w2"])] or [math.nan]
            xs.append(statistics.fmean(t)), xe.append(statistics.stdev(t) if len(t) > 1 else 0.0)
            ys.append(statistics.fmean(w)), ye.append(statistics.stdev(w) if len(w) > 1 else 0.0)
        ax.errorbar(xs, ys, xerr=xe, yerr=ye, marker="o", capsize=3, color=colors[method], label=LABELS[method])
        for x, y, b in zip(xs, ys, budgets):
            ax.annotate(f"{b} steps" if b else "full run", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("training-loop wall-clock time (s)")
    ax.set_ylabel("FID-like W2 (test)")
    ax.set_title(f"{DATASET} stand-in: W2 reached vs time, same step budgets")
    ax.legend()
    ax.grid(alpha=0.3)
    nets = list(dict.fromkeys(r["net"] for r in steps_rows))
    variants = list(dict.fromkeys(r["variant"] for r in steps_rows))
    width = 0.8 / len(nets)
    for i, net in enumerate(nets):
        ratios = [next((r["ratio_to_ae"] for r in steps_rows if r["net"] == net and r["variant"] == v), math.nan) for v in variants]
        xs = [j + (i - (len(nets) - 1) / 2) * width for j in range(len(variants))]
        bars = bx.bar(xs, ratios, width, label=net)
        bx.bar_label(bars, fmt="%.2f", fontsize=7)
    bx.set_xticks(range(len(variants)))
    bx.set_xticklabels(variants, fontsize=8)
    bx.set_ylabel("median step time / AE step")
    bx.set_title("per-step time (benchmarks/step_time.py)")
    bx.legend(fontsize=7)
    bx.grid(axis="y", alpha=0.3)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return save_figure(fig, path, note=note)


def main(argv: list[str] | None = None) -> None:
    exp: Experiment = start(NAME, __doc__, argv, extra_args=[
        (("--seeds",), {"type": int, "default": None, "help": "training seeds per method and budget (default 1 / 3 / 5)"}),
        (("--budgets",), {"type": int, "nargs": "+", "default": None,
                          "help": "optimiser-step budgets (default 10 / 250 500 1000 / the config's full run)"}),
        (("--rnf-budgets",), {"type": int, "nargs": "*", "default": None,
                              "help": "budgets of the RNF (coupling-flow) runs (default 10 / 250 / the full run; none: skip RNF)"}),
    ])
    args = exp.args
    quiet_lightning()
    if args.threads is None:
        args.threads = 1
        torch.set_num_threads(1)
    seeds = list(range(args.seeds if args.seeds else exp.pick(1, 3, 5)))
    budgets: list[int | None] = args.budgets or exp.pick([10], [250, 500, 1000], [None])
    n_samples = exp.pick(1000, 10_000, None)
    folder = exp.pick("small", "small", "paper")
    config = str(REPO / "configs" / folder / f"{CONFIG}.yaml")
    base = ["train.samplers=[]", "train.val_every_n_epochs=1000000", "train.log_every_n_steps=5"]
    if exp.scale == "paper":
        base.append("data.download=true")  # the MAF archive (~1 GB, docs/data.md)
    cfg, splits = load_splits(config, base)
    n = n_samples if n_samples is not None else int(splits.test.shape[0])

    rnf_budgets: list[int | None] = args.rnf_budgets if args.rnf_budgets is not None else exp.pick([10], [250], [None])
    rows: list[dict[str, Any]] = []
    for budget in sorted(set(budgets) | set(rnf_budgets), key=lambda b: b or 0):
        limits = [f"train.max_steps={budget}", "train.max_epochs=100000"] if budget else []
        methods = {m: o for m, o in METHODS.items() if (budget in rnf_budgets if m == "RNF" else budget in budgets)}
        if "RNF" in methods:
            methods["RNF"] = [*methods["RNF"], *rnf_overrides(folder, CONFIG, budget)]
        for seed in seeds:
            for method, overrides in methods.items():  # interleaved, so machine load hits every method alike
                r = train_and_evaluate(config, [*base, *limits, *overrides], seed=seed, n_samples=n, threads=args.threads,
                                       device=args.device)
                rows.append({
                    "dataset": DATASET, "standin": cfg.data.name if folder == "small" else "-", "method": method,
                    "budget_steps": budget, "seed": seed, "steps": r.steps, "w2": r.w2, "reconstruction": r.reconstruction,
                    "train_wall_s": round(r.train_wall_s, 2), "ms_per_step": round(r.ms_per_step, 2),
                    "train_loop_s": round(r.ms_per_step * r.steps / 1e3, 2), "cg_iterations": round(r.cg_iterations, 2),
                    "diverged": r.diverged, "n_samples": n,
                })
                exp.log(f"{method} budget {budget} seed {seed}: W2 {r.w2:.4g}, rec {r.reconstruction:.4g}, {r.steps} steps, "
                        f"{r.train_wall_s:.1f} s fit, {r.ms_per_step:.1f} ms/step, CG its {r.cg_iterations:.2f}")
    write_table(rows, exp.out / "runs")
    largest = max(budgets, key=lambda b: b or 0) if budgets else None
    write_table(speed_table(rows, largest), exp.out / "table1_speed")

    device = torch.device(args.device)
    step_rows = step_time_table(
        nets=exp.pick(["standin", "coupling"], ["standin", "coupling", "mlp"], ["standin", "coupling", "mlp"]),
        variants=exp.pick(STEP_VARIANTS[:3], STEP_VARIANTS, STEP_VARIANTS),
        rounds=exp.pick(2, 10, 50), warmup=exp.pick(1, 2, 3), device=device,
    )
    for r in step_rows:
        exp.log(f"step time {r['net']}: {r['variant']} {r['median_ms']:.1f} ms ({r['ratio_to_ae']:.2f}× AE)")
    write_table(step_rows, exp.out / "step_time")
    note = (f"{exp.scale} scale: {DATASET} {'stand-in ' + cfg.data.name if folder == 'small' else ''}, "
            f"{len(seeds)} seed(s), budgets {budgets} steps (RNF: {rnf_budgets}), W2 of {n} prior samples vs {splits.test.shape[0]} test points; "
            f"{torch.get_num_threads()} thread(s)")
    plot(rows, step_rows, exp.out / "speed", note)
    exp.finish(dataset=DATASET, standin=cfg.data.name, seeds=seeds, budgets=budgets, rnf_budgets=rnf_budgets, n_samples=n,
               n_test=int(splits.test.shape[0]), runs=len(rows), step_time_rounds=step_rows[0]["rounds"])


if __name__ == "__main__":
    main()
