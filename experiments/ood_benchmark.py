"""Out-of-distribution detection, Fashion-MNIST → MNIST and MNIST → Fashion-MNIST: FIF against an AE and a VAE.

The likelihood paradox (Nalisnick et al. 2019, "Do deep generative models know what they don't know?"): flows
trained on Fashion-MNIST assign MNIST digits *higher* likelihood than Fashion-MNIST test images. Injective flows give
each point two numbers, the on-manifold likelihood and the distance to the manifold (Caterini et al. 2021 use both;
Kamkari et al. 2024 pair likelihood with local intrinsic dimension). This script trains, per in-distribution data set,
three models with the same network and budget and scores the full test sets of both data sets with every score of
``injflow.ood`` (docs/ood.md), reporting the AUROC of each (MNIST's points as positives for a Fashion-MNIST model and
vice versa):

* ``fif``: FIF (β = 20), ``nll`` = exact on-manifold NLL with its trained prior;
* ``ae``: a plain autoencoder, ``nll`` = the same exact formula with its encoder/decoder and the post-fit GMM (10
  components, on the training codes) as p_Z, since its prior is not trained;
* ``vae``: a VAE whose Gaussian decoder has FIF's implied noise, σ = 1/√(2β) (FIF's β is 1/2σ², FIF App. C);
  ``nll`` as the AE's formula with the prior, plus ``vae_nll`` = minus its importance-weighted bound (K = 16) on
  log p(x), from the run's last checkpoint (which keeps the posterior network).

Every model also gets ``reconstruction`` = ‖x − g(f(x))‖² and ``nll_D``, the thickened D-dimensional density.

The per-model work is cached in ``--runs`` (one run folder per model and data set, the scores under its ``eval/``):
rerunning continues where a kill stopped, and ``--models``/``--datasets`` split the work into short invocations
(each held under the project's heavy-job lock for < 40 minutes). The table is assembled from whatever is cached.

Scales:

* ``smoke``: Fashion-MNIST → MNIST only, 300 training images, 1 epoch, FIF-ConvNet with 4 channels, d = 4, 100
  vs 100 test images.
* ``cpu``: the full 50k/10k training/validation split and the full 10k test sets (10k vs 10k), FIF-ConvNet (table 11
  layout) with channel factor 8 and ResBlock width 128, d = 32, 8 epochs (4,000 steps of batch 100), Adam 1e-3.
* ``paper``: as ``cpu`` with table 11's widths (channel factor 32, ResBlock 512) and 100 epochs (a GPU job).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Experiment, fit_run, save_figure, start, write_table  # noqa: E402

NAME = "ood_benchmark"
DATASETS = ("fashion_mnist", "mnist")
OTHER = {"fashion_mnist": "mnist", "mnist": "fashion_mnist"}
MODELS = ("fif", "ae", "vae")
BETA = 20.0
IW_SAMPLES = 16


def model_config(exp: Experiment, model: str, dataset: str) -> dict:
    """One training run: the same FIF-ConvNet, data and budget for every model; only the objective differs."""
    methods = {
        "fif": {"name": "fif", "beta": BETA},
        "ae": {"name": "ae"},
        "vae": {"name": "vae", "sigma": 1.0 / math.sqrt(2 * BETA)},  # FIF's β = 1/(2σ²) (FIF App. C)
    }
    return {
        "data": {"name": dataset, "batch_size": 100,
                 "options": {"n_train": exp.pick(300, None, None), "n_val": exp.pick(100, 10_000, 10_000),
                             "n_test": exp.pick(100, None, None)}},
        "model": {"architecture": "fif_convnet", "latent_dim": exp.pick(4, 32, 32),
                  "options": exp.pick({"channel_factor": 4, "block_width": 32}, {"channel_factor": 8, "block_width": 128},
                                      {"channel_factor": 32, "block_width": 512}),
                  "latent": {"name": "normal"}},
        "method": methods[model],
        "optim": {"name": "adam", "lr": 1e-3},
        "train": {"seed": 0, "max_epochs": exp.pick(1, 8, 100), "samplers": ["gmm"], "gmm_components": 10},
    }


def run_state(run_dir: Path) -> str:
    """``trained`` (a finished model), ``resumable`` (a checkpoint to go on from) or ``new``."""
    from injflow.rundir import RunDir

    if not run_dir.is_dir():
        return "new"
    run = RunDir(run_dir)
    if run.model.is_file() and run.status().get("state") == "completed":
        return "trained"
    return "resumable" if run.last_checkpoint.is_file() else "new"


def runs_root(exp: Experiment) -> Path:
    """``--runs``, else ``<out>/campaign`` (git ignores campaign folders next to a results folder)."""
    return exp.args.runs if exp.args.runs is not None else exp.out / "campaign"


def train(exp: Experiment, model: str, dataset: str) -> Path:
    """Trains (or resumes, or reuses) one run folder; returns it."""
    import injflow.api as inj

    run_dir = runs_root(exp) / f"{model}-{dataset}"
    state = run_state(run_dir)
    if state == "trained":
        return run_dir
    t0 = time.perf_counter()
    if state == "resumable":
        inj.resume(run_dir, overrides=["train.progress_bar=false", "train.pictures=false"])
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        fit_run(model_config(exp, model, dataset), run_dir=run_dir, threads=exp.args.threads, device=exp.args.device)
    exp.log(f"trained {model} on {dataset} in {time.perf_counter() - t0:.0f} s")
    return run_dir


def score(exp: Experiment, model: str, dataset: str, run_dir: Path) -> dict:
    """The OOD section of ``injflow.ood.ood_run`` (cached in the run folder as ``eval/ood_<other>.json``)."""
    from injflow.ood import ood_run

    cache = run_dir / "eval" / f"ood_{OTHER[dataset]}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    t0 = time.perf_counter()
    section = ood_run(run_dir, OTHER[dataset], checkpoint="last" if model == "vae" else None, iw_samples=IW_SAMPLES,
                      max_samples=exp.pick(100, None, None), device=exp.args.device, verbose=False)
    section["score_seconds"] = round(time.perf_counter() - t0, 1)
    for name in ("ood_scores.csv", "ood_scores.png"):
        shutil.copyfile(run_dir / "eval" / name, run_dir / "eval" / name.replace("ood_scores", f"ood_{OTHER[dataset]}"))
    cache.write_text(json.dumps(section, indent=1) + "\n")
    exp.log(f"scored {model} ({dataset} vs {OTHER[dataset]}) in {section['score_seconds']} s: "
            + ", ".join(f"{k} {v:.3f}" for k, v in section["auroc"].items()))
    return section


def facts(run_dir: Path) -> dict[str, Any]:
    status = json.loads((run_dir / "status.json").read_text()) if (run_dir / "status.json").is_file() else {}
    return {"train_steps": status.get("step"), "train_s": round(status.get("train_seconds", 0.0) or 0.0, 1)}


def auroc_figure(rows: list[dict], path: Path, note: str) -> Path:
    """AUROC per score (bars) and model (groups), one panel per direction; the 0.5 line is chance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = sorted({(r["in_dataset"], r["ood_dataset"]) for r in rows})
    scores = ["nll", "reconstruction", "nll_D", "vae_nll"]
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.5 * len(pairs), 3.6), squeeze=False)
    for ax, (a, b) in zip(axes[0], pairs):
        models = [m for m in MODELS if any(r["model"] == m and r["in_dataset"] == a for r in rows)]
        width = 0.8 / len(scores)
        for j, s in enumerate(scores):
            vals = [next((r["auroc"] for r in rows if r["model"] == m and r["in_dataset"] == a and r["score"] == s),
                         math.nan) for m in models]
            ax.bar([i + (j - 1.5) * width for i in range(len(models))], vals, width, label=s, color=f"C{j}")
        ax.axhline(0.5, color="k", lw=0.8, ls="--")
        ax.set_xticks(range(len(models)), models)
        ax.set_ylim(0, 1)
        ax.set_ylabel("AUROC")
        ax.set_title(f"trained on {a}, OOD = {b}", fontsize=9)
        ax.legend(fontsize=7, ncol=2, loc="lower right", framealpha=0.9)
    fig.tight_layout()
    return save_figure(fig, path, note=note)


def main(argv: list[str] | None = None) -> None:
    exp = start(NAME, __doc__, argv, extra_args=[
        (("--runs",), {"type": Path, "default": None,
                       "help": "folder of the cached run folders (default <out>/campaign)"}),
        (("--models",), {"nargs": "+", "choices": MODELS, "default": list(MODELS), "help": "models to train/score now"}),
        (("--datasets",), {"nargs": "+", "choices": DATASETS, "default": None,
                           "help": "in-distribution data sets to train/score now (default: both; smoke: fashion_mnist)"}),
        (("--assemble-only",), {"action": "store_true", "help": "only write the table from the cached scores"}),
    ])
    if not exp.args.assemble_only:
        for dataset in exp.args.datasets or exp.pick(["fashion_mnist"], list(DATASETS), list(DATASETS)):
            for model in exp.args.models:
                score(exp, model, dataset, train(exp, model, dataset))
    rows, runs = [], []
    for dataset in DATASETS:
        for model in MODELS:
            run_dir = runs_root(exp) / f"{model}-{dataset}"
            cache = run_dir / "eval" / f"ood_{OTHER[dataset]}.json"
            if not cache.is_file():
                continue
            section = json.loads(cache.read_text())
            info = facts(run_dir)
            runs.append({"model": model, "dataset": dataset, **info, "score_seconds": section.get("score_seconds"),
                         "off_manifold_noise_std": section["off_manifold_noise"]["std"], "latent": section["latent"],
                         "notes": section.get("notes", {})})
            for s, value in section["auroc"].items():
                rows.append({"in_dataset": dataset, "ood_dataset": OTHER[dataset], "model": model, "score": s,
                             "auroc": round(value, 4), "mean_in": section["mean"][s]["in"],
                             "mean_out": section["mean"][s]["out"], "n_in": section["in"]["n"],
                             "n_out": section["out"]["n"], "latent": section["latent"]})
            for name in (f"ood_{OTHER[dataset]}.png",):
                shutil.copyfile(run_dir / "eval" / name, exp.out / f"{model}-{dataset}-vs-{OTHER[dataset]}.png")
    if not rows:
        raise SystemExit("no scored runs yet: run without --assemble-only first")
    write_table(rows, exp.out / "auroc")
    config = model_config(exp, "fif", DATASETS[0])
    note = (f"{exp.scale} scale: FIF-ConvNet {config['model']['options']}, d={config['model']['latent_dim']}, "
            f"{config['train']['max_epochs']} epochs; full test sets as in/out sets; AUROC: OOD set = positives")
    auroc_figure(rows, exp.out / "auroc", note)
    exp.finish(models=list(MODELS), beta=BETA, iw_samples=IW_SAMPLES, runs=runs, runs_root=str(runs_root(exp)),
               model_config=config, vae_sigma=1.0 / math.sqrt(2 * BETA),
               complete=len(runs) == len(MODELS) * len(DATASETS))


if __name__ == "__main__":
    main()
