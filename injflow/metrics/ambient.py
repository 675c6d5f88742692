r"""The D-dimensional density of a learned manifold thickened by the fitted off-manifold noise: one likelihood that
compares models of different latent dimension d.

An injective flow's exact likelihood (FIF eq. 2) is a density *on its d-dimensional manifold*: its unit is
nats per d-dimensional volume, so the values of two models with different d are not comparable (a larger d always
looks better or worse for reasons of units alone), and a point off the manifold is scored by its projection
:math:`\hat x = g(f(x))`. The model becomes a density on :math:`\mathbb R^D` once the distance to the manifold is
modelled too. Write :math:`x = \hat x + n` with :math:`n` in the :math:`D - d` directions normal to the manifold at
:math:`\hat x` and :math:`n \sim \mathcal N(0, \sigma^2 I_{D-d})`. To first order in :math:`\sigma` times the
manifold's curvature (the tube's volume element is 1 plus that),

.. math::
    \log p_D(x) = \log p(\hat x) - \frac{D-d}{2}\log(2\pi\sigma^2) - \frac{\|x - \hat x\|^2}{2\sigma^2},

and the maximum-likelihood noise variance on fitting points :math:`x_1 \dots x_n` is the mean squared distance to
the manifold per normal direction,

.. math:: \hat\sigma^2 = \frac{1}{n (D-d)} \sum_i \|x_i - \hat x_i\|^2 .

This is probabilistic PCA's construction (Tipping & Bishop 1999: the retained directions carry the signal, the
:math:`D - d` discarded ones an isotropic :math:`\sigma^2` fitted as their mean variance), and for a linear flow it is
that model up to the (negligible) noise along the manifold; scikit-learn's ``PCA.score`` is this likelihood, and
held-out values of it choose the number of components. It is also the density FIF's objective approximates: the
reconstruction weight β of FIF eq. 7 is :math:`1/(2\sigma^2)` of this noise model (FIF App. C uses
:math:`1/2\sigma^2` in place of β). At :math:`d = D` there are no normal directions and :math:`p_D = p`.

:math:`\hat\sigma^2` is fitted on the *training* points (as PCA fits its noise variance), then the density is
evaluated on held-out points: a model that bought a small training reconstruction error by overfitting pays for it on
held-out data through the :math:`\|x - \hat x\|^2 / 2\hat\sigma^2` term.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["OffManifoldNoise", "fit_off_manifold_noise", "reconstruction_errors", "fit_flow_noise", "ambient_nll_metrics",
           "MAX_NOISE_POINTS"]

#: The noise variance of a flow is fitted on at most this many training points (a fixed prefix, so callers agree).
MAX_NOISE_POINTS = 10_000
#: A fitted variance below this is raised to it (data exactly on the learned manifold would give log 0).
MIN_VARIANCE = 1e-12


@dataclass(frozen=True)
class OffManifoldNoise:
    r"""Isotropic Gaussian noise :math:`\mathcal N(0, \sigma^2 I_{D-d})` normal to a d-dimensional manifold in
    :math:`\mathbb R^D`.

    Attributes:
        variance: :math:`\sigma^2` (0 when d = D: no normal directions).
        data_dim: D.
        latent_dim: d.
        n: How many points it was fitted on.

    Example:
        >>> noise = fit_off_manifold_noise(torch.tensor([2.0, 4.0]), data_dim=4, latent_dim=1)
        >>> noise.variance  # mean squared distance 3 over D - d = 3 normal directions
        1.0
        >>> lp = noise.log_prob(torch.tensor([0.0]), torch.tensor([3.0]))
        >>> round(float(lp), 4) == round(-1.5 * math.log(2 * math.pi) - 1.5, 4)
        True
    """

    variance: float
    data_dim: int
    latent_dim: int
    n: int

    @property
    def normal_dim(self) -> int:
        """D − d, the number of directions normal to the manifold."""
        return self.data_dim - self.latent_dim

    @property
    def std(self) -> float:
        """:math:`\\sigma`."""
        return math.sqrt(self.variance)

    def log_prob(self, manifold_log_prob: Tensor, reconstruction: Tensor) -> Tensor:
        r""":math:`\log p_D(x)` from :math:`\log p(\hat x)` and :math:`\|x - \hat x\|^2` (same shapes), in float64."""
        lp = torch.as_tensor(manifold_log_prob).double()
        if self.normal_dim == 0:
            return lp
        rec = torch.as_tensor(reconstruction, device=lp.device).double()
        var = max(self.variance, MIN_VARIANCE)
        return lp - 0.5 * self.normal_dim * math.log(2 * math.pi * var) - rec / (2 * var)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``variance``, ``std``, ``data_dim``, ``latent_dim``, ``n``."""
        return {"variance": self.variance, "std": self.std, "data_dim": self.data_dim, "latent_dim": self.latent_dim,
                "n": self.n}


def fit_off_manifold_noise(reconstruction: Tensor, *, data_dim: int, latent_dim: int) -> OffManifoldNoise:
    r"""The maximum-likelihood :math:`\hat\sigma^2 = \operatorname{mean}\|x - \hat x\|^2 / (D - d)` from squared distances.

    Arguments:
        reconstruction: :math:`\|x_i - \hat x_i\|^2` of the fitting points, shape ``(n,)``.
        data_dim: D.
        latent_dim: d (≤ D).
    """
    rec = torch.as_tensor(reconstruction).double().flatten()
    if rec.numel() == 0:
        raise ValueError("the off-manifold noise needs at least one fitting point")
    if not 1 <= latent_dim <= data_dim:
        raise ValueError(f"latent_dim must be between 1 and data_dim={data_dim}, got {latent_dim}")
    if not bool(torch.isfinite(rec).all()):
        raise ValueError("the reconstruction errors of the fitting points are not all finite")
    normal = data_dim - latent_dim
    variance = 0.0 if normal == 0 else float(rec.mean()) / normal
    return OffManifoldNoise(variance, int(data_dim), int(latent_dim), int(rec.numel()))


@torch.no_grad()
def reconstruction_errors(flow: Any, x: Tensor, *, c: Tensor | None = None, batch_size: int = 1024) -> Tensor:
    r""":math:`\|g(f(x)) - x\|^2` per point (float64, on the CPU), in eval mode, ``batch_size`` points at a time.

    ``flow`` is an ``nn.Module`` with ``encode`` and ``decode`` (``encode(x, c)``/``decode(z, c)`` when ``c`` is
    given); the points go to the device of its parameters.
    """
    from ..devices import full_float32

    device = next((p.device for p in flow.parameters()), torch.device("cpu"))
    was_training = flow.training
    flow.eval()
    try:
        out = []
        for i in range(0, x.shape[0], batch_size):
            xb = x[i: i + batch_size].to(device)
            args: tuple = () if c is None else (c[i: i + batch_size].to(device),)
            with full_float32():  # numbers compared across devices: no TF32 on a GPU (injflow.devices)
                x_hat = flow.decode(flow.encode(xb, *args), *args)
            out.append((x_hat - xb).flatten(1).double().pow(2).sum(1).cpu())
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)
    finally:
        flow.train(was_training)


def fit_flow_noise(flow: Any, x_train: Tensor, *, c: Tensor | None = None, max_points: int | None = MAX_NOISE_POINTS,
                   batch_size: int = 1024) -> OffManifoldNoise:
    r"""Fits :math:`\hat\sigma^2` of ``flow`` on (the first ``max_points`` of) its training points.

    Example:
        >>> w = torch.tensor([[1.0], [0.0]])
        >>> flow = torch.nn.Module(); flow.encode = lambda x: x @ w; flow.decode = lambda z: z @ w.T; flow.latent_dim = 1
        >>> fit_flow_noise(flow, torch.tensor([[1.0, 2.0], [0.0, -4.0]])).variance  # (4 + 16) / 2 / (2 - 1)
        10.0
    """
    if max_points is not None:
        x_train = x_train[:max_points]
        c = None if c is None else c[:max_points]
    rec = reconstruction_errors(flow, x_train, c=c, batch_size=batch_size)
    return fit_off_manifold_noise(rec, data_dim=math.prod(x_train.shape[1:]), latent_dim=_latent_dim(flow))


def _latent_dim(flow: Any) -> int:
    dim = getattr(flow, "latent_dim", None)
    if dim is None:
        raise ValueError("the flow does not say its latent_dim")
    return int(dim)


def ambient_nll_metrics(
    metrics: dict[str, Any], noise: OffManifoldNoise, *, fitted_on: str = "train"
) -> dict[str, Any]:
    r"""``nll_D`` (and ``nll_D_per_dim``, ``off_manifold_noise``) from an evaluation's mean ``nll`` and mean
    ``reconstruction_error`` of the same points.

    The mean of :math:`-\log p_D` is linear in the per-point NLL and squared distance, so it follows from their means:
    :math:`\overline{\mathrm{nll}_D} = \overline{\mathrm{nll}} + \frac{D-d}{2}\log(2\pi\hat\sigma^2)
    + \overline{\|x - \hat x\|^2}/(2\hat\sigma^2)`. ``nll_D`` is ``None`` when the evaluation skipped the exact NLL.

    Example:
        >>> noise = OffManifoldNoise(1.0, data_dim=4, latent_dim=1, n=2)
        >>> m = ambient_nll_metrics({"nll": 0.0, "reconstruction_error": 3.0}, noise)
        >>> round(m["nll_D"], 4) == round(1.5 * math.log(2 * math.pi) + 1.5, 4)
        True
    """
    nll, rec = metrics.get("nll"), metrics.get("reconstruction_error")
    out: dict[str, Any] = {"off_manifold_noise": {**noise.to_dict(), "fitted_on": fitted_on}}
    if nll is None or rec is None:
        out.update(nll_D=None, nll_D_per_dim=None)
        return out
    nll_d = -float(noise.log_prob(torch.tensor([-float(nll)]), torch.tensor([float(rec)]))[0])
    out.update(nll_D=nll_d, nll_D_per_dim=nll_d / noise.data_dim)
    out["nll_D_note"] = ("-log p_D(x): the D-dimensional density of the manifold thickened by isotropic Gaussian noise "
                         "normal to it, its variance fitted on the training split (docs/ood.md); comparable across "
                         "latent dimensions, lower is better")
    return out

