r"""Tensors handed to :func:`injflow.api.train`: ``data.name=tensors`` in the run's config says so, truthfully.

A run trained on tensors in memory has no file to reload them from. Its ``config.yaml`` records what they were
(:func:`describe_tensors`: kind, sample shape, split sizes, labels) instead of the default config's data set, and
loading it again (``injflow evaluate`` of such a run, which needs the data) is refused in one line that says how to
evaluate the model in Python instead (:func:`injflow.metrics.evaluate_flow`); a model of your own modules cannot be
rebuilt from a file either (``model.pt`` holds weights, never code), so ``injflow sample`` refuses it in one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DataError
from .registry import register
from .splits import DataSplits

__all__ = ["describe_tensors", "load_tensors"]


def describe_tensors(data: DataSplits) -> dict[str, Any]:
    """The ``data`` section of a config for tensors given in memory: ``{name: tensors, options: {...}}``.

    Example:
        >>> import torch
        >>> x = torch.zeros(8, 3)
        >>> describe_tensors(DataSplits("tensors", "tabular", x, x[:2], x[:2], (3,)))["options"]
        {'kind': 'tabular', 'data_shape': [3], 'image_shape': None, 'n_train': 8, 'n_val': 2, 'n_test': 2, 'num_classes': None}
    """
    return {"name": "tensors", "options": {
        "kind": data.kind,
        "data_shape": list(data.data_shape),
        "image_shape": None if data.image_shape is None else list(data.image_shape),
        "n_train": int(data.train.shape[0]),
        "n_val": 0 if data.val is None else int(data.val.shape[0]),
        "n_test": 0 if data.test is None else int(data.test.shape[0]),
        "num_classes": data.num_classes,
    }}


@register("tensors")
def load_tensors(
    *,
    seed: int,
    root: str | Path | None,
    download: bool,
    kind: str | None = None,
    data_shape: list[int] | None = None,
    image_shape: list[int] | None = None,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    num_classes: int | None = None,
) -> DataSplits:
    """Refuses: the tensors were given in memory and are not stored with the run (the options only describe them)."""
    shape = "x".join(str(s) for s in data_shape or [])
    raise DataError(f"this run was trained on tensors given to injflow.api.train ({n_train} rows of {shape or '?'} "
                    f"{kind or ''} values), which are not stored with it: evaluate and sample its model in Python, "
                    f"e.g. injflow.metrics.evaluate_flow(model, x_test, kind={kind or 'tabular'!r}) and model.sample(n)")
