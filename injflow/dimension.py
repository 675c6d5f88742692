r"""The dimension of the learned manifold, read off a trained flow's Jacobian spectra, and a latent-dimension choice
that does not mislead.

**The estimate.** Train with a latent dimension d larger than the data need. At an encoded point :math:`z = f(x)` the
decoder Jacobian :math:`g'(z) \in \mathbb R^{D\times d}` has singular values :math:`\sigma_1 \ge \dots \ge \sigma_d`:
the data-space length that a unit latent step in each principal direction covers (FIF App. E.1.2, fig. 8; with the
standard-normal prior a unit latent step is one prior standard deviation, so :math:`\sigma_i` is the spread of the
model's data along that direction). A direction the data really vary along is stretched to the data's spread; a
direction the manifold does not need collapses (the likelihood term rewards shrinking it: FIF §4, App. C) or is
spent on noise. What separates the two is the noise level of the data: the off-manifold noise the model leaves,
:math:`\hat\sigma^2 = \operatorname{mean}\|x - \hat x\|^2 / (D - d)` on the training points
(:mod:`injflow.metrics.ambient`). Probabilistic PCA keeps exactly the directions whose variance exceeds the noise
variance (Tipping & Bishop 1999: :math:`W = U(\Lambda - \sigma^2 I)^{1/2}` drops every eigenvalue
:math:`\lambda_i \le \sigma^2`); a direction fitted to noise alone has :math:`\sigma_i \approx \hat\sigma`, and sampling
pushes the largest of such values above :math:`\hat\sigma` (the top noise eigenvalue of n points in D dimensions is
about :math:`(1 + \sqrt{D/n})^2\sigma^2`). So a direction counts as part of the manifold when

.. math:: \sigma_i(g'(f(x))) > \tau\,\hat\sigma, \qquad \tau = 2 \text{ by default}

(four times the noise variance: a margin over the sampling spread, which is 1.2–1.5 for the data sets here). The
count at each point is its *local* dimension; the median over points is the *global* estimate. The encoder gives an
independent reading: for a consistent pair :math:`f'(x) \approx g'(f(x))^+`, so the reciprocal singular values
:math:`1/s_i(f'(x))` estimate the same stretches and are thresholded the same way. The largest gap of the median
decoder spectrum (the i maximising :math:`\sigma_i / \sigma_{i+1}`) is reported as a cross-check.

When the estimate equals d (``saturated``), every latent direction is in use: the data need d *or more* dimensions,
so retrain with a larger ``latent_dim``. See ``docs/dimension.md`` for how to choose ``latent_dim`` with it.

**Model selection.** Comparing trained models of different d needs a likelihood in one unit: the D-dimensional
:math:`-\log p_D` of :mod:`injflow.metrics.ambient` (``nll_D`` of ``injflow evaluate``, and what
:meth:`injflow.sklearn.InjectiveFlowEstimator.score` returns). Held-out :math:`\log p_D` rises steeply while d is below
the data's dimension and flattens above it (extra directions only model noise), so its maximiser is noisy; the rule
of :func:`select_latent_dim` (the smallest d within one standard error of the best cross-validated score) picks the
point where it flattens, and warns when the largest d offered is still the best.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .metrics.ambient import OffManifoldNoise, fit_flow_noise

__all__ = [
    "DEFAULT_FACTOR",
    "MIN_GAIN",
    "DimensionEstimate",
    "count_above",
    "gap_dimension",
    "estimate_dimension",
    "dimension_run",
    "select_latent_dim",
    "LatentDimensionWarning",
]

#: τ of the threshold :math:`\tau\hat\sigma` (see the module docstring).
DEFAULT_FACTOR = 2.0
#: Nats per point an extra latent dimension must gain in held-out log p_D to be chosen (:func:`select_latent_dim`).
MIN_GAIN = 0.5


class LatentDimensionWarning(UserWarning):
    """The grid's largest latent dimension scored best: the data may need more dimensions than were offered."""


def count_above(singular_values: Tensor, threshold: float) -> Tensor:
    """How many singular values of each row ``(N, d)`` exceed ``threshold``, shape ``(N,)`` (int64).

    Example:
        >>> count_above(torch.tensor([[3.0, 1.0, 0.01], [2.0, 0.05, 0.01]]), 0.1).tolist()
        [2, 1]
    """
    return (torch.as_tensor(singular_values) > threshold).sum(-1).long()


def gap_dimension(singular_values: Tensor) -> int:
    r"""The index i (1-based) of the largest ratio :math:`\sigma_i/\sigma_{i+1}` of the median spectrum over the rows of
    ``(N, d)`` descending singular values (d itself when d = 1).

    Example:
        >>> gap_dimension(torch.tensor([[4.0, 3.0, 0.02, 0.01]]))
        2
    """
    sv = torch.as_tensor(singular_values, dtype=torch.float64)
    if sv.shape[-1] < 2:
        return int(sv.shape[-1])
    median = sv.median(0).values.clamp_min(1e-300)
    ratios = median[:-1] / median[1:]
    return int(torch.argmax(ratios)) + 1


@dataclass
class DimensionEstimate:
    r"""What :func:`estimate_dimension` found.

    Attributes:
        dimension: The global estimate (median of ``local``).
        local: The local dimension of every point, ``(N,)``.
        decoder_singular_values: :math:`\sigma_i(g'(f(x)))`, ``(N, d)`` descending.
        encoder_stretches: :math:`1/s_i(f'(x))`, ``(N, d)`` descending, or ``None``.
        encoder_local: Counts of ``encoder_stretches`` above the threshold, ``(N,)``, or ``None``.
        threshold: :math:`\tau\hat\sigma`.
        factor: τ.
        noise: The fitted off-manifold noise.
        gap: :func:`gap_dimension` of the decoder spectra.
    """

    dimension: int
    local: Tensor
    decoder_singular_values: Tensor
    encoder_stretches: Tensor | None
    encoder_local: Tensor | None
    threshold: float
    factor: float
    noise: OffManifoldNoise
    gap: int

    @property
    def latent_dim(self) -> int:
        return int(self.decoder_singular_values.shape[1])

    @property
    def saturated(self) -> bool:
        """Every latent direction is in use: the data need at least d dimensions (retrain with a larger d)."""
        return self.dimension >= self.latent_dim

    def summary(self) -> dict[str, Any]:
        """JSON-ready: the estimates, the threshold and noise, the local-dimension histogram, the median spectra."""
        local = self.local
        values, counts = torch.unique(local, return_counts=True)
        out: dict[str, Any] = {
            "dimension": self.dimension,
            "latent_dim": self.latent_dim,
            "saturated": self.saturated,
            "rule": f"sigma_i(g'(f(x))) > factor * noise std; factor = {self.factor:g}; global = median over points",
            "threshold": self.threshold,
            "factor": self.factor,
            "off_manifold_noise": self.noise.to_dict(),
            "n_points": int(local.shape[0]),
            "local": {"mean": float(local.double().mean()), "q10": float(torch.quantile(local.double(), 0.1)),
                      "q90": float(torch.quantile(local.double(), 0.9)),
                      "histogram": {int(v): int(c) for v, c in zip(values.tolist(), counts.tolist())}},
            "gap_dimension": self.gap,
            "decoder_median_spectrum": self.decoder_singular_values.median(0).values.tolist(),
        }
        if self.encoder_local is not None and self.encoder_stretches is not None:
            out["encoder_dimension"] = int(self.encoder_local.median())
            out["encoder_local_mean"] = float(self.encoder_local.double().mean())
            out["encoder_median_spectrum"] = self.encoder_stretches.median(0).values.tolist()
        if self.saturated:
            out["note"] = (f"all {self.latent_dim} latent directions are above the threshold: the data need at least "
                           f"{self.latent_dim} dimensions; retrain with a larger latent_dim to measure it")
        return out


def _encoder_stretches(flow: Any, x: Tensor, *, batch_size: int, chunk_size: int | None) -> Tensor:
    """:math:`1/s_i(f'(x))`, descending, ``(N, d)`` float64 on the CPU."""
    from .devices import full_float32
    from .estimators import encoder_jacobian
    from .metrics.spectrum import jacobian_singular_values

    device = next((p.device for p in flow.parameters()), torch.device("cpu"))
    out = []
    for i in range(0, x.shape[0], batch_size):
        # Reverse mode needs a graph (the values are detached at once); no TF32 on a GPU (injflow.devices).
        with torch.enable_grad(), full_float32():
            jac = encoder_jacobian(flow.encode, x[i: i + batch_size].to(device), chunk_size=chunk_size).detach()
        s = jacobian_singular_values(jac.transpose(1, 2)).cpu()  # f'(x)ᵀ is tall (D × d): same singular values
        out.append((1.0 / s.clamp_min(1e-300)).flip(-1))
    return torch.cat(out)


def estimate_dimension(
    flow: Any,
    x: Tensor,
    *,
    noise: OffManifoldNoise | None = None,
    x_fit: Tensor | None = None,
    factor: float = DEFAULT_FACTOR,
    encoder: bool = True,
    batch_size: int = 256,
    chunk_size: int | None = None,
) -> DimensionEstimate:
    r"""Global and per-point intrinsic dimension of the manifold a trained flow learned (see the module docstring).

    Arguments:
        flow: An unconditional trained flow (``encode``, ``decode``, ``latent_dim``, ``parameters()``).
        x: The points to read the spectra at (e.g. a test split).
        noise: The off-manifold noise; default: fitted on ``x_fit`` (its training points).
        x_fit: Training points for the noise (needed without ``noise``).
        factor: τ of the threshold :math:`\tau\hat\sigma`.
        encoder: Also read the encoder's spectrum :math:`1/s_i(f'(x))` (d reverse passes per point).
        batch_size, chunk_size: Points per Jacobian batch; Jacobian columns per pass.

    Example (a linear decoder stretching two of three latent directions; data noise 0.01):
        >>> from injflow.model import InjectiveFlow
        >>> w = torch.zeros(5, 3); w[0, 0], w[1, 1], w[2, 2] = 3.0, 2.0, 0.01
        >>> dec = torch.nn.Linear(3, 5, bias=False); enc = torch.nn.Linear(5, 3, bias=False)
        >>> with torch.no_grad(): _ = dec.weight.copy_(w); _ = enc.weight.copy_(torch.linalg.pinv(w))
        >>> flow = InjectiveFlow(enc, dec, latent_dim=3, data_shape=(5,))
        >>> noise = OffManifoldNoise(variance=1e-4, data_dim=5, latent_dim=3, n=100)
        >>> est = estimate_dimension(flow, torch.randn(10, 5), noise=noise)
        >>> est.dimension, est.threshold, est.local.tolist()[:3], est.encoder_local.tolist()[:3]
        (2, 0.02, [2, 2, 2], [2, 2, 2])
    """
    from .metrics.spectrum import decoder_singular_values

    if getattr(flow, "num_classes", None) is not None:
        raise ValueError("the dimension estimate needs an unconditional model")
    if not factor > 0:
        raise ValueError(f"factor must be > 0, got {factor}")
    if noise is None:
        if x_fit is None:
            raise ValueError("give the training points x_fit (the off-manifold noise is fitted on them) or a fitted noise")
        noise = fit_flow_noise(flow, x_fit)
    was_training = flow.training
    flow.eval()
    try:
        z = flow.encode_all(x) if hasattr(flow, "encode_all") else flow.encode(x)
        decoder_sv = decoder_singular_values(flow.decode, z.detach(), batch_size=batch_size, chunk_size=chunk_size)
        stretches = _encoder_stretches(flow, x, batch_size=max(1, batch_size // 4), chunk_size=chunk_size) if encoder else None
    finally:
        flow.train(was_training)
    threshold = factor * noise.std
    local = count_above(decoder_sv, threshold)
    encoder_local = None if stretches is None else count_above(stretches, threshold)
    return DimensionEstimate(int(local.median()), local, decoder_sv, stretches, encoder_local, float(threshold),
                             float(factor), noise, gap_dimension(decoder_sv))


def dimension_run(
    run: str | Path,
    *,
    split: str = "test",
    max_samples: int | None = 2000,
    factor: float = DEFAULT_FACTOR,
    encoder: bool = True,
    checkpoint: str | None = None,
    device: str = "cpu",
    batch_size: int = 256,
    verbose: bool = True,
) -> dict[str, Any]:
    """``injflow dimension RUN``: estimates the intrinsic dimension of a run's learned manifold at (the first
    ``max_samples`` points of) a split; writes ``<run>/eval/dimension.json``, ``<run>/eval/dimension_local.csv``
    (each point's local dimension, decoder and encoder) and ``<run>/eval/dimension.png`` (spectra with the threshold,
    histogram of the local dimensions); returns the summary (also printed)."""
    import json

    from .io import atomic_write_text
    from .loading import load_run, load_run_data
    from .plots import plot_dimension_estimate

    folder, config, flow = load_run(run, checkpoint=checkpoint, device=device, samplers=False)
    if flow.conditional:
        raise ValueError(f"{folder.path} is a conditional model: the dimension estimate needs an unconditional one")
    data = load_run_data(config)
    x, _ = data.split(split)
    if x is None:
        raise ValueError(f"the data set {config.data.name!r} has no {split} split")
    if max_samples:
        x = x[:max_samples]
    if verbose:
        print(f"[injflow] dimension: spectra of g'(f(x)){' and f′(x)' if encoder else ''} at {x.shape[0]} {split} points "
              f"(d={flow.latent_dim}); noise fitted on the training split")
    est = estimate_dimension(flow, x, x_fit=data.train, factor=factor, encoder=encoder, batch_size=batch_size)
    summary = {"run": str(folder.path), "dataset": config.data.name, "split": split, **est.summary()}
    out = folder.eval
    out.mkdir(parents=True, exist_ok=True)
    rows = ["index,local_dimension" + (",encoder_local_dimension" if est.encoder_local is not None else "")]
    for i in range(est.local.shape[0]):
        rows.append(f"{i},{int(est.local[i])}" + (f",{int(est.encoder_local[i])}" if est.encoder_local is not None else ""))
    csv_path = atomic_write_text(out / "dimension_local.csv", "\n".join(rows) + "\n")
    spectra = {"decoder σ_i(g'(f(x)))": est.decoder_singular_values}
    if est.encoder_stretches is not None:
        spectra["encoder 1/s_i(f'(x))"] = est.encoder_stretches
    png = plot_dimension_estimate(
        spectra, est.local, out / "dimension.png", threshold=est.threshold, noise_std=est.noise.std, estimate=est.dimension,
        title=f"{folder.path.name}: intrinsic dimension {est.dimension} of d = {est.latent_dim} "
              f"({x.shape[0]} {split} points; threshold {est.factor:g} × noise std)")
    summary["files"] = {"local": str(csv_path.relative_to(folder.path)), "figure": str(png.relative_to(folder.path))}
    folder.write_json(out / "dimension.json", summary)
    if verbose:
        brief = {k: summary[k] for k in ("dimension", "latent_dim", "saturated", "threshold", "gap_dimension",
                                         "encoder_dimension") if k in summary}
        print(json.dumps(brief, indent=2))
        if est.saturated:
            print(f"[injflow] {summary['note']}")
        print(f"[injflow] dimension -> {out / 'dimension.json'} (figure: {png})")
    return summary


def select_latent_dim(cv_results: Mapping[str, Any], *, param: str = "latent_dim", min_gain: float = MIN_GAIN) -> int:
    r"""A ``refit=`` rule for :class:`~sklearn.model_selection.GridSearchCV` over ``latent_dim``: the index of the
    smallest ``latent_dim`` whose mean test score is within one standard error of the best one, or within
    ``min_gain`` nats per point when that is larger.

    Why a floor: above the data's dimension, held-out log p_D flattens — an extra latent direction then models a noise
    direction whose Gaussian the off-manifold noise already modelled — and the seeds of a grid search can agree to a
    few hundredths of a nat, so one standard error alone lets a 0.05-nat gain buy a dimension (measured:
    docs/results.md, "The dimension of the learned manifold"). A real direction of spread s above noise σ gains about
    :math:`\log(s/\sigma)` nats per point; ``min_gain = 0.5`` treats a direction less than :math:`e^{0.5} \approx
    1.65` times the noise as noise. Differences of log-densities do not depend on the data's units.

    The score must be comparable across d (:meth:`injflow.sklearn.InjectiveFlowEstimator.score` is, see the module
    docstring). Warns with :class:`LatentDimensionWarning` when the largest ``latent_dim`` of the grid is chosen: the
    score had not flattened, so the data may need more dimensions than the grid offered.

    Example:
        >>> results = {"params": [{"latent_dim": 1}, {"latent_dim": 2}, {"latent_dim": 3}],
        ...            "mean_test_score": [-9.0, -4.0, -3.9], "std_test_score": [0.2, 0.3, 0.3],
        ...            "split0_test_score": [0, 0, 0], "split1_test_score": [0, 0, 0]}
        >>> select_latent_dim(results)  # d = 2 is within 0.5 nats (more than one standard error, 0.3 / √2) of d = 3
        1
        >>> select_latent_dim(results, min_gain=0.0)  # one standard error alone: still d = 2 (0.1 < 0.21)
        1
    """
    params = list(cv_results["params"])
    means = np.asarray(cv_results["mean_test_score"], dtype=np.float64)
    stds = np.asarray(cv_results["std_test_score"], dtype=np.float64)
    n_splits = sum(1 for k in cv_results if k.startswith("split") and k.endswith("_test_score")) or 1
    if not params or not np.isfinite(means).any():
        raise ValueError("no finite test score in the grid search results")
    if any(param not in p for p in params):
        raise ValueError(f"every candidate of the grid must set {param!r}")
    means = np.where(np.isfinite(means), means, -np.inf)
    best = int(np.argmax(means))
    if not min_gain >= 0:
        raise ValueError(f"min_gain must be >= 0 nats per point, got {min_gain}")
    tolerance = max(stds[best] / math.sqrt(n_splits), min_gain)
    within = [i for i in range(len(params)) if means[i] >= means[best] - tolerance]
    chosen = min(within, key=lambda i: (params[i][param], -means[i]))
    largest = max(p[param] for p in params)
    if params[chosen][param] == largest and len({p[param] for p in params}) > 1:
        warnings.warn(f"{param}={largest}, the largest of the grid, scored best: the data may need more dimensions; "
                      f"extend the grid upwards", LatentDimensionWarning, stacklevel=2)
    return chosen
