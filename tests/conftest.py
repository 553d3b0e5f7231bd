"""Shared fixtures and markers for the fpcore test suite."""

from __future__ import annotations

import signal

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run the long cases (marked slow; skipped by default)")


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``gpu`` when torch sees no CUDA device (the CPU suite passes on its own), and tests
    marked ``slow`` unless ``--slow`` is given."""
    skips = []
    if not torch.cuda.is_available():
        skips.append(("gpu", pytest.mark.skip(reason="needs a CUDA device")))
    if not config.getoption("--slow"):
        skips.append(("slow", pytest.mark.skip(reason="slow: run with --slow")))
    for item in items:
        for keyword, skip in skips:
            if keyword in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _quick_profile(monkeypatch):
    """Unit tests run in the quick profile unless a test switches it itself."""
    monkeypatch.setenv("FPCORE_PROFILE", "quick")


@pytest.fixture(autouse=True)
def _scratch_outputs(monkeypatch, tmp_path_factory):
    """Records and checkpoints a test writes go to its own scratch folders, never into the checkout."""
    monkeypatch.setenv("FPCORE_RESULTS_DIR", str(tmp_path_factory.mktemp("results")))
    monkeypatch.setenv("FPCORE_CHECKPOINT_DIR", str(tmp_path_factory.mktemp("checkpoints")))
    monkeypatch.delenv("FPCORE_RECORD", raising=False)


@pytest.fixture
def ctrl_c_reaches_python():
    """SIGINT handled by Python's default handler, as in a terminal. A run started in the background (``nohup``,
    ``&`` in a script, some CI runners) inherits SIGINT ignored: no Ctrl-C reaches it, and GracefulInterrupt
    rightly stays out of the way."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)
