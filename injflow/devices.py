r"""Numbers that must not depend on the device's fast paths.

On NVIDIA GPUs since Ampere, cuDNN convolutions run in TF32 by default (10-bit mantissas: relative errors of about
1e-3 instead of float32's 1e-7), and so do matrix products when ``torch.set_float32_matmul_precision("high")`` is set.
That is fine for training, but not for numbers compared across devices or runs: exact NLLs from full Jacobians and
their log-determinants, and FID features (a cached reference computed with TF32 would not match samples scored
without it). :func:`full_float32` turns TF32 off inside a block and restores the previous settings; on a machine
without CUDA it does nothing.

Example:
    >>> import torch
    >>> with full_float32():
    ...     y = torch.ones(2, 2) @ torch.ones(2, 2)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["full_float32"]


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """TF32 off for cuDNN convolutions and cuBLAS matrix products inside the block (settings restored after)."""
    if not torch.cuda.is_available():
        yield
        return
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    if hasattr(conv, "fp32_precision"):  # torch >= 2.9: the per-backend precision settings
        saved = (conv.fp32_precision, matmul.fp32_precision)
        conv.fp32_precision, matmul.fp32_precision = "ieee", "ieee"
        try:
            yield
        finally:
            conv.fp32_precision, matmul.fp32_precision = saved
        return
    saved_flags = (torch.backends.cudnn.allow_tf32, matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32, matmul.allow_tf32 = False, False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, matmul.allow_tf32 = saved_flags

