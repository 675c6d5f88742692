"""Kumar, Poole & Murphy (AISTATS 2020) table 1 as a campaign: every method's weight search, best post-fit-GMM FID.

The protocol of Kumar §4: every method is trained over its hyper-parameter grid (below); "for all models, we report
the best FID score obtained using decoder sampling from a post-fit GMM in the latent space. We then report all the
other scores (i.e., scores for samples from post-fit Gaussian and test reconstructions) for the same model". Here
the best GMM model is chosen by its FID on the **validation** split (the paper does not say which split it selected
on; choosing on the test split would leak), and only that model of each method is scored on the test split:
"Rec." (test reconstructions), "N" (a full-covariance Gaussian fitted to the encoded training data) and "GMM" (a
10-component full-covariance GMM).

Grids (§4 "Hyperparameters and training"):

* InjFlow^ln (eq. 9) and InjFlow (eq. 10, λ = 1): prior weight ∈ {0, 1e-4, 1e-3, 1e-2, 1e-1, 1} × ν ∈ {1, 1.3} for
  the penalty schedules μ = μ_in = 1 + i^ν/1000 (η = 0.1);
* AE+L2: decoder weight decay ∈ {0.001, 0.01, 0.1, 0.5, 1}; CAE: encoder-Jacobian weight ∈ {0.001, 0.01, 0.1, 0.5,
  1, 10}; β-VAE: σ ∈ {0.001, 0.01, 0.05, 0.1, 0.5} (β = σ²); AE, AE+SN, VAE (σ² = 1): one configuration each.

Training: ``configs/paper/kumar-<data>-<method>.yaml`` (App. A conv nets, d = 32 for MNIST, 128 for CIFAR-10 and
CelebA; Adam 1e-3, batch 128, 100k steps).

Scales:

* ``smoke``: scikit-learn digits, an MLP (64-32-4), β-VAE (two σ) and InjFlow^ln, 20 steps, 4×4-pooled-pixel
  features (not FID), n = 32; ``--datasets cifar10 celeba --data-root DIR``: the App. A nets for 2 steps on small
  upstream-format files.
* ``cpu``: MNIST, **one** MLP 784-512-256-16 (SiLU) for every method (the App. A nets cost seconds per step on this
  CPU), 10k training / 1k validation images, **500 steps** (paper: 100k), five methods (VAE, β-VAE, AE, InjFlow^ln,
  InjFlow; ``--methods`` adds CAE, AE+L2, AE+SN) and a **reduced grid** (β-VAE σ ∈ {0.01, 0.1}, InjFlow^ln prior
  weight ∈ {0.01, 1}; InjFlow: the paper config's point; marked in the table), FID on **n = 50** with a reference disjoint from the reconstructed images (Inception ran at ~1 s per
  image on the shared machine, which sets n, the steps and the grid); one seed. This replaces
  ``generative_table.py`` (the same net and data without a search).
* ``paper``: every data set, the full grids (43 runs per data set), n = 10k, the papers' protocol; for a GPU.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import campaign as C  # noqa: E402
from common import save_figure, start, write_table  # noqa: E402

NAME = "kumar_table1"
DATASETS = {"mnist": "MNIST", "cifar10": "CIFAR-10", "celeba": "CelebA"}
_INJ_GRID = [{"prior_weight": w, "nu": nu} for nu in (1.0, 1.3) for w in (0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)]

#: method label → (config suffix, the paper's grid, the cpu-scale grid, smoke grid). A grid point is a dict of
#: parameters; :func:`method_overrides` turns it into config overrides.
METHODS: dict[str, tuple[str, list[dict], list[dict], list[dict]]] = {
    "VAE": ("vae", [{}], [{}], [{}]),
    "β-VAE": ("beta-vae", [{"sigma": s} for s in (0.001, 0.01, 0.05, 0.1, 0.5)],
              [{"sigma": s} for s in (0.01, 0.1)], [{"sigma": s} for s in (0.01, 0.1)]),  # cpu: σ 0.01, 0.1
    "AE": ("ae", [{}], [{}], [{}]),
    "CAE": ("cae", [{"jacobian_weight": w} for w in (0.001, 0.01, 0.1, 0.5, 1.0, 10.0)],
            [{"jacobian_weight": 0.1}], [{"jacobian_weight": 0.1}]),
    "AE+L2": ("ae-l2", [{"weight_decay": w} for w in (0.001, 0.01, 0.1, 0.5, 1.0)],
              [{"weight_decay": 0.01}], [{"weight_decay": 0.01}]),
    "AE+SN": ("ae-sn", [{}], [{}], [{}]),
    "InjFlow-ln": ("injflow-ln", _INJ_GRID, [{"prior_weight": w, "nu": 1.0} for w in (1e-2, 1.0)],
                   [{"prior_weight": 1.0, "nu": 1.0}]),
    "InjFlow": ("injflow", _INJ_GRID, [{"prior_weight": 1.0, "nu": 1.0}],
                [{"prior_weight": 1.0, "nu": 1.0}]),
}
#: The methods of a smoke run (the pipeline check; every method's config trains in tests/test_configs.py) and of a
#: cpu run (the shared machine's budget: Inception ran at 1-3 s per image while these ran).
SMOKE_METHODS = ("β-VAE", "InjFlow-ln")
CPU_METHODS = ("VAE", "β-VAE", "AE", "InjFlow-ln", "InjFlow")

#: Kumar table 1: (Rec., N, GMM) FID per data set.
PAPER = {
    "mnist": {"VAE": (65.10, 57.04, 62.08), "β-VAE": (7.91, 24.31, 8.12), "AE": (8.69, 43.40, 12.14),
              "CAE": (10.51, 45.18, 12.90), "AE+L2": (7.76, 34.27, 9.69), "AE+SN": (8.07, 37.19, 11.84),
              "InjFlow-ln": (7.40, 35.96, 9.93), "InjFlow": (6.0, 42.65, 11.43)},
    "cifar10": {"VAE": (176.5, 169.1, 184.3), "β-VAE": (43.86, 83.59, 71.56), "AE": (41.45, 81.13, 70.97),
                "CAE": (41.13, 81.53, 70.11), "AE+L2": (43.02, 81.28, 70.13), "AE+SN": (41.34, 81.35, 70.94),
                "InjFlow-ln": (40.11, 78.78, 68.26), "InjFlow": (40.86, 79.67, 68.37)},
    "celeba": {"VAE": (62.36, 72.48, 67.82), "β-VAE": (30.06, 50.66, 42.77), "AE": (30.16, 51.48, 43.49),
               "CAE": (31.12, 48.13, 40.67), "AE+L2": (29.97, 50.02, 42.09), "AE+SN": (31.21, 51.13, 43.33),
               "InjFlow-ln": (27.93, 47.70, 40.23), "InjFlow": (28.51, 49.01, 40.57)},
}


def method_overrides(point: dict[str, Any]) -> list[str]:
    """A grid point as config overrides (β-VAE: β = σ²; InjFlow: μ and μ_in share ν)."""
    out = []
    for key, v in point.items():
        if key == "sigma":
            out.append(f"method.beta={v * v:g}")
        elif key == "nu":
            for name in ("mu", "mu_in"):
                out.append(f"method.{name}={{schedule: penalty, start: 1, rate: 0.001, nu: {v}}}")
        else:
            out.append(f"method.{key}={v}")
    return out


def scale_overrides(exp: Any, dataset: str) -> list[str]:
    root = [f"data.root={exp.args.data_root}"] if exp.args.data_root else []
    if exp.scale == "smoke" and dataset == "mnist":
        return ["data.name=digits", "data.options={n_val: 64, n_test: 64}", "data.batch_size=64",
                "model.architecture=mlp", "model.latent_dim=4", "model.options={hidden_features: [32]}",
                "train.max_steps=20", "train.gmm_components=3", "train.log_every_n_steps=5"]
    if exp.scale == "smoke":
        return root + ["data.options={n_val: 8}" if dataset == "cifar10" else "data.options={}", "data.batch_size=4",
                       "model.latent_dim=4",  # the paper's nets with a small d: GMMs on a handful of codes
                       "train.max_steps=2", "train.gmm_components=2", "train.log_every_n_steps=1"]
    if exp.scale == "cpu":
        return root + ["data.options={n_train: 10000, n_val: 1000}", "model.architecture=mlp", "model.latent_dim=16",
                       "model.options={hidden_features: [512, 256], activation: silu}", "train.max_steps=500",
                       "train.log_every_n_steps=50"]
    return root


def build_plan(exp: Any) -> C.Plan:
    datasets = exp.args.datasets or exp.pick(["mnist"], ["mnist"], list(DATASETS))
    default = exp.pick(SMOKE_METHODS, CPU_METHODS, tuple(METHODS))
    methods = [m for m in METHODS if (exp.args.methods is None and m in default) or m in (exp.args.methods or ())]
    runs = []
    for dataset in datasets:
        for label in methods:
            suffix, paper_grid, cpu_grid, smoke_grid = METHODS[label]
            for point in exp.pick(smoke_grid, cpu_grid, paper_grid):
                tag = "-".join(f"{k}{v:g}" for k, v in point.items()) or "default"
                runs.append(C.RunSpec(
                    name=f"{dataset}-{suffix}-{tag}", config=f"paper/kumar-{dataset}-{suffix}.yaml",
                    overrides=scale_overrides(exp, dataset) + method_overrides(point) + [f"train.seed={exp.args.seed}"],
                    group=f"{DATASETS[dataset]} {label}", params={"dataset": dataset, "method": label, **point}))
    features = "pixels" if exp.scale == "smoke" else "inception"
    n = exp.args.n_fid or exp.pick(32, 50, 10_000)
    if exp.scale == "smoke" and "mnist" not in datasets:
        n = min(n, 4)
    paper = exp.scale == "paper"
    return C.Plan(
        name=NAME, scale=exp.scale, runs=runs, seed=exp.args.seed,
        validation=C.EvalSpec("val", n, ["gmm"], disjoint=not paper, features=features),
        test=C.EvalSpec("test", n, ["gaussian", "gmm"], reconstruction=True, disjoint=not paper, features=features),
        criteria={"GMM": "gmm"},
        notes={"selection": "per (data set, method): lowest validation GMM FID over the method's grid (Kumar §4)"},
    )


def assemble(result: C.CampaignResult, exp: Any) -> dict[str, Any]:
    plan = result.plan
    metric = C.metric_name(plan.test.features)
    grid_rows, rows = [], []
    full = {label: len(METHODS[label][1]) for label in METHODS}
    for spec in plan.runs:
        rec = result.records[spec.name]
        params = {k: v for k, v in spec.params.items() if k not in ("dataset", "method")}
        grid_rows.append({"dataset": spec.params["dataset"], "method": spec.params["method"],
                          "params": ", ".join(f"{k}={v:g}" for k, v in params.items()) or "—",
                          "val_fid_gmm": C.value(rec, "val", "gmm"),
                          "train_wall_s": (rec.train or {}).get("wall_s"), "failed": (rec.failed or {}).get("error")})
    for group in dict.fromkeys(r.group for r in plan.runs):
        first = next(r for r in plan.runs if r.group == group)
        dataset, label = first.params["dataset"], first.params["method"]
        rec = result.selected(group, "GMM")
        tried = sum(r.group == group for r in plan.runs)
        paper = PAPER[dataset].get(label, (None, None, None))
        params = {k: v for k, v in rec.spec.params.items() if k not in ("dataset", "method")} if rec else {}
        rows.append({
            "dataset": dataset, "method": label, "grid_points": f"{tried} of {full[label]}",
            "selected": ", ".join(f"{k}={v:g}" for k, v in params.items()) or "—",
            "val_gmm": C.value(rec, "val", "gmm"),
            "rec": C.value(rec, "test", "reconstruction"), "N": C.value(rec, "test", "gaussian"),
            "GMM": C.value(rec, "test", "gmm"),
            "test_recon_error": (rec.test or {}).get("reconstruction_error") if rec else None, "n": plan.test.n,
            "paper_rec": paper[0], "paper_N": paper[1], "paper_GMM": paper[2],
        })
    floors = C.real_data_floor(result, exp.args.fid_cache, exp.args.device)
    by_dataset = {next(r.params["dataset"] for r in plan.runs if r.group == g): f for g, f in floors.items()}
    for dataset, floor in by_dataset.items():
        rows.append({k: None for k in rows[0]} | {"dataset": dataset, "method": "real test images (floor)",
                                                   "rec": floor, "N": floor, "GMM": floor, "n": plan.test.n})
    write_table(grid_rows, exp.out / "search_grid")
    write_table(rows, exp.out / "table1")
    note = (f"{exp.scale} scale: {metric} on n = {plan.test.n} per set (papers: 10k), reference disjoint from the "
            f"reconstructed images; one net for all methods at this scale; seed {plan.seed}")
    plot_table([r for r in rows if r["grid_points"]], exp.out / "table1", note, metric)
    examples = {}
    for group in dict.fromkeys(r.group for r in plan.runs):
        imgs = C.example_images(result.selected(group, "GMM"), result.folder, seed=plan.seed)
        if imgs is not None:
            examples[group] = imgs
    if examples:
        plot_examples(examples, exp.out / "samples", note)
    return {"metric": metric, "table1": rows, "n_fid": plan.test.n, "real_data_floor": by_dataset}


def plot_examples(examples: dict[str, dict[str, Any]], path: Path, note: str) -> Path:
    """Kumar figs. 4-21 in one picture: per selected model, test images, their reconstructions, GMM samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from injflow.metrics.inception import infer_image_shape

    fig, axes = plt.subplots(len(examples), 1, figsize=(7, 1.05 * len(examples) + 0.4), squeeze=False)
    for ax, (group, imgs) in zip(axes[:, 0], examples.items()):
        rows = []
        for key in ("test", "reconstruction", "gmm"):
            x = imgs[key].float().clamp(0, 1)
            if x.ndim == 2:
                x = x.reshape(x.shape[0], *infer_image_shape(x.shape[1]))
            x = torch.nn.functional.pad(x, (1, 1, 1, 1), value=1.0)
            rows.append(torch.cat(list(x), dim=-1))
        grid = torch.cat(rows, dim=-2)
        ax.imshow(grid.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(f"{group}: test images / reconstructions / GMM samples", fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, note=note)


def plot_table(rows: list[dict[str, Any]], path: Path, note: str, metric: str) -> Path:
    """Grouped bars: Rec., N and GMM FID of each method's selected model, per data set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(1, len(datasets), figsize=(8 * len(datasets), 3.4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        sub = [r for r in rows if r["dataset"] == dataset]
        x = np.arange(len(sub))
        for i, key in enumerate(("rec", "N", "GMM")):
            ax.bar(x + (i - 1) * 0.27, [r[key] if r[key] is not None else 0 for r in sub], 0.27,
                   label={"rec": "Rec.", "N": "post-fit N", "GMM": "post-fit GMM"}[key])
        ax.set_xticks(x, [r["method"] for r in sub], fontsize=8)
        ax.set_ylabel(f"test {metric.split(' (')[0]}", fontsize=8)
        ax.set_title(f"{DATASETS[dataset]}: each method's best-validation-GMM model", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, note=note)


def main(argv: list[str] | None = None) -> int:
    exp = start(NAME, __doc__, argv, extra_args=C.campaign_args() + [
        (("--datasets",), {"nargs": "+", "choices": list(DATASETS), "default": None,
                           "help": "data sets (default: cpu/smoke mnist; paper all three)"}),
        (("--methods",), {"nargs": "+", "choices": list(METHODS), "default": None, "help": "subset of methods"}),
        (("--n-fid",), {"type": int, "default": None, "help": "images per FID set (default smoke 32, cpu 50, paper 10k)"}),
    ])
    return C.run_from_args(exp, build_plan(exp), assemble)


if __name__ == "__main__":
    sys.exit(main())
