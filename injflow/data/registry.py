"""The single entry point: `load_dataset(name, ...)` over a registry of loader functions.

A loader is a function `loader(*, seed, root, download, **options) -> DataSplits`; its keyword
parameters other than `seed`, `root` and `download` are exactly the options it accepts, so an
unknown option is caught here, before any work is done.
"""

from __future__ import annotations

__all__ = ["DATASETS", "register", "load_dataset", "load_data_section", "available_datasets", "dataset_options", "check_count",
           "check_noise"]

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import OptionError
from ..registry import Registry
from .splits import DataSplits


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_")


#: Every data set by config name (case-insensitive; ``-`` and ``_`` are the same).
DATASETS: Registry[Callable[..., DataSplits]] = Registry(
    "data set", reserved=("seed", "root", "download"), normalise=_normalise
)


def register(name: str, **preset: object) -> Callable:
    r"""Registers a loader under `name`, optionally with preset option values.

    A preset makes a named variant of another loader, e.g. `conditional_mnist` is `mnist` with
    `conditional=True`.

    Arguments:
        name: The registry name (lower case).
        preset: Option values fixed for this name.

    Returns:
        A decorator that returns the loader unchanged.
    """
    return DATASETS.register(name, **preset)


def available_datasets() -> list[str]:
    r"""Returns the names `load_dataset` accepts, sorted.

    Example:
        >>> "sinusoid" in available_datasets()
        True
    """
    return DATASETS.names()


def dataset_options(name: str) -> dict[str, object]:
    r"""Returns the options a data set accepts with their default values.

    Example:
        >>> sorted(dataset_options("sinusoid"))
        ['n_test', 'n_train', 'n_val', 'noise']
    """
    return DATASETS.options(name)


def load_dataset(
    name: str,
    *,
    seed: int = 0,
    root: str | Path | None = None,
    download: bool = False,
    **options: object,
) -> DataSplits:
    r"""Loads a data set as seeded train/validation/test tensors.

    Arguments:
        name: One of :func:`available_datasets` (case-insensitive; `-` and `_` are the same).
        seed: Seeds sampling (toy data) and subsetting/shuffling (real data). The same seed gives
            the same splits.
        root: Folder holding (or receiving) downloaded files. Default: `$INJFLOW_DATA`, else
            `~/.cache/injflow/data`.
        download: Whether a missing file may be downloaded. Without it, a missing file raises an
            error saying where to put which file. Never prompts.
        options: Data set specific options, e.g. `n_train`, `noise`, `flatten`; see
            :func:`dataset_options`. An unknown option raises a `ValueError` naming it.

    Returns:
        A :class:`DataSplits`.

    Example:
        >>> data = load_dataset("sinusoid", n_train=100, n_val=10, n_test=10, noise=0.1)
        >>> data.train.shape, data.kind
        (torch.Size([100, 2]), 'toy')
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return DATASETS.build(name, seed=seed, root=root, download=bool(download), **options)


def load_data_section(section: Any) -> DataSplits:
    r"""The data set a config's ``data`` section names (``name``, ``seed``, ``root``, ``download``, ``options``).

    An option error carries its dotted config key (``data.options.n_train``) as :attr:`ConfigError.key`.

    Example:
        >>> from injflow.config import DataConfig
        >>> load_data_section(DataConfig(options={"n_train": 8})).train.shape
        torch.Size([8, 2])
    """
    try:
        return load_dataset(section.name, seed=section.seed, root=section.root, download=section.download,
                            **section.options)
    except OptionError as e:
        raise e.under("data.options") from None


#: The most samples a count option may ask for (generated data live in memory: 10^8 points of 3 floats is 1.2 GB).
MAX_COUNT = 10**8


def check_count(option: str, value: object, *, allow_none: bool = False, minimum: int = 1) -> int | None:
    r"""Validates an integer option such as `n_train` (at most :data:`MAX_COUNT`); returns it.

    Example:
        >>> check_count("n_train", 5)
        5
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_COUNT:
        raise OptionError(f"must be an integer between {minimum} and {MAX_COUNT}, got {value!r}", key=option)
    return value


def check_noise(option: str, value: object) -> float:
    r"""Validates a non-negative finite float option such as `noise`; returns it as float.

    Example:
        >>> check_noise("noise", 0.1)
        0.1
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise OptionError(f"must be a finite number >= 0, got {value!r}", key=option)
    return float(value)
