r"""FID (Heusel et al. 2017): the Fréchet distance between Gaussian fits of Inception pool-3 features.

.. math:: \mathrm{FID} = \|\mu_r-\mu_g\|^2 + \operatorname{tr}\big(\Sigma_r+\Sigma_g-2(\Sigma_r\Sigma_g)^{1/2}\big)

where :math:`(\mu_r, \Sigma_r)` and :math:`(\mu_g, \Sigma_g)` are the mean and covariance of the 2048-d features
of the reference images and of the generated (or reconstructed) images
(:func:`~injflow.metrics.frechet.frechet_distance`: exact, float64, one symmetric eigenvalue problem instead of a
matrix square root).

Features are extracted in batches on the extractor's device with a progress bar (:func:`extract_features`).
The reference statistics of a data split are computed once and cached on disk (:class:`ReferenceStatsCache`):
the cache key is a SHA-256 of the reference tensor's bytes and shape together with the extractor's
:attr:`identity` (weights SHA-1, input size, resize mode, data range), so a different split, subset, data
version, resize mode or network never reuses a stale entry.

FID is biased upwards for small n (it depends on the number of images): always report n with it.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from .frechet import GaussianFit, frechet_distance, gaussian_fit

__all__ = [
    "FeatureExtractor",
    "extract_features",
    "feature_stats",
    "fid_from_features",
    "fid",
    "default_cache_dir",
    "ReferenceStatsCache",
]

#: Anything that maps a batch of images to ``(B, p)`` features; an ``identity`` string attribute (optional)
#: names what decides the features and keys the cache.
FeatureExtractor = Callable[[Tensor], Tensor]

_T = TypeVar("_T")


def _progress(iterable: Iterable[_T], *, total: int, desc: str, enabled: bool) -> Iterable[_T]:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True)


@torch.inference_mode()
def extract_features(
    images: Tensor,
    extractor: FeatureExtractor,
    *,
    batch_size: int = 50,
    progress: bool = False,
    desc: str = "features",
) -> np.ndarray:
    """Features of ``images`` (``(N, ...)``, any device) in batches; returns ``(N, p)`` float64 on the CPU.

    The extractor decides pre-processing and device (:class:`~injflow.metrics.inception.InceptionFeatureExtractor`
    moves each batch to its device). Batches are fixed slices, so the result is deterministic for a given
    ``batch_size`` on a given device.
    """
    if not isinstance(images, Tensor) or images.ndim < 2 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty tensor (N, ...), got {getattr(images, 'shape', type(images))}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n = images.shape[0]
    starts = range(0, n, batch_size)
    out = []
    for start in _progress(starts, total=len(starts), desc=desc, enabled=progress):
        feats = extractor(images[start : start + batch_size])
        if feats.ndim != 2 or feats.shape[0] != min(batch_size, n - start):
            raise ValueError(f"the feature extractor must return (B, p), got {tuple(feats.shape)}")
        out.append(feats.detach().cpu().double().numpy())
    return np.concatenate(out, axis=0)


def feature_stats(images: Tensor, extractor: FeatureExtractor, **options) -> GaussianFit:
    """Gaussian fit (mean, covariance, n) of the features of ``images``; ``options`` go to :func:`extract_features`."""
    return gaussian_fit(extract_features(images, extractor, **options), name="features")


def fid_from_features(features_a: np.ndarray | GaussianFit, features_b: np.ndarray | GaussianFit) -> float:
    """FID between two feature matrices ``(N, p)`` (or their :class:`GaussianFit`)."""
    a = features_a if isinstance(features_a, GaussianFit) else gaussian_fit(features_a, name="features_a")
    b = features_b if isinstance(features_b, GaussianFit) else gaussian_fit(features_b, name="features_b")
    return frechet_distance(a, b)


def fid(
    images: Tensor,
    reference: Tensor | GaussianFit,
    extractor: FeatureExtractor | None = None,
    *,
    batch_size: int = 50,
    progress: bool = False,
) -> float:
    """FID of ``images`` against ``reference`` images (or their cached :class:`GaussianFit`).

    Arguments:
        images: Generated or reconstructed images, ``(N, C, H, W)`` or flat, in [0, 1] by default.
        reference: Reference images, or the Gaussian fit of their features.
        extractor: Default: :class:`~injflow.metrics.inception.InceptionFeatureExtractor` on the CPU (raises
            :class:`~injflow.metrics.inception.InceptionWeightsMissingError` if the weights are absent).

    Example:
        >>> fid(samples, test_images)  # doctest: +SKIP
    """
    if extractor is None:
        from .inception import InceptionFeatureExtractor

        extractor = InceptionFeatureExtractor()
    ref = reference if isinstance(reference, GaussianFit) else feature_stats(
        reference, extractor, batch_size=batch_size, progress=progress, desc="FID reference")
    return frechet_distance(feature_stats(images, extractor, batch_size=batch_size, progress=progress, desc="FID"), ref)


def default_cache_dir() -> Path:
    """``$INJFLOW_CACHE_DIR/fid``, else ``$XDG_CACHE_HOME/injflow/fid``, else ``~/.cache/injflow/fid``."""
    if os.environ.get("INJFLOW_CACHE_DIR"):
        return Path(os.environ["INJFLOW_CACHE_DIR"]).expanduser() / "fid"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "injflow" / "fid"


def _tensor_digest(x: Tensor) -> str:
    h = hashlib.sha256()
    x = x.detach().cpu().contiguous()
    h.update(f"{tuple(x.shape)}|{x.dtype}".encode())
    h.update(x.numpy().tobytes() if x.dtype != torch.bfloat16 else x.float().numpy().tobytes())
    return h.hexdigest()


class ReferenceStatsCache:
    """On-disk cache of reference feature statistics (mean, covariance, n, and the low-rank factor when n ≤ p), one
    ``.npz`` per data split.

    File name: ``<label>-n<N>-<key[:16]>.npz`` in ``root`` (default :func:`default_cache_dir`), where ``label`` is
    a readable name (e.g. ``mnist-test``) and ``key`` = SHA-256 of (reference tensor bytes, shape, dtype, extractor
    identity). Files are written atomically (temporary file + rename) and hold float64 arrays, so a cached and a
    freshly computed FID are bit-identical.

    Example:
        >>> cache = ReferenceStatsCache(tmp_path)                                   # doctest: +SKIP
        >>> stats, hit = cache.load_or_compute(test, extractor, label="mnist-test")  # doctest: +SKIP
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    @staticmethod
    def key(images: Tensor, extractor: FeatureExtractor) -> str:
        identity = getattr(extractor, "identity", None)
        if identity is None:
            raise ValueError("caching needs an extractor with an `identity` string (what decides its features)")
        return hashlib.sha256(f"{_tensor_digest(images)}|{identity}".encode()).hexdigest()

    def path(self, images: Tensor, extractor: FeatureExtractor, *, label: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "reference"
        return self.root / f"{safe}-n{images.shape[0]}-{self.key(images, extractor)[:16]}.npz"

    def load_or_compute(
        self, images: Tensor, extractor: FeatureExtractor, *, label: str = "reference", **options
    ) -> tuple[GaussianFit, bool]:
        """The reference statistics and whether they came from the cache; ``options`` go to :func:`extract_features`."""
        path = self.path(images, extractor, label=label)
        if path.is_file():
            with np.load(path, allow_pickle=False) as blob:
                factor = blob["factor"] if "factor" in blob.files else None
                return GaussianFit(blob["mean"], blob["cov"], int(blob["n"]), factor), True
        options.setdefault("desc", f"FID reference ({label})")
        stats = feature_stats(images, extractor, **options)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npz")
        try:
            # The low-rank factor (kept for n <= p) is stored too, so a cached fit takes the same exact path.
            extra = {} if stats.factor is None else {"factor": stats.factor}
            np.savez(tmp, mean=stats.mean, cov=stats.cov, n=np.int64(stats.n),
                     identity=np.str_(extractor.identity), label=np.str_(label), **extra)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return stats, False
