"""The HTML that ``python -m fpcore reproduce`` writes reads offline: opened in Chromium with every request
off this machine refused, its formulas are typeset by the shipped MathJax and its widget shows a figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat

from fpcore import reproduce

MARKDOWN = "A fixed point $\\mathbf{s} = F(\\mathbf{s})$ and a scan $$h_t = a_t \\odot h_{t-1} + b_t.$$"
WIDGET = """\
import ipywidgets as widgets
import matplotlib.pyplot as plt

def show(k=3):
    plt.plot(range(k))
    plt.show()

widgets.interact(show, k=widgets.IntSlider(value=3, min=1, max=9, description="window k"));"""


def test_executed_html_typesets_its_formulas_with_no_network(browser: Any, tmp_path: Path) -> None:
    src = tmp_path / "00_offline.ipynb"
    cells = [nbformat.v4.new_markdown_cell(MARKDOWN), nbformat.v4.new_code_cell(WIDGET)]
    nbformat.write(nbformat.v4.new_notebook(cells=cells), src)
    ok, _, error = reproduce.run_notebook(src, tmp_path / "build", timeout=300)
    assert ok, error
    html = tmp_path / "build" / "html" / "00_offline.html"

    context = browser.new_context()
    refused: list[str] = []

    def offline(route: Any) -> None:
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    context.route("**/*", offline)
    page = context.new_page()
    try:
        page.goto(html.as_uri(), wait_until="load")
        try:
            page.wait_for_function("() => window.MathJax?.Hub?.queue.pending === 0", timeout=30_000)
        except Exception:  # MathJax never loaded: the asserts below say so
            pass
        typeset = page.evaluate("() => document.querySelectorAll('.MathJax, .MathJax_Display').length")
        raw = page.evaluate("() => document.body.innerText.includes('$h_t')")
        images = page.evaluate("() => [...document.querySelectorAll('img')].filter(i => i.naturalWidth > 0).length")
    finally:
        context.close()
    assert typeset >= 2 and not raw, f"formulas not typeset offline ({typeset} typeset; refused {refused})"
    assert images == 1, "the widget's last figure, from its stored state"
    assert not [u for u in refused if "mathjax" in u.lower()], refused
