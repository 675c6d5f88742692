"""FIF figs. 3 and 7 (App. E.1.1): the reconstruction weight β decides which direction a 1-D latent keeps.

Paper: Sorrenson, Draxler et al., *Lifting Architectural Constraints of Injective Flows* (ICLR 2024), §4.2
("Phase transition", fig. 3) and App. E.1.1 (fig. 7). FIF (eq. 7 / 17) with a 1-D latent on the noisy 2-D
sinusoid x ~ N(0, 1), y = sin(πx/2), plus isotropic Gaussian noise σ ∈ {0.1, 0.2, 0.3}; toy ResNet of four residual
blocks of width 256, LR 1e-3, 50 epochs, β varied between 0.01 and 100, 20 models per β (App. E.1.1). Claims:
small β learns the low-entropy *noise* direction, large β the sinusoid (fig. 3); the transition point moves to
lower β as σ grows (fig. 7).

Per run we record on the test split the mean reconstruction error ‖g(f(x)) − x‖², the exact on-manifold NLL
−log p_Z(f(x)) + ½ log det g'ᵀg' of the projection x̂ (FIF eq. 2, ``injflow.metrics.likelihood``), and
|Spearman ρ| between the latent code and the position along the sinusoid (the first coordinate): ≈ 1 when the
latent follows the sinusoid, ≈ 0 when it encodes the off-manifold noise. A run *follows the sinusoid* if
|ρ| ≥ 0.9 and its reconstruction error is ≤ 0.25 (the total variance along the sinusoid is ≈ 1.4; the noise
orthogonal to it σ² ≤ 0.09). The *transition β* of a σ is the smallest β of the grid from which on every run of
every larger β follows the sinusoid.

Outputs: ``runs.csv/json`` (σ, β, seed, reconstruction, nll, |ρ|, steps, wall s), ``summary_table.csv/json``
(mean ± std over seeds), ``beta_sweep.png`` (reconstruction, NLL and |ρ| against β, one line per σ: mean over
seeds, error bars = min-max over seeds), ``fig3_latent_maps.png`` (fig. 3 left/right at σ = 0.1: test points coloured by their latent
code and the decoder image of a latent grid; lowest, middle and highest β, every seed) and ``latent_maps_all.png``
(every σ and β, first seed).

Scales (config ``configs/small/fif-sinusoid.yaml`` for smoke/cpu, ``configs/paper/fif-sinusoid.yaml`` for paper):

* ``smoke``: σ = 0.1, β ∈ {0.1, 10}, 1 seed, 256 training points, 2 epochs (pipeline check only).
* ``cpu``: σ ∈ {0.1, 0.2, 0.3}, β ∈ {0.01, 0.1, 0.3, 1, 3, 10, 100}, seeds 0–2, 2,000 training points,
  60 epochs of batch 128 (960 steps; paper: 10,000 points × 50 epochs ≈ 3,900 steps), 2,000 test points; two
  worker processes of one torch thread each (for these tiny nets one thread per run is faster than two).
* ``paper``: σ ∈ {0.1, 0.2, 0.3}, β ∈ {0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100} (App. E.1.1 states only the range
  0.01–100; the half-decade grid is chosen), 20 seeds (App. E.1.1), 10,000 training points, 50 epochs.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Experiment, save_figure, start, temporary_run_dir, write_table  # noqa: E402

NAME = "fif_beta_transition"
RHO_THRESHOLD = 0.9  # |Spearman ρ| at or above which the latent is said to follow the sinusoid ...
REC_THRESHOLD = 0.25  # ... together with a test reconstruction error at or below this (noise solutions: ≈ 1-1.4)
MAX_PLOTTED = {"fig3": 600, "all": 300}  # test points drawn per latent-map panel (keeps the PNGs < 400 KB)
LATENT_GRID = 301  # points of the latent grid whose decoder image draws the learned manifold


@dataclass(frozen=True)
class Job:
    """One training run: the config, its overrides and what to keep for the plots."""

    config: str
    sigma: float
    beta: float
    seed: int
    overrides: tuple[str, ...]
    threads: int
    keep_maps: bool
    device: str = "cpu"


def scale_settings(exp: Experiment) -> dict[str, Any]:
    """Grid, seeds and training budget of this scale (see the module docstring)."""
    return exp.pick(
        smoke=dict(config="small/fif-sinusoid.yaml", sigmas=(0.1,), betas=(0.1, 10.0), seeds=(0,),
                   n_train=256, n_val=128, n_test=256, epochs=2, workers=1),
        cpu=dict(config="small/fif-sinusoid.yaml", sigmas=(0.1, 0.2, 0.3),
                 betas=(0.01, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0), seeds=(0, 1, 2),
                 n_train=2000, n_val=500, n_test=2000, epochs=60, workers=2),
        paper=dict(config="paper/fif-sinusoid.yaml", sigmas=(0.1, 0.2, 0.3),
                   betas=(0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0), seeds=tuple(range(20)),
                   n_train=10000, n_val=2000, n_test=2000, epochs=50, workers=1),
    )


def make_jobs(settings: dict[str, Any], threads: int, device: str = "cpu") -> list[Job]:
    """One job per (σ, β, seed); the first seed (and every seed of the first σ) keeps its latent maps."""
    jobs = []
    for sigma in settings["sigmas"]:
        for beta in settings["betas"]:
            for seed in settings["seeds"]:
                overrides = (
                    f"data.options.noise={sigma}", f"method.beta={beta}", f"train.seed={seed}",
                    f"data.options.n_train={settings['n_train']}", f"data.options.n_val={settings['n_val']}",
                    f"data.options.n_test={settings['n_test']}", f"train.max_epochs={settings['epochs']}",
                    "train.samplers=[]",  # post-fit samplers are not used here
                )
                keep = seed == settings["seeds"][0] or sigma == settings["sigmas"][0]
                jobs.append(Job(settings["config"], sigma, beta, seed, overrides, threads, keep_maps=keep, device=device))
    return jobs


def spearman(a: Any, b: Any) -> float:
    """Spearman rank correlation of two 1-D tensors (no ties in continuous data)."""
    import torch

    ra = torch.argsort(torch.argsort(a)).double()
    rb = torch.argsort(torch.argsort(b)).double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def run_job(job: Job) -> dict[str, Any]:
    """Trains one FIF model, evaluates it on the test split and deletes the run folder."""
    import logging

    import torch
    from common import fit_run

    from injflow.config import load_config
    from injflow.loading import load_run_data
    from injflow.metrics.likelihood import on_manifold_likelihood

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(job.threads)
    t0 = time.perf_counter()
    with temporary_run_dir(NAME) as run_dir:
        result = fit_run(job.config, job.overrides, run_dir=run_dir, threads=job.threads, device=job.device)
        fit_s = time.perf_counter() - t0
        x = load_run_data(load_config(run_dir / "config.yaml")).test.to(job.device)
        flow = result.flow.eval()
        # Exact on-manifold NLL of the projection x̂ with its reconstruction error (FIF eq. 2, App. A).
        lik = on_manifold_likelihood(x, flow.encode, flow.decode, flow.latent.log_prob)
        with torch.no_grad():
            z = flow.encode(x)[:, 0]
            maps = None
            if job.keep_maps:
                grid = torch.linspace(-3.0, 3.0, LATENT_GRID, device=x.device).unsqueeze(1)  # ±3 prior std of p_Z = N(0, 1)
                maps = {"x": x.cpu().numpy(), "z": z.cpu().numpy(), "manifold": flow.decode(grid).cpu().numpy()}
        rec, rho = float(lik.reconstruction.mean()), abs(spearman(z, x[:, 0]))
        row = {
            "sigma": job.sigma, "beta": job.beta, "seed": job.seed,
            "reconstruction": rec,
            "nll": float(lik.nll.mean()),
            "latent_position_rho": rho,
            "follows_sinusoid": int(rho >= RHO_THRESHOLD and rec <= REC_THRESHOLD),
            "steps": int(result.global_step),
            "fit_s": round(fit_s, 2),
            "wall_s": round(time.perf_counter() - t0, 2),
        }
    return {"row": row, "maps": maps}


def run_all(exp: Experiment, jobs: list[Job], workers: int) -> list[dict[str, Any]]:
    """Runs the jobs, in ``workers`` spawned processes if > 1, logging one line per finished run."""
    results: list[dict[str, Any]] = []

    def report(res: dict[str, Any]) -> None:
        r = res["row"]
        results.append(res)
        exp.log(f"[{len(results)}/{len(jobs)}] σ={r['sigma']} β={r['beta']} seed={r['seed']}: "
                f"rec {r['reconstruction']:.4f} nll {r['nll']:.3f} |ρ| {r['latent_position_rho']:.2f} "
                f"({r['steps']} steps, {r['wall_s']:.1f} s)")

    if workers <= 1:
        for job in jobs:
            report(run_job(job))
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers, maxtasksperchild=8) as pool:
            for res in pool.imap_unordered(run_job, jobs):
                report(res)
    order = {(j.sigma, j.beta, j.seed): i for i, j in enumerate(jobs)}
    return sorted(results, key=lambda r: order[(r["row"]["sigma"], r["row"]["beta"], r["row"]["seed"])])


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std over seeds per (σ, β)."""
    import numpy as np

    out = []
    for key in sorted({(r["sigma"], r["beta"]) for r in rows}):
        group = [r for r in rows if (r["sigma"], r["beta"]) == key]
        entry: dict[str, Any] = {"sigma": key[0], "beta": key[1], "n_seeds": len(group)}
        entry["follows_sinusoid_fraction"] = float(np.mean([r["follows_sinusoid"] for r in group]))
        for metric in ("reconstruction", "nll", "latent_position_rho", "wall_s"):
            values = np.array([r[metric] for r in group], dtype=float)
            entry[f"{metric}_mean"] = float(values.mean())
            entry[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out.append(entry)
    return out


def transition_betas(summary: list[dict[str, Any]]) -> dict[str, float | None]:
    """Per σ: the smallest grid β from which on every run of every larger β follows the sinusoid (None if none)."""
    out: dict[str, float | None] = {}
    for sigma in sorted({s["sigma"] for s in summary}):
        entries = sorted((s for s in summary if s["sigma"] == sigma), key=lambda s: s["beta"])
        beta = None
        for entry in reversed(entries):
            if entry["follows_sinusoid_fraction"] < 1.0:
                break
            beta = entry["beta"]
        out[str(sigma)] = beta
    return out


def plot_sweep(summary: list[dict[str, Any]], rows: list[dict[str, Any]], path: Path, note: str) -> Path:
    """Fig. 7: reconstruction error, NLL and |ρ| against β, one line per σ: mean over seeds, bars = min-max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    panels = (("reconstruction", "test reconstruction error ‖x̂ − x‖²", True),
              ("nll", "exact on-manifold NLL −log p(x̂)", False),
              ("latent_position_rho", "|Spearman ρ| (latent, position along sinusoid)", False))
    for i, sigma in enumerate(sorted({s["sigma"] for s in summary})):
        group = sorted((s for s in summary if s["sigma"] == sigma), key=lambda s: s["beta"])
        betas = [s["beta"] for s in group]
        for ax, (metric, label, logy) in zip(axes, panels):
            runs = [r for r in rows if r["sigma"] == sigma]
            mean = [s[f"{metric}_mean"] for s in group]
            lo = [m - min(r[metric] for r in runs if r["beta"] == b) for m, b in zip(mean, betas)]
            hi = [max(r[metric] for r in runs if r["beta"] == b) - m for m, b in zip(mean, betas)]
            ax.errorbar(betas, mean, yerr=[lo, hi], marker="o", capsize=3, color=f"C{i}", label=f"σ = {sigma}")
            ax.plot([r["beta"] for r in runs], [r[metric] for r in runs], ".", color=f"C{i}", alpha=0.35, ms=4)
            ax.set_xscale("log")
            if logy:
                ax.set_yscale("log")
            ax.set_xlabel("β (reconstruction weight)")
            ax.set_ylabel(label)
    for sigma_i, sigma in enumerate(sorted({s["sigma"] for s in summary})):
        axes[0].axhline(sigma**2, color=f"C{sigma_i}", ls=":", lw=0.8)
    axes[2].axhline(RHO_THRESHOLD, color="grey", ls="--", lw=0.8)
    axes[0].set_title("reconstruction (dotted: σ², the noise across the sinusoid)")
    axes[1].set_title("NLL on the learned manifold")
    axes[2].set_title("does the latent follow the sinusoid?")
    axes[0].legend()
    fig.suptitle("FIF on the noisy sinusoid, d = 1: the role of β (FIF fig. 7); mean over seeds, bars = min-max, "
                 "dots = single seeds")
    fig.tight_layout()
    return save_figure(fig, path, note=note)


def _latent_panel(ax: Any, maps: dict[str, Any], title: str, size: float, n_points: int) -> None:
    """Test points coloured by their latent code, plus the decoder image of a latent grid (the manifold)."""
    n = min(n_points, len(maps["z"]))  # the test points are i.i.d., so the first n are a random subset
    ax.scatter(maps["x"][:n, 0], maps["x"][:n, 1], c=maps["z"][:n], cmap="viridis", s=size, linewidths=0)
    ax.plot(maps["manifold"][:, 0], maps["manifold"][:, 1], "r-", lw=1.2)
    ax.set_xlim(-3.5, 3.5)
    ax.set_ylim(-2.2, 2.2)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def _run_title(r: dict[str, Any]) -> str:
    return (f"β={r['beta']:g}, seed {r['seed']}: rec {r['reconstruction']:.3f}, NLL {r['nll']:.2f}, "
            f"|ρ| {r['latent_position_rho']:.2f}")


def plot_fig3(results: list[dict[str, Any]], sigma: float, path: Path, note: str) -> Path:
    """Fig. 3 left/right: latent maps at one σ for the lowest, a middle and the highest β; one row per seed."""
    import matplotlib.pyplot as plt

    kept = [r for r in results if r["maps"] is not None and r["row"]["sigma"] == sigma]
    betas = sorted({r["row"]["beta"] for r in kept})
    middle = min(betas, key=lambda b: abs(math.log10(b) - 0.5 * (math.log10(betas[0]) + math.log10(betas[-1]))))
    columns = sorted({betas[0], middle, betas[-1]})
    seeds = sorted({r["row"]["seed"] for r in kept})
    fig, axes = plt.subplots(len(seeds), len(columns), figsize=(3.6 * len(columns), 2.4 * len(seeds)), squeeze=False)
    for res in kept:
        r = res["row"]
        if r["beta"] in columns:
            _latent_panel(axes[seeds.index(r["seed"]), columns.index(r["beta"])], res["maps"], _run_title(r), 3,
                          MAX_PLOTTED["fig3"])
    fig.suptitle(f"σ = {sigma}: up to {MAX_PLOTTED['fig3']} test points coloured by their latent code z = f(x); "
                 f"red: the manifold g(z), z ∈ [−3, 3] (FIF fig. 3)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, note=note)


def plot_all_maps(results: list[dict[str, Any]], seed: int, path: Path, note: str) -> Path:
    """Latent maps for every σ (rows) and β (columns) of one seed."""
    import matplotlib.pyplot as plt

    kept = [r for r in results if r["maps"] is not None and r["row"]["seed"] == seed]
    sigmas = sorted({r["row"]["sigma"] for r in kept})
    betas = sorted({r["row"]["beta"] for r in kept})
    fig, axes = plt.subplots(len(sigmas), len(betas), figsize=(2.0 * len(betas), 1.6 * len(sigmas)), squeeze=False)
    for res in kept:
        r = res["row"]
        ax = axes[sigmas.index(r["sigma"]), betas.index(r["beta"])]
        _latent_panel(ax, res["maps"], f"σ={r['sigma']}, β={r['beta']:g}\nrec {r['reconstruction']:.2f}, "
                                       f"|ρ| {r['latent_position_rho']:.2f}", 1.5, MAX_PLOTTED["all"])
    fig.tight_layout()
    return save_figure(fig, path, note=note)


def main(argv: list[str] | None = None) -> None:
    exp = start(NAME, __doc__, argv, extra_args=[
        (("--workers",), dict(type=int, default=None,
                              help="parallel training processes (default: smoke 1, cpu 2, paper 1)")),
    ])
    settings = scale_settings(exp)
    workers = exp.args.workers or settings["workers"]
    threads = exp.args.threads or 1
    jobs = make_jobs(settings, threads, exp.args.device)
    exp.log(f"{len(jobs)} runs ({len(settings['sigmas'])} σ × {len(settings['betas'])} β × "
            f"{len(settings['seeds'])} seeds), {workers} worker(s) × {threads} thread(s)")
    results = run_all(exp, jobs, workers)
    rows = [r["row"] for r in results]
    write_table(rows, exp.out / "runs")
    summary = summarise(rows)
    write_table(summary, exp.out / "summary_table")
    transitions = transition_betas(summary)
    exp.log(f"transition β per σ (all runs follow the sinusoid from there on): {transitions}")

    note = (f"{exp.scale} scale: {settings['n_train']} training points, {settings['epochs']} epochs "
            f"({rows[0]['steps']} steps), {len(settings['seeds'])} seed(s) per point, "
            f"{settings['n_test']} test points")
    plot_sweep(summary, rows, exp.out / "beta_sweep.png", note)
    sigma_fig3 = settings["sigmas"][0]
    plot_fig3(results, sigma_fig3, exp.out / "fig3_latent_maps.png", note)
    plot_all_maps(results, settings["seeds"][0], exp.out / "latent_maps_all.png",
                  note + f"; seed {settings['seeds'][0]}, up to {MAX_PLOTTED['all']} test points per panel")
    exp.finish(
        config=settings["config"], sigmas=settings["sigmas"], betas=settings["betas"], seeds=settings["seeds"],
        n_train=settings["n_train"], n_val=settings["n_val"], n_test=settings["n_test"], epochs=settings["epochs"],
        steps=rows[0]["steps"], workers=workers, threads_per_run=threads, rho_threshold=RHO_THRESHOLD,
        reconstruction_threshold=REC_THRESHOLD,
        transition_beta=transitions, total_run_wall_s=round(sum(r["wall_s"] for r in rows), 1),
    )


if __name__ == "__main__":
    main()
