"""The set-up files agree with each other, a machine without CUDA gets the CPU build of torch, and the
library runs without the notebook and test extras."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fpcore

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PIP = {"pytorch": "torch", "cupy": "cupy-cuda12x", "playwright-python": "playwright"}
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _split(requirement: str) -> tuple[str, str]:
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+(?:\[[^\]]*\])?)\s*(.*)$", requirement)
    assert m, requirement
    return m.group(1).lower(), m.group(2).replace(" ", "")


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _pyproject() -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    project = _project()
    deps = dict(_split(r) for r in project["dependencies"])
    extras = {k: dict(_split(r) for r in v) for k, v in project["optional-dependencies"].items()}
    return deps, extras


def _environment() -> tuple[dict[str, str], dict[str, str]]:
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


def test_the_library_needs_no_jupyter_and_the_extras_bring_it():
    deps, extras = _pyproject()
    assert {"torch", "numpy", "matplotlib", "tqdm", "numba"} <= set(deps)
    assert not {"jupyterlab", "ipywidgets", "nbval", "nbconvert", "pytest", "playwright"} & set(deps)
    assert {"jupyterlab", "ipywidgets", "nbclient", "nbconvert", "jupyter-server-mathjax"} <= set(extras["notebooks"])
    assert {"fpcore[notebooks]", "pytest", "nbval", "playwright"} <= set(extras["test"])


def test_environment_yml_and_pyproject_declare_the_same_dependencies():
    deps, extras = _pyproject()
    active, optional = _environment()
    everything = {**deps, **extras["notebooks"], **extras["test"]}
    everything.pop("fpcore[notebooks]")
    assert active == everything, "environment.yml and pyproject.toml disagree"
    assert optional == extras["gpu"], "the optional GPU extra (cupy) must be the same in both"


def test_environment_yml_installs_the_package_itself():
    assert "- --no-deps -e ." in (ROOT / "environment.yml").read_text()


def test_the_version_is_written_in_one_place():
    project = _project()
    assert "version" not in project and "version" in project["dynamic"]
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["dynamic"]["version"] == {"attr": "fpcore.__version__"}
    assert importlib.metadata.version("fpcore") == fpcore.__version__


def _dry_run_setup(tmp_path: Path, nvidia_smi_status: int) -> list[str]:
    """``make -n setup`` (prints the commands, runs none) on a PATH whose nvidia-smi exits as given."""
    bin_dir = tmp_path / f"bin{nvidia_smi_status}"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"
    fake.write_text(f"#!/bin/sh\necho 'GPU 0: a stand-in'\nexit {nvidia_smi_status}\n")
    fake.chmod(0o755)
    overrides = (
        "HAS_CUDA",
        "EXTRAS",
        "TORCH_CPU",
        "TORCH_INDEX_URL",
        "OMP_WAIT_POLICY",
        "MAKEFLAGS",
        "MFLAGS",
        "MAKELEVEL",
    )
    env = {k: v for k, v in os.environ.items() if k not in overrides}  # as if typed at a fresh shell
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    out = subprocess.run(
        ["make", "-n", "-B", "setup", f"VENV={tmp_path / 'venv'}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.splitlines()


def test_setup_without_cuda_asks_pip_for_the_cpu_build_from_pytorchs_cpu_index_first(tmp_path):
    lines = _dry_run_setup(tmp_path, nvidia_smi_status=9)  # nvidia-smi there, but it finds no GPU
    cpu = "torch==2.13.0+cpu" if sys.platform.startswith("linux") else "torch==2.13.0"
    torch_line = next(i for i, ln in enumerate(lines) if "pip install" in ln and f'"{cpu}"' in ln)
    assert f"--extra-index-url {CPU_INDEX}" in lines[torch_line]  # beside PyPI and any local wheels
    assert "--retries 1" in lines[torch_line] and "--timeout 20" in lines[torch_line]  # no hang where unreachable
    package_line = next(i for i, ln in enumerate(lines) if '-e ".[notebooks,test,lint]"' in ln)
    assert torch_line < package_line, "torch must be in place before the package's dependencies are resolved"
    assert CPU_INDEX not in lines[package_line]
    kernel = next(ln for ln in lines if "ipykernel install" in ln)
    assert "--env OMP_WAIT_POLICY PASSIVE" in kernel  # fpcore.config.KERNEL_ENV, for the kernels students start


def test_setup_with_cuda_leaves_torch_to_pip_and_adds_the_gpu_extra(tmp_path):
    text = "\n".join(_dry_run_setup(tmp_path, nvidia_smi_status=0))
    assert CPU_INDEX not in text and "+cpu" not in text
    assert '-e ".[notebooks,test,lint,gpu]"' in text


def _python_without(modules: tuple[str, ...], *args: str) -> subprocess.CompletedProcess:
    """Run ``python -m fpcore ARGS`` in a Python where importing any of ``modules`` fails, as if not installed."""
    block = "; ".join(f"sys.modules[{m!r}] = None" for m in modules)
    code = f"import runpy, sys; {block}; sys.argv = ['fpcore', *{list(args)!r}]; "
    code += "runpy.run_module('fpcore', run_name='__main__')"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_command_line_works_without_the_notebook_and_test_extras():
    r = _python_without(
        ("jupyterlab", "ipywidgets", "nbval", "nbclient", "nbconvert", "playwright", "pytest"), "--help"
    )
    assert r.returncode == 0, r.stderr
    assert "reproduce" in r.stdout


def test_without_torch_the_command_line_says_what_to_do_in_one_line():
    r = _python_without(("torch",), "--help")
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "needs torch" in r.stderr and ".venv/bin/python -m fpcore" in r.stderr
