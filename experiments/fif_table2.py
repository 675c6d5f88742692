"""FIF table 2: injective flows on CelebA under an equal wall-clock budget, as a campaign.

FIF §5.2 and App. E.3: every model trains for the **same wall clock** ("five hours on a single NVIDIA A40") and is
scored by FID and IS of samples from the standard-normal latent ("N sampler") and from a GMM fitted to the encoded
training data. FIF uses the FIF-ConvNet (table 11: a conv autoencoder with four fully-connected ResBlocks, d = 64,
34.3M parameters), Adam 1e-3, weight decay 1e-4, batch 256, K = 1, a student-t latent, and **β rising linearly from
20 to 40 over the training** (``configs/paper/fif-celeba-fif-convnet.yaml``).

The budget is the engine's ``train.max_time`` (seconds); the β schedule is defined over the budget (the engine
spreads it over the elapsed fraction of ``max_time``), so β reaches 40 when the time is up whatever the step rate.

Methods are a registry (:data:`METHODS`): FIF, DNF (Horvat & Pfister 2021) and Trumpet (Kothari et al. 2021), each
with its own engine config and invertible architecture (``configs/{paper,small}/{dnf,trumpet}-celeba.yaml``); the
table compares every registered method at the same budget. Chosen for the budget runs: DNF trains with a constant
learning rate (its cosine schedule spans a number of steps, which a wall-clock budget does not have), and Trumpet's
stage switch at cpu scale is half of the budget (``manifold_fraction`` 0.5; the paper config keeps its 10 manifold
epochs). Nothing is selected (one configuration per method); ``--seeds`` gives mean ± std over
training seeds (the paper's ± is not explained).

Scales:

* ``smoke``: scikit-learn digits, an MLP, 20 steps, pooled-pixel features (not FID), n = 32;
  ``--datasets celeba --data-root DIR``: the FIF-ConvNet (CelebA column) for 2 steps on small upstream-format files.
* ``cpu``: Fashion-MNIST as the offline stand-in for CelebA, the FIF-ConvNet **MNIST column** of table 11 (4.0M at
  d = 64: channels 32-256, ResBlock(512)), 20k training images, a **300 s budget** per model on one thread (paper: 5 h on an
  A40), FID on n = 100 with a reference disjoint from the reconstructed images; one seed.
* ``paper``: CelebA, the paper's config, ``train.max_time = 18000`` s, n = 10k, 3 seeds; for a GPU.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import campaign as C  # noqa: E402
from common import save_figure, start, write_table  # noqa: E402

NAME = "fif_table2"


@dataclasses.dataclass(frozen=True)
class Method:
    """A row of table 2: a label, the engine config and its overrides, and the paper's numbers (FID/IS, N, GMM)."""

    label: str
    configs: dict[str, str]  # scale -> config (relative to configs/)
    overrides: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)  # scale -> the method's own overrides
    paper: dict[str, tuple[float, float | None, float]] = dataclasses.field(default_factory=dict)
    parameters: str = ""


#: label → method. FIF table 2 numbers: sampler → (FID, ± , IS).
METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Adds a row to table 2 (e.g. DNF or Trumpet, trained by their own engine config)."""
    if method.label in METHODS:
        raise ValueError(f"method {method.label!r} is registered twice")
    METHODS[method.label] = method
    return method


_SMOKE_MLP = ("model.architecture=mlp", "model.latent_dim=4", "model.options={hidden_features: [32]}")
register(Method("FIF", {"smoke": "paper/fif-celeba-fif-convnet.yaml", "cpu": "paper/fif-celeba-fif-convnet.yaml",
                        "paper": "paper/fif-celeba-fif-convnet.yaml"},
                overrides={"smoke": _SMOKE_MLP,
                           "cpu": ("model.options={channel_factor: 32, n_blocks: 4, block_width: 512, batch_norm: true}",)},
                parameters="34.3M", paper={"N": (47.3, 1.39, 1.7), "GMM": (37.4, 1.35, 2.0)}))
register(Method("DNF", {"smoke": "small/dnf-celeba.yaml", "cpu": "small/dnf-celeba.yaml", "paper": "paper/dnf-celeba.yaml"},
                overrides={s: ("optim.scheduler.name=constant",) + (
                    ("model.latent_dim=4", "model.options={outer_layers: 2, outer_hidden_features: [16], inner_layers: 2, "
                     "inner_hidden_features: [16], transform: affine, inner_transform: affine}") if s == "smoke" else ())
                    for s in ("smoke", "cpu", "paper")},
                parameters="39.4M", paper={"N": (55.6, 0.59, 1.9), "GMM": (52.7, 0.33, 2.0)}))
register(Method("Trumpet", {"smoke": "small/trumpet-celeba.yaml", "cpu": "small/trumpet-celeba.yaml",
                            "paper": "paper/trumpet-celeba.yaml"},
                overrides={"smoke": ("model.latent_dim=4", "model.options={stage_layers: 1, hidden_features: [16], "
                                     "inner_layers: 1, inner_hidden_features: [16], expansion: pad}")},
                parameters="19.1M", paper={"N": (56.2, 1.39, 1.8), "GMM": (47.7, 2.24, 1.9)}))
#: Rows of FIF table 2 that are not registered here (none since DNF and Trumpet are).
PAPER_OTHERS: dict[str, dict[str, Any]] = {}
SAMPLERS = {"N": "prior", "GMM": "gmm"}


def budget_overrides(seconds: float) -> tuple[list[str], str]:
    """The wall-clock budget as config overrides (``train.max_time``; no step or epoch limit), and its description."""
    return [f"train.max_time={seconds:g}", "train.max_steps=-1", "train.max_epochs=100000"], f"train.max_time={seconds:g}"


def scale_overrides(exp: Any, dataset: str) -> tuple[list[str], str]:
    root = [f"data.root={exp.args.data_root}"] if exp.args.data_root else []
    budget = exp.args.budget or exp.pick(None, 300.0, 18_000.0)
    if exp.scale == "smoke" and dataset != "celeba-files":
        return ["data.name=digits", "data.options={n_val: 64, n_test: 64, flatten: true}", "data.batch_size=64",
                "train.max_steps=20", "train.max_epochs=1000", "train.gmm_components=3", "train.log_every_n_steps=5",
                "train.num_threads=1"], "train.max_steps=20"
    if exp.scale == "smoke":
        return root + ["data.batch_size=4", "model.latent_dim=4", "train.max_steps=2", "train.max_epochs=1000", "train.gmm_components=2",
                       "train.log_every_n_steps=1"], "train.max_steps=2"
    if exp.scale == "cpu":
        extra, how = budget_overrides(budget)
        return root + ["data.name=fashion_mnist", "data.options={n_train: 20000, n_val: 1000}",
                       "train.log_every_n_steps=10", *extra], how
    extra, how = budget_overrides(budget)
    return root + extra, how


def build_plan(exp: Any) -> tuple[C.Plan, str]:
    dataset = "celeba-files" if exp.args.datasets and "celeba" in exp.args.datasets else "default"
    overrides, how = scale_overrides(exp, dataset)
    seeds = range(exp.args.seeds or exp.pick(1, 1, 3))
    scale = exp.scale
    methods = [m for m in METHODS.values() if not (dataset == "celeba-files" and m.label != "FIF")]
    runs = [C.RunSpec(name=f"{m.label.lower()}-seed{s}", config=m.configs[scale],
                      overrides=overrides + list(m.overrides.get(scale, ())) + [f"train.seed={s}"],
                      group=f"{m.label} seed {s}", params={"method": m.label, "seed": s})
            for m in methods for s in seeds]
    features = "pixels" if exp.scale == "smoke" else "inception"
    n = exp.args.n_fid or exp.pick(4 if dataset == "celeba-files" else 32, 100, 10_000)
    plan = C.Plan(name=NAME, scale=exp.scale, runs=runs, seed=0, validation=None,
                  test=C.EvalSpec("test", n, ["prior", "gmm"], disjoint=exp.scale != "paper", features=features,
                                  inception_score=True),
                  criteria={"only": None}, notes={"budget": how})
    return plan, how


def assemble(result: C.CampaignResult, exp: Any) -> dict[str, Any]:
    plan = result.plan
    metric = C.metric_name(plan.test.features)
    rows = []
    for label, method in METHODS.items():
        recs = [result.records[r.name] for r in plan.runs if r.params["method"] == label]
        if not recs:
            continue
        row: dict[str, Any] = {"model": label, "parameters": method.parameters, "seeds": len(recs)}
        for col, sampler in SAMPLERS.items():
            fids = [v for v in (C.value(r, "test", sampler) for r in recs) if v is not None]
            iss = [v for v in (C.value(r, "test", sampler, "is") for r in recs) if v is not None]
            row[f"{col}_fid"] = statistics.fmean(fids) if fids else None
            row[f"{col}_fid_std"] = statistics.stdev(fids) if len(fids) > 1 else None
            row[f"{col}_is"] = statistics.fmean(iss) if iss else None
            paper = method.paper.get(col, (None, None, None))
            row[f"paper_{col}_fid"], row[f"paper_{col}_fid_std"], row[f"paper_{col}_is"] = paper
        row["train_steps"] = [(r.train or {}).get("global_step") for r in recs]
        row["train_wall_s"] = [(r.train or {}).get("wall_s") for r in recs]
        rows.append(row)
    for label, paper in PAPER_OTHERS.items():
        if label not in METHODS:
            rows.append({"model": f"{label} (paper only, not run)", "parameters": paper["parameters"], "seeds": 0,
                         **{k: None for col in SAMPLERS for k in (f"{col}_fid", f"{col}_fid_std", f"{col}_is")},
                         **{f"paper_{col}_{k}": paper[col][i] for col in SAMPLERS
                            for i, k in enumerate(("fid", "fid_std", "is"))},
                         "train_steps": [], "train_wall_s": []})
    # same columns in every row, in the same order (write_table checks)
    keys = list(rows[0])
    rows = [{k: r.get(k) for k in keys} for r in rows]
    write_table(rows, exp.out / "table2")
    note = (f"{exp.scale} scale: budget {plan.notes['budget']}; {metric} on n = {plan.test.n} (papers: 10k); "
            f"seeds {len(set(r.params['seed'] for r in plan.runs))}")
    plot(rows, exp.out / "table2", note, metric)
    return {"metric": metric, "is_note": C.is_column_note(plan), "budget": plan.notes["budget"],
            "table2": rows, "n_fid": plan.test.n}


def plot(rows: list[dict[str, Any]], path: Path, note: str, metric: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    ours = [r for r in rows if r["seeds"]]
    fig, ax = plt.subplots(figsize=(5, 3))
    x = np.arange(len(ours))
    for i, col in enumerate(SAMPLERS):
        ax.bar(x + (i - 0.5) * 0.38, [r[f"{col}_fid"] or 0 for r in ours], 0.38,
               yerr=[r[f"{col}_fid_std"] or 0 for r in ours], label=f"{col} sampler")
    ax.set_xticks(x, [r["model"] for r in ours])
    ax.set_ylabel(f"test {metric.split(' (')[0]}", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, note=note)


def main(argv: list[str] | None = None) -> int:
    exp = start(NAME, __doc__, argv, extra_args=C.campaign_args() + [
        (("--budget",), {"type": float, "default": None, "help": "seconds of training per model (cpu 300, paper 18000)"}),
        (("--seeds",), {"type": int, "default": None, "help": "training seeds per method (smoke/cpu 1, paper 3)"}),
        (("--datasets",), {"nargs": "+", "choices": ["celeba"], "default": None,
                           "help": "smoke: run the CelebA path on small files under --data-root"}),
        (("--n-fid",), {"type": int, "default": None, "help": "images per FID set (smoke 32, cpu 100, paper 10k)"}),
    ])
    plan, _ = build_plan(exp)
    return C.run_from_args(exp, plan, assemble)


if __name__ == "__main__":
    sys.exit(main())
