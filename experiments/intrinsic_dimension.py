"""The dimension of the learned manifold (``injflow.dimension``) against known answers and other estimators.

FIF fig. 8 shows the decoder's singular values; ``injflow dimension`` turns them into an estimate: the number of
singular values of g'(f(x)) above 2 × the off-manifold noise std (docs/dimension.md). This script checks it

1. on data of known dimension in R^20, trained with a latent dimension larger than the truth: a 5-d Gaussian linear
   subspace (noise 0.05, d = 8) and a curved 3-d manifold (the graph t ↦ (t, t²/2, t₁t₂/2), t ~ U(−1, 1)³, noise
   0.02, d = 6), several seeds; next to scikit-dimension's estimators (MLE of Levina & Bickel, TwoNN of Facco et al.,
   global PCA by the Fukunaga–Olsen rule, correlation dimension) on the same points;
2. model selection over d on the same data: held-out −log p_D (``nll_D``, the likelihood comparable across d) per d
   and seed, and the smallest d within one standard error of the best (``injflow.dimension.select_latent_dim``'s
   rule);
3. on MNIST and Fashion-MNIST: the FIF models of ``experiments/ood_benchmark.py`` (d = 32; reused from its
   ``--runs`` folder, trained here if absent) next to the scikit-dimension estimators on training images.

Scales:

* ``smoke``: 400 points, 2 epochs, one seed, d grid {2, 3}; images: 300 training images, 1 epoch, 100 points.
* ``cpu``: 5,000 training / 1,000 test points, MLP (128, 128), FIF β = 10, 40 epochs (2,000 steps of batch 100),
  3 seeds; d grids {3, 4, 5, 6, 8} (linear) and {2, 3, 4, 6} (curved); images: the ood_benchmark cpu models,
  2,000 test points, scikit-dimension on 5,000 training images.
* ``paper``: as ``cpu`` with 5 seeds and 20,000 points per estimator on the images.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Experiment, save_figure, start, write_table  # noqa: E402

NAME = "intrinsic_dimension"
DATA_DIM = 20
KNOWN = {"linear": 5, "curved": 3}
NOISE = {"linear": 0.05, "curved": 0.02}


def known_data(kind: str, n: int, seed: int) -> np.ndarray:
    """Points of known dimension in R^20 (see the module docstring); the embedding is fixed by ``seed``."""
    g = torch.Generator().manual_seed(1000 + seed)
    if kind == "linear":
        feats = torch.randn(n, 5, generator=g)
    else:
        t = 2 * torch.rand(n, 3, generator=g) - 1
        feats = torch.cat([t, 0.5 * t**2, 0.5 * t[:, :1] * t[:, 1:2]], 1)
    q = torch.linalg.qr(torch.randn(DATA_DIM, feats.shape[1], generator=g))[0]
    return (feats @ q.T + NOISE[kind] * torch.randn(n, DATA_DIM, generator=g)).numpy()


def dim_row(data: str, true_dim: float, seed: int, estimator: str, latent_dim: float, estimate: float, *,
            local_mean: float = math.nan, threshold: float = math.nan, noise_std: float = math.nan) -> dict:
    """One row of ``dimension.csv`` (fixed columns)."""
    return {"data": data, "true_dim": true_dim, "seed": seed, "estimator": estimator, "latent_dim": latent_dim,
            "estimate": estimate, "local_mean": local_mean, "threshold": threshold, "noise_std": noise_std}


def skdim_estimates(x: np.ndarray) -> dict[str, float]:
    """scikit-dimension's global estimates (imported lazily: ``pip install injflow[dimension]``)."""
    import skdim

    estimators = {
        "MLE (k=20)": skdim.id.MLE(K=20),
        "TwoNN": skdim.id.TwoNN(),
        "lPCA (FO)": skdim.id.lPCA(ver="FO", verbose=False),
        "CorrInt (k 10-20)": skdim.id.CorrInt(k1=10, k2=20),
    }
    out = {}
    for name, est in estimators.items():
        out[name] = float(est.fit(x).dimension_)
    return out


def fit_estimator(exp: Experiment, x: np.ndarray, latent_dim: int, seed: int) -> Any:
    from injflow.sklearn import InjectiveFlowEstimator

    return InjectiveFlowEstimator(latent_dim=latent_dim, max_epochs=exp.pick(2, 40, 40), hidden_features=(128, 128),
                                  beta=10.0, batch_size=100, lr=2e-3, seed=seed).fit(x)


def known_answers(exp: Experiment) -> tuple[list[dict], list[dict], dict]:
    """Parts 1 and 2: dimension estimates at the largest d of each grid, and held-out nll_D per d."""
    from injflow.dimension import estimate_dimension

    n_train, n_test = exp.pick(400, 5000, 5000), exp.pick(100, 1000, 1000)
    seeds = list(range(exp.pick(1, 3, 5)))
    grids = {"linear": exp.pick([2, 3], [3, 4, 5, 6, 8], [3, 4, 5, 6, 8]), "curved": exp.pick([2, 3], [2, 3, 4, 6], [2, 3, 4, 6])}
    dim_rows, select_rows, spectra = [], [], {}
    for kind in ("linear", "curved"):
        for seed in seeds:
            x = known_data(kind, n_train + n_test, seed)
            train, test = x[:n_train], x[n_train:]
            for d in grids[kind]:
                t0 = time.perf_counter()
                est = fit_estimator(exp, train, d, seed)
                secs = time.perf_counter() - t0
                select_rows.append({"data": kind, "true_dim": KNOWN[kind], "seed": seed, "latent_dim": d,
                                    "heldout_nll_D": -est.score(test), "noise_std": est.off_manifold_noise_.std,
                                    "train_s": round(secs, 1)})
                if d != max(grids[kind]):
                    continue
                result = estimate_dimension(est.flow_, torch.as_tensor(test, dtype=torch.float32),
                                            noise=est.off_manifold_noise_)
                spectra.setdefault(kind, []).append(result.decoder_singular_values)
                common = dict(threshold=result.threshold, noise_std=result.noise.std)
                dim_rows.append(dim_row(kind, KNOWN[kind], seed, "injflow (decoder)", d, result.dimension,
                                        local_mean=float(result.local.double().mean()), **common))
                dim_rows.append(dim_row(kind, KNOWN[kind], seed, "injflow (gap)", d, result.gap, noise_std=result.noise.std))
                dim_rows.append(dim_row(kind, KNOWN[kind], seed, "injflow (encoder)", d, int(result.encoder_local.median()),
                                        local_mean=float(result.encoder_local.double().mean()), **common))
                for name, value in skdim_estimates(train).items():
                    dim_rows.append(dim_row(kind, KNOWN[kind], seed, name, math.nan, round(value, 2)))
                exp.log(f"{kind} seed {seed}: injflow {result.dimension} (gap {result.gap}) at d={d}; "
                        f"{secs:.0f} s per fit")
    return dim_rows, select_rows, spectra


def one_standard_error(select_rows: list[dict]) -> list[dict]:
    """Per data set: mean ± standard error of held-out nll_D per d over seeds, and the d the rule picks."""
    from injflow.dimension import select_latent_dim

    out = []
    for kind in ("linear", "curved"):
        rows = [r for r in select_rows if r["data"] == kind]
        dims = sorted({r["latent_dim"] for r in rows})
        seeds = sorted({r["seed"] for r in rows})
        scores = np.array([[-next(r["heldout_nll_D"] for r in rows if r["latent_dim"] == d and r["seed"] == s)
                            for s in seeds] for d in dims])
        results = {"params": [{"latent_dim": d} for d in dims], "mean_test_score": scores.mean(1),
                   "std_test_score": scores.std(1), **{f"split{i}_test_score": scores[:, i] for i in range(len(seeds))}}
        chosen = dims[select_latent_dim(results)]
        for i, d in enumerate(dims):
            out.append({"data": kind, "true_dim": KNOWN[kind], "latent_dim": d, "mean_heldout_nll_D": float(-scores[i].mean()),
                        "std": float(scores[i].std()), "seeds": len(seeds), "argmin": d == dims[int(np.argmax(scores.mean(1)))],
                        "chosen_by_1se_rule": d == chosen})
    return out


def images(exp: Experiment) -> tuple[list[dict], dict]:
    """Part 3: MNIST and Fashion-MNIST, FIF d = 32 (the ood_benchmark models) and scikit-dimension."""
    import ood_benchmark

    from injflow.data import load_dataset
    from injflow.dimension import estimate_dimension
    from injflow.loading import load_run, load_run_data

    rows, spectra = [], {}
    runs = exp.args.ood_runs or (exp.out / "campaign")
    bench = ood_benchmark.Experiment(name="ood_benchmark", scale=exp.scale, out=exp.out,
                                     args=argparse.Namespace(**{**vars(exp.args), "runs": runs}))
    for dataset in ood_benchmark.DATASETS if exp.scale != "smoke" else ("mnist",):
        run_dir = ood_benchmark.train(bench, "fif", dataset)
        folder, config, flow = load_run(run_dir, samplers=False)
        data = load_run_data(config)
        x = data.test[: exp.pick(100, 2000, 10_000)]
        t0 = time.perf_counter()
        result = estimate_dimension(flow, x, x_fit=data.train)
        spectra[dataset] = result.decoder_singular_values
        common = dict(threshold=result.threshold, noise_std=result.noise.std)
        d = flow.latent_dim
        rows.append(dim_row(dataset, math.nan, 0, "injflow (decoder)", d, result.dimension,
                            local_mean=float(result.local.double().mean()), **common))
        rows.append(dim_row(dataset, math.nan, 0, "injflow (gap)", d, result.gap, noise_std=result.noise.std))
        rows.append(dim_row(dataset, math.nan, 0, "injflow (encoder)", d, int(result.encoder_local.median()),
                            local_mean=float(result.encoder_local.double().mean()), **common))
        for factor in (1.0, 4.0):  # how much the threshold's factor matters
            n_above = int((result.decoder_singular_values > factor * result.noise.std).sum(1).median())
            rows.append(dim_row(dataset, math.nan, 0, f"injflow (decoder, factor {factor:g})", d, n_above,
                                threshold=factor * result.noise.std, noise_std=result.noise.std))
        exp.log(f"{dataset}: injflow {result.dimension} (gap {result.gap}, encoder {int(result.encoder_local.median())}) "
                f"of d={flow.latent_dim} in {time.perf_counter() - t0:.0f} s")
        pixels = load_dataset(dataset, seed=0, n_train=exp.pick(300, 5000, 20_000), n_val=100, n_test=100).train
        x_np = pixels.flatten(1).double().numpy()
        t0 = time.perf_counter()
        for name, value in skdim_estimates(x_np).items():
            rows.append(dim_row(dataset, math.nan, 0, name, math.nan, round(value, 2)))
        exp.log(f"{dataset}: scikit-dimension on {x_np.shape[0]} images in {time.perf_counter() - t0:.0f} s")
    return rows, spectra


def spectra_figure(spectra: dict[str, list | torch.Tensor], thresholds: dict[str, float], path: Path, note: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(spectra), figsize=(4.2 * len(spectra), 3.5), squeeze=False)
    for ax, (name, sv) in zip(axes[0], spectra.items()):
        sv = torch.cat(sv) if isinstance(sv, list) else sv
        idx = np.arange(1, sv.shape[1] + 1)
        q = torch.quantile(sv, torch.tensor([0.1, 0.5, 0.9], dtype=sv.dtype), dim=0).numpy()
        ax.plot(idx, q[1], "o-", ms=3)
        ax.fill_between(idx, q[0], q[2], alpha=0.25)
        ax.axhline(thresholds[name], color="k", ls="--", lw=0.9, label="threshold 2σ̂ (mean)")
        ax.set_yscale("log")
        ax.set_xlabel("index i")
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("σ_i of g'(f(x)) (median, q10-q90)")
    fig.tight_layout()
    return save_figure(fig, path, note=note)


def main(argv: list[str] | None = None) -> None:
    exp = start(NAME, __doc__, argv, extra_args=[
        (("--ood-runs",), {"type": Path, "default": None,
                           "help": "the run folders of experiments/ood_benchmark.py (--runs there); default <out>/campaign"}),
        (("--parts",), {"nargs": "+", "choices": ("known", "images"), "default": ["known", "images"],
                        "help": "which parts to run (default both)"}),
    ])
    torch.manual_seed(0)
    # Each part writes its own tables and figure, so the parts can run as separate invocations into one folder;
    # summary.json keeps the results of the parts run before (by part).
    previous = exp.out / "summary.json"
    by_part = json.loads(previous.read_text()).get("by_part", {}) if previous.is_file() else {}
    if "known" in exp.args.parts:
        dim_rows, select_rows, known_spectra = known_answers(exp)
        select = one_standard_error(select_rows)
        write_table(dim_rows, exp.out / "known_dimension")
        write_table(select_rows, exp.out / "heldout_nll_D")
        write_table(select, exp.out / "selection")
        spectra = {f"{kind} ({KNOWN[kind]}-d in R^20)": sv for kind, sv in known_spectra.items()}
        thresholds = {f"{kind} ({KNOWN[kind]}-d in R^20)": float(np.mean(
            [r["threshold"] for r in dim_rows if r["data"] == kind and r["estimator"] == "injflow (decoder)"]))
            for kind in known_spectra}
        spectra_figure(spectra, thresholds, exp.out / "spectra_known",
                       f"{exp.scale} scale: FIF at the largest d of each grid, held-out points, all seeds pooled; "
                       f"dashed: threshold 2 x off-manifold noise std (mean over seeds)")
        by_part["known"] = {"estimates": json.loads(json.dumps(dim_rows, default=float)),
                            "selection": {r["data"]: r["latent_dim"] for r in select if r["chosen_by_1se_rule"]},
                            "wall_time_s": round(exp.elapsed, 1)}
    if "images" in exp.args.parts:
        t0 = exp.elapsed
        image_rows, image_spectra = images(exp)
        write_table(image_rows, exp.out / "image_dimension")
        thresholds = {name: next(r["threshold"] for r in image_rows if r["data"] == name
                                 and r["estimator"] == "injflow (decoder)") for name in image_spectra}
        spectra_figure(dict(image_spectra), thresholds, exp.out / "spectra_images",
                       f"{exp.scale} scale: FIF d=32 (experiments/ood_benchmark.py models), test points; "
                       f"dashed: threshold 2 x off-manifold noise std")
        by_part["images"] = {"estimates": json.loads(json.dumps(image_rows, default=float)),
                             "wall_time_s": round(exp.elapsed - t0, 1)}
    exp.finish(parts=exp.args.parts, known_dims=KNOWN, noise=NOISE, data_dim=DATA_DIM, by_part=by_part)


if __name__ == "__main__":
    main()
