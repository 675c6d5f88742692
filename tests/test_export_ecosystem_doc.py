"""docs/ecosystem.md's Python examples run as written, in order, in a scratch folder (as a reader would run them)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "ecosystem.md"


@pytest.mark.usefixtures("one_thread")
def test_ecosystem_page_examples_run(tmp_path, monkeypatch):
    for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 3
    namespace: dict = {}
    for block in blocks:  # later blocks use names from earlier ones
        exec(compile(block, str(DOC), "exec"), namespace)
    assert (tmp_path / "runs" / "mlflow.db").is_file() and list((tmp_path / "runs" / "tracked" / "wandb").glob("offline-run-*"))
    assert (tmp_path / "models" / "fif-sinusoid" / "model.safetensors").is_file()
    assert (tmp_path / "runs" / "tracked" / "export" / "onnx" / "check.json").is_file()
    assert (tmp_path / "deploy" / "torch-export" / "decoder.pt2").is_file()
