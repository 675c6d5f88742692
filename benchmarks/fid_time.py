"""Time of one Fréchet distance (the FID's matrix part) for Inception-sized features: scipy ``sqrtm`` vs injflow.

Both compute d² = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁Σ₂)^{1/2} in float64 from the same two Gaussian fits:

- ``scipy-sqrtm``: the textbook route of FID code, ``scipy.linalg.sqrtm(Σ₁ @ Σ₂)`` (Schur method) and its trace;
- ``injflow``: ``injflow.metrics.frechet_distance`` (Cholesky factor, one symmetric eigenvalue problem);
- ``injflow-low-rank``: the same with fits of n < p points (500 and 700 here), which keep their centred points.

The fits are of correlated Gaussian points (n = 4000 > p, a full-rank covariance, unless stated), made once; the
timings are interleaved rounds after one warm-up call (``benchmarks/harness.py``). The relative difference of
the two routes is printed with them.

Usage:
    python benchmarks/fid_time.py                    # p = 2048, 1 and 2 threads, 3 rounds
    python benchmarks/fid_time.py --threads 1 --rounds 5 --no-sqrtm
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from threadpoolctl import threadpool_limits

from injflow.metrics import GaussianFit, frechet_distance, gaussian_fit

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared harness beside this script
from harness import load_average, machine, time_interleaved  # noqa: E402


def sqrtm_frechet(f1: GaussianFit, f2: GaussianFit) -> float:
    """The textbook formula: trace of scipy's principal square root of the non-symmetric product."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covmean = scipy.linalg.sqrtm(f1.cov @ f2.cov)
    diff = f1.mean - f2.mean
    return float(diff @ diff + np.trace(f1.cov) + np.trace(f2.cov) - 2 * np.trace(covmean).real)


def fits(p: int, n1: int, n2: int, seed: int = 0) -> tuple[GaussianFit, GaussianFit]:
    """Gaussian fits of two sets of correlated points (different covariances), float64."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(p, p)) / math.sqrt(p)
    a = rng.normal(size=(n1, p)) @ mix
    b = 1.2 * rng.normal(size=(n2, p)) @ (mix + 0.3 * rng.normal(size=(p, p)) / math.sqrt(p)) + 0.1
    return gaussian_fit(a), gaussian_fit(b)


def fid_times(p: int = 2048, threads: int = 1, rounds: int = 3, sqrtm: bool = True) -> dict[str, dict]:
    """Seconds per distance of each route at ``threads`` (torch and BLAS), and the routes' relative difference."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(threads):
            full, low = fits(p, 4000, 4000), fits(p, 500, 700, seed=1)
            calls = {"injflow": lambda: frechet_distance(*full), "injflow-low-rank": lambda: frechet_distance(*low)}
            if sqrtm:
                calls["scipy-sqrtm"] = lambda: sqrtm_frechet(*full)
            times = time_interleaved(calls, rounds=rounds, warmup=1)
            values = {"injflow": frechet_distance(*full), "injflow-low-rank": frechet_distance(*low)}
            if sqrtm:
                values["scipy-sqrtm"] = sqrtm_frechet(*full)
    finally:
        torch.set_num_threads(previous)
    out = {name: {"median_s": t.median, "iqr_s": t.iqr, "value": values[name]} for name, t in times.items()}
    if sqrtm:
        out["injflow"]["relative_difference_to_sqrtm"] = abs(values["injflow"] - values["scipy-sqrtm"]) / values["scipy-sqrtm"]
    return out


def markdown(results: dict[int, dict[str, dict]], p: int, rounds: int) -> str:
    lines = [f"Fréchet distance, p = {p}: median seconds per distance over {rounds} interleaved rounds "
             f"(IQR); {machine('cpu', 1).rsplit(', ', 2)[0]}; load average {load_average()} at the end.", "",
             "| route | " + " | ".join(f"{t} thread{'s' if t > 1 else ''}" for t in results) + " |",
             "|---|" + "---|" * len(results)]
    for name in next(iter(results.values())):
        cells = [f"{r[name]['median_s']:.2f} s ({r[name]['iqr_s']:.2f})" for r in results.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for t, r in results.items():
        if "relative_difference_to_sqrtm" in r["injflow"]:
            lines.append(f"\n{t} thread(s): injflow vs scipy-sqrtm relative difference "
                         f"{r['injflow']['relative_difference_to_sqrtm']:.1e}; speed-up "
                         f"{r['scipy-sqrtm']['median_s'] / r['injflow']['median_s']:.0f}×")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=int, default=2048, help="p (Inception pool-3: 2048)")
    parser.add_argument("--threads", default="1,2", help="comma-separated torch/BLAS thread counts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-sqrtm", action="store_true", help="skip the (slow) scipy sqrtm route")
    args = parser.parse_args(argv)
    results = {}
    for t in (int(v) for v in args.threads.split(",")):
        results[t] = fid_times(args.features, t, args.rounds, sqrtm=not args.no_sqrtm)
        print(f"{t} thread(s): " + ", ".join(f"{k} {v['median_s']:.2f} s" for k, v in results[t].items()), flush=True)
    print(markdown(results, args.features, args.rounds))


if __name__ == "__main__":
    main()
