r"""The sweep spec: a typed, validated description of a sweep, read from YAML before anything heavy is imported.

A spec names a base config (a path, as ``injflow fit`` takes it), overrides for every trial, a grid of config keys,
how the winner of each group is selected, and the evaluations::

    config: configs/small/fif-sinusoid.yaml      # the base config
    set: [train.max_epochs=5]                    # overrides for every trial
    grid: {method.beta: [1, 10, 100], train.seed: [0, 1]}   # the cartesian product of config keys
    group: [method.beta]                         # optional: select per group (default: one group)
    select: {metric: val/nll_D, mode: min}       # optional (this default); a list selects once per criterion
    evaluate: {n: 1000, samplers: [prior, gmm]}  # optional: scores every trial reports on the validation split
    test: {samplers: [gaussian, gmm]}            # optional: the selected trials' evaluation on the test split

``grid`` may also be a list of mappings: the union of their products (a method's own grid beside another's). A
grid key ``config`` chooses the base config per entry; a key naming several config keys separated by commas sets
them all to each value (``"method.mu.nu,method.mu_in.nu": [1.0, 1.3]``). ``select: all`` selects every finished
trial (a table without a search, e.g. one model per method and seed). Selection never looks at the test split
(FIF App. E.4: the model with the best *validation* FID is evaluated on the test split).

Without ``select`` the winner is the trial with the lowest validation ``nll_D``: the negative log-density of the
validation points in the data space, the learned manifold thickened by the off-manifold noise fitted on the training
split (:mod:`injflow.metrics.ambient`). Unlike the training terms (``val/nll`` of FIF is the surrogate's value, not a
likelihood) it compares trials of different ``latent_dim`` and β; the evaluation then scores it
(``evaluate: {nll_D: true}``, added whenever ``select`` names ``val/nll_D``).

Every mistake is a :class:`SpecError` naming the key, raised before Ray is imported.

Example:
    >>> spec = spec_from_dict({"grid": {"method.beta": [1, 10]}, "set": ["train.max_epochs=2"]}, name="demo")
    >>> spec.name, spec.select[0].metric, spec.evaluate.nll_D, [len(entry) for entry in spec.grid]
    ('demo', 'val/nll_D', True, [1])
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["SpecError", "Criterion", "Evaluation", "SweepSpec", "load_spec", "spec_from_dict", "default_dir", "FEATURES"]

#: Feature extractors of an evaluation: the offline Inception (FID) or 4×4-pooled pixels (a stand-in at smoke scale).
FEATURES = ("inception", "pixels")
_TOP_KEYS = ("name", "config", "set", "grid", "group", "select", "evaluate", "test")


class SpecError(ConfigError):
    """A sweep spec is malformed; the message names the spec and the key."""


@dataclass(frozen=True)
class Criterion:
    """What picks a group's winner: a reported metric (never a ``test/`` one) and whether lower or higher wins."""

    metric: str = "val/nll_D"
    mode: str = "min"

    def better(self, a: float, b: float) -> bool:
        """Whether ``a`` beats ``b``."""
        return a < b if self.mode == "min" else a > b


@dataclass(frozen=True)
class Evaluation:
    """Scores of a trained trial on one split (:func:`injflow.sweep.scoring.score_run`).

    Arguments:
        split: ``val`` (every trial; selection) or ``test`` (the selected trials only).
        n: Images (or points) per set: reference, reconstructions, and samples per sampler.
        samplers: Which samplers to score (``prior`` = the training latent, FIF's "N"; ``gaussian`` = the post-fit
            full-covariance Gaussian, Kumar's "N"; ``gmm``).
        reconstruction: Also score the reconstructions ("Rec.", Kumar table 1).
        disjoint: Reconstruct ``split[:n]`` and score against ``split[n:2n]`` (honest at small n); ``False`` is the
            papers' protocol (``split[:n]`` against itself, :func:`injflow.metrics.fid_protocol`).
        features: ``inception`` (FID) or ``pixels`` (4×4-pooled pixels: a smoke-scale stand-in, not FID).
        inception_score: Also the Inception Score, where a logits classifier exists (``$INJFLOW_IS_CLASSIFIER``).
        seed: Seed of the samples.
        fid_cache: Folder of cached reference statistics (default: the library's, ``$INJFLOW_CACHE_DIR/fid``).
        nll_D: Also the exact on-manifold NLL (``nll``) of ``split[:n]`` and its D-dimensional ``nll_D``
            (:func:`injflow.sweep.scoring.likelihood_scores`): the likelihood that compares latent dimensions.
    """

    split: str = "val"
    n: int = 1000
    samplers: tuple[str, ...] = ("prior", "gmm")
    reconstruction: bool = False
    disjoint: bool = True
    features: str = "inception"
    inception_score: bool = False
    seed: int = 0
    fid_cache: str | None = None
    nll_D: bool = False  # noqa: N815 (the metric's name)

    def sets(self) -> list[str]:
        """The scored sets: ``reconstruction`` (if asked) and the samplers."""
        return (["reconstruction"] if self.reconstruction else []) + list(self.samplers)

    def metric_names(self) -> list[str]:
        """The metrics it reports, prefixed by its split (``val/fid_gmm``, ``val/reconstruction_error``...)."""
        names = [f"{self.split}/fid_{s}" for s in self.sets()] + [f"{self.split}/reconstruction_error"]
        names += [f"{self.split}/nll", f"{self.split}/nll_D"] if self.nll_D else []
        return names + ([f"{self.split}/is_{s}" for s in self.sets()] if self.inception_score else [])

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["samplers"] = list(self.samplers)
        return d


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep spec (see the module docstring); paths are absolute.

    Arguments:
        name: The sweep's name (default: the spec file's stem); names the default folder ``runs/sweeps/<name>``.
        config: The base config (default: the embedded one, as ``injflow fit`` without CONFIG); a grid key
            ``config`` replaces it per entry.
        set: Overrides for every trial.
        grid: A list of entries, each an ordered mapping from a grid key (a config key, several tied by commas, or
            ``config``) to its values; the trials are the union of the entries' cartesian products.
        group: Grid keys whose values make the selection groups (empty: one group).
        select: The criteria (each selects one trial per group); empty with ``select_all``.
        select_all: Every finished trial is selected (``select: all``).
        evaluate: The validation evaluation every trial reports, or ``None``.
        test: The test evaluation of the selected trials, or ``None``.
        source: The spec file, if read from one.
    """

    name: str
    config: str = ""
    set: tuple[str, ...] = ()
    grid: tuple[dict[str, tuple[Any, ...]], ...] = ({},)
    group: tuple[str, ...] = ()
    select: tuple[Criterion, ...] = (Criterion(),)
    select_all: bool = False
    evaluate: Evaluation | None = None
    test: Evaluation | None = None
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data (YAML-ready; :func:`spec_from_dict` reads it back)."""
        out: dict[str, Any] = {"name": self.name}
        out["config"] = self.config
        out["set"] = list(self.set)
        out["grid"] = [{k: list(v) for k, v in entry.items()} for entry in self.grid]
        out["group"] = list(self.group)
        out["select"] = "all" if self.select_all else [dataclasses.asdict(c) for c in self.select]
        for key in ("evaluate", "test"):
            ev = getattr(self, key)
            if ev is not None:
                out[key] = {k: v for k, v in ev.to_dict().items() if k != "split"}
        return out


def load_spec(path: str | Path) -> SweepSpec:
    """Reads and validates a spec file (:class:`SpecError` names the key of any mistake)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise SpecError(f"sweep spec {str(path)!r} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise SpecError(f"sweep spec {path}: not valid YAML: {str(e).splitlines()[0]}") from None
    return spec_from_dict(data, name=path.stem, base=path.parent, source=str(path.resolve()))


def spec_from_dict(data: Any, *, name: str = "sweep", base: str | Path | None = None,
                   source: str | None = None) -> SweepSpec:
    """Validates a spec given as plain data.

    Arguments:
        data: The spec's mapping.
        name: The name used when the spec has none.
        base: The spec file's folder: a relative config path is looked up in the working directory first, then here.
        source: Where the spec came from (for messages).
    """
    where = f"sweep spec {source or name}"

    def fail(key: str, message: str) -> SpecError:
        return SpecError(f"{where}: {key}: {message}")

    if not isinstance(data, dict):
        raise SpecError(f"{where}: the top level must be a mapping with the keys {', '.join(_TOP_KEYS)}")
    unknown = [k for k in data if k not in _TOP_KEYS]
    if unknown:
        raise fail(str(unknown[0]), f"unknown key; expected one of {', '.join(_TOP_KEYS)}")
    spec_name = data.get("name", name)
    if not isinstance(spec_name, str) or not _plain_name(spec_name):
        raise fail("name", f"expected a plain folder name (letters, digits, . _ -), got {spec_name!r}")
    config = None if data.get("config") is None else _config_path(data["config"], base, fail, "config")
    if config is None:  # as `injflow fit` without CONFIG: the embedded default
        from ..config import default_config_path

        config = str(default_config_path())
    overrides = _overrides(data.get("set", []), fail)
    grid = _grid(data.get("grid", {}), base, fail)
    keys = {k for entry in grid for k in entry}
    group = data.get("group", [])
    group = [group] if isinstance(group, str) else group
    if not isinstance(group, list) or not all(isinstance(g, str) for g in group):
        raise fail("group", f"expected a grid key or a list of grid keys, got {group!r}")
    for g in group:
        if g not in keys:
            raise fail("group", f"{g!r} is not a grid key; the grid has {sorted(keys)}")
    evaluate = _evaluation(data.get("evaluate"), "val", None, fail, "evaluate")
    test = data.get("test")
    test = None if test is None or test is False else _evaluation({} if test is True else test, "test", evaluate, fail, "test")
    select = data.get("select", dataclasses.asdict(Criterion()))
    if _names_metric(select, "val/nll_D"):  # the default criterion needs no image scores: evaluate it whatever is asked
        evaluate = _evaluation({"samplers": [], "nll_D": True}, "val", None, fail, "evaluate") if evaluate is None \
            else dataclasses.replace(evaluate, nll_D=True)
    select_all, criteria = _select(select, evaluate, fail)
    return SweepSpec(name=spec_name, config=config, set=tuple(overrides), grid=tuple(grid), group=tuple(group),
                     select=tuple(criteria), select_all=select_all, evaluate=evaluate, test=test, source=source)


def _plain_name(name: str) -> bool:
    return bool(name) and not name.startswith(".") and all(c.isalnum() or c in "._-+=" for c in name)


def _config_path(value: Any, base: str | Path | None, fail: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise fail(key, f"expected a config file path, got {value!r}")
    path = Path(value).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path] + ([Path(base) / path] if base is not None else [])
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate.resolve())
    raise fail(key, f"config file {value!r} does not exist (looked in {', '.join(str(c.parent) for c in candidates)})")


def _overrides(value: Any, fail: Any) -> list[str]:
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list):
        raise fail("set", f"expected a list of key=value overrides, got {value!r}")
    for item in value:
        if not isinstance(item, str) or "=" not in item or not item.split("=", 1)[0].strip():
            raise fail("set", f"expected key=value (as `injflow fit --set`), got {item!r}")
    return [str(v) for v in value]


def _grid(value: Any, base: str | Path | None, fail: Any) -> list[dict[str, tuple[Any, ...]]]:
    entries = value if isinstance(value, list) else [value]
    if not entries or not all(isinstance(e, dict) for e in entries):
        raise fail("grid", "expected a mapping {config.key: [values]} or a list of such mappings")
    out = []
    for i, entry in enumerate(entries):
        where = "grid" if not isinstance(value, list) else f"grid[{i}]"
        parsed: dict[str, tuple[Any, ...]] = {}
        for key, values in entry.items():
            if not isinstance(key, str) or not key.strip():
                raise fail(where, f"keys must be config keys (e.g. method.beta), got {key!r}")
            parts = [k.strip() for k in key.split(",")]
            if key != "config" and not all(p and "." in p and "=" not in p for p in parts):
                raise fail(f"{where}.{key}", "expected a dotted config key (e.g. method.beta), several joined by "
                                             "commas, or `config`")
            if not isinstance(values, list) or not values:
                raise fail(f"{where}.{key}", f"expected a non-empty list of values, e.g. [1, 10], got {values!r}")
            if key == "config":
                values = [_config_path(v, base, fail, f"{where}.config") for v in values]
            if len({_canonical(v) for v in values}) != len(values):
                raise fail(f"{where}.{key}", f"repeats a value: {values}")
            parsed[key] = tuple(values)
        out.append(parsed)
    return out


def _canonical(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True, default=str)


def _evaluation(value: Any, split: str, inherit: Evaluation | None, fail: Any, key: str) -> Evaluation | None:
    from ..distributions import SAMPLERS

    if value is None:
        return None
    if not isinstance(value, dict):
        raise fail(key, f"expected a mapping of evaluation settings ({', '.join(_EVAL_KEYS)}), got {value!r}")
    unknown = [k for k in value if k not in _EVAL_KEYS]
    if unknown:
        raise fail(f"{key}.{unknown[0]}", f"unknown setting; expected one of {', '.join(_EVAL_KEYS)}")
    fields = {k: v for k, v in (dataclasses.asdict(inherit) if inherit is not None else {}).items() if k != "split"}
    fields.update(value)
    n = fields.get("n", Evaluation.n)
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise fail(f"{key}.n", f"expected an integer >= 2, got {n!r}")
    samplers = fields.get("samplers", list(Evaluation.samplers))
    samplers = [samplers] if isinstance(samplers, str) else samplers
    known = ["prior", *SAMPLERS.names()]
    if not isinstance(samplers, (list, tuple)) or any(s not in known for s in samplers):
        raise fail(f"{key}.samplers", f"expected a list from {known}, got {samplers!r}")
    features = fields.get("features", Evaluation.features)
    if features not in FEATURES:
        raise fail(f"{key}.features", f"expected one of {', '.join(FEATURES)}, got {features!r}")
    for flag in ("reconstruction", "disjoint", "inception_score", "nll_D"):
        if not isinstance(fields.get(flag, False), bool):
            raise fail(f"{key}.{flag}", f"expected true or false, got {fields[flag]!r}")
    seed = fields.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise fail(f"{key}.seed", f"expected an integer >= 0, got {seed!r}")
    cache = fields.get("fid_cache")
    if cache is not None and not isinstance(cache, str):
        raise fail(f"{key}.fid_cache", f"expected a folder path, got {cache!r}")
    evaluation = Evaluation(split=split, n=n, samplers=tuple(samplers), reconstruction=fields.get("reconstruction", False),
                            disjoint=fields.get("disjoint", True), features=features,
                            inception_score=fields.get("inception_score", False), seed=seed,
                            fid_cache=str(Path(cache).expanduser().resolve()) if cache else None,
                            nll_D=fields.get("nll_D", False))
    if not evaluation.sets() and not evaluation.nll_D:
        raise fail(key, "scores nothing: give samplers, reconstruction: true or nll_D: true")
    return evaluation


_EVAL_KEYS = ("n", "samplers", "reconstruction", "disjoint", "features", "inception_score", "seed", "fid_cache", "nll_D")


def _names_metric(select: Any, metric: str) -> bool:
    items = select if isinstance(select, list) else [select]
    return any(isinstance(item, dict) and item.get("metric") == metric for item in items)


def _select(value: Any, evaluate: Evaluation | None, fail: Any) -> tuple[bool, list[Criterion]]:
    if value == "all":
        return True, []
    items = value if isinstance(value, list) else [value]
    if not items:
        raise fail("select", "expected {metric: ..., mode: min|max}, a list of them, or `all`")
    criteria = []
    for item in items:
        if not isinstance(item, dict) or set(item) - {"metric", "mode"} or "metric" not in item:
            raise fail("select", f"expected {{metric: val/<name>, mode: min|max}}, got {item!r}")
        metric, mode = item["metric"], item.get("mode", "min")
        if not isinstance(metric, str) or "/" not in metric:
            raise fail("select.metric", f"expected a reported metric such as val/nll or val/fid_gmm, got {metric!r}")
        if metric.startswith("test/"):
            raise fail("select.metric", f"{metric!r}: selection must not look at the test split (FIF App. E.4); select "
                                        "on a val/ metric and let `test` evaluate the selected trials")
        if mode not in ("min", "max"):
            raise fail("select.mode", f"expected min or max, got {mode!r}")
        scored = metric.split("/", 1)[1].startswith(("fid_", "is_")) or metric.endswith(("/reconstruction_error", "/nll_D"))
        if scored and metric.startswith("val/"):
            if evaluate is None:
                raise fail("select.metric", f"{metric!r} is an evaluation score, but the spec has no `evaluate` section "
                                            f"(e.g. evaluate: {{samplers: [gmm]}} or {{nll_D: true}})")
            if metric not in evaluate.metric_names():
                raise fail("select.metric", f"{metric!r} is not scored by `evaluate`, which reports "
                                            f"{evaluate.metric_names()}")
        criteria.append(Criterion(metric, mode))
    if len(set(criteria)) != len(criteria):
        raise fail("select", "repeats a criterion")
    return False, criteria


def default_dir(spec: SweepSpec) -> Path:
    """The sweep folder used without ``--dir``: ``runs/sweeps/<name>``."""
    return Path("runs") / "sweeps" / spec.name

