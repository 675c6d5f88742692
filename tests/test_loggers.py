"""Experiment tracking (train.loggers): MLflow in a SQLite store and through an `mlflow server`, W&B offline; the
resumed fit continues the same tracked run; evaluate's metrics.json and pictures reach the tracker; a missing package
or an unreachable server is one line, never a hang. Values are read back with MLflow's client and from W&B's
offline run files, and compared with the run's own metrics.csv."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from injflow.cli import main
from injflow.config import load_config
from injflow.errors import ConfigError
from injflow.tracking import flat_config, log_evaluation, read_trackers, write_trackers

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

FAST = ["data.options={noise: 0.1, n_train: 256, n_val: 64, n_test: 64}", "data.batch_size=64",
        "model.options={n_blocks: 1, hidden_features: 16}", "train.max_epochs=2", "train.log_every_n_steps=2",
        "train.progress_bar=false", "train.num_threads=1", "train.pictures=false", "train.samplers=[gaussian]",
        "train.checkpoint_interval=0"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _csv_rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def _csv_history(run: Path, key: str) -> list[tuple[int, float]]:
    return [(int(float(r["step"])), float(r[key])) for r in _csv_rows(run) if r.get(key)]


def _fit_stop_resume_evaluate(run: Path, *overrides: str) -> None:
    """A tracked fit stopped after 3 steps (a resumable stop), resumed to the end, then evaluated."""
    assert main(["fit", "--set", *FAST, *overrides, "train.stop_after_steps=3", f"run.dir={run}"]) == 0
    assert main(["fit", "--resume", str(run), "--set", "train.stop_after_steps=null"]) == 0
    assert main(["evaluate", str(run), "--no-progress"]) == 0


# --------------------------------------------------------------------------- MLflow


def _check_mlflow_run(uri: str, run: Path, *, sqlite: bool, resumed: bool = True) -> None:
    from mlflow.tracking import MlflowClient

    entry = read_trackers(type("R", (), {"trackers": run / "trackers.json"})())["mlflow"]
    assert entry["tracking_uri"] == uri
    client = MlflowClient(uri)
    runs = client.search_runs([entry["experiment_id"]])
    assert len(runs) == 1, "the resumed fit must continue the same MLflow run, not start a second one"
    tracked = client.get_run(entry["run_id"])
    assert tracked.info.run_name == run.name and tracked.info.status == "FINISHED"
    assert tracked.data.tags["grid"] == "b1" and tracked.data.tags["injflow.method"] == "fif"
    # The resolved config as parameters (dotted keys); the resume's changed key is a tag (parameters are immutable).
    config = flat_config(load_config(run / "config.yaml"))
    params = tracked.data.params
    assert params["method.beta"] == "20.0" and params["model.latent_dim"] == "1"
    assert {k for k in config if k != "train.stop_after_steps"} <= set(params)
    if resumed:
        assert params["train.stop_after_steps"] == "3" and tracked.data.tags["resumed.train.stop_after_steps"] == "null"
    # Every row of metrics.csv, per step and per epoch, with the same steps and values.
    for key in ("train/loss_step", "train/loss_epoch", "val/loss", "val/reconstruction", "train/beta"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(entry["run_id"], key))
        assert history == _csv_history(run, key), key
    assert len(_csv_history(run, "train/loss_step")) == 4  # steps 2, 4, 6, 8 of 8
    # evaluate: metrics.json and the pictures as artefacts, its numbers as metrics.
    metrics = json.loads((run / "metrics.json").read_text())
    assert tracked.data.metrics["eval/test/nll"] == pytest.approx(metrics["nll"], rel=1e-12)
    assert tracked.data.metrics["eval/test/reconstruction_error"] == pytest.approx(metrics["reconstruction_error"])
    names = {a.path for a in client.list_artifacts(entry["run_id"])} | {
        a.path for a in client.list_artifacts(entry["run_id"], "eval")}
    assert {"metrics.json", "eval/samples.png", "eval/latents.png"} <= names
    local = client.download_artifacts(entry["run_id"], "metrics.json", str(run.parent / "downloaded"))
    assert json.loads(Path(local).read_text()) == metrics
    if sqlite:  # the artefacts of the default store live beside the database, not in the working directory
        assert (run.parent / "mlartifacts").is_dir() and not Path("mlruns").exists()


def test_mlflow_sqlite_store_tracks_fit_resume_and_evaluate(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "b1"
    _fit_stop_resume_evaluate(run, "train.loggers=[csv,mlflow]", "train.tags={grid: b1}")
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    _check_mlflow_run(uri, run, sqlite=True)
    assert not (run / "tensorboard").exists()  # train.loggers chose csv and mlflow only
    capsys.readouterr()
    # A tracker that is gone when evaluate runs costs a warning, not the evaluation.
    folder = type("R", (), {"trackers": run / "trackers.json", "metrics_json": run / "metrics.json",
                            "eval": run / "eval", "path": run})()
    write_trackers(folder, {"mlflow": {**read_trackers(folder)["mlflow"], "tracking_uri": f"http://127.0.0.1:{_free_port()}"}})
    assert log_evaluation(folder, {"nll": 1.0}, split="test", step=8) == []
    assert "warning: the evaluation was not sent to mlflow" in capsys.readouterr().out


@pytest.mark.slow  # `mlflow server` alone takes 17 s to answer on the 2-core machine (load 4); the client code is the SQLite test's
def test_mlflow_server_started_on_localhost(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "server.log", "w")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination",
         str(tmp_path / "server-artifacts")],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "mlflow server did not start in 180 s"
            time.sleep(0.5)
        run = tmp_path / "runs" / "b1"  # resuming is the SQLite test's: here one fit and its evaluation
        assert main(["fit", "--set", *FAST, "train.loggers=[csv,mlflow]", "train.tags={grid: b1}",
                     f"train.mlflow.tracking_uri={uri}", "train.mlflow.experiment=server-test", f"run.dir={run}"]) == 0
        assert main(["evaluate", str(run), "--no-progress"]) == 0
        _check_mlflow_run(uri, run, sqlite=False, resumed=False)
        assert (tmp_path / "server-artifacts").is_dir() and not (tmp_path / "runs" / "mlflow.db").exists()
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its worker: the process group this test started
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        log.close()


# --------------------------------------------------------------------------- W&B


def _wandb_records(path: Path) -> list:
    """The records of a W&B transaction log (``run-<id>.wandb``): a 7-byte header, then LevelDB-log-format blocks of
    32 KiB holding (crc32c, length, type) records whose payloads are ``wandb_internal_pb2.Record`` messages."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    block, pos, records, pending = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        length, kind = struct.unpack("<HB", data[pos + 4: pos + 7])
        payload = data[pos + 7: pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = payload if kind in (1, 2) else pending + payload
        if kind in (1, 4):  # full, or last fragment
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _wandb_run(folder: Path) -> dict:
    records = _wandb_records(next(folder.glob("run-*.wandb")))
    out = {"run": None, "config": {}, "history": [], "summary": {}}
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out["run"] = r.run
            out["config"].update({i.key: json.loads(i.value_json) for i in r.run.config.update})
        elif kind == "config":
            out["config"].update({i.key: json.loads(i.value_json) for i in r.config.update})
        elif kind == "history":
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
        elif kind == "summary":
            out["summary"].update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.summary.update})
    return out


def test_wandb_offline_run_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run = tmp_path / "runs" / "b1"
    _fit_stop_resume_evaluate(run, "train.loggers=[csv,tensorboard,wandb]", "train.tags={grid: b1}")
    entry = json.loads((run / "trackers.json").read_text())["wandb"]
    def started(folder: Path) -> tuple:  # offline-run-<date>_<time>-<id>[-<n>]: W&B adds -1, -2 within one second
        parts = folder.name.split("-")
        return parts[2], int(parts[4]) if len(parts) > 4 else 0

    folders = sorted((run / "wandb").glob("offline-run-*"), key=started)
    assert len(folders) == 3 and all(f.name.split("-")[3] == entry["id"] for f in folders)  # fit, resume, evaluate: one run
    fit, resume, evaluation = (_wandb_run(f) for f in folders)
    assert fit["run"].display_name == run.name and list(fit["run"].tags) == ["grid=b1"]
    assert fit["run"].project == "fif-sinusoid" and resume["run"].run_id == fit["run"].run_id
    assert fit["config"]["method.beta"] == 20.0 and fit["config"]["data.name"] == "sinusoid"
    assert resume["config"]["train.stop_after_steps"] is None
    # Each logged row once, with Lightning's step key: the same values as metrics.csv.
    history = fit["history"] + resume["history"]
    logged = sorted((int(h["trainer/global_step"]), h["train/loss_step"]) for h in history if "train/loss_step" in h)
    assert logged == _csv_history(run, "train/loss_step") and len(logged) == 4
    epochs = sorted((int(h["trainer/global_step"]), h["val/loss"]) for h in history if "val/loss" in h)
    assert epochs == _csv_history(run, "val/loss")
    metrics = json.loads((run / "metrics.json").read_text())
    assert evaluation["summary"]["eval/test/nll"] == pytest.approx(metrics["nll"])
    files = evaluation["run"] and folders[2] / "files"
    assert json.loads((files / "metrics.json").read_text()) == metrics  # a copy, not a link to the live file
    assert not (files / "metrics.json").is_symlink() and (files / "eval" / "samples.png").is_file()
    assert (run / "tensorboard").is_dir()


# --------------------------------------------------------------------------- failures are one line


@pytest.mark.parametrize("override, message", [
    ("train.loggers=[csv,mlflow]", "mlflow is not installed; install it with pip install 'injflow[mlflow]'"),
    ("train.loggers=[csv,wandb]", "wandb is not installed; install it with pip install 'injflow[wandb]'"),
])
def test_missing_tracker_package_is_one_line(tmp_path, monkeypatch, capsys, override, message):
    package = override.split(",")[1].rstrip("]")
    monkeypatch.setitem(sys.modules, package, None)  # `import mlflow` now raises ImportError
    assert main(["fit", "--set", *FAST, override, f"run.dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()  # found before anything was written


def test_unreachable_servers_are_one_line_without_waiting(tmp_path, monkeypatch, capsys):
    closed = f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setenv("WANDB_BASE_URL", closed)
    for override in (f"train.mlflow.tracking_uri={closed}", "train.wandb.mode=online"):
        tracker = "mlflow" if "mlflow" in override else "wandb"
        start = time.monotonic()
        assert main(["fit", "--set", *FAST, f"train.loggers=[csv,{tracker}]", override,
                     f"run.dir={tmp_path / tracker}"]) == 2
        err = capsys.readouterr().err.strip()
        assert f"cannot reach {closed}" in err and len(err.splitlines()) == 1, err
        assert time.monotonic() - start < 60 and not (tmp_path / tracker).exists()


def test_logger_keys_are_validated():
    with pytest.raises(ConfigError, match="train.loggers: unknown logger 'comet'; choose from: csv, tensorboard, mlflow, wandb"):
        load_config(None, ["train.loggers=[csv,comet]"])
    with pytest.raises(ConfigError, match="train.loggers: 'csv' cannot be left out"):
        load_config(None, ["train.loggers=[mlflow]"])
    with pytest.raises(ConfigError, match="train.tags.grid: a tag is a string"):
        load_config(None, ["train.tags={grid: [1, 2]}"])
    config = load_config(None, ["train.tags={beta: 20, flag: true}"])
    assert config.train.tags == {"beta": "20", "flag": "true"} and config.train.loggers == ["csv", "tensorboard"]
