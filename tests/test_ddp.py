"""Several processes (Lightning DDP) on the CPU: two gloo processes per launch, each recording what it did
(tests/ddp_probe.py). Every hazard here was reproduced on the code before its fix (docs/training.md, "Several GPUs").

A launch costs ~15-25 s on two cores, so each default-suite launch checks several hazards at once; the resume check
needs three launches and is marked slow.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from injflow.config import TrainConfig, config_from_dict, load_config
from injflow.methods import METHODS, Clock, build_method
from injflow.model import InjectiveFlow
from injflow.train.distributed import own_rng_state, process_seed, resolve_strategy

PROBE = Path(__file__).with_name("ddp_probe.py")
COMMON = ["data.options.n_train=1000", "data.options.n_val=200", "data.options.n_test=200", "data.batch_size=200",
          "model.options.n_blocks=1", "model.options.hidden_features=16", "train.progress_bar=false",
          "train.num_threads=1", "train.samplers=[]", "train.pictures=false", "train.accelerator=cpu",
          "train.devices=2", "train.strategy=ddp"]
TRUMPET = ["method={name: probe_trumpet, manifold_steps: 2}", "data.name=linear_subspace",
           "data.options={n_train: 1000, n_val: 200, n_test: 200}", "model.architecture=trumpet", "model.latent_dim=2",
           "model.options={stage_layers: 1, hidden_features: [16], inner_layers: 2, inner_hidden_features: [8]}"]


def launch(record: Path, probe_args: list[str], overrides: list[str], *, timeout: float = 240) -> tuple[int, str]:
    """Runs the probe on two processes; returns (exit code, output). A hang is killed (the whole process group: the
    launcher's second process too) and fails the test, instead of blocking the suite."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "PYTHONPATH": os.pathsep.join([str(PROBE.parents[1]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(PROBE), str(record), *probe_args, "--", *COMMON, *overrides],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the two processes hung (killed after {timeout} s):\n{out[-3000:]}")
    return proc.returncode, out


def records(record: Path) -> list[dict]:
    return [torch.load(record / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def single_process_gradients(run: Path, ranks: list[dict], monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor | None]:
    """The gradient of the mean loss of one process on the two processes' step-0 batches concatenated, with the noise
    they drew concatenated the same way (the noise itself is per process)."""
    from injflow import estimators

    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["method"]["name"] = saved["method"]["name"].removeprefix("probe_")  # the probe's subclass: the same loss
    cfg = config_from_dict(saved)
    method = cfg.method
    x = torch.cat([r["step0"]["x"] for r in ranks])
    flow = InjectiveFlow.from_config(cfg, data_shape=tuple(x.shape[1:]), data_kind="tabular")
    getattr(method, "prepare", lambda m: None)(flow)
    flow.load_state_dict(ranks[0]["step0"]["state"])
    draws = iter([torch.cat(pair, dim=1) for pair in zip(*(r["step0"]["eps"] for r in ranks))])
    monkeypatch.setattr(estimators, "sample_noise", lambda *a, **k: next(draws))
    method.loss(x, Clock(0, total_steps=5), flow)["loss"].mean().backward()
    return {n: p.grad for n, p in flow.named_parameters()}


def assert_same_gradients(ddp: dict, single: dict) -> None:
    assert ddp.keys() == single.keys()
    for name, g in single.items():
        if g is None:
            assert ddp[name] is None, name
        else:
            torch.testing.assert_close(ddp[name], g, rtol=1e-5, atol=1e-5, msg=name)


def test_fif_on_two_processes_collective_decisions_own_noise_and_the_single_process_gradient(tmp_path, monkeypatch):
    """One launch, four hazards (FIF with d = 2, so the noise matters; two epochs of 5 steps; checkpoints every second):

    - rank 1's clock runs 100× fast, so only rank 1 finds the checkpoint interval passed after epoch 0: both write
      (before the fix: mismatched collectives, a hang);
    - step 9 (the last) has finite losses but NaN gradients, so the end-of-run checkpoint would hold NaN weights: both
      processes stop with NonFiniteStateError (before: rank 0 raised it, rank 1 died of a closed gloo connection);
    - the two processes draw different Hutchinson noise (before: the same noise on both);
    - the gradient of step 0, after DDP's all-reduce, equals one process's on the concatenated batch and noise.
    """
    code, out = launch(tmp_path, ["--skew-rank1", "100", "--nan-grad-at", "9"],
                       ["method={name: probe_fif, beta: 20.0}", "data.name=linear_subspace", "model.latent_dim=2",
                        "data.options={n_train: 1000, n_val: 200, n_test: 200}", "train.max_epochs=2",
                        "train.checkpoint_interval=1"])
    assert code == 3, out[-3000:]
    assert "connection closed" not in out.lower(), out[-3000:]
    r0, r1 = records(tmp_path)
    for r in (r0, r1):
        assert r["error"][0] == "NonFiniteStateError" and "by optimiser step 10" in r["error"][1], r["error"]
    assert r0["writes"] == r1["writes"] and (0, 5) in r0["writes"], (r0["writes"], r1["writes"])
    steps = sorted(r0["noise"])
    assert steps == list(range(10)) and sorted(r1["noise"]) == steps
    assert not all(torch.equal(a, b) for s in steps for a, b in zip(r0["noise"][s], r1["noise"][s]))
    ddp = r0["step0"]["grads"]
    assert_same_gradients(r1["step0"]["grads"], ddp)  # DDP hands both processes the same averaged gradient
    assert_same_gradients(ddp, single_process_gradients(tmp_path / "run", [r0, r1], monkeypatch))


def test_trumpet_trains_on_two_processes_with_the_single_process_gradient(tmp_path, monkeypatch):
    """Trumpet's stages each leave parameters without gradients; DDP refused them at step 2 ("parameters that were
    not used in producing the loss") until the engine declared them. The run now finishes both stages, and the
    stage-1 gradient equals one process's on the concatenated batch (the flow's parameters have none in both)."""
    code, out = launch(tmp_path, ["--method", "trumpet"], [*TRUMPET, "train.max_epochs=1"])
    assert code == 0, out[-3000:]
    r0, r1 = records(tmp_path)
    assert r0["error"] is None and r1["error"] is None
    assert r0["writes"] == r1["writes"]
    ddp = r0["step0"]["grads"]
    assert any(g is None for g in ddp.values()) and any(g is not None for g in ddp.values())
    assert_same_gradients(ddp, single_process_gradients(tmp_path / "run", [r0, r1], monkeypatch))


@pytest.mark.slow
def test_fff_on_two_processes_draws_its_own_noise_and_has_the_single_process_gradient(tmp_path, monkeypatch):
    """FFF (d = D) shares FIF's estimator, so the same per-process noise streams apply: the two processes draw
    different Hutchinson noise, and the step-0 gradient after DDP's all-reduce equals one process's on the
    concatenated batch and noise. Slow: one more launch, for a path the FIF launch already covers."""
    code, out = launch(tmp_path, ["--method", "fff"],
                       ["method={name: probe_fff, beta: 20.0, n_hutchinson: 2}", "data.name=linear_subspace",
                        "model.latent_dim=4", "data.options={n_train: 1000, n_val: 200, n_test: 200}",
                        "train.max_epochs=1"])
    assert code == 0, out[-3000:]
    r0, r1 = records(tmp_path)
    assert r0["error"] is None and r1["error"] is None
    steps = sorted(r0["noise"])
    assert steps == list(range(5)) and sorted(r1["noise"]) == steps
    assert not any(torch.equal(a, b) for s in steps for a, b in zip(r0["noise"][s], r1["noise"][s]))
    ddp = r0["step0"]["grads"]
    assert_same_gradients(r1["step0"]["grads"], ddp)
    assert_same_gradients(ddp, single_process_gradients(tmp_path / "run", [r0, r1], monkeypatch))


@pytest.mark.slow
def test_two_processes_resume_their_own_noise_streams(tmp_path):
    """A 2-process run stopped after 3 steps and resumed ends with the weights of the uninterrupted run, and each
    process draws, after the resume, the noise it drew uninterrupted (each process's RNG state is in the checkpoint;
    before, both restored rank 0's). Input noise and FIF's Hutchinson noise (d = 2, orthogonal K = 2) both count."""
    overrides = ["method={name: probe_fif, beta: 20.0, n_hutchinson: 2}", "data.name=linear_subspace",
                 "data.options={n_train: 1000, n_val: 200, n_test: 200}", "model.latent_dim=2", "train.max_epochs=2",
                 "train.input_noise=0.01", "optim.scheduler.name=constant"]
    code, out = launch(tmp_path / "whole", [], overrides)
    assert code == 0, out[-3000:]
    code, out = launch(tmp_path / "first", [], [*overrides, "train.stop_after_steps=3"])
    assert code == 0, out[-3000:]
    code, out = launch(tmp_path / "second", ["--resume", "--run-dir", str(tmp_path / "first" / "run")],
                       ["train.stop_after_steps=null"])
    assert code == 0, out[-3000:]

    def weights(run: Path) -> dict:
        state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
        return {k: v for k, v in state.items() if k.startswith("flow.")}

    whole, resumed = weights(tmp_path / "whole" / "run"), weights(tmp_path / "first" / "run")
    for k in whole:
        torch.testing.assert_close(resumed[k], whole[k], rtol=0, atol=1e-6, msg=k)
    for rank, (w, s) in enumerate(zip(records(tmp_path / "whole"), records(tmp_path / "second"))):
        assert sorted(s["noise"]) == list(range(3, 10)), rank
        for step in range(3, 10):
            for a, b in zip(w["noise"][step], s["noise"][step]):
                assert torch.equal(a, b), (rank, step)


# ------------------------------------------------------------------------------------------------ in one process


def test_process_seeds_differ_per_rank_and_rank_0_keeps_the_seed():
    seeds = {process_seed(0, r) for r in range(64)}
    assert process_seed(0, 0) == 0 and process_seed(5, 0) == 5 and len(seeds) == 64
    assert all(0 <= s < 2**63 for s in seeds) and process_seed(0, 1) != process_seed(1, 1)


def test_a_checkpoint_of_another_process_count_resumes_rank_0_from_its_own_state():
    states = [{"torch": torch.full((4,), r, dtype=torch.uint8)} for r in range(2)]
    own = own_rng_state({**states[0], "ranks": states}, seed=0, step=7)  # one process here: rank 0 of 1
    assert set(own) == {"torch"} and torch.equal(own["torch"], states[0]["torch"])
    assert own_rng_state(states[0], seed=0, step=7) == states[0]  # a single-process checkpoint


@pytest.mark.parametrize("strategy, devices, expected", [
    ("ddp", 2, "ddp_find_unused_parameters_true"), ("ddp_spawn", 2, "ddp_spawn_find_unused_parameters_true"),
    ("auto", 2, "ddp_find_unused_parameters_true"), ("auto", 1, "auto"), ("auto", "0,1", "ddp_find_unused_parameters_true"),
    ("single_device", 1, "single_device"),
])
def test_unused_parameters_are_declared_to_ddp_for_methods_that_leave_some(strategy, devices, expected):
    train = TrainConfig(strategy=strategy, devices=devices, accelerator="cpu")
    assert resolve_strategy(train, build_method("trumpet")) == expected
    assert resolve_strategy(train, build_method("fif")) == strategy


def test_every_method_that_leaves_parameters_without_gradient_says_so():
    """DDP needs to know in advance (resolve_strategy): a method whose loss at an early or a late step leaves a
    parameter without gradient must declare ``unused_parameters``."""
    torch.manual_seed(0)
    x = torch.randn(8, 4)
    for name in sorted(n for n in METHODS if not n.startswith("probe_")):
        method = build_method(name)
        architecture = {"rnf": "injective_coupling", "dnf": "injective_coupling", "trumpet": "trumpet"}.get(name, "mlp")
        latent_dim = 4 if getattr(method, "full_dimensional", False) else 2  # a free-form flow is square (d = D; methods/fff.py)
        cfg = load_config(None, ["data.name=linear_subspace", f"model.latent_dim={latent_dim}", f"model.architecture={architecture}",
                                 "model.options={}", f"method={{name: {name}}}"])
        flow = InjectiveFlow.from_config(cfg, data_shape=(4,), data_kind="tabular")
        method.prepare(flow)
        unused = set()
        for step in (0, 9):
            flow.zero_grad(set_to_none=True)
            method.loss(x, Clock(step, total_steps=10), flow)["loss"].mean().backward()
            unused |= {n for n, p in flow.named_parameters() if p.requires_grad and p.grad is None}
        assert bool(unused) == method.unused_parameters, (name, sorted(unused)[:3])
