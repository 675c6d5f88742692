"""The ``injflow`` command line: ``fit``, ``sample`` and ``evaluate`` over YAML configs and run folders.

Examples::

    injflow fit                                   # the embedded default: FIF on the noisy sinusoid
    injflow fit configs/default.yaml --set method.beta=40 --set train.max_epochs=10
    injflow fit --resume runs/fif-sinusoid-20240101-120000
    injflow sample runs/fif-sinusoid-20240101-120000 --n 1000 --sampler gmm --temperature 0.8
    injflow evaluate runs/fif-sinusoid-20240101-120000
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

__all__ = ["main", "evaluate_run", "sample_run"]


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


def evaluate_run(run: str | Path, *, split: str = "test", max_samples: int | None = None, exact_nll_max_dim: int = 64) -> dict[str, Any]:
    """Writes ``<run>/metrics.json``: reconstruction error, exact on-manifold NLL (if d ≤ ``exact_nll_max_dim``), latent stats.

    The NLL is :math:`-\\log p_Z(f(x)) + \\tfrac12\\log\\det(g'^\\top g')` at :math:`z = f(x)`, the density of the
    projection :math:`\\hat x` on the learned manifold; read it with the reconstruction error.
    """
    import torch

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
    D = math.prod(x.shape[1:])
    d = flow.latent_dim
    z = flow.encode_all(x)
    with torch.no_grad():
        flow.eval()
        rec = torch.cat([(flow(b) - b).flatten(1).pow(2).sum(1) for b in x.split(1024)])
    metrics: dict[str, Any] = {
        "run": str(run),
        "split": split,
        "n": int(x.shape[0]),
        "data_dim": D,
        "latent_dim": d,
        "reconstruction_error": float(rec.mean()),
        "reconstruction_mse_per_dim": float(rec.mean() / D),
        "latent": {
            "mean": z.mean(0).tolist(),
            "std": z.std(0).tolist(),
            "mean_norm": float(z.norm(dim=1).mean()),
            "prior_log_prob": float(flow.latent.log_prob(z).mean()),
        },
    }
    if d <= exact_nll_max_dim:
        lp = flow.log_prob(x, batch_size=256)
        metrics["nll"] = float(-lp.mean())
        metrics["nll_per_dim"] = float(-lp.mean() / D)
        metrics["nll_note"] = "exact on-manifold NLL of the projection g(f(x)); read with reconstruction_error"
    else:
        metrics["nll"] = None
        metrics["nll_note"] = f"skipped: d={d} > exact_nll_max_dim={exact_nll_max_dim}"
    for name in flow.samplers:
        metrics["latent"][f"{name}_log_prob"] = float(flow.samplers[name].log_prob(z).mean())
    out = run / "metrics.json"
    tmp = out.with_name(".metrics.json.tmp")
    tmp.write_text(json.dumps(metrics, indent=2))
    tmp.replace(out)
    print(json.dumps({k: v for k, v in metrics.items() if k != "latent"}, indent=2))
    print(f"[injflow] metrics -> {out}")
    return metrics


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="injflow",
        formatter_class=_fmt,
        description="Injective flows (FIF, InjFlow) — train, sample and evaluate from YAML configs.",
        epilog="example:\n  injflow fit && injflow evaluate runs/<the run folder fit printed>",
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
        description="Write <RUN>/metrics.json: reconstruction error, exact on-manifold NLL (when d is small), latent statistics.",
        epilog="example:\n  injflow evaluate runs/fif-sinusoid-20240101-120000 --split test",
    )
    e.add_argument("run", metavar="RUN", help="run folder written by `injflow fit`")
    e.add_argument("--split", choices=["train", "val", "test"], default="test")
    e.add_argument("--max-samples", type=int, default=None, help="evaluate on the first N points only")
    e.add_argument("--exact-nll-max-dim", type=int, default=64, help="skip the exact NLL above this latent dimension")
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
            evaluate_run(args.run, split=args.split, max_samples=args.max_samples, exact_nll_max_dim=args.exact_nll_max_dim)
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
