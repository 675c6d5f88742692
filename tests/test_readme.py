"""The README's Python examples run as written (in a scratch folder)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:  # later blocks reuse names from earlier ones, as a reader would
        exec(compile(block, str(README), "exec"), namespace)
    assert (tmp_path / "runs" / "quickstart" / "plots").is_dir()
    assert (tmp_path / "runs" / "mine" / "model.pt").is_file()


def test_readme_opens_with_the_two_commands():
    commands = re.findall(r"```bash\n(.*?)\n```", README.read_text(), flags=re.S)[:2]
    assert commands[0].startswith("bash scripts/setup.sh && .venv/bin/injflow fit")
    assert commands[1] == "bash scripts/setup.sh && .venv/bin/ruff check . && .venv/bin/python -m pytest"
    ci = (README.parent / ".ci" / "run").read_text()
    assert commands[1] in ci
