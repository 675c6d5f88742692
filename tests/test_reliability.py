"""What injflow guarantees about run folders and files (docs/training.md, "What injflow guarantees"):

loading never runs code; a stopped run never looks finished; checkpoints are never written from non-finite
weights; one writer per run folder; corrupt or mismatched files get one line naming them; a resumed run's
metrics.csv equals an uninterrupted one's; bad data are refused before training; full or read-only disks get one
line; temporary files of killed writers are removed; a finished run is extended only when that is sound.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import injflow.api as inj
from injflow.cli import main
from injflow.config import load_config
from injflow.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    NonFiniteLossError,
    RunLockedError,
    UnsafeFileError,
    WriteError,
)
from injflow.methods import FIF, Clock
from injflow.rundir import RunDir
from injflow.train import fit_config, resume_run

FAST = [
    "data.options.n_train=400", "data.options.n_val=100", "data.options.n_test=100", "data.batch_size=100",
    "model.options.n_blocks=1", "model.options.hidden_features=16", "train.max_epochs=2", "train.progress_bar=false",
    "train.num_threads=1", "train.gmm_components=2", "train.samplers=[gaussian]", "train.pictures=false",
]
REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def fit(run: Path, *extra: str, **kwargs):
    return fit_config(load_config(None, [*FAST, f"run.dir={run}", *extra]), verbose=False, **kwargs)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    torch.set_num_threads(1)
    fit(run)
    return run


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def one_line_error(capsys, rc: int, *, code: int = 2, mentions: str = "") -> str:
    err = capsys.readouterr().err
    assert rc == code, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert mentions in lines[0], lines[0]
    return lines[0]


# --------------------------------------------------------------------------- 1. loading never runs code


class _Evil:
    """Unpickling this would create the marker file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant(path: Path, marker: Path, *, zip_format: bool) -> None:
    if zip_format:  # what torch.save writes: a zip archive around the pickle
        torch.save({"format": "injflow-model", "nets": _Evil(marker)}, path)
    else:  # a bare pickle
        path.write_bytes(pickle.dumps(_Evil(marker)))


@pytest.mark.parametrize("zip_format", [True, False], ids=["torch-zip", "bare-pickle"])
def test_crafted_pickle_runs_nothing_in_any_load_path(finished_run, tmp_path, capsys, zip_format):
    marker = tmp_path / "PWNED"
    run = copy_run(finished_run, tmp_path / "run")
    _plant(run / "model.pt", marker, zip_format=zip_format)
    _plant(run / "checkpoints" / "last.ckpt", marker, zip_format=zip_format)
    _plant(run / "checkpoints" / "best.ckpt", marker, zip_format=zip_format)
    evil = run / "model.pt"
    for load in (lambda: inj.InjectiveFlow.load(evil), lambda: inj.InjectiveFlow.load_from_checkpoint(evil),
                 lambda: inj.load(run), lambda: inj.load(run, checkpoint="last"), lambda: inj.load(evil),
                 lambda: resume_run(run, verbose=False)):
        with pytest.raises(UnsafeFileError, match="refusing to load"):
            load()
    for argv in (["sample", str(run), "--n", "5"], ["evaluate", str(run)], ["evaluate", str(run), "--checkpoint", "best"],
                 ["fit", "--resume", str(run)]):
        one_line_error(capsys, main(argv), mentions="refusing to load")
    # data files: the GAS pandas pickle and the classic mnist.pkl.gz pickle
    from injflow.data.formats import read_array_pickle, read_dataframe_pickle

    bad = tmp_path / "ethylene_CO.pickle"
    bad.write_bytes(pickle.dumps(_Evil(marker)))
    for reader in (read_dataframe_pickle, read_array_pickle):
        with pytest.raises(pickle.UnpicklingError, match="refusing"):
            reader(bad)
    assert not marker.exists()


# --------------------------------------------------------------------------- 2. signals


def _start_fit(run: Path, *extra: str) -> subprocess.Popen:
    args = [*FAST, "train.max_epochs=200", "data.options.n_train=2000", "train.log_every_n_steps=1", f"run.dir={run}",
            *extra]
    return subprocess.Popen([sys.executable, "-m", "injflow.cli", "fit", "--set", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _wait_for_steps(run: Path, proc: subprocess.Popen, rows: int = 5, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        assert proc.poll() is None, proc.communicate()
        csv = run / "metrics.csv"
        if csv.is_file() and len(csv.read_text().splitlines()) > rows:
            return
        time.sleep(0.2)
    raise AssertionError("the run did not start training in time")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_resumable_checkpoint_and_exits_nonzero(tmp_path, capsys, signum):
    run = tmp_path / "run"
    proc = _start_fit(run)
    _wait_for_steps(run, proc)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, (out, err)
    assert f"stopped by {signal.Signals(signum).name}" in err, err
    assert "Traceback" not in err, err
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "interrupted" and status["step"] > 0 and status["signal"] == signum, status
    assert not (run / "model.pt").exists()
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == status["step"]
    # evaluate and sample say the run is unfinished, with its step, instead of using a checkpoint silently
    for argv in (["evaluate", str(run)], ["sample", str(run), "--n", "3"]):
        line = one_line_error(capsys, main(argv), mentions="unfinished")
        assert f"step {status['step']}" in line and "--resume" in line
    if signum != signal.SIGTERM:
        return
    # ... and it resumes from where it stopped
    proc = subprocess.run([sys.executable, "-m", "injflow.cli", "fit", "--resume", str(run), "--set",
                           "train.stop_after_steps=" + str(status["step"] + 3)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "status.json").read_text())["step"] == status["step"] + 3


# --------------------------------------------------------------------------- 3. no checkpoint of non-finite weights


def test_nan_gradient_leaves_last_good_checkpoint(tmp_path, monkeypatch):
    """A finite loss with a NaN gradient at step 5 poisons the weights; no checkpoint holds them, last.ckpt stays at
    step 4, finite and loadable, and the error says where the NaN came from."""
    original = FIF.loss

    def nan_gradient(self, batch, step, model):
        terms = original(self, batch, step, model)
        if Clock.of(step).step == 5:
            w = next(model.decoder.parameters())
            poison = torch.where(torch.tensor(False), torch.sqrt(-w.abs().sum() - 1), torch.tensor(0.0))
            terms["loss"] = terms["loss"] + poison  # value unchanged, gradient NaN
        return terms

    monkeypatch.setattr(FIF, "loss", nan_gradient)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="last checkpoint is intact|previous checkpoint is the last good one"):
        fit(run, "train.max_epochs=3", "train.checkpoint_every_n_steps=2")
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    flow = inj.InjectiveFlow.load_from_checkpoint(run / "checkpoints" / "last.ckpt")
    assert torch.isfinite(flow.encode(torch.randn(3, 2))).all()
    assert json.loads((run / "status.json").read_text())["state"] == "failed"
    assert not list(run.rglob(".*.tmp-*"))


def test_infinite_learning_rate_is_a_config_error():
    with pytest.raises(ConfigError, match="optim.lr: must be a finite number"):
        load_config(None, ["optim.lr=inf"])


# --------------------------------------------------------------------------- 4. one writer per folder


def test_second_writer_is_refused_and_writes_nothing(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    with RunDir(run).lock("test holder"):
        with pytest.raises(RunLockedError, match=f"in use by process {os.getpid()}.*test holder"):
            fit(run)
        proc = subprocess.run([sys.executable, "-m", "injflow.cli", "fit", "--set", *FAST, f"run.dir={run}"],
                              capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 2 and f"in use by process {os.getpid()}" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    after = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before
    fit(run, overwrite=True)  # free again (a finished run is only replaced when asked to)


# --------------------------------------------------------------------------- 5. corrupt and mismatched files


@pytest.fixture(scope="module")
def foreign_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """last.ckpt of a run with another architecture and of a run on data of another shape."""
    base = tmp_path_factory.mktemp("foreign")
    torch.set_num_threads(1)
    fit(base / "wide", "model.options.hidden_features=24")
    fit(base / "3d", "data.name=swiss_roll", "data.options={n_train: 400, n_val: 100, n_test: 100}", "model.latent_dim=2")
    return {"other architecture": base / "wide" / "checkpoints" / "last.ckpt",
            "other data shape": base / "3d" / "checkpoints" / "last.ckpt"}


@pytest.mark.parametrize("kind", ["truncated", "random bytes", "empty", "other architecture", "other data shape"])
def test_corrupt_or_mismatched_checkpoint_gets_one_line(finished_run, foreign_checkpoints, tmp_path, capsys, kind):
    run = copy_run(finished_run, tmp_path / "run")
    last = run / "checkpoints" / "last.ckpt"
    if kind == "truncated":
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    elif kind == "random bytes":
        last.write_bytes(random_bytes(4096, seed=1))
    elif kind == "empty":
        last.write_bytes(b"")
    else:
        shutil.copy(foreign_checkpoints[kind], last)
    for argv in (["evaluate", str(run), "--checkpoint", "last"], ["fit", "--resume", str(run), "--set", "train.max_epochs=3"],
                 ["sample", str(run), "--checkpoint", "last", "--n", "3"]):
        one_line_error(capsys, main(argv), mentions="last.ckpt")
    with pytest.raises(CheckpointError, match="last.ckpt"):
        inj.load(run, checkpoint="last")


@pytest.mark.parametrize("kind", ["truncated", "random bytes", "empty", "not a model"])
def test_corrupt_model_file_gets_one_line(finished_run, tmp_path, capsys, kind):
    run = copy_run(finished_run, tmp_path / "run")
    model = run / "model.pt"
    data = {"truncated": model.read_bytes()[:100], "random bytes": random_bytes(2048, seed=2), "empty": b""}
    if kind == "not a model":
        torch.save({"weights": torch.ones(3)}, model)
    else:
        model.write_bytes(data[kind])
    one_line_error(capsys, main(["evaluate", str(run)]), mentions="model.pt")
    one_line_error(capsys, main(["sample", str(run), "--n", "3"]), mentions="model.pt")


def test_evaluate_a_relative_run_folder_writes_its_metrics_json_inside_it(finished_run, tmp_path, monkeypatch):
    # The README's `injflow evaluate runs/default`: metrics.json belongs in runs/default/, not runs/default/runs/default/.
    copy_run(finished_run, tmp_path / "runs" / "default")
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "runs/default", "--no-progress"]) == 0
    assert json.loads((tmp_path / "runs" / "default" / "metrics.json").read_text())["latent_dim"] == 1
    assert not (tmp_path / "runs" / "default" / "runs").exists()


def random_bytes(n: int, *, seed: int, prefix: bytes = b"") -> bytes:
    """``n`` seeded random bytes after ``prefix`` (seeded: a failure reproduces)."""
    import random

    return prefix + random.Random(seed).randbytes(n)


# A zip header or a pickle protocol opcode sends garbage deep into torch's readers (the weights-only unpickler
# raised IndexError on one such file): every kind must end in CheckpointError, never another exception.
GARBAGE_PREFIXES = {"plain": b"", "zip": b"PK\x03\x04", "pickle": b"\x80\x02", "pickle5": b"\x80\x05\x95"}


@pytest.mark.parametrize("prefix", list(GARBAGE_PREFIXES), ids=list(GARBAGE_PREFIXES))
def test_any_garbage_file_is_a_checkpoint_error(tmp_path, prefix):
    from injflow.io import load_torch

    path = tmp_path / "last.ckpt"
    for seed in range(150):
        path.write_bytes(random_bytes(1 + seed * 13 % 3000, seed=seed, prefix=GARBAGE_PREFIXES[prefix]))
        with pytest.raises(CheckpointError, match="last.ckpt"):
            load_torch(path, what="checkpoint")


# --------------------------------------------------------------------------- 6. metrics.csv after a resume


def test_resumed_metrics_csv_equals_uninterrupted(tmp_path):
    extra = ["train.max_epochs=3", "train.input_noise=0.01", "method.beta={schedule: linear, start: 20, end: 40}",
             "optim.scheduler.name=onecycle", "train.log_every_n_steps=2"]
    fit(tmp_path / "full", *extra)
    part = fit(tmp_path / "part", *extra, "train.stop_after_steps=6")  # mid-epoch 2 (4 steps per epoch)
    assert not part.completed and part.global_step == 6
    assert json.loads((tmp_path / "part" / "status.json").read_text())["state"] == "interrupted"
    resumed = resume_run(tmp_path / "part", ["train.stop_after_steps=null"], verbose=False)
    assert resumed.completed and resumed.global_step == 12
    full_csv = (tmp_path / "full" / "metrics.csv").read_text()
    assert (tmp_path / "part" / "metrics.csv").read_text() == full_csv
    assert "train/loss_epoch" in full_csv.splitlines()[0]


# --------------------------------------------------------------------------- 9. bad data, found before training


def _custom_flow(d_in: int = 4):
    enc = torch.nn.Sequential(torch.nn.Linear(d_in, 16), torch.nn.SiLU(), torch.nn.Linear(16, 2))
    dec = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.SiLU(), torch.nn.Linear(16, d_in))
    return inj.InjectiveFlow(enc, dec, latent_dim=2, data_shape=(d_in,))


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: torch.empty(0, 4), DataError, "holds no samples"),
        (lambda: torch.randn(64, 5), DataError, "shape"),
        (lambda: torch.cat([torch.randn(60, 4), torch.full((4, 4), float("nan"))]), DataError, r"rows: \[60, 61, 62, 63\]"),
        (lambda: torch.randn(64, 4) * torch.tensor([1.0, 1.0, 1e30, 1.0]), DataError, r"columns \[2\].*standardise"),
        (lambda: torch.randint(0, 5, (64, 4)), DataError, "dtype"),
    ],
    ids=["empty", "wrong width", "nan rows", "1e30", "integers"],
)
def test_bad_data_is_refused_before_training(tmp_path, make, error, message):
    run = tmp_path / "run"
    with pytest.raises(error, match=message):
        inj.train(_custom_flow(), make(), method=FIF(beta=5.0), overrides=["train.max_epochs=1", "train.progress_bar=false"],
                  run_dir=run, verbose=False)
    assert not run.exists()


def test_float64_data_are_converted_with_a_warning(tmp_path):
    x = torch.randn(128, 4, dtype=torch.float64)
    with pytest.warns(UserWarning, match="float64.*converting"):
        result = inj.train(_custom_flow(), x, method=FIF(beta=5.0), run_dir=tmp_path / "run", verbose=False,
                           overrides=["train.max_epochs=1", "train.progress_bar=false", "train.samplers=[]",
                                      "train.pictures=false"])
    assert result.completed


def test_power_file_of_text_gets_a_clear_message(tmp_path, capsys):
    path = tmp_path / "maf" / "power" / "data.npy"
    path.parent.mkdir(parents=True)
    path.write_text("1,2,3\n4,5,6\n")
    rc = main(["fit", "--set", f"data={{name: power, root: {tmp_path}}}", "model={architecture: tabular, latent_dim: 3}",
               f"run.dir={tmp_path / 'run'}"])
    one_line_error(capsys, rc, mentions="is not the upstream POWER data.npy")


# --------------------------------------------------------------------------- 10. disks, temp files, extension


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_full_or_read_only_disk_gets_one_line_and_keeps_the_old_file(tmp_path, monkeypatch, capsys, code):
    import injflow.io as io

    path = tmp_path / "x.pt"
    io.atomic_torch_save({"a": 1}, path)

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(io.os, "replace", fail)
    with pytest.raises(WriteError, match="intact"):
        io.atomic_torch_save({"a": 2}, path)
    assert torch.load(path) == {"a": 1} and [p.name for p in tmp_path.iterdir()] == ["x.pt"]
    rc = main(["fit", "--set", *FAST, f"run.dir={tmp_path / 'run'}"])
    one_line_error(capsys, rc, mentions="cannot write")


def test_temp_files_of_a_killed_writer_are_removed_at_the_next_start(tmp_path):
    run = tmp_path / "run"
    fit(run, "train.stop_after_steps=3")
    stale = run / "checkpoints" / ".last.ckpt.tmp-999999999"  # the pid of a writer that is gone
    stale.write_bytes(b"half a checkpoint")
    assert resume_run(run, ["train.stop_after_steps=null"], verbose=False).completed
    assert not stale.exists()


def test_extending_a_finished_run(tmp_path):
    run = tmp_path / "run"
    fit(run)  # the default config: onecycle learning rate
    with pytest.raises(ConfigError, match="train.max_epochs: a onecycle learning-rate schedule"):
        resume_run(run, ["train.max_epochs=4"], verbose=False)
    same = resume_run(run, [], verbose=False)  # nothing to do
    assert same.completed and same.global_step == 8
    constant = tmp_path / "constant"
    fit(constant, "optim.scheduler.name=constant")
    longer = resume_run(constant, ["train.max_epochs=4"], verbose=False)
    assert longer.completed and longer.global_step == 16
    assert json.loads((constant / "status.json").read_text())["step"] == 16
    with pytest.raises(ConfigError, match="method.beta: cannot be changed when resuming"):
        resume_run(constant, ["train.max_epochs=5", "method.beta=3"], verbose=False)
