"""Every notebook as a student meets it: JupyterLab in a headless Chromium, run from the menus, widgets moved.

nbval runs the notebooks in a bare kernel, where a widget is never drawn and a broken callback passes
(its first render runs once). Here each notebook of ``notebooks/`` is opened in JupyterLab (a copy),
its outputs cleared, "Run All Cells" chosen from the Run menu, and every cell waited for; a cell that
raised fails the test with its traceback. Then every ipywidgets control is moved by keyboard and by
mouse, and the test waits for what a student should see: the control's own readout changes, the
output beside it (text or picture) changes, and no traceback appears. A screenshot of each notebook
goes to ``build/ui/<notebook>.png``, also when the test fails.

How to run it, and what happens without a browser: see ``conftest.py`` (``FPCORE_UI``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .conftest import VIEWPORT
from .lab import Control, Display, LabServer, NotebookPage, UIFailure

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SHOTS = ROOT / "build" / "ui"


@dataclass(frozen=True)
class Expect:
    """What a student should see after moving one control, beyond "the output changed".

    ``images``: how many pictures the output shows after the move (a redraw replaces the figure, it
    does not pile a second one under it); ``text``: a regular expression the output's text must match,
    where ``{value}`` stands for the control's new value as its readout shows it.
    """

    images: int | None = None
    text: str | None = None


# Per notebook (name prefix): every control a student finds in it, by its label, and what moving it shows.
# The labels are exact: a control that failed to appear (a widget cell that only printed its repr, say),
# or one added without an entry here, fails the notebook's test. A notebook not listed has no controls.
REDRAW = Expect(images=1)  # the figure is drawn again for the new value, in place of the old one
EXPECT: dict[str, dict[str, Expect]] = {
    "01_": {"log2 T": REDRAW, "log2 P": REDRAW},  # depth and work of every scan for T = 2^i, P = 2^j
    "03_": {"iterations k": REDRAW},  # which inputs reach s_t after k Jacobi iterations
    "04_": {"λ = ||W||₂": REDRAW, "window k": REDRAW},  # truncation error against k, one unit's trace
    "05_": {"||W_hh||_2": REDRAW, "alpha": REDRAW},  # Jacobi, Newton and damped Newton at that norm and alpha
}


def expected_controls(notebook: str) -> list[str]:
    return sorted(next((v for k, v in EXPECT.items() if notebook.startswith(k)), {}))


def expectation(notebook: str) -> Callable[[Control, Display, str], None]:
    rules = next((v for k, v in EXPECT.items() if notebook.startswith(k)), {})

    def check(control: Control, display: Display, value: str) -> None:
        rule = rules.get(control.label)
        if rule is None:
            raise UIFailure(f"{notebook}: a control labelled {control.label!r} that EXPECT does not list")
        if rule.images is not None and len(display.images) != rule.images:
            raise UIFailure(
                f"{notebook}: after moving '{control.label}' to {value} the output shows {len(display.images)} "
                f"picture(s), not {rule.images}"
            )
        if rule.text is not None:
            pattern = rule.text.replace("{value}", re.escape(value))
            if not re.search(pattern, display.text):
                raise UIFailure(
                    f"{notebook}: after moving '{control.label}' to {value} the output reads "
                    f"{display.text[-300:]!r}, which does not match {pattern!r}"
                )

    return check


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_and_its_widgets_respond_in_jupyterlab(path: Path, lab: LabServer, lab_page: Any) -> None:
    start = time.monotonic()
    nb = NotebookPage(lab_page, lab, path.name)
    shot = SHOTS / f"{path.stem}.png"
    phases: dict[str, float] = {}
    try:
        t = time.monotonic()
        nb.open()
        phases["open"] = time.monotonic() - t
        ran = nb.run_all()
        t = time.monotonic()
        nb.check_cells()
        phases["save+check"] = time.monotonic() - t
        check = expectation(path.stem)
        t = time.monotonic()
        moves = nb.move_every_control(lambda c, d: check(c, d, nb.value(c)))
        phases["widgets"] = time.monotonic() - t
        moved = sorted({m.control.label for m in moves})
        if moved != expected_controls(path.stem):
            raise UIFailure(f"{path.name}: the controls moved were {moved}, not {expected_controls(path.stem)}")
        t = time.monotonic()
        nb.screenshot(shot)
        phases["shot"] = time.monotonic() - t
        nb.close()
    except BaseException:
        try:
            nb.screenshot(shot)
        except Exception:  # the page may be gone; the failure itself matters more
            pass
        lab.shutdown_kernels()
        lab_page.goto(lab.lab_url(), wait_until="domcontentloaded")  # a clean app for the next notebook
        raise
    finally:
        lab_page.set_viewport_size(VIEWPORT)
    slowest = sorted(nb.cell_seconds().items(), key=lambda kv: -kv[1])[:3]
    lines = [
        f"{path.name}: ran in {ran:.0f} s; {len(moves)} widget move(s); {time.monotonic() - start:.0f} s in all; "
        f"screenshot {shot.relative_to(ROOT)}; " + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items()),
        "  slowest code cells: " + ", ".join(f"{i} ({s:.1f} s)" for i, s in slowest),
    ]
    lines += [
        f"  {m.control.label!r} ({m.control.kind}) by {m.how}: {m.before} -> {m.after} in {m.seconds:.1f} s"
        for m in moves
    ]
    print("\n" + "\n".join(lines))
    with open(SHOTS / "summary.txt", "a", encoding="utf-8") as summary:  # .ci/run prints it
        summary.write("\n".join(lines) + "\n")
