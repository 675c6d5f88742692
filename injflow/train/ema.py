r"""The exponential moving average of the weights, updated without reading the device.

``torch.optim.swa_utils.AveragedModel.update_parameters`` reads its counter ``n_averaged`` on the host twice per call
(``n_averaged == 0`` and ``n_averaged > 0``): two synchronisations per training step on a GPU. :class:`EMAUpdater`
makes the same update — a copy at the first call, then
:math:`\bar\theta \leftarrow \bar\theta + (1 - \text{decay})(\theta - \bar\theta)` for floating-point tensors (one
``_foreach_lerp_`` per device and dtype) and torch's rounding formula for integer buffers — and keeps the counter's
value on the host after reading it once, so checkpoints and results are those of ``AveragedModel``.

Example:
    >>> from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    >>> net = torch.nn.Linear(3, 2)
    >>> ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    >>> update = EMAUpdater(ema, 0.9)
    >>> update(net); int(ema.n_averaged)
    1
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor, nn

__all__ = ["EMAUpdater"]


class EMAUpdater:
    """Updates an ``AveragedModel`` (EMA, ``use_buffers=True``) from the live nets, with no host read after the first.

    Arguments:
        ema: The averaged copy (its ``module`` has the live nets' structure).
        decay: The EMA decay.
    """

    def __init__(self, ema: nn.Module, decay: float) -> None:
        self.ema, self.decay = ema, float(decay)
        self._count: int | None = None  # n_averaged, read once (it comes from a checkpoint on resume)

    def reset(self) -> None:
        """Forgets the counter (read again at the next update, e.g. after a checkpoint was loaded)."""
        self._count = None

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> None:
        if self._count is None:
            self._count = int(self.ema.n_averaged)
        averaged = [*self.ema.module.parameters(), *self.ema.module.buffers()]
        live = [t.detach() for t in (*model.parameters(), *model.buffers())]
        if self._count == 0:
            for a, p in zip(averaged, live):
                a.copy_(p.to(a.device))
        else:
            groups: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], list[Tensor]]] = defaultdict(lambda: ([], []))
            for a, p in zip(averaged, live):
                group = groups[(a.device, a.dtype)]
                group[0].append(a)
                group[1].append(p.to(a.device))
            for (_, dtype), (mine, theirs) in groups.items():
                if dtype.is_floating_point or dtype.is_complex:
                    torch._foreach_lerp_(mine, theirs, 1.0 - self.decay)
                else:  # integer buffers (BatchNorm's num_batches_tracked): torch's formula, rounded by copy_
                    for a, p in zip(mine, theirs):
                        a.copy_(a * self.decay + p * (1.0 - self.decay))
        self.ema.n_averaged.add_(1)
        self._count += 1
