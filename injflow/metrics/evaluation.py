r"""The evaluation protocol of both papers on one data split, for any trained flow — as steps that return data,
and writers that turn the data into figures.

For the points :math:`x` of a split (usually ``test``):

1. :func:`reconstruction_metrics` — :math:`\|g(f(x)) - x\|^2` per point (mean, and ÷ D) and latent statistics of
   :math:`f(x)` against the prior and every post-fit sampler;
2. :func:`exact_likelihood` — the exact on-manifold NLL (FIF eq. 2, App. A) when :math:`d \le`
   ``exact_nll_max_dim``, with the singular-value spectrum of :math:`g'(z)` (FIF App. E.1.2, fig. 8) from the same
   Jacobians (:mod:`injflow.metrics.likelihood`);
3. :func:`sample_quality` — samples from the prior and from every post-fit sampler (full-covariance Gaussian,
   GMM) and the reconstructions of the reference points, each scored against the reference split: **FID**
   (Inception pool-3, :mod:`injflow.metrics.fid`) for images, the **FID-like W2** between Gaussian fits
   (:func:`~injflow.metrics.frechet.fid_like_w2`) otherwise. The number of samples and the reference split go into
   the metrics and into the caption of every figure.

:func:`evaluate_flow` runs the three and the writers (:func:`write_latent_figure`, :func:`write_spectrum`,
:func:`write_sample_figures`). All randomness comes from ``seed`` through explicit generators, so the same call
gives identical numbers. Everything runs on the flow's device.

The flow is duck-typed: it needs ``encode``, ``decode``, ``latent`` (``log_prob``, ``sample``), ``samplers``,
``sample(n, sampler=, seed=, c=)``, ``latent_dim`` and ``eval()``/``train()`` — as
:class:`injflow.model.InjectiveFlow` has. A conditional flow (``num_classes`` set) is evaluated with the split's
labels ``c``: reconstructions use them, and samples are drawn with the same labels.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..plots import plot_image_grid, plot_latent_marginals, plot_sample_scatter, plot_spectra
from .fid import ReferenceStatsCache, feature_stats
from .frechet import fid_like_w2, frechet_distance
from .likelihood import OnManifoldLikelihood, on_manifold_likelihood

__all__ = [
    "DEFAULT_FID_SAMPLES",
    "EvalOptions",
    "Evaluation",
    "SampleQuality",
    "evaluate_flow",
    "reconstruction_metrics",
    "exact_likelihood",
    "sample_quality",
    "write_latent_figure",
    "write_spectrum",
    "write_sample_figures",
]

#: Samples per sampler (and reference images) for FID by default: the papers' 10k.
DEFAULT_FID_SAMPLES = 10_000


@dataclass
class EvalOptions:
    """How to evaluate.

    Arguments:
        seed: Seed of every random draw (samples, prior draws for the latent plots).
        n_samples: Samples per sampler and reference points for sample quality; default: all N points, and at
            most :data:`DEFAULT_FID_SAMPLES` for FID.
        samplers: Which samplers (default: ``prior`` and every fitted one).
        fid: Compute the Inception FID for image data (``False`` skips sample quality for images).
        extractor: Feature extractor for FID (default: the offline Inception on the flow's device; raises
            :class:`~injflow.metrics.inception.InceptionWeightsMissingError` if its weights are absent).
        cache: Cache of reference statistics (default: :class:`ReferenceStatsCache` in the default folder).
        resize: ``"bilinear"`` or ``"bicubic"``, for the default Inception extractor.
        data_range: Values of black and white of image data.
        image_shape: ``(C, H, W)`` of flat image data (default: the flow's ``image_shape``).
        fid_batch_size: Images per Inception batch.
        exact_nll_max_dim: Skip the exact NLL (d Jacobian passes per point) above this latent dimension.
        batch_size: Points per batch for the Jacobians; ``chunk_size``: Jacobian columns per pass.
        n_grid: Images per sample grid.
        progress: Progress bars.
    """

    seed: int = 0
    n_samples: int | None = None
    samplers: Sequence[str] | None = None
    fid: bool = True
    extractor: Callable[[Tensor], Tensor] | None = None
    cache: ReferenceStatsCache | None = None
    resize: str = "bilinear"
    data_range: tuple[float, float] = (0.0, 1.0)
    image_shape: tuple[int, int, int] | None = None
    fid_batch_size: int = 50
    exact_nll_max_dim: int = 64
    batch_size: int = 256
    chunk_size: int | None = None
    n_grid: int = 64
    progress: bool = True


@dataclass
class Evaluation:
    """What :func:`evaluate_flow` returns: the JSON-ready ``metrics``, wall-clock ``timings`` (seconds; kept out of
    the metrics so reruns compare equal) and the written ``artefacts`` (name → path)."""

    metrics: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    artefacts: dict[str, Path] = field(default_factory=dict)


@dataclass
class SampleQuality:
    """What :func:`sample_quality` computed: the metrics, the reference points, their reconstructions and the
    samples per sampler (on the CPU), for the figures."""

    metrics: dict[str, Any]
    reference: Tensor
    reconstructions: Tensor
    samples: dict[str, Tensor]


def _device_of(flow: Any) -> torch.device:
    for p in flow.parameters():
        return p.device
    return torch.device("cpu")


def _conditional(flow: Any) -> bool:
    return getattr(flow, "num_classes", None) is not None


def _labels_kw(flow: Any, c: Tensor | None) -> dict[str, Any]:
    return {"c": c} if _conditional(flow) else {}


def _map_batches(fn: Callable[..., Tensor], x: Tensor, c: Tensor | None, device: torch.device, batch_size: int = 1024) -> Tensor:
    out = []
    for i in range(0, x.shape[0], batch_size):
        args = (x[i: i + batch_size].to(device),) + (() if c is None else (c[i: i + batch_size].to(device),))
        out.append(fn(*args).cpu())
    return torch.cat(out)


# --------------------------------------------------------------------------- 1. reconstruction and latents


@torch.no_grad()
def reconstruction_metrics(flow: Any, x: Tensor, c: Tensor | None = None) -> tuple[dict[str, Any], Tensor]:
    """Reconstruction error and latent statistics of ``x``; returns ``(metrics, z)`` with ``z = f(x)`` on the CPU."""
    device = _device_of(flow)
    c = c if _conditional(flow) else None
    z = _map_batches(flow.encode, x, c, device)
    x_hat = _map_batches(flow.decode, z, c, device)
    rec = (x_hat - x).flatten(1).pow(2).sum(1)
    big_d = math.prod(x.shape[1:])
    metrics: dict[str, Any] = {
        "reconstruction_error": float(rec.mean()),
        "reconstruction_mse_per_dim": float(rec.mean() / big_d),
        "latent": {
            "mean": z.mean(0).tolist(),
            "std": z.std(0).tolist(),
            "mean_norm": float(z.norm(dim=1).mean()),
            "prior_log_prob": float(flow.latent.log_prob(z.to(device)).mean()),
        },
    }
    for name in flow.samplers.keys():
        metrics["latent"][f"{name}_log_prob"] = float(flow.samplers[name].log_prob(z.to(device)).mean())
    return metrics, z


def write_latent_figure(out: Path, flow: Any, z: Tensor, *, split: str, seed: int) -> tuple[Path, str]:
    """Marginals and QQ plots of the codes against prior draws; returns ``(path, caption)``."""
    gen = torch.Generator().manual_seed(seed)
    prior = flow.latent.sample(max(z.shape[0], 2000), generator=gen).cpu()
    n = z.shape[0]
    path = plot_latent_marginals(
        z, prior, out / "latents.png",
        title=f"latent codes f(x) of the {split} split (n={n}) vs the prior ({prior.shape[0]} draws)")
    return path, (f"Marginals of f(x) for the {n} points of the {split} split against {prior.shape[0]} prior draws: "
                  f"histograms (top) and QQ plots (bottom; on the diagonal = matches the prior).")


# --------------------------------------------------------------------------- 2. exact likelihood


def exact_likelihood(flow: Any, x: Tensor, c: Tensor | None, options: EvalOptions) -> OnManifoldLikelihood | None:
    """The exact on-manifold NLL and decoder spectrum of every point, or ``None`` when d > ``exact_nll_max_dim``."""
    if int(flow.latent_dim) > options.exact_nll_max_dim:
        return None
    device = _device_of(flow)
    kw = dict(batch_size=options.batch_size, chunk_size=options.chunk_size, device=device, progress=options.progress)
    if not _conditional(flow) or c is None:
        return on_manifold_likelihood(x, flow.encode, flow.decode, flow.latent.log_prob, **kw)
    parts, order = [], []
    for k in c.unique().tolist():  # one class at a time: the Jacobian code reshapes the batch
        rows = (c == k).nonzero().flatten()
        view = flow.with_label(k)
        parts.append(on_manifold_likelihood(x[rows], view.encode, view.decode, flow.latent.log_prob, **kw))
        order.append(rows)
    inverse = torch.argsort(torch.cat(order))
    return OnManifoldLikelihood(**{f.name: torch.cat([getattr(p, f.name) for p in parts])[inverse]
                                   for f in dataclasses.fields(OnManifoldLikelihood)})


def write_spectrum(out: Path, likelihood: OnManifoldLikelihood, *, split: str) -> tuple[Path, Path, str]:
    """``spectrum.npz`` and the spectrum figure; returns ``(npz, png, caption)``."""
    n = likelihood.singular_values.shape[0]
    out.mkdir(parents=True, exist_ok=True)
    from ..io import atomic_savez

    npz = atomic_savez(out / "spectrum.npz", singular_values=likelihood.singular_values.numpy(),
                       nll=likelihood.nll.numpy(), reconstruction=likelihood.reconstruction.numpy())
    png = plot_spectra({"decoder": likelihood.singular_values}, out / "spectrum.png",
                       title=f"singular values of g'(z), z = f(x), {split} split (n={n})")
    return npz, png, (f"Singular values of the decoder Jacobian at the {n} encoded points of the {split} split: "
                      f"median per index with the 10-90 % band (FIF fig. 8).")


# --------------------------------------------------------------------------- 3. sample quality


def _default_extractor(flow: Any, x: Tensor, options: EvalOptions) -> Callable[[Tensor], Tensor]:
    from .inception import InceptionFeatureExtractor, InceptionWeightsMissingError

    shape = tuple(x.shape[1:])
    image_shape = options.image_shape or getattr(flow, "image_shape", None) or (shape if len(shape) == 3 else None)
    try:
        return InceptionFeatureExtractor(device=_device_of(flow), resize=options.resize, data_range=options.data_range,
                                         image_shape=image_shape)
    except InceptionWeightsMissingError as e:
        raise InceptionWeightsMissingError(f"{e}; or evaluate without FID (fid=False, `injflow evaluate --no-fid`)") from None


def sample_quality(flow: Any, x: Tensor, c: Tensor | None, *, image: bool, split: str, dataset: str,
                   options: EvalOptions, names: list[str], log: Callable[[str], None]) -> SampleQuality:
    """FID (images) or FID-like W2 of the reconstructions and of each sampler's samples against the split."""
    n_all = int(x.shape[0])
    cap = DEFAULT_FID_SAMPLES if image else n_all
    n = min(n_all, cap) if options.n_samples is None else int(options.n_samples)
    if not 2 <= n <= n_all:
        raise ValueError(f"n_samples={n} must be between 2 and the {n_all} points of the {split} split")
    device = _device_of(flow)
    c = c if _conditional(flow) else None
    ref_x, ref_c = x[:n], None if c is None else c[:n]
    with torch.no_grad():
        recon = _map_batches(flow, ref_x, ref_c, device)
    drawn = {name: flow.sample(n, sampler=name, seed=options.seed, **_labels_kw(flow, ref_c)).cpu() for name in names}
    sq: dict[str, Any] = {"reference_split": split, "n_reference": n, "n_samples": n, "seed": int(options.seed)}
    if image:
        extractor = options.extractor or _default_extractor(flow, x, options)
        cache = options.cache if options.cache is not None else ReferenceStatsCache()
        log(f"[injflow] FID: {n} reference images ({split}) and {n} images per sampler {['reconstruction', *names]}")
        ref_stats, hit = cache.load_or_compute(ref_x, extractor, label=f"{dataset}-{split}",
                                               batch_size=options.fid_batch_size, progress=options.progress)
        log(f"[injflow] reference statistics {'from the cache' if hit else 'computed and cached'}: "
            f"{cache.path(ref_x, extractor, label=f'{dataset}-{split}')}")

        def score(images: Tensor, what: str) -> float:
            stats = feature_stats(images, extractor, batch_size=options.fid_batch_size, progress=options.progress,
                                  desc=f"FID {what}")
            return frechet_distance(stats, ref_stats)

        sq.update(metric="fid", feature_extractor=getattr(extractor, "identity", type(extractor).__name__))
    else:
        def score(samples: Tensor, what: str) -> float:
            return fid_like_w2(samples, ref_x)

        sq.update(metric="fid_like_w2")
    sq["reconstruction"] = score(recon, "reconstruction")
    for name in names:
        sq[name] = score(drawn[name], name)
    return SampleQuality(sq, ref_x, recon, drawn)


def write_sample_figures(out: Path, quality: SampleQuality, *, image: bool, split: str, options: EvalOptions,
                         image_shape: tuple[int, ...] | None) -> list[tuple[str, Path, str]]:
    """Reconstruction and sample grids (images) or scatter panels (points); returns ``(name, path, caption)``."""
    sq, n = quality.metrics, quality.metrics["n_samples"]
    label = "FID" if image else "W2"
    names = list(quality.samples)
    figures = []
    if image:
        k = min(options.n_grid // 2, n)
        pairs = torch.stack([quality.reference[:k], quality.reconstructions[:k]], 1).reshape(-1, *quality.reference.shape[1:])
        path = plot_image_grid(pairs, out / "reconstructions.png", data_range=options.data_range, image_shape=image_shape,
                               title=f"{split} data | reconstruction, {k} pairs of {n}; "
                                     f"{label} = {sq['reconstruction']:.2f} vs the {split} split (n={n})")
        figures.append(("reconstructions", path, f"{k} {split} images (left) and their reconstructions g(f(x)) (right); "
                        f"{label} of all {n} reconstructions vs the {n} {split} images: {sq['reconstruction']:.3f}."))
        for name in names:
            path = plot_image_grid(quality.samples[name][:options.n_grid], out / f"samples_{name}.png",
                                   data_range=options.data_range, image_shape=image_shape,
                                   title=f"samples: {name}, {min(options.n_grid, n)} of {n}; {label} = {sq[name]:.2f} "
                                         f"vs the {split} split (n={n})")
            figures.append((f"samples_{name}", path, f"{min(options.n_grid, n)} of the {n} samples from the {name} "
                            f"sampler; {label} vs the {n} {split} images: {sq[name]:.3f}."))
    else:
        panels = {"reconstruction": quality.reconstructions, **quality.samples}
        captions = {k: f"{k}: {label}={sq[k]:.3g} (n={n} vs {split} n={n})" for k in panels}
        path = plot_sample_scatter(quality.reference, panels, out / "samples.png", reference_label=f"{split} data",
                                   captions=captions)
        figures.append(("samples", path, f"Reconstructions and samples ({n} each) over the {n} points of the {split} "
                        f"split; {label} (squared W2 between Gaussian fits) in each panel title."))
    return figures


# --------------------------------------------------------------------------- all of it


def evaluate_flow(
    flow: Any,
    x: Tensor,
    *,
    kind: str,
    out_dir: str | Path | None = None,
    split: str = "test",
    dataset: str = "data",
    c: Tensor | None = None,
    options: EvalOptions | None = None,
    log: Callable[[str], None] | None = print,
    **option_values: Any,
) -> Evaluation:
    r"""Evaluates ``flow`` on the points ``x`` of one split (see the module docstring for what is computed).

    Arguments:
        flow: A trained flow (duck-typed, e.g. :class:`~injflow.model.InjectiveFlow`).
        x: The split's points ``(N, *data_shape)``.
        kind: ``"image"``, ``"tabular"`` or ``"toy"``; images get FID, the others the FID-like W2.
        out_dir: Where figures and ``spectrum.npz`` go (``None``: no files).
        split, dataset: Names written into the metrics, captions and cache file names.
        c: Class labels of ``x`` for a conditional flow.
        options: An :class:`EvalOptions`; its fields may also be given as keywords (``seed=1, fid=False``).
        log: Where progress lines go (``None``: silent).
    """
    options = dataclasses.replace(options or EvalOptions(), **option_values)
    say = log or (lambda _msg: None)
    out = Path(out_dir) if out_dir is not None else None
    n_all, data_shape = int(x.shape[0]), tuple(x.shape[1:])
    image = kind == "image" or x.ndim == 4
    image_shape = options.image_shape or getattr(flow, "image_shape", None)
    timings: dict[str, float] = {}
    artefacts: dict[str, Path] = {}
    figures: dict[str, dict[str, str]] = {}

    def figure(name: str, path: Path, caption: str) -> None:
        artefacts[f"figure {name}"] = path
        figures[name] = {"path": str(path.relative_to(out.parent)) if out is not None else str(path), "caption": caption}

    names = list(options.samplers) if options.samplers is not None else ["prior", *flow.samplers.keys()]
    for name in names:
        if name != "prior" and name not in flow.samplers:
            raise ValueError(f"sampler {name!r} is not fitted; fitted: {['prior', *flow.samplers.keys()]}")
    if _conditional(flow) and c is None:
        raise ValueError("the flow is conditional: pass the split's labels c=")
    if image and options.fid and options.extractor is None:  # fail before the long computations when weights are absent
        options = dataclasses.replace(options, extractor=_default_extractor(flow, x, options))

    was_training = flow.training
    flow.eval()
    try:
        t0 = time.perf_counter()
        rec_metrics, z = reconstruction_metrics(flow, x, c)
        timings["encode"] = time.perf_counter() - t0
        metrics: dict[str, Any] = {"dataset": dataset, "split": split, "n": n_all, "data_dim": math.prod(data_shape),
                                   "latent_dim": int(flow.latent_dim), "seed": int(options.seed), **rec_metrics}
        if out is not None:
            figure("latents", *write_latent_figure(out, flow, z, split=split, seed=options.seed))

        t0 = time.perf_counter()
        if int(flow.latent_dim) <= options.exact_nll_max_dim:
            say(f"[injflow] exact on-manifold NLL of {n_all} points (d={flow.latent_dim} Jacobian columns each)")
        likelihood = exact_likelihood(flow, x, c, options)
        if likelihood is not None:
            timings["exact_nll"] = time.perf_counter() - t0
            s = likelihood.summary(math.prod(data_shape))
            metrics.update(nll=s["nll"], nll_per_dim=s["nll_per_dim"], nll_std=s["nll_std"],
                           log_volume_mean=s["log_volume_mean"], spectrum=s["spectrum"])
            metrics["nll_note"] = (
                "exact NLL of x by the encoder's change of variables (d = D, a free-form flow); reconstruction_error "
                "says how far g is from the inverse" if int(flow.latent_dim) == math.prod(data_shape) else
                "exact on-manifold NLL of the projection g(f(x)) (FIF eq. 2); read with reconstruction_error"
            )
            if out is not None:
                npz, png, caption = write_spectrum(out, likelihood, split=split)
                artefacts["spectrum"] = npz
                figure("spectrum", png, caption)
        else:
            metrics["nll"] = None
            metrics["nll_note"] = f"skipped: d={flow.latent_dim} > exact_nll_max_dim={options.exact_nll_max_dim}"

        if image and not options.fid:
            metrics["sample_quality"] = {"metric": None, "note": "skipped (--no-fid)"}
        else:
            t0 = time.perf_counter()
            quality = sample_quality(flow, x, c, image=image, split=split, dataset=dataset, options=options, names=names,
                                     log=say)
            timings["sample_quality"] = time.perf_counter() - t0
            metrics["sample_quality"] = quality.metrics
            if out is not None:
                for name, path, caption in write_sample_figures(out, quality, image=image, split=split, options=options,
                                                                image_shape=image_shape):
                    figure(name, path, caption)
        metrics["figures"] = figures
    finally:
        flow.train(was_training)
    return Evaluation(metrics, timings, artefacts)
