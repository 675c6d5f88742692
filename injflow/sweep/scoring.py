r"""Scores of a trained run on one split, as the papers select and report image models: FID of the reconstructions
and of each sampler's samples against a reference set of the split (:func:`injflow.metrics.fid_protocol`), the
reconstruction error, and the Inception Score where a logits classifier exists.

FIF App. E.4 selects each configuration by its FID on the **validation** split and reports the test FID of the
selected model only; Kumar §4 selects by the post-fit-GMM FID. A sweep therefore scores every trial on ``val`` and
the selected trials on ``test`` (:class:`~injflow.sweep.spec.Evaluation`).

``features: pixels`` replaces Inception by 4×4-average-pooled pixels (:class:`PooledPixels`): a Fréchet distance
that runs in milliseconds, for smoke-scale checks of the pipeline. It is not FID, and the tables say so
(:func:`metric_name`).

Example:
    >>> import torch
    >>> PooledPixels()(torch.rand(3, 1, 28, 28)).shape
    torch.Size([3, 16])
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..loading import load_run_data
from .spec import Evaluation

__all__ = ["PooledPixels", "feature_extractor", "metric_name", "load_split", "score_run", "likelihood_scores",
           "real_data_score", "is_note"]


class PooledPixels(nn.Module):
    """Smoke-scale stand-in for Inception: 4×4-average-pooled pixels of every channel. Not FID."""

    identity = "pooled-pixels-4x4-v1"

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        x = images.float()
        if x.ndim == 2:
            from ..metrics.inception import infer_image_shape

            x = x.reshape(x.shape[0], *infer_image_shape(x.shape[1]))
        return nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)


_EXTRACTORS: dict[tuple[str, str], Any] = {}


def feature_extractor(features: str, device: str = "cpu") -> Any:
    """The extractor of ``features`` (``inception`` or ``pixels``) on ``device``; one per process (Inception is
    loaded once)."""
    if (features, device) not in _EXTRACTORS:
        if features == "pixels":
            _EXTRACTORS[features, device] = PooledPixels()
        elif features == "inception":
            from ..metrics import InceptionFeatureExtractor

            _EXTRACTORS[features, device] = InceptionFeatureExtractor(device=device, channels_last=device == "cpu")
        else:
            raise ValueError(f"features must be 'inception' or 'pixels', got {features!r}")
    return _EXTRACTORS[features, device]


def metric_name(features: str) -> str:
    """What the ``fid_*`` scores of ``features`` are, for tables and figures."""
    return "FID" if features == "inception" else "Fréchet distance of 4x4-pooled pixels (stand-in, not FID)"


def is_note(evaluation: Evaluation) -> str:
    """What the ``is_*`` columns of an evaluation hold: values, or why there are none."""
    from ..metrics import IS_UNAVAILABLE_REASON

    if not evaluation.inception_score:
        return "IS not computed at this scale"
    if evaluation.features != "inception":
        return "IS not computed: stand-in features at this scale"
    return "IS: " + ("computed with $INJFLOW_IS_CLASSIFIER" if os.environ.get("INJFLOW_IS_CLASSIFIER")
                     else IS_UNAVAILABLE_REASON)


def load_split(config: Any, split: str) -> Tensor:
    """The points of ``split`` of a run config's data set (as ``fit`` loads it: same seed and options)."""
    return _split(load_run_data(config), config, split)[0]


def _split(data: Any, config: Any, split: str) -> tuple[Tensor, Tensor | None]:
    x, c = data.split(split)
    if x is None:
        raise ValueError(f"data set {config.data.name} has no {split} split")
    return x, c


def _cache(evaluation: Evaluation) -> Any:
    from ..metrics import ReferenceStatsCache

    return ReferenceStatsCache(evaluation.fid_cache) if evaluation.fid_cache else ReferenceStatsCache()


def score_run(run_dir: str | Path, evaluation: Evaluation, *, device: str = "cpu") -> dict[str, Any]:
    """Scores a finished run folder on ``evaluation.split``.

    Arguments:
        run_dir: The run folder (its ``model.pt`` with the post-fit samplers).
        evaluation: What to score.
        device: Where the model and the extractor run.

    Returns:
        ``{"scores": {"fid_<set>": ..., "reconstruction_error": ..., "is_<set>": ..., "nll": ..., "nll_D": ...},
        "protocol": ..., "feature_extractor": ..., "reference_from_cache": ..., "images": (sent through the
        extractor), "seconds": ...}``; the score names carry no split prefix; the FID keys only when the evaluation
        scores images or samples, ``nll``/``nll_D`` only with ``nll_D``.
    """
    import injflow.api as inj

    from ..config import load_config
    from ..metrics import (
        LogitsUnavailableError,
        feature_stats,
        fid_protocol,
        find_logits_classifier,
        frechet_distance,
        inception_score_of_images,
    )

    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    config = load_config(run_dir / "config.yaml")
    flow = inj.load(run_dir).to(device).eval()
    data = load_run_data(config)  # once: the scored split and, for nll_D, the training split
    x, c = _split(data, config, evaluation.split)
    n = evaluation.n
    out: dict[str, Any] = {"scores": {}, "images": 0, "is_note": None}
    if evaluation.nll_D:
        x_train, c_train = _split(data, config, "train")
        conditional = flow.conditional
        out["scores"].update(likelihood_scores(flow, x[:n], x_train, c=c[:n] if conditional else None,
                                               c_train=c_train if conditional else None))
    if evaluation.sets():
        protocol = fid_protocol(x, dataset=config.data.name, split=evaluation.split, n=n, disjoint=evaluation.disjoint)
        extractor = feature_extractor(evaluation.features, device)
        reference, cached = protocol.reference.stats(extractor, _cache(evaluation), batch_size=50)
        with torch.no_grad():
            recon = torch.cat([flow(protocol.reconstruct[i:i + 500].to(device)).cpu() for i in range(0, n, 500)])
        images = {"reconstruction": recon} if evaluation.reconstruction else {}
        for name in evaluation.samplers:
            images[name] = flow.sample(n, sampler=name, seed=evaluation.seed).cpu()
        scores = out["scores"]
        scores.update({f"fid_{k}": frechet_distance(feature_stats(v, extractor, batch_size=50), reference)
                       for k, v in images.items()})
        scores["reconstruction_error"] = float((recon - protocol.reconstruct).flatten(1).pow(2).sum(1).mean())
        if evaluation.inception_score:
            try:
                classifier = find_logits_classifier(device=device)
                scores.update({f"is_{k}": inception_score_of_images(v, classifier)[0] for k, v in images.items()})
            except LogitsUnavailableError as e:
                out["is_note"] = str(e).splitlines()[0]
        out.update(metric=metric_name(evaluation.features), protocol=protocol.describe(),
                   feature_extractor=getattr(extractor, "identity", type(extractor).__name__),
                   reference_from_cache=cached, images=n * len(images) + (0 if cached else n))
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def likelihood_scores(flow: Any, x: Tensor, x_train: Tensor, *, c: Tensor | None = None,
                      c_train: Tensor | None = None) -> dict[str, float]:
    r"""The mean exact on-manifold NLL of ``x``, its mean squared reconstruction error and the mean of
    :math:`-\log p_D(x)` (``nll_D``, :mod:`injflow.metrics.ambient`) with the off-manifold noise fitted on
    ``x_train`` (never on the scored points): the likelihood that compares models of different latent dimensions.
    ``c`` and ``c_train`` are the class labels of a conditional model.

    Example:
        >>> import injflow.api as inj
        >>> flow = inj.InjectiveFlow.from_config(inj.load_config(), data_shape=(2,), data_kind="toy")
        >>> sorted(likelihood_scores(flow, torch.randn(4, 2), torch.randn(8, 2)))
        ['nll', 'nll_D', 'reconstruction_error']
    """
    from ..metrics.ambient import ambient_nll_metrics, fit_flow_noise

    log_p, rec = flow.log_prob(x.to(flow.device), return_reconstruction=True, c=c)
    means = {"nll": float(-log_p.double().mean()), "reconstruction_error": float(rec.double().mean())}
    ambient = ambient_nll_metrics(means, fit_flow_noise(flow, x_train, c=c_train))
    return {**means, "nll_D": ambient["nll_D"]}


def real_data_score(config: Any, evaluation: Evaluation, *, device: str = "cpu") -> float:
    """The score of the real images ``split[:n]`` against the evaluation's reference set: the lowest value n images
    can reach under this protocol (FID is biased upwards at small n); 0 for the papers' protocol, whose reference
    *is* ``split[:n]``.

    Arguments:
        config: A run's config (its data set and options).
        evaluation: The evaluation whose floor is wanted.
        device: Where the extractor runs.
    """
    from ..metrics import feature_stats, fid_protocol, frechet_distance

    if not evaluation.disjoint:
        return 0.0
    x = load_split(config, evaluation.split)
    protocol = fid_protocol(x, dataset=config.data.name, split=evaluation.split, n=evaluation.n, disjoint=True)
    extractor = feature_extractor(evaluation.features, device)
    reference, _ = protocol.reference.stats(extractor, _cache(evaluation), batch_size=50)
    return frechet_distance(feature_stats(protocol.reconstruct, extractor, batch_size=50), reference)
