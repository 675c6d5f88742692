r"""The grid: a spec's trials (the cartesian product of its grid keys, per grid entry) with stable names.

A trial is a base config plus overrides: the spec's ``set`` and one value per grid key. Its name is made from its
grid values only (``beta10-seed0``; a config file by its stem, ``kumar-mnist-vae``), so the same spec gives the
same names on every machine and on ``--resume``; its group is made from the values of the spec's ``group`` keys.
Every trial's config is validated here, before anything runs: a mistake shared by every trial (in the base config
or ``set``) refuses the spec, one in a single grid point marks that trial invalid (it is reported, the others run).

:func:`trial_overrides` is the one place that turns a trial into the ``--set`` list it is trained with.

Example:
    >>> from injflow.sweep.spec import spec_from_dict
    >>> spec = spec_from_dict({"grid": {"method.beta": [1, 10], "train.seed": [0]}, "group": ["method.beta"]},
    ...                       name="demo")
    >>> [(t.name, t.group) for t in expand_grid(spec, check=False)]
    [('beta1-seed0', 'beta=1'), ('beta10-seed0', 'beta=10')]
    >>> expand_grid(spec, check=False)[1].overrides
    ('method.beta=10', 'train.seed=0')
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .spec import SpecError, SweepSpec

__all__ = ["Trial", "expand_grid", "trial_overrides", "value_label", "CHECKPOINT_EVERY_N_STEPS"]

#: ``train.checkpoint_every_n_steps`` of a trial whose spec does not set it: a killed trial loses at most this many
#: steps (the engine's own default writes checkpoints at epoch ends only).
CHECKPOINT_EVERY_N_STEPS = 50
_MAX_NAME = 120


@dataclass(frozen=True)
class Trial:
    """One training run of a sweep.

    Arguments:
        name: Its folder name under ``DIR/trials/``.
        config: The base config (an absolute path).
        overrides: The spec's ``set`` and the trial's grid values, as ``key=value`` overrides.
        values: The grid values (grid key → value; ``config`` → the file's stem), for the tables.
        group: The selection group it belongs to.
        error: Why its config is invalid (``None`` if it is valid); an invalid trial is reported, never run.
    """

    name: str
    config: str
    overrides: tuple[str, ...]
    values: dict[str, Any] = field(default_factory=dict)
    group: str = "all"
    error: str | None = None

    def identity(self) -> dict[str, Any]:
        """What makes the trial (its folder must have been made from the same): the config and the overrides."""
        return {"name": self.name, "config": self.config, "overrides": list(self.overrides)}


def value_label(value: Any) -> str:
    """A grid value as it appears in names: numbers compactly, strings as they are, ``config`` paths by stem.

    Example:
        >>> value_label(0.0001), value_label(10), value_label(True), value_label("configs/x/kumar-mnist-vae.yaml")
        ('0.0001', '10', 'true', 'kumar-mnist-vae')
    """
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return f"{value:g}"
    if isinstance(value, str) and value.endswith((".yaml", ".yml")):
        return Path(value).stem
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _yaml_value(value: Any) -> str:
    """A value as the right-hand side of an override (YAML flow style: ``{a: 1}``, ``[1, 2]``, ``0.001``)."""
    import yaml

    if isinstance(value, (dict, list)):
        return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _short_keys(spec: SweepSpec) -> dict[str, str]:
    """Grid key → its short name in trial names: the last part (``method.beta`` → ``beta``), or the whole key
    (dots as ``_``) where two keys would share one."""
    keys = list(dict.fromkeys(k for entry in spec.grid for k in entry if k != "config"))
    last = {k: k.split(",")[0].strip().rsplit(".", 1)[-1] for k in keys}
    shared = {s for s in last.values() if list(last.values()).count(s) > 1}
    return {k: (re.sub(r"[.,]", "_", k) if last[k] in shared else last[k]) for k in keys}


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+=-]", "_", text)


def _part(short: str, key: str, value: Any, index: int) -> str:
    if key == "config":
        return _safe(value_label(value))
    if isinstance(value, (dict, list)):
        return _safe(f"{short}{index}")  # a mapping value by its position in the list
    label = value_label(value)
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return _safe(f"{short}{label}" if numeric else f"{short}={label}")


def _name(parts: list[str]) -> str:
    name = "-".join(parts) or "trial"
    if len(name) > _MAX_NAME:
        name = f"{name[:_MAX_NAME - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name


def expand_grid(spec: SweepSpec, *, check: bool = True) -> list[Trial]:
    """The spec's trials, in the spec's order (entries in turn, the last key varying fastest).

    Arguments:
        spec: A validated spec.
        check: Validate every trial's config (``injflow.config.load_config``): a mistake in the base config or
            ``set`` raises :class:`~injflow.sweep.spec.SpecError`; one in a grid point sets that trial's ``error``.

    Raises:
        SpecError: two grid points give the same trial name, or every trial shares a config mistake.
    """
    short = _short_keys(spec)
    trials: list[Trial] = []
    for entry in spec.grid:
        keys = list(entry)
        for combo in itertools.product(*(list(enumerate(entry[k])) for k in keys)):
            config = spec.config
            overrides = list(spec.set)
            values: dict[str, Any] = {}
            parts: list[str] = []
            for key, (index, value) in zip(keys, combo):
                parts.append(_part(short.get(key, key), key, value, index))
                if key == "config":
                    config = value
                    values[key] = value_label(value)
                    continue
                values[key] = value
                overrides += [f"{k.strip()}={_yaml_value(value)}" for k in key.split(",")]
            # a group key an entry does not set: the base config's stem, or the base value of the key
            group = ", ".join(
                value_label(config) if g == "config" else f"{short[g]}={value_label(values[g]) if g in values else 'base'}"
                for g in spec.group
            ) or "all"
            trials.append(Trial(_name(parts), config, tuple(overrides), values, group))
    names = [t.name for t in trials]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SpecError(f"sweep spec {spec.source or spec.name}: grid: several grid points are named {repeated[:3]}; "
                        f"grid entries must not repeat a point")
    return _checked(spec, trials) if check else trials


def _checked(spec: SweepSpec, trials: list[Trial]) -> list[Trial]:
    from ..config import load_config
    from ..errors import ConfigError

    for config in dict.fromkeys(t.config for t in trials):
        try:
            load_config(config, list(spec.set))
        except ConfigError as e:
            raise SpecError(f"sweep spec {spec.source or spec.name}: set: with {Path(config).name}: {e}") from None
    out = []
    for trial in trials:
        try:
            load_config(trial.config, list(trial.overrides))
        except ConfigError as e:
            trial = Trial(trial.name, trial.config, trial.overrides, trial.values, trial.group, f"ConfigError: {e}")
        out.append(trial)
    return out


def trial_overrides(trial: Trial, *, threads: int = 1, gpus: float = 0.0) -> list[str]:
    """The ``--set`` list a trial is trained with: the spec's ``set`` and the trial's grid values, then what the
    sweep adds — one progress line per trial instead of progress bars, ``threads`` torch threads (the CPUs Ray gives
    the trial), one GPU when ``gpus`` > 0 (Ray shares it between trials when ``gpus`` < 1), and a checkpoint every
    :data:`CHECKPOINT_EVERY_N_STEPS` steps unless the spec sets one (a killed trial resumes from it), and the trial's
    name, group and grid values as tracker tags (``train.tags``: with ``train.loggers: [..., mlflow]`` a sweep is one
    comparable table in MLflow's UI; a grid key's dots become colons, ``method:beta``).

    Example:
        >>> trial = Trial("beta10", "configs/default.yaml", ("method.beta=10",), {"method.beta": 10})
        >>> trial_overrides(trial, threads=2)  # doctest: +NORMALIZE_WHITESPACE
        ['method.beta=10', 'train.progress_bar=false', 'train.num_threads=2', 'train.checkpoint_every_n_steps=50',
         'train.tags.trial="beta10"', 'train.tags.method:beta="10"']
    """
    out = list(trial.overrides)
    keys = {o.split("=", 1)[0].strip() for o in out}
    out += ["train.progress_bar=false", f"train.num_threads={max(1, int(threads))}"]
    if gpus > 0:
        out += ["train.accelerator=gpu", "train.devices=1"]
    if "train.checkpoint_every_n_steps" not in keys:
        out.append(f"train.checkpoint_every_n_steps={CHECKPOINT_EVERY_N_STEPS}")
    tags = {"trial": trial.name, **({"group": trial.group} if trial.group not in ("", "all") else {}),
            **{str(k).replace(".", ":"): v for k, v in trial.values.items()}}
    out += [f"train.tags.{k}={json.dumps(str(v))}" for k, v in tags.items()]  # quoted: YAML keeps them strings
    return out
