"""Conditional free-form flows for simulation-based inference: posteriors p(θ | x) scored by C2ST (FFF §5.2).

Paper: Draxler, Sorrenson et al., *Free-form flows: make any architecture a normalizing flow* (AISTATS 2024), §5.2:
FFF as a neural posterior estimator on the SBI benchmark of Lueckmann et al. (2021, ``sbibm``), scored by the
classifier two-sample test (C2ST: 0.5 = indistinguishable from the reference posterior, 1.0 = fully separable).

Tasks (both with a known posterior, defined as in sbibm 1.1.0):

* ``gaussian_linear``: θ ∈ R¹⁰ ~ N(0, 0.1 I), x | θ ~ N(θ, 0.1 I); posterior N(x/2, 0.05 I) in closed form.
* ``two_moons``: θ ~ U[-1, 1]², a ~ U(-π/2, π/2), r ~ N(0.1, 0.01²), x = (r cos a + 0.25, r sin a) +
  (−|θ₁ + θ₂|/√2, (θ₂ − θ₁)/√2); the posterior is sampled exactly by inverting the simulator (draw (a, r), solve for
  the two θ, keep each with probability ½, reject outside the prior), as sbibm does for its reference.

sbibm itself is not installed with its dependencies: its install pulls some 80 packages into the environment (sbi,
pyro, nflows, pyabc, elfi, julia, selenium, ...) and downgrades matplotlib to 3.8. The simulators, priors and exact
posteriors above are implemented here instead. sbibm's 10 observations and its 10,000 reference posterior samples per
observation are read from its wheel's data files when ``sbibm`` is installed without dependencies
(``pip install --no-deps sbibm==1.1.0``, done by ``scripts/setup.sh``); the script checks that our exact posterior
agrees with them (C2ST of ours against theirs) and falls back to its own seeded observations without them.

Model: a conditional FFF p(θ | x) (``injflow.methods.FFF``, d = D) on the pair of
``injflow.nets.conditional.build_context_autoencoder`` (the ``mlp`` architecture, 3 hidden layers of 256, on the
augmented [θ, x]), β = 25, Adam (LR 5e-4, weight decay 1e-4, one-cycle), batch 128, as the FFF reference config
for SBI (``configs/fff/sbi_base.yaml`` of vislearn/FFF, there with a ResNet; 200 epochs). θ and x are standardised
with the training set's mean and standard deviation (undone for sampling). Posterior samples are θ = g(z, x_o),
z ~ N(0, I): 10,000 per observation, against the 10,000 reference samples.

C2ST as sbibm defines it: both sample sets z-scored by the reference samples' mean and standard deviation, an MLP
classifier (scikit-learn, two hidden layers of 10·dim ReLU units, Adam, up to 10,000 iterations), 5-fold shuffled
cross-validation, mean accuracy. Also reported for the Gaussian-linear task, where the posterior density is known:
the exact KL(p ‖ q) from the reference samples (the model's exact log-density by ``log_abs_det_jacobian``).

Outputs: ``c2st.csv/json`` (task, simulations, observation, C2ST, KL), ``summary.csv/json`` (mean ± std over the
observations, with the FFF paper's value), ``reference_check.csv/json`` (our exact posterior against sbibm's
reference samples), ``posteriors.png`` (two moons: reference and FFF samples for four observations).

Scales:

* ``smoke``: both tasks, 1,000 simulations, 200 steps, 1 observation, 500 samples, 2-fold C2ST capped at 50
  classifier iterations (checks the pipeline only).
* ``cpu``: both tasks at 10,000 simulations, 100 epochs; sbibm's observations 1–5 (of 10: the 10-D classifier on
  20,000 points costs minutes per fold here), 10,000 samples, 5-fold C2ST; our exact posterior checked against
  sbibm's reference on observations 1–2.
* ``paper``: both tasks at 1,000 / 10,000 / 100,000 simulations, 200 epochs (the reference config); 10 checks.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import math
import sys
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save_figure, start, write_table  # noqa: E402

NAME = "fff_sbi"
TASKS = ("gaussian_linear", "two_moons")
DIMS = {"gaussian_linear": (10, 10), "two_moons": (2, 2)}  # (dim θ, dim x)

#: The FFF paper's C2ST where we could read it (task, simulations) -> value; None: not available offline.
PAPER_C2ST: dict[tuple[str, int], float | None] = {}


# --------------------------------------------------------------------------------------------------------------
# Tasks: prior, simulator, exact posterior
# --------------------------------------------------------------------------------------------------------------


def sample_prior(task: str, n: int, generator: torch.Generator) -> Tensor:
    if task == "gaussian_linear":
        return math.sqrt(0.1) * torch.randn(n, 10, generator=generator, dtype=torch.float64)
    return 2 * torch.rand(n, 2, generator=generator, dtype=torch.float64) - 1


def _moon_noise(n: int, generator: torch.Generator) -> Tensor:
    """p = (r cos a + 0.25, r sin a), a ~ U(-π/2, π/2), r ~ N(0.1, 0.01²): the two moons simulator's own noise."""
    a = math.pi * (torch.rand(n, generator=generator, dtype=torch.float64) - 0.5)
    r = 0.1 + 0.01 * torch.randn(n, generator=generator, dtype=torch.float64)
    return torch.stack([r * torch.cos(a) + 0.25, r * torch.sin(a)], dim=1)


def simulate(task: str, theta: Tensor, generator: torch.Generator) -> Tensor:
    if task == "gaussian_linear":
        return theta + math.sqrt(0.1) * torch.randn(theta.shape, generator=generator, dtype=torch.float64)
    shift = torch.stack([-(theta[:, 0] + theta[:, 1]).abs(), theta[:, 1] - theta[:, 0]], dim=1) / math.sqrt(2)
    return _moon_noise(theta.shape[0], generator) + shift


def sample_posterior(task: str, x_o: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """Exact posterior samples θ ~ p(θ | x_o) for one observation x_o (dim x,)."""
    if task == "gaussian_linear":  # precision 1/0.1 + 1/0.1 = 20: N(x/2, 0.05 I)
        return x_o / 2 + math.sqrt(0.05) * torch.randn(n, 10, generator=generator, dtype=torch.float64)
    # x = p + s(θ) with s a fold of a rotation (|det| = 1 on each branch) and a uniform prior: draw p from the simulator's
    # noise, s = x_o − p, pick either preimage with probability ½, keep the θ inside the prior box. Exact.
    out, count = [], 0
    while count < n:
        shift = x_o - _moon_noise(4 * n, generator)
        total = -math.sqrt(2) * shift[:, 0]  # |θ₁ + θ₂|, which needs shift₀ ≤ 0
        total = torch.where(torch.rand(4 * n, generator=generator) < 0.5, total, -total)
        diff = math.sqrt(2) * shift[:, 1]  # θ₂ − θ₁
        theta = torch.stack([(total - diff) / 2, (total + diff) / 2], dim=1)
        keep = (shift[:, 0] <= 0) & (theta.abs() <= 1).all(1)
        out.append(theta[keep])
        count += int(keep.sum())
    return torch.cat(out)[:n]


def sbibm_files(task: str) -> Path | None:
    """The folder of sbibm's stored observations and reference samples, when sbibm is installed (never imported)."""
    spec = importlib.util.find_spec("sbibm")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "tasks" / task / "files"
    return folder if folder.is_dir() else None


def _read_csv(path: Path) -> Tensor:
    text = bz2.decompress(path.read_bytes()).decode() if path.suffix == ".bz2" else path.read_text()
    rows = list(csv.reader(io.StringIO(text)))
    return torch.tensor([[float(v) for v in row] for row in rows[1:]], dtype=torch.float64)


def observations(task: str, count: int, n_reference: int, seed: int) -> tuple[list[Tensor], list[Tensor], str]:
    """``count`` observations x_o with ``n_reference`` reference posterior samples each, and where they come from."""
    files = sbibm_files(task)
    if files is not None:
        xs = [_read_csv(files / f"num_observation_{i}" / "observation.csv")[0] for i in range(1, count + 1)]
        refs = [_read_csv(files / f"num_observation_{i}" / "reference_posterior_samples.csv.bz2")[:n_reference]
                for i in range(1, count + 1)]
        return xs, refs, "sbibm 1.1.0 stored observations and reference posterior samples"
    g = torch.Generator().manual_seed(10_000 + seed)
    xs = [simulate(task, sample_prior(task, 1, g), g)[0] for _ in range(count)]
    refs = [sample_posterior(task, x, n_reference, g) for x in xs]
    return xs, refs, "own seeded observations, exact posterior samples (sbibm not installed)"


# --------------------------------------------------------------------------------------------------------------
# C2ST (sbibm's definition)
# --------------------------------------------------------------------------------------------------------------


def c2st(reference: Tensor, samples: Tensor, *, folds: int = 5, seed: int = 1, max_iter: int = 10_000,
         jobs: int | None = None) -> float:
    """Classifier two-sample test accuracy: 0.5 when the classifier cannot tell the sets apart."""
    import numpy as np
    from sklearn.model_selection import KFold, cross_val_score
    from sklearn.neural_network import MLPClassifier

    mean, std = reference.mean(0), reference.std(0)
    a, b = ((reference - mean) / std).numpy(), ((samples - mean) / std).numpy()
    data = np.concatenate([a, b]).astype(np.float32)
    target = np.concatenate([np.zeros(len(a)), np.ones(len(b))])
    dim = reference.shape[1]
    clf = MLPClassifier(activation="relu", hidden_layer_sizes=(10 * dim, 10 * dim), max_iter=max_iter, solver="adam",
                        random_state=seed)
    scores = cross_val_score(clf, data, target, cv=KFold(n_splits=folds, shuffle=True, random_state=seed),
                             scoring="accuracy", n_jobs=jobs)
    return float(scores.mean())


# --------------------------------------------------------------------------------------------------------------
# The conditional FFF
# --------------------------------------------------------------------------------------------------------------


class Posterior(torch.nn.Module):
    """A conditional FFF on standardised θ and x: sample θ | x_o and evaluate its exact log-density."""

    def __init__(self, task: str, theta: Tensor, x: Tensor) -> None:
        from injflow.distributions import StandardNormal
        from injflow.nets.conditional import build_context_autoencoder

        super().__init__()
        d_theta, d_x = DIMS[task]
        self.encoder, self.decoder = build_context_autoencoder(
            "mlp", data_shape=(d_theta,), latent_dim=d_theta, context_features=d_x, hidden_features=(256, 256, 256)
        )
        self.latent = StandardNormal(d_theta)
        for name, t in (("theta", theta), ("x", x)):
            self.register_buffer(f"{name}_mean", t.mean(0).float())
            self.register_buffer(f"{name}_std", t.std(0).float())

    def view(self, x: Tensor) -> object:
        from injflow.nets.conditional import ContextView

        return ContextView(self.encoder, self.decoder, self.latent, (x.float() - self.x_mean) / self.x_std)

    def standardise(self, theta: Tensor) -> Tensor:
        return (theta.float() - self.theta_mean) / self.theta_std

    @torch.no_grad()
    def sample(self, x_o: Tensor, n: int, generator: torch.Generator) -> Tensor:
        z = torch.randn(n, self.latent.dim, generator=generator)
        return (self.view(x_o.expand(n, -1)).decode(z) * self.theta_std + self.theta_mean).double()

    def log_prob(self, theta: Tensor, x_o: Tensor) -> Tensor:
        """Exact log q(θ | x_o) (change of variables of the encoder, plus the standardisation's Jacobian)."""
        from injflow.estimators import log_abs_det_jacobian

        view = self.view(x_o.expand(theta.shape[0], -1))
        t = self.standardise(theta)
        with torch.no_grad():
            log_pz = self.latent.log_prob(view.encode(t))
        log_det = log_abs_det_jacobian(view.encode, t).detach()
        return (log_pz + log_det).double() - self.theta_std.double().log().sum()


def train(task: str, theta: Tensor, x: Tensor, steps: int, seed: int, log: object) -> Posterior:
    from injflow.methods import FFF

    torch.manual_seed(seed)
    model = Posterior(task, theta, x)
    method = FFF(beta=25.0)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-4, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(0, theta.shape[0], (128,), generator=g)
        terms = method.loss(model.standardise(theta[idx]), step, model.view(x[idx]))
        opt.zero_grad()
        terms["loss"].mean().backward()
        opt.step()
        schedule.step()
        if step % max(1, steps // 5) == 0 or step == steps - 1:
            log(f"  step {step}: loss {float(terms['loss'].mean().detach()):.3f}, "
                f"reconstruction {float(terms['reconstruction'].mean().detach()):.2e}")
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    exp = start(NAME, __doc__, argv)
    budgets = exp.pick((1000,), (10_000,), (1000, 10_000, 100_000))
    n_obs = exp.pick(1, 5, 10)
    n_samples = exp.pick(500, 10_000, 10_000)
    folds = exp.pick(2, 5, 5)
    max_iter = exp.pick(50, 10_000, 10_000)  # sbibm's cap; the smoke run only checks the pipeline
    n_checks = exp.pick(1, 2, 10)  # observations on which our exact posterior is checked against sbibm's samples
    epochs = exp.pick(None, 100, 200)
    jobs = exp.pick(None, 2, 2)  # the C2ST folds in parallel (two cores here)
    seed = exp.args.seed if hasattr(exp.args, "seed") else 0

    rows, summary, checks, pictures = [], [], [], {}
    for task in TASKS:
        xs, refs, source = observations(task, n_obs, n_samples, seed)
        exp.log(f"{task}: {source}")
        g = torch.Generator().manual_seed(seed)
        # Our exact posterior against the reference samples: how close C2ST can get with this many samples.
        for i, (x_o, ref) in enumerate(zip(xs[:n_checks], refs)):
            ours = sample_posterior(task, x_o, ref.shape[0], g)
            checks.append({"task": task, "observation": i + 1, "source": source,
                           "c2st_exact_vs_reference": c2st(ref, ours, folds=folds, max_iter=max_iter, jobs=jobs)})
        for budget in budgets:
            gen = torch.Generator().manual_seed(1000 * seed + budget)
            theta = sample_prior(task, budget, gen)
            x = simulate(task, theta, gen)
            steps = exp.pick(200, None, None) or math.ceil(epochs * budget / 128)
            exp.log(f"{task}, {budget} simulations: {steps} steps")
            model = train(task, theta, x, steps, seed, exp.log)
            scores = []
            for i, (x_o, ref) in enumerate(zip(xs, refs)):
                samples = model.sample(x_o, ref.shape[0], g)
                score = c2st(ref, samples, folds=folds, max_iter=max_iter, jobs=jobs)
                kl = None
                if task == "gaussian_linear":  # exact: E_p[log p − log q] over the reference samples
                    true_lp = torch.distributions.Normal(x_o / 2, math.sqrt(0.05)).log_prob(ref).sum(1)
                    kl = float((true_lp - model.log_prob(ref, x_o)).mean())
                rows.append({"task": task, "simulations": budget, "steps": steps, "observation": i + 1, "c2st": score,
                             "kl_exact": kl})
                scores.append(score)
                if task == "two_moons" and budget == budgets[-1] and i < 4:
                    pictures[i + 1] = (ref, samples)
            mean = sum(scores) / len(scores)
            std = (sum((s - mean) ** 2 for s in scores) / max(len(scores) - 1, 1)) ** 0.5
            kls = [r["kl_exact"] for r in rows if r["task"] == task and r["simulations"] == budget and r["kl_exact"] is not None]
            summary.append({"task": task, "simulations": budget, "observations": len(scores), "c2st_mean": mean,
                            "c2st_std": std, "kl_exact_mean": sum(kls) / len(kls) if kls else None,
                            "paper_fff_c2st": PAPER_C2ST.get((task, budget)), "reference": source})
            exp.log(f"{task}, {budget} simulations: C2ST {mean:.3f} ± {std:.3f}")

    write_table(rows, exp.out / "c2st")
    write_table(summary, exp.out / "summary")
    write_table(checks, exp.out / "reference_check")
    plot(pictures, exp.out / "posteriors",
         f"{exp.scale} scale: two moons, {budgets[-1]} simulations, {n_samples} samples per observation")
    exp.finish(summary=summary, reference_check=checks, budgets=list(budgets), observations=n_obs, samples=n_samples,
               folds=folds, classifier_max_iter=max_iter, epochs=epochs)


def plot(pictures: dict, path: Path, note: str) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(len(pictures), 1), figsize=(3 * max(len(pictures), 1), 3), squeeze=False)
    for ax, (i, (ref, samples)) in zip(axes[0], pictures.items()):
        ax.scatter(ref[:, 0], ref[:, 1], s=1, alpha=0.3, label="reference")
        ax.scatter(samples[:, 0], samples[:, 1], s=1, alpha=0.3, label="FFF")
        ax.set_xlim(-1, 1)
        ax.set_ylim(-1, 1)
        ax.set_aspect("equal")
        ax.set_title(f"two moons, observation {i}", fontsize=8)
    axes[0][0].legend(markerscale=5, fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, note=note)


if __name__ == "__main__":
    main()
