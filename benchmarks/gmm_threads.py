"""The post-fit GMM with and without ``train.num_threads``'s bound on the BLAS/OpenMP pools (injflow.threads).

The GMM is fitted as a run fits it (:func:`injflow.distributions.fit_gmm`: 10 full-covariance components,
scikit-learn, seeded) on synthetic codes of a run's size, in interleaved rounds: with torch bounded to ``--threads``
but numpy/SciPy/scikit-learn's pools left at one thread per core (what ``train.num_threads`` did before), and with
every pool bounded (:func:`injflow.threads.limit_threads`). On a busy machine the unbounded pools oversubscribe the
cores. Record the load average with the numbers.

    .venv/bin/python benchmarks/gmm_threads.py --out docs/results/gmm_threads
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared harness beside this script
from harness import load_average, machine, paired_ratio, report, time_interleaved  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="train.num_threads")
    parser.add_argument("--points", type=int, default=10_000, help="encoded training points (a run's MAX_SAMPLER_POINTS)")
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    from threadpoolctl import threadpool_info

    from injflow.distributions import fit_gmm
    from injflow.threads import POOL_MODULES, limit_threads

    for name in POOL_MODULES:  # the same libraries loaded in both variants
        __import__(name)
    g = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(10, args.dim, generator=g)
    z = centres[torch.randint(0, 10, (args.points,), generator=g)] + torch.randn(args.points, args.dim, generator=g)
    torch.set_num_threads(args.threads)
    load_before = load_average()

    def torch_only():
        fit_gmm(z, n_components=10, seed=0)

    def bounded():
        with limit_threads(args.threads):
            fit_gmm(z, n_components=10, seed=0)

    timings = time_interleaved({"torch_only": torch_only, "all_pools": bounded}, rounds=args.rounds, warmup=1)
    result = {
        "points": args.points, "dim": args.dim, "components": 10, "threads": args.threads, "rounds": args.rounds,
        "seconds_median": {k: t.median for k, t in timings.items()},
        "seconds_all": {k: t.seconds for k, t in timings.items()},
        "paired_ratio_torch_only_over_all_pools": paired_ratio(timings["torch_only"], timings["all_pools"]),
        "pools_unbounded": [(i["user_api"], i["num_threads"]) for i in threadpool_info()],
        "machine": machine("cpu", args.threads), "load_average_before": load_before, "load_average_after": load_average(),
    }
    report(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
