"""``train.num_threads`` bounds every thread pool of a run (injflow.threads), and a VAE run's exported model works with
the rest of injflow (sample, evaluate)."""

from __future__ import annotations

import functools
import json

import pytest
import torch

from injflow.threads import limit_threads

# A tiny VAE run on the default sinusoid (a few seconds on one core), with the post-fit GMM.
VAE_RUN = [
    "method={name: vae, sigma: 0.3}", "data.options.n_train=600", "data.options.n_val=100", "data.options.n_test=200",
    "data.batch_size=100", "model.options.n_blocks=1", "model.options.hidden_features=16", "train.max_epochs=2",
    "train.progress_bar=false", "train.pictures=false", "train.samplers=[gmm]", "train.gmm_components=2",
    "train.num_threads=1",
]


def _pools() -> list[tuple[str, str, int]]:
    from threadpoolctl import threadpool_info

    return [(i["user_api"], i["filepath"], i["num_threads"]) for i in threadpool_info()]


def test_limit_threads_bounds_torch_and_every_pool_and_restores_them():
    from threadpoolctl import threadpool_limits

    outside = torch.get_num_threads()
    with threadpool_limits(2):
        torch_before, pools_before = torch.get_num_threads(), _pools()
        with limit_threads(1):
            inside = _pools()
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == torch_before
        after = {path: n for _, path, n in _pools()}
    assert {api for api, _, _ in inside} >= {"blas", "openmp"}  # numpy's/SciPy's OpenBLAS, torch's/sklearn's OpenMP
    assert all(n == 1 for _, _, n in inside), inside
    assert all(after[path] == n for _, path, n in pools_before)
    with limit_threads(None):  # unset: nothing changes
        assert torch.get_num_threads() == outside


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    """Fits the tiny VAE run once, inside two-thread pools, recording what the post-fit GMM fit sees."""
    from threadpoolctl import threadpool_limits

    import injflow.distributions as D
    from injflow.api import fit

    seen = []
    real = D.SAMPLERS["gmm"]

    @functools.wraps(real)  # the registry reads the options from the signature
    def spy(z, **options):
        seen.append((torch.get_num_threads(), _pools()))
        return real(z, **options)

    run = tmp_path_factory.mktemp("vae") / "run"
    D.SAMPLERS._entries["gmm"] = spy
    threads = torch.get_num_threads()
    try:
        with threadpool_limits(2):  # without the run's bound the GMM would see these two threads
            torch.set_num_threads(2)
            fit(None, overrides=VAE_RUN, run_dir=run, verbose=False)
            outside = _pools()
    finally:
        D.SAMPLERS._entries["gmm"] = real
        torch.set_num_threads(threads)
    return run, seen, outside


def test_a_gmm_fit_inside_a_run_sees_the_thread_limit(vae_run):
    run, seen, outside = vae_run
    assert len(seen) == 1
    torch_threads, pools = seen[0]
    assert torch_threads == 1
    assert {api for api, _, _ in pools} >= {"blas", "openmp"}
    assert all(n == 1 for _, _, n in pools), pools  # every BLAS/OpenMP pool, scikit-learn's included
    assert all(n == 2 for _, _, n in outside)  # restored when the run is over


def test_a_vae_runs_exported_model_samples_and_evaluates(vae_run):
    """model.pt holds the plain mean encoder; `evaluate` works on it (the VAE's own terms need the training nets: it
    says so and `--checkpoint last` computes them); `sample` draws from the post-fit GMM."""
    from injflow.cli import main
    from injflow.model import InjectiveFlow
    from injflow.nets import GaussianEncoder

    run, _, _ = vae_run
    flow = InjectiveFlow.load(run / "model.pt")
    assert flow.finalized and not isinstance(flow.encoder, GaussianEncoder) and "gmm" in flow.samplers
    assert main(["sample", str(run), "--n", "20", "--sampler", "gmm"]) == 0
    assert main(["evaluate", str(run), "--max-samples", "100"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["reconstruction_error"] > 0 and metrics["method_terms"] == {}
    assert "--checkpoint last" in metrics["method_terms_unavailable"]
    assert main(["evaluate", str(run), "--max-samples", "100", "--checkpoint", "last"]) == 0
    terms = json.loads((run / "metrics.json").read_text())["method_terms"]
    assert set(terms) >= {"loss", "reconstruction", "kl", "expected_nll", "posterior_variance"}
    assert terms["kl"] > 0
