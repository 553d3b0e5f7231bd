"""Recording results: every JSON in results/ carries the hardware, versions, commit and command.

>>> from fpcore.results import save_json, metadata
>>> path = save_json("scan_cpu", {"rows": rows})          # doctest: +SKIP  -> results/scan_cpu.json

Nothing in results/ is typed by hand: notebooks and the README read these files back with
:func:`load_json` / :func:`find`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["REPO_ROOT", "results_dir", "metadata", "device_name", "git_commit", "save_json", "load_json", "find"]

REPO_ROOT = Path(__file__).resolve().parents[1]


def results_dir() -> Path:
    """``$FPCORE_RESULTS_DIR`` if set, else ``results/`` at the repository root (created if needed)."""
    path = Path(os.environ.get("FPCORE_RESULTS_DIR", REPO_ROOT / "results"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def git_commit() -> str | None:
    """The checkout's commit (with ``+dirty`` when the tree has changes), or None outside git."""
    try:
        run = lambda *a: subprocess.run(  # noqa: E731
            ["git", *a], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        commit = run("rev-parse", "HEAD")
        dirty = bool(run("status", "--porcelain", "--untracked-files=no"))
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device: torch.device | str | None = None) -> str:
    """``"NVIDIA H100 80GB HBM3"`` for a CUDA device, else the CPU's model name and core count."""
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({os.cpu_count()} cores)"


def metadata(device: torch.device | str | None = None) -> dict[str, Any]:
    """What every result records beside its figures: hardware, versions, commit, command, time."""
    from fpcore import __version__, config

    dev = torch.device(device) if device is not None else config.device()
    return {
        "device": device_name(dev),
        "device_type": dev.type,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "python_version": platform.python_version(),
        "fpcore_version": __version__,
        "commit": git_commit(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else None,
        "profile": config.profile(),
        "torch_threads": torch.get_num_threads(),
        "hostname": platform.node(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def save_json(name: str, payload: dict[str, Any], *, device=None, directory: Path | None = None) -> Path:
    """Write ``payload`` plus :func:`metadata` to ``<results>/<name>.json`` atomically; return the path."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"result name must be a plain file stem, got {name!r}")
    directory = Path(directory) if directory is not None else results_dir()
    directory.mkdir(parents=True, exist_ok=True)
    record = {"meta": metadata(device), **payload}
    path = directory / f"{name}.json"
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh, indent=2, sort_keys=False, default=_jsonable)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_json(path: str | Path) -> dict[str, Any]:
    with open(path) as fh:
        return json.load(fh)


def find(pattern: str, directory: Path | None = None) -> list[Path]:
    """Result files matching a glob (``"scan_*.json"``), sorted by name."""
    directory = Path(directory) if directory is not None else results_dir()
    return sorted(directory.glob(pattern))


def _jsonable(obj: Any):
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, (Path, torch.device, torch.dtype)):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")
