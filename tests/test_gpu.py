"""Checks on a CUDA device (``-m gpu``; scripts/gpu_check.sh runs them). Never part of the default suite: the suite
hides the GPUs from ``train.accelerator=auto`` (tests/conftest.py).

What they check, each on small nets and a few steps (the whole file takes a few minutes on one GPU):

- no host synchronisation inside training steps, scoped to mid-epoch steps (torch's sync debug mode switched on
  between the ends of two mid-epoch steps): FIF on an MLP, with EMA, compiled, on a conv net with BatchNorm and
  orthogonal noise, conditional; and the batches are cut on the device (no host copy per step);
- CPU and GPU agree on the loss terms, the gradients and the exact NLL of an MLP and a conv net, with TF32 off;
- every method trains a few steps, and the trained model (samplers included) stays on the GPU after fit;
- mixed precision (16-mixed, bf16-mixed) with orthogonal noise and conjugate gradients;
- conditional models; fit, evaluate and sample agree with the CPU; ``load(map_location="cuda")`` moves everything;
  the Student-t prior's random streams; FID features on the GPU equal the CPU's (the Inception weights, or a stand-in
  network when they are not installed);
- DDP on two GPUs (NCCL) when there are two.

``INJFLOW_GPU_TESTS_DEVICE=cpu`` runs the same checks on the CPU, to debug them without a GPU (what only a GPU can show
is skipped there): ``INJFLOW_GPU_TESTS_DEVICE=cpu pytest -m gpu -o addopts="" tests/test_gpu.py``.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import warnings
from pathlib import Path

import pytest
import torch

from injflow.devices import full_float32
from injflow.model import InjectiveFlow

DEVICE = os.environ.get("INJFLOW_GPU_TESTS_DEVICE", "cuda")
ON_GPU = DEVICE.startswith("cuda")
ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(ON_GPU and not torch.cuda.is_available(), reason="needs a CUDA device")]
gpu_only = pytest.mark.skipif(not ON_GPU, reason="shows only on a GPU")

ENGINE = [f"train.accelerator={'gpu' if ON_GPU else 'cpu'}", "train.devices=1", "train.progress_bar=false",
          "train.pictures=false", "train.samplers=[gaussian]", "train.gmm_components=2"]
SMALL = ["data.options.n_train=2000", "data.options.n_val=200", "data.options.n_test=200", "data.batch_size=100",
         "model.options.n_blocks=2", "model.options.hidden_features=64"]
LINEAR = ["data.name=linear_subspace", "data.options={n_train: 2000, n_val: 200, n_test: 200}", "model.latent_dim=2",
          "data.batch_size=100"]


def read_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def on_device(flow: InjectiveFlow) -> bool:
    tensors = [*flow.parameters(), *flow.buffers()]
    return bool(tensors) and all(t.device.type == torch.device(DEVICE).type for t in tensors)


# ------------------------------------------------------------------------------------------------ host syncs


class SyncWindow:
    """torch's sync debug mode ("warn") between the end of mid-epoch step ``start`` and the end of step ``stop`` of the
    first epoch; records the synchronisation warnings raised there and the device of the batches cut in it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, start: int = 4, stop: int = 14) -> None:
        from injflow.train.module import FlowModule

        self.start, self.stop = start, stop
        self.caught: list[warnings.WarningMessage] = []
        self.marks: list[int] = []
        self.batch_devices: set[str] = set()
        self.data_device: str | None = None
        end, begin = FlowModule.on_train_batch_end, FlowModule.on_train_batch_start
        window = self

        def on_train_batch_start(module, batch, batch_idx):
            if module.current_epoch == 0 and window.start < batch_idx <= window.stop:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                window.batch_devices.add(x.device.type)
            return begin(module, batch, batch_idx)

        def on_train_batch_end(module, outputs, batch, batch_idx):
            end(module, outputs, batch, batch_idx)
            if module.current_epoch or not ON_GPU:
                return
            if batch_idx == window.start:
                window.marks.append(len(window.caught))
                torch.cuda.set_sync_debug_mode("warn")
                window.data_device = module.trainer.datamodule.train_data.device.type
            elif batch_idx == window.stop:
                torch.cuda.set_sync_debug_mode("default")
                window.marks.append(len(window.caught))

        monkeypatch.setattr(FlowModule, "on_train_batch_start", on_train_batch_start)
        monkeypatch.setattr(FlowModule, "on_train_batch_end", on_train_batch_end)

    def __enter__(self) -> SyncWindow:
        self._catch = warnings.catch_warnings(record=True)
        self.caught = self._catch.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc: object) -> None:
        if ON_GPU:
            torch.cuda.set_sync_debug_mode("default")
        self._catch.__exit__(*exc)

    def syncs(self) -> list[str]:
        assert len(self.marks) == 2, "the window did not open and close inside the first epoch"
        inside = self.caught[self.marks[0]:self.marks[1]]
        return [f"{w.filename}:{w.lineno}: {str(w.message)[:120]}" for w in inside if "synchroniz" in str(w.message).lower()]


SYNC_FREE = [*ENGINE, *SMALL, "train.max_epochs=1", "train.log_every_n_steps=1000",
             "train.check_finite_every_n_steps=1000", "optim.scheduler.name=constant", "train.samplers=[]"]


@pytest.mark.parametrize("variant", ["mlp", "ema", "compiled"])
def test_training_steps_do_not_synchronise(variant, tmp_path, monkeypatch):
    """Ten mid-epoch FIF steps (data, loss, backward, Adam, the engine's hooks) make no host synchronisation, and the
    batches are cut on the device. Step logging and the non-finite read are spaced out beyond the window here; they
    are the only reads the engine makes (every log_every_n_steps and check_finite_every_n_steps steps)."""
    from injflow.config import load_config
    from injflow.train import fit_config

    extra = {"mlp": [], "ema": ["train.ema_decay=0.99"], "compiled": ["train.compile=true"]}[variant]
    cfg = load_config(None, [*SYNC_FREE, *extra, f"run.dir={tmp_path / 'run'}"])
    with SyncWindow(monkeypatch) as window:
        result = fit_config(cfg, verbose=False)
    assert result.global_step == 20
    if ON_GPU:
        assert window.syncs() == []
        assert window.data_device == "cuda" and window.batch_devices == {"cuda"}


@pytest.mark.parametrize("variant", ["convnet-k2", "conditional"])
def test_training_steps_do_not_synchronise_on_conv_nets_and_conditional_models(variant, tmp_path, monkeypatch):
    """The same on the Pythae ConvNet (composite BatchNorm; K = 2 orthogonal noise by Gram-Schmidt) and on a
    conditional MLP (labels cut with the batch)."""
    import injflow.api as inj
    from injflow.config import load_config
    from injflow.methods import FIF
    from injflow.nets.conditional import build_conditional_autoencoder

    torch.manual_seed(0)
    if variant == "convnet-k2":
        cfg = load_config(ROOT / "configs/small/fif-pythae-convnet-mnist.yaml")
        flow = InjectiveFlow.from_config(cfg, data_shape=(1, 28, 28), data_kind="image", image_shape=(1, 28, 28))
        x, labels = torch.rand(2000, 1, 28, 28), None
    else:
        f, g = build_conditional_autoencoder("mlp", data_shape=(4,), latent_dim=2, num_classes=3, hidden_features=(64,))
        flow = InjectiveFlow(f, g, latent_dim=2, data_shape=(4,), num_classes=3)
        x, labels = torch.randn(2000, 4), (torch.randint(0, 3, (2000,)), None, None)
    overrides = [o for o in SYNC_FREE if not o.startswith(("data.options", "model."))]
    with SyncWindow(monkeypatch) as window:
        result = inj.train(flow, x, method=FIF(beta=10.0, n_hutchinson=2), labels=labels, overrides=overrides,
                           run_dir=tmp_path / "run", verbose=False)
    assert result.global_step == 20
    if ON_GPU:
        assert window.syncs() == []
        assert window.data_device == "cuda" and window.batch_devices == {"cuda"}


# ------------------------------------------------------------------------------------------------ CPU = GPU


@pytest.mark.parametrize("net", ["mlp", "convnet"])
def test_cpu_and_gpu_agree_on_losses_gradients_and_exact_nll(net, monkeypatch):
    """The same weights, batch and Hutchinson noise (drawn on the CPU) give the same FIF terms, gradients (BatchNorm in
    training mode) and exact NLL (eval mode, full Jacobians) on both devices, with TF32 off."""
    from injflow import estimators
    from injflow.config import load_config

    if net == "mlp":
        cfg = load_config(None, [*LINEAR, "method.n_hutchinson=2"])
        shape, kind = (4,), "tabular"
    else:
        cfg = load_config(ROOT / "configs/small/fif-pythae-convnet-mnist.yaml", ["method.n_hutchinson=2"])
        shape, kind = (1, 28, 28), "image"
    torch.manual_seed(0)
    cpu = InjectiveFlow.from_config(cfg, data_shape=shape, data_kind=kind, image_shape=shape if kind == "image" else None)
    gpu = copy.deepcopy(cpu).to(DEVICE)
    method = cfg.method
    x = torch.rand(32, *shape, generator=torch.Generator().manual_seed(1))
    real = estimators.sample_noise

    def cpu_noise(batch_size, shape, n_samples=1, kind="orthogonal", *, dtype=None, device=None, generator=None):
        draw = real(batch_size, shape, n_samples, kind, dtype=dtype, generator=torch.Generator().manual_seed(7))
        return draw.to(device)

    monkeypatch.setattr(estimators, "sample_noise", cpu_noise)
    out = {}
    with full_float32():
        for name, flow in (("cpu", cpu), ("gpu", gpu)):
            terms = method.loss(x.to(flow.device), 10, flow)
            terms["loss"].mean().backward()
            grads = {n: p.grad.detach().cpu() for n, p in flow.named_parameters()}
            stats = {k: v.detach().cpu() for k, v in flow.state_dict().items() if "running" in k}
            nll = flow.log_prob(x[:8]).cpu()
            out[name] = ({k: v.detach().cpu() for k, v in terms.items()}, grads, stats, nll)
    (t_cpu, g_cpu, s_cpu, nll_cpu), (t_gpu, g_gpu, s_gpu, nll_gpu) = out["cpu"], out["gpu"]
    for k in ("loss", "nll", "reconstruction", "surrogate"):
        torch.testing.assert_close(t_gpu[k], t_cpu[k], rtol=1e-4, atol=1e-4, msg=k)
    for k, g in g_cpu.items():
        torch.testing.assert_close(g_gpu[k], g, rtol=1e-3, atol=1e-4 * (1 + g.abs().max().item()), msg=k)
    for k, v in s_cpu.items():
        torch.testing.assert_close(s_gpu[k], v, rtol=1e-4, atol=1e-5, msg=k)
    torch.testing.assert_close(nll_gpu, nll_cpu, rtol=1e-4, atol=1e-3)


# ------------------------------------------------------------------------------------------------ every method


def _method_overrides(name: str) -> list[str]:
    from injflow.methods import method_class

    architecture = {"rnf": "injective_coupling", "dnf": "injective_coupling", "trumpet": "trumpet"}.get(name, "mlp")
    square = ["model.latent_dim=4"] if getattr(method_class(name), "full_dimensional", False) else []  # FFF: d = D
    return [f"method={{name: {name}}}", *LINEAR, "data.options={n_train: 400, n_val: 100, n_test: 100}",
            f"model.architecture={architecture}", "model.options={}", "train.max_epochs=1", *square]


def _method_names() -> list[str]:
    from injflow.methods import METHODS

    return sorted(n for n in METHODS if not n.startswith("probe_"))


@pytest.mark.parametrize("name", _method_names())
def test_every_method_trains_on_the_gpu_and_the_model_stays_there(name, tmp_path):
    """Four steps of each method; after fit the model, its latent and its post-fit samplers are on the training device
    (Lightning hands the module back on the CPU), and the losses are finite."""
    from injflow.config import load_config
    from injflow.train import fit_config

    result = fit_config(load_config(None, [*ENGINE, *_method_overrides(name), f"run.dir={tmp_path}"]), verbose=False)
    assert result.completed and result.global_step == 4
    assert on_device(result.flow) and "gaussian" in result.flow.samplers
    losses = [float(r["train/loss_epoch"]) for r in read_rows(tmp_path) if r.get("train/loss_epoch")]
    assert losses and all(math.isfinite(v) for v in losses)


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
@pytest.mark.parametrize("name", ["fif", "fff", "rectangular_flow"])
def test_mixed_precision_trains_with_orthogonal_noise_and_conjugate_gradients(name, precision, tmp_path):
    """Half-precision products (autocast) with K = 2 orthogonal samples (drawn in float32) and, for the rectangular flow,
    conjugate gradients in float32 with the format's tolerance: finite losses, CG below its cap of 2d iterations."""
    from injflow.config import load_config
    from injflow.train import fit_config

    if precision == "16-mixed" and not ON_GPU:
        pytest.skip("16-mixed is a GPU precision")
    overrides = [*ENGINE, *LINEAR, f"method={{name: {name}, beta: 10.0, n_hutchinson: 2}}", "train.max_epochs=1",
                 f"train.precision={precision}", "train.log_every_n_steps=1", f"run.dir={tmp_path}",
                 *(["model.latent_dim=4"] if name == "fff" else [])]  # FFF is square (d = D)
    result = fit_config(load_config(None, overrides), verbose=False)
    assert result.completed
    rows = [r for r in read_rows(tmp_path) if r.get("train/loss_step")]
    assert rows and all(math.isfinite(float(r["train/loss_step"])) for r in rows)
    if name == "rectangular_flow":
        assert all(float(r["train/cg_iterations_step"]) < 4 for r in rows)


# ------------------------------------------------------------------------------------------------ models on the GPU


def test_fit_evaluate_and_sample_on_the_gpu_agree_with_the_cpu(tmp_path):
    from injflow.cli import main

    run = tmp_path / "run"
    assert main(["fit", "--set", *ENGINE, *SMALL, "train.max_epochs=2", f"run.dir={run}"]) == 0
    metrics = {}
    for device in ("cpu", DEVICE):
        with full_float32():
            assert main(["evaluate", str(run), "--device", device, "--no-progress"]) == 0
        metrics[device] = json.loads((run / "metrics.json").read_text())
    assert metrics[DEVICE]["reconstruction_error"] == pytest.approx(metrics["cpu"]["reconstruction_error"], rel=1e-4)
    assert metrics[DEVICE]["nll"] == pytest.approx(metrics["cpu"]["nll"], rel=1e-3)
    flow = InjectiveFlow.load(run / "model.pt", map_location=DEVICE)
    assert on_device(flow)
    a = flow.sample(50, seed=3, sampler="gaussian").cpu()
    b = InjectiveFlow.load(run / "model.pt").sample(50, seed=3, sampler="gaussian")
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # the latent noise is drawn on the CPU: the same samples


def test_load_onto_the_gpu_moves_the_whole_model(tmp_path):
    """map_location puts every tensor of the model there: nets, BatchNorm buffers, latent, post-fit samplers."""
    from injflow.config import load_config

    cfg = load_config(ROOT / "configs/small/fif-pythae-convnet-mnist.yaml", ["model.latent={name: student_t}"])
    flow = InjectiveFlow.from_config(cfg, data_shape=(1, 28, 28), data_kind="image", image_shape=(1, 28, 28))
    flow.fit_samplers(torch.rand(64, 1, 28, 28), names=["gaussian", "gmm"], n_components=2, seed=0)
    flow.save(tmp_path / "model.pt")
    for loaded in (InjectiveFlow.load(tmp_path / "model.pt", map_location=DEVICE),
                   InjectiveFlow.load(tmp_path / "model.pt", map_location=torch.device(DEVICE))):
        assert on_device(loaded) and set(loaded.samplers) == {"gaussian", "gmm"}
        for sampler in ("prior", "gaussian", "gmm"):
            assert loaded.sample(4, sampler=sampler, seed=0).device.type == torch.device(DEVICE).type


def test_student_t_on_the_gpu_draws_new_factors_and_leaves_the_device_stream_alone():
    from injflow import distributions
    from injflow.distributions import StudentT

    prior = StudentT(3, df=4.0).to(DEVICE)
    torch.manual_seed(0)
    a, b = prior.sample(256), prior.sample(256)
    assert a.device.type == torch.device(DEVICE).type and not torch.equal(a, b)
    # The χ² factors alone (eps fixed): before, they repeated on every call on a GPU.
    ones = lambda n, dim, ref, generator: torch.ones(n, dim, dtype=ref.dtype, device=ref.device)  # noqa: E731
    real = distributions._randn
    distributions._randn = ones
    try:
        assert not torch.equal(prior.sample(64), prior.sample(64))
    finally:
        distributions._randn = real
    if ON_GPU:
        state = torch.cuda.get_rng_state()
        c = prior.sample(16, generator=torch.Generator().manual_seed(1))
        assert torch.equal(torch.cuda.get_rng_state(), state)  # no reseeded CUDA stream
        assert torch.equal(c, prior.sample(16, generator=torch.Generator().manual_seed(1)))


def test_fid_features_on_the_gpu_equal_the_cpu_s_and_key_another_cache_entry(tmp_path):
    """The extractor on the GPU (TF32 off inside) gives the CPU's features up to round-off, and its identity (the cache
    key) names the device. With the Inception weights when installed, else with a stand-in network of the same
    interface (the device path is the same)."""
    from injflow.metrics.fid import ReferenceStatsCache, fid
    from injflow.metrics.inception import InceptionFeatureExtractor, InceptionWeightsMissingError

    try:
        cpu = InceptionFeatureExtractor()
        weights, verify = None, True
    except InceptionWeightsMissingError:
        stand_in = torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(3, 16, 5, stride=4), torch.nn.ReLU(),
                                                        torch.nn.Conv2d(16, 32, 3, stride=2), torch.nn.AdaptiveAvgPool2d(1),
                                                        torch.nn.Flatten()))
        weights, verify = tmp_path / "stand_in.pt", False
        torch.jit.save(stand_in, str(weights))
        cpu = InceptionFeatureExtractor(weights, verify=verify)
    gpu = InceptionFeatureExtractor(weights, device=DEVICE, verify=verify)
    images = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    a, b = cpu(images), gpu(images)
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * (1 + a.abs().max().item()))
    if ON_GPU:
        assert gpu.identity == cpu.identity + ";device=cuda"
        assert ReferenceStatsCache.key(images, gpu) != ReferenceStatsCache.key(images, cpu)
    reference = torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    samples = torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    assert fid(samples, reference, gpu, batch_size=20) == pytest.approx(fid(samples, reference, cpu, batch_size=20),
                                                                         rel=1e-3, abs=1e-3)


# ------------------------------------------------------------------------------------------------ several GPUs


@gpu_only
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_ddp_on_two_gpus(tmp_path, monkeypatch):
    """tests/test_ddp.py's first launch on two GPUs (NCCL): collective checkpoint decisions and non-finite checks, own
    noise per process, and the single-process gradient."""
    import test_ddp

    code, out = test_ddp.launch(tmp_path, ["--skew-rank1", "100", "--nan-grad-at", "9"],
                                ["method={name: probe_fif, beta: 20.0}", "data.name=linear_subspace", "model.latent_dim=2",
                                 "data.options={n_train: 1000, n_val: 200, n_test: 200}", "train.max_epochs=2",
                                 "train.checkpoint_interval=1", "train.accelerator=gpu"], timeout=300)
    assert code == 3 and "connection closed" not in out.lower(), out[-3000:]
    r0, r1 = test_ddp.records(tmp_path)
    assert all(r["error"][0] == "NonFiniteStateError" for r in (r0, r1)), (r0["error"], r1["error"])
    assert r0["writes"] == r1["writes"] and (0, 5) in r0["writes"]
    assert not all(torch.equal(a, b) for s in r0["noise"] for a, b in zip(r0["noise"][s], r1["noise"][s]))
    single = test_ddp.single_process_gradients(tmp_path / "run", [r0, r1], monkeypatch)
    for k, g in single.items():
        torch.testing.assert_close(r0["step0"]["grads"][k], g, rtol=1e-3, atol=1e-4, msg=k)
