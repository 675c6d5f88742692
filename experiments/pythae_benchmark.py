"""FIF on the Pythae benchmark: FIF table 3 (CelebA), table 8 and fig. 10 (MNIST, CIFAR-10, CelebA), as sweeps.

The protocol of FIF §5.3 and App. E.4: for each data set and architecture (the Pythae ConvNet, table 9, and ResNet,
table 10), train the **grid β ∈ {5, 10, 15, 20, 25} × K ∈ {1, 2}** (10 configurations), compute the **validation
FID** of each (fig. 10: samplers "N" = the standard-normal prior and "GMM" = a 10-component GMM fitted to the
encoded training data), keep the configuration with the best validation FID, and report the **test FID and IS** of
that model with 10k samples (table 8; table 3 = its CelebA columns). The selection is made per sampler (the best
N model and the best GMM model; the paper does not say whether one model serves both rows). Selection never looks
at the test split; only the selected runs are evaluated on it.

Training (App. E.4, ``configs/paper/fif-pythae-<arch>-<data>.yaml``): Adam, LR 1e-4 (MNIST, CIFAR-10) / 1e-3
(CelebA), batch 100, 100 epochs (MNIST, CIFAR-10) / 50 (CelebA), LR halved on a 10-epoch plateau; validation = the
last 10k training images (MNIST, CIFAR-10) or the official CelebA validation split.

The sweeps are the specs ``configs/sweeps/pythae_benchmark-<arch>-<data set>-<scale>.yaml`` (``injflow sweep``:
selection per sampler on ``val/fid_prior`` and ``val/fid_gmm``, test evaluation of the selected trials); this
script runs them and assembles the tables from each sweep's ``selection.json`` and the test scores.

Scales:

* ``smoke``: scikit-learn digits, an MLP (64-32-4), β ∈ {5, 25} × K = 1, 20 steps, 4×4-pooled-pixel features
  instead of Inception (not FID), n = 32; with ``--datasets cifar10 celeba --data-root DIR`` the Pythae ResNet for
  2 steps on small files in the upstream formats (the test suite's check of those paths).
* ``cpu``: MNIST, a reduced grid β ∈ {5, 15, 25} × K ∈ {1, 2} (6 of the 10 points) with the paper's optimiser (Adam 1e-4, batch 100, plateau schedule) and
  d = 16, but **an MLP 784-512-256-16 (SiLU) instead of the Pythae nets** (the 0.73M ResNet took 0.36 s per step on
  an idle core and ~1.5 s with the machine shared; the 17.2M ConvNet more; on the shared machine Inception took
  ~1 s per image, which sets n and the steps), 10k training / 1k validation images,
  **500 steps** (5 epochs of 10k; paper: 100 epochs of 50k), FID on **n = 50** per set with a reference
  disjoint from the reconstructed images (``injflow.metrics.fid_protocol``), one seed. Run names keep the
  ``resnet-mnist`` setup they stand in for.
* ``paper``: every data set and architecture, the paper's configs, n = 10k, the papers' protocol; for a GPU.

One command per table, resumable: rerunning it keeps finished trials and resumes killed ones (``injflow sweep``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sweep_tables as S  # noqa: E402
from common import save_figure, start, write_table  # noqa: E402

NAME = "pythae_benchmark"
ARCHS = {"convnet": "ConvNet", "resnet": "ResNet"}
DATASETS = {"mnist": "MNIST", "cifar10": "CIFAR-10", "celeba": "CelebA"}
SAMPLERS = {"N": "prior", "GMM": "gmm"}  # FIF's "N" is the standard-normal prior

#: FIF table 8 (test FID, IS with 10k samples), FIF rows; table 3 repeats the CelebA columns.
PAPER_FIF = {
    ("convnet", "mnist"): {"N": (23.8, 2.2), "GMM": (11.0, 2.2)},
    ("convnet", "cifar10"): {"N": (121.0, 3.0), "GMM": (90.6, 4.0)},
    ("convnet", "celeba"): {"N": (56.9, 2.1), "GMM": (47.3, 1.9)},
    ("resnet", "mnist"): {"N": (19.5, 2.1), "GMM": (11.7, 2.1)},
    ("resnet", "cifar10"): {"N": (132.6, 2.9), "GMM": (119.2, 3.4)},
    ("resnet", "celeba"): {"N": (62.3, 1.7), "GMM": (55.0, 1.8)},
}
#: The best other model of table 8 per column (FID), for context: (model, FID).
PAPER_BEST_OTHER = {
    ("convnet", "mnist"): {"N": ("AAE", 16.8), "GMM": ("WAE-IMQ", 8.6)},
    ("convnet", "cifar10"): {"N": ("β-VAE", 115.4), "GMM": ("RAE-L2", 85.3)},
    ("convnet", "celeba"): {"N": ("FactorVAE", 53.8), "GMM": ("VQVAE", 51.6)},
    ("resnet", "mnist"): {"N": ("β-VAE / AAE", 19.1), "GMM": ("VQVAE", 10.7)},
    ("resnet", "cifar10"): {"N": ("β-VAE", 124.9), "GMM": ("β-TC VAE", 106.5)},
    ("resnet", "celeba"): {"N": ("AAE", 64.8), "GMM": ("AAE", 58.7)},
}


def setups(exp: Any) -> list[tuple[str, str]]:
    default = exp.pick([("resnet", "mnist")], [("resnet", "mnist")], [(a, d) for a in ARCHS for d in DATASETS])
    archs = exp.args.archs or sorted({a for a, _ in default})
    datasets = exp.args.datasets or list(dict.fromkeys(d for _, d in default))
    return [(a, d) for a in ARCHS for d in DATASETS if a in archs and d in datasets]


def build_specs(exp: Any) -> list[Any]:
    specs = []
    for arch, dataset in setups(exp):
        name = f"{NAME}-{arch}-{dataset}-{exp.scale}"
        if not (S.SPECS / f"{name}.yaml").is_file():
            raise SystemExit(f"experiments/{NAME}.py: no spec configs/sweeps/{name}.yaml ({exp.scale} scale has "
                             f"{', '.join(sorted(p.stem for p in S.SPECS.glob(f'{NAME}-*-{exp.scale}.yaml')))})")
        specs.append(S.load_table_spec(name, exp))
    return specs


def assemble(results: list[Any], exp: Any) -> dict[str, Any]:
    from injflow.sweep.scoring import is_note, metric_name

    spec = results[0].spec
    metric = metric_name(spec.test.features)
    grid_rows, rows, floors = [], [], {}
    for result in results:
        _, arch, dataset, _ = result.spec.name.split("-")
        setup = f"{ARCHS[arch]} {DATASETS[dataset]}"
        for rec in result.records:
            grid_rows.append({"arch": arch, "dataset": dataset, "beta": rec.trial.values.get("method.beta"),
                              "K": rec.trial.values.get("method.n_hutchinson"),
                              "val_fid_N": S.value(rec, "val/fid_prior"), "val_fid_GMM": S.value(rec, "val/fid_gmm"),
                              "train_wall_s": rec.train_seconds, "steps": rec.step, "failed": rec.error})
        floors[setup] = S.real_data_floor(result, exp.args.device)
        for label, sampler in SAMPLERS.items():
            rec = result.selected("all", f"val/fid_{sampler}")
            paper = PAPER_FIF.get((arch, dataset), {}).get(label, (None, None))
            other = PAPER_BEST_OTHER.get((arch, dataset), {}).get(label, (None, None))
            rows.append({
                "setup": setup, "sampler": label, "selected": rec.name if rec else None,
                "beta": rec.trial.values.get("method.beta") if rec else None,
                "K": rec.trial.values.get("method.n_hutchinson") if rec else None,
                "val_fid": S.value(rec, f"val/fid_{sampler}"), "test_fid": S.value(rec, f"test/fid_{sampler}"),
                "test_is": S.value(rec, f"test/is_{sampler}"), "n": result.spec.test.n,
                "paper_fif_fid": paper[0], "paper_fif_is": paper[1],
                "paper_best_other": other[0], "paper_best_other_fid": other[1], "real_test_floor": floors[setup],
            })
    write_table(grid_rows, exp.out / "validation_grid")
    write_table(rows, exp.out / "table8")
    celeba = [r for r in rows if r["setup"].endswith("CelebA")]
    if celeba:
        write_table(celeba, exp.out / "table3")
    note = (f"{exp.scale} scale: {metric}, n = {spec.evaluate.n} per set (papers: 10k); "
            f"{'reference disjoint from the reconstructed images' if spec.test.disjoint else 'papers protocol'}; "
            f"steps per run: {sorted({g['steps'] for g in grid_rows if g['steps']})}; seed {spec.evaluate.seed}")
    plot_fig10(grid_rows, exp.out / "fig10_validation_fid", note, metric)
    return {"metric": metric, "is_note": is_note(spec.test), "table8": rows, "n_fid": spec.test.n,
            "real_data_floor": floors}


def plot_fig10(grid_rows: list[dict[str, Any]], path: Path, note: str, metric: str) -> Path:
    """FIF fig. 10: validation FID against β, K = 1 solid and K = 2 dashed, N and GMM, one panel per setup."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["arch"], r["dataset"]) for r in grid_rows))
    fig, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 3.2), squeeze=False)
    for ax, (arch, dataset) in zip(axes[0], groups):
        for k, ls in ((1, "-"), (2, "--")):
            for key, color, label in (("val_fid_N", "C0", "N"), ("val_fid_GMM", "C1", "GMM")):
                pts = sorted((r["beta"], r[key]) for r in grid_rows
                             if (r["arch"], r["dataset"]) == (arch, dataset) and r["K"] == k and r[key] is not None)
                if pts:
                    ax.plot(*zip(*pts), ls=ls, color=color, marker="o", ms=3, label=f"{label}, K={k}")
        ax.set_title(f"{ARCHS[arch]} {DATASETS[dataset]}", fontsize=9)
        ax.set_xlabel("β")
        ax.set_ylabel(f"validation {metric.split(' (')[0]}", fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, note=note)


def main(argv: list[str] | None = None) -> int:
    exp = start(NAME, __doc__, argv, extra_args=S.sweep_args() + [
        (("--datasets",), {"nargs": "+", "choices": list(DATASETS), "default": None,
                           "help": "data sets (default: cpu/smoke mnist; paper all three)"}),
        (("--archs",), {"nargs": "+", "choices": list(ARCHS), "default": None,
                        "help": "architectures (default: cpu/smoke resnet; paper both)"}),
    ])
    return S.run_table(exp, build_specs(exp), assemble)


if __name__ == "__main__":
    sys.exit(main())
