"""Draws docs/figures/linear_theorem.png: which principal subspace linear injective flows learn (FIF App. C).

Data: the ``linear_subspace`` data set (FIF App. C), D = 4, d = 2, Σ = V diag(2, 1, 0.5, 0.25) Vᵀ, 256 points
transformed to have second moment exactly Σ (so the full-batch loss is the theorem's population loss).
Models: f(x) = Ax, g(z) = Bz, trained full batch with Adam and a cosine learning-rate decay by

* the ``exact`` method with the encoder-side log-volume (FIF eq. 50 with an independent decoder B), and
* ``fif`` with K = d orthogonal Hutchinson samples (exact trace),

over a range of β; also plotted: theorem C.4's prediction (which assumes B = A⁺) and the global minimum of the
exact loss with a free, reconstruction-optimal decoder (LBFGS on the row space, 20 restarts).

Run (about two minutes on one CPU thread):

    .venv/bin/python docs/figures/make_linear_theorem_figure.py

It prints the numbers quoted in docs/methods.md.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from injflow.data import load_dataset  # noqa: E402
from injflow.data.toy import principal_angles  # noqa: E402
from injflow.distributions import StandardNormal  # noqa: E402
from injflow.methods import FIF, ExactFlow  # noqa: E402

DTYPE = torch.float64
EIGENVALUES = (2.0, 1.0, 0.5, 0.25)
BETAS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
OUT = Path(__file__).with_name("linear_theorem.png")


class Linear(nn.Module):
    def __init__(self, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.encoder = nn.Linear(4, 2, bias=False).to(DTYPE)
        self.decoder = nn.Linear(2, 4, bias=False).to(DTYPE)
        with torch.no_grad():
            self.encoder.weight.copy_(torch.randn(2, 4, generator=g, dtype=DTYPE) / 2)
            self.decoder.weight.copy_(torch.randn(4, 2, generator=g, dtype=DTYPE) / 2**0.5)
        self.latent = StandardNormal(2)

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z):
        return self.decoder(z)


def problem():
    splits = load_dataset("linear_subspace", seed=0, eigenvalues=EIGENVALUES, n_train=256, n_val=2, n_test=2)
    x = splits.train.to(DTYPE)
    vecs, vals = splits.info["eigenvectors"].to(DTYPE), splits.info["eigenvalues"].to(DTYPE)
    sigma = (vecs * vals) @ vecs.T
    x = x @ torch.linalg.inv(torch.linalg.cholesky(x.T @ x / x.shape[0])).T @ torch.linalg.cholesky(sigma).T
    order = torch.argsort(vals, descending=True)
    return x, sigma, vecs[:, order], vals[order]


def train(method, x, steps, lr, seed=0, record=None):
    torch.manual_seed(seed)
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


def max_angle(a, b):
    return float(principal_angles(a.detach(), b).max())


def free_decoder_minima(beta, lam, restarts=12):
    """Row spaces minimising ½ log det(QΣQᵀ) − β tr((QΣQᵀ)⁻¹QΣ²Qᵀ) (Σ = diag(lam)), i.e. the exact loss after
    optimising the whitening of A and the decoder B, from LBFGS restarts: every restart that reaches the best value
    (to 1e-7) is returned as a (4, 2) basis in Σ's eigenbasis. Between the two thresholds the minimum is a
    continuum of subspaces, so several distinct bases come back."""
    sig = torch.diag(lam)
    gen = torch.Generator().manual_seed(0)
    found = []
    for _ in range(restarts):
        m = torch.randn(2, 4, dtype=DTYPE, generator=gen).requires_grad_(True)
        opt = torch.optim.LBFGS([m], max_iter=1000, line_search_fn="strong_wolfe", tolerance_grad=1e-12, tolerance_change=1e-15)

        def objective():
            q = torch.linalg.qr(m.T).Q.T
            s = q @ sig @ q.T
            return 0.5 * torch.logdet(s) - beta * torch.trace(torch.linalg.solve(s, q @ sig @ sig @ q.T))

        def closure():
            opt.zero_grad()
            value = objective()
            value.backward()
            return value

        opt.step(closure)
        found.append((float(objective().detach()), torch.linalg.qr(m.detach().T).Q))
    best = min(v for v, _ in found)
    return [q for v, q in found if v < best + 1e-7]


def whitened_gradients(x, sigma, top, bottom, n=41):
    """‖∂NLL/∂A‖ at whitened encoders (AΣAᵀ = I) with the reconstruction-optimal decoder, along row spaces
    rotating from the bottom-d (t = 0) to the top-d subspace (t = 1)."""
    ts = torch.linspace(0, 1, n, dtype=DTYPE)
    out = {"fif": [], "exact": []}
    for t in ts:
        q = (torch.cos(t * math.pi / 2) * bottom + torch.sin(t * math.pi / 2) * top).T
        s = q @ sigma @ q.T
        evals, evecs = torch.linalg.eigh(s)
        a = (evecs * evals.rsqrt()) @ evecs.T @ q
        model = Linear(0)
        with torch.no_grad():
            model.encoder.weight.copy_(a)
            model.decoder.weight.copy_(sigma @ a.T)  # ΣAᵀ(AΣAᵀ)⁻¹ with AΣAᵀ = I
        for name, method in (("fif", FIF(beta=0.0, n_hutchinson=2)), ("exact", ExactFlow(beta=0.0, side="encoder"))):
            (g,) = torch.autograd.grad(method.loss(x, 0, model)["loss"].mean(), [model.encoder.weight])
            out[name].append(float(g.norm()))
    return ts, out


def main() -> None:
    torch.set_num_threads(1)
    x, sigma, vecs, lam = problem()
    top, bottom = vecs[:, :2], vecs[:, 2:]
    rows = []
    for beta in BETAS:
        f = torch.log(lam) - 2 * beta * lam
        theorem = vecs[:, torch.argsort(f)[:2]]
        # The manifold (decoder columns ΣAᵀ) spans Σ·(row space of A).
        free = [sigma @ vecs @ q for q in free_decoder_minima(beta, lam)]
        exact = train(ExactFlow(beta=beta, side="encoder"), x, steps=2000, lr=0.05).decoder.weight
        fif = train(FIF(beta=beta, n_hutchinson=2), x, steps=3000, lr=0.02).decoder.weight
        row = {"beta": beta}
        for name, basis in (("theorem", theorem), ("exact", exact), ("fif", fif)):
            row[name] = (max_angle(basis, top), max_angle(basis, bottom))
        row["free"] = [(max_angle(b, top), max_angle(b, bottom)) for b in free]
        rows.append(row)
        lo = [min(a[i] for a in row["free"]) for i in (0, 1)]
        hi = [max(a[i] for a in row["free"]) for i in (0, 1)]
        print(f"beta={beta:<5} " + "  ".join(f"{k}: top {row[k][0]:.1e} bottom {row[k][1]:.1e}" for k in ("theorem", "exact", "fif"))
              + f"  free-decoder minima ({len(free)}): top {lo[0]:.1e}-{hi[0]:.1e} bottom {lo[1]:.1e}-{hi[1]:.1e}", flush=True)

    trajectories = {}
    for beta, n_steps in ((0.05, 3000), (0.01, 10000)):
        steps, angles = [], []

        def record(step, model, steps=steps, angles=angles):
            steps.append(step)
            angles.append(max_angle(model.decoder.weight, top))

        model = train(FIF(beta=beta, n_hutchinson=2), x, steps=n_steps, lr=0.02, record=record)
        final = max_angle(model.decoder.weight, top)
        steps.append(n_steps)
        angles.append(final)
        trajectories[beta] = (steps, angles)
        print(f"FIF beta={beta}: angle to top-d at steps {steps[::10]}: {[round(a, 4) for a in angles[::10]]}, final {final:.4f}")
    ts, grads = whitened_gradients(x, sigma, top, bottom)
    print(f"max |grad| at whitened encoders: FIF {max(grads['fif']):.2e}, exact {max(grads['exact']):.2e}")

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    styles = {"theorem": ("k-", "theorem C.4 (decoder = A⁺)"), "exact": ("C0o", "exact (encoder log-volume), trained"),
              "fif": ("C3s", "FIF, trained")}
    for col, (which, title) in enumerate(((0, "top-d (PCA) subspace"), (1, "bottom-d subspace"))):
        ax = axes[0, col]
        fine = torch.logspace(math.log10(BETAS[0]), math.log10(BETAS[-1]), 400, dtype=DTYPE)
        theorem = [max_angle(vecs[:, torch.argsort(torch.log(lam) - 2 * b * lam)[:2]], (top, bottom)[which]) for b in fine]
        ax.plot(fine, theorem, styles["theorem"][0], label=styles["theorem"][1])
        for name in ("exact", "fif"):
            style, label = styles[name]
            ax.plot([r["beta"] for r in rows], [r[name][which] for r in rows], style, label=label, ms=5, alpha=0.85)
        points = [(r["beta"], a[which]) for r in rows for a in r["free"]]
        ax.plot(*zip(*points), "C2x", ms=5, label="exact loss, global minima (free linear decoder)")
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
    for beta, (steps, angles) in trajectories.items():
        ax.plot(steps, angles, label=f"FIF, β = {beta} (1/(2β) = {1 / (2 * beta):g} > λ_max)")
    ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("angle to top-d subspace (rad)")
    ax.set_title("FIF at small β still converges to PCA, more slowly")
    ax.legend(fontsize=8)
    ax = axes[1, 1]
    ax.plot(ts, grads["exact"], "C0-", label="exact: AΣ − (AAᵀ)⁻¹A")
    ax.plot(ts, grads["fif"], "C3-", label="FIF: AΣ − Bᵀ")
    ax.set_xlabel("row space of A: bottom-d (0) → top-d (1)")
    ax.set_ylabel("‖∂ NLL / ∂A‖ at AΣAᵀ = I, B optimal")
    ax.set_title("FIF's likelihood gradient vanishes at every whitened encoder")
    ax.legend(fontsize=8)
    fig.suptitle("Linear injective flow on N(0, Σ), Σ = V diag(2, 1, 0.5, 0.25) Vᵀ, d = 2 (FIF App. C)")
    fig.tight_layout()
    fig.savefig(OUT, dpi=110)
    print(f"figure -> {OUT}")


if __name__ == "__main__":
    main()
