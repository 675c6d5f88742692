r"""What one does with a trained run folder: load its model, sample, evaluate, report (``injflow sample |
evaluate | report``). Each function reads the folder through :class:`~injflow.rundir.RunDir`, computes with the
library (:mod:`injflow.metrics`, :mod:`injflow.plots`) and writes its results atomically; the command line only
parses arguments and calls these.

An unfinished run (interrupted, failed or still training: no ``model.pt``) is refused with a message naming its last
step, unless a checkpoint is asked for explicitly (``checkpoint="last"`` / ``"best"``, ``--checkpoint last``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .config import Config
from .errors import CheckpointError
from .io import writable_folder
from .loading import ensure_samplers, load_run, load_run_data
from .model import InjectiveFlow
from .rundir import RunDir
from .threads import limit_threads
from .tracking import log_evaluation

__all__ = ["load_run", "sample_run", "evaluate_run", "method_terms", "report_runs"]


def sample_run(
    run: str | Path,
    *,
    n: int,
    sampler: str = "prior",
    temperature: float = 1.0,
    seed: int = 0,
    out: str | Path | None = None,
    label: int | None = None,
    checkpoint: str | None = None,
    device: str = "cpu",
) -> Path:
    """Writes ``n`` samples of a run to ``out`` (``.npy``, ``.csv``, ``.pt`` or ``.png``, as its suffix says; default
    ``<run>/samples/<sampler>_T<temperature>[_class<c>].pt``) and a picture beside it.

    Arguments:
        run: The run folder.
        n: Number of samples.
        sampler: ``prior``, ``gaussian`` or ``gmm`` (a post-fit sampler the run lacks is fitted as ``fit`` would).
        temperature: Scales the latent spread.
        seed: Sampling seed.
        out: The file (default in ``<run>/samples/``): ``.npy``, ``.csv`` (with the training columns' header), ``.pt``
            or ``.png`` (the picture only); anything else is refused before sampling.
        label: The class of a conditional model (``None``: one class after the other).
        checkpoint: ``"last"``/``"best"`` to sample an unfinished run's checkpoint.
        device: Where to decode.
    """
    from .outputs import check_sample_path, write_samples
    from .plots import plot_samples

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of samples must be an integer >= 1, got {n!r} (--n)")
    if out is not None:
        check_sample_path(out)
    folder, config, flow = load_run(run, checkpoint=checkpoint, device=device, samplers=False)
    if sampler != "prior" and sampler not in flow.samplers:
        ensure_samplers(flow, load_run_data(config), config, names=[sampler])
    if flow.conditional:
        c = torch.arange(n) % flow.num_classes if label is None else label
    elif label is not None:
        raise ValueError(f"{folder.path} is not a conditional model: --class does not apply")
    else:
        c = None
    x = flow.sample(n, sampler=sampler, temperature=temperature, seed=seed, c=c).cpu()
    suffix = "" if label is None else f"_class{label}"
    out = Path(out) if out else folder.samples / f"{sampler}_T{temperature:g}{suffix}.pt"
    title = f"{n} samples: {sampler}, T={temperature:g}" + ("" if label is None else f", class {label}")
    drawing = dict(data_kind=flow.data_kind or "tabular", title=title, image_shape=flow.image_shape,
                   data_range=flow.value_range)
    write_samples(x, out, columns=getattr(flow, "columns", None), **drawing)
    picture = out if out.suffix.lower() == ".png" else plot_samples(x, out.with_suffix(".png"), **drawing)
    print(f"[injflow] {n} samples ({sampler}, T={temperature:g}{'' if label is None else f', class {label}'}) -> {out}"
          f"\n[injflow] picture -> {picture}")
    return out


def method_terms(config: Config, flow: InjectiveFlow, x: torch.Tensor, c: torch.Tensor | None, *, step: int, seed: int,
                 batch_size: int) -> dict[str, float]:
    """The run's own loss terms (means over ``x``) at its last step, in evaluation mode with seeded noise, so that
    any two methods can be compared on the same split (reconstruction, latent statistics and these)."""
    from .methods import Clock

    method, clock = config.method, Clock(step, max(step, 1))
    device = flow.device
    sums: dict[str, float] = {}
    was_training = flow.training
    flow.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for i in range(0, x.shape[0], batch_size):
                batch = flow.to_model_units(x[i: i + batch_size].to(device))  # the method sees what it trained on
                labels = None if c is None or not flow.conditional else c[i: i + batch_size].to(device)
                with torch.enable_grad():  # the estimators differentiate through the nets
                    terms = method.loss(batch, clock, flow.given(labels))
                for k, v in terms.items():
                    v = v.detach()
                    sums[k] = sums.get(k, 0.0) + float(v.sum() if v.ndim else v * batch.shape[0])
    finally:
        flow.train(was_training)
    return {k: v / x.shape[0] for k, v in sums.items()}


def _finalized_away(config: Config, flow: InjectiveFlow) -> str | None:
    """Why the method's own terms cannot be computed on ``flow`` (``None`` when they can).

    A finished run's ``model.pt`` holds the nets its method's ``finalize`` exported (e.g. a VAE's mean encoder,
    without the posterior variance its KL needs; AE+SN's weights with the spectral norm baked in); the training nets
    are in the run's checkpoints.
    """
    from .methods import Method

    method = config.method
    if flow.finalized and type(method).finalize is not Method.finalize:
        return (f"{method.name}: model.pt holds the exported plain nets, not the ones its loss terms need; "
                f"`injflow evaluate RUN --checkpoint last` computes them on the training nets")
    return None


def evaluate_run(
    run: str | Path,
    *,
    split: str = "test",
    max_samples: int | None = None,
    seed: int | None = None,
    checkpoint: str | None = None,
    device: str = "cpu",
    fid_cache: str | Path | None = None,
    verbose: bool = True,
    ood: str | None = None,
    ood_latent: str = "auto",
    **options: Any,
) -> dict[str, Any]:
    """Evaluates a run on one split; writes ``<run>/metrics.json`` and the figures in ``<run>/eval/``.

    Reconstruction error; the exact on-manifold NLL :math:`-\\log p_Z(f(x)) + \\tfrac12\\log\\det(g'^\\top g')` of the
    projection :math:`\\hat x` (if d ≤ ``exact_nll_max_dim``; read it with the reconstruction error) and the decoder's
    singular-value spectrum; latent statistics and plots against the prior; sample quality of the prior and of each
    post-fit sampler and of the reconstructions — FID for images (offline Inception, reference statistics cached),
    FID-like W2 otherwise; and the method's own loss terms on the split. The same ``seed`` gives identical numbers.

    Arguments:
        run: The run folder.
        split: ``train``, ``val`` or ``test``.
        max_samples: Evaluate on the first N points only.
        seed: Seed of all sampling (default: the run's ``train.seed``).
        checkpoint: ``"last"``/``"best"`` to evaluate an unfinished run's checkpoint.
        device: Where everything runs (``cpu``, ``cuda``, ``cuda:1``...).
        fid_cache: Folder of cached FID reference statistics.
        verbose: Print the metrics and where they went.
        ood: A registered data set of the run's shape: also score the split against its same split for
            out-of-distribution detection (:func:`injflow.ood.evaluate_run_ood`: ``eval/ood_scores.csv``, a histogram
            per score, the AUROCs under ``ood`` in ``metrics.json``).
        ood_latent: :math:`p_Z` of the OOD likelihood score (``auto``, ``prior``, ``gaussian``, ``gmm``).
        options: Fields of :class:`~injflow.metrics.EvalOptions` (``n_samples``, ``fid``, ``resize``, ``batch_size``,
            ``fid_batch_size``, ``exact_nll_max_dim``, ``progress``...).
    """
    from .io import load_torch
    from .metrics import EvalOptions, ReferenceStatsCache, evaluate_flow

    folder = RunDir(run).require_run()
    writable_folder(folder.path)  # a read-only run folder is one line now, not a traceback after the metrics
    config = folder.read_config()
    data = load_run_data(config)
    _, _, flow = load_run(folder.path, checkpoint=checkpoint, device=device, samplers=False)
    if flow.data_shape is not None and tuple(flow.data_shape) != tuple(data.data_shape):
        raise CheckpointError(f"the model of {folder.path} was made for samples of shape {tuple(flow.data_shape)}, but "
                              f"the run's data set {config.data.name!r} has samples of shape {tuple(data.data_shape)}: "
                              f"put the run's own model.pt back or retrain")
    with limit_threads(config.train.num_threads):  # the GMM fit and the metrics stay within the run's threads
        ensure_samplers(flow, data, config)
        x, c = data.split(split)
        if x is None:
            raise ValueError(f"the data set {config.data.name!r} has no {split} split")
        if max_samples:
            x, c = x[:max_samples], None if c is None else c[:max_samples]
        if ood:  # refuse a data set of another shape before the long evaluation
            from .ood import load_ood_split

            x_ood = load_ood_split(config, ood, split, tuple(x.shape[1:]))
        seed = config.train.seed if seed is None else seed
        eval_options = EvalOptions(seed=seed, cache=ReferenceStatsCache(fid_cache) if fid_cache else None, **options)
        log = print if verbose else None
        # Tables are scored in the user's units (the scaler inverted); images in the model's [0, 1] range, which FID
        # and the pictures assume (data.value_range maps the user's range onto it).
        in_model_units = flow.scaled and data.kind == "image"
        scored, scored_x = (flow.in_model_units(), flow.to_model_units(x)) if in_model_units else (flow, x)
        evaluation = evaluate_flow(scored, scored_x, kind=data.kind, out_dir=folder.eval, split=split,
                                   dataset=config.data.name, c=c if flow.conditional else None, options=eval_options,
                                   log=log)
        status = folder.status()
        step = status.get("step")
        source = folder.checkpoint(checkpoint) if checkpoint is not None else folder.last_checkpoint
        if (checkpoint is not None or step is None) and source.is_file():
            step = load_torch(source, what="checkpoint").get("global_step", 0)
        step = int(step or 0)
        metrics: dict[str, Any] = {"run": str(folder.path), **evaluation.metrics, "units": _units(flow, in_model_units)}
        if checkpoint is not None:
            metrics["checkpoint"] = {"which": checkpoint, "step": step, "state": status["state"]}
        unavailable = _finalized_away(config, flow)
        if unavailable:
            metrics["method_terms"], metrics["method_terms_unavailable"] = {}, unavailable
        else:
            metrics["method_terms"] = method_terms(config, flow, x, c, step=step, seed=seed,
                                                   batch_size=eval_options.batch_size)
        # nll_D: the likelihood that compares latent dimensions (the manifold thickened by the fitted off-manifold noise).
        from .metrics.ambient import ambient_nll_metrics, fit_flow_noise

        # Fitted in the units the NLL and reconstruction error above were measured in.
        x_train = flow.to_model_units(data.train) if in_model_units else data.train
        noise = fit_flow_noise(scored, x_train, c=data.train_labels if flow.conditional else None)
        metrics.update(ambient_nll_metrics(evaluation.metrics, noise))
        if ood:
            from .ood import evaluate_run_ood

            metrics["ood"] = evaluate_run_ood(folder, config, flow, ood, x_in=x, x_train=data.train, x_out=x_ood,
                                              split=split, max_samples=max_samples, latent=ood_latent,
                                              batch_size=eval_options.batch_size, chunk_size=eval_options.chunk_size,
                                              seed=seed, progress=eval_options.progress, log=log)
    folder.write_json(folder.metrics_json, metrics)
    log_evaluation(folder, metrics, split=split, step=step, verbose=verbose)  # the run's MLflow / W&B runs, if tracked
    if verbose:
        print(json.dumps({k: v for k, v in metrics.items() if k not in ("latent", "spectrum", "figures", "ood")}, indent=2))
        print("[injflow] timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in evaluation.timings.items()))
        print(f"[injflow] metrics -> {folder.metrics_json}")
        print(f"[injflow] figures -> {folder.eval}  (report: injflow report {folder.path})")
    return metrics


def _units(flow: InjectiveFlow, in_model_units: bool) -> str:
    """What the metrics' numbers are measured in (reconstruction errors, W2, the NLL's density)."""
    if not flow.scaled:
        return "the data's own units (no scaling)"
    if in_model_units:
        low, high = flow.value_range
        return f"the model's image range [0, 1] (the data's [{low:g}, {high:g}] mapped onto it by data.standardize=range)"
    return (f"the data's own units (data.standardize={flow.scaler.method} is inverted; the NLL is the density in these "
            f"units, with the change of variables of the scaling)")


def report_runs(runs: list[str | Path], *, out: str | Path | None = None, title: str | None = None) -> tuple[Path, Path]:
    """Writes a self-contained HTML report and its Markdown twin for one run or a comparison of several."""
    from .metrics.report import write_report

    for r in runs:  # a folder that is not a run gets no report files written into it
        RunDir(r).require_run()
    if out is not None:
        writable_folder(out)
    elif len(runs) == 1:
        writable_folder(runs[0])

    html_path, md_path = write_report(list(runs), out, title=title)
    print(f"[injflow] report -> {html_path}\n[injflow] markdown -> {md_path}")
    return html_path, md_path
