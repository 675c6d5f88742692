r"""A scikit-learn estimator for injective flows: ``fit``, ``transform``, ``inverse_transform``, ``score_samples``,
``sample`` — usable in a :class:`~sklearn.pipeline.Pipeline` like :class:`~sklearn.decomposition.PCA` (a
dimension reduction) or :class:`~sklearn.mixture.GaussianMixture` (a density with samples).

``transform`` is the encoder :math:`z = f(x)`, ``inverse_transform`` the decoder :math:`\hat x = g(z)`,
``score_samples`` the exact on-manifold log-density :math:`\log p(\hat x)` of the projection (FIF eq. 2; read it
together with ``reconstruction_error``), and ``sample`` draws :math:`g(z)` with :math:`z` from the prior or a post-fit
sampler. Training runs through injflow's engine (checkpoints, non-finite guards, the same configs), in a temporary
run folder unless ``run_dir`` is given.

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

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

__all__ = ["InjectiveFlowEstimator"]


class InjectiveFlowEstimator(TransformerMixin, BaseEstimator):
    r"""An injective flow as a scikit-learn transformer and density estimator.

    Arguments:
        latent_dim: d, the dimension of the learned manifold (< the number of features).
        method: A registered method name (``fif``, ``injflow_ln``, ``ae``, ...).
        beta: The reconstruction weight (methods that have one).
        architecture: A registered architecture (``mlp``, ``tabular``, ``toy_resnet``...).
        hidden_features: Widths of the ``mlp`` architecture's hidden layers.
        max_epochs: Training epochs.
        batch_size: Batch size.
        lr: Adam's learning rate.
        sampler: What :meth:`sample` draws from: ``prior``, ``gaussian`` or ``gmm`` (post-fit, fitted in ``fit``).
        seed: Seed of initialisation, batches and noise.
        run_dir: Keep the run folder here (default: a temporary folder, removed when the estimator is deleted).
        overrides: Further dotted config overrides (``["train.input_noise=0.01"]``).
        verbose: Progress bar and messages.

    Attributes:
        flow_: The trained :class:`~injflow.model.InjectiveFlow`.
        n_features_in_: The number of features seen in ``fit``.
        run_dir_: Where the run was written.
    """

    def __init__(
        self,
        latent_dim: int = 2,
        *,
        method: str = "fif",
        beta: float | None = 10.0,
        architecture: str = "mlp",
        hidden_features: tuple[int, ...] = (256, 256),
        max_epochs: int = 50,
        batch_size: int = 256,
        lr: float = 1e-3,
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
        self.sampler = sampler
        self.seed = seed
        self.run_dir = run_dir
        self.overrides = overrides
        self.verbose = verbose

    # ------------------------------------------------------------------ fitting

    def _config(self) -> Any:
        from .config import apply_overrides, config_from_dict
        from .methods import METHODS

        method: dict[str, Any] = {"name": self.method}
        if self.beta is not None and "beta" in METHODS.options(self.method):
            method["beta"] = float(self.beta)
        options = {"hidden_features": list(self.hidden_features)} if self.architecture == "mlp" else {}
        data = {
            "model": {"architecture": self.architecture, "latent_dim": int(self.latent_dim), "options": options},
            "method": method,
            "optim": {"lr": float(self.lr)},
            "data": {"batch_size": int(self.batch_size)},
            "train": {"max_epochs": int(self.max_epochs), "seed": int(self.seed), "progress_bar": bool(self.verbose),
                      "pictures": False, "samplers": [] if self.sampler == "prior" else [self.sampler],
                      "gmm_components": 10},
            "run": {"name": "sklearn"},
        }
        return config_from_dict(apply_overrides(data, list(self.overrides)))

    def fit(self, X: Any, y: Any = None) -> InjectiveFlowEstimator:
        """Trains on the rows of ``X`` (``y`` is ignored); returns ``self``."""
        from .data import DataSplits
        from .train.runner import fit_config

        x = self._as_tensor(X, reset=True)
        config = self._config()
        if self.run_dir is None:
            self._tmp = tempfile.mkdtemp(prefix="injflow-sklearn-")
            run_dir = Path(self._tmp) / "run"
        else:
            run_dir = Path(self.run_dir)
        result = fit_config(config, run_dir=run_dir, data=DataSplits("array", "tabular", x), verbose=self.verbose)
        self.flow_ = result.flow.eval()
        self.run_dir_ = run_dir
        return self

    def __del__(self) -> None:
        tmp = getattr(self, "_tmp", None)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    # ------------------------------------------------------------------ maps

    def _as_tensor(self, X: Any, *, reset: bool = False) -> torch.Tensor:
        from sklearn.utils.validation import check_array

        arr = check_array(X, dtype=[np.float32, np.float64], ensure_all_finite=True)
        if reset:
            self.n_features_in_ = arr.shape[1]
        elif arr.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {arr.shape[1]} features, but this estimator was fitted with {self.n_features_in_}")
        return torch.as_tensor(arr, dtype=torch.float32)

    def transform(self, X: Any) -> np.ndarray:
        """The latent codes :math:`f(x)`, shape ``(n, latent_dim)``."""
        check_is_fitted(self, "flow_")
        return self.flow_.encode_all(self._as_tensor(X)).cpu().numpy()

    def inverse_transform(self, Z: Any) -> np.ndarray:
        """The decoded points :math:`g(z)` on the learned manifold, shape ``(n, n_features)``."""
        check_is_fitted(self, "flow_")
        z = torch.as_tensor(np.asarray(Z, dtype=np.float32)).reshape(-1, self.flow_.latent_dim)
        with torch.no_grad():
            return self.flow_.decode(z.to(self.flow_.device)).cpu().numpy()

    def reconstruction_error(self, X: Any) -> np.ndarray:
        """:math:`\\|g(f(x)) - x\\|^2` per row."""
        x = self._as_tensor(X)
        return ((torch.as_tensor(self.inverse_transform(self.transform(X))) - x) ** 2).sum(1).numpy()

    def score_samples(self, X: Any) -> np.ndarray:
        """The exact on-manifold log-density :math:`\\log p(g(f(x)))` per row (read with :meth:`reconstruction_error`)."""
        check_is_fitted(self, "flow_")
        return self.flow_.log_prob(self._as_tensor(X)).cpu().double().numpy()

    def score(self, X: Any, y: Any = None) -> float:
        """The mean of :meth:`score_samples` (higher is better; for model selection)."""
        return float(self.score_samples(X).mean())

    def sample(self, n_samples: int = 1, random_state: int | None = None) -> np.ndarray:
        """``n_samples`` draws :math:`g(z)` with :math:`z` from ``sampler``, shape ``(n_samples, n_features)``."""
        check_is_fitted(self, "flow_")
        seed = self.seed if random_state is None else int(random_state)
        return self.flow_.sample(int(n_samples), sampler=self.sampler, seed=seed).cpu().numpy()
