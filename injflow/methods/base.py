r"""The method interface: one training objective as hyper-parameters + schedules, never networks.

A *method* turns a batch into a dict of loss terms. The engine (:mod:`injflow.train`) owns the
networks, the latent distribution, the optimiser and the loop; it calls

.. code-block:: python

    terms = method.loss(batch, clock, model)   # model.encode, model.decode, model.latent

and minimises ``terms["loss"].mean()``. Every other entry is logged (its mean when per-sample). ``clock`` is a
:class:`Clock` — the optimiser step, the run's length and the spent share of a wall-clock budget — handed in as an
argument: a method holds hyper-parameters only, nothing the engine writes into it while training.
New objectives subclass :class:`Method`, declare their hyper-parameters as dataclass fields (the config
validator reads their names, types and defaults) and register themselves with :func:`register_method`.
The config holds the method object itself (:attr:`injflow.config.Config.method`): it is built once, when the config
is validated, and saved with every checkpoint as its options.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

from torch import Tensor

from ..registry import Registry
from .schedules import Schedule, as_schedule

__all__ = ["Clock", "Method", "ModelLike", "register_method", "build_method", "method_class", "METHODS"]


class ModelLike(Protocol):
    """What a method may use from the model: the two maps and the latent distribution."""

    latent: Any

    def encode(self, x: Tensor) -> Tensor: ...

    def decode(self, z: Tensor) -> Tensor: ...


@dataclasses.dataclass(frozen=True)
class Clock:
    """Where training stands when a loss is evaluated: what schedules and staged methods read.

    Arguments:
        step: The optimiser step (0 at the first update).
        total_steps: The run's number of optimiser steps (``None``: unknown, e.g. a wall-clock budget).
        progress: The spent share of a wall-clock budget (``train.max_time``) in [0, 1]; ``None`` for runs measured in
            steps.

    Example:
        >>> Clock.of(3)
        Clock(step=3, total_steps=None, progress=None)
    """

    step: int = 0
    total_steps: int | None = None
    progress: float | None = None

    @classmethod
    def of(cls, clock: Clock | int) -> Clock:
        """``clock`` itself, or a clock at step ``clock`` of a run of unknown length (a plain int is a step)."""
        return clock if isinstance(clock, Clock) else cls(int(clock))


#: Registered methods by config name.
METHODS: Registry[type[Method]] = Registry("method")


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator registering a :class:`Method` under a config name.

    Example:
        >>> @register_method("my_ae")
        ... @dataclasses.dataclass
        ... class MyAE(Method):
        ...     def loss(self, batch, clock, model):
        ...         r = (model.decode(model.encode(batch)) - batch).flatten(1).pow(2).sum(1)
        ...         return {"loss": r, "reconstruction": r}
    """

    def deco(cls: type[Method]) -> type[Method]:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"method {cls.__name__} must be a dataclass")
        cls.name = name
        return METHODS.register(name, cls)

    return deco


def method_class(name: str) -> type[Method]:
    """The method class registered under ``name``."""
    return METHODS[name]


def build_method(name: str, **options: Any) -> Method:
    """Builds a registered method from its keyword options (validated by the dataclass)."""
    return METHODS.build(name, **options)


@dataclasses.dataclass
class Method:
    """Base class of all training objectives.

    Subclasses are dataclasses; fields are hyper-parameters. A field whose value may be a schedule
    (a number or ``{schedule: ..., ...}``) is read at a :class:`Clock` with :meth:`weight`.

    Attributes:
        schedules: The :class:`~injflow.methods.schedules.Schedule` of each field named in :attr:`scheduled`
            (derived from the fields, read-only).
    """

    name: ClassVar[str] = "method"
    #: Names of fields that accept a schedule; they are logged at every step.
    scheduled: ClassVar[tuple[str, ...]] = ()
    #: Whether some steps' objective leaves parameters without a gradient (e.g. Trumpet's stages): DDP must then be
    #: told (``find_unused_parameters``, :func:`injflow.train.distributed.resolve_strategy`).
    unused_parameters: ClassVar[bool] = False

    def __post_init__(self) -> None:
        self.schedules: dict[str, Schedule] = {k: as_schedule(getattr(self, k), k) for k in self.scheduled}

    def weight(self, key: str, clock: Clock | int) -> float:
        """The value of the scheduled hyper-parameter ``key`` at ``clock`` (a :class:`Clock` or a step)."""
        clock = Clock.of(clock)
        return self.schedules[key](clock.step, clock.total_steps, clock.progress)

    def weights(self, clock: Clock | int) -> dict[str, float]:
        """All scheduled hyper-parameters at ``clock`` (for logging)."""
        return {k: self.weight(k, clock) for k in self.scheduled}

    def schedules_over_run(self) -> list[str]:
        """The scheduled fields whose schedule stretches over the whole run (so a longer run bends them)."""
        return [k for k, s in self.schedules.items() if s.spans_run]

    def check(self, *, latent_dim: int, data_dim: int) -> None:
        """Raises ``ValueError("<field>: ...")`` when a hyper-parameter is impossible for these dimensions."""

    def prepare(self, model: ModelLike) -> None:
        """Changes the model's nets in place for this method (idempotent); default: nothing.

        The engine calls it on every model it builds or loads for this method, before the optimiser and the
        EMA copy exist, so checkpoints and saved models match (e.g. AE+SN's spectral norm, a VAE's posterior
        network).
        """

    def finalize(self, model: ModelLike) -> None:
        """Optionally turns a trained model into plain nets, undoing :meth:`prepare`; default: nothing."""

    def loss(self, batch: Tensor, clock: Clock | int, model: ModelLike) -> dict[str, Tensor]:
        r"""The loss terms for one batch.

        Arguments:
            batch: Data, shape ``(B, *data_shape)``.
            clock: Where training stands (:class:`Clock`; a plain int is the step of a run of unknown length).
            model: Provides ``encode``, ``decode`` and ``latent``.

        Returns:
            A dict of per-sample ``(B,)`` or scalar tensors. It must contain ``"loss"`` (what the engine minimises,
            its mean), ``"reconstruction"`` (:math:`\|g(f(x)) - x\|^2` summed over data dimensions) and
            ``"latent_sq_norm"`` (:math:`\|f(x)\|^2`, detached), so any two methods compare on one split; the
            engine checks this before training. Every other entry is logged too.
        """
        raise NotImplementedError  # pragma: no cover

    def options(self) -> dict[str, Any]:
        """The hyper-parameters as a plain dict (the config's ``method`` section minus ``name``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
