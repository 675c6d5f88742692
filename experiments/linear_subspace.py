"""FIF App. C (theorem C.4): which principal subspace a linear injective flow learns as β sweeps the spectrum.

Paper: Sorrenson, Draxler et al., *Lifting Architectural Constraints of Injective Flows* (ICLR 2024), App. C and
§4.1 ("the solutions [...] are the same as PCA if β ≥ 1/2σ² where σ² is the smallest eigenvalue"). A linear flow
f(x) = Ax, g(z) = Bz on zero-mean data with covariance Σ = V diag(λ) Vᵀ, loss ½‖Ax‖² − ½ log det(AAᵀ) + β‖BAx − x‖²
(eq. 50 with 1/(2σ²) = β). Theorem C.4 (with B = A⁺): the optimum spans the eigenvectors with the d smallest values
of log λᵢ − 2βλᵢ — the top-d (PCA) subspace when 1/(2β) < λ_min, the bottom-d ("anti-PCA") subspace when
1/(2β) > λ_max, a phase transition in between.

Set-up: the ``linear_subspace`` data set, D = 4, d = 2, λ = (2, 1, 0.5, 0.25), a seeded rotation V; 256 points
transformed to have second moment exactly Σ, so the full-batch loss is the theorem's population loss. Linear encoder
and decoder without biases, trained full batch in float64 with Adam and cosine LR decay, by

* ``exact``: the ``exact`` method with the encoder-side log-volume (FIF eq. 50 with an independent decoder B);
* ``fif``: FIF (eq. 7) with K = d orthogonal Hutchinson samples (exact trace);

plus theorem C.4's prediction (``theorem``) and the global minima of the exact loss with a free,
reconstruction-optimal decoder (``free_decoder``: LBFGS on A's row space, several restarts; every restart that
reaches the best value is a row). Reported: the largest principal angle between the learned manifold (the
decoder's column space) and the top-d / bottom-d eigenvectors of Σ. Also: FIF's angle to the top-d subspace during
training at two small β, and the norm of the likelihood part's encoder gradient at whitened encoders (AΣAᵀ = I)
with the reconstruction-optimal decoder, as A's row space turns from the bottom-d to the top-d subspace
(docs/methods.md, "The linear model of FIF App. C", explains why FIF's is zero).

Outputs: ``angles.csv/json`` (method, β, seed, restart, angle to top-d, angle to bottom-d, steps),
``trajectories.csv/json`` (FIF at small β: step, angle to top-d), ``gradients.csv/json`` (t, ‖∂NLL/∂A‖ for FIF and
exact), ``linear_theorem.png`` (the four panels).

Scales (App. C is a theorem with no experiment of its own, so ``paper`` is this experiment at full budget):

* ``smoke``: β ∈ {0.05, 10}, 150 / 200 training steps, 2 restarts, trajectory of 300 steps at β = 0.05.
* ``cpu``: 13 β from 0.02 to 10, 2,000 steps (exact, LR 0.05) / 3,000 steps (FIF, LR 0.02), 12 restarts,
  trajectories at β = 0.05 (3,000 steps) and β = 0.01 (10,000 steps); one initialisation (seed 0).
* ``paper``: as ``cpu`` with 5 initialisations (seeds 0–4) per method and β.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Experiment, save_figure, start, write_table  # noqa: E402

NAME = "linear_subspace"
DTYPE = torch.float64
EIGENVALUES = (2.0, 1.0, 0.5, 0.25)  # λ of Σ (D = 4)
LATENT_DIM = 2  # d
N_POINTS = 256


class Linear(nn.Module):
    """f(x) = Ax, g(z) = Bz (no biases: the data have zero mean), standard-normal latent, seeded initialisation."""

    def __init__(self, seed: int, big_d: int = len(EIGENVALUES), d: int = LATENT_DIM):
        from injflow.distributions import StandardNormal

        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.encoder = nn.Linear(big_d, d, bias=False).to(DTYPE)
        self.decoder = nn.Linear(d, big_d, bias=False).to(DTYPE)
        with torch.no_grad():
            self.encoder.weight.copy_(torch.randn(d, big_d, generator=g, dtype=DTYPE) / big_d**0.5)
            self.decoder.weight.copy_(torch.randn(big_d, d, generator=g, dtype=DTYPE) / d**0.5)
        self.latent = StandardNormal(d)

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)


def problem() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Training points with second moment exactly Σ; Σ; its eigenvectors and eigenvalues, largest first."""
    from injflow.data import load_dataset

    splits = load_dataset("linear_subspace", seed=0, eigenvalues=EIGENVALUES, n_train=N_POINTS, n_val=2, n_test=2)
    x = splits.train.to(DTYPE)
    vecs, vals = splits.info["eigenvectors"].to(DTYPE), splits.info["eigenvalues"].to(DTYPE)
    sigma = (vecs * vals) @ vecs.T
    # x ← x L_emp⁻ᵀ L_Σᵀ makes (1/N) XᵀX = L_Σ L_Σᵀ = Σ exactly: the full-batch loss is the population loss.
    x = x @ torch.linalg.inv(torch.linalg.cholesky(x.T @ x / x.shape[0])).T @ torch.linalg.cholesky(sigma).T
    order = torch.argsort(vals, descending=True)
    return x, sigma, vecs[:, order], vals[order]


def train(method: Any, x: Tensor, steps: int, lr: float, seed: int = 0,
          record: Callable[[int, Linear], None] | None = None) -> Linear:
    """Full-batch Adam with cosine LR decay on ``method.loss``; ``record(step, model)`` every 50 steps."""
    torch.manual_seed(seed)  # the Hutchinson noise of FIF
    model = Linear(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for step in range(steps):
        if record is not None and step % 50 == 0:
            record(step, model)
        loss = method.loss(x, step, model)["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    return model


def max_angle(a: Tensor, b: Tensor) -> float:
    """Largest principal angle (rad) between the column spans of ``a`` and ``b``."""
    from injflow.data.toy import principal_angles

    return float(principal_angles(a.detach(), b).max())


def theorem_basis(beta: float, vecs: Tensor, lam: Tensor) -> Tensor:
    """Theorem C.4: the eigenvectors with the d smallest log λᵢ − 2βλᵢ (eq. 83 with 1/σ² = 2β)."""
    return vecs[:, torch.argsort(torch.log(lam) - 2 * beta * lam)[:LATENT_DIM]]


def theorem_regimes(lam: Tensor) -> list[dict[str, Any]]:
    """Theorem C.4's choice over all β > 0: intervals of β with the eigenvalues they select.

    The selection can only change where two eigenvalues tie, log λᵢ − 2βλᵢ = log λⱼ − 2βλⱼ, i.e. at
    β = (log λᵢ − log λⱼ) / (2(λᵢ − λⱼ)); between consecutive ties it is constant.
    """
    values = [float(v) for v in lam]
    ties = sorted({(math.log(a) - math.log(b)) / (2 * (a - b)) for i, a in enumerate(values) for b in values[i + 1:]})
    edges = [0.0, *ties, math.inf]
    regimes: list[dict[str, Any]] = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        probe = lo * 2 if hi == math.inf else (hi / 2 if lo == 0 else math.sqrt(lo * hi))
        chosen = sorted((values[int(i)] for i in torch.argsort(torch.log(lam) - 2 * probe * lam)[:LATENT_DIM]),
                        reverse=True)
        if regimes and regimes[-1]["eigenvalues"] == chosen:
            regimes[-1]["beta_to"] = hi
        else:
            regimes.append({"beta_from": lo, "beta_to": hi, "eigenvalues": chosen})
    for r in regimes:
        r["beta_to"] = None if r["beta_to"] == math.inf else r["beta_to"]
    return regimes


def free_decoder_minima(beta: float, lam: Tensor, restarts: int) -> list[Tensor]:
    """Row spaces Q minimising ½ log det(QΣQᵀ) − β tr((QΣQᵀ)⁻¹QΣ²Qᵀ) (Σ = diag(λ)).

    This is the exact loss after optimising A's whitening and the decoder B; LBFGS from ``restarts`` random starts,
    and every restart that reaches the best value (to 1e-7) is returned as a (D, d) basis in Σ's eigenbasis.
    Between the two thresholds the minimum is a continuum of subspaces, so several distinct bases come back.
    """
    sig = torch.diag(lam)
    gen = torch.Generator().manual_seed(0)
    found = []
    for _ in range(restarts):
        m = torch.randn(LATENT_DIM, len(lam), dtype=DTYPE, generator=gen).requires_grad_(True)
        opt = torch.optim.LBFGS([m], max_iter=1000, line_search_fn="strong_wolfe", tolerance_grad=1e-12,
                                tolerance_change=1e-15)

        def objective(m: Tensor = m) -> Tensor:  # bound now: the closures live for this restart only
            q = torch.linalg.qr(m.T).Q.T
            s = q @ sig @ q.T
            return 0.5 * torch.logdet(s) - beta * torch.trace(torch.linalg.solve(s, q @ sig @ sig @ q.T))

        def closure(opt: torch.optim.LBFGS = opt) -> Tensor:
            opt.zero_grad()
            value = objective()
            value.backward()
            return value

        opt.step(closure)
        found.append((float(objective().detach()), torch.linalg.qr(m.detach().T).Q))
    best = min(v for v, _ in found)
    return [q for v, q in found if v < best + 1e-7]


def whitened_gradients(x: Tensor, sigma: Tensor, top: Tensor, bottom: Tensor, n: int = 41) -> list[dict[str, float]]:
    """‖∂NLL/∂A‖ at whitened encoders (AΣAᵀ = I) with the reconstruction-optimal decoder B = ΣAᵀ, along row
    spaces rotating from the bottom-d (t = 0) to the top-d subspace (t = 1); β = 0, i.e. the likelihood part only."""
    from injflow.methods import FIF, ExactFlow

    rows = []
    for t in torch.linspace(0, 1, n, dtype=DTYPE):
        q = (torch.cos(t * math.pi / 2) * bottom + torch.sin(t * math.pi / 2) * top).T
        evals, evecs = torch.linalg.eigh(q @ sigma @ q.T)
        a = (evecs * evals.rsqrt()) @ evecs.T @ q
        model = Linear(0)
        with torch.no_grad():
            model.encoder.weight.copy_(a)
            model.decoder.weight.copy_(sigma @ a.T)  # ΣAᵀ(AΣAᵀ)⁻¹ with AΣAᵀ = I
        row = {"t": float(t)}
        for name, method in (("fif", FIF(beta=0.0, n_hutchinson=LATENT_DIM)),
                             ("exact", ExactFlow(beta=0.0, side="encoder"))):
            (g,) = torch.autograd.grad(method.loss(x, 0, model)["loss"].mean(), [model.encoder.weight])
            row[f"grad_norm_{name}"] = float(g.norm())
        rows.append(row)
    return rows


def sweep(exp: Experiment, s: dict[str, Any], x: Tensor, sigma: Tensor, vecs: Tensor, lam: Tensor) -> list[dict]:
    """The β sweep: theorem, free-decoder minima, trained exact and FIF models; one row per subspace found."""
    from injflow.methods import FIF, ExactFlow

    top, bottom = vecs[:, :LATENT_DIM], vecs[:, LATENT_DIM:]
    rows: list[dict[str, Any]] = []

    def add(method: str, beta: float, basis: Tensor, seed: int | None, restart: int | None, steps: int | None) -> None:
        rows.append({"method": method, "beta": beta, "seed": seed, "restart": restart,
                     "angle_top": max_angle(basis, top), "angle_bottom": max_angle(basis, bottom), "steps": steps})

    for beta in s["betas"]:
        add("theorem", beta, theorem_basis(beta, vecs, lam), None, None, None)
        # The manifold of a reconstruction-optimal decoder (columns ΣAᵀ) spans Σ·(row space of A).
        for i, q in enumerate(free_decoder_minima(beta, lam, s["restarts"])):
            add("free_decoder", beta, sigma @ vecs @ q, None, i, None)
        for seed in s["seeds"]:
            exact = train(ExactFlow(beta=beta, side="encoder"), x, s["exact_steps"], 0.05, seed)
            add("exact", beta, exact.decoder.weight, seed, None, s["exact_steps"])
            fif = train(FIF(beta=beta, n_hutchinson=LATENT_DIM), x, s["fif_steps"], 0.02, seed)
            add("fif", beta, fif.decoder.weight, seed, None, s["fif_steps"])
        here = {r["method"]: r for r in rows if r["beta"] == beta and r["seed"] in (None, s["seeds"][0])}
        exp.log(f"β={beta:<5g} " + "  ".join(f"{m}: top {here[m]['angle_top']:.1e} bottom {here[m]['angle_bottom']:.1e}"
                                             for m in ("theorem", "exact", "fif")))
    return rows


def trajectories(exp: Experiment, s: dict[str, Any], x: Tensor, top: Tensor) -> list[dict[str, Any]]:
    """FIF at small β: the angle to the top-d subspace during training, every 50 steps and at the end."""
    from injflow.methods import FIF

    rows: list[dict[str, Any]] = []
    for beta, n_steps in s["trajectories"]:
        def record(step: int, model: Linear, beta: float = beta) -> None:
            rows.append({"beta": beta, "step": step, "angle_top": max_angle(model.decoder.weight, top)})

        model = train(FIF(beta=beta, n_hutchinson=LATENT_DIM), x, n_steps, 0.02, record=record)
        rows.append({"beta": beta, "step": n_steps, "angle_top": max_angle(model.decoder.weight, top)})
        exp.log(f"FIF β={beta}: angle to top-d after {n_steps} steps {rows[-1]['angle_top']:.4f}")
    return rows


def plot(angles: list[dict], traj: list[dict], grads: list[dict], lam: Tensor, vecs: Tensor, path: Path,
         note: str) -> Path:
    """Top: angle to the top-d / bottom-d subspace against β; bottom: FIF trajectories and the gradient norms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top, bottom = vecs[:, :LATENT_DIM], vecs[:, LATENT_DIM:]
    betas = sorted({r["beta"] for r in angles})
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    styles = {"exact": ("C0o", "exact (encoder log-volume), trained"), "fif": ("C3s", "FIF, trained"),
              "free_decoder": ("C2x", "exact loss, global minima (free linear decoder)")}
    for col, (key, ref, title) in enumerate((("angle_top", top, "top-d (PCA) subspace"),
                                             ("angle_bottom", bottom, "bottom-d subspace"))):
        ax = axes[0, col]
        fine = torch.logspace(math.log10(betas[0]), math.log10(betas[-1]), 400, dtype=DTYPE)
        ax.plot(fine, [max_angle(theorem_basis(float(b), vecs, lam), ref) for b in fine], "k-",
                label="theorem C.4 (decoder = A⁺)")
        for method, (style, label) in styles.items():
            pts = [(r["beta"], r[key]) for r in angles if r["method"] == method]
            ax.plot(*zip(*pts), style, label=label, ms=5, alpha=0.85)
        for v, text in ((1 / (2 * float(lam[0])), "1/(2β) = λ_max"), (1 / (2 * float(lam[-1])), "1/(2β) = λ_min")):
            ax.axvline(v, color="grey", ls=":")
            ax.text(v, 0.3, text, rotation=90, ha="right", va="center", fontsize=8, color="grey")
        ax.set_xscale("log")
        ax.set_xlabel("β (reconstruction weight)")
        ax.set_ylabel("largest principal angle (rad)")
        ax.set_title(f"learned manifold vs. the {title}")
        ax.set_ylim(-0.05, 1.65)
    axes[0, 0].legend(fontsize=8, loc="center left")
    ax = axes[1, 0]
    for beta in sorted({r["beta"] for r in traj}, reverse=True):
        pts = [(r["step"], r["angle_top"]) for r in traj if r["beta"] == beta]
        ax.plot(*zip(*pts), label=f"FIF, β = {beta:g} (1/(2β) = {1 / (2 * beta):g} > λ_max)")
    ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("angle to top-d subspace (rad)")
    ax.set_title("FIF at small β still converges to PCA, more slowly")
    ax.legend(fontsize=8)
    ax = axes[1, 1]
    ts = [r["t"] for r in grads]
    ax.plot(ts, [r["grad_norm_exact"] for r in grads], "C0-", label="exact: AΣ − (AAᵀ)⁻¹A")
    ax.plot(ts, [r["grad_norm_fif"] for r in grads], "C3-", label="FIF: AΣ − Bᵀ")
    ax.set_xlabel("row space of A: bottom-d (0) → top-d (1)")
    ax.set_ylabel("‖∂ NLL / ∂A‖ at AΣAᵀ = I, B optimal")
    ax.set_title("FIF's likelihood gradient vanishes at every whitened encoder")
    ax.legend(fontsize=8)
    lam_text = ", ".join(f"{v:g}" for v in lam.tolist())
    fig.suptitle(f"Linear injective flow on N(0, Σ), Σ = V diag({lam_text}) Vᵀ, d = {LATENT_DIM} (FIF App. C)")
    fig.tight_layout()
    return save_figure(fig, path, note=note)


def scale_settings(exp: Experiment) -> dict[str, Any]:
    """β grid, steps, restarts, seeds and trajectories of this scale (see the module docstring)."""
    full_betas = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
    full = dict(betas=full_betas, exact_steps=2000, fif_steps=3000, restarts=12, seeds=(0,),
                trajectories=((0.05, 3000), (0.01, 10000)), gradient_points=41)
    return exp.pick(
        smoke=dict(betas=(0.05, 10.0), exact_steps=150, fif_steps=200, restarts=2, seeds=(0,),
                   trajectories=((0.05, 300),), gradient_points=11),
        cpu=full,
        paper={**full, "seeds": tuple(range(5))},
    )


def main(argv: list[str] | None = None) -> None:
    exp = start(NAME, __doc__, argv)
    if exp.args.device != "cpu":
        # Full-batch float64 training of 10×4 linear maps and an L-BFGS search: microseconds of work per kernel,
        # where a GPU adds only launch latency. The results do not depend on the device.
        exp.log(f"--device {exp.args.device}: this experiment runs on the CPU (tiny float64 linear models)")
    s = scale_settings(exp)
    x, sigma, vecs, lam = problem()
    top, bottom = vecs[:, :LATENT_DIM], vecs[:, LATENT_DIM:]
    angles = sweep(exp, s, x, sigma, vecs, lam)
    write_table(angles, exp.out / "angles")
    traj = trajectories(exp, s, x, top)
    write_table(traj, exp.out / "trajectories")
    grads = whitened_gradients(x, sigma, top, bottom, n=s["gradient_points"])
    write_table(grads, exp.out / "gradients")
    max_fif = max(r["grad_norm_fif"] for r in grads)
    max_exact = max(r["grad_norm_exact"] for r in grads)
    exp.log(f"max ‖∂NLL/∂A‖ at whitened encoders: FIF {max_fif:.2e}, exact {max_exact:.2e}")
    note = (f"{exp.scale} scale: {N_POINTS} points, exact {s['exact_steps']} / FIF {s['fif_steps']} full-batch "
            f"steps, {s['restarts']} LBFGS restarts, seeds {list(s['seeds'])}")
    plot(angles, traj, grads, lam, vecs, exp.out / "linear_theorem.png", note)
    regimes = theorem_regimes(lam)
    exp.log(f"theorem C.4 regimes: {regimes}")
    exp.finish(theorem_regimes=regimes, eigenvalues=EIGENVALUES, latent_dim=LATENT_DIM, n_points=N_POINTS, betas=s["betas"],
               exact_steps=s["exact_steps"], fif_steps=s["fif_steps"], restarts=s["restarts"], seeds=s["seeds"],
               trajectories=s["trajectories"], thresholds={"beta_lambda_max": 1 / (2 * EIGENVALUES[0]),
                                                         "beta_lambda_min": 1 / (2 * EIGENVALUES[-1])},
               max_grad_norm_whitened={"fif": max_fif, "exact": max_exact})


if __name__ == "__main__":
    main()
