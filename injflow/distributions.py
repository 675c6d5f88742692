r"""Latent distributions and post-fit samplers.

Every distribution is a small :class:`torch.nn.Module` whose parameters live in buffers, so it moves
with ``.to(device)``, is saved inside checkpoints, and can be rebuilt from :meth:`LatentDistribution.spec`.
All of them answer

* ``log_prob(z)`` — the log-density of each row of ``z`` (shape ``(B, d)``), shape ``(B,)``;
* ``sample(n, temperature=T, generator=...)`` — ``n`` draws of shape ``(n, d)``; the temperature
  scales the spread around the mode(s) (``T = 1`` is the distribution itself, ``T < 1`` sharper).

The *prior* choices are the standard normal, the isotropic normal :math:`\mathcal N(0, \sigma^2 I)`
(Kumar et al. 2020, eq. 9) and the multivariate Student-t (FIF paper, App. E.3). The *post-fit*
samplers are fitted on encoded training data after training (Kumar et al. 2020, §2.2.1): a
full-covariance Gaussian and a Gaussian mixture with full covariances (10 components by default,
fitted with scikit-learn).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .registry import Registry

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "LatentDistribution",
    "StandardNormal",
    "IsotropicNormal",
    "StudentT",
    "FullCovarianceGaussian",
    "GaussianMixture",
    "build_latent",
    "distribution_from_spec",
    "fit_gaussian",
    "fit_gmm",
    "fit_sampler",
    "LATENTS",
    "SAMPLERS",
]


def _check_z(z: Tensor, dim: int) -> None:
    if z.ndim != 2 or z.shape[1] != dim:
        raise ValueError(f"expected latent codes of shape (B, {dim}), got {tuple(z.shape)}")


def _check_temperature(temperature: float) -> float:
    temperature = float(temperature)
    if not temperature > 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a positive finite number, got {temperature}")
    return temperature


def _stable_cholesky(covariance: Tensor) -> Tensor:
    """Cholesky factor(s) of (batched) covariances, computed in float64.

    Codes of a plain autoencoder can have covariances with condition numbers of 1e8 and more; such a matrix
    is positive definite in float64 but not after rounding to float32, so the factor is always taken in
    float64, and when even that fails a ridge relative to the mean variance is added (with a warning)
    instead of failing after a finished training run.
    """
    cov = covariance.double()
    factor, info = torch.linalg.cholesky_ex(cov)
    if not bool((info != 0).any()):
        return factor
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    scale = cov.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(torch.finfo(cov.dtype).tiny)[..., None, None]
    for jitter in (1e-10, 1e-8, 1e-6, 1e-4, 1e-2):
        factor, info = torch.linalg.cholesky_ex(cov + jitter * scale * eye)
        if not bool((info != 0).any()):
            warnings.warn(
                f"covariance not positive definite; added a ridge of {jitter:g} x its mean variance",
                RuntimeWarning,
                stacklevel=3,
            )
            return factor
    raise ValueError(
        "covariance is not positive definite even with a ridge of 1e-2 x its mean variance; "
        "check the codes for collapsed or constant dimensions"
    )


def _randn(n: int, dim: int, ref: Tensor, generator: torch.Generator | None) -> Tensor:
    # Draw on the CPU when a CPU generator is given so seeded draws are reproducible on any device.
    if generator is not None and generator.device.type != ref.device.type:
        return torch.randn(n, dim, generator=generator, dtype=ref.dtype).to(ref.device)
    return torch.randn(n, dim, generator=generator, dtype=ref.dtype, device=ref.device)


class LatentDistribution(nn.Module):
    r"""Base class: a distribution on :math:`\mathbb R^d` with buffers for its parameters.

    Arguments:
        dim: The latent dimension :math:`d`.
    """

    name: str = "base"

    def __init__(self, dim: int) -> None:
        super().__init__()
        if int(dim) < 1:
            raise ValueError(f"latent dimension must be >= 1, got {dim}")
        self.dim = int(dim)

    def log_prob(self, z: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def sample(
        self, n: int, *, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, z: Tensor) -> Tensor:
        return self.log_prob(z)

    def spec(self) -> dict[str, Any]:
        """A plain dict (name, dim, numbers and tensors) that :func:`distribution_from_spec` rebuilds."""
        return {"name": self.name, "dim": self.dim}

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class IsotropicNormal(LatentDistribution):
    r"""The isotropic normal :math:`\mathcal N(0, \sigma^2 I_d)`.

    .. math:: \log p(z) = -\frac{d}{2}\log(2\pi\sigma^2) - \frac{\|z\|^2}{2\sigma^2}

    Arguments:
        dim: The latent dimension :math:`d`.
        sigma: The standard deviation :math:`\sigma > 0`.

    Example:
        >>> IsotropicNormal(2, sigma=0.5).log_prob(torch.zeros(1, 2))
        tensor([-0.4516])
    """

    name = "isotropic_normal"

    def __init__(self, dim: int, sigma: float = 1.0) -> None:
        super().__init__(dim)
        if not float(sigma) > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.sigma = float(sigma)
        self.register_buffer("loc", torch.zeros(self.dim))

    def log_prob(self, z: Tensor) -> Tensor:
        _check_z(z, self.dim)
        s2 = self.sigma**2
        return -0.5 * self.dim * math.log(2 * math.pi * s2) - z.pow(2).sum(-1) / (2 * s2)

    def sample(self, n: int, *, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        t = _check_temperature(temperature)
        return _randn(n, self.dim, self.loc, generator) * (self.sigma * t)

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "sigma": self.sigma}

    def extra_repr(self) -> str:
        return f"dim={self.dim}, sigma={self.sigma}"


class StandardNormal(IsotropicNormal):
    r"""The standard normal :math:`\mathcal N(0, I_d)`, the default latent of FIF (eq. 7).

    Arguments:
        dim: The latent dimension :math:`d`.
    """

    name = "normal"

    def __init__(self, dim: int) -> None:
        super().__init__(dim, sigma=1.0)

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim}

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class StudentT(LatentDistribution):
    r"""The multivariate Student-t with ``df`` degrees of freedom, location 0 and scale :math:`\sigma^2 I_d`.

    The log-density holds for every :math:`d` (the :math:`d`-dependent normaliser is easy to get wrong):

    .. math::
        \log p(z) = \log\Gamma\!\left(\tfrac{\nu+d}{2}\right) - \log\Gamma\!\left(\tfrac{\nu}{2}\right)
            - \tfrac{d}{2}\log(\nu\pi) - d\log\sigma
            - \tfrac{\nu+d}{2}\log\!\left(1 + \tfrac{\|z\|^2}{\nu\sigma^2}\right)

    Samples are :math:`z = \sigma\,\epsilon / \sqrt{u/\nu}` with :math:`\epsilon \sim \mathcal N(0, I)`
    and :math:`u \sim \chi^2_\nu`.

    Arguments:
        dim: The latent dimension :math:`d`.
        df: Degrees of freedom :math:`\nu > 0`.
        scale: The scale :math:`\sigma > 0`.

    Example:
        >>> StudentT(3, df=5.0).log_prob(torch.zeros(2, 3)).shape
        torch.Size([2])
    """

    name = "student_t"

    def __init__(self, dim: int, df: float = 5.0, scale: float = 1.0) -> None:
        super().__init__(dim)
        if not float(df) > 0:
            raise ValueError(f"df must be > 0, got {df}")
        if not float(scale) > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.df = float(df)
        self.scale = float(scale)
        self.register_buffer("loc", torch.zeros(self.dim))

    def log_prob(self, z: Tensor) -> Tensor:
        _check_z(z, self.dim)
        nu, d, s = self.df, self.dim, self.scale
        const = (
            math.lgamma((nu + d) / 2)
            - math.lgamma(nu / 2)
            - d / 2 * math.log(nu * math.pi)
            - d * math.log(s)
        )
        return const - (nu + d) / 2 * torch.log1p(z.pow(2).sum(-1) / (nu * s**2))

    def sample(self, n: int, *, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        t = _check_temperature(temperature)
        eps = _randn(n, self.dim, self.loc, generator)
        conc = torch.full((n,), self.df / 2, dtype=torch.float64)
        if generator is None:
            # The global stream of the device eps came from, advanced like any draw. (A forked CPU stream was restored
            # after the draw: on a GPU, where eps leaves the CPU stream alone, every call drew the same χ² factors.)
            u = 2 * torch._standard_gamma(conc.to(self.loc.device))  # chi^2_nu = 2 * Gamma(nu/2, 1)
        else:
            # torch's gamma sampler takes no generator: a seed drawn from the generator seeds the CPU stream inside a
            # fork, so seeded draws repeat. Only the CPU generator is reseeded (torch.manual_seed would also reseed
            # every CUDA device's stream, which the CPU-only fork does not restore).
            seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(seed)
                u = 2 * torch._standard_gamma(conc)
        factor = (self.df / u).sqrt().to(eps)
        return eps * factor[:, None] * (self.scale * t)

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "df": self.df, "scale": self.scale}

    def extra_repr(self) -> str:
        return f"dim={self.dim}, df={self.df}, scale={self.scale}"


class FullCovarianceGaussian(LatentDistribution):
    r"""A Gaussian :math:`\mathcal N(\mu, \Sigma)` with a full covariance (post-fit sampler).

    Temperature :math:`T` samples :math:`\mu + T L\epsilon` with :math:`\Sigma = LL^\top`.

    Arguments:
        mean: The mean, shape ``(d,)``.
        covariance: The covariance, shape ``(d, d)``, symmetric positive definite.
        scale_tril: Its Cholesky factor when already known (a saved model); computed in float64 otherwise.
    """

    name = "gaussian"

    def __init__(self, mean: Tensor, covariance: Tensor, scale_tril: Tensor | None = None) -> None:
        mean = torch.as_tensor(mean)
        super().__init__(mean.shape[-1])
        covariance = torch.as_tensor(covariance)
        if covariance.shape != (self.dim, self.dim):
            raise ValueError(f"covariance must have shape ({self.dim}, {self.dim}), got {tuple(covariance.shape)}")
        # The factor comes from the covariance as given (float64 when fitted), before any cast.
        scale_tril = _stable_cholesky(covariance) if scale_tril is None else torch.as_tensor(scale_tril)
        if scale_tril.shape != covariance.shape:
            raise ValueError(f"scale_tril must have shape {tuple(covariance.shape)}, got {tuple(scale_tril.shape)}")
        self.register_buffer("mean", mean.clone())
        self.register_buffer("covariance", covariance.to(mean).clone())
        self.register_buffer("scale_tril", scale_tril.to(mean))

    def log_prob(self, z: Tensor) -> Tensor:
        _check_z(z, self.dim)
        mvn = torch.distributions.MultivariateNormal(self.mean, scale_tril=self.scale_tril, validate_args=False)
        return mvn.log_prob(z)

    def sample(self, n: int, *, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        t = _check_temperature(temperature)
        eps = _randn(n, self.dim, self.mean, generator)
        return self.mean + t * eps @ self.scale_tril.T

    def spec(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dim": self.dim,
            "mean": self.mean.cpu(),
            "covariance": self.covariance.cpu(),
            "scale_tril": self.scale_tril.cpu(),
        }


class GaussianMixture(LatentDistribution):
    r"""A mixture of Gaussians with full covariances (post-fit sampler, Kumar et al. 2020, §2.2.1).

    .. math:: p(z) = \sum_k w_k\, \mathcal N(z; \mu_k, \Sigma_k)

    Temperature :math:`T` scales each component around its mean: :math:`\mu_k + T L_k\epsilon`.

    Arguments:
        weights: Mixture weights, shape ``(K,)``, summing to one.
        means: Component means, shape ``(K, d)``.
        covariances: Component covariances, shape ``(K, d, d)``.
        scale_tril: Their Cholesky factors when already known (a saved model); computed in float64 otherwise.
    """

    name = "gmm"

    def __init__(self, weights: Tensor, means: Tensor, covariances: Tensor, scale_tril: Tensor | None = None) -> None:
        means = torch.as_tensor(means)
        super().__init__(means.shape[-1])
        weights = torch.as_tensor(weights).to(means)
        covariances = torch.as_tensor(covariances)
        k = means.shape[0]
        if weights.shape != (k,) or covariances.shape != (k, self.dim, self.dim):
            raise ValueError(
                f"inconsistent GMM shapes: weights {tuple(weights.shape)}, means {tuple(means.shape)}, "
                f"covariances {tuple(covariances.shape)}"
            )
        if (weights < 0).any() or not torch.isclose(weights.double().sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-4):
            raise ValueError(f"GMM weights must be non-negative and sum to one, got {weights.tolist()}")
        # The factors come from the covariances as given (float64 when fitted), before any cast.
        scale_tril = _stable_cholesky(covariances) if scale_tril is None else torch.as_tensor(scale_tril)
        if scale_tril.shape != covariances.shape:
            raise ValueError(f"scale_tril must have shape {tuple(covariances.shape)}, got {tuple(scale_tril.shape)}")
        self.register_buffer("weights", weights.clone())
        self.register_buffer("means", means.clone())
        self.register_buffer("covariances", covariances.to(means).clone())
        self.register_buffer("scale_tril", scale_tril.to(means))

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    def log_prob(self, z: Tensor) -> Tensor:
        _check_z(z, self.dim)
        mvn = torch.distributions.MultivariateNormal(self.means, scale_tril=self.scale_tril, validate_args=False)
        return torch.logsumexp(mvn.log_prob(z[:, None, :]) + self.weights.log(), dim=-1)

    def sample(self, n: int, *, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        t = _check_temperature(temperature)
        probs = self.weights.double().cpu() if generator is None or generator.device.type == "cpu" else self.weights
        comp = torch.multinomial(probs, n, replacement=True, generator=generator).to(self.means.device)
        eps = _randn(n, self.dim, self.means, generator)
        return self.means[comp] + t * torch.einsum("nij,nj->ni", self.scale_tril[comp], eps)

    def spec(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dim": self.dim,
            "weights": self.weights.cpu(),
            "means": self.means.cpu(),
            "covariances": self.covariances.cpu(),
            "scale_tril": self.scale_tril.cpu(),
        }

    def extra_repr(self) -> str:
        return f"dim={self.dim}, n_components={self.n_components}"


#: Prior latents by config name: ``cls(dim, **options)``.
LATENTS: Registry[type[LatentDistribution]] = Registry("latent distribution", reserved=("dim",))
LATENTS.register("normal", StandardNormal)
LATENTS.register("standard_normal", StandardNormal)
LATENTS.register("isotropic_normal", IsotropicNormal)
LATENTS.register("student_t", StudentT)


def build_latent(name: str, dim: int, **options: Any) -> LatentDistribution:
    """Builds a prior latent distribution by name.

    Arguments:
        name: One of ``"normal"``, ``"isotropic_normal"`` (option ``sigma``), ``"student_t"``
            (options ``df``, ``scale``).
        dim: The latent dimension.
        options: The distribution's keyword arguments.

    Returns:
        The distribution module.

    Example:
        >>> build_latent("student_t", 4, df=3.0)
        StudentT(dim=4, df=3.0, scale=1.0)
    """
    return LATENTS.build(name, dim, **options)


def distribution_from_spec(spec: dict[str, Any]) -> LatentDistribution:
    """Rebuilds a distribution from :meth:`LatentDistribution.spec`.

    Example:
        >>> d = fit_gaussian(torch.randn(100, 2))
        >>> distribution_from_spec(d.spec()).dim
        2
    """
    spec = dict(spec)
    name = spec.pop("name")
    dim = spec.pop("dim")
    if name == FullCovarianceGaussian.name:
        return FullCovarianceGaussian(spec["mean"], spec["covariance"], spec.get("scale_tril"))
    if name == GaussianMixture.name:
        return GaussianMixture(spec["weights"], spec["means"], spec["covariances"], spec.get("scale_tril"))
    return build_latent(name, dim, **spec)


def _as_numpy64(z: Tensor) -> np.ndarray:
    z = torch.as_tensor(z).detach()
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"need at least 2 latent codes of shape (N, d) to fit a sampler, got {tuple(z.shape)}")
    if not torch.isfinite(z).all():
        raise ValueError("latent codes contain NaN or inf; cannot fit a sampler")
    return z.double().cpu().numpy()


def fit_gaussian(z: Tensor, *, reg: float = 1e-6) -> FullCovarianceGaussian:
    r"""Fits a full-covariance Gaussian to encoded data (maximum likelihood, plus ``reg``·I for stability).

    Arguments:
        z: Encoded training data, shape ``(N, d)``.
        reg: Ridge added to the covariance's diagonal.

    Returns:
        A :class:`FullCovarianceGaussian` in the dtype of ``z``.
    """
    import numpy as np

    arr = _as_numpy64(z)
    mean = arr.mean(0)
    cov = np.cov(arr, rowvar=False, bias=True).reshape(arr.shape[1], arr.shape[1]) + reg * np.eye(arr.shape[1])
    dtype = z.dtype if z.is_floating_point() else torch.float32
    # Built in float64 so the Cholesky factor is exact, then cast (see _stable_cholesky).
    return FullCovarianceGaussian(torch.tensor(mean), torch.tensor(cov)).to(dtype)


def fit_gmm(z: Tensor, *, n_components: int = 10, seed: int = 0, reg: float = 1e-6, max_iter: int = 200) -> GaussianMixture:
    r"""Fits a Gaussian mixture with full covariances to encoded data with scikit-learn (seeded).

    Arguments:
        z: Encoded training data, shape ``(N, d)``.
        n_components: Number of components (Kumar et al. use 10); reduced to ``N`` when fewer points.
        seed: Seed of the k-means initialisation, so the same data gives the same mixture.
        reg: ``reg_covar`` of scikit-learn.
        max_iter: EM iterations.

    Returns:
        A :class:`GaussianMixture` in the dtype of ``z``.
    """
    from sklearn.mixture import GaussianMixture as SkGMM

    arr = _as_numpy64(z)
    if n_components < 1:
        raise ValueError(f"n_components must be >= 1, got {n_components}")
    k = min(int(n_components), arr.shape[0])
    n, d = arr.shape
    if n / k <= d:
        # A full covariance needs more than d points; below that it is singular and only reg_covar holds it up.
        warnings.warn(
            f"fitting {k} full-covariance components to {n} codes of dimension {d}: about {n / k:.0f} codes per "
            f"component, not more than d; use fewer components (e.g. {max(1, n // (2 * d))}) or more data",
            RuntimeWarning,
            stacklevel=2,
        )
    gmm = SkGMM(n_components=k, covariance_type="full", random_state=seed, reg_covar=reg, max_iter=max_iter)
    gmm.fit(arr)
    dtype = z.dtype if z.is_floating_point() else torch.float32
    # Built in float64 so the Cholesky factors are exact, then cast (see _stable_cholesky).
    return GaussianMixture(torch.tensor(gmm.weights_), torch.tensor(gmm.means_), torch.tensor(gmm.covariances_)).to(dtype)


#: Post-fit samplers by name (``train.samplers``): ``fit(z, **options) -> LatentDistribution`` on encoded data.
SAMPLERS: Registry[Callable[..., LatentDistribution]] = Registry("post-fit sampler", reserved=("z",))
SAMPLERS.register("gaussian", fit_gaussian)
SAMPLERS.register("gmm", fit_gmm)


def fit_sampler(name: str, z: Tensor, **options: Any) -> LatentDistribution:
    """Fits the post-fit sampler ``name`` (see :data:`SAMPLERS`: ``"gaussian"``, ``"gmm"``) on encoded data ``z``."""
    return SAMPLERS.build(name, z, **options)
