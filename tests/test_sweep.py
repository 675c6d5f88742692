"""Sweeps (injflow.sweep, issue 23) without Ray: specs, grids, trial states, selection on validation only, tables,
dry-run estimates, folder refusals, and the trial code run in-process (train, resume, score, test). The tests that
start Ray are in tests/test_sweep_ray.py."""

from __future__ import annotations

import csv
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from injflow.config import load_config
from injflow.errors import RunFolderError, RunLockedError
from injflow.rundir import RunDir
from injflow.sweep import (
    Evaluation,
    SpecError,
    Trial,
    TrialRecord,
    expand_grid,
    load_spec,
    read_record,
    run_sweep,
    select,
    spec_from_dict,
    trial_overrides,
)
from injflow.sweep.estimate import Measured, estimate_trial, find_measured, run_key
from injflow.sweep.records import scores_file
from injflow.sweep.tables import write_selection_json, write_trials_csv
from injflow.sweep.trial import execute, make_task

REPO = Path(__file__).resolve().parents[1]
BASE = str(REPO / "configs" / "paper" / "fif-pythae-resnet-mnist.yaml")
#: Digits (64 pixels), an MLP 64-32-4: 2 epochs of 23 steps in about a second.
SMOKE = ["data.name=digits", "data.options={n_val: 64, n_test: 64}", "data.batch_size=64", "model.architecture=mlp",
         "model.latent_dim=4", "model.options={hidden_features: [32]}", "train.max_epochs=2", "train.gmm_components=3",
         "train.log_every_n_steps=5", "optim.scheduler={name: constant}", "train.pictures=false",
         "train.checkpoint_every_n_steps=5"]
PIXELS = {"n": 16, "samplers": ["prior", "gmm"], "features": "pixels"}


def smoke_spec(**kw) -> dict:
    return {"config": BASE, "set": SMOKE, "grid": {"method.beta": [5, 25]}, **kw}


def error_of(data: dict) -> str:
    with pytest.raises(SpecError) as info:
        spec_from_dict(data, name="t")
    return str(info.value)


# ---------------------------------------------------------------------------------------------------- spec and grid

def test_spec_mistakes_name_the_key():
    assert "gird: unknown key" in error_of({"gird": {}})
    assert "grid.method.beta: expected a non-empty list" in error_of({"grid": {"method.beta": 5}})
    assert "grid.beta: expected a dotted config key" in error_of({"grid": {"beta": [1]}})
    assert "grid[1].method.beta: repeats a value" in error_of({"grid": [{}, {"method.beta": [1, 1]}]})
    assert "config: config file 'nope.yaml' does not exist" in error_of({"config": "nope.yaml"})
    assert "set: expected key=value" in error_of({"set": ["train.max_epochs"]})
    assert "group: 'train.seed' is not a grid key" in error_of({"grid": {"method.beta": [1]}, "group": "train.seed"})
    assert "evaluate.features: expected one of inception, pixels" in error_of({"evaluate": {"features": "vgg"}})
    assert "evaluate.samplers" in error_of({"evaluate": {"samplers": ["gmm", "flow"]}})
    assert "select.mode: expected min or max" in error_of({"select": {"metric": "val/nll", "mode": "best"}})
    # selection never looks at the test split (FIF App. E.4)
    assert "must not look at the test split" in error_of({"select": {"metric": "test/fid_gmm"}})
    assert "no `evaluate` section" in error_of({"select": {"metric": "val/fid_gmm"}})
    assert "not scored by `evaluate`" in error_of({"select": {"metric": "val/fid_gaussian"}, "evaluate": PIXELS})
    spec = spec_from_dict({"evaluate": PIXELS, "test": {"reconstruction": True, "n": 8}}, name="t")
    assert spec.select[0].metric == "val/nll_D" and spec.select[0].mode == "min"  # the default criterion
    assert spec.evaluate.nll_D and spec.evaluate.samplers == tuple(PIXELS["samplers"])  # ... is scored
    bare = spec_from_dict({}, name="t")  # without evaluate: one that scores nll_D only (no images, no FID)
    assert bare.evaluate.nll_D and bare.evaluate.sets() == [] and "val/nll_D" in bare.evaluate.metric_names()
    assert "scores nothing" in error_of({"evaluate": {"samplers": []}, "select": "all"})
    named = spec_from_dict({"select": {"metric": "val/nll_D"}}, name="t")  # named rather than left out: the same
    assert named.evaluate.nll_D and named.select[0].metric == "val/nll_D"
    assert spec.test.split == "test" and spec.test.samplers == ("prior", "gmm") and spec.test.n == 8  # inherits


def test_spec_mistake_is_answered_at_once_without_ray(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: {method.beta: 5}\n")
    code = ("import sys; from injflow.cli import main; rc = main(['sweep', sys.argv[1]]); "
            "print('ray' in sys.modules); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, str(bad)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout.strip() == "False"  # Ray was not imported
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "grid.method.beta: expected a non-empty list" in lines[0]


def test_grid_names_groups_ties_and_configs():
    other = str(REPO / "configs" / "paper" / "kumar-mnist-vae.yaml")
    spec = spec_from_dict({
        "config": BASE,
        "grid": [{"method.beta": [5, 0.0001], "train.seed": [0, 1]},
                 {"config": [other], "method.mu.nu,method.mu_in.nu": [1.0, 1.3], "model.options": [{"a": 1}]}],
        "group": ["config"]}, name="t")
    trials = expand_grid(spec, check=False)
    assert [t.name for t in trials[:4]] == ["beta5-seed0", "beta5-seed1", "beta0.0001-seed0", "beta0.0001-seed1"]
    assert trials[0].overrides == ("method.beta=5", "train.seed=0") and trials[0].config == BASE
    tied = trials[4]
    assert tied.name == "kumar-mnist-vae-nu1-options0" and tied.config == other
    assert tied.overrides == ("method.mu.nu=1.0", "method.mu_in.nu=1.0", "model.options={a: 1}")
    assert {t.group for t in trials} == {"fif-pythae-resnet-mnist", "kumar-mnist-vae"}
    # the same spec gives the same names (they name the folders a --resume finds)
    assert [t.name for t in expand_grid(spec, check=False)] == [t.name for t in trials]
    with pytest.raises(SpecError, match="several grid points are named"):
        expand_grid(spec_from_dict({"config": BASE, "grid": [{"method.beta": [5]}, {"method.beta": [5]}]}, name="t"))


def test_config_mistakes_of_one_grid_point_mark_that_trial_and_shared_ones_refuse_the_spec():
    trials = expand_grid(spec_from_dict(smoke_spec(grid={"method.beta": [5, -1]}), name="t"))
    assert trials[0].error is None
    assert trials[1].error.startswith("ConfigError: method.beta")  # reported, not run; the other trial runs
    with pytest.raises(SpecError, match=r"set: with fif-pythae-resnet-mnist.yaml: .*train.max_epochs"):
        expand_grid(spec_from_dict(smoke_spec(set=SMOKE + ["train.max_epochs=0"]), name="t"))


def test_trial_overrides_add_threads_gpu_and_a_checkpoint_period():
    trial = Trial("t", BASE, ("method.beta=5",), {"method.beta": 5})
    assert trial_overrides(trial, threads=2) == ["method.beta=5", "train.progress_bar=false", "train.num_threads=2",
                                                 "train.checkpoint_every_n_steps=50", 'train.tags.trial="t"',
                                                 'train.tags.method:beta="5"']
    config = load_config(BASE, trial_overrides(Trial("t", BASE, ("method.beta=5",), {"method.beta": 5}, "FIF")))
    assert config.train.tags == {"trial": "t", "group": "FIF", "method:beta": "5"}  # the tracker's tags, as strings
    gpu = trial_overrides(Trial("t", BASE, ("train.checkpoint_every_n_steps=7",)), threads=1, gpus=0.25)
    assert "train.accelerator=gpu" in gpu and "train.devices=1" in gpu
    assert not any(o == "train.checkpoint_every_n_steps=50" for o in gpu)  # the spec's period stands


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_sweep_specs_load_and_every_trial_config_is_valid(path, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # config paths resolve against the spec's folder from anywhere
    spec = load_spec(path)
    assert spec.name == path.stem
    trials = expand_grid(spec)
    assert trials and not [t.error for t in trials if t.error]
    assert not any(c.metric.startswith("test/") for c in spec.select) and spec.test is not None
    scale = path.stem.rsplit("-", 1)[1]
    assert (spec.evaluate or spec.test).features == ("pixels" if scale == "smoke" else "inception")


# ---------------------------------------------------------------------------------------------------- selection

def rec(name, group, state="completed", **metrics):
    return TrialRecord(Trial(name, BASE, (f"x.y={name}",), {"x.y": name}, group), state, metrics=metrics)


def test_selection_per_group_min_max_ties_and_failures():
    spec = spec_from_dict({"grid": {"x.y": [1]}, "select": [{"metric": "val/a", "mode": "min"},
                                                             {"metric": "val/b", "mode": "max"}]}, name="t")
    records = [rec("a1", "g1", **{"val/a": 2.0, "val/b": 1.0}), rec("a2", "g1", **{"val/a": 1.0, "val/b": 1.0}),
               rec("a3", "g1", "failed", **{"val/a": 0.1}),  # not completed: never selected
               rec("a4", "g1", **{"val/a": float("nan"), "val/b": 5.0, "test/a": -100.0}),
               rec("b1", "g2", **{"val/b": 3.0})]
    got = {(s.group, s.metric): s for s in select(records, spec)}
    assert got["g1", "val/a"].trial == "a2" and got["g1", "val/a"].candidates == 2  # NaN left out
    assert got["g1", "val/b"].trial == "a4" and got["g1", "val/b"].value == 5.0
    assert got["g2", "val/a"].trial is None and "reported val/a" in got["g2", "val/a"].note
    assert got["g2", "val/b"].overrides == ["x.y=b1"] and got["g2", "val/b"].values == {"x.y": "b1"}
    tie = select([rec("first", "g", **{"val/a": 1.0}), rec("second", "g", **{"val/a": 1.0})], spec)
    assert tie[0].trial == "first"
    everyone = spec_from_dict({"grid": {"x.y": [1]}, "select": "all"}, name="t")
    assert [s.trial for s in select(records, everyone)] == ["a1", "a2", "a4", "b1"]


def test_tables(tmp_path):
    spec = spec_from_dict({"grid": {"x.y": [1]}, "select": {"metric": "val/a"}}, name="t")
    records = [rec("a1", "g", **{"val/a": 2.0}), rec("a2", "g", **{"val/a": 1.0})]
    records[1].test = {"test/fid_gmm": 3.0}
    records.append(TrialRecord(Trial("bad", BASE, (), {"x.y": 9}), "invalid", error="ConfigError: x"))
    selections = select(records, spec)
    with open(write_trials_csv(tmp_path / "trials.csv", records, selections), newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["trial"] for r in rows] == ["a1", "a2", "bad"]
    assert rows[1]["selected"] == "val/a" and rows[1]["test/fid_gmm"] == "3.0" and rows[0]["test/fid_gmm"] == ""
    assert rows[2]["state"] == "invalid" and rows[2]["error"] == "ConfigError: x" and rows[2]["x.y"] == "9"
    selection = json.loads(write_selection_json(tmp_path / "selection.json", spec, selections).read_text())
    assert selection["selected"][0]["trial"] == "a2" and selection["selected"][0]["test"] == {"test/fid_gmm": 3.0}
    assert selection["selected"][0]["overrides"] == ["x.y=a2"] and selection["select"] == [{"metric": "val/a", "mode": "min"}]


# ---------------------------------------------------------------------------------------------------- trial states

def test_trial_states_from_the_run_folder(tmp_path):
    trial = Trial("t", BASE, ())
    evaluation = Evaluation(n=16, features="pixels")
    folder = tmp_path / "t"
    assert read_record(folder, trial, evaluation).state == "new"
    assert read_record(folder, Trial("t", BASE, (), error="ConfigError: x"), None).state == "invalid"
    run = RunDir(folder)
    run.write_status("running", step=3)
    assert read_record(folder, trial, evaluation).state == "running"  # this process is alive
    status = json.loads(run.status_file.read_text())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run.status_file.write_text(json.dumps({**status, "pid": dead.pid, "host": socket.gethostname()}))
    record = read_record(folder, trial, evaluation)
    assert record.state == "interrupted" and record.step == 3  # its process was killed: resumes
    run.write_status("failed", step=4, reason="NonFiniteLossError: non-finite loss at step 4\ntraceback")
    assert read_record(folder, trial, evaluation).error == "NonFiniteLossError: non-finite loss at step 4"
    run.write_status("completed", step=20)
    run.model.write_bytes(b"model")
    run.metrics_csv.write_text("step,val/nll,train/loss_step\n10,2.0,\n19,,1.0\n20,1.5,\n")
    record = read_record(folder, trial, evaluation)
    assert record.state == "trained" and record.metrics == {"val/nll": 1.5}  # training done, scores missing
    assert read_record(folder, trial, None).state == "completed"  # nothing to score
    scores_file(folder, "val").write_text(json.dumps({"evaluation": evaluation.to_dict(), "scores": {"fid_gmm": 3.0}}))
    assert read_record(folder, trial, evaluation).metrics == {"val/nll": 1.5, "val/fid_gmm": 3.0}
    # scores of another evaluation (here n) are not reused
    assert read_record(folder, trial, Evaluation(n=32, features="pixels")).state == "trained"
    scores_file(folder, "val").write_text(json.dumps({"evaluation": evaluation.to_dict(), "error": "ValueError: n"}))
    assert read_record(folder, trial, evaluation).state == "failed"


def test_trial_trains_resumes_to_the_same_weights_scores_and_is_not_retrained(tmp_path, one_thread):
    """The trial code in-process: a trial stopped after 7 steps (as if killed) resumes from its checkpoint to the
    weights of an uninterrupted trial; a finished trial is not trained again; the test split is scored only when
    asked; a changed evaluation is recomputed."""
    spec = spec_from_dict(smoke_spec(evaluate=PIXELS, test={"reconstruction": True}), name="t")
    trial = expand_grid(spec)[0]

    def task(folder, stage="train", extra=()):
        made = make_task(spec, trial, folder, stage)
        made["overrides"] += list(extra)
        return made

    stopped = tmp_path / "stopped"
    first = execute(task(stopped, extra=["train.stop_after_steps=7"]))
    assert first["sweep/state"] == "interrupted" and first["step"] == 7
    resumed = execute(task(stopped))
    intact = execute(task(tmp_path / "intact"))
    assert resumed["sweep/state"] == intact["sweep/state"] == "completed"
    assert resumed["step"] == intact["step"] > 7
    a, b = (torch.load(p / "model.pt", weights_only=True) for p in (stopped, tmp_path / "intact"))
    flat = [k for k, v in a.items() if isinstance(v, dict)]
    for key in flat:
        for name, tensor in a[key].items():
            if isinstance(tensor, torch.Tensor):
                assert torch.equal(tensor, b[key][name]), (key, name)
    assert {k: v for k, v in resumed.items() if k != "train_seconds"} == {k: v for k, v in intact.items() if k != "train_seconds"}
    assert resumed["val/fid_gmm"] > 0 and not scores_file(stopped, "test").exists()  # no test split before selection
    stamp = (stopped / "model.pt").stat().st_mtime_ns
    assert execute(task(stopped))["step"] == resumed["step"] and (stopped / "model.pt").stat().st_mtime_ns == stamp
    tested = execute(task(stopped, "test"))
    assert tested["sweep/state"] == "tested" and tested["test/fid_reconstruction"] > 0
    # the small-n protocol: reconstructions of test[:16] and samples are scored against test[16:32]
    assert json.loads(scores_file(stopped, "test").read_text())["protocol"]["label"] == "digits-test-16-32"
    # a changed evaluation (here n) is recomputed, not silently reused
    changed = task(stopped)
    changed["evaluate"] = {**changed["evaluate"], "n": 8}
    assert execute(changed)["val/fid_gmm"] != resumed["val/fid_gmm"]
    assert json.loads(scores_file(stopped, "val").read_text())["evaluation"]["n"] == 8
    # a failing trial: the one-line error, recorded in its folder's status, and no exception
    bad = execute(task(tmp_path / "nan", extra=["optim.lr=1e8"]))
    assert bad["sweep/state"] == "failed" and bad["sweep/error"].startswith("NonFiniteLossError")
    assert RunDir(tmp_path / "nan").status()["state"] == "failed"
    wide = execute(task(tmp_path / "wide", extra=["model.latent_dim=100"]))
    assert wide["sweep/state"] == "failed" and "model.latent_dim" in wide["sweep/error"]
    assert RunDir(tmp_path / "wide").status()["state"] == "failed"


# ---------------------------------------------------------------------------------------------------- folders

def test_sweep_folder_refusals_come_before_ray(tmp_path, monkeypatch):
    import injflow.sweep.runner as runner

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray must not start")

    monkeypatch.setattr(runner, "ray_session", no_ray)
    spec = spec_from_dict(smoke_spec(), name="t")
    folder = tmp_path / "sweep"
    with RunDir(folder).lock("sweep"):  # a second sweep on a folder in use is refused in one line
        with pytest.raises(RunLockedError, match="in use by process .*sweep"):
            run_sweep(spec, folder=folder)
    (folder / "sweep.json").write_text(json.dumps({"name": "t", "spec": spec.to_dict(), "trials": []}))
    with pytest.raises(RunFolderError, match="already holds sweep 't'.*--resume"):
        run_sweep(spec, folder=folder)
    with pytest.raises(RunFolderError, match="holds no sweep to resume"):
        run_sweep(spec, folder=tmp_path / "empty", resume=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(RunFolderError, match="not empty and holds no sweep"):
        run_sweep(spec, folder=tmp_path / "other")
    # a trial folder made from other overrides is refused, not resumed as if it were this trial
    trial = expand_grid(spec)[0]
    (folder / "trials" / trial.name).mkdir(parents=True)
    (folder / "trials" / trial.name / "trial.json").write_text(json.dumps({**trial.identity(), "overrides": ["a=1"]}))
    with pytest.raises(SpecError, match="the spec changed under the same trial name"):
        run_sweep(folder, resume=True)  # the stored spec is used when the folder is given


def test_without_ray_the_command_says_what_to_install(tmp_path, monkeypatch, capsys):
    import importlib.util

    from injflow.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    spec = tmp_path / "s.yaml"
    spec.write_text(json.dumps(smoke_spec()))
    assert main(["sweep", str(spec), "--dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'injflow[sweep]'" in err[0]


# ---------------------------------------------------------------------------------------------------- estimates

def test_dry_run_estimates_from_measured_runs(tmp_path, capsys):
    spec = spec_from_dict(smoke_spec(grid={"method.beta": [5, 25, 50]}), name="t")
    folder = tmp_path / "sweep"
    trials = expand_grid(spec)
    # nothing measured yet: no estimate, and the listing says why
    result = run_sweep(spec, folder=folder, dry_run=True, log=print)
    out = capsys.readouterr().out
    assert "no finished run of mlp on digits with batch 64 to measure" in out and "3 trial(s) without an estimate" in out
    assert {r.state for r in result.records} == {"new"} and not folder.exists()  # a dry run writes nothing
    # one finished trial (as the engine writes it: step and train_seconds) measures the others
    from injflow.config import config_to_dict, load_config

    done = RunDir(folder / "trials" / trials[0].name)
    done.write_config(load_config(trials[0].config, list(trials[0].overrides)))
    done.write_status("completed", step=46)
    done.model.write_bytes(b"model")
    status = json.loads(done.status_file.read_text())
    done.status_file.write_text(json.dumps({**status, "train_seconds": 9.2}))
    measured = find_measured([folder])
    assert len(measured) == 1 and measured[0].steps == 46 and measured[0].seconds == 9.2
    config = config_to_dict(load_config(trials[1].config, list(trials[1].overrides)))
    assert measured[0].key == run_key(config)
    half = TrialRecord(trials[1], "interrupted", step=23)
    estimate = estimate_trial(trials[1], half, measured)
    assert estimate.seconds == pytest.approx(0.2 * 23) and "measured by 1 run" in estimate.source
    # another batch size is another cost: not measured by it
    other = Measured(Path("x"), run_key({**config, "data": {**config["data"], "batch_size": 32}}), "", 10, 1.0)
    assert estimate_trial(trials[1], half, [other]).seconds is None
    # a wall-clock budget caps the estimate
    budget = expand_grid(spec_from_dict(smoke_spec(set=SMOKE + ["train.max_time=3"]), name="t"))[0]
    assert estimate_trial(budget, TrialRecord(budget, "new"), []).seconds == 3.0
    run_sweep(spec, folder=folder, dry_run=True, log=print)
    lines = capsys.readouterr().out.splitlines()
    assert any(trials[0].name in line and "trained" in line for line in lines)  # trained; its val/nll_D not yet scored
    assert lines[-1].startswith("estimated: 18 s of trials")  # 2 new trials x 46 steps x 0.2 s


def test_the_docs_example_is_runnable(tmp_path, monkeypatch, one_thread):
    """docs/sweeps.md "Sweep your own data": its data script and spec, one trial trained at a tiny scale in-process."""
    import re

    text = (REPO / "docs" / "sweeps.md").read_text().split("## Sweep your own data", 1)[1].split("\n## ", 1)[0]
    python = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    spec_text = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(python, "docs/sweeps.md", "exec"), {})
    (tmp_path / "curve-sweep.yaml").write_text(spec_text)
    spec = load_spec(tmp_path / "curve-sweep.yaml")
    trials = expand_grid(spec)
    assert len(trials) == 6 and not [t for t in trials if t.error] and "beta30-seed1" in [t.name for t in trials]
    assert len({t.group for t in trials}) == 3
    task = make_task(spec, trials[0], tmp_path / "runs" / trials[0].name, "train")
    task["overrides"] += ["train.max_epochs=2"]
    result = execute(task)
    assert result["sweep/state"] == "completed" and math.isfinite(result["val/nll_D"])  # the default criterion's metric


def test_the_default_criterion_is_the_d_dimensional_likelihood_of_evaluate(tiny_run, tmp_path):
    """A sweep's ``val/nll_D`` (scoring.score_run) is ``injflow evaluate``'s ``nll_D`` of the same points: exact NLL on
    the manifold plus the off-manifold Gaussian of the noise fitted on the training split (two code paths)."""
    from conftest import copy_run

    from injflow.runs import evaluate_run
    from injflow.sweep.scoring import score_run

    run = copy_run(tiny_run, tmp_path / "run")
    scored = score_run(run, Evaluation(n=50, samplers=(), nll_D=True))["scores"]
    metrics = evaluate_run(run, split="val", max_samples=50, verbose=False, fid=False, n_samples=20)
    assert scored["nll"] == pytest.approx(metrics["nll"], rel=1e-5)
    assert scored["reconstruction_error"] == pytest.approx(metrics["reconstruction_error"], rel=1e-5)
    assert scored["nll_D"] == pytest.approx(metrics["nll_D"], rel=1e-5)
    noise = metrics["off_manifold_noise"]  # nll_D = nll + (D-d)/2 log(2πσ²) + rec/(2σ²): the thickening is there
    thickened = metrics["nll"] + (noise["data_dim"] - noise["latent_dim"]) / 2 * math.log(2 * math.pi * noise["variance"]) \
        + metrics["reconstruction_error"] / (2 * noise["variance"])
    assert scored["nll_D"] == pytest.approx(thickened, rel=1e-6)
