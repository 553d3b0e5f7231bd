"""Recording results: every JSON record carries the hardware, versions, commit and command.

>>> from fpcore.results import save_json, metadata
>>> path = save_json("scan_cpu", {"rows": rows})          # doctest: +SKIP  -> build/results/scan_cpu.json

Where records go. A user's own runs never touch the repository: by default every record is written to
``build/results/`` (ignored by git), or to ``$FPCORE_RESULTS_DIR`` when that is set. Recording official
results into the tracked ``results/`` folder is a deliberate act: ``--record`` on any command that writes
records (``python -m fpcore bench scan --record``), ``FPCORE_RECORD=1`` for notebooks and grids, or
``with results.recording():`` in code. The README's tables are generated from ``results/`` alone.

Reading records back (:func:`find`, :func:`load_json`) looks in both places, your own records first, so a
notebook shows your runs beside the recorded ones.

A record names its configuration: ``save_json(..., fingerprint=fingerprint(identity))`` stores a hash of
everything that defines the run, and a record of one name is never replaced by a run of another
configuration (:class:`RecordClash`); :func:`check_target` says so before the work starts.

Records are strict JSON: a NaN or infinity is written as ``null`` and its place listed in
``meta["non_finite"]``. Nothing in ``results/`` is typed by hand.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from fpcore.files import REPO_ROOT, atomic_write, ensure_dir

__all__ = [
    "REPO_ROOT",
    "TRACKED",
    "RecordClash",
    "results_dir",
    "search_dirs",
    "is_recording",
    "set_recording",
    "recording",
    "metadata",
    "device_name",
    "git_commit",
    "fingerprint",
    "check_name",
    "check_target",
    "save_json",
    "load_json",
    "find",
]

TRACKED = REPO_ROOT / "results"  # the official results, in git; written only when recording
_RECORD_ENV = "FPCORE_RECORD"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*$")


class RecordClash(ValueError):
    """A record of this name exists for another configuration; the message says how to go on."""


# -- where records go ------------------------------------------------------------------------------------------
def is_recording() -> bool:
    """Whether records go to the tracked ``results/`` (``--record``, ``FPCORE_RECORD=1``)."""
    return os.environ.get(_RECORD_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def set_recording(on: bool = True) -> None:
    """Record into the tracked ``results/`` (or stop), in this process and the processes it starts."""
    os.environ[_RECORD_ENV] = "1" if on else "0"


@contextlib.contextmanager
def recording(on: bool = True) -> Iterator[Path]:
    """``with recording(): ...`` writes records into the tracked ``results/``; yields that folder."""
    before = os.environ.get(_RECORD_ENV)
    set_recording(on)
    try:
        yield results_dir()
    finally:
        if before is None:
            os.environ.pop(_RECORD_ENV, None)
        else:
            os.environ[_RECORD_ENV] = before


def results_dir() -> Path:
    """Where records are written: ``results/`` when recording, else ``$FPCORE_RESULTS_DIR``, else ``build/results/``.

    Not created here (:func:`check_target` and :func:`save_json` create it when something is written).
    """
    if is_recording():
        return TRACKED
    env = os.environ.get("FPCORE_RESULTS_DIR")
    return Path(env).expanduser() if env else REPO_ROOT / "build" / "results"


def search_dirs() -> list[Path]:
    """Where records are read from: :func:`results_dir` first, then the tracked ``results/``."""
    first = results_dir()
    return [first] if first.resolve() == TRACKED.resolve() else [first, TRACKED]


# -- what a record carries ---------------------------------------------------------------------------------------
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


def fingerprint(identity: Mapping[str, Any]) -> str:
    """A short hash (16 hex digits) of a configuration's identity: equal exactly when the identities are.

    ``identity`` is a JSON-like dict (a config's ``identity()``); key order and tuple-vs-list do not matter.
    """
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- writing ---------------------------------------------------------------------------------------------------
def check_name(name: str) -> str:
    """``name`` if it is a plain file stem (letters, digits, ``_ . + = -``, no leading dot), else ValueError."""
    if not isinstance(name, str) or not _NAME.match(name) or name.endswith((".json", ".png")):
        raise ValueError(
            f"record name must be a plain file stem (letters, digits and _ . + = -, no folders), got {name!r}"
        )
    return name


def _stored_fingerprint(record: dict[str, Any]) -> str | None:
    value = record.get("fingerprint")
    return value if isinstance(value, str) else None


def _clash(path: Path, want: str | None, fingerprint_of: Callable[[dict[str, Any]], str | None]) -> str | None:
    """Why the record at ``path`` may not be replaced by a run of fingerprint ``want`` (None: it may)."""
    if want is None or not path.exists():
        return None
    try:
        have = fingerprint_of(load_json(path))
    except ValueError:
        return f"{path} exists and is not a readable record"
    if have == want:
        return None
    what = "another configuration" if have else "a run recorded without a configuration fingerprint"
    return f"{path} holds {what}"


def check_target(
    name: str,
    *,
    fingerprint: str | None = None,
    directory: str | os.PathLike | None = None,
    fingerprint_of: Callable[[dict[str, Any]], str | None] = _stored_fingerprint,
) -> Path:
    """Check, before any work, that a record ``name`` can be written; return its path.

    The name must be a plain file stem, the folder must be creatable and writable, and an existing record of
    that name must be of the same configuration (``fingerprint``; ``fingerprint_of`` reads it off a stored
    record, for records that predate stored fingerprints). Raises ValueError (:class:`RecordClash`) or
    :class:`fpcore.files.WriteError`, each one line saying what to do.
    """
    check_name(name)
    directory = Path(directory) if directory is not None else results_dir()
    ensure_dir(directory, what="results folder")
    path = directory / f"{name}.json"
    why = _clash(path, fingerprint, fingerprint_of)
    if why:
        raise RecordClash(f"{why}; choose another name for this run, or move that file away to replace it")
    return path


def _strict(obj: Any, where: str, found: list[str]) -> Any:
    """``obj`` with every non-finite float replaced by None (its place appended to ``found``)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        found.append(where or "value")
        return None
    if isinstance(obj, dict):
        return {k: _strict(v, f"{where}.{k}" if where else str(k), found) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v, f"{where}[{i}]", found) for i, v in enumerate(obj)]
    return obj


def save_json(
    name: str,
    payload: dict[str, Any],
    *,
    device=None,
    directory: Path | None = None,
    fingerprint: str | None = None,
    fingerprint_of: Callable[[dict[str, Any]], str | None] = _stored_fingerprint,
) -> Path:
    """Write ``payload`` plus :func:`metadata` to ``<results_dir()>/<name>.json`` atomically; return the path.

    ``fingerprint`` (of the run's configuration) is stored in the record, and a record of that name with
    another fingerprint is never replaced (:class:`RecordClash`). The file is strict JSON (NaN and inf as
    null, listed in ``meta["non_finite"]``), mode 0644 under the usual umask.
    """
    path = check_target(name, fingerprint=fingerprint, directory=directory, fingerprint_of=fingerprint_of)
    record = {"meta": metadata(device), **payload}
    if fingerprint is not None:
        record["fingerprint"] = fingerprint
    text = json.dumps(record, indent=2, default=_jsonable)  # tensors and numpy scalars become plain numbers
    found: list[str] = []
    record = _strict(json.loads(text), "", found)
    if found:
        record["meta"]["non_finite"] = found
    text = json.dumps(record, indent=2, allow_nan=False) + "\n"
    return atomic_write(path, text.encode(), what="record")


# -- reading ---------------------------------------------------------------------------------------------------
def load_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read one record; a file that is not a JSON object raises ValueError naming it."""
    path = Path(path)
    try:
        with open(path) as fh:
            record = json.load(fh)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); restore it (git checkout) or delete it") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file; restore it (git checkout) or delete it") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a folder, not a record") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}: holds a JSON {type(record).__name__}, not a record (an object)")
    return record


def find(pattern: str, directory: str | os.PathLike | None = None) -> list[Path]:
    """Record files matching a glob (``"scan_*.json"``), sorted by name.

    ``directory`` None: :func:`search_dirs` (your own records, then the tracked ones; of two files with
    one name, yours).
    """
    if directory is not None:
        return sorted(Path(directory).glob(pattern))
    seen: dict[str, Path] = {}
    for folder in search_dirs():
        for path in sorted(folder.glob(pattern)):
            seen.setdefault(path.name, path)
    return sorted(seen.values(), key=lambda p: p.name)


def _jsonable(obj: Any):
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, (Path, torch.device, torch.dtype)):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")
