r"""One small registry for everything a config names: methods, data sets, architectures, latents, samplers.

A :class:`Registry` maps a config name to a factory (a function or a class). The options a factory accepts
are read from its signature — keyword parameters of a function, ``__init__`` parameters of a class, fields of a
dataclass — minus the ``reserved`` ones the caller fills in itself (e.g. ``data_shape`` and ``latent_dim`` of an
architecture). So an unknown name or an unknown option is refused with the same wording everywhere, before any
work is done, and the documentation of the options is the factory's own signature.

Example:
    >>> shapes = Registry("shape")
    >>> @shapes.register("square")
    ... def square(*, side: float = 1.0) -> float:
    ...     return side * side
    >>> shapes.build("square", side=3.0)
    9.0
    >>> shapes.options("square")
    {'side': 1.0}
    >>> shapes.build("circle")
    Traceback (most recent call last):
    ...
    ValueError: unknown shape 'circle'; choose from: square
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from .errors import OptionError

__all__ = ["Registry"]

T = TypeVar("T", bound=Callable[..., Any])

_EMPTY = inspect.Parameter.empty


class Registry(Generic[T]):
    """Name → factory, with the accepted options read from each factory's signature.

    Arguments:
        kind: What the entries are, for messages (``"method"``, ``"data set"``, ...).
        reserved: Parameters the caller always passes itself; they are not options.
        normalise: Maps a user-given name to its registry key (default: unchanged).
    """

    def __init__(self, kind: str, *, reserved: tuple[str, ...] = (), normalise: Callable[[str], str] | None = None) -> None:
        self.kind = kind
        self.reserved = tuple(reserved)
        self._normalise = normalise or (lambda name: name)
        self._entries: dict[str, T] = {}
        self._presets: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ registration

    def register(self, name: str, factory: T | None = None, **preset: Any) -> Any:
        """Registers ``factory`` under ``name`` (as a decorator when ``factory`` is omitted).

        ``preset`` fixes option values for this name, making a named variant of a shared factory (e.g. the
        scikit-learn stand-ins are one loader with four presets); preset options are no longer options.
        """

        def add(obj: T) -> T:
            key = self._normalise(name)
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = obj
            if preset:
                self._presets[key] = dict(preset)
            return obj

        return add if factory is None else add(factory)

    # ------------------------------------------------------------------ lookup

    def key(self, name: str) -> str:
        """The registry key of ``name``; unknown names raise ``ValueError`` listing the known ones."""
        if not isinstance(name, str):
            raise ValueError(f"a {self.kind} name must be a string, got {type(name).__name__}")
        key = self._normalise(name)
        if key not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; choose from: {', '.join(self.names())}")
        return key

    def __getitem__(self, name: str) -> T:
        return self._entries[self.key(name)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._normalise(name) in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def preset(self, name: str) -> dict[str, Any]:
        """The option values fixed for ``name`` (empty for plain entries)."""
        return dict(self._presets.get(self.key(name), {}))

    # ------------------------------------------------------------------ options

    def options(self, name: str) -> dict[str, Any]:
        """The options ``name`` accepts, with their defaults (``inspect.Parameter.empty`` where required)."""
        key = self.key(name)
        factory = self._entries[key]
        fixed = self._presets.get(key, {})
        if dataclasses.is_dataclass(factory):
            params = {
                f.name: (f.default if f.default is not dataclasses.MISSING else
                         f.default_factory() if f.default_factory is not dataclasses.MISSING else _EMPTY)
                for f in dataclasses.fields(factory) if f.init
            }
        else:
            target = factory.__init__ if inspect.isclass(factory) else factory
            params = {
                p.name: p.default
                for p in inspect.signature(target).parameters.values()
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"
            }
        return {k: v for k, v in params.items() if k not in self.reserved and k not in fixed}

    def check_options(self, name: str, options: dict[str, Any]) -> None:
        """Raises :class:`~injflow.errors.OptionError` (a ``ValueError``) keyed by the first unknown option, listing the
        accepted ones."""
        allowed = self.options(name)
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise OptionError(f"unknown option {unknown[0]!r} for {self.kind} {self.key(name)!r}; it accepts: "
                              f"{', '.join(sorted(allowed)) or '(none)'}", key=unknown[0])

    def build(self, name: str, *args: Any, **options: Any) -> Any:
        """Checks ``options`` (all but the reserved ones) and calls the factory with ``args``, the preset and ``options``."""
        key = self.key(name)
        self.check_options(key, {k: v for k, v in options.items() if k not in self.reserved})
        return self._entries[key](*args, **{**self._presets.get(key, {}), **options})

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"
