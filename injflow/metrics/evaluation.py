r"""The evaluation protocol of both papers on one data split, for any trained flow.

:func:`evaluate_flow` computes, for the points :math:`x` of a split (usually ``test``):

1. **Reconstruction**: :math:`\|g(f(x)) - x\|^2` per point (mean, and ÷ D).
2. **Exact on-manifold NLL** (FIF eq. 2, App. A) when :math:`d \le` ``exact_nll_max_dim``, with the
   singular-value spectrum of :math:`g'(z)` (FIF App. E.1.2, fig. 8) from the same Jacobians
   (:mod:`injflow.metrics.likelihood`).
3. **Latent statistics** and marginal histograms / QQ plots of :math:`f(x)` against the prior.
4. **Sample quality** (Kumar et al. §4; FIF §5): samples from the prior and from every post-fit sampler
   (full-covariance Gaussian, 10-component GMM) and the reconstructions of the reference points, each scored
   against the reference split — **FID** (Inception pool-3, :mod:`injflow.metrics.fid`) for images, the
   **FID-like W2** between Gaussian fits (:func:`~injflow.metrics.frechet.fid_like_w2`) otherwise. The number of
   samples and the reference split go into the metrics and into the caption of every figure.

All randomness comes from ``seed`` through explicit generators, so the same call gives identical numbers.

The flow is duck-typed (this layer sits below ``injflow.train``): it needs ``encode``, ``decode``, ``latent``
(``log_prob``, ``sample``), ``samplers`` (name → fitted latent), ``sample(n, sampler=, seed=)``, ``latent_dim``
and ``eval()``/``train()`` — as :class:`injflow.train.model.InjectiveFlow` has.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .fid import ReferenceStatsCache, feature_stats
from .frechet import fid_like_w2, frechet_distance
from .likelihood import on_manifold_likelihood
from .plots import plot_image_grid, plot_latent_marginals, plot_sample_scatter, plot_spectra

__all__ = ["Evaluation", "evaluate_flow", "DEFAULT_FID_SAMPLES"]

#: Samples per sampler (and reference images) for FID by default: the papers' 10k.
DEFAULT_FID_SAMPLES = 10_000


@dataclass
class Evaluation:
    """What :func:`evaluate_flow` returns: the JSON-ready ``metrics``, wall-clock ``timings`` (seconds; kept out of
    the metrics so reruns compare equal) and the written ``artefacts`` (name → path)."""

    metrics: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    artefacts: dict[str, Path] = field(default_factory=dict)


def _device_of(flow: Any) -> torch.device:
    for p in flow.parameters():
        return p.device
    return torch.device("cpu")


def _batched(fn: Callable[[Tensor], Tensor], x: Tensor, batch_size: int, device: torch.device) -> Tensor:
    return torch.cat([fn(x[i : i + batch_size].to(device)).cpu() for i in range(0, x.shape[0], batch_size)])


def _is_image(kind: str, x: Tensor) -> bool:
    return kind == "image" or x.ndim == 4


def evaluate_flow(
    flow: Any,
    x: Tensor,
    *,
    kind: str,
    out_dir: str | Path | None = None,
    split: str = "test",
    dataset: str = "data",
    seed: int = 0,
    n_samples: int | None = None,
    samplers: Sequence[str] | None = None,
    fid: bool = True,
    extractor: Callable[[Tensor], Tensor] | None = None,
    cache: ReferenceStatsCache | None = None,
    resize: str = "bilinear",
    data_range: tuple[float, float] = (0.0, 1.0),
    fid_batch_size: int = 50,
    exact_nll_max_dim: int = 64,
    batch_size: int = 256,
    chunk_size: int | None = None,
    n_grid: int = 64,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> Evaluation:
    r"""Evaluates ``flow`` on the points ``x`` of one split (see the module docstring for what is computed).

    Arguments:
        flow: A trained flow (duck-typed, e.g. :class:`~injflow.train.model.InjectiveFlow`).
        x: The split's points ``(N, *data_shape)``.
        kind: ``"image"``, ``"tabular"`` or ``"toy"``; images get FID, the others the FID-like W2.
        out_dir: Where figures and ``spectrum.npz`` go (``None``: no files).
        split, dataset: Names written into the metrics, captions and cache file names.
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
        fid_batch_size: Images per Inception batch.
        exact_nll_max_dim: Skip the exact NLL (d Jacobian passes per point) above this latent dimension.
        batch_size: Points per batch for encoding and Jacobians; ``chunk_size``: Jacobian columns per pass.
        n_grid: Images per sample grid.
        progress: Progress bars.
        log: Where progress lines go (``None``: silent).
    """
    say = log or (lambda _msg: None)
    out = Path(out_dir) if out_dir is not None else None
    device = _device_of(flow)
    n_all, data_shape = int(x.shape[0]), tuple(x.shape[1:])
    big_d, d = math.prod(data_shape), int(flow.latent_dim)
    image = _is_image(kind, x)
    timings: dict[str, float] = {}
    artefacts: dict[str, Path] = {}
    figures: dict[str, dict[str, str]] = {}

    def figure(name: str, path: Path, caption: str) -> None:
        artefacts[f"figure {name}"] = path
        figures[name] = {"path": str(path.relative_to(out.parent)) if out is not None else str(path), "caption": caption}

    names = list(samplers) if samplers is not None else ["prior", *flow.samplers.keys()]
    for name in names:
        if name != "prior" and name not in flow.samplers:
            raise ValueError(f"sampler {name!r} is not fitted; fitted: {['prior', *flow.samplers.keys()]}")
    if image and fid and extractor is None:  # fail before the long computations when the weights are absent
        from .inception import InceptionFeatureExtractor, InceptionWeightsMissingError

        try:
            extractor = InceptionFeatureExtractor(device=device, resize=resize, data_range=data_range,
                                                  image_shape=data_shape if len(data_shape) == 3 else None)
        except InceptionWeightsMissingError as e:
            raise InceptionWeightsMissingError(f"{e}; or evaluate without FID (fid=False, `injflow evaluate --no-fid`)") from None

    was_training = flow.training
    flow.eval()
    try:
        # 1. reconstruction and latents -------------------------------------------------------------------------
        t0 = time.perf_counter()
        with torch.no_grad():
            z = _batched(flow.encode, x, 1024, device)
            rec = torch.cat([
                (flow.decode(z[i : i + 1024].to(device)).cpu() - x[i : i + 1024]).flatten(1).pow(2).sum(1)
                for i in range(0, n_all, 1024)
            ])
        timings["encode"] = time.perf_counter() - t0
        metrics: dict[str, Any] = {
            "dataset": dataset,
            "split": split,
            "n": n_all,
            "data_dim": big_d,
            "latent_dim": d,
            "seed": int(seed),
            "reconstruction_error": float(rec.mean()),
            "reconstruction_mse_per_dim": float(rec.mean() / big_d),
            "latent": {
                "mean": z.mean(0).tolist(),
                "std": z.std(0).tolist(),
                "mean_norm": float(z.norm(dim=1).mean()),
                "prior_log_prob": float(flow.latent.log_prob(z.to(device)).mean()),
            },
        }
        fitted = list(flow.samplers.keys())
        for name in fitted:
            metrics["latent"][f"{name}_log_prob"] = float(flow.samplers[name].log_prob(z.to(device)).mean())
        if out is not None:
            gen = torch.Generator().manual_seed(seed)
            prior = flow.latent.sample(max(n_all, 2000), generator=gen).cpu()
            path = plot_latent_marginals(
                z, prior, out / "latents.png",
                title=f"latent codes f(x) of the {split} split (n={n_all}) vs the prior ({prior.shape[0]} draws)")
            figure("latents", path, f"Marginals of f(x) for the {n_all} points of the {split} split against "
                   f"{prior.shape[0]} prior draws: histograms (top) and QQ plots (bottom; on the diagonal = matches the prior).")

        # 2. exact on-manifold NLL and the Jacobian spectrum ---------------------------------------------------
        if d <= exact_nll_max_dim:
            t0 = time.perf_counter()
            say(f"[injflow] exact on-manifold NLL of {n_all} points (d={d} Jacobian columns each)")
            lik = on_manifold_likelihood(x, flow.encode, flow.decode, flow.latent.log_prob, batch_size=batch_size,
                                         chunk_size=chunk_size, device=device, progress=progress)
            timings["exact_nll"] = time.perf_counter() - t0
            s = lik.summary(big_d)
            metrics.update(nll=s["nll"], nll_per_dim=s["nll_per_dim"], nll_std=s["nll_std"],
                           log_volume_mean=s["log_volume_mean"], spectrum=s["spectrum"])
            metrics["nll_note"] = ("exact on-manifold NLL of the projection g(f(x)) (FIF eq. 2); "
                                   "read with reconstruction_error")
            if out is not None:
                np.savez(out / "spectrum.npz", singular_values=lik.singular_values.numpy(), nll=lik.nll.numpy(),
                         reconstruction=lik.reconstruction.numpy())
                artefacts["spectrum"] = out / "spectrum.npz"
                path = plot_spectra({"decoder": lik.singular_values}, out / "spectrum.png",
                                    title=f"singular values of g'(z), z = f(x), {split} split (n={n_all})")
                figure("spectrum", path, f"Singular values of the decoder Jacobian at the {n_all} encoded points of the "
                       f"{split} split: median per index with the 10-90 % band (FIF fig. 8).")
        else:
            metrics["nll"] = None
            metrics["nll_note"] = f"skipped: d={d} > exact_nll_max_dim={exact_nll_max_dim}"

        # 3. sample quality ------------------------------------------------------------------------------------
        if image and not fid:
            metrics["sample_quality"] = {"metric": None, "note": "skipped (--no-fid)"}
        else:
            cap = DEFAULT_FID_SAMPLES if image else n_all
            n = min(n_all, cap) if n_samples is None else int(n_samples)
            if not 2 <= n <= n_all:
                raise ValueError(f"n_samples={n} must be between 2 and the {n_all} points of the {split} split")
            ref_x = x[:n]
            with torch.no_grad():
                recon = _batched(flow, ref_x, 1024, device)
            drawn = {name: flow.sample(n, sampler=name, seed=seed).cpu() for name in names}
            sq: dict[str, Any] = {"reference_split": split, "n_reference": n, "n_samples": n, "seed": int(seed)}
            t0 = time.perf_counter()
            if image:
                cache = cache if cache is not None else ReferenceStatsCache()
                say(f"[injflow] FID: {n} reference images ({split}) and {n} images per sampler {['reconstruction', *names]}")
                ref_stats, hit = cache.load_or_compute(ref_x, extractor, label=f"{dataset}-{split}",
                                                       batch_size=fid_batch_size, progress=progress)
                say(f"[injflow] reference statistics {'from the cache' if hit else 'computed and cached'}: "
                    f"{cache.path(ref_x, extractor, label=f'{dataset}-{split}')}")

                def score(images: Tensor, what: str) -> float:
                    stats = feature_stats(images, extractor, batch_size=fid_batch_size, progress=progress,
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
            timings["sample_quality"] = time.perf_counter() - t0
            metrics["sample_quality"] = sq
            label = "FID" if image else "W2"
            if out is not None:
                if image:
                    k = min(n_grid // 2, n)
                    pairs = torch.stack([ref_x[:k], recon[:k]], 1).reshape(-1, *data_shape)
                    path = plot_image_grid(pairs, out / "reconstructions.png", data_range=data_range,
                                           title=f"{split} data | reconstruction, {k} pairs of {n}; "
                                                 f"{label} = {sq['reconstruction']:.2f} vs the {split} split (n={n})")
                    figure("reconstructions", path, f"{k} {split} images (left) and their reconstructions g(f(x)) (right); "
                           f"{label} of all {n} reconstructions vs the {n} {split} images: {sq['reconstruction']:.3f}.")
                    for name in names:
                        path = plot_image_grid(drawn[name][:n_grid], out / f"samples_{name}.png", data_range=data_range,
                                               title=f"samples: {name}, {min(n_grid, n)} of {n}; {label} = {sq[name]:.2f} "
                                                     f"vs the {split} split (n={n})")
                        figure(f"samples_{name}", path, f"{min(n_grid, n)} of the {n} samples from the {name} sampler; "
                               f"{label} vs the {n} {split} images: {sq[name]:.3f}.")
                else:
                    panels = {"reconstruction": recon, **drawn}
                    captions = {k: f"{k}: {label}={sq[k]:.3g} (n={n} vs {split} n={n})" for k in panels}
                    path = plot_sample_scatter(ref_x, panels, out / "samples.png", reference_label=f"{split} data",
                                               captions=captions)
                    figure("samples", path, f"Reconstructions and samples ({n} each) over the {n} points of the {split} "
                           f"split; {label} (squared W2 between Gaussian fits) in each panel title.")
        metrics["figures"] = figures
    finally:
        flow.train(was_training)
    return Evaluation(metrics, timings, artefacts)
