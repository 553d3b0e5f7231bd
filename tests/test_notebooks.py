"""Notebook hygiene (nbval runs the notebooks themselves): committed clean, and each follows the series' shape."""

from __future__ import annotations

import ast
import json
import re
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


# The notebooks written to the course's full shape (objectives, notation, summary, exercises with solutions that
# run, references); every notebook is meant to join this list.
COURSE = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))  # every notebook of the series
ARXIV = re.compile(r"arXiv\s+\[?(\d{4}\.\d{4,5})")
DOI = re.compile(r"doi\s+\[?(10\.\d{4,9}/[^\s\]]+)")


def _course(name: str):
    path = ROOT / "notebooks" / f"{name}.ipynb"
    assert path.exists(), f"{path.name} is in COURSE but not in notebooks/"
    return nbformat.read(path, as_version=4)


@pytest.mark.parametrize("name", COURSE)
def test_course_notebook_has_the_course_shape(name):
    nb = _course(name)
    md = [c.source for c in nb.cells if c.cell_type == "markdown"]
    intro = "\n".join(md[:2])
    for what in ("**Learning objectives.**", "**Prerequisites.**"):
        assert what in intro, f"{name}: the opening cells state its {what.strip('*.').lower()}"
    assert any("| symbol |" in m for m in md[:3]), f"{name}: a notation table near the top"
    headings = [m.splitlines()[0] for m in md]
    for heading in ("## Summary", "## Exercises", "## Solutions", "## References"):
        assert any(h.startswith(heading) or f"\n{heading}" in m for h, m in zip(headings, md)), f"{name}: {heading}"
    at = next(i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and "\n## Solutions" in f"\n{c.source}")
    assert any(c.cell_type == "code" and "assert " in c.source for c in nb.cells[at:]), f"{name}: solutions that assert"


@pytest.mark.parametrize("name", COURSE)
def test_every_cited_paper_is_in_the_references(name):
    nb = _course(name)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    references = text[text.index("## References") :]
    cited = set(ARXIV.findall(text)) | set(DOI.findall(text))
    listed = set(ARXIV.findall(references)) | set(DOI.findall(references))
    assert listed, f"{name}: the references give arXiv ids or DOIs"
    assert cited <= listed, f"{name}: cited but not in its references: {sorted(cited - listed)}"


@pytest.mark.parametrize("name", COURSE)
def test_no_cell_echoes_a_generator(name):
    """A cell ending in a bare ``torch.manual_seed(...)`` prints ``<torch._C.Generator at 0x...>`` as its output."""
    for cell in _course(name).cells:
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        last = ast.parse(cell.source).body[-1]
        if isinstance(last, ast.Expr) and isinstance(last.value, ast.Call):
            func = last.value.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            assert called not in ("manual_seed", "seed_everything"), f"{name}: ends in {ast.unparse(last)}"
