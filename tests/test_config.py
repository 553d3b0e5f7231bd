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


@pytest.mark.parametrize(
    ("cores", "load", "threads"),
    [(2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 7.5, 1), (8, 3.4, 5), (8, 0.0, 8), (1, 0.0, 1)],
)
def test_auto_threads_leave_the_busy_cores_to_their_owners(cores, load, threads):
    assert config.threads_for_load(cores, load) == threads


def test_set_threads_takes_a_count_all_or_auto_and_rejects_the_rest(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert config.set_threads(1) == 1 and torch.get_num_threads() == 1
        assert config.set_threads("all") == config.cpu_count() == torch.get_num_threads()
        assert 1 <= config.set_threads("auto") <= config.cpu_count()
        monkeypatch.setenv("FPCORE_THREADS", "1")
        assert config.set_threads() == 1
        for bad in (0, "-2", "many"):
            with pytest.raises(ValueError, match="threads must be a positive int, 'all' or 'auto'"):
                config.set_threads(bad)
    finally:
        torch.set_num_threads(before)


def _threads_after_import(env: dict[str, str], in_kernel: bool, load: float = 0.0) -> int:
    """torch's thread count in a fresh Python after ``import fpcore.config`` (in a Jupyter kernel or not),
    with the one-minute load average reading ``load``."""
    import os
    import subprocess
    import sys

    fake_kernel = "import sys, types; sys.modules['ipykernel'] = types.ModuleType('ipykernel'); " if in_kernel else ""
    fake_load = f"import os; os.getloadavg = lambda: ({load}, {load}, {load}); "
    code = fake_kernel + fake_load + "import torch; import fpcore.config; print(torch.get_num_threads())"
    clean = {k: v for k, v in os.environ.items() if k not in ("FPCORE_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


@pytest.mark.skipif(config.cpu_count() < 2, reason="needs two cores to tell one thread from the default")
def test_threads_are_chosen_at_import_only_when_asked():
    assert _threads_after_import({"FPCORE_THREADS": "1"}, in_kernel=False) == 1
    assert _threads_after_import({}, in_kernel=False) == config.cpu_count()  # a library import changes nothing
    assert _threads_after_import({}, in_kernel=True) == config.cpu_count()  # nor does a kernel's
    assert _threads_after_import({"FPCORE_THREADS": "auto"}, in_kernel=True, load=0.0) == config.cpu_count()
    assert _threads_after_import({"FPCORE_THREADS": "auto"}, in_kernel=True, load=9.0) == 1
