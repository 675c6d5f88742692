r"""What the engine does differently on several processes (Lightning DDP): every decision that leads to a collective
is taken collectively, and every process has random streams of its own.

Why each piece exists (each was reproduced with two gloo processes on a CPU before it was fixed; tests/test_ddp.py):

- A checkpoint write ends in a barrier. A process that decides *on its own clock* to write one (``RunCheckpoints``'
  time interval) while the other does not leaves the two in different collectives: the run hangs.
  :func:`any_process` makes such decisions one all-reduce.
- A checkpoint of non-finite weights is refused by the process that writes the file (rank 0), before the barrier
  the others wait in: rank 0 raised the clear error and rank 1 died of a closed connection (gloo) or waited for the
  collective timeout (NCCL). :func:`check_finite_state` checks on every process and raises on every process.
- Every process was seeded alike, so every process drew the same Hutchinson and input noise: K samples on N
  processes were K samples, not N·K. :func:`process_seed` gives process ``r`` its own stream (rank 0 keeps the
  single-process stream, so one process and rank 0 of many draw alike), and the checkpoint holds every process's
  RNG state (:func:`gather_rng_states`), so a resumed process continues its own stream.
- A method whose objective leaves some parameters without a gradient at some steps (Trumpet's two stages) makes
  DDP raise at the next step unless unused parameters are declared: :func:`resolve_strategy` declares them for
  methods with :attr:`~injflow.methods.Method.unused_parameters`.
"""

from __future__ import annotations

import hashlib
import warnings
from typing import Any

import torch
from torch import Tensor

from ..errors import NonFiniteStateError

__all__ = [
    "process_seed",
    "rank_and_world",
    "any_process",
    "resolve_strategy",
    "non_finite_state",
    "check_finite_state",
    "rng_state",
    "set_rng_state",
    "gather_rng_states",
    "own_rng_state",
]

#: Lightning's DDP strategy names that have a ``*_find_unused_parameters_true`` twin.
_DDP_NAMES = ("ddp", "ddp_spawn", "ddp_fork")


def process_seed(seed: int, rank: int) -> int:
    """The seed of process ``rank``'s random stream: ``seed`` itself on rank 0 (the single-process stream), a hash of
    ``(seed, rank)`` elsewhere, so no two processes draw the same noise.

    Example:
        >>> process_seed(7, 0), process_seed(7, 1) != process_seed(7, 2)
        (7, True)
    """
    if rank == 0:
        return int(seed)
    digest = hashlib.sha256(f"injflow-process-seed:{int(seed)}:{int(rank)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # 63 bits: a valid torch seed


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process in the default process group (``(0, 1)`` without one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def any_process(trainer: Any, flag: bool) -> bool:
    """Whether ``flag`` holds on any process (one all-reduce under DDP; the flag itself on one process)."""
    if trainer.world_size <= 1:
        return bool(flag)
    return bool(trainer.strategy.reduce_boolean_decision(bool(flag), all=False))


def _several_devices(train: Any) -> bool:
    """Whether ``train.devices`` × ``train.num_nodes`` asks for more than one process."""
    if train.num_nodes > 1:
        return True
    devices = train.devices
    if isinstance(devices, int):
        if devices != -1:
            return devices > 1
    elif devices != "auto":
        return len([d for d in devices.split(",") if d.strip()]) > 1
    # -1 or "auto": every device of the accelerator (Lightning: one process on the CPU).
    if train.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.cuda.device_count() > 1
    return False


def resolve_strategy(train: Any, method: Any) -> str:
    """Lightning's strategy for ``train.strategy``: its ``*_find_unused_parameters_true`` twin when the method leaves
    parameters without gradients (:attr:`~injflow.methods.Method.unused_parameters`) and the run uses DDP.

    Example:
        >>> from injflow.config import TrainConfig
        >>> from injflow.methods import build_method
        >>> resolve_strategy(TrainConfig(devices=2, strategy="ddp"), build_method("trumpet"))
        'ddp_find_unused_parameters_true'
        >>> resolve_strategy(TrainConfig(devices=2, strategy="ddp"), build_method("fif"))
        'ddp'
    """
    strategy = train.strategy
    if not getattr(method, "unused_parameters", False):
        return strategy
    if strategy in _DDP_NAMES:
        return f"{strategy}_find_unused_parameters_true"
    if strategy == "auto" and _several_devices(train):
        return "ddp_find_unused_parameters_true"  # what Lightning's "auto" picks for several devices in a script
    return strategy


def _floating_state(pl_module: Any, trainer: Any) -> list[tuple[str, Tensor]]:
    named = [(k, v) for k, v in pl_module.state_dict().items() if isinstance(v, Tensor)]
    for i, opt in enumerate(trainer.optimizers):
        for pid, state in enumerate(opt.state.values()):
            named += [(f"optimizer[{i}].state[{pid}].{k}", v) for k, v in state.items() if isinstance(v, Tensor)]
    return [(k, v) for k, v in named if v.is_floating_point() and v.numel()]


def non_finite_state(trainer: Any, pl_module: Any) -> list[str]:
    """Names of this process's weights, buffers and optimiser moments that hold NaN or inf (one host read per device:
    Adam's step counters live on the host, the rest on the training device)."""
    named = _floating_state(pl_module, trainer)
    by_device: dict[torch.device, list[Tensor]] = {}
    for _, v in named:
        by_device.setdefault(v.device, []).append(torch.isfinite(v).all())
    if all(bool(torch.stack(flags).all()) for flags in by_device.values()):
        return []
    return [k for k, v in named if not bool(torch.isfinite(v).all())]


def check_finite_state(trainer: Any, pl_module: Any, path: Any) -> None:
    """Raises :class:`~injflow.errors.NonFiniteStateError` on *every* process when the weights or optimiser state of
    any process hold NaN/inf, before a checkpoint write (whose barrier would otherwise wait for a process that
    stopped)."""
    bad = non_finite_state(trainer, pl_module)
    if not any_process(trainer, bool(bad)):
        return
    from pathlib import Path

    where = (f"{len(bad)} tensors, e.g. {', '.join(bad[:3])}" if bad
             else f"on another process (of {trainer.world_size})")
    raise NonFiniteStateError(
        f"the weights became non-finite by optimiser step {trainer.global_step} ({where}): a NaN/inf gradient or "
        f"learning rate; {Path(path).name} was not written, so the previous checkpoint is the last good one. Try a "
        f"lower optim.lr, optim.grad_clip, or a higher method.beta."
    )


def rng_state() -> dict[str, Any]:
    """This process's torch RNG states: the CPU one and, once CUDA is in use, every CUDA device's."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what :func:`rng_state` returned (or seeds every device from ``{"seed": s}``)."""
    if "seed" in state:
        torch.manual_seed(state["seed"])
        return
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng_states() -> list[dict[str, Any]]:
    """Every process's :func:`rng_state`, in rank order (a collective under DDP: every process must call it)."""
    import torch.distributed as dist

    own = rng_state()
    rank, world = rank_and_world()
    if world == 1:
        return [own]
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, own)
    return gathered


def own_rng_state(saved: dict[str, Any], seed: int, step: int) -> dict[str, Any]:
    """The RNG state this process resumes from a checkpoint's ``injflow_rng`` entry.

    Rank ``r`` takes the state saved for rank ``r``. A checkpoint of a run on another number of processes has none
    for some ranks: those (rank > 0) start a fresh stream (``{"seed": ...}`` from :func:`process_seed` and the
    step), with a warning, since the resumed run can then not repeat the uninterrupted one's noise.
    """
    rank, world = rank_and_world()
    ranks = saved.get("ranks")
    if ranks is not None and len(ranks) == world:
        return ranks[rank]
    if rank == 0:
        return {k: v for k, v in saved.items() if k != "ranks"}
    saved_world = len(ranks) if ranks is not None else 1
    warnings.warn(f"the checkpoint holds the random streams of {saved_world} process(es), this run has {world}: "
                  f"process {rank} starts a new stream (the noise differs from an uninterrupted run)",
                  RuntimeWarning, stacklevel=2)
    return {"seed": process_seed(seed + int(step), rank)}
