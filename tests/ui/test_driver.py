"""The JupyterLab checks themselves can fail: a cell that raises, a widget callback that raises and one
that ignores its control each fail, with what a student would have seen; working controls of every
kind the driver knows pass. One small notebook written here, run in the same JupyterLab: its widget
cells run first, then a cell raises and stops "Run All" before the last one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import nbformat
import pytest

from .lab import Control, Display, LabServer, NotebookPage, UIFailure
from .test_jupyterlab import SHOTS

CELLS = [
    """\
import ipywidgets as widgets
from IPython.display import display


def good(k=2):
    print(f"k = {k}")


widgets.interact(good, k=widgets.IntSlider(value=2, min=1, max=9, description="good"));""",
    """\
def raising(k=2):
    if k != 2:
        raise ValueError(f"the callback broke at k = {k}")
    print(f"k = {k}")


widgets.interact(raising, k=widgets.IntSlider(value=2, min=1, max=9, description="raising"));""",
    """\
def silent(k=2):
    print("the same whatever k is")


widgets.interact(silent, k=widgets.IntSlider(value=2, min=1, max=9, description="silent"));""",
    """\
lam = widgets.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.1, description="observed")
readout = widgets.Label(value="lambda = 0.50")
lam.observe(lambda change: setattr(readout, "value", f"lambda = {change['new']:.2f}"), names="value")
display(widgets.VBox([lam, readout]))""",
    """\
def choose(method="jacobi", damped=False):
    print(f"{method}, damped={damped}")


widgets.interact(
    choose,
    method=widgets.Dropdown(options=["jacobi", "newton", "quasi-newton"], description="method"),
    damped=widgets.Checkbox(value=False, description="damped"),
);""",
    "total = 1 / 0  # the cell that raises",
    "print('never runs')",
]


@pytest.fixture(scope="module")
def checks(lab: LabServer, lab_page: Any) -> Iterator[NotebookPage]:
    """The notebook above, opened from the file browser and run from the menus."""
    cells = [nbformat.v4.new_code_cell(src) for src in CELLS]
    nb = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
    nbformat.write(nb, lab.root / "zz_ui_checks.ipynb")
    lab_page.goto(lab.lab_url(), wait_until="domcontentloaded")  # the file browser lists the new file
    notebook = NotebookPage(lab_page, lab, "zz_ui_checks.ipynb")
    try:
        notebook.open()
        notebook.run_all()
    except BaseException:
        notebook.screenshot(SHOTS / "zz_ui_checks.png")
        raise
    yield notebook
    notebook.close()


def test_a_cell_that_raises_fails_with_its_traceback(checks: NotebookPage) -> None:
    with pytest.raises(UIFailure, match=r"code cell 5 raised ZeroDivisionError: division by zero") as failure:
        checks.check_cells()
    message = str(failure.value)
    assert "total = 1 / 0" in message and "--- traceback ---" in message
    assert "never runs" not in message  # the traceback of the first failure, not a list of what did not run


def test_broken_widget_callbacks_fail_and_working_controls_of_each_kind_pass(checks: NotebookPage) -> None:
    controls = {c.label: c for c in checks.controls()}
    assert set(controls) == {"good", "raising", "silent", "observed", "method", "damped"}
    assert [c.kind for c in controls.values()] == ["slider"] * 4 + ["dropdown", "checkbox"]

    def nothing(control: Control, display: Display) -> None:
        pass

    for label in ("good", "observed", "method", "damped"):
        checks.move(controls[label], nothing, timeout=60)
    assert [m.control.label for m in checks.moves] == [
        "good",
        "good",
        "observed",
        "observed",
        "method",
        "method",
        "damped",
        "damped",
    ]  # each by keyboard and by mouse
    with pytest.raises(UIFailure, match=r"'raising' .* shows a traceback:\n(?s:.*)ValueError: the callback broke"):
        checks.move(controls["raising"], nothing, timeout=60)
    with pytest.raises(UIFailure, match=r"'silent' .* changed nothing a student can see within 8 s"):
        checks.move(controls["silent"], nothing, timeout=8)
