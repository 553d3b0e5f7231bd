"""The set-up files agree with each other, and a machine without CUDA gets the CPU build of torch."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PIP = {"pytorch": "torch", "cupy": "cupy-cuda12x"}


def _split(requirement: str) -> tuple[str, str]:
    name, spec = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", requirement).groups()
    return name.lower(), spec.replace(" ", "")


def _pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = dict(_split(r) for r in project["dependencies"])
    extras = {k: dict(_split(r) for r in v) for k, v in project["optional-dependencies"].items()}
    return deps, extras


def _environment():
    """Conda dependencies of environment.yml: (active, commented-out optional) as {pip name: spec}."""
    active, optional = {}, {}
    text = (ROOT / "environment.yml").read_text()
    for line in text.split("\ndependencies:\n", 1)[1].splitlines():
        m = re.match(r"^  (#\s*)?- ([A-Za-z][A-Za-z0-9_.\-]*)(.*)$", line)
        if not m or m.group(2) in ("python", "pip"):
            continue
        name, spec = _split(m.group(2) + m.group(3))
        (optional if m.group(1) else active)[CONDA_TO_PIP.get(name, name)] = spec
    return active, optional


def test_environment_yml_and_pyproject_declare_the_same_dependencies():
    deps, extras = _pyproject()
    active, optional = _environment()
    assert {"torch", "numpy", "matplotlib", "jupyterlab", "ipywidgets", "nbval", "tqdm"} <= set(deps)
    assert active == {**deps, **extras["test"]}, "environment.yml and pyproject.toml disagree"
    assert optional == extras["gpu"], "the optional GPU extra (cupy) must be the same in both"


def test_environment_yml_installs_the_package_itself():
    assert "- --no-deps -e ." in (ROOT / "environment.yml").read_text()


def test_setup_pins_cpu_torch_before_installing_the_package_without_cuda(tmp_path):
    """`make setup` on a machine without CUDA installs torch==2.13.0 first, then fpcore (dry run)."""
    out = subprocess.run(
        ["make", "-n", "-B", "setup", f"VENV={tmp_path / 'venv'}", "HAS_CUDA="],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = out.splitlines()
    torch_line = next(i for i, ln in enumerate(lines) if '"torch==2.13.0"' in ln)
    package_line = next(i for i, ln in enumerate(lines) if '-e ".[test]"' in ln)
    assert torch_line < package_line
    with_cuda = subprocess.run(
        ["make", "-n", "-B", "setup", f"VENV={tmp_path / 'venv'}", "HAS_CUDA=1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "torch==2.13.0" not in with_cuda and '-e ".[test,gpu]"' in with_cuda
