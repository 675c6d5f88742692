"""`injflow report`: one self-contained HTML page and a Markdown twin per run or comparison, checked in headless
Chromium where it is installed (Debian `chromium`)."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from conftest import make_untrained_run

from injflow import metrics as M
from injflow.cli import main


class PixelFeatures:
    """Stand-in features so the image report needs no Inception (the FID itself is tested in test_metrics.py)."""

    identity = "pixels-v1"

    def __call__(self, images):
        return images.flatten(1).float()


def make_run(tmp_path, name, overrides):
    return make_untrained_run(tmp_path, name, overrides, loss_history=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    toy, _, _ = make_run(tmp, "fif-toy", ["data.options.n_train=500", "data.options.n_val=100", "data.options.n_test=300",
                                          "model.options.n_blocks=1", "model.options.hidden_features=16"])
    assert main(["evaluate", str(toy), "--no-progress"]) == 0
    img, flow, data = make_run(tmp, "ae-digits", ["data.name=digits", "data.options={}", "model.architecture=mlp",
                                                  "model.latent_dim=4", "model.options={hidden_features: [32]}",
                                                  "method={name: ae}"])
    e = M.evaluate_flow(flow, data.test, kind="image", out_dir=img / "eval", dataset="digits", extractor=PixelFeatures(),
                        cache=M.ReferenceStatsCache(tmp / "cache"), progress=False, log=None)
    (img / "metrics.json").write_text(json.dumps({"run": str(img), **e.metrics}, indent=2))
    bare, _, _ = make_run(tmp, "not-evaluated", ["data.options.n_train=200", "model.options.n_blocks=1",
                                                 "model.options.hidden_features=8"])
    return toy, img, bare


def images_in(html_text: str) -> list[str]:
    return re.findall(r'<img [^>]*src="([^"]+)"', html_text)


def test_single_run_report(runs, capsys):
    toy, img, _ = runs
    assert main(["report", str(img)]) == 0
    html_path, md_path = img / "report.html", img / "report.md"
    assert str(html_path) in capsys.readouterr().out
    page = html_path.read_text()
    metrics = json.loads((img / "metrics.json").read_text())
    # self-contained: every picture is a data URI, nothing is fetched
    srcs = images_in(page)
    assert len(srcs) == len(metrics["figures"]) + 1 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(src|href)="(https?:|file:|//)', page)
    for needle in ["ae-digits", "Metrics", "exact on-manifold NLL", "FID, samples: gmm", "FID, reconstructions",
                   "configuration (config.yaml)", "Loss curves", "samples: gmm", "latents", "spectrum", "n = 179"]:
        assert needle in page, needle
    for fig in metrics["figures"].values():  # each figure's caption (with n and the reference split) is shown
        assert fig["caption"].split(";")[0] in page.replace("&#x27;", "'")
    md = md_path.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == len(srcs) and all((img / link).is_file() for link in links)
    assert "| metric | value |" in md and "FID, samples: prior" in md


def test_comparison_report(runs, tmp_path):
    toy, img, _ = runs
    out = tmp_path / "cmp"
    assert main(["report", str(toy), str(img), "--out", str(out), "--title", "toy vs digits"]) == 0
    page = (out / "report.html").read_text()
    assert "<title>toy vs digits</title>" in page and "Side by side" in page
    table = page[page.index("Side by side"):page.index("</table>", page.index("Side by side"))]
    for needle in ["fif-toy", "ae-digits", "sample metric: gmm", "FID-like W2", "NLL", "recon. error", "179 (test)",
                   "300 (test)"]:
        assert needle in table, needle
    assert "singular-value spectra" in page  # both runs have spectra: one plot of all
    md = (out / "report.md").read_text()
    assert md.count("| fif-toy |") == 1 and md.count("| ae-digits |") == 1


def test_report_of_unevaluated_run_says_what_to_do(runs, tmp_path):
    _, _, bare = runs
    html_path, md_path = M.write_report([bare], tmp_path / "bare")
    page = html_path.read_text()
    assert "not evaluated yet" in page and f"injflow evaluate {bare}" in page and "Loss curves" in page
    assert main(["report", str(tmp_path / "nope")]) == 2


def test_report_help_has_example(capsys):
    with pytest.raises(SystemExit) as e:
        main(["report", "--help"])
    assert e.value.code == 0 and "injflow report" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless Chromium (Debian package `chromium`) is not installed")
def test_report_renders_in_headless_chromium(runs, tmp_path):
    """Loads the comparison page in headless Chromium: every embedded picture decodes and the page is not blank."""
    import numpy as np
    from PIL import Image

    toy, img, _ = runs
    html_path, _ = M.write_report([toy, img], tmp_path / "cmp")
    check = M.check_renders_in_chromium(html_path, tmp_path / "shot.png")
    assert check.images_total == len(images_in(html_path.read_text())) > 0
    assert check.images_loaded == check.images_total
    assert "Side by side" in check.dom
    shot = np.asarray(Image.open(check.screenshot).convert("L"), dtype=float)
    assert shot.shape[0] > 500 and shot.std() > 10  # text, tables and pictures, not an empty page
