r"""``train.compile``: the FIF gradient as one ``torch.compile``-d function of the parameters.

``torch.compile`` cannot run the eager estimators (forward-mode AD through compiled modules is not supported, and
compiled backward passes are not twice differentiable), so the compiled path trains FIF's default estimator in its
``torch.func`` form, :func:`injflow.estimators.fif_loss_functional` (the estimator lives with the others; this module
only binds it to the model's parameters and compiles ``grad`` of it). Nets with running statistics (BatchNorm) are
refused: the transforms cannot update buffers in place. The engine then hands the gradient to the optimiser through a
scalar whose gradient it is exactly (:func:`gradient_carrier`), so clipping, schedulers and DDP work unchanged.
Noise is drawn by :func:`injflow.estimators.sample_noise` from the same stream as the eager estimator, and the
tests check that the compiled and eager gradients agree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError

__all__ = ["CompiledFIF", "check_compilable", "gradient_carrier"]


def check_compilable(method: Any, flow: Any) -> None:
    """Raises ConfigError unless the method is FIF with the estimator the compiled path implements."""
    from ..methods import FIF

    if not isinstance(method, FIF):
        raise ConfigError(f"train.compile: compiled training implements FIF's estimator; method {method.name!r} trains "
                          f"eagerly (set train.compile=false)")
    if getattr(method, "exact", False):  # fff (FIF at d = D) trains compiled with its surrogate, not the exact log-det
        raise ConfigError("train.compile: the compiled path is the surrogate estimator; method.exact=true trains eagerly")
    wanted = {"mode": "mixed", "trace_space": "latent", "grad_to": "encoder", "jacobian_at": "x"}
    other = {k: getattr(method, k) for k, v in wanted.items() if getattr(method, k) != v}
    if other:
        raise ConfigError(f"train.compile: the compiled path is FIF's default estimator ({wanted}); this run has {other}")
    if flow.conditional:
        raise ConfigError("train.compile: conditional models train eagerly (set train.compile=false)")
    stats = [n for n, b in flow.named_buffers() if n.startswith(("encoder.", "decoder.")) and "running" in n]
    if stats:
        raise ConfigError(f"train.compile: nets with BatchNorm train eagerly: torch.func transforms cannot update its "
                          f"running statistics ({stats[0]}); set train.compile=false")


def gradient_carrier(params: list[nn.Parameter], grads: list[Tensor]) -> Tensor:
    r""":math:`\sum_i \langle p_i, \mathrm{sg}(g_i)\rangle`: a scalar whose gradient with respect to the parameters is
    exactly ``grads`` — how a gradient computed elsewhere enters Lightning's ``backward``/``step``."""
    total = torch.zeros((), device=params[0].device, dtype=params[0].dtype)
    for p, g in zip(params, grads):
        total = total + (p * g.detach()).sum()
    return total


class CompiledFIF:
    """FIF's loss terms and parameter gradients from one compiled function.

    Arguments:
        flow: The model (its encoder, decoder and latent).
        method: A :class:`~injflow.methods.FIF` with the default estimator (:func:`check_compilable`).
        backend: ``torch.compile``'s backend (``"inductor"``; ``"aot_eager"`` traces without generating code).

    On a CUDA device with Inductor the function is compiled with ``mode="reduce-overhead"``: the whole gradient
    computation is captured once as a CUDA graph and replayed every step, one launch instead of hundreds (small nets
    are launch-bound). That needs a step without host reads, which this one is (no data-dependent control flow; β
    enters as a device scalar filled in place, not copied from the host). The parameters and buffers are passed as
    themselves, so the graph reads them where they live; the batch and the noise are copied into its inputs.
    """

    def __init__(self, flow: Any, method: Any, backend: str = "inductor") -> None:
        from torch.func import functional_call, grad_and_value

        from ..estimators import fif_loss_functional, prepare_forward_ad

        prepare_forward_ad()  # torch.func.jvp loads the same decompositions as forward_ad (their notice silenced)
        check_compilable(method, flow)
        self.flow, self.method = flow, method
        encoder, decoder, latent = flow.encoder, flow.decoder, flow.latent
        self.names = [n for n, p in flow.named_parameters() if p.requires_grad]
        self.params = [p for _, p in flow.named_parameters() if p.requires_grad]

        def loss(params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, eps: Tensor,
                 beta: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
            state = {**params, **buffers}
            pe = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
            pd = {k.removeprefix("decoder."): v for k, v in state.items() if k.startswith("decoder.")}
            terms = fif_loss_functional(x, lambda u: functional_call(encoder, pe, (u,)),
                                        lambda w: functional_call(decoder, pd, (w,)), eps, beta=beta,
                                        latent_log_prob=latent.log_prob)
            return terms["loss"].mean(), {k: v.detach() for k, v in terms.items()}

        self.backend = backend
        self._transform = grad_and_value(loss, has_aux=True)
        self._fn: Callable[..., Any] | None = None  # compiled at the first call, for the device of the batch
        self.cuda_graphs = False

    def _compile(self, device: torch.device) -> Callable[..., Any]:
        self.cuda_graphs = device.type == "cuda" and self.backend == "inductor"
        mode = "reduce-overhead" if self.cuda_graphs else None
        return torch.compile(self._transform, backend=self.backend, mode=mode, dynamic=False)

    def __call__(self, x: Tensor, clock: Any) -> tuple[dict[str, Tensor], list[Tensor]]:
        """The loss terms (per sample) and the gradients of the mean loss for one batch."""
        from ..estimators import sample_noise

        m = self.method
        with torch.no_grad():
            d = self.flow.latent_dim
        eps = sample_noise(x.shape[0], (d,), m.n_hutchinson, m.noise, dtype=x.dtype, device=x.device)
        # A fill on the device: torch.tensor(value, device=...) would copy from the host (a synchronisation).
        beta = torch.full((), m.weight("beta", clock), dtype=x.dtype, device=x.device)
        params = dict(zip(self.names, self.params))
        buffers = dict(self.flow.named_buffers())
        if self._fn is None:
            self._fn = self._compile(x.device)
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the outputs of the previous step may be overwritten
        # torch.func.grad differentiates inside whatever the outer autograd state; outside, nothing is recorded.
        with torch.no_grad():
            grads, (_, terms) = self._fn(params, buffers, x, eps, beta)
        return terms, [grads[n] for n in self.names]
