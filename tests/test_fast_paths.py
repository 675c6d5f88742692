"""The launch-lean paths (few, batched operations for accelerators) give what the plain ones give: orthogonal noise by
Gram-Schmidt, conjugate gradients that read the host every few iterations, Cholesky log-determinants, the two-pass
composite BatchNorm; and half precision goes through the estimators (mixed precision)."""

from __future__ import annotations

import math

import pytest
import scipy.stats as st
import torch

import injflow.estimators as E
from injflow.errors import ConfigError
from injflow.nets.normalization import BatchNorm1d, BatchNorm2d

DTYPE = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------ orthogonal noise


@pytest.mark.parametrize("n, k", [(2, 2), (5, 3), (9, 4), (6, 5)])
def test_orthogonal_noise_is_the_q_factor_of_the_same_gaussian_draw_up_to_column_signs(n, k):
    """K ≤ 4 orthonormalises by Gram-Schmidt, K > 4 by QR: both are QR's Q of the same Gaussian (B, n, K) draw, up to
    the signs of its columns, which εᵀAε cannot see (FIF App. D.3.5) — so the distribution is QR's: Haar."""
    eps = E.sample_noise(11, (n,), k, "orthogonal", dtype=DTYPE, generator=gen(3))
    q = torch.linalg.qr(torch.randn(11, n, k, dtype=DTYPE, generator=gen(3))).Q.permute(2, 0, 1) * math.sqrt(n)
    signs = (eps * q).sum(-1, keepdim=True).sign()
    assert signs.abs().min() == 1
    torch.testing.assert_close(eps, signs * q, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
@pytest.mark.parametrize("n, k", [(2, 2), (3, 2), (6, 4)])
def test_orthogonal_noise_is_orthogonal_scaled_isotropic_and_uniform_per_column(n, k, dtype, atol):
    """εᵢᵀεⱼ = n δᵢⱼ per sample; E[εεᵀ] = I and E[ε₁ε₂ᵀ] = 0; each column is uniform on the sphere of radius √n, so
    (e₁ᵀε)²/n ~ Beta(1/2, (n−1)/2) (KS test) — also for nearly dependent Gaussian columns (n = K = 2)."""
    b = 20_000
    eps = E.sample_noise(b, (n,), k, "orthogonal", dtype=dtype, generator=gen(n * 10 + k))
    gram = torch.einsum("kbi,jbi->bkj", eps.double(), eps.double()) / n
    torch.testing.assert_close(gram, torch.eye(k, dtype=DTYPE).expand(b, k, k), rtol=0, atol=atol * n)
    second = torch.einsum("kbi,kbj->ij", eps.double(), eps.double()) / (k * b)
    assert (second - torch.eye(n, dtype=DTYPE)).abs().max() < 6 / math.sqrt(b)
    cross = torch.einsum("bi,bj->ij", eps[0].double(), eps[1].double()) / b
    assert cross.abs().max() < 6 / math.sqrt(b)
    for column in range(k):
        beta = (eps[column, :, 0].double() ** 2 / n).numpy()
        if n > 1:
            assert st.kstest(beta, st.beta(0.5, (n - 1) / 2).cdf).pvalue > 1e-3, column


@pytest.mark.parametrize("kind", E.NOISE_KINDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_noise_is_the_float32_draw_rounded_once(kind, dtype):
    half = E.sample_noise(64, (6,), 3, kind, dtype=dtype, generator=gen(1))
    full = E.sample_noise(64, (6,), 3, kind, dtype=torch.float32, generator=gen(1))
    assert half.dtype == dtype and torch.equal(half, full.to(dtype))


# ------------------------------------------------------------------------------------------------ conjugate gradients


def _spd(batch: int, n: int, condition: float, seed: int) -> torch.Tensor:
    g = gen(seed)
    q = torch.linalg.qr(torch.randn(batch, n, n, dtype=DTYPE, generator=g)).Q
    spectrum = torch.logspace(0, math.log10(condition), n, dtype=DTYPE)
    return q @ torch.diag_embed(spectrum.expand(batch, n)) @ q.mT


def test_conjugate_gradient_reads_the_host_only_every_check_every_iterations():
    """With check_every = 4 the convergence test runs at iterations 0, 4, 8, …: the iteration count is a multiple of 4
    (or the cap), the solution meets the tolerance, and it is the every-iteration solution continued further."""
    a, b = _spd(6, 12, 1e3, 0), torch.randn(6, 12, dtype=DTYPE, generator=gen(1))
    matvec = lambda v: torch.einsum("bij,bj->bi", a, v)  # noqa: E731
    exact = torch.linalg.solve(a, b)
    u1, it1, res1 = E.conjugate_gradient(matvec, b, tol=1e-8, check_every=1)
    u4, it4, res4 = E.conjugate_gradient(matvec, b, tol=1e-8, check_every=4)
    assert it4 % 4 == 0 and it1 <= it4 < it1 + 4 and res4.max() <= 1e-8 and res1.max() <= 1e-8
    rel = lambda u: ((u - exact).norm(dim=1) / exact.norm(dim=1)).max()  # noqa: E731
    assert rel(u4) <= rel(u1) * 1.01 + 1e-12 and rel(u1) < 1e-4


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_conjugate_gradient_in_half_precision_stops_at_the_format_s_resolution(dtype):
    """Half-precision products (mixed precision) cannot reach tol = 1e-6: the tolerance is raised to 8 ulp of the
    format and the iteration runs in float32, so CG stops early with a solution accurate to that resolution."""
    a = _spd(8, 6, 10.0, 2).float()
    b = torch.randn(8, 6, generator=gen(3))
    matvec = lambda v: torch.einsum("bij,bj->bi", a.to(dtype), v)  # noqa: E731  a half-precision product, like autocast's
    u, iterations, residual = E.conjugate_gradient(matvec, b.to(dtype), tol=1e-6)
    exact = torch.linalg.solve(a, b)
    assert u.dtype == dtype and iterations < 12
    assert residual.max() <= 8 * torch.finfo(dtype).eps
    assert ((u.float() - exact).norm(dim=1) / exact.norm(dim=1)).max() < 200 * torch.finfo(dtype).eps


# ------------------------------------------------------------------------------------------------ log-determinants


def test_cholesky_log_determinant_matches_qr_and_falls_back_on_ill_conditioned_rows():
    """½ log det(JᵀJ) by the Cholesky factor of the Gram matrix (accelerators) equals QR's, values and gradients; rows
    too ill-conditioned for the squared condition number (κ ≳ 1e6) or singular are recomputed by QR."""
    torch.manual_seed(0)
    jac = torch.randn(40, 8, 3, dtype=DTYPE)
    jac[0, :, 2] = jac[0, :, 1] * (1 + 1e-7)  # κ ~ 1e7: Cholesky succeeds with a wrong answer (−15 instead of −34)
    jac[1, :, 2] = jac[1, :, 1]  # singular
    jac[2, :, 2] = jac[2, :, 1] * (1 + 1e-4)  # κ ~ 1e4: Cholesky is fine
    jac.requires_grad_(True)
    qr = E._half_log_det_gram(jac, None, "qr")
    chol = E._half_log_det_gram(jac, None, "cholesky")
    torch.testing.assert_close(chol, qr, rtol=0, atol=1e-9)
    keep = torch.ones(40, dtype=torch.bool)
    keep[1] = False  # −inf: no gradient to compare
    grad_qr = torch.autograd.grad(qr[keep].sum(), jac)[0]
    grad_chol = torch.autograd.grad(chol[keep].sum(), jac)[0]
    torch.testing.assert_close(grad_chol[3:], grad_qr[3:], rtol=1e-9, atol=1e-9)
    assert E._half_log_det_gram(jac.detach(), None).equal(qr.detach())  # the CPU's default stays QR


# ------------------------------------------------------------------------------------------------ BatchNorm


@pytest.mark.parametrize("momentum", [0.1, None])
def test_composite_batchnorm_compiles_whole_and_matches_eager(momentum):
    """No graph break (fullgraph=True): no host read in the forward pass, the cumulative factor of momentum=None
    included; values, gradients and running statistics as eager."""
    for cls, shape in ((BatchNorm2d, (4, 3, 5, 5)), (BatchNorm1d, (6, 3))):
        eager, compiled = cls(3, momentum=momentum), cls(3, momentum=momentum)
        fn = torch.compile(compiled, fullgraph=True, backend="aot_eager")
        for step in range(2):
            x = torch.randn(shape, generator=gen(step)).requires_grad_(True)
            a, b = eager(x), fn(x)
            torch.testing.assert_close(b, a)
            torch.testing.assert_close(torch.autograd.grad(b.pow(3).sum(), x)[0], torch.autograd.grad(a.pow(3).sum(), x)[0])
        for key, value in eager.state_dict().items():
            torch.testing.assert_close(compiled.state_dict()[key], value, msg=key)


# ------------------------------------------------------------------------------------------------ mixed precision


@pytest.mark.parametrize("precision", ["16-true", "bf16-true"])
def test_half_precision_weights_are_refused_with_the_mixed_alternative(precision):
    from injflow.config import load_config

    with pytest.raises(ConfigError, match=r"^train.precision: .*use 16-mixed or bf16-mixed"):
        load_config(None, [f"train.precision={precision}"])


def test_bf16_mixed_training_runs_orthogonal_noise_and_conjugate_gradients(tmp_path):
    """bf16-mixed on the CPU (autocast: the nets' products in bfloat16): the rectangular-flow surrogate with K = 2
    orthogonal samples and CG trains with finite losses, and CG stops before its cap (float32 CG with the format's
    tolerance; before, bfloat16 CG never met tol = 1e-6 and always ran 2d iterations)."""
    import csv

    from injflow.config import load_config
    from injflow.train import fit_config

    cfg = load_config(None, ["train.precision=bf16-mixed", "method={name: rectangular_flow, beta: 20.0, n_hutchinson: 2}",
                             "data.name=linear_subspace", "data.options={n_train: 400, n_val: 100, n_test: 100}",
                             "model.latent_dim=2", "data.batch_size=100", "train.max_epochs=1", "train.samplers=[]",
                             "train.pictures=false", "train.progress_bar=false", "train.log_every_n_steps=1",
                             "model.options={n_blocks: 1, hidden_features: 16}", f"run.dir={tmp_path / 'run'}"])
    result = fit_config(cfg, verbose=False)
    assert result.completed and result.global_step == 4
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss_step")]
    assert len(rows) == 4 and all(math.isfinite(float(r["train/loss_step"])) for r in rows)
    assert all(float(r["train/cg_iterations_step"]) < 4 for r in rows)  # the cap is 2d = 4


# ------------------------------------------------------------------------------------------------ EMA


def test_ema_updater_equals_averaged_model_bit_for_bit_and_reads_the_counter_once(monkeypatch):
    """EMAUpdater makes AveragedModel's EMA update (copy first, then lerp; integer buffers rounded as torch does) with
    the counter read once instead of twice per step: the same weights, buffers and n_averaged, exactly."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from injflow.train.ema import EMAUpdater

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), BatchNorm1d(8), torch.nn.Linear(8, 2))
    ours = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    torch_s = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    update = EMAUpdater(ours, 0.9)
    reads = {"ours": 0, "torch": 0}
    counting = [None]
    for name in ("__bool__", "__int__", "item"):
        real = getattr(torch.Tensor, name)

        def spy(self, *args, real=real):
            if counting[0] is not None:
                reads[counting[0]] += 1
            return real(self, *args)

        monkeypatch.setattr(torch.Tensor, name, spy)
    for step in range(5):
        net(torch.randn(16, 3, generator=gen(step))).sum().backward()  # moves BatchNorm's statistics
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.1 * p.grad)
        counting[0] = "torch"
        torch_s.update_parameters(net)
        counting[0] = "ours"
        update(net)
        counting[0] = None
        for (k, a), b in zip(ours.state_dict().items(), torch_s.state_dict().values()):
            assert torch.equal(a, b), (step, k)
    assert reads == {"ours": 1, "torch": 10}  # host reads: one in all vs two per step
