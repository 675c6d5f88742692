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

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

_ArrayT = TypeVar("_ArrayT", np.ndarray, Tensor)


@dataclass(frozen=True)
class DataSplits:
    r"""Train, validation and test tensors of one data set, with optional labels.

    Every split has shape `(N, *data_shape)` and dtype `float32`; labels, when present, are `int64`
    tensors of shape `(N,)`. The constructor validates all of this (see :func:`validate_data`).

    Arguments:
        name: The data set's registry name.
        kind: `"toy"`, `"tabular"` or `"image"`.
        train: The training split.
        val: The validation split.
        test: The test split.
        data_shape: The shape of one sample, e.g. `(2,)` or `(1, 28, 28)`.
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
    val: Tensor
    test: Tensor
    data_shape: tuple[int, ...]
    train_labels: Tensor | None = None
    val_labels: Tensor | None = None
    test_labels: Tensor | None = None
    info: dict = field(default_factory=dict)
    image_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("toy", "tabular", "image"):
            raise ValueError(f"kind must be 'toy', 'tabular' or 'image', got {self.kind!r}")
        object.__setattr__(self, "data_shape", tuple(int(s) for s in self.data_shape))
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
            validate_data(x, name=f"{self.name}.{split}", data_shape=self.data_shape)
            labels = getattr(self, f"{split}_labels")
            if labels is not None:
                if labels.ndim != 1 or labels.shape[0] != x.shape[0]:
                    raise ValueError(
                        f"{self.name}.{split}_labels has shape {tuple(labels.shape)}, "
                        f"expected ({x.shape[0]},) to match {split}"
                    )

    @property
    def dim(self) -> int:
        """The flattened data dimension D."""
        return int(np.prod(self.data_shape))

    @property
    def has_labels(self) -> bool:
        """Whether all three splits carry labels."""
        return all(getattr(self, f"{s}_labels") is not None for s in ("train", "val", "test"))

    @property
    def num_classes(self) -> int | None:
        """The number of classes of labelled data (``info['num_classes']``, else 1 + the largest label)."""
        if not self.has_labels:
            return None
        if "num_classes" in self.info:
            return int(self.info["num_classes"])
        return 1 + max(int(getattr(self, f"{s}_labels").max()) for s in ("train", "val", "test"))


def validate_data(x: Tensor, *, name: str = "data", data_shape: tuple[int, ...] | None = None) -> None:
    r"""Checks that `x` is a non-empty float tensor of shape `(N, *data_shape)` with finite entries.

    Arguments:
        x: The data, one sample per row.
        name: How to call `x` in error messages.
        data_shape: If given, the expected shape of one sample.

    Raises:
        ValueError: naming the shape if it is wrong, or the first offending row indices if `x`
            holds NaN or inf.

    Example:
        >>> validate_data(torch.randn(5, 3))
        >>> validate_data(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))
        Traceback (most recent call last):
          ...
        ValueError: data has non-finite values (NaN or inf) in 1 of 2 rows; first offending rows: [0]
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 2 or x.ndim > 4:
        raise ValueError(
            f"{name} has shape {tuple(x.shape)} ({x.ndim}-D); expected (N, D) for vectors or "
            f"(N, C, H, W) for images (a single feature needs shape (N, 1))"
        )
    if data_shape is not None and tuple(x.shape[1:]) != tuple(data_shape):
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected (N, {', '.join(map(str, data_shape))})")
    if x.shape[0] == 0:
        raise ValueError(f"{name} has shape {tuple(x.shape)}: it holds no samples")
    if not x.is_floating_point():
        raise ValueError(f"{name} has dtype {x.dtype}; expected a floating-point tensor")
    finite = torch.isfinite(x).reshape(x.shape[0], -1).all(dim=1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten()
        raise ValueError(
            f"{name} has non-finite values (NaN or inf) in {bad.numel()} of {x.shape[0]} rows; "
            f"first offending rows: {bad[:5].tolist()}"
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
