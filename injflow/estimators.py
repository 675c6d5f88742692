r"""Pure estimators for injective flows.

Every function here works on plain callables ``encode: (B, *data_shape) -> (B, d)`` and
``decode: (B, d) -> (B, *data_shape)`` (any ``nn.Module`` or closure, conv nets and BatchNorm in training mode
included), returns per-sample tensors of shape ``(B,)`` and leaves reductions to the caller. There is no
module state, no training loop and no I/O in this file.

Notation follows the FIF paper (Sorrenson, Draxler et al., ICLR 2024): :math:`f` is the encoder,
:math:`g` the decoder, :math:`z = f(x)`, :math:`\hat x = g(z)`, :math:`F = f'(\cdot) \in \mathbb{R}^{d\times D}`
and :math:`G = g'(z) \in \mathbb{R}^{D \times d}`.

The log-likelihood of the projection :math:`\hat x` is (FIF eq. 2)

.. math:: \log p(\hat x) = \log p_Z(z) - \tfrac12 \log\det(G^\top G),

and everything below either estimates the gradient of :math:`\tfrac12 \log\det(G^\top G)` (the FIF surrogate,
the rectangular-flow CG surrogate), bounds it (Kumar et al.'s Frobenius terms), or computes it exactly from
full Jacobians.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor
from torch.overrides import TorchFunctionMode

__all__ = [
    "NOISE_KINDS",
    "skip_input_checks",
    "sample_noise",
    "vjp",
    "jvp",
    "prepare_forward_ad",
    "reverse_jvp_operator",
    "standard_normal_log_prob",
    "volume_change_surrogate",
    "fif_loss",
    "fif_loss_functional",
    "fff_loss",
    "decoder_jvp_sq_norm",
    "injflow_ln_terms",
    "injflow_terms",
    "conjugate_gradient",
    "rectangular_flow_surrogate",
    "decoder_jacobian",
    "encoder_jacobian",
    "decoder_log_volume",
    "encoder_log_volume",
    "log_abs_det_jacobian",
]

Function = Callable[[Tensor], Tensor]
NoiseKind = Literal["orthogonal", "sphere", "gaussian", "rademacher"]
NOISE_KINDS: tuple[str, ...] = ("orthogonal", "sphere", "gaussian", "rademacher")
_JACOBIAN_AT = ("x", "x_hat")
_GRAD_TO = ("encoder", "decoder")
_TRACE_SPACES = ("latent", "data")
_MODES = ("mixed", "forward", "backward")


# --------------------------------------------------------------------------------------------------------------
# Input checks: bad input gets a ValueError that says what is wrong, never a silent NaN.
# --------------------------------------------------------------------------------------------------------------


def _choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(map(repr, allowed))}")


_SKIP_FINITE_CHECK: contextvars.ContextVar[bool] = contextvars.ContextVar("injflow_skip_finite_check", default=False)


@contextlib.contextmanager
def skip_input_checks() -> Iterator[None]:
    r"""Turns off the per-call NaN/inf check of the data batch ``x`` inside this block.

    Every estimator checks by default that ``x`` is finite, which costs one reduction over the batch and, on an
    accelerator, a host synchronisation per call. A training loop that has validated its data once may skip it;
    shape, dtype and option checks stay on (they read no tensor values). Library users should leave it on: a
    NaN in ``x`` otherwise surfaces only as a NaN loss.

    Example:
        >>> enc, dec = torch.nn.Linear(3, 1), torch.nn.Linear(1, 3)
        >>> bad = torch.full((4, 3), float("nan"))
        >>> with skip_input_checks():
        ...     _ = volume_change_surrogate(bad, enc, dec)  # no ValueError: the caller vouches for the data
    """
    token = _SKIP_FINITE_CHECK.set(True)
    try:
        yield
    finally:
        _SKIP_FINITE_CHECK.reset(token)


def _check_data(x: Tensor) -> Tensor:
    if not isinstance(x, Tensor):
        raise ValueError(f"x must be a torch.Tensor of shape (B, *data_shape), got {type(x).__name__}")
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"x must have shape (B, *data_shape) with B >= 1, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    # One reduction (and one host read) on the good path; the rows are located only when something is wrong.
    if not _SKIP_FINITE_CHECK.get() and not bool(torch.isfinite(x.detach()).all()):
        finite = torch.isfinite(x.detach()).flatten(1).all(1)
        rows = torch.nonzero(~finite).flatten()[:10].tolist()
        raise ValueError(f"x contains NaN or inf values (rows {rows}{', ...' if (~finite).sum() > 10 else ''})")
    return x


def _check_latent(z: Tensor, x: Tensor, *, full_dimensional: bool = False) -> int:
    if not isinstance(z, Tensor) or z.ndim != 2 or z.shape[0] != x.shape[0]:
        shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
        raise ValueError(f"encode must return shape (B, d) = ({x.shape[0]}, d), got {shape}")
    d, big_d = z.shape[1], x[0].numel()
    if full_dimensional and d != big_d:
        raise ValueError(
            f"latent dimension d={d} must equal the data dimension D={big_d} for a free-form flow "
            "(full_dimensional=True); for d < D use the injective flow (full_dimensional=False)"
        )
    if not full_dimensional and d >= big_d:
        raise ValueError(
            f"latent dimension d={d} must be smaller than the data dimension D={big_d}: an injective flow "
            "needs a bottleneck (for d = D, a free-form flow, pass full_dimensional=True or use fff_loss)"
        )
    return d


def _check_reconstruction(x_hat: Tensor, x: Tensor) -> Tensor:
    if not isinstance(x_hat, Tensor) or x_hat.shape != x.shape:
        shape = tuple(x_hat.shape) if isinstance(x_hat, Tensor) else type(x_hat).__name__
        raise ValueError(f"decode must return the data shape {tuple(x.shape)}, got {shape}")
    return x_hat


def _check_n_samples(n: int, dim: int, where: str) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n_hutchinson must be a positive integer, got {n!r}")
    if n > dim:
        raise ValueError(
            f"n_hutchinson={n} exceeds the dimension {dim} of the {where} space the trace is taken in; "
            f"K = {dim} orthogonal samples already give the exact trace, so use n_hutchinson <= {dim}"
        )


_FUSED_BATCHNORM = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)


def _warn_fused_batchnorm(*functions: object, path: str) -> None:
    # PyTorch's fused BatchNorm in training mode differentiates wrongly through forward-mode tangents and
    # double VJPs (pytorch/pytorch#196699); plain reverse mode is fine. Say so rather than train on wrong
    # gradients. Only exact torch classes are fused; injflow.nets.normalization's twins are subclasses.
    if not torch.is_grad_enabled():
        return
    for fn in functions:
        if isinstance(fn, torch.nn.Module) and any(
            type(m) in _FUSED_BATCHNORM and m.training for m in fn.modules()
        ):
            warnings.warn(
                f"{type(fn).__name__} contains torch.nn.BatchNorm in training mode and {path} differentiates "
                "through a Jacobian-vector product, where PyTorch's fused BatchNorm returns wrong gradients. "
                "Call injflow.nets.use_composite_batchnorm(module) first (same parameters, exact gradients).",
                RuntimeWarning,
                stacklevel=3,
            )
            return


# --------------------------------------------------------------------------------------------------------------
# Noise and Jacobian-vector products
# --------------------------------------------------------------------------------------------------------------


def sample_noise(
    batch_size: int,
    shape: Sequence[int],
    n_samples: int = 1,
    kind: NoiseKind = "orthogonal",
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Samples Hutchinson noise :math:`\epsilon` with :math:`E[\epsilon\epsilon^\top] = I` (FIF App. D.3).

    Kinds:

    - ``"orthogonal"`` — the first K columns of a random orthogonal n×n matrix, scaled by :math:`\sqrt n`
      (FIF App. D.3.5), independently per sample. For K = 1 this is ``"sphere"``; for K = n the trace
      estimate is exact. Variance ratio to independent sphere noise: (n − K)/(n − 1) (FIF eq. 123).
    - ``"sphere"`` — Gaussian vectors rescaled to length :math:`\sqrt n` (scaled Gaussian, FIF App. D.3.3).
    - ``"gaussian"`` — standard normal entries.
    - ``"rademacher"`` — ±1 entries.

    Arguments:
        batch_size: B, one independent draw per sample.
        shape: shape of one noise vector (``(d,)`` in latent space, the data shape in data space).
        n_samples: K, the number of Hutchinson samples, 1 ≤ K ≤ n with n = prod(shape).
        kind: one of :data:`NOISE_KINDS`.

    Returns:
        A tensor of shape ``(K, B, *shape)``.

    Example:
        >>> eps = sample_noise(4, (3,), 3, "orthogonal", dtype=torch.float64)
        >>> torch.allclose(torch.einsum("kbi,kbj->bij", eps, eps) / 3, torch.eye(3, dtype=torch.float64).expand(4, 3, 3))
        True
    """
    _choice("noise", kind, NOISE_KINDS)
    shape = tuple(int(s) for s in shape)
    n = math.prod(shape)
    _check_n_samples(n_samples, n, "latent" if len(shape) == 1 else "data")
    out_dtype = dtype or torch.get_default_dtype()
    # Half precision (mixed-precision training) is drawn in float32 and rounded once at the end: the normalisations
    # and the orthogonalisation need the digits, and batched QR has no half-precision kernels.
    work = torch.float32 if out_dtype in (torch.float16, torch.bfloat16) else out_dtype
    kw = dict(dtype=work, device=device, generator=generator)
    if kind == "orthogonal" and n_samples == 1:
        # One column of a random orthogonal matrix is a uniform unit vector: sphere noise, without a batched QR.
        kind = "sphere"
    if kind == "orthogonal":
        # The Q factor of a Gaussian n×K matrix holds the first K columns of a uniformly random orthogonal matrix (up
        # to column signs, which cannot change εᵀAε; FIF App. D.3.5).
        g = torch.randn(batch_size, n, n_samples, **kw)
        eps = (_gram_schmidt(g) if n_samples <= GRAM_SCHMIDT_MAX_K else torch.linalg.qr(g).Q).permute(2, 0, 1)
        eps = eps * math.sqrt(n)
    elif kind == "sphere":
        eps = torch.randn(n_samples, batch_size, n, **kw)
        eps = eps * (math.sqrt(n) / eps.norm(dim=-1, keepdim=True))
    elif kind == "gaussian":
        eps = torch.randn(n_samples, batch_size, n, **kw)
    else:
        eps = torch.randint(0, 2, (n_samples, batch_size, n), device=device, generator=generator)
        eps = 2 * eps - 1
    return eps.to(out_dtype).reshape(n_samples, batch_size, *shape)


#: Up to this many Hutchinson samples, orthogonal noise is orthonormalised by Gram-Schmidt (a few batched vector
#: operations) instead of a batched QR, which cuSOLVER runs as one launch per matrix of the batch.
GRAM_SCHMIDT_MAX_K = 4


def _gram_schmidt(g: Tensor) -> Tensor:
    r"""The Q factor with positive :math:`\mathrm{diag}(R)` of each ``(n, K)`` matrix of ``g`` (B, n, K), by
    Gram-Schmidt with one re-orthogonalisation ("twice is enough": orthogonal to working precision).

    For Gaussian ``g`` this is exactly distributed as QR's Q (it *is* that Q up to the signs of its columns): the first
    K columns of a Haar-random orthogonal matrix. About 6K vector operations on the whole batch, K ≤ 4.
    """
    columns: list[Tensor] = []
    for k in range(g.shape[-1]):
        v = g[..., k]
        if columns:
            q = torch.stack(columns, dim=-1)  # (B, n, k)
            for _ in range(2):
                v = v - torch.einsum("bnk,bk->bn", q, torch.einsum("bnk,bn->bk", q, v))
        columns.append(v / v.norm(dim=-1, keepdim=True))
    return torch.stack(columns, dim=-1)


def vjp(
    outputs: Tensor,
    inputs: Tensor,
    cotangent: Tensor,
    *,
    create_graph: bool = False,
    batched: bool = False,
    name: str = "function",
) -> Tensor:
    r"""Vector-Jacobian product :math:`v^\top \partial \text{outputs} / \partial \text{inputs}` on an existing graph.

    The graph is retained so several products can reuse it. ``create_graph=True`` makes the result
    differentiable (needed when a parameter gradient must flow through the product). ``batched=True`` takes K
    cotangents stacked along a leading dimension, ``(K, *outputs.shape)``, and returns the K products
    ``(K, *inputs.shape)`` from one vectorised backward pass (``torch.autograd.grad(is_grads_batched=True)``); the
    graph is the one built on the batch, so batch statistics (BatchNorm) are the batch's for every k.
    """
    if batched and cotangent.shape[0] == 1:  # one product: skip the vmap machinery
        return vjp(outputs, inputs, cotangent[0], create_graph=create_graph, name=name).unsqueeze(0)
    try:
        (grad,) = torch.autograd.grad(
            outputs, inputs, cotangent, create_graph=create_graph, retain_graph=True, allow_unused=True,
            is_grads_batched=batched,
        )
    except RuntimeError as error:
        if "does not require grad" in str(error):
            raise ValueError(f"{name}'s output does not depend on its input (no gradient path)") from error
        raise
    if grad is None:
        raise ValueError(f"{name}'s output does not depend on its input (no gradient path)")
    return grad


# Linear maps whose first argument is the input and whose third is an optional bias:
# linear(input, weight, bias), conv*(input, weight, bias, ...), conv_transpose*(input, weight, bias, ...).
_LINEAR_MAPS = frozenset({
    torch.nn.functional.linear,
    torch.conv1d, torch.conv2d, torch.conv3d,
    torch.conv_transpose1d, torch.conv_transpose2d, torch.conv_transpose3d,
})


def _has_tangent(t: object) -> bool:
    return isinstance(t, Tensor) and fwAD.unpack_dual(t).tangent is not None


class _LinearTangents(TorchFunctionMode):
    r"""Forward-mode rule for layers ``y = L_W(u) + b`` whose weights carry no tangent: :math:`\dot y = L_W(\dot u)`.

    PyTorch's generic rule for ``addmm``/``convolution`` also forms the product with the weight's tangent, which
    is an (efficient-zero) tensor that gets materialised: every linear or convolutional layer then runs one
    extra full-size product on zeros plus additions of zeros, and a decoder JVP costs ~4.5 plain forwards on the
    tabular MLP instead of ~2 (benchmarks/step_time.py). The rule here is the same derivative (the input enters
    linearly, the weight and bias are constants of the JVP), so values and gradients are unchanged; layers with
    a dual weight or bias (e.g. a hypernetwork) keep PyTorch's rule.
    """

    def __torch_function__(
        self, func: Callable[..., Any], types: tuple[type, ...], args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func in _LINEAR_MAPS and len(args) >= 2:
            primal, tangent = fwAD.unpack_dual(args[0])
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if tangent is not None and not _has_tangent(args[1]) and not _has_tangent(bias):
                out = func(primal, *args[1:], **kwargs)
                if len(args) > 2:
                    out_tangent = func(tangent, args[1], None, *args[3:], **kwargs)
                else:
                    out_tangent = func(tangent, args[1], **{**kwargs, "bias": None})
                return fwAD.make_dual(out, out_tangent)
        return func(*args, **kwargs)


@functools.cache
def prepare_forward_ad() -> None:
    """Loads PyTorch's forward-mode decompositions once, without the deprecation notice they print.

    On its first ``make_dual`` PyTorch registers its JVP decompositions by compiling them with ``torch.jit.script``
    (``torch/_decomp/decompositions_for_jvp.py``), which in torch 2.13 warns "`torch.jit.script` is deprecated" 18
    times. The call is PyTorch's own, not injflow's, and the decompositions are needed (they are the forward-mode
    rules of several ops), so they are loaded here, with exactly that warning silenced; every later ``make_dual``
    finds them loaded. :func:`jvp` calls this; code that uses ``torch.autograd.forward_ad`` directly may too.
    """
    load = getattr(fwAD, "_maybe_load_decompositions", None)  # torch's own condition (PYTORCH_JIT=1, not -O)
    if load is not None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=DeprecationWarning)
            load()


def jvp(fn: Function, primal: Tensor, tangent: Tensor, *, name: str = "function") -> tuple[Tensor, Tensor]:
    r"""Forward-mode Jacobian-vector product: returns ``(fn(primal), fn'(primal) @ tangent)`` in one pass.

    The primal output keeps its autograd graph (so it can serve as :math:`\hat x` in a loss), and so does the
    tangent while gradients are enabled; detach the tangent to stop its gradient. Linear and convolutional
    layers propagate the tangent with one product each (:class:`_LinearTangents`), so the pass costs about two
    plain forwards.
    """
    prepare_forward_ad()
    with fwAD.dual_level(), _LinearTangents():
        # make_dual rejects overlapping memory (e.g. expanded tensors), hence contiguous().
        out = fn(fwAD.make_dual(primal.contiguous(), tangent.contiguous()))
        if not isinstance(out, Tensor):
            raise ValueError(f"{name} must return a tensor, got {type(out).__name__}")
        out, out_tangent = fwAD.unpack_dual(out)
    if out_tangent is None:
        raise ValueError(f"{name}'s output does not depend on its input (the Jacobian is zero)")
    return out, out_tangent


def reverse_jvp_operator(outputs: Tensor, inputs: Tensor, *, name: str = "function") -> Callable[..., Tensor]:
    r"""Jacobian-vector products with reverse mode only, on an existing graph (the double-VJP trick).

    :math:`J t = \partial_u \langle J^\top u, t \rangle` for a dummy :math:`u`. The differentiable VJP
    :math:`J^\top u` is built once; each call ``apply(t, create_graph=False, batched=False)`` is one more backward
    pass, so Hutchinson samples or CG iterations reuse it (``batched=True``: K tangents ``(K, *inputs.shape)`` in
    one vectorised pass, as in :func:`vjp`). Used where a JVP must not run another forward pass (no extra
    BatchNorm update) or where the AD mode is fixed to reverse.
    """
    dummy = torch.zeros_like(outputs, requires_grad=True)
    transposed = vjp(outputs, inputs, dummy, create_graph=True, name=name)

    def apply(tangent: Tensor, *, create_graph: bool = False, batched: bool = False) -> Tensor:
        return vjp(transposed, dummy, tangent, create_graph=create_graph, batched=batched, name=name)

    return apply


def _stopped_jvp(fn: Function, point: Tensor, tangent: Tensor, *, name: str) -> Tensor:
    r"""``fn'(point) @ tangent`` by forward mode, with gradient through ``tangent`` only.

    Forward mode cannot stop the gradient of a Jacobian that is applied *after* a trainable product (FIF
    App. D.2 notes the same for reverse mode). Because the product is linear in the tangent,
    :math:`J t - J\,\mathrm{sg}(t) + \mathrm{sg}(J\,\mathrm{sg}(t))` has the value :math:`J t`, the
    t-gradient :math:`J^\top`, and cancelling parameter gradients. Costs two forward passes.
    """
    out = jvp(fn, point.detach(), tangent, name=name)[1]
    frozen = jvp(fn, point.detach(), tangent.detach(), name=name)[1]
    return out - frozen + frozen.detach()


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).flatten(1).sum(1)


def _dots(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner products of K stacked products, (K, B, ...) × (K, B, ...) -> (K, B)."""
    return (a * b).flatten(2).sum(2)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    r""":math:`\log \mathcal N(z; 0, I_d) = -\tfrac12\|z\|^2 - \tfrac d2 \log 2\pi`, per sample, shape (B,)."""
    return -0.5 * z.pow(2).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi)


# --------------------------------------------------------------------------------------------------------------
# FIF volume-change surrogate (FIF eqs. 9, 10, 15, 17; table 4; App. D)
# --------------------------------------------------------------------------------------------------------------


def _encoder_products_are_reverse(trace_space: str, mode: str) -> bool:
    # Latent space multiplies εᵀF (a VJP) unless forward-only; data space multiplies Fε (a JVP), which is
    # done in reverse mode only in backward-only mode.
    return (trace_space == "latent" and mode != "forward") or (trace_space == "data" and mode == "backward")


def volume_change_surrogate(
    x: Tensor,
    encode: Function,
    decode: Function,
    *,
    n_hutchinson: int = 1,
    noise: NoiseKind = "orthogonal",
    jacobian_at: Literal["x", "x_hat"] = "x",
    grad_to: Literal["encoder", "decoder"] = "encoder",
    trace_space: Literal["latent", "data"] = "latent",
    mode: Literal["mixed", "forward", "backward"] = "mixed",
    generator: torch.Generator | None = None,
    full_dimensional: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""FIF surrogate whose gradient is the gradient of :math:`\tfrac12\log\det(g'(z)^\top g'(z))`.

    The default is the paper's final estimator (FIF eq. 17, the middle term with its sign):

    .. math:: s(x) = -\frac1K \sum_{k=1}^K \epsilon_k^\top f'(x)\, \mathrm{sg}\big(g'(z)\epsilon_k\big),

    so that the negative log-likelihood is :math:`-\log p_Z(z) + s(x)` and its gradient matches
    :math:`\nabla[-\log p_Z(z) + \tfrac12 \log\det(g'^\top g')]` when :math:`f'` is the pseudo-inverse of
    :math:`g'` (FIF eq. 8, App. B). The value of ``s`` itself is not the log-determinant.

    Choices (each a paper ablation):

    - ``jacobian_at``: ``"x"`` evaluates the encoder Jacobian off-manifold at the data (FIF eq. 15, default);
      ``"x_hat"`` on-manifold at the reconstruction (eq. 10), which lets curvature run away (FIF §4.2).
      The reconstruction is detached there, so the encoder term sends no gradient into the decoder.
    - ``grad_to``: ``"encoder"`` (eq. 10/38, default) puts the gradient on the encoder via
      :math:`-\mathrm{tr}(\partial f'\,\mathrm{sg}(g'))`; ``"decoder"`` (eq. 9) uses
      :math:`+\mathrm{tr}(\mathrm{sg}(f')\,\partial g')` with :math:`g'` evaluated at ``z.detach()``, so the encoder
      gets no gradient from this term. This costs a second decoder forward.
    - ``trace_space``: ``"latent"`` estimates :math:`\mathrm{tr}(f'g')` with noise in :math:`\mathbb{R}^d`
      (default, lower variance, FIF App. D.1); ``"data"`` estimates :math:`\mathrm{tr}(g'f')` with noise in
      :math:`\mathbb{R}^D` (table 4).
    - ``mode``: ``"mixed"`` one VJP + one JVP (default; the decoder JVP yields :math:`\hat x` in the same
      pass); ``"backward"`` reverse mode only (JVPs via the double-VJP trick on existing graphs);
      ``"forward"`` forward mode only (FIF App. D.2). All modes give the same value and gradients for the
      same noise.
    - ``n_hutchinson`` K ≤ dim of the trace space, ``noise`` in :data:`NOISE_KINDS`.
    - ``full_dimensional``: ``True`` for a free-form flow with d = D (Draxler et al. 2024, FFF). The Jacobians are
      square, :math:`\tfrac12\log\det(G^\top G) = \log|\det G|`, and the same surrogate has the gradient of
      :math:`\log|\det g'(z)| = -\log|\det f'(x)|` when :math:`g = f^{-1}` (FFF eq. 7-8). Every option above
      applies except ``jacobian_at="x_hat"``, which is refused: there is no manifold to project onto, and the change
      of variables of x needs :math:`f'(x)` itself.

    Arguments:
        x: data batch of shape (B, *data_shape), finite.
        encode: f, (B, *data_shape) -> (B, d) with d < D (d = D with ``full_dimensional=True``).
        decode: g, (B, d) -> (B, *data_shape).
        generator: optional random generator for the noise (same seed → same noise in every mode).
        full_dimensional: d = D (a free-form flow) instead of a bottleneck d < D.

    Returns:
        ``(z, x_hat, surrogate)`` with ``z = f(x)`` (B, d), ``x_hat = g(z)`` (B, *data_shape) and the surrogate (B,).

    Example:
        >>> enc, dec = torch.nn.Linear(3, 1), torch.nn.Linear(1, 3)
        >>> z, x_hat, s = volume_change_surrogate(torch.randn(8, 3), enc, dec)
        >>> z.shape, x_hat.shape, s.shape
        (torch.Size([8, 1]), torch.Size([8, 3]), torch.Size([8]))
    """
    _choice("jacobian_at", jacobian_at, _JACOBIAN_AT)
    _choice("grad_to", grad_to, _GRAD_TO)
    _choice("trace_space", trace_space, _TRACE_SPACES)
    _choice("mode", mode, _MODES)
    if full_dimensional and jacobian_at != "x":
        raise ValueError(
            "jacobian_at='x_hat' does not apply at d = D (full_dimensional=True): there is no manifold to project onto, "
            "and the change of variables of x needs f'(x); use jacobian_at='x'"
        )
    _check_data(x)
    if not (mode == "mixed" and trace_space == "latent" and grad_to == "encoder"):
        _warn_fused_batchnorm(encode, decode, path=f"the surrogate with {mode=}, {trace_space=}, {grad_to=}")
    latent = trace_space == "latent"
    reverse_encoder = _encoder_products_are_reverse(trace_space, mode)
    # Reverse-mode products with f'(x) reuse the graph of z = f(x), which needs x in the graph.
    needs_x_graph = jacobian_at == "x" and reverse_encoder and not x.requires_grad
    x_in = x.detach().requires_grad_(True) if needs_x_graph else x

    z = encode(x_in)
    d = _check_latent(z, x, full_dimensional=full_dimensional)
    eps = sample_noise(
        x.shape[0], (d,) if latent else x.shape[1:], n_hutchinson, noise,
        dtype=z.dtype, device=z.device, generator=generator,
    )

    if grad_to == "encoder":
        x_hat, traces = _surrogate_traces_encoder(x, x_in, z, eps, encode, decode, jacobian_at, latent, mode)
        sign = -1.0  # the encoder form of ½ log det(g'ᵀg') = −½ log det(f'f'ᵀ) carries a minus (FIF eq. 31, 38)
    else:
        x_hat, traces = _surrogate_traces_decoder(x, x_in, z, eps, encode, decode, jacobian_at, latent, mode)
        sign = 1.0
    return z, x_hat, sign * traces.mean(0)


def _encoder_point(
    x_in: Tensor, z: Tensor, x_hat: Tensor, encode: Function, jacobian_at: str, reverse: bool
) -> tuple[Tensor, Tensor | None]:
    """The point p where f' is evaluated and, for reverse-mode products, f(p) with its graph."""
    if jacobian_at == "x":
        return x_in, z
    # On-manifold (FIF eq. 10): f'(x̂) with x̂ detached, so this term never reaches the decoder.
    point = x_hat.detach().requires_grad_(reverse)
    return point, (encode(point) if reverse else None)


def _forward_products(fn: Function, point: Tensor, tangents: Tensor, *, name: str) -> Tensor:
    """``fn'(point) t_k`` for K stacked tangents by forward mode, (K, B, ...); differentiable w.r.t. ``fn``'s
    parameters and the tangents. PyTorch's forward AD carries one tangent per pass, so this is K dual passes."""
    return torch.stack([jvp(fn, point, t, name=name)[1] for t in tangents])


def _surrogate_traces_encoder(
    x: Tensor,
    x_in: Tensor,
    z: Tensor,
    eps: Tensor,
    encode: Function,
    decode: Function,
    jacobian_at: Literal["x", "x_hat"],
    latent: bool,
    mode: Literal["mixed", "forward", "backward"],
) -> tuple[Tensor, Tensor]:
    """Per-sample estimates of tr(∂f' · sg(g')) with the gradient on the encoder only, (K, B).

    ``eps`` holds the K noise vectors stacked, (K, B, ...); every reverse-mode product takes all K at once (one
    vectorised backward pass), forward-mode products loop over K.
    """
    reverse = _encoder_products_are_reverse("latent" if latent else "data", mode)
    if latent:
        # Stopped decoder products s_k = g'(z) ε_k. In mixed/forward mode the first comes out of the pass that
        # also yields x̂ (no second decoder forward, FIF App. D.2); further ones reuse the decoder graph
        # (mixed, backward) or run gradient-free dual passes (forward).
        if mode == "backward":
            x_hat = _check_reconstruction(decode(z), x)
            stopped = reverse_jvp_operator(x_hat, z, name="decode")(eps, batched=True)
        else:
            x_hat, first = jvp(decode, z, eps[0], name="decode")
            _check_reconstruction(x_hat, x)
            stopped = first.detach().unsqueeze(0)
            if len(eps) > 1 and mode == "mixed":
                rest = reverse_jvp_operator(x_hat, z, name="decode")(eps[1:], batched=True)
                stopped = torch.cat([stopped, rest])
            elif len(eps) > 1:
                with torch.no_grad():  # further forward-only products: gradient-free dual passes
                    stopped = torch.cat([stopped, _forward_products(decode, z.detach(), eps[1:], name="decode")])
        point, z_point = _encoder_point(x_in, z, x_hat, encode, jacobian_at, reverse)
        if reverse:  # ε_kᵀ f'(p) by differentiable VJPs, dotted with sg(g'ε_k)
            return x_hat, _dots(vjp(z_point, point, eps, create_graph=True, batched=True, name="encode"), stopped)
        # f'(p) sg(g'ε_k) by differentiable JVPs, dotted with ε_k
        return x_hat, _dots(eps, _forward_products(encode, point.detach(), stopped, name="encode"))

    x_hat = _check_reconstruction(decode(z), x)
    point, z_point = _encoder_point(x_in, z, x_hat, encode, jacobian_at, reverse)
    if mode == "backward":
        trainable = reverse_jvp_operator(z_point, point, name="encode")(eps, create_graph=True, batched=True)
    else:
        trainable = _forward_products(encode, point.detach(), eps, name="encode")
    if mode == "forward":  # εᵀ sg(g') (f'ε): the stopped Jacobian acts second
        return x_hat, torch.stack([_dot(e, _stopped_jvp(decode, z, t, name="decode")) for e, t in zip(eps, trainable)])
    # (f'ε) · sg(εᵀ g')
    return x_hat, _dots(trainable, vjp(x_hat, z, eps, batched=True, name="decode"))


def _surrogate_traces_decoder(
    x: Tensor,
    x_in: Tensor,
    z: Tensor,
    eps: Tensor,
    encode: Function,
    decode: Function,
    jacobian_at: Literal["x", "x_hat"],
    latent: bool,
    mode: Literal["mixed", "forward", "backward"],
) -> tuple[Tensor, Tensor]:
    """Per-sample estimates of tr(sg(f') · ∂g') with the gradient on the decoder only (g' at z.detach()), (K, B)."""
    reverse = _encoder_products_are_reverse("latent" if latent else "data", mode)
    x_hat = _check_reconstruction(decode(z), x)  # reconstruction path, attached to the encoder
    point, z_point = _encoder_point(x_in, z, x_hat, encode, jacobian_at, reverse)
    z_stop = z.detach().requires_grad_(True)
    x_hat_stop = decode(z_stop) if mode == "backward" or (not latent and mode == "mixed") else None
    if latent:
        if mode == "forward":  # εᵀ sg(f') (g'ε): the stopped Jacobian acts second
            trainable = _forward_products(decode, z_stop, eps, name="decode")
            return x_hat, torch.stack([_dot(e, _stopped_jvp(encode, point, t, name="encode")) for e, t in zip(eps, trainable)])
        stopped = vjp(z_point, point, eps, batched=True, name="encode")  # sg(εᵀ f'(p))
        if mode == "mixed":
            trainable = _forward_products(decode, z_stop, eps, name="decode")
        else:
            trainable = reverse_jvp_operator(x_hat_stop, z_stop, name="decode")(eps, create_graph=True, batched=True)
        return x_hat, _dots(stopped, trainable)
    if mode == "backward":
        stopped = reverse_jvp_operator(z_point, point, name="encode")(eps, batched=True)  # sg(f'(p) ε)
    else:
        with torch.no_grad():
            stopped = _forward_products(encode, point.detach(), eps, name="encode")
    if mode == "forward":  # εᵀ (g' sg(f'ε))
        return x_hat, _dots(eps, _forward_products(decode, z_stop, stopped, name="decode"))
    # (εᵀ g') · sg(f'ε)
    return x_hat, _dots(vjp(x_hat_stop, z_stop, eps, create_graph=True, batched=True, name="decode"), stopped)


def fif_loss(
    x: Tensor,
    encode: Function,
    decode: Function,
    *,
    beta: float,
    latent_log_prob: Function | None = None,
    **surrogate_options,
) -> dict[str, Tensor]:
    r"""Per-sample FIF loss (FIF eq. 7/17):

    .. math:: \mathcal L(x) = \underbrace{-\log p_Z(z) + s(x)}_{\text{nll}} + \beta \|\hat x - x\|^2,

    where :math:`s` is :func:`volume_change_surrogate` (which carries the paper's minus sign). The ``"nll"``
    term has the gradient of the on-manifold negative log-likelihood but not its value; use
    :func:`decoder_log_volume` for the exact value.

    Arguments:
        x: data batch (B, *data_shape).
        encode, decode: the encoder f and decoder g.
        beta: reconstruction weight β ≥ 0.
        latent_log_prob: z -> log p_Z(z) of shape (B,); ``None`` means the standard normal.
        surrogate_options: keyword arguments of :func:`volume_change_surrogate`.

    Returns:
        A dict of per-sample tensors: ``loss``, ``nll``, ``reconstruction`` (:math:`\|\hat x - x\|^2` summed over
        data dimensions), ``surrogate``, ``log_prob``, and ``z``, ``x_hat``.

    Example:
        >>> enc, dec = torch.nn.Linear(3, 1), torch.nn.Linear(1, 3)
        >>> out = fif_loss(torch.randn(8, 3), enc, dec, beta=10.0)
        >>> out["loss"].mean().backward()
    """
    if not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    z, x_hat, surrogate = volume_change_surrogate(x, encode, decode, **surrogate_options)
    log_prob = standard_normal_log_prob(z) if latent_log_prob is None else latent_log_prob(z)
    if not isinstance(log_prob, Tensor) or log_prob.shape != surrogate.shape:
        raise ValueError(
            f"latent_log_prob must return shape {tuple(surrogate.shape)}, got {getattr(log_prob, 'shape', log_prob)}"
        )
    reconstruction = (x_hat - x).pow(2).flatten(1).sum(1)
    nll = -log_prob + surrogate
    return {
        "loss": nll + beta * reconstruction,
        "nll": nll,
        "reconstruction": reconstruction,
        "surrogate": surrogate,
        "log_prob": log_prob,
        "z": z,
        "x_hat": x_hat,
    }


def fif_loss_functional(
    x: Tensor,
    encode: Function,
    decode: Function,
    eps: Tensor,
    *,
    beta: Tensor | float,
    latent_log_prob: Function | None = None,
) -> dict[str, Tensor]:
    r"""FIF's default estimator (FIF eq. 17) written with ``torch.func`` transforms, for compiled training.

    The same loss as :func:`fif_loss` with ``mode="mixed"``, ``trace_space="latent"``, ``jacobian_at="x"``,
    ``grad_to="encoder"`` and the Hutchinson vectors ``eps`` (K, B, d) given:

    .. math:: \mathcal L = -\log p_Z(z) - \tfrac1K\sum_k \epsilon_k^\top f'(x)\,\mathrm{sg}\big(g'(z)\epsilon_k\big)
              + \beta\|g(z) - x\|^2,\qquad z = f(x),

    with ``torch.func.vjp`` of the encoder (one forward shared with the NLL) and ``torch.func.jvp`` of the decoder,
    whose primal output is :math:`\hat x` (App. D.2). ``torch.compile`` traces these transforms whole, which it cannot
    do for the autograd-based estimator above (forward-mode AD through compiled modules and twice-differentiable
    compiled backward passes are not supported). Differentiate it with ``torch.func.grad`` over the parameters the
    closures ``encode``/``decode`` read (see :mod:`injflow.train.compile`); the tests check that its value and
    gradients equal :func:`fif_loss`'s for the same noise.

    Returns:
        Per-sample ``loss``, ``nll``, ``reconstruction``, ``surrogate`` and ``latent_sq_norm``.

    Example:
        >>> enc, dec = torch.nn.Linear(3, 2), torch.nn.Linear(2, 3)
        >>> x, eps = torch.randn(4, 3), torch.randn(1, 4, 2)
        >>> sorted(fif_loss_functional(x, enc, dec, eps, beta=10.0))
        ['latent_sq_norm', 'loss', 'nll', 'reconstruction', 'surrogate']
    """
    from torch.func import jvp as func_jvp
    from torch.func import vjp as func_vjp

    z, encoder_vjp = func_vjp(encode, x)
    x_hat, surrogate = None, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for e in eps:  # K Hutchinson samples; the first decoder JVP also yields x̂
        out, decoder_jvp = func_jvp(decode, (z,), (e,))
        x_hat = out if x_hat is None else x_hat
        (eps_f,) = encoder_vjp(e)
        surrogate = surrogate - (eps_f * decoder_jvp.detach()).flatten(1).sum(1) / eps.shape[0]
    log_prob = standard_normal_log_prob(z) if latent_log_prob is None else latent_log_prob(z)
    nll = -log_prob + surrogate
    reconstruction = (x_hat - x).flatten(1).pow(2).sum(1)
    return {"loss": nll + beta * reconstruction, "nll": nll, "reconstruction": reconstruction, "surrogate": surrogate,
            "latent_sq_norm": z.detach().flatten(1).pow(2).sum(1)}
def fff_loss(
    x: Tensor,
    encode: Function,
    decode: Function,
    *,
    beta: float,
    latent_log_prob: Function | None = None,
    exact: bool = False,
    **surrogate_options,
) -> dict[str, Tensor]:
    r"""Per-sample free-form flow loss at d = D (FFF; Draxler, Sorrenson et al., AISTATS 2024, eq. 7-9):

    .. math:: \mathcal L(x) = \underbrace{-\log p_Z(f(x)) - \log|\det f'(x)|}_{\text{nll}}
              + \beta \|g(f(x)) - x\|^2,

    the change of variables of the normalizing flow :math:`f` plus the reconstruction term that keeps the free-form
    decoder :math:`g` close to :math:`f^{-1}`. With ``exact=False`` (default) the log-determinant is replaced by the
    FIF surrogate with square Jacobians, :math:`-\frac1K\sum_k \epsilon_k^\top f'(x)\,\mathrm{sg}(g'(z)\epsilon_k)`
    (:func:`volume_change_surrogate` with ``full_dimensional=True``): its gradient is the gradient of
    :math:`-\log|\det f'(x)|` when :math:`g'(z) = f'(x)^{-1}` (FFF theorem 4.1), but its value is not the log-determinant.
    With ``exact=True`` it is :func:`log_abs_det_jacobian` of the encoder (the full D × D Jacobian, one
    ``slogdet``), whose value *is* the exact negative log-density of x under the flow :math:`f`: for small D.

    Arguments:
        x: data batch (B, *data_shape).
        encode, decode: f and g, both between (B, *data_shape) and (B, D).
        beta: reconstruction weight β ≥ 0.
        latent_log_prob: z -> log p_Z(z) of shape (B,); ``None`` means the standard normal.
        exact: the exact log-determinant instead of the surrogate (no Hutchinson options then).
        surrogate_options: keyword arguments of :func:`volume_change_surrogate` (not ``full_dimensional``).

    Returns:
        A dict of per-sample tensors: ``loss``, ``nll``, ``reconstruction``, ``log_prob``, ``z``, ``x_hat`` and
        ``surrogate`` (surrogate path) or ``log_det`` (:math:`\log|\det f'(x)|`, exact path).

    Example:
        >>> enc, dec = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
        >>> out = fff_loss(torch.randn(8, 3), enc, dec, beta=10.0)
        >>> out["loss"].mean().backward()
        >>> exact = fff_loss(torch.randn(8, 3), enc, dec, beta=10.0, exact=True)
        >>> torch.allclose(exact["log_det"], torch.linalg.slogdet(enc.weight).logabsdet.expand(8))
        True
    """
    if not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    if "full_dimensional" in surrogate_options:
        raise ValueError("full_dimensional is implied by fff_loss (d = D); do not pass it")
    if exact:
        if surrogate_options:
            raise ValueError(
                f"{sorted(surrogate_options)[0]} is an option of the surrogate estimator and has no effect with exact=True "
                "(the exact log-determinant uses the full Jacobian, no Hutchinson samples)"
            )
        z = encode(x)
        _check_latent(z, _check_data(x), full_dimensional=True)
        x_hat = _check_reconstruction(decode(z), x)
        log_det = log_abs_det_jacobian(encode, x)
        volume = -log_det
        extra = {"log_det": log_det}
    else:
        z, x_hat, volume = volume_change_surrogate(x, encode, decode, full_dimensional=True, **surrogate_options)
        extra = {"surrogate": volume}
    log_prob = standard_normal_log_prob(z) if latent_log_prob is None else latent_log_prob(z)
    if not isinstance(log_prob, Tensor) or log_prob.shape != volume.shape:
        raise ValueError(
            f"latent_log_prob must return shape {tuple(volume.shape)}, got {getattr(log_prob, 'shape', log_prob)}"
        )
    reconstruction = (x_hat - x).pow(2).flatten(1).sum(1)
    nll = -log_prob + volume
    return {
        "loss": nll + beta * reconstruction,
        "nll": nll,
        "reconstruction": reconstruction,
        **extra,
        "log_prob": log_prob,
        "z": z,
        "x_hat": x_hat,
    }


# --------------------------------------------------------------------------------------------------------------
# Kumar, Poole & Murphy (2020): Frobenius-norm bounds (eqs. 7-10)
# --------------------------------------------------------------------------------------------------------------


def decoder_jvp_sq_norm(
    decode: Function,
    z: Tensor,
    v: Tensor,
    *,
    method: Literal["jvp", "finite_difference", "vjp"] = "jvp",
    fd_step: float = 0.01,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Stochastic Frobenius-norm term :math:`\|J_g(z) v\|^2` with :math:`E_v\|J_g v\|^2 = \|J_g\|_F^2`.

    - ``"jvp"``: forward-mode JVP, differentiable (Kumar eq. 7); :math:`\hat x` comes out of the same pass.
    - ``"finite_difference"``: :math:`\|g(z + \varepsilon v) - g(z)\|^2 / \varepsilon^2` (Kumar eq. 8,
      ε = ``fd_step`` = 0.01), exact up to O(ε).
    - ``"vjp"``: reverse mode only (Kumar footnote 2): :math:`\|J_g^\top u\|^2` with :math:`u \in \mathbb{R}^D`
      given as ``v`` (same expectation :math:`\|J_g\|_F^2` for Gaussian u).

    Gradients flow to the decoder and, through z, to the encoder (Kumar optimise both, §2.2).

    Returns:
        ``(x_hat, sq_norm, v_sq_norm)``, the last two of shape (B,). For ``"vjp"`` ``v_sq_norm`` is
        :math:`\|u\|^2 d / D`, the latent-equivalent length, so that ratios ``sq_norm / v_sq_norm`` estimate the
        same mean squared singular value in every method.
    """
    _choice("method", method, ("jvp", "finite_difference", "vjp"))
    if method == "jvp":
        _warn_fused_batchnorm(decode, path="the JVP Frobenius term")
        x_hat, jv = jvp(decode, z, v, name="decode")
        return x_hat, jv.pow(2).flatten(1).sum(1), v.pow(2).sum(1)
    if method == "vjp" and not z.requires_grad:
        # The VJP needs z in the graph; a detached z (e.g. evaluation of a fixed code) gets its own leaf.
        z = z.detach().requires_grad_(True)
    x_hat = decode(z)
    if method == "finite_difference":
        if not fd_step > 0:
            raise ValueError(f"fd_step must be > 0, got {fd_step!r}")
        shifted = decode(z + fd_step * v)
        return x_hat, (shifted - x_hat).pow(2).flatten(1).sum(1) / fd_step**2, v.pow(2).sum(1)
    if v.shape != x_hat.shape:
        raise ValueError(f"for method='vjp' v must have the data shape {tuple(x_hat.shape)}, got {tuple(v.shape)}")
    jtv = vjp(x_hat, z, v, create_graph=True, name="decode")
    return x_hat, jtv.pow(2).sum(1), v.pow(2).flatten(1).sum(1) * z.shape[1] / x_hat[0].numel()


def _kumar_terms(
    x: Tensor,
    encode: Function,
    decode: Function,
    *,
    sigma: float,
    eta: float,
    jacobian: Literal["jvp", "finite_difference", "vjp"],
    fd_step: float,
    generator: torch.Generator | None,
) -> dict[str, Tensor]:
    _check_data(x)
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    if not eta >= 0:
        raise ValueError(f"eta must be >= 0, got {eta!r}")
    z = encode(x)
    d = _check_latent(z, x)
    shape = x.shape if jacobian == "vjp" else (x.shape[0], d)
    v = torch.randn(shape, dtype=z.dtype, device=z.device, generator=generator)  # v ~ N(0, I), Kumar §2.2
    x_hat, jv_sq, v_sq = decoder_jvp_sq_norm(decode, z, v, method=jacobian, fd_step=fd_step)
    _check_reconstruction(x_hat, x)
    # Local injectivity: ‖Jv‖/‖v‖ ≥ η, penalised by [‖Jv‖/‖v‖ − η]_−² (Kumar eq. 9, last term). The clamp keeps
    # the square root's gradient finite at Jv = 0.
    gain = (jv_sq.clamp_min(torch.finfo(jv_sq.dtype).tiny) / v_sq).sqrt()
    return {
        "z": z,
        "x_hat": x_hat,
        "prior": z.pow(2).sum(1) / (2 * sigma**2),
        "reconstruction": (x - x_hat).pow(2).flatten(1).sum(1),
        "injectivity": (gain - eta).clamp_max(0).pow(2),
        "jv_sq_norm": jv_sq,
        "floored_jv_sq_norm": torch.maximum(jv_sq, eta**2 * v_sq),
    }


def injflow_ln_terms(
    x: Tensor,
    encode: Function,
    decode: Function,
    *,
    sigma: float = 1.0,
    eta: float = 0.1,
    jacobian: Literal["jvp", "finite_difference", "vjp"] = "jvp",
    fd_step: float = 0.01,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    r"""Per-sample terms of InjFlow-ln (Kumar eq. 9), to be weighted by the method:

    .. math:: \frac{\|h(x)\|^2}{2\sigma^2} + \mu \|x - \hat x\|^2
              + \frac d2 \ln\max(\|J_g v\|^2, \eta^2\|v\|^2) + \mu_{in}\Big[\frac{\|J_g v\|}{\|v\|} - \eta\Big]_-^2

    Returns:
        Dict with ``prior``, ``reconstruction``, ``log_frobenius``, ``injectivity`` (all (B,)), plus ``z``,
        ``x_hat`` and ``jv_sq_norm``.
    """
    terms = _kumar_terms(x, encode, decode, sigma=sigma, eta=eta, jacobian=jacobian, fd_step=fd_step, generator=generator)
    floored = terms.pop("floored_jv_sq_norm")
    terms["log_frobenius"] = 0.5 * terms["z"].shape[1] * floored.log()
    return terms


def injflow_terms(
    x: Tensor,
    encode: Function,
    decode: Function,
    *,
    lam: float = 1.0,
    sigma: float = 1.0,
    eta: float = 0.1,
    jacobian: Literal["jvp", "finite_difference", "vjp"] = "jvp",
    fd_step: float = 0.01,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    r"""Per-sample terms of InjFlow (Kumar eq. 10, fixed λ):

    .. math:: \frac{\|h(x)\|^2}{2\sigma^2} + \mu \|x - \hat x\|^2
              + \frac1{2\lambda} \max(\|J_g v\|^2, \eta^2\|v\|^2) + \mu_{in}\Big[\frac{\|J_g v\|}{\|v\|} - \eta\Big]_-^2

    Returns:
        Dict with ``prior``, ``reconstruction``, ``frobenius``, ``injectivity``, plus ``z``, ``x_hat``, ``jv_sq_norm``.
    """
    if not lam > 0:
        raise ValueError(f"lam must be > 0, got {lam!r}")
    terms = _kumar_terms(x, encode, decode, sigma=sigma, eta=eta, jacobian=jacobian, fd_step=fd_step, generator=generator)
    terms["frobenius"] = terms.pop("floored_jv_sq_norm") / (2 * lam)
    return terms


# --------------------------------------------------------------------------------------------------------------
# Rectangular flows (Caterini et al. 2021; FIF eqs. 4-6): conjugate-gradient surrogate
# --------------------------------------------------------------------------------------------------------------


def conjugate_gradient(
    matvec: Function, b: Tensor, *, tol: float = 1e-6, max_iter: int | None = None, check_every: int | None = None
) -> tuple[Tensor, int, Tensor]:
    r"""Solves :math:`A u = b` for a batch of symmetric positive-definite systems, one per row.

    Arguments:
        matvec: v (B, n) -> A v (B, n), applied to all rows at once.
        b: right-hand sides (B, n).
        tol: stop when every row's residual satisfies :math:`\|r\| \le \text{tol}\,\|b\|`. In half precision
            (mixed-precision training) the products cannot resolve less than the format's rounding, so the tolerance
            is at least ``8 * torch.finfo(b.dtype).eps`` there; the iteration itself runs in float32.
        max_iter: iteration cap (default 2n; exact arithmetic needs at most n).
        check_every: read the convergence test on the host every this many iterations, from the first on (default:
            every iteration on the CPU, where the read is free; every 8 on accelerators, where each read waits for the
            device). Extra iterations after convergence only refine the solution.

    Returns:
        ``(u, iterations, relative_residual)`` with the per-row relative residual (B,).
    """
    if max_iter is None:
        max_iter = 2 * b.shape[1]
    if check_every is None:
        check_every = 1 if b.device.type == "cpu" else 8
    dtype = b.dtype
    if dtype in (torch.float16, torch.bfloat16):
        tol = max(tol, 8 * torch.finfo(dtype).eps)
        half_matvec = matvec
        matvec = lambda v: half_matvec(v.to(dtype)).float()  # noqa: E731
        b = b.float()
    u = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = (r * r).sum(1)
    b_norm = b.norm(dim=1).clamp_min(torch.finfo(b.dtype).tiny)
    iterations = 0
    # No read before the first iteration: only b = 0 would converge there, and one more iteration leaves it at 0.
    while iterations < max_iter and (iterations % check_every or iterations == 0
                                     or bool((rs.sqrt() > tol * b_norm).any())):
        ap = matvec(p)
        curvature = (p * ap).sum(1)
        # Rows that have converged (or hit an exactly singular direction) stop moving.
        alpha = torch.where(curvature > 0, rs / curvature.clamp_min(torch.finfo(b.dtype).tiny), torch.zeros_like(rs))
        u = u + alpha[:, None] * p
        r = r - alpha[:, None] * ap
        rs_new = (r * r).sum(1)
        p = r + (rs_new / rs.clamp_min(torch.finfo(b.dtype).tiny))[:, None] * p
        rs = rs_new
        iterations += 1
    return u.to(dtype), iterations, rs.sqrt() / b_norm


def rectangular_flow_surrogate(
    x: Tensor,
    encode: Function,
    decode: Function,
    *,
    n_hutchinson: int = 1,
    noise: NoiseKind = "orthogonal",
    jacobian_at: Literal["x", "x_hat"] = "x",
    grad_to: Literal["encoder", "decoder"] = "decoder",
    cg_tol: float = 1e-6,
    cg_max_iter: int | None = None,
    through_latent: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor | int]]:
    r"""Rectangular-flow surrogate (Caterini et al. 2021; FIF eq. 6) with conjugate gradient.

    Decoder side (default, Caterini et al.), with :math:`J = g'(z)` at ``z.detach()``:

    .. math:: s = \frac1{2K}\sum_k \mathrm{sg}\big(\mathrm{CG}(J^\top J; \epsilon_k)\big)^\top J^\top J\, \epsilon_k,
              \qquad \nabla_\theta s \approx \nabla_\theta \tfrac12 \log\det(J^\top J).

    Encoder side (``grad_to="encoder"``), with :math:`F = f'(p)` at ``p = x`` (off-manifold, like FIF eq. 15)
    or ``p = x̂.detach()`` (on-manifold, like eq. 10):
    :math:`s = -\frac1{2K}\sum_k \mathrm{sg}(\mathrm{CG}(FF^\top;\epsilon_k))^\top FF^\top\epsilon_k`, whose
    gradient is :math:`-\nabla_\phi \tfrac12\log\det(FF^\top)`. These are the "RF on/off-manifold" rows of FIF
    table 6: the exact-gradient counterpart of the FIF surrogate.

    Only JVP/VJP products are used (each CG iteration costs one of each, on graphs built once); the CG solution is
    stop-gradient. As with :func:`volume_change_surrogate` the NLL is :math:`-\log p_Z(z) + s`.

    ``through_latent=True`` (decoder side only) takes :math:`J` at ``z`` itself instead of ``z.detach()``, so the
    gradient also flows through :math:`z = f(x)` into the encoder: the full gradient of
    :math:`\tfrac12\log\det(J^\top J)|_{z=f(x)}`, as Caterini et al.'s rectangular flows compute it, where
    :math:`f = \mathrm{slice}\circ w^{-1}` shares its parameters with :math:`g = w\circ\mathrm{pad}`
    (:class:`injflow.methods.RectangularNF`). The default keeps the encoder out of this term (FIF eq. 4-6 take the
    derivative with respect to the decoder's parameters only).

    Returns:
        ``(z, x_hat, surrogate, info)`` with ``info = {"cg_iterations": int, "cg_residual": (B,) relative
        residuals}``.
    """
    _choice("jacobian_at", jacobian_at, _JACOBIAN_AT)
    _choice("grad_to", grad_to, _GRAD_TO)
    if grad_to == "decoder" and jacobian_at != "x":
        raise ValueError(
            "jacobian_at='x_hat' only applies to grad_to='encoder': the decoder Jacobian is always taken at "
            "z = f(x); the on/off-manifold comparison of FIF table 6 concerns the encoder Jacobian"
        )
    if through_latent and grad_to != "decoder":
        raise ValueError("through_latent=True applies only to grad_to='decoder' (the decoder Jacobian at z = f(x))")
    _check_data(x)
    if grad_to == "decoder":
        _warn_fused_batchnorm(decode, path="the decoder-side rectangular-flow surrogate")
    needs_x_graph = grad_to == "encoder" and jacobian_at == "x" and not x.requires_grad
    x_in = x.detach().requires_grad_(True) if needs_x_graph else x
    z = encode(x_in)
    d = _check_latent(z, x)
    x_hat = _check_reconstruction(decode(z), x)
    eps = sample_noise(x.shape[0], (d,), n_hutchinson, noise, dtype=z.dtype, device=z.device, generator=generator)

    if grad_to == "decoder":
        if through_latent and z.requires_grad:
            point, out = z, x_hat  # J at z = f(x) with its graph: the log-det gradient reaches the encoder too
        else:
            point = z.detach().requires_grad_(True)
            out = decode(point)  # graph for JᵀJ products; J at z.detach() keeps the encoder out of this term
        decoder_jvp = reverse_jvp_operator(out, point, name="decode")
        gram = lambda v: vjp(out, point, decoder_jvp(v), name="decode")  # noqa: E731  JᵀJ v
        image = lambda v: decoder_jvp(v, create_graph=True)  # noqa: E731  J v, differentiable
        sign = 0.5
    else:
        point, out = _encoder_point(x_in, z, x_hat, encode, jacobian_at, reverse=True)
        encoder_jvp = reverse_jvp_operator(out, point, name="encode")
        gram = lambda v: encoder_jvp(vjp(out, point, v, name="encode"))  # noqa: E731  F Fᵀ v
        image = lambda v: vjp(out, point, v, create_graph=True, name="encode")  # noqa: E731  Fᵀ v, differentiable
        sign = -0.5

    terms, iterations, residuals = [], 0, []
    for e in eps:
        solution, its, residual = conjugate_gradient(gram, e, tol=cg_tol, max_iter=cg_max_iter)
        iterations = max(iterations, its)
        residuals.append(residual)
        # sg(u)ᵀ AᵀA-type product, written as ⟨J sg(u), J ε⟩ so each factor is one differentiable product.
        terms.append(_dot(image(solution.detach()), image(e)))
    surrogate = sign * torch.stack(terms).mean(0)
    return z, x_hat, surrogate, {"cg_iterations": iterations, "cg_residual": torch.stack(residuals).amax(0)}


# --------------------------------------------------------------------------------------------------------------
# Exact Jacobians and log-volumes (evaluation, references, and training when d is small)
# --------------------------------------------------------------------------------------------------------------


def _chunks(d: int, batch_size: int, chunk_size: int | None) -> list[tuple[int, int]]:
    if chunk_size is None:
        # Bound the expanded batch (chunk × B) so memory stays about that of a 2048-sample forward pass.
        chunk_size = max(1, min(d, 2048 // max(batch_size, 1)))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return [(start, min(start + chunk_size, d)) for start in range(0, d, chunk_size)]


def decoder_jacobian(decode: Function, z: Tensor, *, chunk_size: int | None = None) -> Tensor:
    r"""Full decoder Jacobian :math:`g'(z)` per sample, shape (B, D, d), by forward mode.

    Vectorised by expanding the batch: a chunk of c latent directions is one forward pass on c copies of the
    batch with one-hot tangents (copies leave BatchNorm batch statistics unchanged). Differentiable w.r.t. the
    decoder parameters and z while gradients are enabled. With BatchNorm in *training* mode the result is not a
    per-sample Jacobian: every sample of a copy moves in the same direction, so the batch statistics absorb part
    of the shift (all of it right after a linear layer), and the result depends on ``chunk_size``. Use eval mode.
    """
    if z.ndim != 2:
        raise ValueError(f"z must have shape (B, d), got {tuple(z.shape)}")
    batch, d = z.shape
    if z.requires_grad or any(p.requires_grad for p in getattr(decode, "parameters", lambda: [])()):
        _warn_fused_batchnorm(decode, path="the differentiable decoder Jacobian")
    columns = []
    for start, stop in _chunks(d, batch, chunk_size):
        c = stop - start
        eye = torch.eye(d, dtype=z.dtype, device=z.device)[start:stop]  # (c, d)
        tangent = eye[:, None, :].expand(c, batch, d).reshape(c * batch, d)
        primal = z.unsqueeze(0).expand(c, batch, d).reshape(c * batch, d)
        _, out = jvp(decode, primal, tangent, name="decode")
        columns.append(out.reshape(c, batch, -1).permute(1, 2, 0))
    return torch.cat(columns, dim=2)


def encoder_jacobian(encode: Function, x: Tensor, *, chunk_size: int | None = None) -> Tensor:
    r"""Full encoder Jacobian :math:`f'(x)` per sample, shape (B, d, D), by reverse mode on an expanded batch.

    The first pass (one copy of the batch) yields row 0 and d; the other rows come in chunks of c copies with
    one-hot cotangents. Differentiable w.r.t. the encoder parameters (and x if it requires grad) while gradients
    are enabled.
    """
    _check_data(x)
    batch = x.shape[0]
    create_graph = torch.is_grad_enabled()

    def rows(start: int, stop: int | None) -> tuple[Tensor, int]:
        c = 1 if stop is None else stop - start
        expanded = x.unsqueeze(0).expand(c, *x.shape).reshape(c * batch, *x.shape[1:])
        if not expanded.requires_grad:
            expanded = expanded.detach().requires_grad_(True)
        z = encode(expanded)
        d = z.shape[1]
        eye = torch.eye(d, dtype=z.dtype, device=z.device)[start : start + c]
        cotangent = eye[:, None, :].expand(c, batch, d).reshape(c * batch, d)
        grad = vjp(z, expanded, cotangent, create_graph=create_graph, name="encode")
        return grad.reshape(c, batch, -1).permute(1, 0, 2), d

    first, d = rows(0, None)
    blocks = [first] + [rows(start + 1, stop + 1)[0] for start, stop in _chunks(d - 1, batch, chunk_size)]
    return torch.cat(blocks, dim=1)


#: Below this ratio of the smallest to the largest diagonal entry of the Cholesky factor of JᵀJ, the log-determinant
#: is recomputed by QR (the squared condition number of the Gram matrix would cost digits).
CHOLESKY_MIN_RATIO = 1e-6


def _half_log_det_gram(jacobian: Tensor, dtype: torch.dtype | None, method: str | None = None) -> Tensor:
    r""":math:`\tfrac12\log\det(J^\top J)` for tall J (B, n, m), n ≥ m.

    ``method="qr"`` (the CPU's): :math:`\sum_i \log|R_{ii}|` of J = QR, which avoids forming the Gram matrix (that
    squares the condition number). ``method="cholesky"`` (accelerators' default in float64): :math:`\sum_i \log L_{ii}`
    of :math:`J^\top J = LL^\top`, one batched launch where cuSOLVER runs a batched QR as one launch per matrix.
    Forming the Gram matrix in float64 adds a relative error of about :math:`10^{-16}\kappa^2` to its smallest
    eigenvalue, below the :math:`10^{-7}\kappa` a float32 Jacobian carries already while :math:`\kappa < 10^8`; rows
    with :math:`\min_i L_{ii} / \max_i L_{ii} < 10^{-6}` (roughly κ > 1e6) or a failed factorisation are
    recomputed by QR (one host read per call: evaluation and exact training only).
    """
    source = jacobian.dtype
    j = jacobian if dtype is None else jacobian.to(dtype)
    if method is None:
        method = "cholesky" if j.device.type != "cpu" and j.dtype == torch.float64 else "qr"
    if method == "cholesky":
        factor, info = torch.linalg.cholesky_ex(j.mT @ j)
        diagonal = factor.diagonal(dim1=-2, dim2=-1)
        half_log_det = diagonal.log().sum(-1)
        failed = (info > 0) | ~(diagonal.amin(-1) >= CHOLESKY_MIN_RATIO * diagonal.amax(-1))
        if bool(failed.any()):
            qr = torch.linalg.qr(j[failed]).R.diagonal(dim1=-2, dim2=-1).abs().log().sum(-1)
            half_log_det = half_log_det.masked_scatter(failed, qr)
        return half_log_det.to(source)
    r = torch.linalg.qr(j).R
    return r.diagonal(dim1=-2, dim2=-1).abs().log().sum(-1).to(source)


def decoder_log_volume(
    decode: Function, z: Tensor, *, chunk_size: int | None = None, dtype: torch.dtype | None = torch.float64
) -> Tensor:
    r"""Exact :math:`\tfrac12 \log\det(g'(z)^\top g'(z))` per sample, shape (B,), differentiable.

    With it, the exact on-manifold log-density of :math:`\hat x = g(z)` is
    :math:`\log p_Z(z) - \tfrac12\log\det(g'^\top g')` (FIF eq. 2). ``dtype`` sets the precision of the
    determinant (float64 by default; ``None`` keeps the Jacobian's dtype). Cost: d forward-mode passes.

    Example:
        >>> dec = torch.nn.Linear(2, 5, bias=False)
        >>> w = dec.weight.detach()
        >>> torch.allclose(decoder_log_volume(dec, torch.randn(3, 2)), 0.5 * torch.logdet(w.T @ w).expand(3), atol=1e-5)
        True
    """
    return _half_log_det_gram(decoder_jacobian(decode, z, chunk_size=chunk_size), dtype)


def encoder_log_volume(
    encode: Function, x: Tensor, *, chunk_size: int | None = None, dtype: torch.dtype | None = torch.float64
) -> Tensor:
    r"""Exact :math:`\tfrac12 \log\det(f'(x) f'(x)^\top)` per sample, shape (B,), differentiable.

    For a consistent pair (f' = pseudo-inverse of g') this is :math:`-\tfrac12\log\det(g'^\top g')` (FIF eq. 31);
    off the manifold it is the volume term of the off-manifold loss (FIF eq. 46).
    """
    return _half_log_det_gram(encoder_jacobian(encode, x, chunk_size=chunk_size).transpose(1, 2), dtype)


def log_abs_det_jacobian(
    fn: Function, x: Tensor, *, chunk_size: int | None = None, dtype: torch.dtype | None = torch.float64
) -> Tensor:
    r"""Exact :math:`\log|\det f'(x)|` per sample for a square map :math:`f: \mathbb R^D \to \mathbb R^D`, shape (B,).

    The change of variables of a normalizing flow, :math:`\log p(x) = \log p_Z(f(x)) + \log|\det f'(x)|`, for
    free-form flows at d = D (FFF). One ``slogdet`` of the full D × D Jacobian (:func:`encoder_jacobian`, reverse
    mode, chunked) — not :math:`\tfrac12\log\det(J^\top J)`, which squares the condition number and costs a
    second product. ``dtype`` sets the precision of the determinant (float64 by default; ``None`` keeps the
    Jacobian's dtype). Differentiable w.r.t. ``fn``'s parameters (and x if it requires grad) while gradients are
    enabled, so it also trains small-D flows exactly. Cost: D backward passes over the batch.

    Arguments:
        fn: the map, (B, *data_shape) -> (B, D) with D = prod(data_shape) (e.g. an FFF encoder).
        x: points (B, *data_shape).
        chunk_size: Jacobian rows per pass (bounds memory).
        dtype: precision of the determinant.

    Example:
        >>> a = torch.tensor([[2.0, 1.0], [0.0, 3.0]])
        >>> log_abs_det_jacobian(lambda v: v @ a.T + 1.0, torch.randn(4, 2))  # log 6 at every point
        tensor([1.7918, 1.7918, 1.7918, 1.7918])
    """
    jacobian = encoder_jacobian(fn, x, chunk_size=chunk_size)
    if jacobian.shape[1] != jacobian.shape[2]:
        raise ValueError(
            f"log_abs_det_jacobian needs a square map (output dimension = input dimension = {jacobian.shape[2]}), got "
            f"output dimension {jacobian.shape[1]}; for d < D use encoder_log_volume / decoder_log_volume"
        )
    source = jacobian.dtype
    square = jacobian if dtype is None else jacobian.to(dtype)
    return torch.linalg.slogdet(square).logabsdet.to(source)
