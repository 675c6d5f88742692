"""Command line and config validation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from injflow.cli import main
from injflow.config import ConfigError, default_config_path, load_config

REPO = Path(__file__).resolve().parents[1]
FAST = [
    "data.options.n_train=1000", "data.options.n_val=200", "data.options.n_test=200", "data.batch_size=200",
    "model.options.n_blocks=1", "model.options.hidden_features=16", "train.max_epochs=2", "train.progress_bar=false",
    "train.num_threads=1", "train.gmm_components=3",
]


def test_default_config_is_shipped_and_valid():
    assert default_config_path().read_text() == (REPO / "configs" / "default.yaml").read_text()
    cfg = load_config(None)
    assert cfg.method.name == "fif" and cfg.data.name == "sinusoid" and cfg.model.latent_dim == 1


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.max_epoch=3", "train.max_epoch"),          # unknown key
        ("bogus.x=1", "bogus"),                             # unknown section
        ("train.max_epochs=ten", "train.max_epochs"),       # wrong type
        ("optim.lr=true", "optim.lr"),                      # bool is not a float
        ("method.beta=-1", "method.beta"),                  # β < 0
        ("method.n_hutchinson=2", "method.n_hutchinson"),   # K > d = 1
        ("method.noise=uniform", "method.noise"),           # not a choice
        ("method.gamma=1", "method.gamma"),                 # unknown method key
        ("model.latent_dim=2", "model.latent_dim"),         # d ≥ D = 2
        ("optim.scheduler.name=step", "optim.scheduler.name"),
        ("data.options.colour=1", "data"),                  # unknown data option
        ("model.options.depth=3", "model"),                 # unknown net option
    ],
)
def test_bad_config_rejected_before_training(tmp_path, capsys, override, key):
    rc = main(["fit", "--set", override, f"run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert key in err, err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_config_errors_name_key():
    with pytest.raises(ConfigError, match="train.max_epochs: expected int"):
        load_config(None, ["train.max_epochs=1.5"])
    assert load_config(None, ["optim.lr=1e-4"]).optim.lr == 1e-4  # YAML's "1e-4" string is accepted as float
    cfg = load_config(None, ["method.beta={schedule: linear, start: 20, end: 40}"])
    assert cfg.method.weight("beta", 0) == 20.0


@pytest.mark.parametrize("cmd", ["fit", "sample", "evaluate"])
def test_help_has_example(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out and f"injflow {cmd}" in out


def test_fit_sample_evaluate(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["fit", "--set", *FAST, f"run.dir={run}"]) == 0
    out = capsys.readouterr().out
    assert str(run / "plots" / "manifold.png") in out
    for f in ["config.yaml", "model.pt", "metrics.csv", "checkpoints/last.ckpt", "checkpoints/best.ckpt",
              "plots/loss_curves.png", "plots/manifold.png"]:
        assert (run / f).is_file(), f
    for sampler in ["prior", "gaussian", "gmm"]:
        assert main(["sample", str(run), "--n", "50", "--sampler", sampler, "--temperature", "0.7"]) == 0
        x = torch.load(run / "samples" / f"{sampler}_T0.7.pt")
        assert x.shape == (50, 2) and torch.isfinite(x).all()
        assert (run / "samples" / f"{sampler}_T0.7.png").is_file()
    assert main(["evaluate", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["reconstruction_error"] > 0 and metrics["nll"] is not None and metrics["latent_dim"] == 1
    assert len(metrics["latent"]["mean"]) == 1
    # The method's own terms on the split, comparable across methods; FIF's reconstruction term is the same
    # quantity as the evaluation's reconstruction error.
    terms = metrics["method_terms"]
    assert set(terms) >= {"loss", "nll", "reconstruction", "surrogate"}
    assert abs(terms["reconstruction"] - metrics["reconstruction_error"]) < 1e-4 * max(1.0, metrics["reconstruction_error"])


def test_resume_missing_run(tmp_path, capsys):
    assert main(["fit", "--resume", str(tmp_path / "nope")]) == 2


def _ddp_env() -> dict:
    """The environment of a DDP test process: one thread, and a free port of its own (no clash with another test)."""
    import os
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(port), "MASTER_ADDR": "127.0.0.1"}


def _ddp_run(tmp_path, name, devices, strategy):
    args = [*FAST, "train.max_epochs=1", "train.samplers=[]", "train.accelerator=cpu", f"train.devices={devices}",
            f"train.strategy={strategy}", f"run.dir={tmp_path / name}", "data.batch_size=100", "method.n_hutchinson=1"]
    proc = subprocess.run([sys.executable, "-m", "injflow.cli", "fit", "--set", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=_ddp_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(tmp_path / name / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    return torch.cat([v.flatten() for k, v in sorted(state.items()) if k.startswith("flow.")])


def test_ddp_two_cpu_processes_match_single(tmp_path):
    """2 gloo processes with half the global batch each give the same parameters as one process.

    FIF with d = 1 and orthogonal noise is deterministic (ε = ±1 and the surrogate is even in ε), and there is no
    input noise, so the two runs see exactly the same objective.
    """
    single = _ddp_run(tmp_path, "single", 1, "auto")
    ddp = _ddp_run(tmp_path, "ddp", 2, "ddp")
    assert torch.allclose(single, ddp, atol=1e-5, rtol=1e-4), (single - ddp).abs().max()


_NAN_ON_ONE_RANK = """
import dataclasses, sys
import torch
import injflow.api as inj
from injflow.methods import Clock, register_method
from injflow.methods.ae import AE


@register_method("ae_nan_on_rank_1")
@dataclasses.dataclass
class NanOnRank1(AE):
    def loss(self, batch, step, model):
        terms = super().loss(batch, step, model)
        if Clock.of(step).step == 2 and torch.distributed.is_initialized() and torch.distributed.get_rank() == 1:
            terms["loss"] = terms["loss"] * float("nan")
        return terms


if __name__ == "__main__":
    try:
        inj.fit(None, overrides=sys.argv[2:] + ["method={name: ae_nan_on_rank_1}"], run_dir=sys.argv[1], verbose=False)
    except Exception as e:  # the API re-raises; report which error reached this process
        print("ERROR", type(e).__name__, e, flush=True)
        raise SystemExit(3)
"""


def test_ddp_nan_on_one_rank_stops_every_rank(tmp_path):
    """A NaN on one of two DDP processes stops both with the clear error, instead of leaving one waiting forever."""
    script = tmp_path / "nan_on_rank_1.py"
    script.write_text(_NAN_ON_ONE_RANK)
    args = [*FAST, "train.max_epochs=1", "train.samplers=[]", "train.accelerator=cpu", "train.devices=2",
            "train.strategy=ddp", "data.batch_size=100"]
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "run"), *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=240, env=_ddp_env())
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "non-finite loss at optimiser step 2" in out, out[-3000:]
    assert "another process" in out, out[-3000:]  # rank 0, whose own loss was finite, stopped too


_NAN_INPUT_ON_ONE_RANK = """
import dataclasses, sys
import torch
import injflow.api as inj
from injflow import estimators
from injflow.methods import Clock, register_method
from injflow.methods.fif import FIF


@register_method("fif_nan_input_on_rank_1")
@dataclasses.dataclass
class NanInputOnRank1(FIF):
    def loss(self, batch, step, model):
        if Clock.of(step).step == 2 and torch.distributed.is_initialized() and torch.distributed.get_rank() == 1:
            batch = batch.clone()
            batch[3, 0] = float("nan")
        return super().loss(batch, step, model)


if __name__ == "__main__":
    try:
        inj.fit(None, overrides=sys.argv[2:] + ["method={name: fif_nan_input_on_rank_1}"], run_dir=sys.argv[1],
                verbose=False)
    except Exception as e:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else "?"
        print("ERROR rank", rank, type(e).__name__, e, flush=True)
        raise SystemExit(getattr(e, "exit_code", 1))
"""


def test_ddp_bad_input_on_one_rank_stops_every_rank_naming_the_cause(tmp_path):
    """A NaN in one process's batch (caught by the estimators' input check there) stops both processes with exit 3 and
    the same message naming the cause, instead of a gloo 'connection closed' traceback on the other."""
    script = tmp_path / "nan_input_on_rank_1.py"
    script.write_text(_NAN_INPUT_ON_ONE_RANK)
    args = [*FAST, "train.max_epochs=1", "train.samplers=[]", "train.accelerator=cpu", "train.devices=2",
            "train.strategy=ddp", "data.batch_size=100", "train.pictures=false"]
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "run"), *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=240, env=_ddp_env())
    out = proc.stdout + proc.stderr
    assert proc.returncode == 3, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("ERROR rank")]
    assert sorted(e.split()[2] for e in errors) == ["0", "1"], out[-3000:]
    for line in errors:
        assert "NonFiniteLossError" in line and "rank 1 of 2" in line and "NaN" in line, line
    assert "connection closed" not in out.lower() and "Traceback" not in out, out[-3000:]


def test_evaluate_falls_back_to_checkpoints_and_rejects_bad_ones(tmp_path, capsys):
    """Without model.pt the run is unfinished (refused, naming the step) unless a checkpoint is asked for; a corrupt or
    mismatched checkpoint gets an error naming it."""
    from injflow.errors import CheckpointError, UnfinishedRunError
    from injflow.loading import load_run_model

    run = tmp_path / "run"
    assert main(["fit", "--set", *FAST, "train.max_epochs=1", "train.samplers=[]", f"run.dir={run}"]) == 0
    reference = load_run_model(run)
    (run / "model.pt").unlink()
    (run / "checkpoints" / "best.ckpt").unlink()
    ckpt = run / "checkpoints" / "last.ckpt"
    with pytest.raises(UnfinishedRunError, match="no model.pt.*step 5.*--checkpoint last"):
        load_run_model(run)
    assert main(["evaluate", str(run)]) == 2 and "unfinished" in capsys.readouterr().err
    from_ckpt = load_run_model(run, checkpoint="last")
    x = torch.randn(5, 2)
    torch.testing.assert_close(from_ckpt.encode(x), reference.encode(x))

    blob = torch.load(ckpt, map_location="cpu", weights_only=False)
    blob["state_dict"]["flow.encoder.extra.weight"] = torch.zeros(3)
    torch.save(blob, ckpt)
    with pytest.raises(ValueError, match="does not match"):
        load_run_model(run, checkpoint="last")
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="last.ckpt cannot be read"):
        load_run_model(run, checkpoint="last")
