"""Benchmarks: ``python -m fpcore bench <suite> [options]`` and the helpers every suite shares.

A suite is a module listed in :data:`SUITES` that exposes ``add_arguments(parser)`` and
``run(args) -> int`` (and optionally ``HELP``, a one-line summary); adding one is one line here.
Importing a suite module must be cheap: do the heavy imports inside ``run``.

Shared helpers (scans are memory-bound, so every suite reports effective bandwidth and a ratio to a
memory-bound operation over the same bytes measured in the same run):

- :func:`time_side_by_side` times several callables in interleaved rounds (warm-up, then the median),
  so that noise from a shared machine hits them alike and their ratios stay meaningful;
- :func:`gbps`, :func:`format_table`, :func:`device_tag`;
- :func:`save` writes ``results/<name>.json`` through :func:`fpcore.results.save_json` (hardware,
  versions, commit, command) and the figure as ``results/<name>.png``.
"""

from __future__ import annotations

import argparse
import importlib
import re
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "SUITES",
    "register",
    "positive",
    "comma_list",
    "time_side_by_side",
    "gbps",
    "format_table",
    "device_tag",
    "save",
    "synchronize",
]


def positive(kind: Callable = int) -> Callable[[str], Any]:
    """An argparse ``type`` for a number > 0 of ``kind`` (int accepts 1_000), with a one-line error."""

    def parse(text: str):
        try:
            value = kind(text.replace("_", "") if kind is int else text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
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


# suite name -> module exposing add_arguments(parser) and run(args) -> int
SUITES: dict[str, str] = {
    "scan": "fpcore.scan.bench",
    "fixed-point": "fpcore.fixed_point.bench",
    "surrogates": "fpcore.models.bench",
}


def register(subparsers) -> None:
    """Add ``bench`` and one sub-command per suite to the fpcore CLI (see :mod:`fpcore.cli`)."""
    parser = subparsers.add_parser(
        "bench",
        help="run a benchmark suite (tables, results/*.json and *.png)",
        description="Run a benchmark suite; it prints a table and writes results/<suite>_<device>.json and .png.",
    )
    suites = parser.add_subparsers(dest="suite", metavar="<suite>", parser_class=type(parser))
    suites.required = True
    for name, module_name in SUITES.items():
        module = importlib.import_module(module_name)
        doc = (module.__doc__ or "").strip()
        sub = suites.add_parser(name, help=getattr(module, "HELP", doc.split("\n")[0]), description=doc)
        module.add_arguments(sub)
        sub.set_defaults(func=module.run)


def synchronize(device) -> None:
    """Wait for queued work on ``device`` (a no-op on CPU)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_side_by_side(
    fns: dict[str, Callable[[], Any]], *, device="cpu", warmup: int = 2, repeat: int = 10, min_time: float = 0.0
) -> dict[str, dict[str, float]]:
    """Time each callable, interleaved round by round; return ``{name: {"median", "min", "n"}}`` in seconds.

    Every callable runs ``warmup`` times first (compilation, caches, first-touch pages), then
    ``repeat`` rounds in which each runs once in turn (more rounds while the total is below
    ``min_time`` seconds). On CUDA each call is bracketed by synchronisation, so the times are
    wall-clock times of the finished work.
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


def gbps(nbytes: float, seconds: float) -> float:
    """Effective bandwidth in GB/s (10^9 bytes per second)."""
    return nbytes / seconds / 1e9 if seconds > 0 else float("nan")


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # nan
            return "nan"
        if value == 0.0:
            return "0"
        mag = abs(value)
        return f"{value:.2e}" if mag < 1e-2 or mag >= 1e5 else f"{value:.3g}"
    return str(value)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain-text table of ``rows`` (dicts) with the given columns, right-aligned numbers."""
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    line = "  ".join(c.rjust(w) for c, w in zip(columns, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(out)


def device_tag(device) -> str:
    """A file-name tag for a device: ``cpu``, or the GPU's name in lower case (``nvidia_h100_80gb_hbm3``)."""
    import torch

    dev = torch.device(device)
    if dev.type != "cuda":
        return dev.type
    return re.sub(r"[^a-z0-9]+", "_", torch.cuda.get_device_name(dev).lower()).strip("_")


def save(name: str, payload: dict[str, Any], figure=None, *, device=None, directory: Path | None = None) -> list[Path]:
    """Write ``<results>/<name>.json`` (with metadata) and, if given, the matplotlib ``figure`` as PNG."""
    from fpcore.results import results_dir, save_json

    paths = [save_json(name, payload, device=device, directory=directory)]
    if figure is not None:
        png = (Path(directory) if directory is not None else results_dir()) / f"{name}.png"
        figure.savefig(png, dpi=120, bbox_inches="tight")
        paths.append(png)
    return paths
