"""One bound on every thread pool a run uses: torch's, and the BLAS/OpenMP pools of numpy, scipy and scikit-learn.

``train.num_threads`` used to bound torch only; scikit-learn's GMM (the post-fit sampler) then ran on every core's
worth of BLAS threads beside torch's and oversubscribed a shared machine (a 2 s fit took 78 s). :func:`thread_limits`
bounds both for as long as a run (or an evaluation) lasts, with threadpoolctl (a scikit-learn dependency).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["thread_limits"]


@contextmanager
def thread_limits(n: int | None) -> Iterator[None]:
    """Within the block, torch and the BLAS/OpenMP libraries use at most ``n`` threads (``None``: no change).

    Example:
        >>> with thread_limits(1):
        ...     torch.get_num_threads()
        1
    """
    if n is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        torch.set_num_threads(previous)
