"""The configs under configs/: every file loads and validates, builds its model, and every small variant trains.

(a) every YAML under ``configs/`` loads with the project's own loader (``load_config``), passes the dimension
    checks (``check_dimensions``) and builds its model (``InjectiveFlow.from_config``) without touching any data:
    the data shape comes from ``DATA_SHAPES`` (the paper's data sets are not available offline); the paper configs
    of FIF's image experiments also reproduce the parameter counts of FIF tables 2 (Trumpet) and 9-11;
(b) every small variant uses offline data and runs a tiny fit through ``injflow.api.fit`` (one optimiser step on a
    few dozen samples, one validation batch, no post-fit samplers), so a broken key, option or shape fails here.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from injflow.config import check_dimensions, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ALL = sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name != "sweeps")  # sweeps/: sweep specs (tests/test_sweep.py)
PAPER = sorted((CONFIGS / "paper").glob("*.yaml"))
SMALL = sorted((CONFIGS / "small").glob("*.yaml"))

# Shape of one sample of every data set a config may name (docs/data.md), so no data is loaded in (a).
DATA_SHAPES: dict[str, tuple[int, ...]] = {
    "sinusoid": (2,), "circle": (2,), "moons": (2,), "swiss_roll": (3,),
    "power": (6,), "gas": (8,), "hepmass": (21,), "miniboone": (43,), "bsds300": (63,),
    "iris": (4,), "diabetes": (10,), "wine": (13,), "breast_cancer": (30,),
    "mnist": (1, 28, 28), "conditional_mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28), "digits": (1, 8, 8),
    "cifar10": (3, 32, 32), "celeba": (3, 64, 64),
}
# Data that is not available offline (downloads or manual files): small variants must not use it.
ONLINE_ONLY = {"power", "gas", "hepmass", "miniboone", "bsds300", "cifar10", "celeba"}

# A tiny subset of every small variant's data: one batch of 16 = one optimiser step, then one validation batch
# (sizes fit the smallest stand-in, wine: 16 validation rows).
TINY = {"n_train": 16, "n_val": 8, "n_test": 8}

# FIF tables 9, 10, 11 ("#Parameters"): the paper configs must build nets of these sizes (rounded as printed).
PAPER_PARAMETERS = {
    "fif-pythae-convnet-mnist": "17.2M", "fif-pythae-convnet-cifar10": "39.4M", "fif-pythae-convnet-celeba": "33.5M",
    "fif-pythae-resnet-mnist": "0.73M", "fif-pythae-resnet-cifar10": "4.8M", "fif-pythae-resnet-celeba": "1.6M",
    "fif-celeba-fif-convnet": "34.3M",
    "trumpet-celeba": "19.1M",  # FIF table 2 (its architecture is a dense stand-in sized to the published count)
}


def _rounded(n: int, printed: str) -> bool:
    value = float(printed.rstrip("M")) * 1e6
    decimals = len(printed.rstrip("M").split(".")[1]) if "." in printed else 0
    step = 10 ** (6 - decimals)
    return abs(n - value) <= step / 2


def _shape(config) -> tuple[int, ...]:
    shape = DATA_SHAPES[config.data.name]
    if config.data.options.get("flatten"):
        shape = (math.prod(shape),)
    return shape


def _id(path: Path) -> str:
    return str(path.relative_to(CONFIGS))


def test_every_paper_config_has_a_small_variant_and_a_readme_row():
    assert PAPER, "no paper configs found"
    assert [p.name for p in PAPER] == [p.name for p in SMALL]
    readme = (CONFIGS / "README.md").read_text()
    for p in PAPER:
        assert f"| `{p.stem}` |" in readme, f"configs/README.md has no row for {p.stem}"


@pytest.mark.parametrize("path", ALL, ids=_id)
def test_config_loads_validates_and_builds(path):
    from injflow.model import InjectiveFlow

    config = load_config(path)
    assert config.data.name in DATA_SHAPES, f"add {config.data.name!r} to DATA_SHAPES"
    shape = _shape(config)
    check_dimensions(config, shape)
    num_classes = 10 if config.model.conditional else None  # the conditional configs' data sets have ten classes
    flow = InjectiveFlow.from_config(config, data_shape=shape, num_classes=num_classes)
    n_params = sum(p.numel() for p in flow.parameters() if p.requires_grad)
    assert n_params > 0
    assert flow.latent_dim == config.model.latent_dim
    printed = PAPER_PARAMETERS.get(path.stem) if path.parent.name == "paper" else None
    if printed is not None:
        assert _rounded(n_params, printed), f"{path.stem}: {n_params:,} parameters, the paper prints {printed}"
    if path.parent.name in ("paper", "small"):  # every hyper-parameter line says where its value comes from
        lines = path.read_text().splitlines()
        for key in list(config.method.options()) + ["batch_size", "latent_dim", "lr", "max_epochs"]:
            for line in (ln for ln in lines if ln.strip().startswith(f"{key}:")):
                assert "#" in line, f"{path.name}: {line.strip()!r} has no comment"


@pytest.fixture(scope="module")
def cached_data():
    """Loads each (data set, options) once for all tiny fits (MNIST's offline pickle alone takes ~1.5 s).

    Patched where the engine looks it up (``injflow.data.registry``, through ``load_data_section``) as well as on the
    package; each fit gets its own shallow copy of the cached splits.
    """
    import copy

    import injflow.data
    import injflow.data.registry as registry

    original = registry.load_dataset
    cache: dict = {}

    def load_dataset(name, **kwargs):
        key = (name, repr(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = original(name, **kwargs)
        return copy.copy(cache[key])

    registry.load_dataset = injflow.data.load_dataset = load_dataset
    yield
    registry.load_dataset = injflow.data.load_dataset = original


@pytest.mark.parametrize("path", SMALL, ids=_id)
def test_small_variant_runs_offline(path, tmp_path, cached_data, monkeypatch):
    """One optimiser step and one validation batch of each small variant on a few samples, through the Python API."""
    import injflow.api as inj
    import injflow.plots

    # The end-of-run pictures (tested in test_train.py) take ~2 s per image run with matplotlib; skip them here.
    monkeypatch.setattr(injflow.plots, "draw_run_pictures", lambda *a, **k: [])

    config = load_config(path)
    assert config.data.name not in ONLINE_ONLY, f"{path.name}: small variants must use offline data"
    assert config.train.num_threads == 2
    overrides = [f"data.options.{k}={v}" for k, v in TINY.items()] + [
        "data.batch_size=16",
        "train.max_epochs=1",
        "train.max_steps=1",
        "train.samplers=[]",
        "train.progress_bar=false",
        "train.num_threads=2",
    ]
    threads = torch.get_num_threads()
    try:
        result = inj.fit(path, overrides=overrides, run_dir=tmp_path / "run", verbose=False)
    finally:
        torch.set_num_threads(threads)
    assert result.completed and result.global_step == 1
    assert (result.run_dir / "model.pt").is_file()
    assert "val/loss" in (result.run_dir / "metrics.csv").read_text().splitlines()[0]  # the validation batch ran
    x = torch.zeros(2, *DATA_SHAPES[config.data.name])
    labels = torch.zeros(2, dtype=torch.long) if config.model.conditional else None  # class 0 for a conditional model
    with torch.no_grad():
        z = result.flow.encode(x, labels)
    assert z.shape == (2, config.model.latent_dim) and torch.isfinite(z).all()
