"""The mistakes a new user makes (issue 25's list, each reproduced on the old main): one clear line, nothing lost.

Every case is refused with one line naming the key, path or fix — never a traceback, never accepted nonsense — and
leaves the run folders as they were.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import TINY, copy_run

from injflow.cli import main
from injflow.config import ConfigError, load_config
from injflow.errors import CheckpointError, RunFolderError, WriteError
from injflow.model import InjectiveFlow
from injflow.train import fit_config

pytestmark = pytest.mark.usefixtures("one_thread")


def one_line(capsys: pytest.CaptureFixture, rc: int, *mentions: str) -> str:
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for m in mentions:
        assert m in lines[0], lines[0]
    return lines[0]


def snapshot(folder) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}


# ------------------------------------------------------------------------------------------ a finished run is kept


def test_fit_into_a_finished_run_is_refused_and_overwrite_clears_everything(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path / "run")
    (run / "metrics.json").write_text("{}")
    (run / "eval").mkdir()
    (run / "eval" / "old.png").write_bytes(b"old")
    (run / "report.html").write_text("old report")
    (run / "notes.txt").write_text("mine")
    before = snapshot(run)
    rc = main(["fit", "--set", *TINY, f"run.dir={run}"])
    one_line(capsys, rc, "already holds a finished run", "--resume", "--overwrite", "run.dir")
    assert snapshot(run) == before  # nothing touched
    rc = main(["fit", "--overwrite", "--set", *TINY, "train.max_epochs=1", f"run.dir={run}"])
    assert rc == 0, capsys.readouterr().err
    assert not (run / "metrics.json").exists() and not (run / "eval").exists() and not (run / "report.html").exists()
    assert (run / "notes.txt").read_text() == "mine"  # not an injflow artefact: left alone
    assert json.loads((run / "status.json").read_text())["state"] == "completed"
    with open(run / "metrics.csv") as f:
        epochs = [float(r["epoch"]) for r in csv.DictReader(f) if r.get("epoch")]
    assert epochs and max(epochs) == 0  # one epoch: the old run's two epochs of rows are gone


def test_fit_into_an_interrupted_run_points_to_resume(tmp_path, capsys):
    run = tmp_path / "run"
    fit_config(load_config(None, [*TINY, f"run.dir={run}", "train.stop_after_steps=2"]), verbose=False)
    rc = main(["fit", "--set", *TINY, f"run.dir={run}"])
    one_line(capsys, rc, "unfinished run", "--resume")
    assert main(["fit", "--resume", str(run), "--overwrite"]) == 2
    assert "not both" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ folders that cannot be written


def _read_only(monkeypatch: pytest.MonkeyPatch, folder) -> None:
    """Simulates a read-only folder (the tests run as root, whom chmod does not stop)."""
    real_access, real_open = os.access, os.open
    folder = str(folder)

    def access(path, mode, *a, **k):
        return False if str(path).startswith(folder) and mode & os.W_OK else real_access(path, mode, *a, **k)

    def open_(path, flags, *a, **k):
        if str(path).startswith(folder) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(os, "open", open_)


@pytest.mark.parametrize("command", ["fit", "evaluate", "report"])
def test_read_only_folder_gets_one_line(tiny_run, tmp_path, monkeypatch, capsys, command):
    run = copy_run(tiny_run, tmp_path / "run") if command != "fit" else tmp_path / "ro"
    if command == "fit":
        run.mkdir()
    before = snapshot(run)
    _read_only(monkeypatch, run)
    argv = {"fit": ["fit", "--set", *TINY, f"run.dir={run}"], "evaluate": ["evaluate", str(run), "--no-progress"],
            "report": ["report", str(run)]}[command]
    line = one_line(capsys, main(argv), str(run))
    assert "write" in line
    monkeypatch.undo()
    assert snapshot(run) == before


# ------------------------------------------------------------------------------------------ raw tracebacks


@pytest.mark.parametrize("n", ["0", "-5", "many"])
def test_sample_count_must_be_positive_and_no_file_is_left(tiny_run, tmp_path, capsys, n):
    run = copy_run(tiny_run, tmp_path / "run")
    with pytest.raises(SystemExit) as e:
        main(["sample", str(run), "--n", n])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--n" in err and "whole number >= 1" in err and "Traceback" not in err
    assert not (run / "samples").exists()


def test_gpu_accelerator_without_a_gpu_is_a_config_error_and_writes_no_folder(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    rc = main(["fit", "--set", *TINY, "train.accelerator=gpu", f"run.dir={tmp_path / 'run'}"])
    one_line(capsys, rc, "train.accelerator", "cpu")
    assert not (tmp_path / "run").exists()


def test_model_maps_refuse_bad_counts_and_shapes(tiny_run):
    flow = InjectiveFlow.load(tiny_run / "model.pt")
    with pytest.raises(ValueError, match="integer >= 0, got -3"):
        flow.sample(-3)
    assert flow.sample(0).shape == (0, 2)
    with pytest.raises(ValueError, match=r"samples of shape \(3,\).*made for samples of shape \(2,\)"):
        flow.log_prob(torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"made for samples of shape \(2,\)"):
        flow.encode(torch.randn(5, 4))


def test_evaluate_a_model_of_another_data_shape_gets_one_line(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path / "run")
    other = tmp_path / "other"
    fit_config(load_config(None, [*TINY, "data.name=swiss_roll", "data.options={n_train: 200, n_val: 50, n_test: 50}",
                                  "model.latent_dim=2", f"run.dir={other}"]), verbose=False)
    (run / "model.pt").write_bytes((other / "model.pt").read_bytes())
    line = one_line(capsys, main(["evaluate", str(run), "--no-progress"]), str(run))
    assert "does not belong" in line and "model.latent_dim=2" in line
    with pytest.raises(CheckpointError):
        from injflow.loading import load_run_model

        load_run_model(run)


# ------------------------------------------------------------------------------------------ accepted nonsense


def test_report_of_a_folder_that_is_not_a_run_writes_nothing(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"x")
    one_line(capsys, main(["report", str(folder)]), str(folder), "not a run folder")
    assert sorted(p.name for p in folder.iterdir()) == ["cat.jpg"]


def test_empty_yaml_config_is_refused(tmp_path, capsys):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here yet\n")
    one_line(capsys, main(["fit", str(path)]), "empty.yaml", "is empty")


@pytest.mark.parametrize("method", ["rectangular_flow", "rnf"])
def test_negative_cg_iterations_are_refused(method):
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"method={{name: {method}, cg_max_iter: -1}}"])
    assert e.value.key == "method.cg_max_iter"


def test_more_gmm_components_than_training_points_fail_before_training(tmp_path, capsys):
    rc = main(["fit", "--set", *TINY, "data.options.n_train=20", "train.gmm_components=50", "train.samplers=[gmm]",
               f"run.dir={tmp_path / 'run'}"])
    one_line(capsys, rc, "train.gmm_components", "20")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------ speed of a config mistake


def test_a_config_mistake_is_answered_without_importing_lightning(tmp_path):
    code = ("import sys\nfrom injflow.cli import main\n"
            f"rc = main(['fit', '--set', 'model.latent_dim=5', 'run.dir={tmp_path / 'run'}'])\n"
            "print('RC', rc, 'LIGHTNING', 'lightning' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert "RC 2 LIGHTNING False" in proc.stdout, proc.stdout + proc.stderr
    assert "model.latent_dim" in proc.stderr


def test_errors_carry_their_key(tmp_path):
    for overrides, key in ((["data.options.n_train=0"], "data.options.n_train"), (["method.beta=-2"], "method.beta"),
                           (["model.options.depth=3"], "model.options.depth"), (["train.max_epochs=0"], "train.max_epochs")):
        with pytest.raises(ConfigError) as e:
            fit_config(load_config(None, [*TINY, *overrides, f"run.dir={tmp_path / 'run'}"]), verbose=False)
        assert e.value.key == key, (overrides, e.value.key)


def test_lock_file_of_a_read_only_folder_is_a_write_error(tmp_path, monkeypatch):
    from injflow.rundir import RunDir

    _read_only(monkeypatch, tmp_path / "ro")
    with pytest.raises(WriteError):
        RunDir(tmp_path / "ro").lock().acquire()
    monkeypatch.undo()
    with pytest.raises(RunFolderError, match="not a run folder"):
        RunDir(tmp_path).require_run()


def test_a_model_saved_before_a_config_key_existed_still_belongs_to_its_run(tiny_run, tmp_path):
    """A model whose saved config lacks a key added later (here data.standardize) was trained with that key's default:
    it still loads in its own run folder, and a key that really differs is still refused."""
    from injflow.loading import load_run_model

    run = copy_run(tiny_run, tmp_path / "run")
    flow = InjectiveFlow.load(run / "model.pt")
    del flow.config["data"]["standardize"]
    flow.save(run / "model.pt")
    assert load_run_model(run).latent_dim == 1
    flow.config["data"]["seed"] = 7  # another data split: not this run's model
    flow.save(run / "model.pt")
    with pytest.raises(CheckpointError, match="does not belong.*data.seed=7"):
        load_run_model(run)
