"""A seeded config fuzzer: mutations of every shipped config either pass validation or fail with a ConfigError that
names the mutated key — never a raw traceback, and never a silent acceptance of NaN, inf or negative nonsense.

Two levels: the schema (every shipped config, every key of it, no data loaded: at least 300 mutations) and the
whole pre-training check :func:`injflow.train.prepare_run` (data loaded, nets built, one dry loss) on the configs
whose data are offline and cheap, mutating the option values too.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from injflow.config import config_to_dict, default_config_path, load_config
from injflow.errors import ConfigError, DataError, InjflowError
from injflow.train import prepare_run

REPO = Path(__file__).resolve().parents[1]
SHIPPED = [default_config_path(), *sorted(p for p in (REPO / "configs").rglob("*.yaml") if p.parent.name != "sweeps")]
CHEAP = [default_config_path(), REPO / "configs/small/fif-sinusoid.yaml", REPO / "configs/small/fif-tabular-power.yaml"]
# A negative number is meaningful only here (-1: "no limit" / "all devices").
NEGATIVE_OK = {"train.max_steps": -1, "train.devices": -1}
MUTATIONS = [float("nan"), float("inf"), float("-inf"), -1, -7, -1e9, 0, 1e30, 10**12, 1.5, "bogus", "", True, None,
             [], {}, "nan", [-1], {"x": 1}]


def _yaml(value) -> str:
    import yaml

    if isinstance(value, float) and math.isnan(value):
        return ".nan"
    if isinstance(value, float) and math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _leaves(d: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            keys += _leaves(v, f"{key}.")
        else:
            keys.append(key)
    return keys


def _keys(path: Path, *, with_options: bool) -> list[str]:
    keys = _leaves(config_to_dict(load_config(path)))
    if not with_options:
        keys = [k for k in keys if ".options." not in k]
    return keys


def _check(outcome: Exception | None, key: str, value) -> None:
    if outcome is None:
        nan_or_inf = isinstance(value, float) and not math.isfinite(value)
        assert not nan_or_inf, f"{key}={value!r} was accepted"
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            assert NEGATIVE_OK.get(key) == value, f"{key}={value!r} (negative) was accepted"
        return
    assert isinstance(outcome, InjflowError), f"{key}={value!r}: raw {type(outcome).__name__}: {outcome}"
    message = str(outcome)
    section, _, leaf = key.rpartition(".")
    named = key in message or (section in message and leaf in message)
    if not named and section.startswith(("method", "data", "model")):
        named = section.split(".")[0] in message  # a whole-section problem (e.g. data too small for a split)
    assert named, f"{key}={value!r}: the message does not name the key: {message}"


def _mutate(path: Path, key: str, value, check) -> None:
    try:
        check(load_config(path, [f"{key}={_yaml(value)}"]))
        outcome = None
    except Exception as e:  # noqa: BLE001 - the point is to see every kind
        outcome = e
    _check(outcome, key, value)


schema_cases = st.sampled_from(SHIPPED).flatmap(
    lambda p: st.tuples(st.just(p), st.sampled_from(_keys(p, with_options=False)), st.sampled_from(MUTATIONS)))


@settings(max_examples=320, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema_cases)
def test_schema_mutations_of_shipped_configs(case):
    path, key, value = case
    _mutate(path, key, value, lambda config: None)


def _preflight(config) -> None:
    torch.set_num_threads(1)
    prepare_run(config, run_dir="/nonexistent/never-written")


cheap_cases = st.sampled_from(CHEAP).flatmap(
    lambda p: st.tuples(st.just(p), st.sampled_from(_keys(p, with_options=True)), st.sampled_from(MUTATIONS)))


@settings(max_examples=120, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cheap_cases)
def test_preflight_mutations_of_offline_configs(case):
    path, key, value = case
    _mutate(path, key, value, _preflight)


def test_fuzzer_catches_what_it_should():
    """The checks above would fail on a raw error, an unnamed key, and accepted NaN or negative values."""
    with pytest.raises(AssertionError, match="raw"):
        _check(KeyError("x"), "train.seed", -1)
    with pytest.raises(AssertionError, match="does not name"):
        _check(ConfigError("something is wrong"), "train.seed", -1)
    with pytest.raises(AssertionError, match="accepted"):
        _check(None, "optim.lr", float("nan"))
    with pytest.raises(AssertionError, match="negative"):
        _check(None, "train.gmm_components", -1)
    _check(DataError("data.options.noise: must be >= 0"), "data.options.noise", -1)
