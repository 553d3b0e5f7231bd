"""Notebook hygiene (nbval runs the notebooks themselves): committed clean, and each follows the series' shape."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from fpcore import reproduce

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert any(p.name == "00_tour.ipynb" for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    nb = json.loads(path.read_text())
    dirty = [
        i
        for i, c in enumerate(nb["cells"])
        if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))
    ]
    assert not dirty, f"{path.name}: cells {dirty} hold outputs; run python tools/nbtool.py strip {path}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_prints_its_profile_and_asserts_its_claims(path):
    nb = nbformat.read(path, as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert code and "config.describe()" in code[0], f"{path.name}: the first code cell prints config.describe()"
    assert any("assert " in src for src in code), f"{path.name}: nbval compares no outputs, so claims need asserts"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")


def _notebook(path: Path, source: str) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    nbformat.write(nb, path)
    return path


def test_reproduce_writes_every_notebook_and_reports_failures(tmp_path, monkeypatch):
    src = tmp_path / "notebooks"
    src.mkdir()
    _notebook(src / "00_ok.ipynb", "import os\nprint('profile', os.environ['FPCORE_PROFILE'])")
    _notebook(src / "01_fails.ipynb", "assert 1 + 1 == 3, 'arithmetic broke'")
    monkeypatch.setattr(reproduce, "NOTEBOOKS", src)
    out = tmp_path / "build"
    assert reproduce.reproduce(out, profile="quick", timeout=120) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert [(n["name"], n["ok"]) for n in summary["notebooks"]] == [("00_ok.ipynb", True), ("01_fails.ipynb", False)]
    assert "arithmetic broke" in summary["notebooks"][1]["error"]
    ran = nbformat.read(out / "notebooks" / "00_ok.ipynb", as_version=4)
    assert ran.cells[0].outputs[0]["text"].strip() == "profile quick"
    assert (out / "html" / "01_fails.html").read_text().count("arithmetic broke") >= 1
