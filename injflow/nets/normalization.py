r"""BatchNorm written from elementary ops, so every derivative order is correct.

Why this exists: in PyTorch 2.13 the fused ``torch.nn.BatchNorm*d`` in *training* mode returns
wrong gradients when one differentiates *through* a forward-mode tangent (backward-of-JVP) or
through the double-VJP trick (third-order reverse mode). Plain reverse mode with
``create_graph=True`` and evaluation mode are correct. The FIF paths that hit the bug are the
forward and backward AD modes, the data-space trace, the decoder-side gradient (FIF eq. 9), the
rectangular-flow decoder gradient and Kumar et al.'s JVP Frobenius term. See
``tests/test_normalization.py`` for a check against finite differences and upstream
pytorch/pytorch#196699.

:class:`BatchNorm1d` / :class:`BatchNorm2d` are drop-in subclasses of the torch modules (same
parameters, buffers and ``state_dict`` keys, so checkpoints interchange): in training mode they
normalise with ``mean``/``var`` computed by ordinary tensor ops, in evaluation mode they call the
fused kernel, which is correct there. :func:`use_composite_batchnorm` swaps them into any module.

Example:
    >>> import torch
    >>> from injflow.nets.normalization import use_composite_batchnorm
    >>> net = use_composite_batchnorm(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)))
    >>> type(net[1]).__module__
    'injflow.nets.normalization'
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["BatchNorm1d", "BatchNorm2d", "use_composite_batchnorm"]


class _CompositeBatchNorm(nn.modules.batchnorm._BatchNorm):
    r"""Training-mode batch statistics from elementary ops; evaluation mode uses the fused kernel.

    One reduction pass for both statistics (``var_mean``) and the normalisation
    :math:`(x - \mu)\cdot\gamma/\sqrt{\sigma^2+\epsilon} + \beta` with the per-channel scale folded first (C
    numbers). Of the formulations measured, this dispatches the fewest operators in a whole FIF step, where its JVP and
    double VJP are differentiated too (docs/benchmarks.md, "Operators per step"). No host read (the cumulative-average
    factor of ``momentum=None`` stays a tensor), so ``torch.compile`` traces it whole and fuses it.
    """

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        use_batch_stats = self.training or self.running_mean is None
        if not use_batch_stats:
            return super().forward(input)

        dims = [0, *range(2, input.dim())]
        var, mean = torch.var_mean(input, dim=dims, unbiased=False)

        if self.training and self.track_running_stats and self.running_mean is not None:
            # Same running-statistics rule as the fused kernel: unbiased variance, momentum or
            # cumulative average when momentum is None. Under no_grad and on detached stats so the
            # buffers never enter an autograd graph (and forward-mode tangents never reach them).
            with torch.no_grad():
                if self.num_batches_tracked is not None:
                    self.num_batches_tracked.add_(1)
                if self.momentum is None:
                    factor = self.num_batches_tracked.to(self.running_mean.dtype).reciprocal()
                else:
                    factor = self.momentum
                n = input.numel() / input.shape[1]
                unbiased = var.detach() * (n / max(n - 1.0, 1.0))
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)

        shape = [1, -1] + [1] * (input.dim() - 2)
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight
        out = (input - mean.view(shape)) * scale.view(shape)
        return out + self.bias.view(shape) if self.affine else out


class BatchNorm1d(_CompositeBatchNorm, nn.BatchNorm1d):
    r"""Drop-in :class:`torch.nn.BatchNorm1d` with correct higher-order derivatives in training mode.

    Arguments:
        num_features: Number of features C of an input (B, C) or (B, C, L).
        **kwargs: As for :class:`torch.nn.BatchNorm1d` (``eps``, ``momentum``, ``affine``, ...).
    """


class BatchNorm2d(_CompositeBatchNorm, nn.BatchNorm2d):
    r"""Drop-in :class:`torch.nn.BatchNorm2d` with correct higher-order derivatives in training mode.

    Arguments:
        num_features: Number of channels C of an input (B, C, H, W).
        **kwargs: As for :class:`torch.nn.BatchNorm2d`.
    """


class BatchNorm3d(_CompositeBatchNorm, nn.BatchNorm3d):
    r"""Drop-in :class:`torch.nn.BatchNorm3d` with correct higher-order derivatives in training mode."""


_REPLACEMENTS = {nn.BatchNorm1d: BatchNorm1d, nn.BatchNorm2d: BatchNorm2d, nn.BatchNorm3d: BatchNorm3d}


def use_composite_batchnorm(module: nn.Module) -> nn.Module:
    r"""Replaces every fused ``torch.nn.BatchNorm{1,2,3}d`` in ``module`` by its composite twin, in place.

    Parameters, buffers and ``state_dict`` keys are kept, so this can be applied before or after
    loading a checkpoint. Subclasses of the torch modules other than the exact classes (and
    ``SyncBatchNorm``) are left alone.

    Arguments:
        module: Any module (an encoder, a decoder, a model holding both).

    Returns:
        The same module (or, when ``module`` itself is a fused BatchNorm, its replacement).
    """
    replacement = _REPLACEMENTS.get(type(module))
    if replacement is not None:
        # Re-class in place: identical attributes, only forward() changes.
        module.__class__ = replacement
        return module
    for child in module.children():
        use_composite_batchnorm(child)
    return module
