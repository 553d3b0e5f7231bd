"""What every benchmark suite shares: timing, threads, memory, load, tables, argument types and records.

Scans are memory-bound and the machines are often shared, so every suite reports ratios to a baseline
timed in the same rounds, records the load average beside its timings, and saves through
:mod:`fpcore.results` (hardware, versions, commit and command in every record):

- timing: :func:`synchronize`, :func:`time_side_by_side` (interleaved rounds, median),
  :func:`best_of` (one long call, or the faster of two short ones), :class:`Deadline` (a sweep's budget);
- the machine: :func:`pin_threads` (torch and Numba together), :class:`LoadWatch` (the 1/5/15-minute load
  averages before and after), :func:`peak_memory_mb` (:class:`PeakMemory`: CUDA peak allocation, or CPU
  peak resident memory);
- reporting: :func:`gbps`, :func:`format_table`, :func:`device_tag`, :func:`machine`, :func:`verdict`,
  :func:`save`;
- command lines: :func:`positive`, :func:`comma_list`, :func:`int_list`, :func:`add_common_arguments`.

It imports nothing of fpcore at module level except :mod:`fpcore.results` inside :func:`save`, so any module
may import it without a cycle.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import math
import os
import re
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

__all__ = [
    "positive",
    "comma_list",
    "int_list",
    "add_common_arguments",
    "synchronize",
    "time_side_by_side",
    "best_of",
    "Deadline",
    "pin_threads",
    "LoadWatch",
    "load_average",
    "PeakMemory",
    "peak_memory_mb",
    "gbps",
    "format_table",
    "device_tag",
    "machine",
    "verdict",
    "save",
]


# -- command-line argument types (argparse turns their ArgumentTypeError into exit 2 with one line) -------
def positive(kind: Callable = int) -> Callable[[str], Any]:
    """An argparse ``type`` for a finite number > 0 of ``kind`` (int accepts 1_000), with a one-line error."""

    def parse(text: str):
        try:
            value = kind(text.replace("_", "") if kind is int else text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
        return value

    return parse


def comma_list(allowed: Sequence | None = None, cast: Callable = str) -> Callable[[str], list]:
    """An argparse ``type`` for a comma list (``a,b,c``) of ``cast`` values, each in ``allowed`` if given."""

    def parse(text: str) -> list:
        try:
            items = [cast(t.strip()) for t in text.split(",") if t.strip()]
        except ValueError:
            items = []
        if not items or (allowed is not None and any(t not in allowed for t in items)):
            what = f"choose from {', '.join(map(str, allowed))}" if allowed is not None else "expected a comma list"
            raise argparse.ArgumentTypeError(f"{what}; got {text!r}")
        return items

    return parse


def int_list(text: str) -> list[int]:
    """An argparse ``type`` for positive integers, comma-separated, each written ``16384``, ``2**14`` or ``2^14``."""

    def one(v: str) -> int:
        base, _, power = v.strip().replace("^", "**").partition("**")
        return int(base) ** int(power) if power else int(base)

    try:
        values = [one(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1024,2^14; got {text!r}")
    return values


def add_common_arguments(parser: argparse.ArgumentParser, stem: str) -> None:
    """The options every suite takes: --device, --threads, --name, --no-save, --no-progress, --max-minutes."""
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default: CUDA when present)")
    parser.add_argument(
        "--threads",
        type=positive(int),
        default=None,
        help="CPU threads for torch and Numba while timing (default: as they are). On a shared CPU use 1 or 2: "
        "oversubscribed OpenMP threads spin and can slow small ops down a hundredfold",
    )
    parser.add_argument("--name", default=None, help=f"record file stem (default: {stem}_<device>)")
    parser.add_argument("--no-save", action="store_true", help="print the table only, write no record")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--max-minutes",
        type=positive(float),
        default=None,
        help="start no new point after this many minutes; the record keeps what was measured and says so",
    )


# -- timing ---------------------------------------------------------------------------------------------
def synchronize(device: torch.device | str) -> None:
    """Wait for queued work on ``device`` (a no-op on CPU)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_side_by_side(
    fns: Mapping[Any, Callable[[], Any]],
    *,
    device: torch.device | str = "cpu",
    warmup: int = 2,
    repeat: int = 10,
    min_time: float = 0.0,
) -> dict[Any, dict[str, float]]:
    """Time each callable, interleaved round by round; return ``{name: {"median", "min", "n"}}`` in seconds.

    Every callable runs ``warmup`` times first (compilation, caches, first-touch pages), then ``repeat``
    rounds in which each runs once in turn (more rounds while the total is below ``min_time`` seconds), so
    that noise from a shared machine hits them alike and their ratios stay meaningful. On CUDA each call is
    bracketed by synchronisation: the times are wall-clock times of the finished work.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < repeat or (time.perf_counter() - start < min_time and rounds < 10 * repeat):
        for name, fn in fns.items():
            synchronize(device)
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - t0)
        rounds += 1
    return {k: {"median": statistics.median(v), "min": min(v), "n": len(v)} for k, v in times.items()}


def best_of(fn: Callable[[], Any], device: torch.device | str = "cpu", *, long: float = 2.0) -> tuple[Any, float]:
    """``(fn(), seconds)``: one call if it takes ``long`` seconds or more, else the faster of two calls
    (single short timings on a shared machine are noisy; long ones cost too much to repeat)."""
    best, out = math.inf, None
    for _ in range(2):
        synchronize(device)
        t0 = time.perf_counter()
        out = fn()
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
        if best >= long:
            break
    return out, best


class Deadline:
    """A time budget for a sweep: ``passed()`` once ``minutes`` have gone by (never when ``minutes`` is None);
    ``note(done, total)`` says where a sweep stopped, for its record."""

    def __init__(self, minutes: float | None):
        self.minutes, self.start = minutes, time.perf_counter()

    def passed(self) -> bool:
        return self.minutes is not None and time.perf_counter() - self.start > 60 * self.minutes

    def note(self, done: int, total: int) -> str | None:
        if done >= total or self.minutes is None:
            return None
        return f"stopped by --max-minutes {self.minutes:g} after {done} of {total} points"


# -- the machine ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def pin_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` CPU threads in torch and in Numba (both drive one OpenMP runtime); None: as is.

    Numba's threading layer resets the OpenMP thread count when it starts, so it is started here first
    (it compiles nothing), and the counts are restored afterwards.
    """
    if n is None:
        yield
        return
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    nb: Any = None  # the numba module, when it is installed
    torch_before = torch.get_num_threads()
    if "numba" in sys.modules or _has_numba():
        import numba as nb
        from numba.np.ufunc import parallel

        parallel._launch_threads()
    before = torch_before, (nb.get_num_threads() if nb else None)
    if nb:
        nb.set_num_threads(min(n, nb.config.NUMBA_NUM_THREADS))
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        if nb:
            nb.set_num_threads(before[1])


def _has_numba() -> bool:
    import importlib.util

    return importlib.util.find_spec("numba") is not None


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (how many processes competed for the cores), or None."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


class LoadWatch:
    """The load averages when created and when :meth:`record` is called: context for timings on shared CPUs."""

    def __init__(self) -> None:
        self.before = load_average()

    def record(self) -> dict[str, Any]:
        return {"before": self.before, "after": load_average(), "cpus": os.cpu_count()}


class PeakMemory:
    """Peak memory of a block in bytes (``.peak``): CUDA peak allocated bytes, or the CPU's peak resident-set
    growth above the level at entry, sampled every 2 ms."""

    def __init__(self, device: torch.device | str):
        self.device, self.peak = torch.device(device), 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        self._base = self._rss()
        self._max, self._stop = self._base, threading.Event()

        def sample() -> None:
            while not self._stop.wait(0.002):
                self._max = max(self._max, self._rss())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
        else:
            self._max = max(self._max, self._rss())
            self._stop.set()
            self._thread.join()
            self.peak = self._max - self._base
        return False


class _MallocForMeasuring:
    """While active, glibc mmaps (and so gives back on free) every block over 64 KiB, so RSS sampling sees a
    block's true peak; outside, large thresholds keep timings free of page-fault churn. No-op off glibc."""

    def __init__(self) -> None:
        try:
            self.libc: ctypes.CDLL | None = ctypes.CDLL("libc.so.6")
        except OSError:
            self.libc = None

    def _set(self, mmap_threshold: int, trim_threshold: int) -> None:
        if self.libc is not None:
            self.libc.mallopt(-3, mmap_threshold)  # M_MMAP_THRESHOLD
            self.libc.mallopt(-1, trim_threshold)  # M_TRIM_THRESHOLD
            self.libc.malloc_trim(0)

    def __enter__(self) -> _MallocForMeasuring:
        self._set(64 * 1024, 128 * 1024)
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        self._set(32 * 2**20, 64 * 2**20)
        return False


def peak_memory_mb(fn: Callable[[], Any], device: torch.device | str) -> float:
    """Peak memory of ``fn()`` in MiB, measured in a pass of its own (never during a timed run)."""
    device = torch.device(device)
    with _MallocForMeasuring() if device.type == "cpu" else contextlib.nullcontext(), PeakMemory(device) as mem:
        fn()
    return mem.peak / 2**20


# -- reporting ------------------------------------------------------------------------------------------
def gbps(nbytes: float, seconds: float) -> float:
    """Effective bandwidth in GB/s (10^9 bytes per second)."""
    return nbytes / seconds / 1e9 if seconds > 0 else float("nan")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:  # nan
            return "nan"
        if value == 0.0:
            return "0"
        mag = abs(value)
        return f"{value:.2e}" if mag < 1e-2 or mag >= 1e5 else f"{value:.3g}"
    return str(value)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain-text table of ``rows`` (dicts) with the given columns, right-aligned, ``-`` for a missing value."""
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    out = ["  ".join(c.rjust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(out)


def device_tag(device: torch.device | str) -> str:
    """A file-name tag for a device: ``cpu``, or the GPU's name in lower case (``nvidia_h100_80gb_hbm3``)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return dev.type
    return re.sub(r"[^a-z0-9]+", "_", torch.cuda.get_device_name(dev).lower()).strip("_")


def machine(payload: dict[str, Any]) -> str:
    """Where and how a payload was measured, for a figure's title: device, threads, torch, load average."""
    import torch

    from fpcore.results import device_name

    c = payload["config"]
    device = payload.get("meta", {}).get("device") or device_name(c["device"])
    version = payload.get("meta", {}).get("torch_version") or torch.__version__
    load = payload.get("load_average", {}).get("before")
    return f"{device}, {c.get('threads', '?')} thread(s), torch {version}, load {load}"


def verdict(name: str, target: dict[str, Any]) -> str:
    """One line for a target record ``{"value", "target", "met", ...}``: ``target NAME: 1.23 (goal ...) -> met``."""
    return f"target {name}: {target['value']:.3g} (goal {target['target']}) -> {'met' if target['met'] else 'NOT met'}"


def save(name: str, payload: dict[str, Any], figure: Any = None, *, device: Any = None) -> list[Path]:
    """Write the record ``<name>.json`` through :func:`fpcore.results.save_json` (which adds hardware, versions,
    commit and command, and chooses the folder) and, if given, the matplotlib ``figure`` beside it as PNG
    (the figure is closed afterwards, so a figure made for the record never shows up in a notebook)."""
    from fpcore.results import save_json

    path = save_json(name, payload, device=device)
    paths = [path]
    if figure is not None:
        png = path.with_suffix(".png")
        figure.savefig(png, dpi=120, bbox_inches="tight")
        paths.append(png)
        import matplotlib.pyplot as plt

        plt.close(figure)
    return paths
