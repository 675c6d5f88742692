"""The container every loader returns, and the helpers around it: validation, batching, seeding.

Data sets are held in memory as tensors and batched by slicing, so a training step never pays a
per-item Python cost (unlike a `torch.utils.data.Dataset` with `__getitem__`).
"""

from __future__ import annotations

__all__ = [
    "DataSplits",
    "validate_data",
    "iterate_batches",
    "seeded_generator",
    "take_subset",
    "split_tail",
]

import dataclasses
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError

_ArrayT = TypeVar("_ArrayT", np.ndarray, Tensor)

#: Data values at or above this magnitude cannot be trained on in float32 (squared errors overflow).
MAX_ABS_VALUE = 1e15


@dataclass(frozen=True)
class DataSplits:
    r"""Train, validation and test tensors of one data set, with optional labels: the one data container.

    Every loader returns one, the engine trains on one (your own tensors too: :func:`injflow.api.train` wraps them in
    one), and it is checked once, when it is made: every split has shape `(N, *data_shape)`, a floating-point dtype
    and finite values of a magnitude float32 can train on; labels, when present, are integer tensors of shape `(N,)`
    (see :func:`validate_data`). `val` and `test` may be `None` (your own data without them).

    Arguments:
        name: The data set's registry name (or where the tensors came from).
        kind: `"toy"`, `"tabular"` or `"image"`.
        train: The training split.
        val: The validation split (or `None`).
        test: The test split (or `None`).
        data_shape: The shape of one sample, e.g. `(2,)` or `(1, 28, 28)` (default: the training split's).
        train_labels: Optional labels of the training split.
        val_labels: Optional labels of the validation split.
        test_labels: Optional labels of the test split.
        info: Provenance, preprocessing and scale notes (free-form).
        image_shape: ``(C, H, W)`` of one image, for image data (``data_shape`` for unflattened images; set it for
            images stored flat, e.g. ``(1, 8, 8)`` for 64 features).

    Example:
        >>> x = torch.zeros(10, 2)
        >>> splits = DataSplits("zeros", "toy", x[:6], x[6:8], x[8:], (2,))
        >>> splits.train.shape, splits.dim
        (torch.Size([6, 2]), 2)
    """

    name: str
    kind: str
    train: Tensor
    val: Tensor | None = None
    test: Tensor | None = None
    data_shape: tuple[int, ...] | None = None
    train_labels: Tensor | None = None
    val_labels: Tensor | None = None
    test_labels: Tensor | None = None
    info: dict = field(default_factory=dict)
    image_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("toy", "tabular", "image"):
            raise ValueError(f"kind must be 'toy', 'tabular' or 'image', got {self.kind!r}")
        if self.train is None:
            raise DataError(f"{self.name}.train is missing: there is nothing to train on")
        if self.data_shape is None and isinstance(self.train, Tensor):
            object.__setattr__(self, "data_shape", tuple(self.train.shape[1:]))
        object.__setattr__(self, "data_shape", tuple(int(s) for s in self.data_shape or ()))
        image_shape = self.image_shape
        if image_shape is None and self.kind == "image" and len(self.data_shape) == 3:
            image_shape = self.data_shape
        if image_shape is not None:
            image_shape = tuple(int(s) for s in image_shape)
            if self.kind != "image" or len(image_shape) != 3 or int(np.prod(image_shape)) != int(np.prod(self.data_shape)):
                raise ValueError(f"image_shape {image_shape} does not fit {self.kind} data of shape {self.data_shape}")
        object.__setattr__(self, "image_shape", image_shape)
        for split in ("train", "val", "test"):
            x = getattr(self, split)
            labels = getattr(self, f"{split}_labels")
            if x is None:
                if labels is not None:
                    raise DataError(f"{self.name}.{split}_labels are given but {self.name}.{split} is not")
                continue
            validate_data(x, name=f"{self.name}.{split}", data_shape=self.data_shape)
            if labels is not None:
                if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.shape[0] != x.shape[0]:
                    raise DataError(f"{self.name}.{split}_labels has shape {tuple(getattr(labels, 'shape', ()))}, "
                                    f"expected ({x.shape[0]},) to match {split}")
                if labels.is_floating_point() or labels.dtype == torch.bool:
                    raise DataError(f"{self.name}.{split}_labels must be integers, got {labels.dtype}")

    @property
    def dim(self) -> int:
        """The flattened data dimension D."""
        return int(np.prod(self.data_shape))

    @property
    def has_labels(self) -> bool:
        """Whether every split that is there carries labels."""
        return all(getattr(self, f"{s}_labels") is not None for s in ("train", "val", "test")
                   if getattr(self, s) is not None)

    @property
    def num_classes(self) -> int | None:
        """The number of classes of labelled data (``info['num_classes']``, else 1 + the largest label)."""
        if not self.has_labels:
            return None
        if "num_classes" in self.info:
            return int(self.info["num_classes"])
        return 1 + max(int(labels.max()) for s in ("train", "val", "test")
                       if (labels := getattr(self, f"{s}_labels")) is not None and labels.numel())

    def split(self, name: str) -> tuple[Tensor | None, Tensor | None]:
        """``(x, labels)`` of ``train``, ``val`` or ``test``."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test, got {name!r}")
        return getattr(self, name), getattr(self, f"{name}_labels")

    def reference(self) -> tuple[Tensor, Tensor | None]:
        """The split pictures and metrics show by default: test, else validation, else training."""
        for name in ("test", "val", "train"):
            x, c = self.split(name)
            if x is not None:
                return x, c
        raise AssertionError("DataSplits always has a training split")

    def for_model(self, *, dtype: torch.dtype = torch.float32, conditional: bool = False) -> DataSplits:
        """The splits as a model trains on them: in its ``dtype``, labels kept only for a ``conditional`` model.

        Float data in another dtype are converted with a warning; a conditional model needs labels in
        ``0..num_classes - 1`` on every split (:class:`~injflow.errors.DataError` otherwise); values far from
        standardised data get a warning naming the columns.
        """
        changes: dict[str, Any] = {}
        for name in ("train", "val", "test"):
            x, c = self.split(name)
            if x is None:
                continue
            where = f"data.{name}"
            if x.dtype != dtype:
                warnings.warn(f"{where} is {x.dtype} but the model's weights are {dtype}: converting the data to {dtype} "
                              f"(convert the model, e.g. flow.double(), to train in {x.dtype})", UserWarning, stacklevel=3)
                changes[name] = x.to(dtype)
            # Values far from standardised are warned about once, naming the columns, where the scaling is decided
            # (injflow.scaling.fit_data_scaler: own data are scaled by default).
            if conditional:
                if c is None:
                    raise DataError(f"model.conditional is true but {where} has no labels: use a labelled data set "
                                    f"(e.g. conditional_mnist) or set model.conditional=false")
                k = self.num_classes
                if c.numel() and k is not None and (int(c.min()) < 0 or int(c.max()) >= k):
                    raise DataError(f"{where} labels must lie in 0..{k - 1}, got {int(c.min())}..{int(c.max())}")
            elif c is not None:
                changes[f"{name}_labels"] = None
        if conditional:
            changes["info"] = {**self.info, "num_classes": self.num_classes}
        return dataclasses.replace(self, **changes) if changes else self


def validate_data(x: Tensor, *, name: str = "data", data_shape: tuple[int, ...] | None = None) -> None:
    r"""Checks that `x` is a non-empty float tensor of shape `(N, *data_shape)` with finite entries.

    Arguments:
        x: The data, one sample per row.
        name: How to call `x` in error messages.
        data_shape: If given, the expected shape of one sample.

    Raises:
        DataError: (a ``ValueError``) naming the shape if it is wrong, or the first offending row indices if `x`
            holds NaN or inf.

    Example:
        >>> validate_data(torch.randn(5, 3))
        >>> validate_data(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))
        Traceback (most recent call last):
          ...
        injflow.errors.DataError: data has non-finite values (NaN or inf) in 1 of 2 rows; first offending rows: [0] ...
    """
    if not isinstance(x, Tensor):
        raise DataError(f"{name} must be a torch.Tensor of shape (N, *data_shape), got {type(x).__name__}")
    if x.ndim < 2 or x.ndim > 4:
        raise DataError(
            f"{name} has shape {tuple(x.shape)} ({x.ndim}-D); expected (N, D) for vectors or "
            f"(N, C, H, W) for images (a single feature needs shape (N, 1))"
        )
    if data_shape is not None and tuple(x.shape[1:]) != tuple(data_shape):
        raise DataError(f"{name} has shape {tuple(x.shape)}, expected (N, {', '.join(map(str, data_shape))})")
    if x.shape[0] == 0:
        raise DataError(f"{name} has shape {tuple(x.shape)}: it holds no samples")
    if not x.is_floating_point():
        raise DataError(f"{name} has dtype {x.dtype}; expected a floating-point tensor (convert it first: x.float())")
    flat = x.reshape(x.shape[0], -1)
    finite = torch.isfinite(flat).all(dim=1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten()
        cols = torch.nonzero(~torch.isfinite(flat).all(0)).flatten()
        raise DataError(
            f"{name} has non-finite values (NaN or inf) in {bad.numel()} of {x.shape[0]} rows; "
            f"first offending rows: {bad[:5].tolist()} (columns {cols[:5].tolist()}); drop or impute them first"
        )
    peak = flat.abs().amax(0)
    if bool((peak >= MAX_ABS_VALUE).any()):
        cols = torch.nonzero(peak >= MAX_ABS_VALUE).flatten()
        raise DataError(
            f"{name} has values up to {float(peak.max()):.3g} (columns {cols[:5].tolist()}): too large to train on in "
            f"float32; standardise the data first ((x - mean) / std per column; images scaled to [0, 1])"
        )


def iterate_batches(
    data: Tensor,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    labels: Tensor | None = None,
) -> Iterator[Tensor | tuple[Tensor, Tensor]]:
    r"""Yields mini-batches of an in-memory tensor by slicing.

    Without shuffling the batches are views of `data`; with shuffling one permutation is drawn per
    call and each batch is a single fancy-indexing operation.

    Arguments:
        data: Tensor of shape `(N, ...)`.
        batch_size: The number of samples per batch.
        shuffle: Whether to visit the samples in a random order.
        generator: The random generator used for shuffling (for reproducible epochs).
        drop_last: Whether to drop the last batch if it is smaller than `batch_size`.
        labels: Optional tensor of shape `(N,)` batched alongside `data`.

    Returns:
        An iterator over batches `x`, or `(x, y)` pairs when `labels` is given.

    Example:
        >>> x = torch.arange(10.0).unsqueeze(1)
        >>> [b.shape[0] for b in iterate_batches(x, 4, shuffle=False)]
        [4, 4, 2]
        >>> g = torch.Generator().manual_seed(0)
        >>> len(list(iterate_batches(x, 4, shuffle=True, generator=g, drop_last=True)))
        2
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    n = data.shape[0]
    if labels is not None and labels.shape[0] != n:
        raise ValueError(f"labels have {labels.shape[0]} rows but data has {n}")
    stop = n - n % batch_size if drop_last else n
    order = None
    if shuffle:
        # Draw on the generator's device (CPU by default), then index on the data's device.
        device = generator.device if generator is not None else torch.device("cpu")
        order = torch.randperm(n, generator=generator, device=device).to(data.device)
    for start in range(0, stop, batch_size):
        if order is None:
            idx = slice(start, start + batch_size)
        else:
            idx = order[start : start + batch_size]
        if labels is None:
            yield data[idx]
        else:
            yield data[idx], labels[idx]


def seeded_generator(seed: int, *stream: int) -> torch.Generator:
    r"""Returns a CPU generator seeded from `(seed, *stream)`.

    Independent streams (e.g. one per split) keep a split unchanged when the size of another
    changes: the training set of seed 0 is the same whatever `n_test` is.

    Arguments:
        seed: The user's seed.
        stream: Integers naming the stream.

    Example:
        >>> a = torch.rand(2, generator=seeded_generator(0, 1))
        >>> b = torch.rand(2, generator=seeded_generator(0, 1))
        >>> bool((a == b).all())
        True
    """
    state = np.random.SeedSequence([int(seed), *map(int, stream)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


def take_subset(
    x: Tensor, n: int | None, generator: torch.Generator, labels: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    r"""Keeps `n` seeded random rows of `x` (in their original order), or all rows if `n` is None.

    Arguments:
        x: Tensor of shape `(N, ...)`.
        n: How many rows to keep, at most `N`.
        generator: The random generator choosing the rows.
        labels: Optional labels subset alongside.

    Returns:
        The pair `(x_subset, labels_subset)`.

    Example:
        >>> x, _ = take_subset(torch.arange(10.0).unsqueeze(1), 3, seeded_generator(0))
        >>> x.shape
        torch.Size([3, 1])
    """
    if n is None or n == x.shape[0]:
        return x, labels
    if n > x.shape[0]:
        raise ValueError(f"asked for {n} samples but only {x.shape[0]} are available")
    idx = torch.randperm(x.shape[0], generator=generator)[:n].sort().values
    return x[idx], None if labels is None else labels[idx]


def split_tail(x: _ArrayT, n_tail: int) -> tuple[_ArrayT, _ArrayT]:
    r"""Splits off the last `n_tail` rows: returns `(head, tail)`, which never overlap.

    Used for validation sets taken from the *end* of a training set (FIF App. E.4: "reserving the
    last 10k images of the training sets as validation sets").

    Example:
        >>> head, tail = split_tail(np.arange(5), 2)
        >>> head.tolist(), tail.tolist()
        ([0, 1, 2], [3, 4])
    """
    n = x.shape[0]
    if not 0 < n_tail < n:
        raise ValueError(f"cannot split {n_tail} rows off the end of {n} rows")
    return x[: n - n_tail], x[n - n_tail :]
