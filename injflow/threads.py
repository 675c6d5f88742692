r"""One bound on every thread pool a run uses: torch's, and the BLAS/OpenMP pools of numpy, SciPy and scikit-learn.

``train.num_threads`` sets :func:`torch.set_num_threads`; the post-fit GMM (scikit-learn), the Fréchet distances
(SciPy/NumPy LAPACK) and the k-means initialisation (scikit-learn's OpenMP) run in other libraries' pools, which
start with one thread per core whatever torch was told. On a busy machine that oversubscription turned a 2 s GMM fit
into 78 s. :func:`limit_threads` bounds them all for the duration of a block with :mod:`threadpoolctl`.

threadpoolctl can only limit libraries that are loaded, so the block first imports the modules that bring the pools
injflow uses later (``scipy.linalg`` and scikit-learn's OpenMP helpers, where installed); a library loaded only
inside the block would otherwise keep one thread per core.

Example:
    >>> import torch
    >>> with limit_threads(1):
    ...     torch.get_num_threads()
    1
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["limit_threads", "POOL_MODULES"]

#: Imported before the limits are set, so that the thread pools they load exist then: SciPy's own OpenBLAS and
#: scikit-learn's OpenMP runtime (numpy's OpenBLAS and torch's OpenMP come with ``import torch``).
POOL_MODULES = ("numpy", "scipy.linalg", "sklearn.utils._openmp_helpers")


@contextmanager
def limit_threads(n: int | None) -> Iterator[None]:
    r"""Runs the block with at most ``n`` threads in torch and in every BLAS/OpenMP pool; restores them after.

    Arguments:
        n: The number of threads (``train.num_threads``); ``None`` or 0 leaves every pool as it is.
    """
    if not n:
        yield
        return
    import torch
    from threadpoolctl import threadpool_limits

    for name in POOL_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:  # pragma: no cover - an optional library that is not installed brings no pool
            pass
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        with threadpool_limits(limits=int(n)):
            yield
    finally:
        torch.set_num_threads(before)
