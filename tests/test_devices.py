"""What goes wrong on a first GPU, checked on the CPU where the mechanism can be reproduced here (the GPU itself is
checked by tests/test_gpu.py, ``-m gpu``): random streams, precision, the FID cache key, the suite's device."""

from __future__ import annotations

import os

import pytest
import scipy.stats as st
import torch

from injflow import distributions
from injflow.distributions import StudentT

# ------------------------------------------------------------------------------------------------ Student-t sampling


def test_student_t_draws_new_chi2_factors_when_eps_comes_from_another_stream(monkeypatch):
    """On a GPU, eps comes from the CUDA stream and leaves the CPU stream alone; the χ² factors were drawn from a forked
    CPU stream that was then restored, so every call drew the same factors. Reproduced here by making eps leave the
    CPU stream alone: two calls must still give different samples."""
    monkeypatch.setattr(distributions, "_randn", lambda n, dim, ref, generator: torch.ones(n, dim, dtype=ref.dtype))
    t = StudentT(2, df=4.0)
    torch.manual_seed(0)
    a, b = t.sample(64), t.sample(64)
    assert not torch.equal(a, b)


def test_student_t_with_a_generator_reseeds_no_global_stream(monkeypatch):
    """A seeded draw repeats and leaves every global stream as it was: the CPU one is forked, and no device's stream is
    reseeded (torch.manual_seed would reseed every CUDA device's stream, which the CPU-only fork does not restore)."""
    reseeded = []
    monkeypatch.setattr(torch, "manual_seed", lambda seed: reseeded.append(seed))
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: reseeded.append(seed))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: reseeded.append(seed))
    t = StudentT(3, df=5.0)
    before = torch.get_rng_state()
    a = t.sample(32, generator=torch.Generator().manual_seed(1))
    b = t.sample(32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.equal(torch.get_rng_state(), before) and reseeded == []


@pytest.mark.parametrize("seeded", [False, True])
def test_student_t_samples_have_the_student_t_radius(seeded):
    """‖z‖²/(dσ²) of a d-dimensional Student-t with ν degrees of freedom is F(d, ν)-distributed (KS test)."""
    d, df, scale, n = 3, 4.0, 0.5, 20_000
    torch.manual_seed(3)
    z = StudentT(d, df=df, scale=scale).sample(n, generator=torch.Generator().manual_seed(5) if seeded else None)
    radius = (z.double().pow(2).sum(1) / (d * scale**2)).numpy()
    assert st.kstest(radius, st.f(d, df).cdf).pvalue > 1e-3


# ------------------------------------------------------------------------------------------------ the suite's device


def test_the_default_suite_hides_every_gpu_from_accelerator_auto(pytestconfig):
    """train.accelerator=auto (the default) must find no GPU in the CPU-calibrated suite (tests/conftest.py); only
    ``-m gpu`` sees the devices."""
    from conftest import selects_gpu_tests

    assert selects_gpu_tests("gpu") and selects_gpu_tests("slow or gpu") and not selects_gpu_tests("not slow and not gpu")
    if not selects_gpu_tests(pytestconfig.getoption("markexpr")):
        assert os.environ.get("CUDA_VISIBLE_DEVICES") == "" and not torch.cuda.is_available()


# ------------------------------------------------------------------------------------------------ FID on a device


def test_fid_cache_key_names_the_device_and_keeps_the_cpu_key():
    """Features from another device's kernels differ in round-off (~1e-5, like channels_last), so a reference cached on
    the CPU must not be reused for GPU features or back: the device is in the extractor's identity, hence in the cache
    key. The CPU identity is unchanged, so existing caches stay valid. (TF32, which would shift features by ~1e-3, is
    turned off inside the extractor's forward: tests/test_gpu.py checks CPU-GPU agreement.)"""
    from injflow.metrics.fid import ReferenceStatsCache
    from injflow.metrics.inception import InceptionFeatureExtractor, InceptionWeightsMissingError

    try:
        extractor = InceptionFeatureExtractor()
    except InceptionWeightsMissingError:
        pytest.skip("the Inception weights are not installed")
    cpu = extractor.identity
    assert cpu == f"inception-sha1={extractor.sha1};size=299;resize=bilinear;range=0,1"
    images = torch.rand(4, 1, 8, 8)
    cpu_key = ReferenceStatsCache.key(images, extractor)
    extractor.device = torch.device("cuda")  # only the identity is read here
    assert extractor.identity == cpu + ";device=cuda"
    assert ReferenceStatsCache.key(images, extractor) != cpu_key


# ------------------------------------------------------------------------------------------------ TF32 in evaluation


def test_exact_numbers_of_evaluation_are_computed_without_tf32(monkeypatch):
    """The exact NLL of ``injflow evaluate`` (on_manifold_likelihood: also the OOD scores), the reconstruction errors
    of nll_D and the Jacobian spectra of ``injflow dimension`` run inside ``full_float32`` (TF32 shifts them by ~1e-3
    relative on a GPU). Observed here by pretending CUDA is present, so that the block sets the backends' precision
    ("ieee"), and recording it from inside the nets; the setting is restored afterwards."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    matmul = torch.backends.cuda.matmul
    saved = matmul.fp32_precision  # a backend setting, not an attribute monkeypatch can restore
    matmul.fp32_precision = "tf32"
    try:
        seen = _precision_inside_evaluation(matmul)
        assert matmul.fp32_precision == "tf32"
    finally:
        matmul.fp32_precision = saved
    assert seen and set(seen) == {"ieee"}, seen


def _precision_inside_evaluation(matmul) -> list[str]:
    from injflow.dimension import _encoder_stretches
    from injflow.metrics.ambient import reconstruction_errors
    from injflow.metrics.likelihood import on_manifold_likelihood

    seen: list[str] = []
    torch.manual_seed(0)
    enc, dec = torch.nn.Linear(3, 2), torch.nn.Linear(2, 3)

    class Flow(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc, self.dec = enc, dec

        def encode(self, x):
            seen.append(matmul.fp32_precision)
            return self.enc(x)

        def decode(self, z):
            seen.append(matmul.fp32_precision)
            return self.dec(z)

    flow, x = Flow(), torch.randn(4, 3)
    on_manifold_likelihood(x, flow.encode, flow.decode)
    reconstruction_errors(flow, x)
    _encoder_stretches(flow, x, batch_size=4, chunk_size=None)
    return seen
