r"""A scikit-learn estimator for injective flows: ``fit``, ``transform``, ``inverse_transform``, ``score_samples``,
``sample`` — usable in a :class:`~sklearn.pipeline.Pipeline` like :class:`~sklearn.decomposition.PCA` (a
dimension reduction) or :class:`~sklearn.mixture.GaussianMixture` (a density with samples).

``transform`` is the encoder :math:`z = f(x)`, ``inverse_transform`` the decoder :math:`\hat x = g(z)`,
``score_samples`` the log-density :math:`\log p_D(x)` in the data space — the exact on-manifold density of the
projection (FIF eq. 2) times Gaussian noise normal to the manifold, its variance fitted on the training data
(:mod:`injflow.metrics.ambient`), so that ``score`` compares models of different ``latent_dim`` like ``PCA.score``
compares numbers of components — ``manifold_log_prob`` the on-manifold :math:`\log p(\hat x)` alone (read it with
``reconstruction_error``), and ``sample`` draws :math:`g(z)` with :math:`z` from the prior or a post-fit sampler.
Training runs through injflow's engine (checkpoints, non-finite guards, the same configs), in a temporary run folder
unless ``run_dir`` is given.

Example:
    >>> import numpy as np
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> rng = np.random.default_rng(0)
    >>> t = rng.uniform(-2, 2, 400)
    >>> X = np.stack([t, np.sin(2 * t) + 0.05 * rng.normal(size=400), 0.05 * rng.normal(size=400)], 1)
    >>> model = make_pipeline(StandardScaler(), InjectiveFlowEstimator(latent_dim=1, max_epochs=2, hidden_features=(32,)))
    >>> model.fit(X).transform(X).shape
    (400, 1)
    >>> model.score_samples(X[:5]).shape
    (5,)
    >>> model[-1].sample(3).shape
    (3, 3)
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = ["InjectiveFlowEstimator"]


class InjectiveFlowEstimator(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    r"""An injective flow as a scikit-learn transformer and density estimator.

    Float64 input gives float64 output (the nets compute in float32); ``get_feature_names_out`` names the latent
    coordinates ``injectiveflowestimator0``, ... (as PCA's are ``pca0``, ...), so ``set_output(transform="pandas")``
    works; a ``DataFrame``'s column names are remembered in ``feature_names_in_``.

    Arguments:
        latent_dim: d, the dimension of the learned manifold (< the number of features).
        method: A registered method name (``fif``, ``injflow_ln``, ``ae``, ...).
        beta: The reconstruction weight (``None``: the method's default; refused for methods without one).
        architecture: A registered architecture (``mlp``, ``tabular``, ``toy_resnet``...).
        hidden_features: Hidden widths, for architectures that have them (``None``: the architecture's default;
            refused for those that do not).
        max_epochs: Training epochs.
        batch_size: Batch size.
        lr: Adam's learning rate.
        standardize: Scaling kept in the model (:mod:`injflow.scaling`): ``none`` (default, as scikit-learn's own
            estimators: put a ``StandardScaler`` in front), ``features`` or ``global``; the maps and scores stay in
            the input's units either way.
        sampler: What :meth:`sample` draws from: ``prior``, ``gaussian`` or ``gmm`` (post-fit, fitted in ``fit``).
        seed: Seed of initialisation, batches and noise.
        run_dir: Keep the run folder here (default: none is kept: training runs in a temporary folder, removed when
            ``fit`` returns, also after an error).
        overrides: Further dotted config overrides (``["train.input_noise=0.01"]``).
        verbose: Progress bar and messages.

    Attributes:
        flow_: The trained :class:`~injflow.model.InjectiveFlow`.
        off_manifold_noise_: The :class:`~injflow.metrics.ambient.OffManifoldNoise` fitted on the training data
            (its ``variance`` is the mean squared reconstruction error per normal direction).
        n_features_in_: The number of features seen in ``fit``.
        feature_names_in_: The column names of a ``DataFrame`` seen in ``fit``.
        run_dir_: Where the run was kept (``None`` without ``run_dir``).
    """

    def __init__(
        self,
        latent_dim: int = 2,
        *,
        method: str = "fif",
        beta: float | None = None,
        architecture: str = "mlp",
        hidden_features: tuple[int, ...] | None = None,
        max_epochs: int = 50,
        batch_size: int = 256,
        lr: float = 1e-3,
        standardize: str = "none",
        sampler: str = "prior",
        seed: int = 0,
        run_dir: str | None = None,
        overrides: tuple[str, ...] = (),
        verbose: bool = False,
    ) -> None:
        self.latent_dim = latent_dim
        self.method = method
        self.beta = beta
        self.architecture = architecture
        self.hidden_features = hidden_features
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.standardize = standardize
        self.sampler = sampler
        self.seed = seed
        self.run_dir = run_dir
        self.overrides = overrides
        self.verbose = verbose

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        tags.non_deterministic = False  # seeded: the same data and seed give the same model
        return tags

    # ------------------------------------------------------------------ fitting

    def _config(self) -> Any:
        from .config import apply_overrides, config_from_dict
        from .methods import METHODS
        from .nets.registry import architecture_options

        method: dict[str, Any] = {"name": self.method}
        if self.beta is not None:
            if "beta" not in METHODS.options(self.method):
                raise ValueError(f"beta={self.beta!r} does not apply: method {self.method!r} has no reconstruction weight")
            method["beta"] = float(self.beta)
        options: dict[str, Any] = {}
        if self.hidden_features is not None:
            if "hidden_features" not in architecture_options(self.architecture):
                raise ValueError(f"hidden_features={self.hidden_features!r} does not apply: architecture "
                                 f"{self.architecture!r} has no hidden_features option")
            hidden = self.hidden_features
            options["hidden_features"] = list(hidden) if isinstance(hidden, (tuple, list)) else hidden
        data = {
            "model": {"architecture": self.architecture, "latent_dim": int(self.latent_dim), "options": options},
            "method": method,
            "optim": {"lr": float(self.lr)},
            "data": {"batch_size": int(self.batch_size), "standardize": self.standardize},
            "train": {"max_epochs": int(self.max_epochs), "seed": int(self.seed), "progress_bar": bool(self.verbose),
                      "pictures": False, "samplers": [] if self.sampler == "prior" else [self.sampler],
                      "gmm_components": 10},
            "run": {"name": "sklearn"},
        }
        return config_from_dict(apply_overrides(data, list(self.overrides)))

    def fit(self, X: Any, y: Any = None) -> InjectiveFlowEstimator:
        """Trains on the rows of ``X`` (at least 2; ``y`` is ignored); returns ``self``."""
        from .data import DataSplits
        from .train.runner import fit_config

        x, _ = self._as_tensor(X, reset=True)
        if x.shape[1] <= int(self.latent_dim):
            raise ValueError(f"latent_dim={self.latent_dim} must be smaller than the number of features, but X has "
                             f"n_features={x.shape[1]}")
        config = self._config()
        self._n_features_out = int(self.latent_dim)
        data = DataSplits("tensors", "tabular", x)
        if self.run_dir is not None:
            result = fit_config(config, run_dir=Path(self.run_dir), data=data, verbose=self.verbose)
            self.run_dir_ = Path(self.run_dir)
        else:  # the model lives in memory; its run folder is not needed afterwards
            with tempfile.TemporaryDirectory(prefix="injflow-sklearn-") as tmp:
                result = fit_config(config, run_dir=Path(tmp) / "run", data=data, verbose=self.verbose)
            self.run_dir_ = None
        self.flow_ = result.flow.eval()
        self._fit_off_manifold_noise(x)
        return self

    # ------------------------------------------------------------------ maps

    def _as_tensor(self, X: Any, *, reset: bool = False) -> tuple[torch.Tensor, np.dtype]:
        """The rows as a float32 tensor (what the nets compute in) and the input's float dtype (what is returned)."""
        arr = validate_data(self, X, reset=reset, dtype=[np.float64, np.float32], ensure_all_finite=True,
                            ensure_min_samples=2 if reset else 1)
        return torch.as_tensor(np.asarray(arr, dtype=np.float32)), arr.dtype

    def _out(self, t: torch.Tensor, dtype: Any) -> np.ndarray:
        return t.detach().cpu().numpy().astype(dtype, copy=False)

    def transform(self, X: Any) -> np.ndarray:
        """The latent codes :math:`f(x)`, shape ``(n, latent_dim)``, in the input's float dtype."""
        check_is_fitted(self, "flow_")
        x, dtype = self._as_tensor(X)
        return self._out(self.flow_.encode_all(x), dtype)

    def inverse_transform(self, X: Any) -> np.ndarray:
        """The decoded points :math:`g(z)` on the learned manifold, shape ``(n, n_features)``, in the codes' float
        dtype."""
        check_is_fitted(self, "flow_")
        from sklearn.utils.validation import check_array

        z = check_array(X, dtype=[np.float64, np.float32], ensure_all_finite=True)
        if z.shape[1] != self.flow_.latent_dim:
            raise ValueError(f"X has {z.shape[1]} features, but inverse_transform expects latent codes of "
                             f"latent_dim={self.flow_.latent_dim}")
        with torch.no_grad():
            x_hat = self.flow_.decode(torch.as_tensor(np.asarray(z, dtype=np.float32)).to(self.flow_.device))
        return self._out(x_hat, z.dtype)

    def reconstruction_error(self, X: Any) -> np.ndarray:
        r""":math:`\|g(f(x)) - x\|^2` per row."""
        check_is_fitted(self, "flow_")
        x, dtype = self._as_tensor(X)
        with torch.no_grad():
            x_hat = self.flow_.decode(self.flow_.encode_all(x))
        return self._out(((x_hat.cpu() - x) ** 2).sum(1), dtype)

    # ------------------------------------------------------------------ scores

    def _fit_off_manifold_noise(self, x: torch.Tensor) -> None:
        from .metrics.ambient import fit_flow_noise

        self.off_manifold_noise_ = fit_flow_noise(self.flow_, x, max_points=None)

    def manifold_log_prob(self, X: Any) -> np.ndarray:
        """The exact on-manifold log-density :math:`\\log p(g(f(x)))` per row (FIF eq. 2; a density of the
        ``latent_dim``-dimensional manifold, so read it with :meth:`reconstruction_error` and do not compare it across
        ``latent_dim``)."""
        check_is_fitted(self, "flow_")
        return self.flow_.log_prob(self._as_tensor(X)[0]).cpu().double().numpy()

    def score_samples(self, X: Any) -> np.ndarray:
        r"""The log-density of each row in the data space,

        .. math:: \log p_D(x) = \log p(\hat x) - \tfrac{D-d}2\log(2\pi\hat\sigma^2) - \|x-\hat x\|^2/(2\hat\sigma^2),

        the on-manifold density of the projection :math:`\hat x = g(f(x))` thickened by Gaussian noise normal to the
        manifold with the variance :math:`\hat\sigma^2` fitted on the training data (``off_manifold_noise_``). A
        density of the D-dimensional data, so it compares models of different ``latent_dim``
        (:mod:`injflow.metrics.ambient`).
        """
        check_is_fitted(self, "flow_")
        log_p, rec = self.flow_.log_prob(self._as_tensor(X)[0], return_reconstruction=True)
        return self.off_manifold_noise_.log_prob(log_p.cpu(), rec.cpu()).numpy()

    def score(self, X: Any, y: Any = None) -> float:
        """The mean of :meth:`score_samples`: the average log-likelihood of the data under the model, higher is better,
        comparable across ``latent_dim`` (for ``GridSearchCV``; with ``refit=injflow.dimension.select_latent_dim`` the
        smallest adequate ``latent_dim`` is chosen)."""
        return float(self.score_samples(X).mean())

    def sample(self, n_samples: int = 1, random_state: int | None = None) -> np.ndarray:
        """``n_samples`` draws :math:`g(z)` with :math:`z` from ``sampler``, shape ``(n_samples, n_features)`` (float64)."""
        check_is_fitted(self, "flow_")
        seed = self.seed if random_state is None else int(random_state)
        return self.flow_.sample(int(n_samples), sampler=self.sampler, seed=seed).cpu().double().numpy()
