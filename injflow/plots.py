r"""Every picture injflow draws, in one module: loss curves, image grids, the learned manifold of 2-D/3-D data,
sample scatter plots, latent marginals against the prior, Jacobian spectra, and a run's end-of-training set.

Every figure carries its provenance in its title (how many points, which sampler, which split). matplotlib runs with
the non-interactive Agg backend and writes PNGs without a creation date, so the same figure gives the same bytes.
Images are drawn only for image data (``data_kind == "image"``): flat image data need their ``image_shape``, which
the data and the model carry — nothing is guessed from the number of features.
"""

from __future__ import annotations

import csv
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:  # matplotlib is imported lazily, by _plt
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "read_metrics_csv",
    "plot_loss_curves",
    "plot_image_grid",
    "plot_manifold",
    "plot_sample_scatter",
    "plot_samples",
    "plot_latent_marginals",
    "plot_spectra",
    "plot_dimension_estimate",
    "plot_score_histograms",
    "draw_run_pictures",
]


def _plt() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Figure, out: str | Path, *, dpi: int = 100, tight: bool = True) -> Path:
    """Lays out, writes atomically (creating the folder, without a creation date) and closes a figure."""
    import io

    from .io import atomic_write_bytes

    if tight:
        fig.tight_layout()
    out = Path(out)
    buffer = io.BytesIO()  # rendered first, written atomically: a failed or killed write never leaves half a picture
    try:
        fig.savefig(buffer, format=out.suffix[1:].lower() or "png", dpi=dpi, metadata={"Software": None})
    finally:
        _plt().close(fig)
    return atomic_write_bytes(out, buffer.getvalue())


# --------------------------------------------------------------------------- loss curves


def read_metrics_csv(path: str | Path) -> dict[str, list[tuple[float, float]]]:
    """The series of a run's ``metrics.csv``: name → ``[(step, value), ...]`` (empty cells skipped)."""
    path = Path(path)
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    series: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        step = float(r.get("step") or 0)
        for k, v in r.items():
            if k in ("step", "epoch") or v in ("", None):
                continue
            try:
                series.setdefault(k, []).append((step, float(v)))
            except ValueError:
                continue
    return series


def plot_loss_curves(metrics_csv: str | Path, out: str | Path, *, include_steps: bool = True) -> Path | None:
    """One panel per logged term: training per step (optional) and per epoch, and validation, against the step.

    Arguments:
        metrics_csv: The run's ``metrics.csv``.
        out: The PNG to write.
        include_steps: Also draw the per-step training values (faint).

    Returns:
        The PNG's path, or ``None`` when nothing was logged yet.
    """
    series = read_metrics_csv(metrics_csv)
    terms = sorted({k.split("/", 1)[1].removesuffix("_epoch").removesuffix("_step") for k in series
                    if k.startswith(("train/", "val/"))})
    styles = [("val/{}", "validation", dict(lw=1.5, marker="o", ms=3)), ("train/{}_epoch", "train (epoch mean)", dict(lw=1.5))]
    if include_steps:
        styles += [("train/{}_step", "train (step)", dict(alpha=0.3, lw=0.8)), ("train/{}", "train", dict(alpha=0.3, lw=0.8))]
    terms = [t for t in terms if any(key.format(t) in series for key, _, _ in styles)]
    if not terms:
        return None
    plt = _plt()
    cols = min(3, len(terms))
    rows_n = math.ceil(len(terms) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.2 * rows_n), squeeze=False)
    for ax, term in zip(axes.flat, terms):
        values = []
        for key, label, style in reversed(styles):
            if key.format(term) in series:
                xs, ys = zip(*series[key.format(term)])
                ax.plot(xs, ys, label=label, **style)
                values += ys
        ax.set_title(term)
        ax.set_xlabel("step")
        if values and min(values) > 0 and max(values) / max(min(values), 1e-12) > 100:
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(terms):]:
        ax.axis("off")
    return _save(fig, out, dpi=110)


# --------------------------------------------------------------------------- images


def plot_image_grid(
    images: Tensor,
    out: str | Path,
    *,
    ncol: int = 8,
    title: str | None = None,
    data_range: tuple[float, float] = (0.0, 1.0),
    image_shape: Sequence[int] | None = None,
) -> Path:
    """A grid of images ``(N, C, H, W)`` (or flat rows with their ``image_shape``), clamped to ``data_range``, as one
    mosaic (white gutters; nearest-neighbour display, so the pixels are the model's)."""
    plt = _plt()
    x = images.detach().float().cpu()
    if x.ndim == 2:
        if image_shape is None:
            raise ValueError(f"flat images of {x.shape[1]} values need their image_shape (C, H, W) to be drawn")
        x = x.reshape(-1, *image_shape)
    lo, hi = data_range
    x = ((x - lo) / (hi - lo)).clamp(0, 1)
    n, c, h, w = x.shape
    ncol = min(ncol, n)
    nrow = math.ceil(n / ncol)
    gap = max(1, h // 16)
    mosaic = torch.ones(c, nrow * (h + gap) + gap, ncol * (w + gap) + gap)
    for i, img in enumerate(x):
        r, col = divmod(i, ncol)
        mosaic[:, gap + r * (h + gap): gap + r * (h + gap) + h, gap + col * (w + gap): gap + col * (w + gap) + w] = img
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
    return _save(fig, out, dpi=110, tight=False)


# --------------------------------------------------------------------------- points


@torch.no_grad()
def plot_manifold(flow: Any, data: Tensor, out: str | Path, *, samplers: list[str] | None = None, n_samples: int = 1000,
                  seed: int = 0, labels: Tensor | None = None) -> Path:
    """For 2-D/3-D data: data coloured by the (first) latent code, the decoded manifold, and samples per sampler.

    Arguments:
        flow: A trained :class:`~injflow.model.InjectiveFlow`.
        data: Points to show (e.g. the test split), shape ``(N, 2)`` or ``(N, 3)``.
        out: The PNG to write.
        samplers: Which samplers to draw from (default: the prior and every fitted one).
        n_samples: Samples per sampler.
        seed: Sampling seed.
        labels: Class labels of ``data`` for a conditional model (samples then use the same labels).
    """
    plt = _plt()
    data = data[:4000]
    labels = None if labels is None else labels[:4000]
    D = data.shape[1]
    z = flow.encode_all(data, c=labels).cpu()
    samplers = samplers or ["prior", *flow.samplers.keys()]
    n_panels = 1 + len(samplers)
    proj = "3d" if D == 3 else None
    fig = plt.figure(figsize=(4.5 * n_panels, 4.2))
    x = data.cpu().numpy()

    def axis(i: int) -> Axes:
        return fig.add_subplot(1, n_panels, i, projection=proj) if proj else fig.add_subplot(1, n_panels, i)

    ax = axis(1)
    sc = ax.scatter(*[x[:, j] for j in range(D)], c=z[:, 0].numpy(), s=3, cmap="viridis")
    fig.colorbar(sc, ax=ax, label="latent $z_1$", shrink=0.8)
    device = flow.device
    # The decoded manifold: a dense line through latent space for d = 1, decoded codes of the data otherwise.
    if flow.latent_dim == 1 and labels is None:
        lo, hi = float(z.min()), float(z.max())
        pad = 0.1 * (hi - lo + 1e-6)
        grid = torch.linspace(lo - pad, hi + pad, 800)[:, None]
        curve = flow.decode(grid.to(device)).cpu().numpy()
        ax.plot(*[curve[:, j] for j in range(D)], color="red", lw=1.5, label="decoder $g(z)$")
    else:
        proj_x = flow.decode(z.to(device), None if labels is None else labels.to(device)).cpu().numpy()
        ax.scatter(*[proj_x[:, j] for j in range(D)], color="red", s=1, label="$g(f(x))$")
    ax.set_title("data coloured by latent code")
    ax.legend(loc="lower right", fontsize=7)
    lims = [(x[:, j].min(), x[:, j].max()) for j in range(D)]
    for i, name in enumerate(samplers, start=2):
        ax = axis(i)
        c = None if labels is None else labels[torch.arange(n_samples) % labels.shape[0]]
        s = flow.sample(n_samples, sampler=name, seed=seed, c=c).cpu().numpy()
        ax.scatter(*[x[:, j] for j in range(D)], color="lightgray", s=2, label="data")
        ax.scatter(*[s[:, j] for j in range(D)], s=2, color="C1", label="samples")
        ax.set_title(f"samples: {name}")
        span = [(a - 0.25 * (b - a), b + 0.25 * (b - a)) for a, b in lims]
        ax.set_xlim(*span[0])
        ax.set_ylim(*span[1])
        ax.legend(loc="lower right", fontsize=7)
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
    return _save(fig, out, dpi=90)


def plot_samples(samples: Tensor, out: str | Path, *, data_kind: str, title: str,
                 image_shape: Sequence[int] | None = None, reference: Tensor | None = None,
                 data_range: tuple[float, float] = (0.0, 1.0)) -> Path:
    """A picture of samples that fits the data: an image grid for images (values in ``data_range``), a 2-D/3-D scatter
    for such points, else the samples over ``reference`` in its two leading principal components (or a histogram for
    D = 1)."""
    x = samples.detach().float().cpu()
    if data_kind == "image":
        return plot_image_grid(x[:64], out, title=title, image_shape=image_shape, data_range=data_range)
    flat = x.flatten(1)
    if flat.shape[1] in (2, 3) and reference is None:
        plt = _plt()
        fig = plt.figure(figsize=(5, 4.5))
        ax = fig.add_subplot(projection="3d" if flat.shape[1] == 3 else None)
        ax.scatter(*[flat[:, j].numpy() for j in range(flat.shape[1])], s=3)
        ax.set_title(title, fontsize=9)
        return _save(fig, out, dpi=110)
    ref = reference if reference is not None else flat
    return plot_sample_scatter(ref, {"samples": flat}, out, reference_label="data" if reference is not None else "samples",
                               captions={"samples": title})


# --------------------------------------------------------------------------- latents and spectra


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
        return _save(fig, out, dpi=100)
    _draw_spectrum_bands(ax, spectra)
    ax.set_ylabel(r"singular value $\sigma_i$ of $g'(z)$")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7)
    return _save(fig, out, dpi=100)


def _draw_spectrum_bands(ax: Axes, spectra: Mapping[str, Tensor | np.ndarray]) -> None:
    """Median per index with a 10–90 % band over the points, one colour per entry, log scale."""
    for i, (name, sv) in enumerate(spectra.items()):
        sv = torch.as_tensor(sv, dtype=torch.float64).clamp_min(1e-300)
        idx = np.arange(1, sv.shape[1] + 1)
        q = torch.quantile(sv, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64), dim=0).numpy()
        ax.plot(idx, q[1], marker="o" if sv.shape[1] <= 32 else None, ms=3, color=f"C{i}", label=f"{name} (n={sv.shape[0]})")
        ax.fill_between(idx, q[0], q[2], color=f"C{i}", alpha=0.2, lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("index i (descending)")
    ax.grid(alpha=0.3, which="both", lw=0.4)


def plot_dimension_estimate(
    spectra: Mapping[str, Tensor | np.ndarray],
    local_dims: Tensor | np.ndarray,
    out: str | Path,
    *,
    threshold: float,
    noise_std: float,
    estimate: int,
    title: str,
) -> Path:
    r"""The intrinsic-dimension estimate of :mod:`injflow.dimension` in two panels: (left) the singular-value spectra
    (median and 10–90 % band per index, log scale) with the threshold and the off-manifold noise scale as horizontal
    lines; (right) the histogram of the per-point counts above the threshold, with the global estimate marked."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.6, 3.8))
    _draw_spectrum_bands(left, spectra)
    left.axhline(threshold, color="k", ls="--", lw=1.0, label=f"threshold {threshold:.3g}")
    left.axhline(noise_std, color="0.5", ls=":", lw=1.0, label=f"noise std σ̂ = {noise_std:.3g}")
    left.set_ylabel(r"singular value $\sigma_i$")
    left.legend(fontsize=7)
    dims = np.asarray(local_dims, dtype=np.int64).ravel()
    top = int(max(dims.max(initial=0), estimate)) + 1
    right.hist(dims, bins=np.arange(-0.5, top + 1.5), color="C0", alpha=0.7, rwidth=0.9)
    right.axvline(estimate, color="k", ls="--", lw=1.0, label=f"global estimate {estimate}")
    right.set_xlabel("local dimension (singular values above the threshold)")
    right.set_ylabel("points")
    right.legend(fontsize=7)
    fig.suptitle(textwrap.fill(title, 130), fontsize=8)
    return _save(fig, out, dpi=100)


def plot_score_histograms(
    scores: Mapping[str, tuple[Tensor | np.ndarray, Tensor | np.ndarray]],
    out: str | Path,
    *,
    labels: tuple[str, str],
    aurocs: Mapping[str, float] | None = None,
    title: str,
    clip: float = 0.005,
) -> Path:
    """One panel per score: histograms of the score over the in-distribution and the out-of-distribution points
    (``scores``: name → ``(in, out)``), density-normalised on shared bins between the pooled ``clip`` and ``1 - clip``
    quantiles (points outside are counted in the outermost bins), with the AUROC in the panel title."""
    plt = _plt()
    k = len(scores)
    fig, axes = plt.subplots(1, k, figsize=(3.6 * k + 0.4, 3.3), squeeze=False)
    for ax, (name, (a, b)) in zip(axes[0], scores.items()):
        a = np.asarray(a, dtype=np.float64).ravel()
        b = np.asarray(b, dtype=np.float64).ravel()
        pooled = np.concatenate([a, b])
        pooled = pooled[np.isfinite(pooled)]
        lo, hi = np.quantile(pooled, [clip, 1 - clip]) if pooled.size else (0.0, 1.0)
        if not hi > lo:
            lo, hi = lo - 0.5, hi + 0.5
        bins = np.linspace(lo, hi, 60)
        for values, label, colour in ((a, labels[0], "C0"), (b, labels[1], "C3")):
            ax.hist(np.clip(values[np.isfinite(values)], lo, hi), bins=bins, density=True, alpha=0.5, color=colour,
                    label=f"{label} (n={values.size})")
        head = name if not aurocs or name not in aurocs else f"{name}: AUROC {aurocs[name]:.3f}"
        ax.set_title(head, fontsize=9)
        ax.set_xlabel(f"{name} (higher = more out-of-distribution)", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6)
    fig.suptitle(textwrap.fill(title, int(30 * k + 10)), fontsize=8)
    return _save(fig, out, dpi=100)


# --------------------------------------------------------------------------- a run's pictures


def draw_run_pictures(flow: Any, data: Any, run: Any, *, seed: int | None = None) -> list[Path]:
    """The end-of-training pictures of a run: loss curves, and the manifold (2-D/3-D data) or reconstructions and
    samples per sampler (images); returns the written paths.

    Arguments:
        flow: The trained :class:`~injflow.model.InjectiveFlow`.
        data: The run's :class:`~injflow.data.DataSplits` (its ``kind`` decides the pictures).
        run: The :class:`~injflow.rundir.RunDir`.
        seed: Sampling seed (default: the run's ``train.seed``).
    """
    if seed is None:
        seed = int(((flow.config or {}).get("train") or {}).get("seed", 0))
    written: list[Path] = []
    if (p := plot_loss_curves(run.metrics_csv, run.plots / "loss_curves.png")) is not None:
        written.append(p)
    x, c = data.reference()
    shape = tuple(x.shape[1:])
    if data.kind != "image" and len(shape) == 1 and shape[0] in (2, 3):
        written.append(plot_manifold(flow, x, run.plots / "manifold.png", seed=seed, labels=c))
    elif data.kind == "image":
        x, c = x[:32], None if c is None else c[:32]
        with torch.no_grad():
            was = flow.training
            flow.eval()
            rec = flow(x.to(flow.device), None if c is None else c.to(flow.device)).cpu()
            flow.train(was)
        pairs = torch.stack([x, rec], 1).reshape(-1, *shape)
        image_shape = data.image_shape
        value_range = getattr(flow, "value_range", (0.0, 1.0))  # images in the user's units (data.value_range)
        written.append(plot_image_grid(pairs, run.plots / "reconstructions.png", image_shape=image_shape,
                                       title="test data | reconstruction (pairs)", data_range=value_range))
        labels = None if not flow.conditional else torch.arange(64) % flow.num_classes
        for name in ["prior", *flow.samplers.keys()]:
            s = flow.sample(64, sampler=name, seed=seed, c=labels).cpu()
            title = f"samples: {name}" + (" (classes 0, 1, 2, ... in reading order)" if labels is not None else "")
            written.append(plot_image_grid(s, run.plots / f"samples_{name}.png", image_shape=image_shape, title=title,
                                           data_range=value_range))
    return written
