"""Pictures of a run: loss curves, the learned manifold (2-D/3-D data), image grids of reconstructions and samples.

matplotlib is imported inside the functions with the non-interactive Agg backend (no display needed).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["plot_loss_curves", "plot_manifold", "plot_image_grid", "draw_run_pictures"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: str | Path, *, dpi: int) -> Path:
    """Lays out, writes (creating the folder) and closes a figure."""
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    _plt().close(fig)
    return out


def plot_loss_curves(metrics_csv: str | Path, out: str | Path) -> Path | None:
    """One panel per logged term: training (per epoch) and validation curves against the optimiser step.

    Arguments:
        metrics_csv: The run's ``metrics.csv``.
        out: The PNG to write.

    Returns:
        The PNG's path, or ``None`` when nothing was logged yet.
    """
    path = Path(metrics_csv)
    if not path.exists():
        return None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    series: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        step = float(r.get("step") or 0)
        for k, v in r.items():
            if k == "step" or v in ("", None):
                continue
            series.setdefault(k, []).append((step, float(v)))
    terms = sorted({k.split("/", 1)[1].removesuffix("_epoch").removesuffix("_step") for k in series if "/" in k})
    terms = [t for t in terms if any(f"{s}/{t}{suf}" in series for s in ("train", "val") for suf in ("_step", "_epoch", ""))]
    if not terms:
        return None
    plt = _plt()
    cols = min(3, len(terms))
    rows_n = math.ceil(len(terms) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.2 * rows_n), squeeze=False)
    for ax, term in zip(axes.flat, terms):
        for key, label, style in (
            (f"train/{term}_step", "train (step)", dict(alpha=0.3, lw=0.8)),
            (f"train/{term}", "train", dict(alpha=0.3, lw=0.8)),
            (f"train/{term}_epoch", "train (epoch mean)", dict(lw=1.5)),
            (f"val/{term}", "validation", dict(lw=1.5, marker="o", ms=3)),
        ):
            if key in series:
                xs, ys = zip(*series[key])
                ax.plot(xs, ys, label=label, **style)
        ax.set_title(term)
        ax.set_xlabel("step")
        vals = [v for k, s in series.items() if k.split("/", 1)[-1].startswith(term) for _, v in s]
        if vals and min(vals) > 0 and max(vals) / max(min(vals), 1e-12) > 100:
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(terms):]:
        ax.axis("off")
    return _save(fig, out, dpi=110)


@torch.no_grad()
def plot_manifold(flow, data: Tensor, out: str | Path, *, samplers: list[str] | None = None, n_samples: int = 1000, seed: int = 0) -> Path:
    """For 2-D/3-D data: data coloured by the (first) latent code, the decoded manifold, and samples per sampler.

    Arguments:
        flow: A trained :class:`~injflow.train.model.InjectiveFlow`.
        data: Points to show (e.g. the test split), shape ``(N, 2)`` or ``(N, 3)``.
        out: The PNG to write.
        samplers: Which samplers to draw from (default: the prior and every fitted one).
        n_samples: Samples per sampler.
        seed: Sampling seed.
    """
    plt = _plt()
    data = data[:4000]
    D = data.shape[1]
    z = flow.encode_all(data).cpu()
    samplers = samplers or ["prior", *flow.samplers.keys()]
    n_panels = 1 + len(samplers)
    proj = "3d" if D == 3 else None
    fig = plt.figure(figsize=(4.5 * n_panels, 4.2))
    x = data.cpu().numpy()

    def axis(i):
        return fig.add_subplot(1, n_panels, i, projection=proj) if proj else fig.add_subplot(1, n_panels, i)

    ax = axis(1)
    sc = ax.scatter(*[x[:, j] for j in range(D)], c=z[:, 0].numpy(), s=3, cmap="viridis")
    fig.colorbar(sc, ax=ax, label="latent $z_1$", shrink=0.8)
    # The decoded manifold: a dense line through latent space for d = 1, decoded codes of the data otherwise.
    if flow.latent_dim == 1:
        lo, hi = float(z.min()), float(z.max())
        pad = 0.1 * (hi - lo + 1e-6)
        grid = torch.linspace(lo - pad, hi + pad, 800)[:, None]
        curve = flow.decode(grid.to(flow._device())).cpu().numpy()
        ax.plot(*[curve[:, j] for j in range(D)], color="red", lw=1.5, label="decoder $g(z)$")
    else:
        proj_x = flow.decode(z.to(flow._device())).cpu().numpy()
        ax.scatter(*[proj_x[:, j] for j in range(D)], color="red", s=1, label="$g(f(x))$")
    ax.set_title("data coloured by latent code")
    ax.legend(loc="lower right", fontsize=7)
    lims = [(x[:, j].min(), x[:, j].max()) for j in range(D)]
    for i, name in enumerate(samplers, start=2):
        ax = axis(i)
        s = flow.sample(n_samples, sampler=name, seed=seed).cpu().numpy()
        ax.scatter(*[x[:, j] for j in range(D)], color="lightgray", s=2, label="data")
        ax.scatter(*[s[:, j] for j in range(D)], s=2, color="C1", label="samples")
        ax.set_title(f"samples: {name}")
        span = [(a - 0.25 * (b - a), b + 0.25 * (b - a)) for a, b in lims]
        ax.set_xlim(*span[0])
        ax.set_ylim(*span[1])
        ax.legend(loc="lower right", fontsize=7)
    return _save(fig, out, dpi=110)


def plot_image_grid(images: Tensor, out: str | Path, *, ncol: int = 8, title: str | None = None) -> Path:
    """Writes a grid of images ``(N, C, H, W)`` (values are min-max scaled per grid for display)."""
    plt = _plt()
    images = images.detach().float().cpu()
    if images.ndim == 2:  # flat data that is a perfect square, e.g. 8x8 digits stored as 64 features
        side = int(round(math.sqrt(images.shape[1])))
        images = images.reshape(-1, 1, side, side)
    n = images.shape[0]
    nrow = math.ceil(n / ncol)
    lo, hi = images.min(), images.max()
    images = (images - lo) / (hi - lo + 1e-8)
    fig, axes = plt.subplots(nrow, ncol, figsize=(ncol * 1.1, nrow * 1.1 + (0.3 if title else 0)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img in zip(axes.flat, images):
        if img.shape[0] == 1:
            ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(img[:3].permute(1, 2, 0).numpy())
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, out, dpi=100)


def draw_run_pictures(flow, *, kind: str, test: Tensor, plots_dir: str | Path, metrics_csv: str | Path | None = None, seed: int = 0) -> list[Path]:
    """All pictures a run gets for its data type; returns the written paths."""
    plots_dir = Path(plots_dir)
    written: list[Path] = []
    if metrics_csv is not None and (p := plot_loss_curves(metrics_csv, plots_dir / "loss_curves.png")):
        written.append(p)
    shape = tuple(test.shape[1:])
    if len(shape) == 1 and shape[0] in (2, 3):
        written.append(plot_manifold(flow, test, plots_dir / "manifold.png", seed=seed))
    elif kind == "image" or len(shape) == 3:
        x = test[:32]
        with torch.no_grad():
            was = flow.training
            flow.eval()
            rec = flow(x.to(flow._device())).cpu()
            flow.train(was)
        pairs = torch.stack([x, rec], 1).reshape(-1, *shape)
        written.append(plot_image_grid(pairs, plots_dir / "reconstructions.png", title="test data | reconstruction (pairs)"))
        for name in ["prior", *flow.samplers.keys()]:
            s = flow.sample(64, sampler=name, seed=seed).cpu()
            written.append(plot_image_grid(s, plots_dir / f"samples_{name}.png", title=f"samples: {name}"))
    return written
