"""``python -m fpcore reproduce``: HTML that reads offline (shipped MathJax, widgets drawn from their state)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from fpcore import reproduce

WIDGET_CELL = """\
import ipywidgets as widgets
import matplotlib.pyplot as plt

def show(k=3):
    plt.plot(range(k))
    plt.title(f"k = {k}")
    plt.show()

widgets.interact(show, k=widgets.IntSlider(value=3, min=1, max=9, description="window k"));
"""


def write_notebook(path: Path, *cells) -> Path:
    nbformat.write(nbformat.v4.new_notebook(cells=list(cells)), path)
    return path


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> tuple[Path, bool]:
    """A notebook with a formula and a widget, run by ``reproduce.run_notebook``: (its HTML, ok)."""
    tmp = tmp_path_factory.mktemp("reproduce")
    src = write_notebook(
        tmp / "00_math.ipynb",
        nbformat.v4.new_markdown_cell(
            "The fixed point $\\mathbf{s} = F(\\mathbf{s})$ and $$h_t = a_t h_{t-1} + b_t.$$"
        ),
        nbformat.v4.new_code_cell(WIDGET_CELL),
    )
    ok, _, error = reproduce.run_notebook(src, tmp / "build", timeout=300)
    assert ok, error
    return tmp / "build" / "html" / "00_math.html", ok


def test_html_loads_the_mathjax_shipped_with_the_install_not_one_on_the_internet(executed):
    html_path, _ = executed
    html = html_path.read_text()
    scripts = re.findall(r'<script[^>]*\bsrc="([^"]*)"', html)
    mathjax = [s for s in scripts if "mathjax" in s.lower()]
    assert mathjax == [f"mathjax/MathJax.js?config={reproduce.MATHJAX_CONFIG}"], scripts
    assert (html_path.parent / "mathjax" / "MathJax.js").is_file()
    config = reproduce.MATHJAX_CONFIG.split(",")[0]
    assert (html_path.parent / "mathjax" / "config" / f"{config}.js").is_file(), "the configuration must be shipped"
    assert not [s for s in scripts if "mathjax" in s.lower() and "://" in s]


def test_html_shows_what_a_widget_last_drew_and_the_values_of_its_controls(executed):
    html_path, _ = executed
    html = html_path.read_text()
    assert "An interactive widget, shown at window k = 3" in html
    assert "data:image/png;base64," in html  # the figure the widget's Output held
    assert reproduce.WIDGET_VIEW not in html, "a widget view left in would load its renderer from the internet"
    executed_nb = nbformat.read(html_path.parents[1] / "notebooks" / "00_math.ipynb", as_version=4)
    assert reproduce.WIDGET_STATE in executed_nb.metadata["widgets"], "the executed notebook keeps the widget state"


def test_kernel_talks_over_local_sockets_and_gets_the_kernel_environment(tmp_path):
    km = reproduce._kernel_manager()
    assert km.transport == "ipc" and Path(km.ip).is_absolute()
    (tmp_path / "notebooks").mkdir()
    cell = "import os\nprint('ran with OpenMP waits', os.environ['OMP_WAIT_POLICY'])"
    write_notebook(tmp_path / "notebooks" / "00_ok.ipynb", nbformat.v4.new_code_cell(cell))
    code = (
        "import sys; from pathlib import Path; from fpcore import reproduce; "
        f"reproduce.NOTEBOOKS = Path({str(tmp_path / 'notebooks')!r}); "
        f"sys.exit(reproduce.reproduce(Path({str(tmp_path / 'build')!r}), timeout=300))"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "without encryption" not in r.stderr + r.stdout
    ran = nbformat.read(tmp_path / "build" / "notebooks" / "00_ok.ipynb", as_version=4)
    assert ran.cells[0].outputs[0]["text"] == "ran with OpenMP waits PASSIVE\n"  # config.KERNEL_ENV


@pytest.mark.parametrize("value", ["-5", "0", "ten"])
def test_timeout_must_be_a_positive_whole_number(value, capsys):
    from fpcore import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["reproduce", "--timeout", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--timeout" in err[0] and value in err[0], err


def test_kernel_sockets_fit_the_path_limit_under_a_deep_runtime_folder(tmp_path, monkeypatch):
    deep = tmp_path / ("d" * 60) / "runtime"
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(deep))
    km = reproduce._kernel_manager()
    assert len(f"{km.ip}-12345") < 100 and not km.ip.startswith(str(deep))
