r"""Out-of-distribution scores of an injective flow, and their AUROC between two data sets.

A model of a manifold and a density on it gives every point :math:`x` two numbers (FIF eq. 2, App. A): how far it
is from the manifold, :math:`\|x - \hat x\|^2` with :math:`\hat x = g(f(x))`, and how likely its projection is on
the manifold, :math:`\log p(\hat x) = \log p_Z(f(x)) - \tfrac12\log\det(g'^\top g')`. Each alone can fail: a point
may project onto a likely region from far away, and a likelihood on the manifold can be *higher* for simple
out-of-distribution images than for the training data (the "likelihood paradox": Nalisnick et al. 2019, flows trained
on Fashion-MNIST give MNIST digits higher likelihood). The scores, each larger for points the model finds less likely:

==================  ===========================================================================================
``nll``             :math:`-\log p(\hat x)`, the exact on-manifold negative log-likelihood of the projection
``reconstruction``  :math:`\|x - \hat x\|^2`, the squared distance to the manifold
``nll_D``           :math:`-\log p_D(x)`, the combination: the D-dimensional density of the manifold thickened by
                    the off-manifold noise fitted on the training data (:mod:`injflow.metrics.ambient`),
                    :math:`-\log p(\hat x) + \tfrac{D-d}2\log(2\pi\hat\sigma^2) + \|x-\hat x\|^2/2\hat\sigma^2`
``vae_nll``         (VAE runs only) minus the importance-weighted bound on :math:`\log p(x)` of the VAE's own
                    Gaussian decoder (Burda et al. 2016), K posterior samples; K = 1 is the ELBO
==================  ===========================================================================================

Why ``nll_D`` as the combination: it is the model's own likelihood once the distance to the manifold is modelled —
no weight is chosen by hand or tuned on out-of-distribution data, the two terms enter in the units of one density,
and the weight of the distance (:math:`1/2\hat\sigma^2`) is the in-distribution noise level, so a point is penalised
for being off the manifold by as many nats as that distance is unusual for training data.

The AUROC of a score is the probability that a random out-of-distribution point scores higher than a random
in-distribution point (ties count half): 1 separates perfectly, 0.5 is chance, and below 0.5 the score ranks the
out-of-distribution set as *more* in-distribution (the paradox).

``injflow evaluate RUN --ood DATASET`` (and :func:`ood_run`) scores the run's test split and the other data set's
test split, writes ``eval/ood_scores.csv`` (one row per point: which set, each score), ``eval/ood_scores.png`` (a
histogram per score for both sets) and the AUROCs into ``metrics.json`` under ``ood``. See ``docs/ood.md``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import DataError
from .metrics.ambient import OffManifoldNoise, fit_flow_noise

__all__ = [
    "SCORES",
    "LIKELIHOOD_FREE_METHODS",
    "auroc",
    "point_scores",
    "importance_weighted_nll",
    "OODScores",
    "ood_scores",
    "evaluate_run_ood",
    "ood_run",
]

#: The scores every flow gets, each larger for points the model finds less likely.
SCORES = ("nll", "reconstruction", "nll_D")
#: Methods whose latent prior is not trained as a density: their ``nll`` uses the post-fit sampler (``gmm``, else
#: ``gaussian``) as :math:`p_Z` instead of the untrained prior.
LIKELIHOOD_FREE_METHODS = ("ae", "ae_l2", "ae_sn", "cae", "rae_l2", "rae_gp", "wae_mmd")


def auroc(in_scores: Tensor | np.ndarray, out_scores: Tensor | np.ndarray) -> float:
    r"""Area under the ROC curve with the out-of-distribution points as positives and larger scores as more
    out-of-distribution: :math:`P(s_{out} > s_{in}) + \tfrac12 P(s_{out} = s_{in})`, the Mann–Whitney U statistic
    over :math:`n_{in} n_{out}`, from average ranks (ties exact, as scikit-learn's ``roc_auc_score``).

    Example:
        >>> auroc([0.1, 0.4, 0.35], [0.8, 0.35])  # pairs won: 3 + 1.5 (a tie) of 6
        0.75
    """
    from scipy.stats import rankdata

    a = np.asarray(in_scores, dtype=np.float64).ravel()
    b = np.asarray(out_scores, dtype=np.float64).ravel()
    if a.size == 0 or b.size == 0:
        raise ValueError(f"AUROC needs points in both sets, got {a.size} in-distribution and {b.size} out-of-distribution")
    if np.isnan(a).any() or np.isnan(b).any():
        raise ValueError("AUROC: the scores contain NaN")
    ranks = rankdata(np.concatenate([a, b]), method="average")
    u = ranks[a.size:].sum() - b.size * (b.size + 1) / 2
    return float(u / (a.size * b.size))


def _latent_log_prob(flow: Any, latent: str) -> Callable[[Tensor], Tensor]:
    if latent == "prior":
        return flow.latent.log_prob
    if latent not in flow.samplers:
        raise ValueError(f"latent {latent!r} is not a fitted sampler of this model; fitted: {['prior', *flow.samplers]}")
    return flow.samplers[latent].log_prob


def point_scores(
    flow: Any,
    x: Tensor,
    noise: OffManifoldNoise,
    *,
    latent: str = "prior",
    batch_size: int = 256,
    chunk_size: int | None = None,
    progress: bool = False,
) -> dict[str, Tensor]:
    r"""``nll``, ``reconstruction`` and ``nll_D`` (see the module docstring) of every point, float64 on the CPU.

    Arguments:
        flow: An unconditional :class:`~injflow.model.InjectiveFlow` (or anything with ``encode``, ``decode``,
            ``latent``, ``samplers`` and ``parameters()``); evaluated in eval mode.
        x: Points ``(N, *data_shape)``.
        noise: The fitted off-manifold noise (:func:`~injflow.metrics.ambient.fit_flow_noise`).
        latent: :math:`p_Z` of ``nll``: ``prior`` or a fitted post-fit sampler (``gaussian``, ``gmm``).
        batch_size, chunk_size: Points per Jacobian batch and Jacobian columns per pass.
        progress: Progress bar.
    """
    from .metrics.likelihood import on_manifold_likelihood

    if getattr(flow, "num_classes", None) is not None:
        raise ValueError("out-of-distribution scores need an unconditional model (a conditional one needs labels of the "
                         "other data set)")
    device = next((p.device for p in flow.parameters()), torch.device("cpu"))
    was_training = flow.training
    flow.eval()
    try:
        result = on_manifold_likelihood(x, flow.encode, flow.decode, _latent_log_prob(flow, latent), batch_size=batch_size,
                                        chunk_size=chunk_size, device=device, progress=progress)
    finally:
        flow.train(was_training)
    return {"nll": -result.log_prob, "reconstruction": result.reconstruction,
            "nll_D": -noise.log_prob(result.log_prob, result.reconstruction)}


@torch.no_grad()
def importance_weighted_nll(
    flow: Any, x: Tensor, *, sigma: float, n_samples: int = 16, seed: int = 0, batch_size: int = 256
) -> Tensor:
    r"""Minus the importance-weighted bound on :math:`\log p(x)` of a VAE (Burda et al. 2016), per point.

    .. math::
        -\log \frac1K \sum_{k=1}^K \frac{\mathcal N(x; g(z_k), \sigma^2 I_D)\, p_Z(z_k)}{q(z_k|x)},
        \qquad z_k \sim q(z|x) = \mathcal N(\mu(x), \operatorname{diag} e^{s(x)})

    With K = 1 it is the negative ELBO; it decreases towards :math:`-\log p(x)` as K grows.

    Arguments:
        flow: A VAE's model whose encoder has ``posterior(x) -> (mean, log_variance)`` (a run's checkpoint; the
            finished ``model.pt`` keeps the mean network only).
        x: Points ``(N, *data_shape)``.
        sigma: The decoder's standard deviation σ (the ``vae`` method's ``sigma``; √β for ``beta_vae``).
        n_samples: K.
        seed: Seed of the posterior draws (drawn on the CPU).
        batch_size: Points per batch (each makes K decoder passes).

    Returns:
        Shape ``(N,)``, float64 on the CPU.
    """
    posterior = getattr(getattr(flow, "encoder", None), "posterior", None)
    if posterior is None:
        raise ValueError("the VAE bound needs the encoder's posterior variance, which the finished model.pt drops: "
                         "load the run's checkpoint (checkpoint='last', `--checkpoint last`)")
    if not sigma > 0 or n_samples < 1:
        raise ValueError(f"sigma must be > 0 and n_samples >= 1, got {sigma} and {n_samples}")
    device = next((p.device for p in flow.parameters()), torch.device("cpu"))
    gen = torch.Generator().manual_seed(seed)
    was_training = flow.training
    flow.eval()
    out = []
    try:
        for i in range(0, x.shape[0], batch_size):
            xb = x[i: i + batch_size].to(device)
            b, big_d = xb.shape[0], xb[0].numel()
            mean, log_var = posterior(xb)
            eps = torch.randn(n_samples, *mean.shape, generator=gen).to(device=device, dtype=mean.dtype)
            z = (mean + (0.5 * log_var).exp() * eps).reshape(n_samples * b, -1)
            x_hat = flow.decode(z).reshape(n_samples, b, -1)
            log_lik = (-(x_hat - xb.reshape(1, b, -1)).double().pow(2).sum(-1) / (2 * sigma**2)
                       - 0.5 * big_d * math.log(2 * math.pi * sigma**2))
            log_prior = flow.latent.log_prob(z).double().reshape(n_samples, b)
            log_q = (-0.5 * (eps.double().pow(2) + log_var.double() + math.log(2 * math.pi))).sum(-1)
            bound = torch.logsumexp(log_lik + log_prior - log_q, dim=0) - math.log(n_samples)
            out.append(-bound.cpu())
    finally:
        flow.train(was_training)
    return torch.cat(out)


@dataclass
class OODScores:
    """Per-point scores of an in-distribution and an out-of-distribution set (name → ``(N,)`` tensors), with the
    noise and latent they were computed with."""

    scores_in: dict[str, Tensor]
    scores_out: dict[str, Tensor]
    noise: OffManifoldNoise
    latent: str
    names: tuple[str, str] = ("in", "out")
    notes: dict[str, str] = field(default_factory=dict)

    def auroc(self) -> dict[str, float]:
        """The AUROC of every score (out-of-distribution = positive; see :func:`auroc`)."""
        return {k: auroc(self.scores_in[k], self.scores_out[k]) for k in self.scores_in}

    def summary(self) -> dict[str, Any]:
        """JSON-ready: AUROCs, per-set means and medians of every score, the noise, the latent, the convention."""
        return {
            "in": {"name": self.names[0], "n": _n(self.scores_in)},
            "out": {"name": self.names[1], "n": _n(self.scores_out)},
            "auroc": self.auroc(),
            "mean": {k: {"in": float(self.scores_in[k].mean()), "out": float(self.scores_out[k].mean())}
                     for k in self.scores_in},
            "median": {k: {"in": float(self.scores_in[k].median()), "out": float(self.scores_out[k].median())}
                       for k in self.scores_in},
            "latent": self.latent,
            "off_manifold_noise": self.noise.to_dict(),
            "convention": "positives = the out-of-distribution set; every score is larger for points the model finds "
                          "less likely; AUROC 1 = perfect, 0.5 = chance, < 0.5 = the set is ranked as more "
                          "in-distribution than the in-distribution data",
            **({"notes": dict(self.notes)} if self.notes else {}),
        }

    def csv_text(self) -> str:
        """One row per point: ``set`` (in/out), ``dataset``, ``index`` and every score."""
        buf = io.StringIO()
        keys = list(self.scores_in)
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["set", "dataset", "index", *keys])
        for which, name, scores in (("in", self.names[0], self.scores_in), ("out", self.names[1], self.scores_out)):
            columns = [scores[k].tolist() for k in keys]
            for i, row in enumerate(zip(*columns)):
                writer.writerow([which, name, i, *(repr(float(v)) for v in row)])
        return buf.getvalue()


def _n(scores: dict[str, Tensor]) -> int:
    return int(next(iter(scores.values())).shape[0])


def ood_scores(
    flow: Any,
    x_in: Tensor,
    x_out: Tensor,
    *,
    noise: OffManifoldNoise | None = None,
    x_fit: Tensor | None = None,
    latent: str = "prior",
    vae_sigma: float | None = None,
    iw_samples: int = 16,
    names: tuple[str, str] = ("in", "out"),
    batch_size: int = 256,
    chunk_size: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> OODScores:
    r"""Scores an in-distribution and an out-of-distribution set with ``nll``, ``reconstruction`` and ``nll_D``
    (and ``vae_nll`` when ``vae_sigma`` is given); see the module docstring.

    Arguments:
        flow: An unconditional trained flow.
        x_in: In-distribution points (e.g. the test split of the training data set).
        x_out: Out-of-distribution points of the same shape.
        noise: The off-manifold noise; default: fitted on ``x_fit`` (:func:`~injflow.metrics.ambient.fit_flow_noise`).
        x_fit: The training points the noise is fitted on (needed without ``noise``; never the scored sets).
        latent: :math:`p_Z` of ``nll``: ``prior``, ``gaussian`` or ``gmm``.
        vae_sigma: The decoder σ of a VAE whose encoder has ``posterior``: adds ``vae_nll``
            (:func:`importance_weighted_nll`, ``iw_samples`` samples).
        names: Names of the two sets (for the CSV and the summary).
        batch_size, chunk_size, seed, progress: Jacobian batching, the VAE draws' seed, progress bars.

    Example:
        >>> enc, dec = torch.nn.Linear(3, 1), torch.nn.Linear(1, 3)
        >>> from injflow.model import InjectiveFlow
        >>> flow = InjectiveFlow(enc, dec, latent_dim=1, data_shape=(3,))
        >>> r = ood_scores(flow, torch.randn(20, 3), 3 * torch.randn(10, 3), x_fit=torch.randn(50, 3))
        >>> sorted(r.auroc())
        ['nll', 'nll_D', 'reconstruction']
    """
    if tuple(x_in.shape[1:]) != tuple(x_out.shape[1:]):
        raise DataError(f"the out-of-distribution points have shape {tuple(x_out.shape[1:])}, the in-distribution points "
                        f"{tuple(x_in.shape[1:])}: both sets must have the model's data shape")
    if noise is None:
        if x_fit is None:
            raise ValueError("give the training points x_fit (the off-manifold noise is fitted on them) or a fitted noise")
        noise = fit_flow_noise(flow, x_fit)
    kw = dict(latent=latent, batch_size=batch_size, chunk_size=chunk_size, progress=progress)
    scores_in = point_scores(flow, x_in, noise, **kw)
    scores_out = point_scores(flow, x_out, noise, **kw)
    if vae_sigma is not None:
        iw = dict(sigma=vae_sigma, n_samples=iw_samples, seed=seed, batch_size=batch_size)
        scores_in["vae_nll"] = importance_weighted_nll(flow, x_in, **iw)
        scores_out["vae_nll"] = importance_weighted_nll(flow, x_out, **iw)
    return OODScores(scores_in, scores_out, noise, latent, names)


# --------------------------------------------------------------------------- run folders


def _method(config: Any) -> dict[str, Any]:
    from .config import config_to_dict

    return dict(config_to_dict(config)["method"])


def _default_latent(config: Any, flow: Any) -> str:
    """``prior`` for methods that train it as a density; the post-fit ``gmm`` (else ``gaussian``) for the others."""
    if _method(config)["name"] not in LIKELIHOOD_FREE_METHODS:
        return "prior"
    for name in ("gmm", "gaussian"):
        if name in flow.samplers:
            return name
    return "prior"


def _vae_sigma(config: Any) -> float | None:
    """The decoder σ of a ``vae`` (its ``sigma``) or ``beta_vae`` (√β of a constant β) run, else ``None``."""
    method = _method(config)
    if method["name"] == "vae":
        return float(method.get("sigma", 1.0))
    if method["name"] == "beta_vae" and isinstance(method.get("beta", 1.0), (int, float)):
        return math.sqrt(float(method.get("beta", 1.0)))
    return None


def load_ood_split(config: Any, dataset: str, split: str, data_shape: tuple[int, ...]) -> Tensor:
    """The ``split`` of the registered data set ``dataset``, with the run's data options that it accepts (e.g.
    ``flatten``; not the subset sizes); refuses a data set whose samples have another shape than ``data_shape``."""
    from .data import dataset_options, load_dataset

    dc = config.data
    try:
        accepted = dataset_options(dataset)
    except (KeyError, ValueError) as e:
        raise DataError(f"--ood {dataset}: {e}") from None
    sizes = ("n_train", "n_val", "n_test", "conditional")
    options = {k: v for k, v in dict(dc.options).items() if k in accepted and k not in sizes}
    splits = load_dataset(dataset, seed=dc.seed, root=dc.root, download=dc.download, **options)
    x = getattr(splits, split)
    if x is None:
        raise DataError(f"--ood {dataset}: the data set has no {split} split")
    if tuple(x.shape[1:]) != tuple(data_shape):
        raise DataError(f"--ood {dataset}: its samples have shape {tuple(x.shape[1:])} but the run's model takes "
                        f"{tuple(data_shape)}; pick a data set of the same shape (e.g. mnist for a fashion_mnist run)")
    return x


def evaluate_run_ood(
    folder: Any,
    config: Any,
    flow: Any,
    dataset: str,
    *,
    x_in: Tensor,
    x_train: Tensor,
    x_out: Tensor | None = None,
    split: str = "test",
    max_samples: int | None = None,
    latent: str = "auto",
    iw_samples: int = 16,
    batch_size: int = 256,
    chunk_size: int | None = None,
    seed: int = 0,
    progress: bool = False,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Scores ``x_in`` (the run's split) and the ``split`` of ``dataset``; writes ``<run>/eval/ood_scores.csv`` and
    ``<run>/eval/ood_scores.png``; returns the ``ood`` section of ``metrics.json``.

    The shared step of ``injflow evaluate RUN --ood DATASET`` (:func:`injflow.runs.evaluate_run`) and
    :func:`ood_run`; ``folder`` is the run's :class:`~injflow.rundir.RunDir`, ``x_train`` its training split (the
    off-manifold noise is fitted on it), ``x_out`` the other data set's split if already loaded
    (:func:`load_ood_split`).
    """
    from .io import atomic_write_text
    from .plots import plot_score_histograms

    say = log or (lambda _m: None)
    if getattr(flow, "num_classes", None) is not None:
        raise DataError("--ood needs an unconditional model: a conditional one would need class labels of the other "
                        "data set")
    if x_out is None:
        x_out = load_ood_split(config, dataset, split, tuple(x_in.shape[1:]))
    if max_samples:
        x_in, x_out = x_in[:max_samples], x_out[:max_samples]
    latent = _default_latent(config, flow) if latent == "auto" else latent
    sigma = _vae_sigma(config)
    has_posterior = hasattr(getattr(flow, "encoder", None), "posterior")
    say(f"[injflow] OOD: {x_in.shape[0]} {config.data.name} ({split}) vs {x_out.shape[0]} {dataset} ({split}) points, "
        f"exact on-manifold NLL with p_Z = {latent} (d={flow.latent_dim} Jacobian columns each)")
    result = ood_scores(flow, x_in, x_out, x_fit=x_train, latent=latent,
                        vae_sigma=sigma if has_posterior else None, iw_samples=iw_samples,
                        names=(config.data.name, dataset), batch_size=batch_size, chunk_size=chunk_size, seed=seed,
                        progress=progress)
    if sigma is not None and not has_posterior:
        result.notes["vae_nll"] = ("skipped: the finished model.pt keeps only the VAE's mean encoder; evaluate with "
                                   "--checkpoint last for the importance-weighted bound")
    elif sigma is not None:
        result.notes["vae_nll"] = f"importance-weighted bound, K = {iw_samples}, decoder sigma = {sigma:g}"
    out = Path(folder.eval)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = atomic_write_text(out / "ood_scores.csv", result.csv_text())
    summary = result.summary()
    png = plot_score_histograms(
        {k: (result.scores_in[k].numpy(), result.scores_out[k].numpy()) for k in result.scores_in}, out / "ood_scores.png",
        labels=(f"{config.data.name} ({split}, in)", f"{dataset} ({split}, out)"), aurocs=summary["auroc"],
        title=f"OOD scores of {Path(folder.path).name}: {x_in.shape[0]} in-distribution vs {x_out.shape[0]} "
              f"out-of-distribution points; p_Z = {latent}; noise sigma fitted on the training split")
    summary["in"].update(dataset=config.data.name, split=split)
    summary["out"].update(dataset=dataset, split=split)
    summary["files"] = {"scores": _relative(csv_path, folder), "figure": _relative(png, folder)}
    say("[injflow] OOD AUROC (" + dataset + " as positives): "
        + ", ".join(f"{k} {v:.3f}" for k, v in summary["auroc"].items()))
    return summary


def _relative(path: Path, folder: Any) -> str:
    try:
        return str(Path(path).relative_to(Path(folder.path)))
    except ValueError:
        return str(path)


def ood_run(
    run: str | Path,
    dataset: str,
    *,
    split: str = "test",
    max_samples: int | None = None,
    latent: str = "auto",
    checkpoint: str | None = None,
    device: str = "cpu",
    iw_samples: int = 16,
    batch_size: int = 256,
    seed: int | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Scores a run's ``split`` against the same split of ``dataset`` and stores the result in the run folder.

    Writes ``<run>/eval/ood_scores.csv`` and ``<run>/eval/ood_scores.png`` and sets the ``ood`` entry of
    ``<run>/metrics.json`` (the rest of the file is kept; ``injflow evaluate RUN --ood DATASET`` does the same
    together with the full evaluation).

    Arguments:
        run: The run folder.
        dataset: A registered data set with samples of the run's shape (``mnist`` for a ``fashion_mnist`` run).
        split: Which split of both data sets.
        max_samples: Score the first N points of each set only.
        latent: :math:`p_Z` of ``nll``: ``auto`` (the prior, or the post-fit GMM for methods that do not train the
            prior as a density: AE and its regularised variants), ``prior``, ``gaussian`` or ``gmm``.
        checkpoint: ``"last"``/``"best"``: score that checkpoint (needed for a VAE's ``vae_nll``).
        device: Where to compute.
        iw_samples: K of a VAE's importance-weighted bound.
        batch_size: Points per Jacobian batch.
        seed: Seed of the VAE's posterior draws (default: the run's ``train.seed``).
        verbose: Print progress and the AUROCs.

    Returns:
        The ``ood`` section written into ``metrics.json``.
    """
    from .loading import load_run, load_run_data

    folder, config, flow = load_run(run, checkpoint=checkpoint, device=device)
    data = load_run_data(config)
    x_in, _ = data.split(split)
    if x_in is None:
        raise DataError(f"the data set {config.data.name!r} of {folder.path} has no {split} split")
    section = evaluate_run_ood(folder, config, flow, dataset, x_in=x_in, x_train=data.train, split=split,
                               max_samples=max_samples, latent=latent, iw_samples=iw_samples, batch_size=batch_size,
                               seed=config.train.seed if seed is None else seed, progress=verbose,
                               log=print if verbose else None)
    metrics: dict[str, Any] = {"run": str(folder.path)}
    if folder.metrics_json.is_file():
        metrics = json.loads(folder.metrics_json.read_text())
    metrics["ood"] = section
    folder.write_json(folder.metrics_json, metrics)
    if verbose:
        print(f"[injflow] ood -> {folder.metrics_json} (scores: {folder.eval / 'ood_scores.csv'})")
    return section
