"""Engine tests: convergence, resume, non-finite stop, atomic checkpoints, schedules, API."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from injflow.config import load_config
from injflow.errors import NonFiniteLossError
from injflow.methods import AE, FIF, Clock, as_schedule
from injflow.model import InjectiveFlow
from injflow.train import fit_config, resume_run
from injflow.train.data import TensorBatches

# A small, fast toy run (about 5 s on one core).
SMALL = [
    "data.options.n_train=2000",
    "data.options.n_val=500",
    "data.options.n_test=500",
    "data.batch_size=200",
    "model.options.n_blocks=2",
    "model.options.hidden_features=32",
    "train.progress_bar=false",
    "train.num_threads=1",
    "train.samplers=[]",
]


def small_config(tmp_path: Path, *extra: str):
    return load_config(None, [*SMALL, f"run.dir={tmp_path / 'run'}", *extra])


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_fit_converges_on_toy(tmp_path):
    """FIF on the sinusoid: within 12 epochs (384 steps) the test reconstruction error falls by ≥ 5x (median < 0.1) the loss by ≥ 5x, and the exact test NLL ends in [1.2, 2.2]."""
    from injflow.data import load_dataset

    cfg = small_config(tmp_path, "train.max_epochs=12", "data.options.n_train=4000", "data.batch_size=128",
                       "model.options.n_blocks=4", "model.options.hidden_features=64", "train.samplers=[gaussian]")
    test = load_dataset("sinusoid", n_train=4000, n_val=500, n_test=500).test
    torch.manual_seed(cfg.train.seed)
    flow0 = InjectiveFlow.from_config(cfg, data_shape=(2,))
    lp0, rec0 = flow0.log_prob(test, return_reconstruction=True)
    result = fit_config(cfg, verbose=False)
    lp1, rec1 = result.flow.log_prob(test, return_reconstruction=True)
    print("reconstruction", rec0.mean(), rec1.mean(), rec1.median(), "nll", -lp0.mean(), -lp1.mean())
    assert rec1.mean() < rec0.mean() / 5, (rec0.mean(), rec1.mean())
    assert rec1.median() < 0.1, rec1.median()  # the bulk lies near the learned curve (noise floor 2σ² = 0.02)
    run = result.run_dir
    # At initialisation the exact NLL of the projection is meaningless (the random decoder's "manifold" is a
    # tiny blob, so its density is high) and FIF's "nll" term has the NLL's gradient, not its value. So the
    # objective must fall ≥ 5x (first step → final validation) and the final exact test NLL must lie near the
    # data's on-manifold entropy (x ~ N(0, 1) stretched along the sinusoid: about 1.4 + 0.3 nats).
    import csv

    rows = list(csv.DictReader(open(run / "metrics.csv")))
    loss_first = float(next(r["train/loss_step"] for r in rows if r.get("train/loss_step")))
    val_loss = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert val_loss[-1] < loss_first / 5, (loss_first, val_loss)
    assert 1.2 < -lp1.mean() < 2.2, lp1.mean()
    for f in ["config.yaml", "metrics.csv", "model.pt", "checkpoints/last.ckpt", "checkpoints/best.ckpt",
              "plots/loss_curves.png", "plots/manifold.png"]:
        assert (run / f).is_file(), f
    assert any((run / "tensorboard").iterdir())
    header = (run / "metrics.csv").read_text().splitlines()[0]
    for term in ["train/loss_step", "train/nll_epoch", "train/reconstruction_epoch", "train/surrogate_epoch", "val/loss", "val/nll", "train/beta"]:
        assert term in header, term
    loaded = InjectiveFlow.load(run / "model.pt")
    assert torch.allclose(loaded.encode(test[:10]), result.flow.encode(test[:10]), atol=1e-6)
    assert "gaussian" in loaded.samplers


def _params(flow):
    return torch.cat([p.detach().flatten() for p in flow.parameters()])


def test_resume_gives_identical_parameters(tmp_path):
    """Stop mid-epoch after 13 steps, resume, and compare with an uninterrupted run (noise, onecycle, β schedule)."""
    extra = ["train.max_epochs=3", "train.input_noise=0.01", "method.beta={schedule: linear, start: 20, end: 40}",
             "optim.scheduler.name=onecycle"]
    full = fit_config(load_config(None, [*SMALL, *extra, f"run.dir={tmp_path / 'full'}"]), verbose=False)
    part = fit_config(load_config(None, [*SMALL, *extra, f"run.dir={tmp_path / 'part'}", "train.stop_after_steps=13"]), verbose=False)
    assert not part.completed and part.global_step == 13 and part.flow is None
    resumed = resume_run(tmp_path / "part", ["train.stop_after_steps=null"], verbose=False)
    assert resumed.completed and resumed.global_step == full.global_step == 30
    assert torch.equal(_params(full.flow), _params(resumed.flow))
    # The resumed CSV continues the killed one without duplicated steps.
    import csv

    steps = [int(r["step"]) for r in csv.DictReader(open(tmp_path / "part" / "metrics.csv")) if r.get("train/loss_step")]
    assert len(steps) == len(set(steps))


def test_non_finite_loss_stops_with_step_and_term(tmp_path, monkeypatch):
    cfg = small_config(tmp_path, "train.max_epochs=2", "train.checkpoint_every_n_steps=2")
    original = FIF.loss

    def bad_loss(self, batch, step, model):
        terms = original(self, batch, step, model)
        if Clock.of(step).step == 5:
            terms["nll"] = terms["nll"] * float("nan")
            terms["loss"] = terms["loss"] + terms["nll"]
        return terms

    monkeypatch.setattr(FIF, "loss", bad_loss)
    with pytest.raises(NonFiniteLossError, match=r"step 5.*'nll'"):
        fit_config(cfg, verbose=False)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert not list((tmp_path / "run" / "checkpoints").glob("*.tmp*"))


def test_atomic_save_leaves_old_file_on_failure(tmp_path):
    from injflow.io import atomic_torch_save

    path = tmp_path / "x.pt"
    atomic_torch_save({"a": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_torch_save({"a": Unpicklable()}, path)
    assert torch.load(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def test_ae_method_and_options(tmp_path):
    cfg = small_config(tmp_path, "method={name: ae}", "train.max_epochs=1", "optim.name=adamw", "optim.weight_decay=1e-4",
                       "optim.grad_clip=1.0", "train.ema_decay=0.9", "optim.scheduler.name=cosine")
    result = fit_config(cfg, verbose=False)
    header = (result.run_dir / "metrics.csv").read_text().splitlines()[0]
    assert "train/reconstruction_epoch" in header and "train/nll" not in header


@pytest.mark.parametrize("sched", ["constant", "onecycle", "cosine", "plateau"])
def test_lr_schedules_run(tmp_path, sched):
    """The learning rate of every step (metrics.csv) is the torch scheduler's trajectory over the whole run."""
    import csv

    cfg = small_config(tmp_path, "train.max_epochs=3", f"optim.scheduler.name={sched}", "method={name: ae}",
                       "data.options.n_train=400", "train.log_every_n_steps=1", "optim.lr=0.01",
                       "optim.scheduler.options={factor: 0.5, patience: 0}" if sched == "plateau" else "train.seed=0")
    fit_config(cfg, verbose=False)
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    logged = [(int(r["step"]), float(r["lr-Adam"])) for r in rows if r.get("lr-Adam")]
    steps = len(logged)
    assert [s for s, _ in logged] == list(range(steps)) and steps == 3 * 2  # 2 batches per epoch
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=0.01)
    if sched == "onecycle":
        ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=steps)
    elif sched == "cosine":
        ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    elif sched == "plateau":
        ref = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0)
        val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    expected = []
    for i in range(steps):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        if sched in ("onecycle", "cosine"):
            ref.step()
        elif sched == "plateau" and i % 2 == 1:  # stepped per epoch on the epoch's val/loss
            ref.step(val[i // 2])
    assert [lr for _, lr in logged] == pytest.approx(expected, rel=1e-12), (logged, expected)
    if sched == "constant":
        assert set(expected) == {0.01}
    if sched == "onecycle":
        assert expected[0] < max(expected) > expected[-1]  # warm-up, then annealing


def test_schedules():
    lin = as_schedule({"schedule": "linear", "start": 20, "end": 40})
    assert lin(0, 101) == 20 and lin(100, 101) == 40 and lin(50, 101) == 30
    pen = as_schedule({"schedule": "penalty", "nu": 1.3})
    assert pen(0) == 1.0 and math.isclose(pen(1000), 1 + 1000**1.3 / 1000)
    assert as_schedule(5)(123) == 5.0
    with pytest.raises(ValueError, match="beta"):
        FIF(beta={"schedule": "linear", "start": -1, "end": 2})


def test_methods_return_per_sample_terms():
    torch.manual_seed(0)
    flow = InjectiveFlow(torch.nn.Linear(3, 2), torch.nn.Linear(2, 3), latent_dim=2)
    x = torch.randn(7, 3)
    for method in (FIF(beta=1.0), FIF(n_hutchinson=2, noise="gaussian"), AE()):
        terms = method.loss(x, 0, flow)
        assert terms["loss"].shape == (7,)
        terms["loss"].mean().backward()


def test_tensor_batches_resume_and_shard():
    x = torch.arange(20.0)[:, None]
    b = TensorBatches(x, 6, shuffle=True, seed=3)
    epoch = list(b)
    assert torch.equal(torch.cat(epoch).sort(0).values, x)
    c = TensorBatches(x, 6, shuffle=True, seed=3)
    c.load_state_dict({"epoch": 0, "consumed": 2})
    assert [t.tolist() for t in c] == [t.tolist() for t in epoch[2:]]
    shards = [list(TensorBatches(x, 6, shuffle=True, seed=3, rank=r, world_size=2)) for r in range(2)]
    for i, batch in enumerate(epoch):
        assert torch.equal(torch.cat([shards[0][i], shards[1][i]]), batch)


def test_api_custom_modules(tmp_path):
    from injflow import api

    torch.manual_seed(0)
    x = torch.randn(512, 4) @ torch.randn(4, 4) * 0.1
    x[:, :2] += torch.randn(512, 2)
    enc = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.SiLU(), torch.nn.Linear(32, 2))
    dec = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.SiLU(), torch.nn.Linear(32, 4))
    flow = api.InjectiveFlow(enc, dec, latent_dim=2)
    result = api.train(flow, x, val=x[:128], method=api.FIF(beta=5.0),
                       overrides=["train.max_epochs=2", "data.batch_size=128", "train.progress_bar=false", "train.gmm_components=3"],
                       run_dir=tmp_path / "custom", verbose=False)
    assert result.flow is flow
    assert flow.sample(5, sampler="gmm").shape == (5, 4)
    assert flow.log_prob(x[:5]).shape == (5,)
    with pytest.raises(ValueError, match="encoder= and decoder="):
        api.load(tmp_path / "custom" / "model.pt")
    enc2 = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.SiLU(), torch.nn.Linear(32, 2))
    dec2 = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.SiLU(), torch.nn.Linear(32, 4))
    flow2 = api.load(tmp_path / "custom" / "model.pt", encoder=enc2, decoder=dec2)
    assert torch.allclose(flow2.encode(x[:5]), flow.encode(x[:5]))
