"""How our FID differs from TF-FID, and that our Fréchet distance equals the peers' on the same features.

Both papers compute FID with TensorFlow's Inception (FIF App. E.5: "Tensorflow for FID score evaluation"; Kumar via
Ghosh et al.'s TF code): TF-FID (Heusel et al.'s TTUR code) receives **uint8** images, resizes them inside the graph
with TF1's ``resize_bilinear`` (no half-pixel centres) and maps them with (x − 128)/128 to [−1, 127/128]. injflow's
FID (``injflow.metrics.InceptionFeatureExtractor``, the same TF weights converted to TorchScript) takes **float**
images, resizes with torch's bilinear (half-pixel centres, no antialias) and maps to [−1, 1]. This script measures
what each difference does to the number, one at a time and all together, on real MNIST images:

* ``real``: n training images against n test images (both 8-bit data);
* ``noisy``: the same training images plus Gaussian noise σ = 0.1, clamped — float-valued like a model's output,
  so the uint8 quantisation changes them.

Variants: ``ours`` (float, torch bilinear, [−1, 1]); ``+uint8`` (quantised to 8 bits first); ``+tf-range``
(255u/128 − 1); ``+tf-resize`` (TF1 resize_bilinear); ``tf-fid`` (all three: ``TF_FID_PREPROCESSING``). On 8-bit
data the quantisation is the identity (checked, max |Δ| recorded), so ``+uint8`` is computed for ``noisy`` only.

**Peer check.** On the ``ours`` features, the Fréchet distance of ``injflow.metrics.frechet_distance`` is compared
with pytorch-fid's ``calculate_frechet_distance`` and torch-fidelity's ``fid_statistics_to_metric``
(``injflow.metrics.peers``: their functions compiled from their installed source) — same features, same fits.

Scales: ``smoke`` — scikit-learn digits, a fixed random conv net on 32 × 32 inputs as a stand-in for Inception
(the same pre-processing variants), n = 100; ``cpu`` — MNIST, the offline Inception (channels-last), n = ``--n``
(default 300; Inception costs ~0.15–0.25 s per image on one core here, a 2048-d Fréchet distance ~30 s);
``paper`` — n = 10k (the papers' n), meant for a GPU (``--device cuda``).
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save_figure, start, write_table  # noqa: E402

NAME = "fid_protocol"
VARIANTS: dict[str, dict[str, Any]] = {
    "ours": {},
    "+uint8": {"quantize": True},
    "+tf-range": {"input_range": "tf"},
    "+tf-resize": {"resize": "tf_bilinear"},
    "tf-fid": {"resize": "tf_bilinear", "quantize": True, "input_range": "tf"},
}


class StandInFeatures(nn.Module):
    """Smoke-scale stand-in for Inception: the same pre-processing (at 32 × 32), then a fixed random conv net."""

    def __init__(self, **preprocessing: Any):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.conv1, self.conv2 = nn.Conv2d(3, 16, 3, 2), nn.Conv2d(16, 32, 3, 2)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=gen) * 0.3
        self.preprocessing = preprocessing

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        from injflow.metrics import preprocess_images

        x = preprocess_images(images, size=32, **self.preprocessing)
        return torch.tanh(self.conv2(torch.tanh(self.conv1(x)))).mean(dim=(2, 3))


def extractor(exp: Any, **preprocessing: Any) -> nn.Module:
    if exp.scale == "smoke":
        return StandInFeatures(**preprocessing)
    from injflow.metrics import InceptionFeatureExtractor

    return InceptionFeatureExtractor(device=exp.args.device, channels_last=exp.args.device == "cpu", **preprocessing)


def image_sets(exp: Any, n: int) -> dict[str, Tensor]:
    from injflow.data import load_dataset

    data = load_dataset("digits" if exp.scale == "smoke" else "mnist", seed=0,
                        **({"n_val": 100} if exp.scale == "smoke" else {}))
    if min(data.train.shape[0], data.test.shape[0]) < n:
        raise SystemExit(f"--n {n} is larger than the splits ({data.train.shape[0]} train, {data.test.shape[0]} test)")
    real = data.train[:n]
    noise = torch.randn(real.shape, generator=torch.Generator().manual_seed(1)) * 0.1
    return {"reference": data.test[:n], "real": real, "noisy": (real + noise).clamp(0, 1)}


def main(argv: list[str] | None = None) -> None:
    exp = start(NAME, __doc__, argv, extra_args=[
        (("--n",), {"type": int, "default": None, "help": "images per set (default: smoke 100, cpu 300, paper 10000)"}),
    ])
    from injflow.metrics import extract_features, frechet_distance, gaussian_fit
    from injflow.metrics.peers import peer_distances

    if exp.args.threads is None and exp.scale != "paper":
        torch.set_num_threads(1)  # the shared 2-core machine: one thread per job (docs/results.md)
    n = exp.args.n or exp.pick(100, 300, 10_000)
    sets = image_sets(exp, n)
    metric = exp.pick("stand-in conv features (32x32)", "FID (Inception pool-3)", "FID (Inception pool-3)")
    exp.log(f"{n} images per set; {metric}")

    fits: dict[tuple[str, str], Any] = {}
    timing = {"images": 0, "feature_s": 0.0, "frechet_s": 0.0, "frechet_calls": 0}
    quant_identity_max = 0.0
    for variant, options in VARIANTS.items():
        ext = extractor(exp, **options)
        for name, images in sets.items():
            if variant == "+uint8" and name != "noisy":
                continue  # the identity on 8-bit data (checked below)
            t0 = time.perf_counter()
            feats = extract_features(images, ext, batch_size=50)
            timing["feature_s"] += time.perf_counter() - t0
            timing["images"] += images.shape[0]
            fits[variant, name] = gaussian_fit(feats, name=f"{variant}/{name}")
        exp.log(f"features of variant {variant} done ({timing['feature_s']:.0f} s for {timing['images']} images)")
    from injflow.metrics import preprocess_images

    for name in ("reference", "real"):
        x = sets[name][:20]
        quant_identity_max = max(quant_identity_max, float(
            (preprocess_images(x, quantize=True) - preprocess_images(x)).abs().max()))

    def fd(a, b) -> float:
        t0 = time.perf_counter()
        value = frechet_distance(a, b)
        timing["frechet_s"] += time.perf_counter() - t0
        timing["frechet_calls"] += 1
        return value

    scores: dict[tuple[str, str], float] = {}
    for variant in VARIANTS:
        for name in ("real", "noisy"):
            ref = fits["ours" if variant == "+uint8" else variant, "reference"]  # +uint8: the reference is 8-bit
            if (variant, name) in fits:
                scores[variant, name] = fd(fits[variant, name], ref)
    scores["+uint8", "real"] = scores["ours", "real"]
    exp.log("Fréchet distances: " + ", ".join(f"{v}/{s} {x:.2f}" for (v, s), x in scores.items()))

    rows = []
    for variant, options in VARIANTS.items():
        row: dict[str, Any] = {"variant": variant, "preprocessing": _describe(options), "n": n}
        for name in ("real", "noisy"):
            value, base = scores[variant, name], scores["ours", name]
            row[f"{name}_fid"] = round(value, 3)
            row[f"{name}_delta"] = round(value - base, 3)
            row[f"{name}_delta_pct"] = round(100 * (value - base) / base, 2)
        rows.append(row)
    write_table(rows, exp.out / "tf_fid_differences")

    peer_rows = []
    found = peer_distances()
    for name in ("real", "noisy"):
        a, b = fits["ours", name], fits["ours", "reference"]
        ours = scores["ours", name]
        row = {"set": name, "n": n, "ours": ours}
        for peer in ("pytorch-fid", "torch-fidelity"):
            if peer in found:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # pytorch-fid's sqrtm(disp=...) is deprecated in scipy
                    t0 = time.perf_counter()
                    theirs = float(found[peer](a.mean, a.cov, b.mean, b.cov))
                    timing["frechet_s"] += time.perf_counter() - t0
                row[peer] = theirs
                row[f"{peer}_rel_diff"] = abs(ours - theirs) / abs(theirs)
            else:
                row[peer] = row[f"{peer}_rel_diff"] = None
        peer_rows.append(row)
    write_table(peer_rows, exp.out / "peer_frechet")
    exp.log("peers: " + "; ".join(f"{r['set']}: ours {r['ours']:.6f}, pytorch-fid {r['pytorch-fid']}, "
                                  f"torch-fidelity {r['torch-fidelity']}" for r in peer_rows))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    x = np.arange(len(rows))
    for i, name in enumerate(("real", "noisy")):
        ax.bar(x + (i - 0.5) * 0.38, [r[f"{name}_fid"] for r in rows], 0.38,
               label={"real": "MNIST train vs test", "noisy": "train + N(0, 0.1²) noise vs test"}[name]
               if exp.scale != "smoke" else name)
    ax.set_xticks(x, [r["variant"] for r in rows])
    ax.set_ylabel(metric.split(" (")[0])
    ax.legend(fontsize=8)
    ax.set_title("FID under each pre-processing difference from TF-FID", fontsize=9)
    fig.tight_layout()
    save_figure(fig, exp.out / "tf_fid_differences",
                note=f"{exp.scale} scale: n = {n} images per set (papers: 10k); {metric}; one draw")
    exp.finish(n=n, metric=metric, scores={f"{v}/{s}": x for (v, s), x in scores.items()},
               peers=peer_rows, quantize_identity_on_8bit_max_abs=quant_identity_max,
               feature_seconds_per_100_images=round(100 * timing["feature_s"] / max(timing["images"], 1), 2),
               frechet_seconds=round(timing["frechet_s"], 1), frechet_calls=timing["frechet_calls"])


def _describe(options: dict[str, Any]) -> str:
    resize = options.get("resize", "bilinear")
    return (f"{'uint8' if options.get('quantize') else 'float'}, "
            f"{'TF1 resize_bilinear' if resize == 'tf_bilinear' else 'torch bilinear (half-pixel)'}, "
            f"{'[-1, 127/128]' if options.get('input_range') == 'tf' else '[-1, 1]'}")


if __name__ == "__main__":
    main()
