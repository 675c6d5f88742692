"""Every ratio of the performance targets from one process: FIF step / AE step, K Hutchinson samples, FID distance.

For each torch thread count (1 and 2 by default), in this order:

1. FIF (``injflow.estimators.fif_loss``, default: mixed AD mode, latent trace, off-manifold, orthogonal noise)
   step time over an autoencoder step on the same nets and batch, K = 1, 2, 4, on the tabular MLP (FIF App. E.2,
   D = 43, d = 21, batch 512) and K = 1 on the MNIST Pythae ConvNet with composite BatchNorm (d = 16, batch 128);
   ``benchmarks/step_time.py``'s nets, steps and interleaved timing;
2. one Fréchet distance for p = 2048 features, ``scipy.linalg.sqrtm`` vs ``injflow.metrics.frechet_distance``
   (``benchmarks/fid_time.py``).

The step ratios are *paired*: FIF time / AE time within each round, median and IQR over rounds
(``benchmarks/harness.py``). Not here: the reference implementation's (vislearn/FFF) loss, which is not on PyPI,
and the engine's overhead over a plain loop (the training engine's own benchmark).

Usage:
    python benchmarks/perf_summary.py                          # ~15 min on 2 CPU cores
    python benchmarks/perf_summary.py --baseline-rev c779632   # and the estimators before issue 13, interleaved
    python benchmarks/perf_summary.py --threads 1 --conv-rounds 4 --no-sqrtm --markdown out.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared harness and the two benchmarks beside this
import fid_time  # noqa: E402
import step_time  # noqa: E402
from harness import load_average, machine  # noqa: E402

MLP_VARIANTS = ["ae", "fif-mixed-k1", "fif-mixed-k2", "fif-mixed-k4"]
CONV_VARIANTS = ["ae", "fif-mixed-k1"]


def step_ratios(threads: int, mlp_rounds: int, conv_rounds: int, conv_k: list[int], baseline_rev: str | None
                ) -> dict[str, dict]:
    torch.set_num_threads(threads)
    out = {}
    for net, variants, rounds in (("mlp", MLP_VARIANTS, mlp_rounds),
                                  ("conv", CONV_VARIANTS + [f"fif-mixed-k{k}" for k in conv_k], conv_rounds)):
        if rounds <= 0:
            continue
        if baseline_rev:  # the same FIF steps with the estimators of an earlier revision, interleaved with these
            variants = variants + [f"{v}@{baseline_rev}" for v in variants if v != "ae" and (net == "mlp" or v.endswith("k1"))]
        (bench,) = step_time.make_benches([net], torch.device("cpu"))
        results = step_time.run(bench, variants, rounds, warmup=2 if net == "mlp" else 1, device=torch.device("cpu"),
                                measure_saved=False, baseline_rev=baseline_rev)
        out[net] = {"description": bench.description, "rounds": rounds, "load_average": load_average(), **results}
        for name, r in results.items():
            q1, q3 = r["paired_ratio_iqr"]
            print(f"  [{threads} thread(s)] {net:4s} {name:14s} {r['median_ms']:9.1f} ms  {r['paired_ratio']:.2f}x "
                  f"(IQR {q1:.2f}-{q3:.2f})", flush=True)
    return out


def markdown(steps: dict[int, dict], fids: dict[int, dict], p: int, fid_rounds: int) -> str:
    threads = list(steps)
    lines = [f"Machine: {machine('cpu', 1).rsplit(', ', 2)[0]}, torch {torch.__version__}.", "",
             "**Step time over an AE step** (paired ratio, median over rounds, IQR in brackets; AE step in ms):", "",
             "| net | variant | " + " | ".join(f"{t} thread{'s' if t > 1 else ''}" for t in threads) + " |",
             "|---|---|" + "---|" * len(threads)]
    nets = [net for net in ("mlp", "conv") if net in steps[threads[0]]]
    for net in nets:
        for name in steps[threads[0]][net]:
            if name in ("description", "rounds", "load_average"):
                continue
            cells = []
            for t in threads:
                r = steps[t][net][name]
                q1, q3 = r["paired_ratio_iqr"]
                cells.append(f"{r['median_ms']:.0f} ms" if name == "ae" else f"{r['paired_ratio']:.2f} ({q1:.2f}–{q3:.2f})")
            lines.append(f"| {net} | {name} | " + " | ".join(cells) + " |")
    lines.append("")
    for net in nets:
        for t in threads:
            s = steps[t][net]
            lines.append(f"- {net}, {t} thread(s): {s['description']}, {s['rounds']} interleaved rounds, load average "
                         f"{s['load_average']} after them.")
    if fids:
        lines += ["", fid_time.markdown(fids, p, fid_rounds)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    parser.add_argument("--mlp-rounds", type=int, default=30)
    parser.add_argument("--conv-rounds", type=int, default=8, help="0 skips the conv net")
    parser.add_argument("--conv-k", default="", help="extra K for the conv net, e.g. 2,4 (~5 s per K per step)")
    parser.add_argument("--fid-features", type=int, default=2048)
    parser.add_argument("--fid-rounds", type=int, default=3, help="0 skips the FID timing")
    parser.add_argument("--no-sqrtm", action="store_true", help="skip scipy's sqrtm (15-100 s per call on 2 cores)")
    parser.add_argument("--baseline-rev", help="also time the FIF steps of injflow/estimators.py at this git revision")
    parser.add_argument("--markdown", help="also write the tables here")
    parser.add_argument("--json", help="write raw results here")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    threads = [int(t) for t in args.threads.split(",")]
    conv_k = [int(k) for k in args.conv_k.split(",") if k]
    steps, fids = {}, {}
    for t in threads:
        print(f"== step times, {t} torch thread(s)", flush=True)
        steps[t] = step_ratios(t, args.mlp_rounds, args.conv_rounds, conv_k, args.baseline_rev)
    if args.fid_rounds > 0:
        for t in threads:
            print(f"== Fréchet distance, p = {args.fid_features}, {t} thread(s)", flush=True)
            fids[t] = fid_time.fid_times(args.fid_features, t, args.fid_rounds, sqrtm=not args.no_sqrtm)
    table = markdown(steps, fids, args.fid_features, args.fid_rounds)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine("cpu", 1), "steps": steps, "fid": fids}, indent=2,
                                              default=str))


if __name__ == "__main__":
    main()
