"""Sweeps on Ray Tune (issue 23): the one test of the default suite that starts Ray. A trial SIGKILLed mid-training
is restarted and resumes from its last checkpoint to the weights of an uninterrupted trial; failing trials are
reported with their one-line errors while the others go on; only the selected trial is evaluated on the test split;
and ``--resume`` of the finished sweep trains nothing again. The killed *driver* is tested in
``test_killed_driver_resumes`` (slow: it starts Ray twice in subprocesses)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("ray", reason="sweeps need Ray: pip install 'injflow[sweep]' (scripts/setup.sh installs it)")

from injflow.rundir import RunDir  # noqa: E402
from injflow.sweep import run_sweep, spec_from_dict  # noqa: E402
from injflow.sweep.runner import ray_session  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BASE = str(REPO / "configs" / "paper" / "fif-pythae-resnet-mnist.yaml")
SMOKE = ["data.name=digits", "data.options={n_val: 64, n_test: 64}", "data.batch_size=64", "model.architecture=mlp",
         "model.latent_dim=4", "model.options={hidden_features: [32]}", "train.gmm_components=3",
         "train.log_every_n_steps=5", "optim.scheduler={name: constant}", "train.pictures=false",
         "train.checkpoint_every_n_steps=5"]
PIXELS = {"n": 16, "samplers": ["prior", "gmm"], "features": "pixels"}


def model_state(folder: Path) -> dict[str, torch.Tensor]:
    saved = torch.load(folder / "model.pt", weights_only=True)
    return {f"{k}.{n}": t for k, v in saved.items() if isinstance(v, dict) for n, t in v.items()
            if isinstance(t, torch.Tensor)}


def kill_when_checkpointed(folder: Path, killed: list[int], timeout: float = 300) -> None:
    """SIGKILLs the process training ``folder`` once it wrote a checkpoint, as the OOM killer or a preemption would."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            status = json.loads((folder / "status.json").read_text())
        except (OSError, ValueError):
            status = {}
        if status.get("state") == "running" and (folder / "checkpoints" / "last.ckpt").is_file():
            step = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
            os.kill(int(status["pid"]), signal.SIGKILL)
            killed.append(int(step))
            return
        time.sleep(0.01)


def test_sweep_on_ray_survives_a_killed_trial_and_reports_failing_ones(tmp_path):
    spec = spec_from_dict({
        "config": BASE, "set": SMOKE + ["train.max_epochs=5"],
        "grid": [{"run.name": ["killed", "intact"]},  # two identical trials: one is killed, one is the reference
                 {"optim.lr": [1.0e8]},  # diverges: NonFiniteLossError
                 {"model.latent_dim": [100]},  # d >= D is found on the data, inside the trial
                 {"method.beta": [-1]}],  # refused by the config: invalid, never run
        "select": {"metric": "val/fid_gmm", "mode": "min"}, "evaluate": PIXELS, "test": {"reconstruction": True},
    }, name="ft")
    folder = tmp_path / "sweep"
    lines: list[str] = []
    killed: list[int] = []
    killer = threading.Thread(target=kill_when_checkpointed, args=(folder / "trials" / "name=killed", killed), daemon=True)
    with ray_session():
        killer.start()
        result = run_sweep(spec, folder=folder, max_concurrent=2, max_failures=1, log=lines.append)
        killer.join()
        states = {r.name: r.state for r in result.records}
        assert states == {"name=killed": "completed", "name=intact": "completed", "lr1e+08": "failed",
                          "latent_dim100": "failed", "beta-1": "invalid"}, "\n".join(lines)
        # the killed trial was restarted once and resumed from its checkpoint to the uninterrupted trial's weights
        assert killed and killed[0] < result.record("name=killed").step, (killed, "\n".join(lines))
        assert any("restarting" in m and "name=killed" in m and "process died" in m for m in lines), "\n".join(lines)
        a, b = model_state(folder / "trials" / "name=killed"), model_state(folder / "trials" / "name=intact")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert ((folder / "trials" / "name=killed" / "metrics.csv").read_text()
                == (folder / "trials" / "name=intact" / "metrics.csv").read_text())
        # failing trials: one line each, in the progress and in the tables; the others went on
        errors = {r.name: r.error for r in result.records}
        assert errors["lr1e+08"].startswith("NonFiniteLossError: non-finite loss at optimiser step")
        assert "model.latent_dim: an injective flow needs d < D" in errors["latent_dim100"]
        assert errors["beta-1"].startswith("ConfigError: method.beta")
        assert any("failed" in m and "lr1e+08" in m and "NonFiniteLossError" in m for m in lines)
        # selection on validation; the test split is scored for the selected trial only
        chosen = result.selections[0].trial
        assert chosen in ("name=killed", "name=intact") and result.complete
        tested = [r.name for r in result.records if (folder / "trials" / r.name / "sweep-test.json").exists()]
        assert tested == [chosen] and result.record(chosen).test["test/fid_reconstruction"] > 0
        selection = json.loads((folder / "selection.json").read_text())
        assert selection["selected"][0]["trial"] == chosen and selection["selected"][0]["test"]
        assert len((folder / "trials.csv").read_text().splitlines()) == 6
        # --resume of the finished sweep trains and scores nothing again (failed trials are not retried)
        stamps = {p: p.stat().st_mtime_ns for p in (folder / "trials").rglob("*") if p.is_file()}
        again: list[str] = []
        rerun = run_sweep(folder, resume=True, log=again.append)
        assert rerun.complete and "0 to run" in again[0] and not any("started" in m for m in again)
        assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
        assert RunDir(folder / "trials" / "name=killed").status()["state"] == "completed"


@pytest.mark.slow
def test_killed_driver_resumes_without_retraining_and_a_second_sweep_is_refused(tmp_path):
    """`injflow sweep` SIGKILLed with its Ray processes mid-sweep; `--resume` finishes it without training the finished
    trials again; while a sweep runs, a second one on its folder is refused in one line."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"config": BASE, "set": SMOKE + ["train.max_epochs=6"],
                                "grid": {"method.beta": [5, 10, 15, 20]}, "evaluate": PIXELS,
                                "select": {"metric": "val/fid_gmm"}}))
    folder = tmp_path / "sweep"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "injflow.cli", "sweep", str(spec), "--dir", str(folder), "--max-concurrent", "1"]
    driver = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    done: list[Path] = []
    while time.time() < deadline and not done:
        done = [p.parent for p in (folder / "trials").glob("*/sweep-val.json")]
        time.sleep(0.1)
    assert done, "no trial finished"
    second = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 2 and "is in use by process" in second.stderr and len(second.stderr.splitlines()) == 1
    os.killpg(driver.pid, signal.SIGKILL)  # the driver, Ray and the trial in training, at once
    driver.wait()
    stamps = {d: (d / "model.pt").stat().st_mtime_ns for d in done}
    resumed = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert {d: (d / "model.pt").stat().st_mtime_ns for d in done} == stamps  # finished trials were not retrained
    assert not any(f"started    {d.name}" in resumed.stdout for d in done)
    rows = (folder / "trials.csv").read_text().splitlines()
    assert len(rows) == 5 and all(",completed," in r for r in rows[1:])
