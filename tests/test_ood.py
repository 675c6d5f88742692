"""Out-of-distribution scores (injflow.ood) and the thickened D-dimensional density (injflow.metrics.ambient), each
against an exact reference: hand-computed AUROCs and scikit-learn's, full float64 Jacobians, a linear-Gaussian VAE
whose marginal likelihood is known in closed form; and `injflow evaluate RUN --ood DATASET` end to end."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from injflow.cli import main
from injflow.methods import GaussianEncoder
from injflow.metrics.ambient import OffManifoldNoise, ambient_nll_metrics, fit_flow_noise, fit_off_manifold_noise
from injflow.model import InjectiveFlow
from injflow.ood import auroc, importance_weighted_nll, ood_scores, point_scores

FAST = [
    "data.options.n_train=1000", "data.options.n_val=200", "data.options.n_test=200", "data.batch_size=200",
    "model.options.n_blocks=1", "model.options.hidden_features=16", "train.max_epochs=2", "train.progress_bar=false",
    "train.num_threads=1", "train.gmm_components=3", "train.pictures=false",
]


# --------------------------------------------------------------------------- AUROC


def test_auroc_by_hand():
    # out-of-distribution points are the positives, larger = more OOD; pairs (out, in): 0.8 beats all three,
    # 0.35 beats 0.1, ties 0.35 (half) and loses to 0.4: (3 + 1 + 0.5) / 6
    assert auroc([0.1, 0.4, 0.35], [0.8, 0.35]) == pytest.approx(0.75)
    assert auroc([1.0, 2.0], [3.0, 4.0]) == 1.0
    assert auroc([3.0, 4.0], [1.0, 2.0]) == 0.0  # the paradox: OOD ranked as more in-distribution
    assert auroc([1.0, 1.0], [1.0]) == 0.5
    with pytest.raises(ValueError, match="NaN"):
        auroc([0.0, float("nan")], [1.0])
    with pytest.raises(ValueError, match="both sets"):
        auroc([], [1.0])


def test_auroc_matches_scikit_learn_with_ties():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 20, 500).astype(float)  # many ties
    b = rng.integers(5, 25, 300).astype(float)
    expected = roc_auc_score(np.r_[np.zeros(a.size), np.ones(b.size)], np.r_[a, b])
    assert auroc(a, b) == pytest.approx(expected, abs=1e-12)
    c, d = rng.normal(size=1000), rng.normal(0.3, 1.0, size=700)
    assert auroc(torch.tensor(c), torch.tensor(d)) == pytest.approx(roc_auc_score(np.r_[np.zeros(1000), np.ones(700)],
                                                                                  np.r_[c, d]), abs=1e-12)


# --------------------------------------------------------------------------- the scores against full Jacobians


def _tiny_flow(data_dim: int = 4, latent_dim: int = 2, seed: int = 0) -> InjectiveFlow:
    torch.manual_seed(seed)
    enc = nn.Sequential(nn.Linear(data_dim, 8), nn.Tanh(), nn.Linear(8, latent_dim)).double()
    dec = nn.Sequential(nn.Linear(latent_dim, 8), nn.Tanh(), nn.Linear(8, data_dim)).double()
    return InjectiveFlow(enc, dec, latent_dim=latent_dim, data_shape=(data_dim,))


def _reference(flow: InjectiveFlow, x: torch.Tensor, latent_log_prob, variance: float) -> dict[str, torch.Tensor]:
    """Per point, with torch.autograd.functional.jacobian at z = f(x): the on-manifold NLL, ‖x − g(f(x))‖², and
    −log p_D = nll + (D−d)/2 log(2πσ²) + ‖x − x̂‖²/(2σ²)."""
    big_d, d = x.shape[1], flow.latent_dim
    out = {"nll": [], "reconstruction": [], "nll_D": []}
    for xi in x:
        z = flow.encoder(xi[None])[0].detach()
        jac = torch.autograd.functional.jacobian(lambda v: flow.decoder(v[None])[0], z)  # (D, d)
        log_vol = 0.5 * torch.logdet(jac.T @ jac)
        nll = -(latent_log_prob(z[None])[0] - log_vol)
        rec = (flow.decoder(z[None])[0] - xi).pow(2).sum()
        out["nll"].append(nll)
        out["reconstruction"].append(rec)
        out["nll_D"].append(nll + 0.5 * (big_d - d) * math.log(2 * math.pi * variance) + rec / (2 * variance))
    return {k: torch.stack(v).detach() for k, v in out.items()}


def test_point_scores_match_full_jacobians():
    flow = _tiny_flow()
    x_train, x = torch.randn(64, 4, dtype=torch.float64), torch.randn(9, 4, dtype=torch.float64)
    noise = fit_flow_noise(flow, x_train)
    with torch.no_grad():
        rec_train = (flow.decoder(flow.encoder(x_train)) - x_train).pow(2).sum(1)
    assert noise.variance == pytest.approx(float(rec_train.mean()) / (4 - 2), rel=1e-12)  # σ̂² = mean ‖x − x̂‖² / (D − d)
    scores = point_scores(flow, x, noise)
    ref = _reference(flow, x, flow.latent.log_prob, noise.variance)
    for k in ("nll", "reconstruction", "nll_D"):
        torch.testing.assert_close(scores[k], ref[k], rtol=1e-9, atol=1e-9)


def test_point_scores_with_a_post_fit_latent():
    flow = _tiny_flow(seed=1)
    x_train = torch.randn(200, 4, dtype=torch.float64)
    flow.fit_samplers(x_train.float().double(), names=("gmm",), n_components=2)
    x = torch.randn(5, 4, dtype=torch.float64)
    noise = fit_flow_noise(flow, x_train)
    scores = point_scores(flow, x, noise, latent="gmm")
    gmm = flow.samplers["gmm"]
    ref = _reference(flow, x, lambda z: gmm.log_prob(z.to(next(gmm.buffers()).dtype)).double(), noise.variance)
    torch.testing.assert_close(scores["nll"], ref["nll"], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not a fitted sampler"):
        point_scores(flow, x, noise, latent="gaussian")


def test_thickened_density_edge_cases():
    noise = fit_off_manifold_noise(torch.tensor([1.0, 3.0]), data_dim=3, latent_dim=3)  # d = D: no normal direction
    assert noise.variance == 0.0 and noise.normal_dim == 0
    assert noise.log_prob(torch.tensor([-1.5]), torch.tensor([7.0])).item() == -1.5  # p_D = p
    with pytest.raises(ValueError, match="latent_dim"):
        fit_off_manifold_noise(torch.tensor([1.0]), data_dim=3, latent_dim=4)
    with pytest.raises(ValueError, match="finite"):
        fit_off_manifold_noise(torch.tensor([float("inf")]), data_dim=3, latent_dim=1)
    m = ambient_nll_metrics({"nll": None, "reconstruction_error": 1.0}, OffManifoldNoise(1.0, 3, 1, 5))
    assert m["nll_D"] is None and m["off_manifold_noise"]["fitted_on"] == "train"


# --------------------------------------------------------------------------- the VAE bound


def _linear_gaussian_vae(sigma: float) -> tuple[InjectiveFlow, torch.Tensor, torch.Tensor]:
    """g(z) = Wz + b (orthogonal columns), p_Z = N(0, I), p(x|z) = N(g(z), σ²I) and q = the exact posterior
    N(ΣWᵀ(x − b)/σ², Σ), Σ = (I + WᵀW/σ²)⁻¹ (diagonal here). Then p(x) = N(x; b, WWᵀ + σ²I) in closed form."""
    big_d, d = 5, 2
    q = torch.linalg.qr(torch.randn(big_d, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]
    w, b = q * torch.tensor([2.0, 0.5], dtype=torch.float64), torch.arange(big_d, dtype=torch.float64) / 10
    cov_post = torch.linalg.inv(torch.eye(d, dtype=torch.float64) + w.T @ w / sigma**2)
    mean_net, var_head, dec = nn.Linear(big_d, d).double(), nn.Linear(d, d).double(), nn.Linear(d, big_d).double()
    with torch.no_grad():
        mean_net.weight.copy_(cov_post @ w.T / sigma**2)
        mean_net.bias.copy_(-(cov_post @ w.T @ b) / sigma**2)
        var_head.weight.zero_()  # a constant log-variance: the exact posterior's
        var_head.bias.copy_(cov_post.diagonal().log())
        dec.weight.copy_(w)
        dec.bias.copy_(b)
    flow = InjectiveFlow(GaussianEncoder(mean_net, var_head, split=None), dec, latent_dim=d, data_shape=(big_d,))
    return flow, w, b


def test_importance_weighted_bound_is_exact_with_the_true_posterior():
    sigma = 0.3
    flow, w, b = _linear_gaussian_vae(sigma)
    x = torch.randn(6, 5, dtype=torch.float64)
    marginal = torch.distributions.MultivariateNormal(b, w @ w.T + sigma**2 * torch.eye(5, dtype=torch.float64))
    for k in (1, 7):  # with q = p(z|x) every importance weight equals p(x): the bound is tight for any K
        torch.testing.assert_close(importance_weighted_nll(flow, x, sigma=sigma, n_samples=k), -marginal.log_prob(x),
                                   rtol=1e-9, atol=1e-9)
    with torch.no_grad():  # a worse posterior: the bound loosens, more samples tighten it, never past log p(x)
        flow.encoder.log_variance_head.bias.add_(1.5)
    one, many = (importance_weighted_nll(flow, x, sigma=sigma, n_samples=k, seed=1).mean() for k in (1, 256))
    assert float(-marginal.log_prob(x).mean()) < float(many) < float(one)
    plain = InjectiveFlow(nn.Linear(5, 2), nn.Linear(2, 5), latent_dim=2, data_shape=(5,))
    with pytest.raises(ValueError, match="checkpoint"):
        importance_weighted_nll(plain, x.float(), sigma=sigma)


def test_ood_scores_adds_the_vae_bound_and_checks_shapes():
    flow, _, _ = _linear_gaussian_vae(0.3)
    x_fit = torch.randn(40, 5, dtype=torch.float64)
    result = ood_scores(flow, torch.randn(8, 5, dtype=torch.float64), 4 + torch.randn(6, 5, dtype=torch.float64),
                        x_fit=x_fit, vae_sigma=0.3, iw_samples=3, names=("a", "b"))
    assert set(result.auroc()) == {"nll", "reconstruction", "nll_D", "vae_nll"}
    assert result.auroc()["vae_nll"] == 1.0  # points 4σ away from the data are less likely under the exact marginal
    rows = list(csv.DictReader(result.csv_text().splitlines()))
    assert len(rows) == 14 and rows[0]["set"] == "in" and rows[-1]["dataset"] == "b"
    with pytest.raises(ValueError, match="shape"):
        ood_scores(flow, torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64), x_fit=x_fit)


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def sinusoid_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("ood") / "run"
    assert main(["fit", "--set", *FAST, f"run.dir={run}"]) == 0
    return run


def test_evaluate_with_ood_writes_scores_aurocs_and_nll_d(sinusoid_run, capsys):
    assert main(["evaluate", str(sinusoid_run), "--ood", "moons", "--no-progress"]) == 0
    metrics = json.loads((sinusoid_run / "metrics.json").read_text())
    ood = metrics["ood"]
    assert set(ood["auroc"]) == {"nll", "reconstruction", "nll_D"}
    assert all(0.0 <= v <= 1.0 for v in ood["auroc"].values())
    assert ood["in"]["dataset"] == "sinusoid" and ood["out"]["dataset"] == "moons" and ood["out"]["n"] == 2000  # its whole test split
    rows = list(csv.DictReader((sinusoid_run / "eval" / "ood_scores.csv").open()))
    assert len(rows) == 2200 and {r["set"] for r in rows} == {"in", "out"}
    assert (sinusoid_run / "eval" / "ood_scores.png").read_bytes()[:4] == b"\x89PNG"
    # The two paths agree: metrics' nll_D (from the evaluation's means) is the mean of the per-point nll_D of the test
    # split, and both use the noise fitted on the training split.
    in_rows = [r for r in rows if r["set"] == "in"]
    assert metrics["nll_D"] == pytest.approx(np.mean([float(r["nll_D"]) for r in in_rows]), rel=1e-4)
    assert metrics["off_manifold_noise"]["variance"] == pytest.approx(ood["off_manifold_noise"]["variance"], rel=1e-9)
    recomputed = auroc([float(r["nll"]) for r in in_rows], [float(r["nll"]) for r in rows if r["set"] == "out"])
    assert recomputed == pytest.approx(ood["auroc"]["nll"], abs=1e-12)


def test_ood_run_api_keeps_the_other_metrics(sinusoid_run):
    from injflow.ood import ood_run

    before = json.loads((sinusoid_run / "metrics.json").read_text()) if (sinusoid_run / "metrics.json").exists() else {}
    section = ood_run(sinusoid_run, "circle", max_samples=50, verbose=False)
    after = json.loads((sinusoid_run / "metrics.json").read_text())
    assert after["ood"] == json.loads(json.dumps(section)) and section["out"]["n"] == 50
    assert {k: v for k, v in after.items() if k != "ood"} == {k: v for k, v in before.items() if k != "ood"}


@pytest.mark.parametrize("dataset, message", [("swiss_roll", "shape (3,)"), ("no_such_data", "no_such_data")])
def test_ood_data_set_of_another_shape_is_refused_in_one_line(sinusoid_run, capsys, dataset, message):
    rc = main(["evaluate", str(sinusoid_run), "--ood", dataset, "--no-progress", "--max-samples", "20"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
