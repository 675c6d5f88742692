"""Figures of an evaluation: image grids, sample scatter plots, latent marginals vs the prior, Jacobian spectra.

Every figure carries its provenance in the title (how many points, which sampler, which reference split), as
the papers' protocol asks. matplotlib runs with the non-interactive Agg backend.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["plot_image_grid", "plot_sample_scatter", "plot_latent_marginals", "plot_spectra"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: str | Path, dpi: int = 100) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Fixed metadata: the same figure gives the same bytes (no creation date), so reruns are comparable.
    fig.savefig(out, dpi=dpi, metadata={"Software": None})
    _plt().close(fig)
    return out


def plot_image_grid(
    images: Tensor,
    out: str | Path,
    *,
    ncol: int = 8,
    title: str | None = None,
    data_range: tuple[float, float] = (0.0, 1.0),
    image_shape: tuple[int, int, int] | None = None,
) -> Path:
    """A grid of images ``(N, C, H, W)`` (or flat rows of square images), clamped to ``data_range``, as one mosaic
    (white 1-pixel gutters; nearest-neighbour display, so the pixels are the model's)."""
    from .inception import infer_image_shape

    plt = _plt()
    x = images.detach().float().cpu()
    if x.ndim == 2:
        x = x.reshape(-1, *(image_shape or infer_image_shape(x.shape[1])))
    lo, hi = data_range
    x = ((x - lo) / (hi - lo)).clamp(0, 1)
    n, c, h, w = x.shape
    ncol = min(ncol, n)
    nrow = math.ceil(n / ncol)
    gap = max(1, h // 16)
    mosaic = torch.ones(c, nrow * (h + gap) + gap, ncol * (w + gap) + gap)
    for i, img in enumerate(x):
        r, col = divmod(i, ncol)
        mosaic[:, gap + r * (h + gap) : gap + r * (h + gap) + h, gap + col * (w + gap) : gap + col * (w + gap) + w] = img
    fig_w = max(3.0, 0.8 * ncol)  # about 0.8 inch (88 pixels) per image, whatever its resolution
    fig = plt.figure(figsize=(fig_w, fig_w * mosaic.shape[1] / mosaic.shape[2] + (0.35 if title else 0)))
    ax = fig.add_axes((0, 0, 1, 1 - (0.35 / fig.get_figheight() if title else 0)))
    ax.axis("off")
    if c == 1:
        ax.imshow(mosaic[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(mosaic[:3].permute(1, 2, 0).numpy(), interpolation="nearest")
    if title:
        fig.suptitle(title, fontsize=8, y=0.995, va="top")
    return _save(fig, out, dpi=110)


def _project(reference: np.ndarray, *others: np.ndarray) -> tuple[list[np.ndarray], list[str]]:
    """Raw coordinates for D ≤ 2, else the reference's first two principal components."""
    if reference.shape[1] <= 2:
        return [reference, *others], [f"$x_{i + 1}$" for i in range(reference.shape[1])]
    mean = reference.mean(0)
    _, _, vt = np.linalg.svd(reference - mean, full_matrices=False)
    basis = vt[:2].T
    return [(a - mean) @ basis for a in (reference, *others)], ["PC 1 (reference)", "PC 2 (reference)"]


def plot_sample_scatter(
    reference: Tensor, samples: Mapping[str, Tensor], out: str | Path, *, reference_label: str, captions: Mapping[str, str]
) -> Path:
    """One panel per sampler: samples over the reference points (raw coordinates for D ≤ 2, else the
    reference's two leading principal components)."""
    plt = _plt()
    ref = reference.detach().double().cpu().flatten(1).numpy()
    names = list(samples)
    projected, labels = _project(ref, *[samples[k].detach().double().cpu().flatten(1).numpy() for k in names])
    fig, axes = plt.subplots(1, len(names), figsize=(4.0 * len(names), 3.8), squeeze=False)
    r = projected[0]
    lo, hi = r.min(0), r.max(0)
    pad = 0.25 * (hi - lo + 1e-9)
    for ax, name, s in zip(axes.flat, names, projected[1:]):
        if r.shape[1] == 1:
            ax.hist(r[:, 0], bins=60, density=True, alpha=0.5, color="gray", label=reference_label)
            ax.hist(s[:, 0], bins=60, density=True, alpha=0.5, color="C1", label=name)
        else:
            ax.scatter(r[:, 0], r[:, 1], s=2, color="lightgray", label=reference_label)
            ax.scatter(s[:, 0], s[:, 1], s=2, color="C1", alpha=0.6, label=name)
            ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
            ax.set_ylabel(labels[1])
        ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
        ax.set_xlabel(labels[0])
        ax.set_title(captions.get(name, name), fontsize=8)
        ax.legend(fontsize=7, loc="lower right", markerscale=3)
    fig.tight_layout()
    return _save(fig, out, dpi=90)


def plot_latent_marginals(z: Tensor, prior_samples: Tensor, out: str | Path, *, title: str, max_dims: int = 8) -> Path:
    """Histograms of the first latent coordinates of encoded data against the prior's marginals (top row) and
    QQ plots of the same coordinates against the prior's quantiles (bottom row; on the diagonal = matches)."""
    plt = _plt()
    z = z.detach().double().cpu().numpy()
    p = prior_samples.detach().double().cpu().numpy()
    k = min(max_dims, z.shape[1])
    width = max(2.3 * k + 0.4, 5.0)
    fig, axes = plt.subplots(2, k, figsize=(width, 4.8), squeeze=False)
    qs = np.linspace(0.005, 0.995, 199)
    for j in range(k):
        ax = axes[0, j]
        both = np.concatenate([z[:, j], p[:, j]])
        lo, hi = np.quantile(both, [0.001, 0.999])
        bins = np.linspace(lo, hi, 50)
        ax.hist(p[:, j], bins=bins, density=True, histtype="step", color="k", lw=1.2, label="prior")
        ax.hist(z[:, j], bins=bins, density=True, alpha=0.5, color="C0", label="encoded data")
        ax.set_title(f"$z_{{{j + 1}}}$", fontsize=9)
        ax.tick_params(labelsize=6)
        if j == 0:
            ax.legend(fontsize=6)
        ax = axes[1, j]
        qz, qp = np.quantile(z[:, j], qs), np.quantile(p[:, j], qs)
        ax.plot(qp, qz, ".", ms=2, color="C0")
        lim = [min(qp.min(), qz.min()), max(qp.max(), qz.max())]
        ax.plot(lim, lim, "k--", lw=0.8)
        ax.set_xlabel("prior quantile", fontsize=7)
        if j == 0:
            ax.set_ylabel("data quantile", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.suptitle(textwrap.fill(title, int(width * 15)), fontsize=8)
    fig.tight_layout()
    return _save(fig, out, dpi=90)


def plot_spectra(spectra: Mapping[str, Tensor | np.ndarray], out: str | Path, *, title: str) -> Path:
    r"""Sorted singular values of the decoder Jacobian against their index (log scale; FIF fig. 8): median per
    index with a 10–90 % band over the points, one line per entry of ``spectra`` (name → ``(N, d)``). For d = 1 the
    histogram of :math:`\log_{10}\sigma_1` over the points instead."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    if all(np.shape(sv)[1] == 1 for sv in spectra.values()):  # d = 1: the distribution of σ₁ over the points
        for i, (name, sv) in enumerate(spectra.items()):
            v = np.log10(np.clip(np.asarray(sv, dtype=np.float64)[:, 0], 1e-300, None))
            ax.hist(v, bins=50, histtype="step", lw=1.5, color=f"C{i}", label=f"{name} (n={len(v)})")
        ax.set_xlabel(r"$\log_{10} \sigma_1$ of $g'(z)$ (d = 1)")
        ax.set_ylabel("points")
        ax.set_title(title, fontsize=8)
        ax.legend(fontsize=7)
        fig.tight_layout()
        return _save(fig, out, dpi=100)
    for i, (name, sv) in enumerate(spectra.items()):
        sv = torch.as_tensor(sv, dtype=torch.float64).clamp_min(1e-300)
        idx = np.arange(1, sv.shape[1] + 1)
        q = torch.quantile(sv, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64), dim=0).numpy()
        ax.plot(idx, q[1], marker="o" if sv.shape[1] <= 32 else None, ms=3, color=f"C{i}", label=f"{name} (n={sv.shape[0]})")
        ax.fill_between(idx, q[0], q[2], color=f"C{i}", alpha=0.2, lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("index i (descending)")
    ax.set_ylabel(r"singular value $\sigma_i$ of $g'(z)$")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both", lw=0.4)
    fig.tight_layout()
    return _save(fig, out, dpi=100)
