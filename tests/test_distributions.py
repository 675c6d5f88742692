"""Latent distributions and post-fit samplers."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats as st
import torch

from injflow.distributions import (
    IsotropicNormal,
    StandardNormal,
    StudentT,
    build_latent,
    distribution_from_spec,
    fit_gaussian,
    fit_gmm,
)


@pytest.mark.parametrize("d", [1, 2, 3, 7, 20])
@pytest.mark.parametrize("df", [1.0, 2.5, 30.0])
def test_student_t_log_prob_matches_scipy(d, df):
    z = torch.randn(50, d, dtype=torch.float64) * 2
    for scale in (1.0, 0.5):
        ours = StudentT(d, df=df, scale=scale).log_prob(z)
        ref = st.multivariate_t(loc=np.zeros(d), shape=scale**2 * np.eye(d), df=df).logpdf(z.numpy())
        np.testing.assert_allclose(ours.numpy(), np.atleast_1d(ref), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("d", [1, 4])
def test_normals_match_scipy(d):
    z = torch.randn(20, d, dtype=torch.float64)
    ref = st.multivariate_normal(np.zeros(d), np.eye(d)).logpdf(z.numpy())
    np.testing.assert_allclose(StandardNormal(d).log_prob(z).numpy(), np.atleast_1d(ref), rtol=1e-12)
    ref = st.multivariate_normal(np.zeros(d), 0.09 * np.eye(d)).logpdf(z.numpy())
    np.testing.assert_allclose(IsotropicNormal(d, sigma=0.3).log_prob(z).numpy(), np.atleast_1d(ref), rtol=1e-12)


def test_sampling_moments_and_temperature():
    g = torch.Generator().manual_seed(0)
    s = StudentT(3, df=5.0).sample(200_000, generator=g)
    assert torch.allclose(s.var(0), torch.full((3,), 5 / 3), rtol=0.05)  # var = ν/(ν-2)
    s = IsotropicNormal(2, sigma=2.0).sample(100_000, temperature=0.5, generator=g)
    assert torch.allclose(s.std(0), torch.ones(2), rtol=0.02)


def test_seeded_samples_repeat():
    for dist in (StandardNormal(2), StudentT(2), fit_gmm(torch.randn(200, 2), n_components=3)):
        a = dist.sample(10, generator=torch.Generator().manual_seed(1))
        b = dist.sample(10, generator=torch.Generator().manual_seed(1))
        assert torch.equal(a, b)


def test_post_fit_gaussian_and_gmm():
    torch.manual_seed(0)
    a = torch.randn(3, 3)
    z = torch.randn(5000, 3) @ a.T + torch.tensor([1.0, -2.0, 0.5])
    gauss = fit_gaussian(z)
    assert torch.allclose(gauss.mean, z.mean(0), atol=1e-5)
    assert torch.allclose(gauss.covariance, torch.cov(z.T, correction=0), atol=1e-3)
    ref = st.multivariate_normal(gauss.mean.double().numpy(), gauss.covariance.double().numpy()).logpdf(z[:5].double().numpy())
    np.testing.assert_allclose(gauss.log_prob(z[:5]).numpy(), ref, rtol=1e-4)
    s = gauss.sample(50_000, generator=torch.Generator().manual_seed(0), temperature=0.5)
    assert torch.allclose(torch.cov(s.T), 0.25 * gauss.covariance, atol=0.05)
    # A two-cluster GMM: default 10 components, full covariances, seeded, and the same fit for the same seed.
    z2 = torch.cat([torch.randn(500, 2) * 0.1 + 3, torch.randn(500, 2) * 0.1 - 3])
    g1, g2 = fit_gmm(z2, seed=4), fit_gmm(z2, seed=4)
    assert g1.n_components == 10 and g1.covariances.shape == (10, 2, 2)
    assert torch.equal(g1.means, g2.means)
    from sklearn.mixture import GaussianMixture

    sk = GaussianMixture(10, covariance_type="full", random_state=4, reg_covar=1e-6, max_iter=200).fit(z2.double().numpy())
    np.testing.assert_allclose(g1.log_prob(z2[:10]).numpy(), sk.score_samples(z2[:10].double().numpy()), rtol=1e-4, atol=1e-4)
    s = g1.sample(1000, generator=torch.Generator().manual_seed(0))
    assert ((s.norm(dim=1) - 18**0.5).abs() < 1.0).float().mean() > 0.95


def test_spec_round_trip_and_errors():
    for dist in (StandardNormal(2), IsotropicNormal(2, sigma=0.3), StudentT(2, df=3.0), fit_gaussian(torch.randn(50, 2)),
                 fit_gmm(torch.randn(50, 2), n_components=2)):
        z = torch.randn(4, 2)
        assert torch.allclose(distribution_from_spec(dist.spec()).log_prob(z), dist.log_prob(z))
    with pytest.raises(ValueError, match="unknown latent"):
        build_latent("cauchy", 2)
    with pytest.raises(ValueError, match="shape"):
        StandardNormal(2).log_prob(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="temperature"):
        StandardNormal(2).sample(3, temperature=0)
    with pytest.raises(ValueError, match="NaN"):
        fit_gaussian(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))


def test_post_fit_samplers_survive_ill_conditioned_codes():
    # Plain-AE codes: variances from 1e-5 to 1e4 (condition number 1e9). In float32 the rounded covariance
    # is indefinite; the fit must still succeed, sample with the fitted covariance, and reload from its spec.
    gen = torch.Generator().manual_seed(0)
    d = 32
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=gen))
    std = torch.logspace(-2.5, 2, d, dtype=torch.float64)
    z = ((torch.randn(4000, d, dtype=torch.float64, generator=gen) * std) @ q.T).float()
    gauss = fit_gaussian(z)
    assert gauss.mean.dtype == torch.float32
    np.testing.assert_allclose((gauss.scale_tril.double() @ gauss.scale_tril.double().T).numpy(),
                               np.cov(z.double().numpy(), rowvar=False, bias=True), rtol=1e-3, atol=1e-3)
    assert torch.isfinite(gauss.log_prob(z[:100])).all()
    gmm = fit_gmm(z, n_components=3)
    assert torch.isfinite(gmm.sample(50, generator=gen)).all() and torch.isfinite(gmm.log_prob(z[:100])).all()
    with pytest.warns(RuntimeWarning, match="ridge"):
        # Reloading from float32 values rounds the spectrum; a relative ridge then restores definiteness.
        singular = torch.ones(d, d) + torch.eye(d) * 0.0
        distribution_from_spec({"name": "gaussian", "dim": d, "mean": torch.zeros(d), "covariance": singular})
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a saved sampler reloads with its own factor: no ridge, no warning
        reloaded, reloaded_gmm = distribution_from_spec(gauss.spec()), distribution_from_spec(gmm.spec())
    torch.testing.assert_close(reloaded.log_prob(z[:10]), gauss.log_prob(z[:10]))
    torch.testing.assert_close(reloaded_gmm.log_prob(z[:10]), gmm.log_prob(z[:10]))


def test_gmm_rejects_bad_weights():
    from injflow.distributions import GaussianMixture

    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(torch.tensor([1.5, -0.5]), torch.zeros(2, 2), torch.eye(2).repeat(2, 1, 1))
