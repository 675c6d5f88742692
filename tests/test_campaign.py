"""The campaign driver (experiments/campaign.py): skip, resume, selection on validation only, failures, locks, and
the campaign scripts' CIFAR-10 / CelebA paths on small files in the upstream formats (issue 14)."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))
import campaign as C  # noqa: E402

SMOKE = ["data.name=digits", "data.options={n_val: 64, n_test: 64}", "data.batch_size=64", "model.architecture=mlp",
         "model.latent_dim=4", "model.options={hidden_features: [32]}", "train.max_steps=20", "train.max_epochs=1000",
         "train.gmm_components=3", "train.log_every_n_steps=5", "train.checkpoint_every_n_steps=5",
         "optim.scheduler={name: constant}"]


def toy_plan(betas=(5, 25), extra=()) -> C.Plan:
    runs = [C.RunSpec(f"fif-b{b}", "paper/fif-pythae-resnet-mnist.yaml", SMOKE + [f"method.beta={b}", *extra],
                      group="toy", params={"beta": b}) for b in betas]
    return C.Plan("toy", "smoke", runs, C.EvalSpec("val", 32, ["prior", "gmm"], features="pixels"),
                  C.EvalSpec("test", 32, ["prior", "gmm"], reconstruction=True, features="pixels"),
                  {"N": "prior", "GMM": "gmm"})


def ctx(folder: Path, **kw) -> C.Context:
    return C.Context(folder, fid_cache=str(folder.parent / "fid-cache"), **kw)


def scores(result: C.CampaignResult) -> dict:
    return {n: (r.val["fid"], r.test["fid"] if r.test else None) for n, r in result.records.items()}


def test_interrupted_campaign_resumes_to_the_same_table_and_finished_runs_are_skipped(tmp_path):
    plan = toy_plan()
    # 1. every training is stopped after 7 of 20 steps (as if the lease ended): nothing is assembled
    first = C.run_campaign(plan, ctx(tmp_path / "a", interrupt_after_steps=7), log=lambda m: None)
    assert not first.complete and not first.selection
    for name in ("fif-b5", "fif-b25"):
        assert C.engine_state(tmp_path / "a" / "runs" / name) == "resumable"
        assert json.loads((tmp_path / "a" / "runs" / name / "train.json").read_text())["global_step"] == 7
    # 2. the same command again: both runs resume from their checkpoints and finish; the table is complete
    resumed = C.run_campaign(plan, ctx(tmp_path / "a"), log=lambda m: None)
    assert resumed.complete
    assert all(json.loads((tmp_path / "a" / "runs" / n / "train.json").read_text())["invocations"] == 2
               for n in ("fif-b5", "fif-b25"))
    # 3. an uninterrupted campaign gives the very same numbers (the engine resumes bit-identically)
    fresh = C.run_campaign(plan, ctx(tmp_path / "b"), log=lambda m: None)
    assert scores(fresh) == scores(resumed) and fresh.selection == resumed.selection
    # 4. rerunning a finished campaign starts nothing and changes no file
    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "b").rglob("*.json")}
    lines: list[str] = []
    again = C.run_campaign(plan, ctx(tmp_path / "b"), log=lines.append)
    assert not [m for m in lines if m.startswith("start")] and scores(again) == scores(fresh)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "b").rglob("*.json") if p.name != "campaign.json"
            and p.name != "selection.json"} == {p: t for p, t in stamp.items() if p.name not in
                                                ("campaign.json", "selection.json")}


def test_selection_uses_validation_only_and_only_selected_runs_see_the_test_split(tmp_path):
    plan = toy_plan(betas=(5, 15, 25))
    plan.criteria = {"GMM": "gmm"}
    result = C.run_campaign(plan, ctx(tmp_path / "c"), log=lambda m: None)
    chosen = result.selection["toy"]["GMM"]
    best = min(result.records.values(), key=lambda r: r.val["fid"]["gmm"]).spec.name
    assert chosen == best
    for name, rec in result.records.items():
        assert rec.val["split"] == "val" and rec.val["protocol"]["split"] == "val"
        assert (rec.test is not None) == (name == chosen)  # the test split is scored for the selected run only
    assert result.records[chosen].test["split"] == "test"
    # the small-n protocol: reconstructions of split[:n] are scored against split[n:2n]
    assert result.records[chosen].test["protocol"]["label"] == "digits-test-32-64"
    # a changed evaluation (here n) is recomputed, not silently reused
    plan.test.n = 16
    lines: list[str] = []
    again = C.run_campaign(plan, ctx(tmp_path / "c"), log=lines.append)
    assert again.records[chosen].test["n"] == 16 and any(m.startswith("start test") for m in lines)
    with pytest.raises(ValueError, match="must not look at the test split"):
        C.Plan("bad", "smoke", plan.runs, C.EvalSpec("test", 8), plan.test, {"GMM": "gmm"}).check()


def test_lease_ends_failures_are_recorded_and_locks_respected(tmp_path):
    # a failing run (beta < 0 is rejected by the config) is recorded and the campaign completes with the others
    plan = toy_plan(betas=(5, 25))
    plan.runs.append(C.RunSpec("broken", "paper/fif-pythae-resnet-mnist.yaml", SMOKE + ["method.beta=-1"],
                               group="toy", params={"beta": -1}))
    folder = tmp_path / "d"
    partial = C.run_campaign(plan, ctx(folder), max_tasks=1, log=lambda m: None)  # one task, then the lease ends
    assert not partial.complete and sum(r.state == "trained" for r in partial.records.values()) == 1
    done = C.run_campaign(plan, ctx(folder), log=lambda m: None)
    assert done.complete and done.records["broken"].failed["stage"] == "train"
    assert "beta" in done.records["broken"].failed["error"]
    assert "broken" not in done.selection["toy"].values()
    # a run folder made from another spec is refused, not silently reused
    changed = toy_plan(betas=(5, 25), extra=["train.seed=1"])
    with pytest.raises(C.SpecMismatchError):
        C.execute(changed, "fif-b5", ("train",), ctx(folder))
    # a lock of a live process makes the run busy; a stale lock (dead pid) is taken over
    run = folder / "runs" / "fif-b5"
    (run / "val.json").unlink()
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (run / ".lock").write_text(str(helper.pid))
        assert C.execute(plan, "fif-b5", ("val",), ctx(folder)) == "busy"
    finally:
        helper.kill()
        helper.wait()
    assert C.execute(plan, "fif-b5", ("val",), ctx(folder)) == "done" and not (run / ".lock").exists()


def test_engine_status_json_is_honoured(tmp_path):
    run = tmp_path / "r"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert C.engine_state(run) == "resumable"
    (run / "model.pt").write_bytes(b"x")
    assert C.engine_state(run) == "trained"
    for state, expected in (("completed", "trained"), ("interrupted", "resumable"), ("running", "resumable"),
                            ("failed", "failed")):
        (run / "status.json").write_text(json.dumps({"state": state}))
        assert C.engine_state(run) == expected, state


def test_dry_run_lists_runs_states_and_an_estimate(tmp_path):
    plan = toy_plan()
    lines: list[str] = []
    total = C.print_plan(plan, ctx(tmp_path / "e"), jobs=2, log=lines.append)
    assert total is not None and total > 0
    assert any("fif-b5" in m and "new" in m and "table" in m for m in lines)
    assert "estimated" in lines[-1] and "--jobs 2" in lines[-1]


# ---------------------------------------------------------------------------------------------------- scripts

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
    pytest.importorskip("PIL.Image", reason="CelebA needs pillow")
    root = tmp_path_factory.mktemp("upstream")
    _cifar10_files(root)
    _celeba_files(root)
    return root


@pytest.mark.parametrize("script, args", [
    ("pythae_benchmark", ["--datasets", "cifar10", "celeba"]),
    # the App. A nets (Kumar) and the 34M FIF-ConvNet take 20-130 s for 2 steps here: slow
    pytest.param("kumar_table1", ["--datasets", "cifar10", "celeba", "--methods", "AE"], marks=pytest.mark.slow),
    pytest.param("fif_table2", ["--datasets", "celeba"], marks=pytest.mark.slow),
])
def test_campaign_scripts_on_cifar10_and_celeba_files(script, args, upstream_files, tmp_path):
    """The paper's architectures and data paths for CIFAR-10 and CelebA, 2 steps, on small upstream-format files."""
    module = __import__(script)
    out = tmp_path / "out"
    rc = module.main(["--scale", "smoke", "--out", str(out), "--data-root", str(upstream_files),
                      "--fid-cache", str(tmp_path / "cache"), *args])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert not summary["failed_runs"], summary["failed_runs"]
    configs = {json.loads((d / "spec.json").read_text())["config"] for d in (out / "campaign" / "runs").iterdir()}
    for dataset in {"cifar10": "cifar10", "celeba": "celeba"}.values():
        if dataset in " ".join(args):
            assert any(dataset in c for c in configs), configs
    shapes = {json.loads((d / "val.json").read_text() if (d / "val.json").exists() else (d / "test.json").read_text())
              ["protocol"]["dataset"] for d in (out / "campaign" / "runs").iterdir()}
    assert shapes <= {"cifar10", "celeba"}


@pytest.mark.slow
def test_parallel_workers_survive_a_kill(tmp_path):
    """--jobs 2 worker processes; the driver and its workers are SIGKILLed mid-training; the rerun gives the same
    table as a serial, uninterrupted campaign."""
    script = EXPERIMENTS / "pythae_benchmark.py"
    out = tmp_path / "par"
    cmd = [sys.executable, str(script), "--scale", "smoke", "--out", str(out), "--jobs", "2",
           "--fid-cache", str(tmp_path / "cache")]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and not list((out / "campaign" / "runs").glob("*/checkpoints/last.ckpt")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and both workers, at once
    proc.wait()
    states = [C.engine_state(d) for d in (out / "campaign" / "runs").iterdir()]
    assert "resumable" in states, states  # killed mid-training (checkpoints every 5 of 20 steps at smoke scale)
    assert subprocess.run(cmd, capture_output=True, timeout=900).returncode == 0
    serial = tmp_path / "ser"
    assert subprocess.run([sys.executable, str(script), "--scale", "smoke", "--out", str(serial),
                           "--fid-cache", str(tmp_path / "cache")], capture_output=True, timeout=900).returncode == 0
    assert (out / "table8.csv").read_text() == (serial / "table8.csv").read_text()
