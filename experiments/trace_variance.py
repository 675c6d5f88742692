"""Variance of the FIF trace estimator: relative gradient distance against the number of Hutchinson samples K.

Reproduces FIF (Sorrenson, Draxler et al., ICLR 2024) **fig. 6** (App. D.1.1, eq. 96; noise: App. D.3.5):

    relative gradient distance(K) = ‖∇ surrogate(K) − ∇ exact‖₂ / ‖∇ exact‖₂

for the surrogate with the gradient on the encoder (FIF eq. 17, table 4), estimated in latent space (noise in
ℝ^d, tr f'g') and in data space (noise in ℝ^D, tr g'f'), with orthogonalised Gaussian noise (App. D.3.5) and
independent noise (scaled Gaussian = ``sphere``; at batch size 1 also ``gaussian`` and ``rademacher``), at several
batch sizes. The gradient is taken of the batch mean of the surrogate w.r.t. all parameters of a trained MNIST
model with d = 16, D = 784.

The exact surrogate gradient is the K = d orthogonal latent estimate (tr(Qᵀ A Q) = tr A, FIF eq. 109). By
cyclicity tr(∂f'·sg(g')) = tr(sg(g')·∂f'), so it is also the exact data-space gradient; the script checks this
once with K = D = 784 orthogonal data-space noise (``exact_check`` in summary.json).

Because the gradient is linear in each per-sample trace estimate, E‖ĝ − g‖² follows the variance formulas
exactly: ∝ 1/K for independent noise (FIF eq. 122) and ∝ (n − K)/(K(n − 1)) for orthogonal noise (eq. 121).
The table lists the root-mean-square distance this predicts from the K = 1 measurement next to the measured one.

Model and evaluation: the networks are in **eval mode** (BatchNorm uses its running statistics, so every sample's
Jacobian is its own and the batch size only averages independent per-sample estimates).

Scales:

* ``smoke``: FIF-ConvNet (table 11) with 4 channels, 300 training images, 1 epoch; batch sizes 1, 4; 2 draws.
* ``cpu``: FIF-ConvNet with channel factor 8 and ResBlock width 128 (0.25M parameters; table 11: 32 / 512,
  3.3M), d = 16, trained with FIF (β = 10, K = 1, Adam 1e-3) on 6000 MNIST images for 4 epochs (240 steps);
  batch sizes 1, 10, 100 (random test images per draw); latent K = 1, 2, 4, 8, 16 (20 draws; 10 at batch
  size 100), data K = 1, 4, 16, 64 (+ 256 at batch size 1; 3–4 draws); independent noise in data space at
  batch size 1 only.
* ``paper``: table 11's FIF-ConvNet (3.3M), d = 16, full MNIST, 400 epochs (the training length of App. E.1.2);
  every K on a doubling grid up to d and D, 100 draws.

``--conditional`` trains on conditional MNIST, as the paper's fig. 6 model ("a converged model trained on
conditional MNIST"): the nets take the digit (``injflow.nets.conditional``) and each gradient is taken with the
batch's own labels. Without it the model is unconditional (the recorded cpu results).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Experiment, fit_run, save_figure, start, temporary_run_dir, write_table  # noqa: E402

NAME = "trace_variance"
LATENT_DIM = 16  # FIF fig. 6: "d = 16, D = 784"


@dataclass(frozen=True)
class Setting:
    """One line of fig. 6: trace space, noise kind, batch size, and the K grid with its number of draws."""

    space: str
    noise: str
    batch_size: int
    ks: tuple[int, ...]
    draws: int


def model_config(exp: Experiment) -> dict:
    """The FIF training run (FIF eq. 7/17 with the paper's estimator choices, §5 "Implementation details")."""
    n_train = exp.pick(300, 6000, 50_000)
    conditional = exp.args.conditional
    return {
        "data": {"name": "conditional_mnist" if conditional else "mnist", "options": {"n_train": n_train, "n_val": exp.pick(100, 500, 10_000),
                                              "n_test": exp.pick(200, 2000, 10_000)},
                 "batch_size": 100},  # App. E.4: batch size 100 on MNIST
        "model": {"architecture": "fif_convnet", "latent_dim": LATENT_DIM, "conditional": conditional,
                  # table 11 (MNIST): channel factor 32, ResBlock(512); smaller at smoke/cpu scale
                  "options": exp.pick({"channel_factor": 4, "block_width": 64},
                                      {"channel_factor": 8, "block_width": 128}, {})},
        "method": {"name": "fif", "beta": 10.0, "n_hutchinson": 1, "noise": "orthogonal",
                   "trace_space": "latent", "grad_to": "encoder", "jacobian_at": "x", "mode": "mixed"},
        "optim": {"name": "adam", "lr": 1e-3},  # App. E.3 (FIF-ConvNet): LR 1e-3
        "train": {"seed": exp.args.seed, "max_epochs": exp.pick(1, 4, 400), "samplers": []},
    }


def settings(exp: Experiment) -> list[Setting]:
    """The configurations of fig. 6 at this scale."""
    if exp.scale == "smoke":
        out = []
        for b in (1, 4):
            out += [Setting("latent", "orthogonal", b, (1, 4, 16), 2), Setting("latent", "sphere", b, (1, 4, 16), 2),
                    Setting("data", "orthogonal", b, (1, 16), 2)]
        return out
    if exp.scale == "cpu":
        latent_k, data_k = (1, 2, 4, 8, 16), (1, 4, 16, 64)
        out = [Setting("latent", noise, 1, latent_k, 20) for noise in ("orthogonal", "sphere", "gaussian", "rademacher")]
        out += [Setting("data", "orthogonal", 1, data_k + (256,), 4), Setting("data", "sphere", 1, data_k, 4)]
        out += [Setting("latent", noise, 10, latent_k, 20) for noise in ("orthogonal", "sphere")]
        out += [Setting("latent", noise, 100, latent_k, 10) for noise in ("orthogonal", "sphere")]
        out += [Setting("data", "orthogonal", 10, data_k, 4), Setting("data", "orthogonal", 100, data_k, 3)]
        return out
    latent_k, data_k = (1, 2, 4, 8, 16), (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 784)
    out = []
    for b in (1, 10, 100):
        out += [Setting("latent", noise, b, latent_k, 100) for noise in ("orthogonal", "sphere")]
        out += [Setting("data", noise, b, data_k, 100) for noise in ("orthogonal", "sphere")]
    return out


def train_model(exp: Experiment) -> tuple[torch.nn.Module, Tensor, Tensor | None, dict]:
    """Trains the FIF model and returns it (eval mode), the test images, their labels (conditional model, else None)
    and a description of the run."""
    from injflow.data import load_dataset
    from injflow.nets import count_parameters

    config = model_config(exp)
    t0 = time.perf_counter()
    with temporary_run_dir("trace_variance") as run_dir:
        result = fit_run(config, run_dir=run_dir, threads=torch.get_num_threads(), device=exp.args.device)
    flow = result.flow.eval()
    steps = result.global_step
    data = load_dataset(config["data"]["name"], seed=0, **config["data"]["options"])
    labels = data.test_labels.to(exp.args.device) if config["model"]["conditional"] else None
    info = {"model": config, "n_parameters": count_parameters(flow.encoder, flow.decoder),
            "train_steps": steps, "train_time_s": round(time.perf_counter() - t0, 1), "bn_mode": "eval"}
    with torch.no_grad():
        x = data.test[:500].to(exp.args.device)
        c = None if labels is None else labels[:500]
        info["test_reconstruction_error"] = float((flow.decode(flow.encode(x, c), c) - x).pow(2).flatten(1).sum(1).mean())
    exp.log(f"trained {info['n_parameters']} parameters, {steps} steps in {info['train_time_s']} s; "
            f"test ‖x̂ − x‖² = {info['test_reconstruction_error']:.2f}")
    return flow, data.test.to(exp.args.device), labels, info


def surrogate_gradient(flow: torch.nn.Module, x: Tensor, *, space: str, noise: str, k: int,
                       generator: torch.Generator, c: Tensor | None = None) -> Tensor:
    """∇θ of the batch-mean surrogate (FIF eq. 17, gradient to the encoder) as one flat float64 vector."""
    from injflow.estimators import volume_change_surrogate

    params = [p for p in flow.parameters() if p.requires_grad]
    maps = flow.given(c)  # the model itself, or a view with the batch's labels fixed (conditional model)
    _, _, s = volume_change_surrogate(x, maps.encode, maps.decode, n_hutchinson=k, noise=noise,
                                      trace_space=space, grad_to="encoder", jacobian_at="x", mode="mixed",
                                      generator=generator)
    grads = torch.autograd.grad(s.mean(), params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten().double() for p, g in zip(params, grads)])


def measure(exp: Experiment, flow: torch.nn.Module, test: Tensor, setting_list: list[Setting],
            labels: Tensor | None = None) -> dict:
    """Relative distances ‖ĝ_K − g‖/‖g‖ (FIF eq. 96), keyed by (space, noise, batch, K): one value per draw.

    Each draw takes a fresh random batch of test images and its exact gradient (K = d, orthogonal, latent space),
    then every setting that still needs draws estimates the gradient on that batch with fresh noise.
    """
    gen = torch.Generator(device=test.device).manual_seed(exp.args.seed)  # noise is drawn on the model's device
    results: dict[tuple, list[float]] = {}
    for b in sorted({s.batch_size for s in setting_list}):
        group = [s for s in setting_list if s.batch_size == b]
        t0 = time.perf_counter()
        for draw in range(max(s.draws for s in group)):
            idx = torch.randperm(test.shape[0], generator=gen, device=gen.device)[:b]
            x, c = test[idx], None if labels is None else labels[idx]
            exact = surrogate_gradient(flow, x, space="latent", noise="orthogonal", k=LATENT_DIM, generator=gen, c=c)
            norm = exact.norm()
            for s in group:
                if draw >= s.draws:
                    continue
                for k in s.ks:
                    g = surrogate_gradient(flow, x, space=s.space, noise=s.noise, k=k, generator=gen, c=c)
                    results.setdefault((s.space, s.noise, b, k), []).append(float((g - exact).norm() / norm))
        exp.log(f"batch size {b}: {len(group)} settings done in {time.perf_counter() - t0:.0f} s")
    return results


def exact_check(exp: Experiment, flow: torch.nn.Module, test: Tensor, labels: Tensor | None = None) -> dict:
    """Data-space K = D orthogonal (exact) vs latent-space K = d orthogonal (exact): both are ∇ tr(∂f' sg(g'))."""
    gen = torch.Generator(device=test.device).manual_seed(exp.args.seed + 1)
    x, c = test[:1], None if labels is None else labels[:1]
    big_d = x[0].numel()
    t0 = time.perf_counter()
    latent = surrogate_gradient(flow, x, space="latent", noise="orthogonal", k=LATENT_DIM, generator=gen, c=c)
    data = surrogate_gradient(flow, x, space="data", noise="orthogonal", k=big_d, generator=gen, c=c)
    rel = float((data - latent).norm() / latent.norm())
    exp.log(f"exact check: data K={big_d} vs latent K={LATENT_DIM}: relative distance {rel:.2e}")
    return {"batch_size": 1, "data_k": big_d, "latent_k": LATENT_DIM, "relative_distance": rel,
            "time_s": round(time.perf_counter() - t0, 1)}


def predicted_factor(noise: str, k: int, n: int) -> float:
    """√(E‖ĝ_K − g‖² / E‖ĝ_1 − g‖²): (n − K)/(K(n − 1)) for orthogonal noise (FIF eq. 121), 1/K otherwise (eq. 122)."""
    return math.sqrt((n - k) / (k * (n - 1))) if noise == "orthogonal" else math.sqrt(1.0 / k)


def table(results: dict, big_d: int) -> list[dict]:
    """One row per (space, noise, batch size, K): mean, std, rms of the relative distance and the predicted rms."""
    rows = []
    for (space, noise, b, k), values in sorted(results.items()):
        v = torch.tensor(values, dtype=torch.float64)
        n = LATENT_DIM if space == "latent" else big_d
        rms1 = results.get((space, noise, b, 1))
        predicted = (math.sqrt(sum(r * r for r in rms1) / len(rms1)) * predicted_factor(noise, k, n)) if rms1 else float("nan")
        rows.append({"space": space, "noise": noise, "K": k, "batch_size": b,
                     "mean_rel_distance": float(v.mean()), "std_rel_distance": float(v.std()) if len(v) > 1 else 0.0,
                     "rms_rel_distance": float(v.pow(2).mean().sqrt()), "predicted_rms_from_K1": predicted,
                     "n_draws": len(values)})
    return rows


def figure(rows: list[dict], path: Path, note: str) -> Path:
    """Fig. 6 layout: data space (left), latent space (right); log-log distance vs K, one line per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    styles = {"orthogonal": "-", "sphere": "--", "gaussian": ":", "rademacher": "-."}
    batch_sizes = sorted({r["batch_size"] for r in rows})
    colours = {b: plt.cm.viridis(i / max(1, len(batch_sizes) - 1) * 0.85) for i, b in enumerate(batch_sizes)}
    for ax, space in zip(axes, ("data", "latent")):
        for noise in styles:
            for b in batch_sizes:
                sel = [r for r in rows if r["space"] == space and r["noise"] == noise and r["batch_size"] == b]
                if not sel:
                    continue
                ks = [r["K"] for r in sel]
                mean = [max(r["mean_rel_distance"], 1e-12) for r in sel]
                std = [r["std_rel_distance"] for r in sel]
                ax.errorbar(ks, mean, yerr=std, ls=styles[noise], color=colours[b], marker="o", ms=3, capsize=2,
                            label=f"B={b}, {noise}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("Hutchinson samples K")
        ax.set_title(f"trace in {space} space ({'D = 784' if space == 'data' else 'd = 16'})")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("relative gradient distance ‖ĝ_K − g‖ / ‖g‖")
    fig.tight_layout()
    return save_figure(fig, path, note=note)


def main(argv: list[str] | None = None) -> None:
    exp = start(NAME, __doc__, argv, extra_args=[
        (("--seed",), {"type": int, "default": 0, "help": "seed (default 0)"}),
        (("--conditional",), {"action": "store_true", "help": "a class-conditional model on conditional MNIST, as the paper"}),
    ])
    flow, test, labels, info = train_model(exp)
    setting_list = settings(exp)
    results = measure(exp, flow, test, setting_list, labels)
    big_d = test[0].numel()
    check = exact_check(exp, flow, test, labels) if exp.scale != "smoke" else None
    rows = table(results, big_d)
    write_table(rows, exp.out / "trace_variance")
    kind = "conditional" if exp.args.conditional else "unconditional"
    note = (f"{exp.scale} scale: {kind} MNIST, FIF-ConvNet {info['n_parameters'] / 1e6:.2f}M params, d=16, "
            f"{info['train_steps']} training steps, eval-mode BN; mean ± std over draws; "
            "solid = orthogonal, dashed = independent scaled Gaussian")
    figure(rows, exp.out / "trace_variance", note)
    exp.finish(**info, exact_check=check, conditional=exp.args.conditional,
               settings=[s.__dict__ for s in setting_list],
               notes="exact gradient = latent space, K = d = 16, orthogonal noise; eval-mode BatchNorm")


if __name__ == "__main__":
    main()
