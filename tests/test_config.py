"""fpcore.config: the profile switch, device choice and seeding."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from fpcore import config


def test_quick_is_the_default_profile(monkeypatch):
    monkeypatch.delenv("FPCORE_PROFILE", raising=False)
    assert config.profile() == "quick" and not config.is_full()
    assert config.pick(quick=1, full=2) == 1


def test_profile_is_read_at_call_time_and_set_profile_exports_it(monkeypatch):
    monkeypatch.setenv("FPCORE_PROFILE", "FULL ")
    assert config.profile() == "full" and config.pick(quick=1, full=2) == 2
    config.set_profile("quick")
    assert config.profile() == "quick"
    import os

    assert os.environ["FPCORE_PROFILE"] == "quick"


def test_bad_profile_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("FPCORE_PROFILE", "fast")
    with pytest.raises(ValueError, match="FPCORE_PROFILE='fast' is not a profile; use one of quick, full"):
        config.profile()
    with pytest.raises(ValueError, match="unknown profile"):
        config.set_profile("medium")


def test_device_prefers_cuda_only_when_there_is_one(monkeypatch):
    monkeypatch.delenv("FPCORE_DEVICE", raising=False)
    assert config.device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert config.device("cpu") == torch.device("cpu")
    monkeypatch.setenv("FPCORE_DEVICE", "cpu")
    assert config.device() == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees no CUDA device"):
            config.device("cuda")


def test_seed_everything_makes_runs_repeat():
    def draw():
        gen = config.seed_everything(7)
        return random.random(), np.random.rand(), torch.rand(3), torch.rand(2, generator=gen)

    a, b = draw(), draw()
    assert a[0] == b[0] and a[1] == b[1]
    assert torch.equal(a[2], b[2]) and torch.equal(a[3], b[3])
    with pytest.raises(ValueError, match="non-negative int"):
        config.seed_everything(-1)


def test_describe_names_profile_device_and_torch():
    line = config.describe()
    assert "profile quick" in line and torch.__version__ in line and "device" in line
