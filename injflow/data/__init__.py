r"""Data sets as in-memory tensors with seeded train/validation/test splits.

One entry point, :func:`load_dataset`, returns a :class:`DataSplits` for every data set: toy
manifolds (sampled on the fly), tabular data (MAF preprocessing; scikit-learn stand-ins offline)
and images in [0, 1]. See `docs/data.md` for sources, splits and where to put files by hand.

Example:
    >>> from injflow.data import load_dataset, iterate_batches
    >>> data = load_dataset("sinusoid", n_train=256, n_val=64, n_test=64)
    >>> next(iter(iterate_batches(data.train, 32, shuffle=False))).shape
    torch.Size([32, 2])
"""

from .download import MissingDataError, data_root
from .registry import DATASETS, available_datasets, dataset_options, load_data_section, load_dataset
from .splits import DataSplits, iterate_batches, validate_data
from .toy import principal_angles

# Importing the loader modules registers their data sets; they read no file at import.
from . import arrays, folder, images, memory, tabular, toy  # noqa: E402,F401  isort: skip

__all__ = [
    "DATASETS",
    "DataSplits",
    "MissingDataError",
    "available_datasets",
    "data_root",
    "dataset_options",
    "iterate_batches",
    "load_data_section",
    "load_dataset",
    "principal_angles",
    "validate_data",
]
