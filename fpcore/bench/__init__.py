"""Benchmarks: ``python -m fpcore bench <suite> [options]`` and ``python -m fpcore gpu-suite``.

Every benchmark lives here, in one package, and not beside the code it measures: a benchmark is an
experiment on the public API (the surrogate table times models, scans and autograd together; the GPU suite
runs all of them), it shares one toolkit (:mod:`fpcore.bench.toolkit`), and importing ``fpcore.scan`` or
``fpcore.fixed_point`` never loads benchmark code. Imports go one way: suites -> toolkit -> nothing of
fpcore but :mod:`fpcore.results`; this module only names the suites and loads them when the command line
is built.

Suites, each a module with the same entry-point shape:

==============  =====================================  ===============================================
suite           module                                 measures
==============  =====================================  ===============================================
scan            :mod:`fpcore.bench.scan`               linear-scan providers against a memory-bound op
fixed-point     :mod:`fpcore.bench.fixed_point`        fixed-point solvers against the loop and torch.nn
block-jacobi    :mod:`fpcore.bench.block_jacobi`       block Jacobi's block length and overlap: the rule
surrogates      :mod:`fpcore.bench.surrogates`         SRU / QRNN / GILR-LSTM, parallel vs sequential
lm-speed        :mod:`fpcore.bench.lm_speed`           language-model training tokens/s, jacobi-k vs BPTT
==============  =====================================  ===============================================

``python -m fpcore gpu-suite`` (:mod:`fpcore.bench.gpu_suite`) runs the GPU checks in order, each under its
own time budget, and packs their records into one archive.

A suite module defines ``STEM`` (its record's name: ``<STEM>_<device>.json``), ``HELP``,
``add_arguments(parser)`` (after :func:`~fpcore.bench.toolkit.add_common_arguments`), ``measure(args) -> payload``
(a dict with ``config`` (``device`` in it), ``rows``, ``targets`` and ``load_average``), ``report(payload) -> str``
and ``figure(payload)`` (a matplotlib Figure). :func:`run` does the rest the same way for all: threads,
the table, one line per target, and the record (JSON + PNG through :mod:`fpcore.results`). Adding a suite is
one line in :data:`SUITES`. From Python: ``fpcore.bench.main("scan", ["--device", "cpu"])``, or
``load("scan").measure(parse_args("scan", argv))`` for the payload alone.
"""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType

from .toolkit import (
    Deadline,
    LoadWatch,
    PeakMemory,
    add_common_arguments,
    best_of,
    comma_list,
    device_tag,
    format_table,
    gbps,
    int_list,
    load_average,
    peak_memory_mb,
    pin_threads,
    positive,
    save,
    synchronize,
    time_side_by_side,
    verdict,
)

__all__ = [
    "SUITES",
    "register",
    "load",
    "parse_args",
    "run",
    "main",
    "Deadline",
    "LoadWatch",
    "PeakMemory",
    "add_common_arguments",
    "best_of",
    "comma_list",
    "device_tag",
    "format_table",
    "gbps",
    "int_list",
    "load_average",
    "peak_memory_mb",
    "pin_threads",
    "positive",
    "save",
    "synchronize",
    "time_side_by_side",
    "verdict",
]

# suite name -> module (see the module docstring for what a suite module defines)
SUITES: dict[str, str] = {
    "scan": "fpcore.bench.scan",
    "fixed-point": "fpcore.bench.fixed_point",
    "block-jacobi": "fpcore.bench.block_jacobi",
    "surrogates": "fpcore.bench.surrogates",
    "lm-speed": "fpcore.bench.lm_speed",
}


def load(suite: str) -> ModuleType:
    """The module of a suite named in :data:`SUITES`."""
    if suite not in SUITES:
        raise ValueError(f"unknown benchmark suite {suite!r}; choose from {', '.join(SUITES)}")
    return importlib.import_module(SUITES[suite])


def parser_for(module: ModuleType, parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The suite's options (the common ones first) on ``parser`` (a new one if None)."""
    parser = parser or argparse.ArgumentParser(prog=f"python -m fpcore bench {module.__name__.rsplit('.', 1)[1]}")
    add_common_arguments(parser, module.STEM)
    module.add_arguments(parser)
    return parser


def run(module: ModuleType, args: argparse.Namespace) -> int:
    """Measure with the suite ``module``, print its table and targets, and save its record unless ``--no-save``."""
    import torch

    with pin_threads(args.threads):
        payload = module.measure(args)
    print(module.report(payload))
    if payload.get("stopped_early"):
        print(payload["stopped_early"])
    for key, target in payload.get("targets", {}).items():
        print(verdict(key, target))
    if not args.no_save:
        device = torch.device(payload["config"]["device"])
        name = args.name or f"{module.STEM}_{device_tag(device)}"
        for path in save(name, payload, module.figure(payload), device=device):
            print(f"wrote {path}")
    return 0


def parse_args(suite: str, argv: list[str] | None = None) -> argparse.Namespace:
    """A suite's options as ``python -m fpcore bench <suite> ARGV`` would parse them (for notebooks)."""
    return parser_for(load(suite)).parse_args(argv or [])


def main(suite: str, argv: list[str] | None = None) -> int:
    """Run a suite from Python with command-line arguments: ``main("surrogates", ["--full"])``."""
    return run(load(suite), parse_args(suite, argv))


def _from_cli(module: ModuleType):
    def handler(args: argparse.Namespace) -> int:
        import matplotlib

        matplotlib.use("Agg")  # the command line draws into files only (never in library code: notebooks)
        return run(module, args)

    return handler


def register(subparsers) -> None:
    """Add ``bench`` (one sub-command per suite) and ``gpu-suite`` to the fpcore command line."""
    parser = subparsers.add_parser(
        "bench",
        help="run a benchmark suite (a table, and a record: <suite>_<device>.json and .png)",
        description="Run a benchmark suite; it prints a table and writes the record <suite>_<device>.json and .png.",
    )
    suites = parser.add_subparsers(dest="suite", metavar="<suite>", parser_class=type(parser))
    suites.required = True
    for name in SUITES:
        module = load(name)
        doc = (module.__doc__ or "").strip()
        sub = suites.add_parser(name, help=module.HELP, description=doc.split("\n\n")[0])
        parser_for(module, sub)
        sub.set_defaults(func=_from_cli(module))
    from . import gpu_suite

    gpu_suite.register(subparsers)
