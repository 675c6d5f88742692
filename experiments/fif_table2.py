"""FIF table 2: injective flows on CelebA under an equal wall-clock budget, as a sweep.

FIF §5.2 and App. E.3: every model trains for the **same wall clock** ("five hours on a single NVIDIA A40") and is
scored by FID and IS of samples from the standard-normal latent ("N sampler") and from a GMM fitted to the encoded
training data. FIF uses the FIF-ConvNet (table 11: a conv autoencoder with four fully-connected ResBlocks, d = 64,
34.3M parameters), Adam 1e-3, weight decay 1e-4, batch 256, K = 1, a student-t latent, and **β rising linearly from
20 to 40 over the training** (``configs/paper/fif-celeba-fif-convnet.yaml``).

The budget is the engine's ``train.max_time`` (seconds); the β schedule is defined over the budget (the engine
spreads it over the elapsed fraction of ``max_time``), so β reaches 40 when the time is up whatever the step rate.

The methods are the grid entries of the sweep specs ``configs/sweeps/fif_table2-<data set>-<scale>.yaml``: FIF,
DNF (Horvat & Pfister 2021) and Trumpet (Kothari et al. 2021), each with its own engine config and invertible
architecture (``configs/{paper,small}/{dnf,trumpet}-celeba.yaml``), one group per method and seed, ``select: all``
(nothing is selected: every trial is scored on the test split). :data:`METHODS` holds the rows' labels and the
paper's numbers, keyed by the config each row trains. Chosen for the budget runs: DNF trains with a constant
learning rate (its cosine schedule spans a number of steps, which a wall-clock budget does not have), and Trumpet's
stage switch at cpu scale is half of the budget (``manifold_fraction`` 0.5; the paper config keeps its 10 manifold
epochs). Several seeds (``train.seed`` in the paper spec's grid) give mean ± std over training seeds (the paper's
± is not explained).

Scales:

* ``smoke``: scikit-learn digits, an MLP, 20 steps, pooled-pixel features (not FID), n = 32;
  ``--datasets celeba --data-root DIR``: the FIF-ConvNet (CelebA column) for 2 steps on small upstream-format files.
* ``cpu``: Fashion-MNIST as the offline stand-in for CelebA, the FIF-ConvNet **MNIST column** of table 11 (4.0M at
  d = 64: channels 32-256, ResBlock(512)), 20k training images, a **300 s budget** per model on one thread (paper: 5 h on an
  A40), FID on n = 100 with a reference disjoint from the reconstructed images; one seed.
* ``paper``: CelebA, the paper's config, ``train.max_time = 18000`` s, n = 10k, 3 seeds; for a GPU.

One command per scale, resumable: rerunning it keeps finished trials and resumes killed ones (``injflow sweep``).
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sweep_tables as S  # noqa: E402
from common import save_figure, start, write_table  # noqa: E402

NAME = "fif_table2"


@dataclasses.dataclass(frozen=True)
class Method:
    """A row of table 2: its label, the config stems that train it (any scale), and the paper's numbers (FID/IS)."""

    label: str
    configs: tuple[str, ...]
    paper: dict[str, tuple[float, float | None, float]] = dataclasses.field(default_factory=dict)
    parameters: str = ""


#: label → method. FIF table 2 numbers: sampler → (FID, ± , IS).
METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Adds a row to table 2 (its trials come from the spec's grid entry with one of ``method.configs``)."""
    if method.label in METHODS:
        raise ValueError(f"method {method.label!r} is registered twice")
    METHODS[method.label] = method
    return method


register(Method("FIF", ("fif-celeba-fif-convnet",), parameters="34.3M",
                paper={"N": (47.3, 1.39, 1.7), "GMM": (37.4, 1.35, 2.0)}))
register(Method("DNF", ("dnf-celeba",), parameters="39.4M", paper={"N": (55.6, 0.59, 1.9), "GMM": (52.7, 0.33, 2.0)}))
register(Method("Trumpet", ("trumpet-celeba",), parameters="19.1M",
                paper={"N": (56.2, 1.39, 1.8), "GMM": (47.7, 2.24, 1.9)}))
#: Rows of FIF table 2 that are not registered here (none since DNF and Trumpet are).
PAPER_OTHERS: dict[str, dict[str, Any]] = {}
SAMPLERS = {"N": "prior", "GMM": "gmm"}


def method_of(record: Any) -> str:
    stem = Path(record.trial.config).stem
    return next(m.label for m in METHODS.values() if stem in m.configs)


def build_specs(exp: Any) -> list[Any]:
    dataset = {"smoke": "digits", "cpu": "fashion_mnist", "paper": "celeba"}[exp.scale]
    if exp.args.datasets and "celeba" in exp.args.datasets:
        dataset = "celeba"
    name = f"{NAME}-{dataset}-{exp.scale}"
    if not (S.SPECS / f"{name}.yaml").is_file():
        raise SystemExit(f"experiments/{NAME}.py: no spec configs/sweeps/{name}.yaml")
    return [S.load_table_spec(name, exp)]


def assemble(results: list[Any], exp: Any) -> dict[str, Any]:
    from injflow.sweep.scoring import is_note, metric_name

    result = results[0]
    spec = result.spec
    metric = metric_name(spec.test.features)
    # the limit that ends each trial's training: a step count where one is set (smoke), else the wall-clock budget
    budget = sorted({f"train.max_steps={c.train.max_steps}" if c.train.max_steps != -1 else f"train.max_time={c.train.max_time:g}"
                     for c in (S.config_of(result, r) for r in result.records if r.state == "completed")})
    rows = []
    for label, method in METHODS.items():
        recs = [r for r in result.records if method_of(r) == label]
        if not recs:
            continue
        row: dict[str, Any] = {"model": label, "parameters": method.parameters, "seeds": len(recs)}
        for col, sampler in SAMPLERS.items():
            fids = [v for v in (S.value(r, f"test/fid_{sampler}") for r in recs) if v is not None]
            iss = [v for v in (S.value(r, f"test/is_{sampler}") for r in recs) if v is not None]
            row[f"{col}_fid"] = statistics.fmean(fids) if fids else None
            row[f"{col}_fid_std"] = statistics.stdev(fids) if len(fids) > 1 else None
            row[f"{col}_is"] = statistics.fmean(iss) if iss else None
            paper = method.paper.get(col, (None, None, None))
            row[f"paper_{col}_fid"], row[f"paper_{col}_fid_std"], row[f"paper_{col}_is"] = paper
        row["train_steps"] = [r.step for r in recs]
        row["train_wall_s"] = [r.train_seconds for r in recs]
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
    seeds = len({r.trial.values.get("train.seed") for r in result.records})
    note = (f"{exp.scale} scale: budget {', '.join(budget)}; {metric} on n = {spec.test.n} (papers: 10k); seeds {seeds}")
    plot(rows, exp.out / "table2", note, metric)
    return {"metric": metric, "is_note": is_note(spec.test), "budget": ", ".join(budget), "table2": rows,
            "n_fid": spec.test.n}


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
    exp = start(NAME, __doc__, argv, extra_args=S.sweep_args() + [
        (("--datasets",), {"nargs": "+", "choices": ["celeba"], "default": None,
                           "help": "smoke: run the CelebA path (the FIF row) on small files under --data-root"}),
    ])
    return S.run_table(exp, build_specs(exp), assemble)


if __name__ == "__main__":
    sys.exit(main())
