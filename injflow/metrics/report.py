"""Human-readable reports of run folders: one self-contained HTML page and a Markdown twin.

:func:`write_report` reads only files of the run folders (it needs no model and imports no training code):

- ``config.yaml`` → the configuration (collapsible) and the run's headline (data, method, architecture, d);
- ``metrics.json`` (from ``injflow evaluate``) → the metrics table and the evaluation figures listed under its
  ``figures`` key (reconstruction and sample grids per sampler, latent histograms/QQ plots against the prior,
  the decoder's singular-value spectrum), each with its caption (number of samples, reference split);
- ``metrics.csv`` / ``plots/loss_curves.png`` → the loss curves;
- ``eval/spectrum.npz`` → for several runs, one plot of all spectra.

With several runs the page starts with a side-by-side table (one row per run: reconstruction error, exact NLL,
sample quality per sampler — the layout of Kumar et al. table 1 / FIF table 3), then one section per run.
The HTML embeds every picture as a data URI (no external file, no network); the Markdown file links copies of
the pictures in ``report_files/`` next to it. :func:`check_renders_in_chromium` loads a page in headless
Chromium and returns a screenshot plus the count of images that decoded.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..plots import plot_loss_curves, plot_spectra

__all__ = ["RunSummary", "read_run", "write_report", "check_renders_in_chromium", "ChromiumCheck"]

SAMPLER_ORDER = ("reconstruction", "prior", "gaussian", "gmm")
_METRIC_LABEL = {"fid": "FID", "fid_like_w2": "FID-like W2"}


@dataclass
class RunSummary:
    """What a report shows of one run folder."""

    path: Path
    name: str
    config: dict[str, Any] | None
    metrics: dict[str, Any] | None
    figures: list[tuple[str, Path, str]] = field(default_factory=list)  # (title, file, caption)
    loss_curves: Path | None = None
    spectrum: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def method(self) -> str:
        return str(((self.config or {}).get("method") or {}).get("name", "?"))

    @property
    def dataset(self) -> str:
        return str(((self.config or {}).get("data") or {}).get("name", "?"))

    @property
    def architecture(self) -> str:
        return str(((self.config or {}).get("model") or {}).get("architecture", "?"))

    @property
    def latent_dim(self) -> Any:
        m = self.metrics or {}
        return m.get("latent_dim", ((self.config or {}).get("model") or {}).get("latent_dim", "?"))


def read_run(run: str | Path, *, scratch: Path | None = None) -> RunSummary:
    """Collects what a report shows of one run folder; ``scratch`` is where a missing loss plot may be drawn."""
    import yaml

    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"{run} is not a folder (give run folders written by `injflow fit`)")
    cfg_path, met_path = run / "config.yaml", run / "metrics.json"
    config = yaml.safe_load(cfg_path.read_text()) if cfg_path.is_file() else None
    metrics = json.loads(met_path.read_text()) if met_path.is_file() else None
    s = RunSummary(run, run.resolve().name, config, metrics)
    if config is None:
        s.notes.append("no config.yaml: is this a run folder written by `injflow fit`?")
    if metrics is None:
        s.notes.append(f"not evaluated yet: run `injflow evaluate {run}` for metrics and evaluation figures")
    if (run / "plots" / "loss_curves.png").is_file():
        s.loss_curves = run / "plots" / "loss_curves.png"
    elif (run / "metrics.csv").is_file() and scratch is not None:
        s.loss_curves = plot_loss_curves(run / "metrics.csv", scratch / f"{s.name}-loss_curves.png", include_steps=False)
    figures = (metrics or {}).get("figures") or {}
    order = ["reconstructions", *[f"samples_{k}" for k in SAMPLER_ORDER], "samples", "latents", "spectrum"]
    for key in sorted(figures, key=lambda k: (order.index(k) if k in order else len(order), k)):
        f = run / figures[key]["path"]
        if f.is_file():
            s.figures.append((key.replace("_", ": ", 1) if key.startswith("samples_") else key, f, figures[key]["caption"]))
        else:
            s.notes.append(f"figure {figures[key]['path']} listed in metrics.json is missing")
    if metrics is None:  # fall back to the training pictures
        for f in sorted((run / "plots").glob("*.png")) if (run / "plots").is_dir() else []:
            if f.name != "loss_curves.png":
                s.figures.append((f.stem, f, f"training-time picture plots/{f.name} (not an evaluation figure)"))
    if (run / "eval" / "spectrum.npz").is_file():
        s.spectrum = run / "eval" / "spectrum.npz"
    return s


# ----------------------------------------------------------------------------------------------- tables


def _num(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if not math.isfinite(v):
        return str(v)
    return f"{v:.{digits}g}"


def _metric_rows(s: RunSummary) -> list[tuple[str, str]]:
    m = s.metrics or {}
    rows = [
        ("data set / split", f"{m.get('dataset', s.dataset)} / {m.get('split', '?')} (n = {m.get('n', '?')})"),
        ("data dim D, latent dim d", f"{m.get('data_dim', '?')}, {m.get('latent_dim', '?')}"),
        ("reconstruction error ‖g(f(x)) − x‖² (mean)", _num(m.get("reconstruction_error"))),
        ("reconstruction MSE per dimension", _num(m.get("reconstruction_mse_per_dim"))),
        ("exact on-manifold NLL of g(f(x)) (mean ± sd)",
         f"{_num(m.get('nll'))} ± {_num(m.get('nll_std'))}" if m.get("nll") is not None else str(m.get("nll_note", "–"))),
        ("NLL per dimension (÷ D)", _num(m.get("nll_per_dim"))),
        ("½ log det g'ᵀg' (mean)", _num(m.get("log_volume_mean"))),
    ]
    spec = m.get("spectrum")
    if spec:
        rows.append(("Jacobian σ₁ / σ_d (median)", _num(spec.get("condition_median"))))
    sq = m.get("sample_quality") or {}
    if sq.get("metric"):
        label = _METRIC_LABEL.get(sq["metric"], sq["metric"])
        for k in [k for k in SAMPLER_ORDER if k in sq] + [k for k in sq if k not in SAMPLER_ORDER and isinstance(sq[k], float)]:
            what = "reconstructions" if k == "reconstruction" else f"samples: {k}"
            sizes = f"n = {sq['n_samples']} vs {sq['reference_split']} n = {sq['n_reference']}"
            rows.append((f"{label}, {what}", f"{_num(sq[k])}  ({sizes})"))
        if sq.get("feature_extractor"):
            rows.append(("FID features", str(sq["feature_extractor"])))
    elif sq.get("note"):
        rows.append(("sample quality", sq["note"]))
    lat = m.get("latent") or {}
    if "prior_log_prob" in lat:
        rows.append(("mean log p_Z(f(x)) under the prior", _num(lat["prior_log_prob"])))
    return rows


def _comparison(runs: list[RunSummary]) -> tuple[list[str], list[list[str]]]:
    samplers = [k for k in SAMPLER_ORDER if any(k in ((r.metrics or {}).get("sample_quality") or {}) for r in runs)]
    metric_names = {((r.metrics or {}).get("sample_quality") or {}).get("metric") for r in runs} - {None}
    # one metric for all runs: name it in the headers; several (images next to tabular data): a column says which
    label = _METRIC_LABEL.get(next(iter(metric_names)), "?") if len(metric_names) == 1 else None
    head = ["run", "method", "data", "d", "recon. error", "NLL", "NLL / D"] + ([] if label else ["sample metric"]) + [
        f"{label or 'sample metric'}: {'recon.' if k == 'reconstruction' else k}" for k in samplers] + [
        "n samples (ref. split)"]
    body = []
    for r in runs:
        m = r.metrics or {}
        sq = m.get("sample_quality") or {}
        body.append([
            r.name, r.method, r.dataset, str(r.latent_dim), _num(m.get("reconstruction_error")), _num(m.get("nll")),
            _num(m.get("nll_per_dim")), *([] if label else [_METRIC_LABEL.get(sq.get("metric"), "–")]),
            *[_num(sq.get(k)) for k in samplers],
            f"{sq['n_samples']} ({sq['reference_split']})" if "n_samples" in sq else "–",
        ])
    return head, body


# ----------------------------------------------------------------------------------------------- writers

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
h1{font-size:1.6em;margin-bottom:.2em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
h3{margin-top:1.4em} table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top} th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums} figure{margin:1em 0;display:inline-block;max-width:100%}
figure img{max-width:100%;border:1px solid #ddd} figcaption{font-size:.85em;color:#444;max-width:900px}
pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:.85em} .note{color:#a40;font-size:.9em}
.meta{color:#555;font-size:.9em}
"""
_SCRIPT = """<script>
window.addEventListener('load', function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  document.body.setAttribute('data-images-loaded', ok + '/' + imgs.length);
});
</script>"""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _html_table(head: list[str], body: list[list[str]]) -> str:
    def cell(v: str, i: int) -> str:
        cls = ' class="num"' if i > 0 and re.fullmatch(r"[-+0-9.e–]+", v or "") else ""
        return f"<td{cls}>{html.escape(v)}</td>"

    rows = "".join("<tr>" + "".join(cell(v, i) for i, v in enumerate(r)) + "</tr>" for r in body)
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f"<table><thead><tr>{header}</tr></thead><tbody>{rows}</tbody></table>"


def _md_table(head: list[str], body: list[list[str]]) -> str:
    def esc(v: str) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(esc, head)) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in body]
    return "\n".join(lines)


class _Page:
    """Builds the HTML and Markdown side by side; pictures are embedded (HTML) and copied (Markdown)."""

    def __init__(self, out_dir: Path) -> None:
        self.h: list[str] = []
        self.m: list[str] = []
        self.files = out_dir / "report_files"
        self.out_dir = out_dir
        self.n_images = 0

    def heading(self, level: int, text: str, anchor: str | None = None) -> None:
        a = f' id="{html.escape(anchor)}"' if anchor else ""
        self.h.append(f"<h{level}{a}>{html.escape(text)}</h{level}>")
        self.m.append(f"\n{'#' * level} {text}\n")

    def para(self, text: str, cls: str | None = None) -> None:
        c = f' class="{cls}"' if cls else ""
        self.h.append(f"<p{c}>{html.escape(text)}</p>")
        self.m.append(f"{'> ' if cls == 'note' else ''}{text}\n")

    def table(self, head: list[str], body: list[list[str]]) -> None:
        self.h.append(_html_table(head, body))
        self.m.append(_md_table(head, body) + "\n")

    def code(self, text: str, summary: str) -> None:
        self.h.append(f"<details><summary>{html.escape(summary)}</summary><pre>{html.escape(text)}</pre></details>")
        self.m.append(f"<details><summary>{summary}</summary>\n\n```yaml\n{text}\n```\n\n</details>\n")

    def image(self, path: Path, title: str, caption: str) -> None:
        self.files.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
        copy = self.files / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', path.stem)}-{digest}{path.suffix}"
        if path.resolve() != copy.resolve():
            shutil.copyfile(path, copy)
        self.n_images += 1
        self.h.append(f'<figure><img alt="{html.escape(title)}" src="{_data_uri(path)}">'
                      f"<figcaption><b>{html.escape(title)}.</b> {html.escape(caption)}</figcaption></figure>")
        self.m.append(f"**{title}.** {caption}\n\n![{title}]({copy.relative_to(self.out_dir).as_posix()})\n")


def _run_section(page: _Page, s: RunSummary, level: int) -> None:
    page.heading(level, f"{s.name}", anchor=s.name)
    page.para(f"folder: {s.path} — data: {s.dataset}, method: {s.method}, architecture: {s.architecture}, "
              f"latent dim d = {s.latent_dim}", cls="meta")
    for note in s.notes:
        page.para(note, cls="note")
    if s.metrics is not None:
        page.heading(level + 1, "Metrics")
        page.table(["metric", "value"], [list(r) for r in _metric_rows(s)])
    if s.config is not None:
        import yaml

        page.code(yaml.safe_dump(s.config, sort_keys=False).strip(), "configuration (config.yaml)")
    if s.loss_curves is not None:
        page.heading(level + 1, "Loss curves")
        page.image(s.loss_curves, "loss curves", "training (epoch means) and validation terms from metrics.csv, "
                   "against the optimiser step.")
    if s.figures:
        page.heading(level + 1, "Evaluation figures" if s.metrics is not None else "Training pictures")
        for title, path, caption in s.figures:
            page.image(path, title, caption)


def _spectra_figure(runs: list[RunSummary], out: Path) -> Path | None:
    import numpy as np


    spectra = {r.name: np.load(r.spectrum)["singular_values"] for r in runs if r.spectrum is not None}
    if len(spectra) < 2:
        return None
    return plot_spectra(spectra, out, title="decoder Jacobian singular values, all runs (median, 10-90 % band)")


def _default_out(runs: list[Path]) -> Path:
    if len(runs) == 1:
        return runs[0]
    names = "-vs-".join(p.resolve().name for p in runs)
    if len(names) > 80:
        names = names[:60] + "-" + hashlib.sha1(names.encode()).hexdigest()[:8]
    return runs[0].resolve().parent / f"compare-{names}"


def write_report(runs: list[str | Path], out_dir: str | Path | None = None, *, title: str | None = None) -> tuple[Path, Path]:
    """Writes ``report.html`` (self-contained) and ``report.md`` (+ ``report_files/``) for one or several runs.

    Arguments:
        runs: Run folders (written by ``injflow fit``; ``injflow evaluate`` adds the metrics and figures).
        out_dir: Where the report goes; default: the run folder for one run, ``<parent>/compare-<names>`` else.
        title: Page title (default: from the run names).

    Returns:
        The HTML and Markdown paths.
    """
    paths = [Path(r) for r in runs]
    if not paths:
        raise ValueError("give at least one run folder")
    out = Path(out_dir) if out_dir is not None else _default_out(paths)
    with tempfile.TemporaryDirectory() as scratch:
        summaries = [read_run(p, scratch=Path(scratch)) for p in paths]  # checks the folders before writing
        out.mkdir(parents=True, exist_ok=True)
        names = [s.name for s in summaries]
        if len(set(names)) < len(names):  # two folders with the same name: tell them apart by their parent
            for s in summaries:
                s.name = f"{s.path.resolve().parent.name}/{s.name}"
        page = _Page(out)
        heading = title or (f"injflow report: {summaries[0].name}" if len(summaries) == 1
                            else f"injflow comparison: {len(summaries)} runs")
        page.heading(1, heading)
        page.para("Exact NLL: on-manifold density of the projection g(f(x)) (FIF eq. 2), always read with the "
                  "reconstruction error. Sample quality: FID (Inception pool-3, images) or FID-like W2 (squared W2 "
                  "between Gaussian fits, other data), each computed on the stated number of samples against the "
                  "stated reference split; lower is better for both.", cls="meta")
        if len(summaries) > 1:
            page.heading(2, "Side by side")
            page.table(*_comparison(summaries))
            fig = _spectra_figure(summaries, Path(scratch) / "spectra_all_runs.png")
            if fig is not None:
                page.image(fig, "singular-value spectra", "decoder Jacobian singular values at the encoded evaluation "
                           "points of each run (median per index, 10-90 % band; FIF fig. 8).")
        for s in summaries:
            _run_section(page, s, 2)
        html_path, md_path = out / "report.html", out / "report.md"
        doc = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(heading)}</title>'
               f"<style>{_CSS}</style>{_SCRIPT}</head><body>\n" + "\n".join(page.h) + "\n</body></html>\n")
        _atomic_write(html_path, doc)
        _atomic_write(md_path, "\n".join(page.m).lstrip() + "\n")
    return html_path, md_path


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


# ----------------------------------------------------------------------------------------------- rendering check


@dataclass
class ChromiumCheck:
    """Result of :func:`check_renders_in_chromium`: the screenshot, images decoded / total, and the page's text."""

    screenshot: Path
    images_loaded: int
    images_total: int
    dom: str


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if exe := shutil.which(name):
            return exe
    return None


def check_renders_in_chromium(page: str | Path, screenshot: str | Path | None = None, *, timeout: float = 120,
                              window: tuple[int, int] = (1280, 2400)) -> ChromiumCheck:
    """Loads ``page`` in headless Chromium (Debian ``chromium``): a screenshot and how many images decoded.

    Raises:
        FileNotFoundError: no Chromium on ``PATH`` (``apt-get install chromium``).
        RuntimeError: Chromium failed or the page reports no image count (it did not load).
    """
    exe = _chromium()
    if exe is None:
        raise FileNotFoundError("headless Chromium is not installed: `apt-get install chromium` (Debian)")
    page = Path(page).resolve()
    shot = Path(screenshot) if screenshot is not None else page.with_suffix(".png")
    with tempfile.TemporaryDirectory() as profile:
        common = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                  f"--user-data-dir={profile}", "--allow-file-access-from-files", "--virtual-time-budget=5000"]
        dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=timeout)
        if dom.returncode != 0:
            raise RuntimeError(f"chromium --dump-dom failed ({dom.returncode}): {dom.stderr[-2000:]}")
        shot_run = subprocess.run([*common, f"--screenshot={shot.resolve()}", f"--window-size={window[0]},{window[1]}",
                                   page.as_uri()], capture_output=True, text=True, timeout=timeout)
        if shot_run.returncode != 0 or not shot.is_file():
            raise RuntimeError(f"chromium --screenshot failed ({shot_run.returncode}): {shot_run.stderr[-2000:]}")
    match = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom.stdout)
    if match is None:
        raise RuntimeError("the page did not finish loading in Chromium (no data-images-loaded attribute in the DOM)")
    return ChromiumCheck(shot, int(match.group(1)), int(match.group(2)), dom.stdout)
