"""``FPCORE_UI``: without a browser the JupyterLab tests skip on a laptop and fail where one is required (CI)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run_without_browser(mode: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FPCORE_UI": mode, "FPCORE_CHROMIUM": str(ROOT / "no-such-browser")}
    args = [
        "tests/ui/test_jupyterlab.py",
        "-k",
        "00_tour",
        "-q",
        "-p",
        "no:randomly",
        "-p",
        "no:nbval",
        "-o",
        "addopts=",
    ]
    return subprocess.run([sys.executable, "-m", "pytest", *args], cwd=ROOT, env=env, capture_output=True, text=True)


@pytest.mark.parametrize(
    ("mode", "code", "says"),
    [
        ("auto", 0, "1 skipped"),
        ("required", 1, "no Chromium found (FPCORE_CHROMIUM, or chromium on the PATH) (FPCORE_UI=required)"),
    ],
)
def test_a_missing_browser_skips_unless_it_is_required(mode: str, code: int, says: str) -> None:
    r = _run_without_browser(mode)
    assert r.returncode == code, r.stdout[-2000:]
    assert says in r.stdout
