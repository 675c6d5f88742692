"""Every experiment script runs at ``--scale smoke`` and writes well-formed results (issue: rerun the papers)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
HELPERS = {"common.py", "campaign.py"}  # shared modules, not experiments
SCRIPTS = sorted(p for p in EXPERIMENTS.glob("*.py") if p.name not in HELPERS and not p.name.startswith("_"))


def test_there_are_experiments():
    assert SCRIPTS, "no experiment scripts found"


def run_smoke(script: Path, out: Path, *flags: str) -> dict:
    """Runs ``script --scale smoke`` (plus ``flags``) into ``out``, asserts it succeeded; returns its summary.json."""
    proc = subprocess.run(
        [sys.executable, str(script), "--scale", "smoke", *flags, "--out", str(out), "--threads", "1"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"{script.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads((out / "summary.json").read_text())


def read_csv(path: Path) -> list[dict]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_experiment_smoke_scale(script, tmp_path):
    out = tmp_path / "out"
    summary = run_smoke(script, out)
    assert summary["experiment"] == script.stem and summary["scale"] == "smoke"
    assert summary["wall_time_s"] > 0
    csvs, pngs = sorted(out.rglob("*.csv")), sorted(out.rglob("*.png"))
    assert csvs and pngs, f"{script.name} wrote no table or no figure"
    for path in csvs:
        assert read_csv(path), f"{path} is empty"
    for path in pngs:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    for path in out.rglob("*.json"):
        json.loads(path.read_text())


def test_help_of_every_experiment_names_its_scales(capsys, monkeypatch):
    import runpy

    for script in SCRIPTS:  # in this process: the imports are paid once, not once per script
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
