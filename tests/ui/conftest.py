"""Fixtures of the JupyterLab suite: one server and one headless Chromium for the whole run.

``FPCORE_UI`` chooses what happens without a browser:

- ``auto`` (the default): run where Chromium and Playwright are installed, else skip with the reason;
- ``required`` (CI): a missing browser or Playwright fails the suite;
- ``off``: skip the suite.

``FPCORE_CHROMIUM`` names the browser (default: ``chromium`` on the PATH, as Debian installs it).
Playwright's own browser download is not used: it needs the internet, and Debian's Chromium works.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .lab import LabServer

MODES = ("auto", "required", "off")
# Flags headless Chromium needs in a container: no sandbox as root, /tmp instead of a small /dev/shm, no GPU.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]
VIEWPORT = {"width": 1280, "height": 900}


def ui_mode() -> str:
    mode = os.environ.get("FPCORE_UI", "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise pytest.UsageError(f"FPCORE_UI={mode!r}: use one of {', '.join(MODES)}")
    return mode


def chromium_path() -> str | None:
    named = os.environ.get("FPCORE_CHROMIUM")
    if named:
        return named if Path(named).is_file() else shutil.which(named)
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


def _missing(reason: str) -> None:
    """Skip on a laptop without the browser; fail where the browser is required."""
    if ui_mode() == "required":
        pytest.fail(f"{reason} (FPCORE_UI=required)", pytrace=False)
    pytest.skip(f"{reason}; install it (Debian: apt-get install chromium) or set FPCORE_UI=off to silence this")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if ui_mode() == "off":
        pytest.skip("FPCORE_UI=off")
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        _missing("the Python package playwright is not installed (pip install playwright)")
    path = chromium_path()
    if path is None:
        _missing("no Chromium found (FPCORE_CHROMIUM, or chromium on the PATH)")
    with sync_playwright() as pw:
        try:
            chromium = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, headless=True)
        except Error as err:
            _missing(f"Chromium at {path} did not start: {str(err).splitlines()[0]}")
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def lab(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    """JupyterLab on 127.0.0.1 serving a copy of notebooks/ (quick profile), stopped and cleaned up after."""
    root = Path(__file__).resolve().parents[2]
    (root / "build" / "ui" / "summary.txt").unlink(missing_ok=True)  # this run's lines only
    env = {
        **os.environ,
        "FPCORE_PROFILE": os.environ.get("FPCORE_PROFILE", "quick"),
        # torch's threads in each kernel: the cores the machine's load leaves free when the kernel starts
        # (fpcore.config.set_threads); two threads fighting a busy neighbour slowed notebooks many times over
        "FPCORE_THREADS": os.environ.get("FPCORE_THREADS", "auto"),
    }
    server = LabServer(tmp_path_factory.mktemp("jupyterlab"), root / "notebooks", env)
    start = time.monotonic()
    try:
        yield server.start()
    finally:
        server.stop()
        summary = root / "build" / "ui" / "summary.txt"
        if summary.exists():  # .ci/run prints it
            with open(summary, "a", encoding="utf-8") as out:
                out.write(f"JupyterLab tests: {time.monotonic() - start:.0f} s from the server's start to its stop\n")


@pytest.fixture(scope="session")
def lab_page(browser: Any, lab: LabServer) -> Iterator[Any]:
    """One JupyterLab page for the whole run (loading the app once); each test opens its notebook in it."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.goto(lab.lab_url(), wait_until="domcontentloaded", timeout=180_000)
    page.wait_for_selector(".jp-DirListing-item", timeout=180_000)
    yield page
    context.close()
