"""Every experiment script runs at ``--scale smoke`` and writes well-formed results (issue: rerun the papers)."""

from __future__ import annotations

import csv
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
HELPERS = {"common.py", "sweep_tables.py"}  # shared modules, not experiments
ALL_SCRIPTS = sorted(p for p in EXPERIMENTS.glob("*.py") if p.name not in HELPERS and not p.name.startswith("_"))
#: The tables that are sweeps on Ray (configs/sweeps/): they share one Ray session in test_table_sweeps_at_smoke_scale.
SWEEPS = ("pythae_benchmark", "kumar_table1", "fif_table2")
SCRIPTS = [p for p in ALL_SCRIPTS if p.stem not in SWEEPS]


def test_there_are_experiments():
    assert SCRIPTS and all((EXPERIMENTS / f"{name}.py").is_file() for name in SWEEPS), "experiment scripts missing"


def run_smoke(script: Path, out: Path, *flags: str) -> dict:
    """Runs ``script --scale smoke`` (plus ``flags``) into ``out`` in this process, asserts it succeeded; returns its
    summary.json.

    In-process (as ``python script.py ...`` would run it, through :mod:`runpy`): the ~4 s of importing torch,
    Lightning and matplotlib are paid once per test process instead of once per script. What a script may change
    globally (torch's threads and default dtype, ``sys.argv``, ``sys.path``) is put back afterwards.
    """
    import runpy

    import torch

    argv, path, threads, dtype = sys.argv[:], sys.path[:], torch.get_num_threads(), torch.get_default_dtype()
    sys.argv = [str(script), "--scale", "smoke", *flags, "--out", str(out), "--threads", "1"]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as done:
        assert done.code in (None, 0), f"{script.name} exited with {done.code}"
    finally:
        sys.argv, sys.path[:] = argv, path
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)
    return json.loads((out / "summary.json").read_text())


def read_csv(path: Path) -> list[dict]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def check_results(out: Path, name: str) -> dict:
    """The results folder of a smoke run: summary.json, non-empty CSV tables, PNG figures, valid JSON."""
    summary = json.loads((out / "summary.json").read_text())
    assert summary["experiment"] == name and summary["scale"] == "smoke"
    assert summary["wall_time_s"] > 0
    csvs = sorted(p for p in out.rglob("*.csv") if "sweeps" not in p.parts)
    pngs = sorted(p for p in out.rglob("*.png") if "sweeps" not in p.parts)
    assert csvs and pngs, f"{name} wrote no table or no figure"
    for path in csvs:
        assert read_csv(path), f"{path} is empty"
    for path in pngs:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    for path in out.rglob("*.json"):
        if "ray" not in path.relative_to(out).parts:  # Ray Tune's own records in the sweep folders
            json.loads(path.read_text())
    return summary


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_experiment_smoke_scale(script, tmp_path):
    out = tmp_path / "out"
    run_smoke(script, out)
    check_results(out, script.stem)


def test_help_of_every_experiment_names_its_scales(capsys, monkeypatch):
    import runpy

    for script in ALL_SCRIPTS:  # in this process: the imports are paid once, not once per script
        monkeypatch.setattr(sys, "argv", [str(script), "--help"])
        with pytest.raises(SystemExit) as done:
            runpy.run_path(str(script), run_name="__main__")
        assert done.value.code == 0 and "--scale" in capsys.readouterr().out, script.name


def test_trace_variance_conditional(tmp_path):
    # FIF fig. 6's model is conditional: the gradients are taken with each batch's labels.
    out = tmp_path / "out"
    summary = run_smoke(EXPERIMENTS / "trace_variance.py", out, "--conditional")
    assert summary["conditional"] is True and summary["model"]["data"]["name"] == "conditional_mnist"
    rows = read_csv(out / "trace_variance.csv")
    exact = [r for r in rows if r["space"] == "latent" and r["noise"] == "orthogonal" and r["K"] == "16"]
    assert exact and all(float(r["mean_rel_distance"]) < 1e-4 for r in exact)  # K = d orthogonal is the exact gradient
    assert all(float(r["mean_rel_distance"]) > 1e-3 for r in rows if r["K"] == "1")


def test_spectra_vs_beta_conditional_draws_fig9(tmp_path):
    # FIF figs. 8/9 are on conditional MNIST: the --conditional path trains class-conditional models and draws the
    # per-digit samples of fig. 9 next to the spectra.
    out = tmp_path / "out"
    summary = run_smoke(EXPERIMENTS / "spectra_vs_beta.py", out, "--conditional")
    assert summary["conditional"] is True and summary["model"]["model"]["conditional"] is True
    assert summary["model"]["data"]["name"] == "conditional_mnist"
    assert (out / "fig9_samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = read_csv(out / "spectra_vs_beta.csv")
    assert {r["points"] for r in rows} == {"prior", "test"} and all(float(r["mean_count_ge1"]) >= 0 for r in rows)


# ---------------------------------------------------------------------------------------------------- sweeps

def _cifar10_files(root: Path) -> None:
    folder = root / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": b"fake", b"data": rng.integers(0, 256, size=(8, 3072), dtype=np.uint8),
                 b"labels": list(range(8))}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))


def _celeba_files(root: Path) -> None:
    from PIL import Image

    base = root / "celeba"
    (base / "img_align_celeba").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(1, 33):
        name = f"{i:06d}.jpg"
        Image.fromarray(rng.integers(0, 256, size=(218, 178, 3), dtype=np.uint8)).save(base / "img_align_celeba" / name)
        lines.append(f"{name} {0 if i <= 16 else 1 if i <= 24 else 2}")
    (base / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def upstream_files(tmp_path_factory) -> Path:
    """Small CIFAR-10 and CelebA files in the upstream formats (the paper scale's data paths)."""
    pytest.importorskip("PIL.Image", reason="CelebA needs pillow")
    root = tmp_path_factory.mktemp("upstream")
    _cifar10_files(root)
    _celeba_files(root)
    return root


def _table(module: str, out: Path, *args: str) -> dict:
    """Runs a table script's main() at smoke scale in this process (inside the caller's Ray session)."""
    if str(EXPERIMENTS) not in sys.path:
        sys.path.insert(0, str(EXPERIMENTS))
    rc = __import__(module).main(["--scale", "smoke", "--out", str(out), "--max-concurrent", "2", *args])
    assert rc == 0
    summary = check_results(out, module)
    assert not summary["failed_trials"], summary["failed_trials"]
    return summary


def test_table_sweeps_at_smoke_scale(tmp_path):
    """The three tables that are sweeps (configs/sweeps/*-smoke.yaml) in one Ray session: each writes its tables and
    figures from its sweeps' selection.json and test scores, with the paper's numbers beside."""
    pytest.importorskip("ray", reason="sweeps need Ray: pip install 'injflow[sweep]' (scripts/setup.sh installs it)")
    from injflow.sweep.runner import ray_session

    with ray_session():
        kumar = _table("kumar_table1", tmp_path / "kumar")
        pythae = _table("pythae_benchmark", tmp_path / "pythae")
        table2 = _table("fif_table2", tmp_path / "table2")
    rows = read_csv(tmp_path / "kumar" / "table1.csv")
    assert [r["method"] for r in rows] == ["β-VAE", "InjFlow-ln", "real test images (floor)"]
    assert rows[0]["grid_points"] == "2 of 5" and rows[0]["paper_GMM"] == "8.12" and float(rows[0]["GMM"]) > 0
    assert kumar["selection"]["kumar_table1-mnist-smoke"][0]["metric"] == "val/fid_gmm"
    rows = read_csv(tmp_path / "pythae" / "table8.csv")
    assert [(r["setup"], r["sampler"]) for r in rows] == [("ResNet MNIST", "N"), ("ResNet MNIST", "GMM")]
    assert all(float(r["test_fid"]) > 0 and r["selected"] for r in rows) and rows[0]["paper_fif_fid"] == "19.5"
    assert len(read_csv(tmp_path / "pythae" / "validation_grid.csv")) == 2 and pythae["n_fid"] == 32
    rows = read_csv(tmp_path / "table2" / "table2.csv")
    assert [r["model"] for r in rows] == ["FIF", "DNF", "Trumpet"] and all(float(r["GMM_fid"]) > 0 for r in rows)
    assert table2["budget"] == "train.max_steps=20"


@pytest.mark.slow
@pytest.mark.parametrize("module, args", [
    ("pythae_benchmark", ["--datasets", "cifar10", "celeba"]),
    # the App. A nets (Kumar) and the 34M FIF-ConvNet take 20-130 s for 2 steps here
    ("kumar_table1", ["--datasets", "cifar10", "celeba", "--methods", "β-VAE"]),
    ("fif_table2", ["--datasets", "celeba"]),
])
def test_table_sweeps_on_cifar10_and_celeba_files(module, args, upstream_files, tmp_path):
    """The paper scale's data paths: the papers' nets for 2 steps on small CIFAR-10 / CelebA files in the upstream
    formats (slow: a Ray start each, and the big nets)."""
    pytest.importorskip("ray", reason="sweeps need Ray")
    summary = _table(module, tmp_path / "out", *args, "--data-root", str(upstream_files))
    datasets = {name.split("-")[-2] for name in summary["sweeps"]}
    assert datasets == ({"celeba"} if module == "fif_table2" else {"cifar10", "celeba"})
    if module == "pythae_benchmark":
        setups = {r["setup"] for r in read_csv(tmp_path / "out" / "table8.csv")}
        assert setups == {"ResNet CIFAR-10", "ResNet CelebA"} and (tmp_path / "out" / "table3.csv").is_file()
