"""Class-conditional models (model.conditional): nets, the estimators on a conditioned view, training, sampling,
evaluation; and wall-clock budgets (train.max_time) with schedules over the budget."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from injflow.cli import main
from injflow.config import load_config
from injflow.estimators import decoder_log_volume, fif_loss
from injflow.model import InjectiveFlow
from injflow.nets.conditional import build_conditional_autoencoder
from injflow.train import fit_config

FAST = ["train.max_epochs=2", "train.progress_bar=false", "train.num_threads=1", "train.pictures=false",
        "train.samplers=[gaussian]", "data.batch_size=128"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _flow(num_classes: int = 3) -> InjectiveFlow:
    torch.manual_seed(0)
    f, g = build_conditional_autoencoder("mlp", data_shape=(4,), latent_dim=2, num_classes=num_classes,
                                         hidden_features=(16,))
    return InjectiveFlow(f, g, latent_dim=2, data_shape=(4,), num_classes=num_classes).double()


def test_the_label_changes_the_decoded_manifold_and_is_required():
    flow = _flow()
    z = torch.randn(5, 2, dtype=torch.float64)
    assert not torch.allclose(flow.decode(z, 0), flow.decode(z, 1))
    with pytest.raises(ValueError, match="conditional on a class label"):
        flow.decode(z)
    with pytest.raises(ValueError, match=r"0\.\.2"):
        flow.decode(z, 3)


def test_estimators_on_the_conditioned_view_equal_those_on_fixed_label_closures():
    """The batch view (labels per row) gives per row what the closure with that row's constant label gives."""
    flow = _flow()
    x = torch.randn(6, 4, dtype=torch.float64)
    c = torch.tensor([0, 1, 2, 0, 1, 2])
    torch.manual_seed(1)
    batched = fif_loss(x, flow.given(c).encode, flow.given(c).decode, beta=3.0, noise="gaussian")
    for k in range(3):
        rows = (c == k).nonzero().flatten()
        view = flow.with_label(k)
        torch.manual_seed(1)  # the same (K, B, d) noise draw for the whole batch
        single = fif_loss(x, view.encode, view.decode, beta=3.0, noise="gaussian")
        for key in ("nll", "reconstruction", "surrogate"):
            torch.testing.assert_close(batched[key][rows], single[key][rows])
    # exact log-volumes: grouped by class inside log_prob, equal to one row at a time
    lp = flow.log_prob(x, c=c)
    for i in range(6):
        view = flow.with_label(int(c[i]))
        z = view.encode(x[i: i + 1])
        expected = flow.latent.log_prob(z) - decoder_log_volume(view.decode, z)
        torch.testing.assert_close(lp[i: i + 1], expected.detach())


def test_conditional_training_sampling_and_evaluation(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["fit", "--set", *FAST, "data={name: conditional_digits, options: {flatten: true}}",
                 "model={architecture: mlp, latent_dim: 6, conditional: true, options: {hidden_features: [32]}}",
                 f"run.dir={run}"]) == 0
    flow = InjectiveFlow.load(run / "model.pt")
    assert flow.num_classes == 10 and flow.image_shape == (1, 8, 8)
    assert main(["sample", str(run), "--n", "16", "--class", "7", "--sampler", "gaussian"]) == 0
    assert torch.load(run / "samples" / "gaussian_T1_class7.pt").shape == (16, 64)
    assert main(["evaluate", str(run), "--no-fid", "--no-progress"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["nll"] is not None and metrics["latent_dim"] == 6
    assert set(metrics["method_terms"]) >= {"loss", "reconstruction", "latent_sq_norm"}
    capsys.readouterr()
    assert main(["fit", "--set", *FAST, "data.name=digits", "model.conditional=true", f"run.dir={tmp_path / 'x'}"]) == 2
    assert "model.conditional" in capsys.readouterr().err


def test_wall_clock_budget_stops_training_and_schedules_follow_it(tmp_path):
    cfg = load_config(None, [*FAST, "data.options.n_train=2000", "train.max_epochs=1000", "train.max_time=4",
                             "optim.scheduler.name=constant", "method.beta={schedule: linear, start: 20, end: 40}",
                             "train.log_every_n_steps=1", "model.options.n_blocks=1", f"run.dir={tmp_path / 'run'}"])
    assert cfg.train.max_time == 4.0
    result = fit_config(cfg, verbose=False)
    assert result.completed and 1 < result.global_step < 1000 * 16
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    beta = [float(r["train/beta"]) for r in rows if r.get("train/beta")]
    assert beta == sorted(beta) and beta[0] < 25 and 30 < beta[-1] <= 40  # over the budget, not over 1000 epochs
    with pytest.raises(Exception, match="optim.scheduler.name: onecycle spans a number of steps"):
        fit_config(load_config(None, [*FAST, "train.max_time=00:00:05", f"run.dir={tmp_path / 'b'}"]), verbose=False)


def test_compiled_fif_gives_the_eager_gradients_and_trains(tmp_path):
    """train.compile: the torch.func + torch.compile gradient equals fif_loss's for the same noise; a run trains."""
    from injflow.errors import ConfigError
    from injflow.methods import FIF
    from injflow.nets import build_autoencoder
    from injflow.train.compile import CompiledFIF, gradient_carrier

    torch.manual_seed(0)
    f, g = build_autoencoder("tabular", data_shape=(10,), latent_dim=3, hidden_features=(32, 32), n_blocks=1,
                             block_hidden_features=(32,))
    flow = InjectiveFlow(f, g, latent_dim=3, data_shape=(10,))
    x = torch.randn(32, 10)
    method = FIF(beta=7.0, n_hutchinson=2)
    torch.manual_seed(3)
    eager = fif_loss(x, flow.encode, flow.decode, beta=7.0, n_hutchinson=2, latent_log_prob=flow.latent.log_prob)
    want = torch.autograd.grad(eager["loss"].mean(), list(flow.parameters()))
    compiled = CompiledFIF(flow, method, backend="aot_eager")
    torch.manual_seed(3)
    terms, got = compiled(x, 0)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(terms["loss"], eager["loss"].detach())
    carrier = gradient_carrier(compiled.params, got)
    for p, gr, gc in zip(compiled.params, got, torch.autograd.grad(carrier, compiled.params)):
        assert torch.equal(gc, gr), p.shape
    result = fit_config(load_config(None, [*FAST, "train.compile=aot_eager", "data.options.n_train=400",
                                           f"run.dir={tmp_path / 'run'}"]), verbose=False)
    assert result.completed
    with pytest.raises(ConfigError, match="train.compile: the compiled path is FIF's default estimator"):
        fit_config(load_config(None, [*FAST, "train.compile=true", "method.mode=backward", f"run.dir={tmp_path / 'b'}"]),
                   verbose=False)
