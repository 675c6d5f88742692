"""Free-form flows (FFF, d = D) on 2-D densities with a known answer, against zuko's neural spline flow.

Paper: Draxler, Sorrenson et al., *Free-form flows: make any architecture a normalizing flow* (AISTATS 2024). FFF
turns any pair of equal-dimension networks into a normalizing flow: the encoder f is the flow, trained with
``−log p_Z(f(x)) − log|det f'(x)|`` through FIF's surrogate, and the decoder g ≈ f⁻¹ (reconstruction weight β)
samples. Here FFF is injflow's ``fff`` method trained by the engine (``injflow fit`` with ``method.name=fff``).

Set-up, per data set: FFF with a plain MLP encoder and decoder (``mlp``, 3 hidden layers of 128, SiLU, β = 10) trained
by the engine for a wall-clock budget (``train.max_time``, which includes the engine's validation and checkpoints),
and zuko's neural spline flow (NSF: 3 rational-quadratic spline coupling transforms, 8 bins, hidden 128 × 2) trained by
a plain loop on the same training set for the same wall-clock time; both Adam with a constant LR of 1e-3, batch 256. Both are scored by the exact test
negative log-likelihood (nats): FFF's is ``InjectiveFlow.log_prob`` at d = D, the change of variables of the encoder
(one slogdet of the 2 × 2 Jacobian per point); NSF's its own exact log-density. The true NLL of the same test points
(``injflow.data.toy.toy_log_prob``: analytic for the correlated Gaussian, the Gaussian mixture, eight Gaussians and
the checkerboard, by quadrature for two moons) is the known answer both should approach.

Outputs: ``fff_toy.csv/json`` (data set, model, seed, budget, steps, train seconds, test NLL, true NLL, gap,
FFF's reconstruction error, and the total mass of the model's and the true density on the plotted window: FFF's
change of variables is a normalised density only where its encoder is invertible, so a mass above 1 shows a fold), ``densities.png`` (true density, FFF, NSF on a grid, one row per data set),
``samples.png`` (test data, FFF samples g(z), NSF samples).

Scales:

* ``smoke``: two moons, 2,000 training points, 2 s per model.
* ``cpu``: all five data sets, 20,000 training points, 60 s per model, seed 0 (about 12 min).
* ``paper``: all five, 100,000 training points, 600 s per model, seeds 0–2.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fit_run, save_figure, start, temporary_run_dir, write_table  # noqa: E402

NAME = "fff_toy"
DATASETS = ("correlated_gaussian", "gaussian_mixture", "moons", "checkerboard", "eight_gaussians")
#: Plot window per data set (x range, y range).
WINDOWS = {
    "correlated_gaussian": ((-3.5, 3.5), (-3.5, 3.5)),
    "gaussian_mixture": ((-3.5, 3.5), (-2.5, 3.0)),
    "moons": ((-1.5, 2.5), (-1.0, 1.5)),
    "checkerboard": ((-4.5, 4.5), (-4.5, 4.5)),
    "eight_gaussians": ((-3.0, 3.0), (-3.0, 3.0)),
}


def fff_overrides(name: str, n_train: int, budget: float, seed: int) -> list[str]:
    return [
        f"data.name={name}", f"data.options={{n_train: {n_train}, n_val: 1000, n_test: 5000}}", f"data.seed={seed}",
        "data.batch_size=256", "model.architecture=mlp", "model.latent_dim=2",
        "model.options={hidden_features: [128, 128, 128], activation: silu}", "method.name=fff", "method.beta=10.0",
        "optim.lr=1e-3", "optim.scheduler.name=constant", f"train.max_time={budget}", "train.max_epochs=100000",
        f"train.seed={seed}", "train.samplers=[]", "train.checkpoint_interval=600",
    ]


def train_nsf(x: torch.Tensor, budget: float, seed: int) -> tuple[torch.nn.Module, int, float]:
    """zuko's NSF trained by maximum likelihood for ``budget`` wall-clock seconds (Adam, constant LR 1e-3, batch 256)."""
    import zuko

    torch.manual_seed(seed)
    flow = zuko.flows.NSF(features=2, transforms=3, bins=8, hidden_features=(128, 128))
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
    t0, steps = time.perf_counter(), 0
    while time.perf_counter() - t0 < budget:
        batch = x[torch.randint(0, x.shape[0], (256,))]
        loss = -flow().log_prob(batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    return flow.eval(), steps, time.perf_counter() - t0


def grid(name: str, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    (x0, x1), (y0, y1) = WINDOWS[name]
    xs, ys = torch.linspace(x0, x1, n), torch.linspace(y0, y1, n)
    xx, yy = torch.meshgrid(xs, ys, indexing="xy")
    return xx, yy, torch.stack([xx.flatten(), yy.flatten()], 1)


def main(argv: list[str] | None = None) -> None:
    exp = start(NAME, __doc__, argv)
    from injflow.data import load_dataset
    from injflow.data.toy import toy_log_prob

    names = exp.pick(("moons",), DATASETS, DATASETS)
    n_train = exp.pick(2000, 20_000, 100_000)
    budget = exp.pick(2.0, 60.0, 600.0)
    seeds = exp.pick((0,), (0,), (0, 1, 2))
    resolution = exp.pick(40, 300, 300)

    rows, densities, samples = [], {}, {}
    for name in names:
        for seed in seeds:
            data = load_dataset(name, seed=seed, n_train=n_train, n_val=1000, n_test=5000)
            true_nll = -float(toy_log_prob(name, data.test).mean())
            xx, yy, points = grid(name, resolution)

            exp.log(f"{name} seed {seed}: FFF for {budget:.0f} s")
            with temporary_run_dir(NAME) as run_dir:
                t0 = time.perf_counter()
                result = fit_run(None, fff_overrides(name, n_train, budget, seed), run_dir=run_dir,
                                 threads=exp.args.threads, device=exp.args.device)
                fff_seconds = time.perf_counter() - t0
                flow = result.flow.eval()
                steps = int(result.global_step)
            log_p, rec = flow.log_prob(data.test.to(flow.device), return_reconstruction=True)
            rows.append({"dataset": name, "model": "FFF (injflow fff, MLP 3x128)", "seed": seed, "budget_s": budget,
                         "steps": steps, "train_s": round(fff_seconds, 1), "test_nll": -float(log_p.mean()),
                         "true_nll": true_nll, "gap": -float(log_p.mean()) - true_nll,
                         "reconstruction": float(rec.mean())})

            exp.log(f"{name} seed {seed}: NSF for {budget:.0f} s")
            nsf, nsf_steps, nsf_seconds = train_nsf(data.train, budget, seed)
            with torch.no_grad():
                nsf_nll = -float(nsf().log_prob(data.test).mean())
            rows.append({"dataset": name, "model": "NSF (zuko, 3 transforms)", "seed": seed, "budget_s": budget,
                         "steps": nsf_steps, "train_s": round(nsf_seconds, 1), "test_nll": nsf_nll,
                         "true_nll": true_nll, "gap": nsf_nll - true_nll, "reconstruction": float("nan")})
            exp.log(f"{name}: true {true_nll:.3f}, FFF {rows[-2]['test_nll']:.3f} (rec {rows[-2]['reconstruction']:.1e}), "
                    f"NSF {nsf_nll:.3f}")

            # Total mass of each density on the plotted window: about 1 for a normalised density whose mass lies in the
            # window. FFF's change of variables is a density only where the encoder is invertible; a fold (two x with
            # one z) shows as mass above 1, which the test NLL alone cannot reveal.
            with torch.no_grad():
                nsf_grid = nsf().log_prob(points)
            fff_grid = flow.log_prob(points.to(flow.device)).cpu()
            cell = float((xx[0, 1] - xx[0, 0]) * (yy[1, 0] - yy[0, 0]))
            true_grid = toy_log_prob(name, points).float()
            for row, log_p in ((rows[-2], fff_grid), (rows[-1], nsf_grid)):
                row["grid_mass"] = float(log_p.double().exp().sum()) * cell
                row["true_grid_mass"] = float(true_grid.double().exp().sum()) * cell
            if seed == seeds[0]:
                with torch.no_grad():
                    samples[name] = (data.test[:2000], flow.sample(2000, seed=seed).cpu(), nsf().sample((2000,)))
                densities[name] = (xx, yy, [true_grid, fff_grid, nsf_grid])

    write_table(rows, exp.out / NAME)
    note = (f"{exp.scale} scale: {n_train} training points, {budget:.0f} s wall clock per model, seeds {list(seeds)}; "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    plot_densities(densities, exp.out / "densities", note)
    plot_samples(samples, exp.out / "samples", note)
    exp.finish(rows=rows, n_train=n_train, budget_s=budget, seeds=list(seeds))


def plot_densities(densities: dict, path: Path, note: str) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(densities), 3, figsize=(9, 3 * len(densities)), squeeze=False)
    for row, (name, (xx, yy, logs)) in zip(axes, densities.items()):
        for ax, title, log_p in zip(row, ("true density", "FFF (exact log_prob)", "NSF (zuko)"), logs):
            ax.pcolormesh(xx, yy, log_p.exp().reshape(xx.shape), shading="auto", cmap="viridis")
            ax.set_title(f"{name}: {title}", fontsize=8)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    save_figure(fig, path, note=note)


def plot_samples(samples: dict, path: Path, note: str) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(samples), 3, figsize=(9, 3 * len(samples)), squeeze=False)
    for row, (name, points) in zip(axes, samples.items()):
        (x0, x1), (y0, y1) = WINDOWS[name]
        for ax, title, p in zip(row, ("test data", "FFF samples g(z)", "NSF samples"), points):
            ax.scatter(p[:, 0], p[:, 1], s=1, alpha=0.4)
            ax.set_xlim(x0, x1)
            ax.set_ylim(y0, y1)
            ax.set_title(f"{name}: {title}", fontsize=8)
            ax.set_aspect("equal")
    fig.tight_layout()
    save_figure(fig, path, note=note)


if __name__ == "__main__":
    main()
