"""Singular-value spectra of the decoder Jacobian against the reconstruction weight β on MNIST.

Reproduces FIF (Sorrenson, Draxler et al., ICLR 2024) **fig. 8** (App. E.1.2): FIF models trained at reconstruction
weights β "ranging from 0.1 to 100" (fig. 9 shows β ∈ {0.1, 1, 10, 100}); for each model the singular values
σ₁ ≥ … ≥ σ_d of the decoder Jacobian g'(z) (d JVPs per point, FIF eq. 124: ½ log det g'ᵀg' = Σ log σᵢ) at
latent samples z ~ p_Z, and (left) the sorted spectra per β, (right) the number of singular values ≥ 1 per β. The
paper's claim: "a higher reconstruction weight gives rise to a higher number of non-vanishing singular values".

The paper trains on *conditional* MNIST: ``--conditional`` does too (encoder and decoder take the digit,
``injflow.nets.conditional``; the spectra at z ~ N(0, I) are split evenly over the ten digits, as the paper's 1024
samples per condition, and the test points are decoded with their own labels) and also draws **fig. 9**: samples
per digit at each β. Without the flag the models are unconditional (the recorded cpu results, taken before the
engine had conditioning). The spectra are also taken at the encoded test images z = f(x) (``points = test``).

Error bars as in fig. 8: the count where the per-index q10 … q90 band of the spectra (the paper: mean ± std over
five models) crosses y = 1, here over points of one model per β (cpu scale).

Scales:

* ``smoke``: β ∈ {1, 100}, FIF-ConvNet with 4 channels, 300 images, 1 epoch, 50 points.
* ``cpu``: β ∈ {0.1, 1, 10, 100} (fig. 9's values), one model each: FIF-ConvNet (table 11 layout) with channel
  factor 8 and ResBlock width 128 (0.25M parameters; paper: 4× table 11's channels), d = 16, 8000 MNIST images,
  6 epochs (480 steps), batch 100, Adam 1e-3; spectra at 500 prior samples and 500 test images.
* ``paper``: β ∈ {0.1, 0.3, 1, 3, 10, 30, 100} (the paper's range; its exact grid is only in the figure), five
  seeds each, table 11 with four times the channels (channel factor 128), full MNIST, 400 epochs (App. E.1.2),
  10 240 prior samples (1024 per condition × 10 digits in the paper).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Experiment, fit_run, save_figure, start, temporary_run_dir, write_table  # noqa: E402

NAME = "spectra_vs_beta"
LATENT_DIM = 16  # FIF fig. 6 / App. D.1.1: the conditional MNIST model has d = 16


def model_config(exp: Experiment, beta: float, seed: int) -> dict:
    """One FIF training run (FIF eq. 7/17, §5 "Implementation details") at reconstruction weight ``beta``."""
    conditional = exp.args.conditional
    return {
        "data": {"name": "conditional_mnist" if conditional else "mnist", "options": {"n_train": exp.pick(300, 8000, 50_000),
                                              "n_val": exp.pick(100, 500, 10_000),
                                              "n_test": exp.pick(100, 2000, 10_000)},
                 "batch_size": 100},
        "model": {"architecture": "fif_convnet", "latent_dim": LATENT_DIM, "conditional": conditional,
                  # App. E.1.2: table 11 "except that it has four times as many channels" (32 -> 128)
                  "options": exp.pick({"channel_factor": 4, "block_width": 64},
                                      {"channel_factor": 8, "block_width": 128}, {"channel_factor": 128})},
        "method": {"name": "fif", "beta": float(beta), "n_hutchinson": 1, "noise": "orthogonal",
                   "trace_space": "latent", "grad_to": "encoder", "jacobian_at": "x", "mode": "mixed"},
        "optim": {"name": "adam", "lr": 1e-3},  # App. E.3 (FIF-ConvNet): LR 1e-3
        "train": {"seed": seed, "max_epochs": exp.pick(1, 6, 400), "samplers": []},
    }


def train(exp: Experiment, beta: float, seed: int) -> tuple[torch.nn.Module, dict]:
    """Trains one model into a temporary folder (deleted afterwards); returns it in eval mode and its run facts."""
    t0 = time.perf_counter()
    with temporary_run_dir(f"spectra-beta{beta}") as run_dir:
        result = fit_run(model_config(exp, beta, seed), run_dir=run_dir, threads=torch.get_num_threads(),
                         device=exp.args.device)
    return result.flow.eval(), {"train_steps": result.global_step, "train_time_s": round(time.perf_counter() - t0, 1)}


def count_crossing(spectrum: Tensor) -> int:
    """Number of entries of a descending spectrum that are ≥ 1."""
    return int((spectrum >= 1.0).sum())


def spectra(flow: Any, z: Tensor, labels: Tensor | None = None) -> Tensor:
    """Singular values (N, d), descending, of g'(z) (or g'(z; c) with the rows' labels) for each row of z
    (injflow.metrics.spectrum, FIF App. E.1.2)."""
    from injflow.metrics.spectrum import decoder_singular_values

    if labels is None:
        return decoder_singular_values(flow.decoder, z, batch_size=100)
    out = torch.empty(z.shape[0], z.shape[1], dtype=torch.float64)
    for k in labels.unique().tolist():
        rows = (labels == k).nonzero().squeeze(1)
        out[rows.cpu()] = decoder_singular_values(flow.with_label(k).decode, z[rows], batch_size=100)
    return out


def summarise(sv: Tensor, beta: float, seed: int, points: str, recon: float, facts: dict) -> dict:
    """One table row: counts of σᵢ ≥ 1 (per point and of the mean / q10 / q90 spectra), log volume, recon error."""
    from injflow.metrics.spectrum import log_volume_from_singular_values, spectrum_summary

    counts = (sv >= 1.0).sum(1).double()
    summ = spectrum_summary(sv, quantiles=(0.1, 0.5, 0.9))
    q = torch.quantile(counts, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
    return {
        "beta": beta, "seed": seed, "points": points, "n_points": sv.shape[0],
        "mean_count_ge1": float(counts.mean()), "count_q10": float(q[0]), "count_median": float(q[1]),
        "count_q90": float(q[2]),
        "count_of_mean_spectrum": count_crossing(torch.tensor(summ["mean"])),
        "count_band_low": count_crossing(torch.tensor(summ["q10"])),
        "count_band_high": count_crossing(torch.tensor(summ["q90"])),
        "sigma_max_median": summ["median"][0], "sigma_min_median": summ["median"][-1],
        "log_volume_mean": float(log_volume_from_singular_values(sv).mean()),
        "test_recon_error": recon, **facts,
    }


def evaluate(exp: Experiment, flow: Any, test: Tensor, n_points: int, seed: int,
             test_labels: Tensor | None = None) -> dict[str, Tensor]:
    """Spectra at z ~ N(0, I) (the paper's generated samples) and at z = f(x) of test images; and the recon error.

    A conditional model gets the prior points split evenly over its classes and the test points with their labels.
    """
    gen = torch.Generator().manual_seed(seed)
    device = flow.device
    z_prior = torch.randn(n_points, LATENT_DIM, generator=gen).to(device)
    x = test[:n_points].to(device)
    prior_labels = c = None
    if test_labels is not None:
        prior_labels = (torch.arange(n_points) % flow.num_classes).to(device)
        c = test_labels[:n_points].to(device)
    with torch.no_grad():
        z_test = flow.encode(x, c)
        recon = float((flow.decode(z_test, c) - x).pow(2).flatten(1).sum(1).mean())
    return {"prior": spectra(flow, z_prior, prior_labels).cpu(), "test": spectra(flow, z_test, c).cpu(), "recon": recon}


def samples_figure(samples: dict[float, Tensor], path: Path, note: str) -> Path:
    """FIF fig. 9: samples of the conditional model at each β — one row per β, ``per_digit`` columns per digit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    betas = sorted(samples)
    fig, axes = plt.subplots(len(betas), 1, figsize=(10, 1.25 * len(betas) + 0.4), squeeze=False)
    for ax, beta in zip(axes[:, 0], betas):
        x = samples[beta].clamp(0, 1)  # (10 digits, per_digit, 1, 28, 28)
        digits, per_digit = x.shape[:2]
        rows = [torch.cat(list(x[k, :, 0]), dim=0) for k in range(digits)]  # each digit a column of per_digit images
        ax.imshow(torch.cat(rows, dim=1).numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_ylabel(f"β = {beta:g}", rotation=0, ha="right", va="center", fontsize=9)
    axes[0, 0].set_title("samples z ~ N(0, I) per digit 0 … 9 (columns), conditional FIF", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, note=note)


def spectra_figure(results: dict, path: Path, note: str) -> Path:
    """Fig. 8 left: sorted singular values per β (mean over points, q10–q90 band), log scale, line at 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    betas = sorted(results)
    for ax, points in zip(axes, ("prior", "test")):
        for i, beta in enumerate(betas):
            sv = torch.cat([r[points] for r in results[beta]])
            idx = torch.arange(1, sv.shape[1] + 1)
            colour = plt.cm.plasma(i / max(1, len(betas) - 1) * 0.9)
            ax.plot(idx, sv.mean(0), color=colour, marker="o", ms=3, label=f"β = {beta:g}")
            ax.fill_between(idx, torch.quantile(sv, 0.1, dim=0), torch.quantile(sv, 0.9, dim=0), color=colour, alpha=0.2)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_xlabel("index i (sorted)")
        ax.set_title("z ~ N(0, I) (as the paper)" if points == "prior" else "z = f(x), test images")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("singular value σᵢ of g'(z)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, note=note)


def count_figure(rows: list[dict], path: Path, note: str) -> Path:
    """Fig. 8 right: number of singular values ≥ 1 against β (error bars: where the q10/q90 band crosses 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for points, marker in (("prior", "o"), ("test", "s")):
        sel = sorted((r for r in rows if r["points"] == points), key=lambda r: (r["beta"], r["seed"]))
        betas = sorted({r["beta"] for r in sel})
        mean = [sum(r["mean_count_ge1"] for r in sel if r["beta"] == b) / sum(1 for r in sel if r["beta"] == b) for b in betas]
        lo = [min(r["count_band_low"] for r in sel if r["beta"] == b) for b in betas]
        hi = [max(r["count_band_high"] for r in sel if r["beta"] == b) for b in betas]
        # The band's counts need not bracket the mean per-point count (a count of the q10 spectrum is not the q10 of
        # the counts): the bars then end at the mean.
        ax.errorbar(betas, mean, yerr=[[max(0.0, m - l) for m, l in zip(mean, lo)], [max(0.0, h - m) for m, h in zip(mean, hi)]],
                    marker=marker, capsize=3, label=f"z {'~ N(0, I)' if points == 'prior' else '= f(x_test)'}")
    ax.set_xscale("log")
    ax.set_xlabel("reconstruction weight β")
    ax.set_ylabel("number of singular values ≥ 1 (of d = 16)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, note=note)


def main(argv: list[str] | None = None) -> None:
    exp = start(NAME, __doc__, argv, extra_args=[
        (("--seed",), {"type": int, "default": 0, "help": "first seed (default 0)"}),
        (("--conditional",), {"action": "store_true",
                              "help": "class-conditional models on conditional MNIST, as the paper; also draws fig. 9"}),
    ])
    from injflow.data import load_dataset

    betas = exp.pick((1.0, 100.0), (0.1, 1.0, 10.0, 100.0), (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0))
    seeds = [exp.args.seed + i for i in range(exp.pick(1, 1, 5))]
    n_points = exp.pick(50, 500, 10_240)
    data_config = model_config(exp, 1.0, 0)["data"]
    data = load_dataset(data_config["name"], seed=0, **data_config["options"])
    test, test_labels = data.test, data.test_labels if exp.args.conditional else None
    rows, results, runs, samples = [], {}, [], {}
    per_digit = exp.pick(2, 4, 8)
    for beta in betas:
        for seed in seeds:
            flow, facts = train(exp, beta, seed)
            ev = evaluate(exp, flow, test, n_points, seed, test_labels)
            results.setdefault(beta, []).append(ev)
            if exp.args.conditional and seed == seeds[0]:
                labels = torch.arange(flow.num_classes).repeat_interleave(per_digit)
                samples[beta] = flow.sample(len(labels), c=labels, seed=seed).cpu().reshape(
                    flow.num_classes, per_digit, *flow.data_shape)
            for points in ("prior", "test"):
                rows.append(summarise(ev[points], beta, seed, points, ev["recon"], facts))
            exp.log(f"β={beta:g} seed {seed}: {facts['train_steps']} steps in {facts['train_time_s']} s; "
                    f"σ≥1 count (prior) {rows[-2]['mean_count_ge1']:.2f}, (test) {rows[-1]['mean_count_ge1']:.2f}; "
                    f"recon {ev['recon']:.2f}")
            runs.append({"beta": beta, "seed": seed, **facts})
    write_table(rows, exp.out / "spectra_vs_beta")
    spectrum_rows = [{"beta": beta, "points": points, "index": i + 1,
                      "mean": float(sv.mean(0)[i]), "q10": float(torch.quantile(sv[:, i], 0.1)),
                      "median": float(sv[:, i].median()), "q90": float(torch.quantile(sv[:, i], 0.9))}
                     for beta in sorted(results) for points in ("prior", "test")
                     for sv in [torch.cat([r[points] for r in results[beta]])] for i in range(sv.shape[1])]
    write_table(spectrum_rows, exp.out / "spectra")
    from injflow.nets import count_parameters

    n_params = count_parameters(flow.encoder, flow.decoder)
    kind = "conditional" if exp.args.conditional else "unconditional"
    note = (f"{exp.scale} scale: {kind} MNIST, FIF-ConvNet {n_params / 1e6:.2f}M params, d=16, "
            f"{len(seeds)} model(s) per β, {runs[0]['train_steps']} steps each, {n_points} points; band = q10–q90 over points")
    spectra_figure(results, exp.out / "spectra", note)
    count_figure(rows, exp.out / "count_vs_beta", note)
    if samples:
        samples_figure(samples, exp.out / "fig9_samples", note)
    exp.finish(betas=list(betas), seeds=seeds, n_points=n_points, n_parameters=n_params, runs=runs,
               model=model_config(exp, betas[0], seeds[0]), bn_mode="eval",
               conditional=exp.args.conditional,
               notes=f"{kind} MNIST (paper: conditional); spectra of g'(z) at z ~ N(0, I) and at z = f(x_test)")


if __name__ == "__main__":
    main()
