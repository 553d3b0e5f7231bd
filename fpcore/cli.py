"""The command line: ``python -m fpcore <command> [options]``.

Each command lives in the module that owns its logic and registers itself through a
``register(subparsers)`` function that adds a parser and ``set_defaults(func=handler)``; the handler
takes the parsed arguments and returns an exit code. Adding a command is one line in ``COMMANDS``.

Bad arguments exit with status 2 and one line on stderr (never a traceback): the number types below
(:func:`positive`, :func:`non_negative`, :func:`finite`), :func:`record_name` and :func:`device` check
values where they are parsed. A command that fails on its input (a corrupt corpus or checkpoint, a full
disk, a diverged run) exits with status 1 and the error's one-line message.

Every command that writes records (``RECORDING``) gets ``--record``: without it records go to
``build/results/`` (or ``$FPCORE_RESULTS_DIR``), with it into the tracked ``results/`` (see
:mod:`fpcore.results`). The flag is added here, so a command module need not know about it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import re
import sys
from collections.abc import Callable
from typing import Any

__all__ = [
    "COMMANDS",
    "RECORDING",
    "main",
    "build_parser",
    "positive",
    "non_negative",
    "finite",
    "record_name",
    "device",
    "without_option",
    "check_environment",
    "run_command",
]

# Modules that contribute a command, in the order `--help` lists them.
COMMANDS: tuple[str, ...] = (
    "fpcore.data",
    "fpcore.reproduce",
    "fpcore.train",
    "fpcore.longdep",
    "fpcore.bench",
    "fpcore.report",
)

# Commands that write records (each of their sub-commands gets --record).
RECORDING: tuple[str, ...] = ("train", "longdep", "bench", "gpu-suite", "reproduce")

RECORD_HELP = (
    "write the record into the tracked results/ folder (official results); without it records go to "
    "build/results/ or $FPCORE_RESULTS_DIR, and the repository stays clean"
)


# -- argument types: one-line errors (exit 2) for values that would fail later ----------------------------------
def _number(kind: Callable[[str], Any], text: str) -> Any:
    try:
        value = kind(text.replace("_", "")) if kind is int else kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
        ) from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive(kind: Callable[[str], Any] = int) -> Callable[[str], Any]:
    """An argparse ``type``: a finite number > 0 of ``kind`` (int accepts ``1_000``)."""

    def parse(text: str) -> Any:
        value = _number(kind, text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def non_negative(kind: Callable[[str], Any] = int) -> Callable[[str], Any]:
    """An argparse ``type``: a finite number >= 0 of ``kind``."""

    def parse(text: str) -> Any:
        value = _number(kind, text)
        if not value >= 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
        return value

    parse.__name__ = f"non-negative {kind.__name__}"
    return parse


def finite(text: str) -> float:
    """An argparse ``type``: any finite float (not nan, not inf)."""
    return _number(float, text)


def record_name(text: str) -> str:
    """An argparse ``type``: a plain file stem for a record (no folders, no leading dot)."""
    from fpcore.results import check_name

    try:
        return check_name(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def device(text: str) -> str:
    """An argparse ``type``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` that exists here."""
    from fpcore import config

    try:
        config.device(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def without_option(argv: list[str], option: str) -> list[str]:
    """``argv`` without ``option`` and its value (``--opt V`` or ``--opt=V``)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out


# -- the parser --------------------------------------------------------------------------------------------------
_RST = re.compile(r"``(.+?)``", re.DOTALL)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and whose help shows no reStructuredText markup."""

    def error(self, message: str):  # noqa: D102 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (try '{self.prog} --help')\n")

    def format_help(self) -> str:  # docstrings double as descriptions: ``code`` reads as 'code' in a terminal
        return _RST.sub(r"'\1'", super().format_help())

    def format_usage(self) -> str:
        return _RST.sub(r"'\1'", super().format_usage())


def _leaves(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers that run something: ``parser`` itself, or each of its sub-commands' leaves."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [parser]
    return [leaf for action in subs for child in dict.fromkeys(action.choices.values()) for leaf in _leaves(child)]


def _add_record_flag(parser: argparse.ArgumentParser) -> None:
    for leaf in _leaves(parser):
        if not any("--record" in a.option_strings for a in leaf._actions):
            leaf.add_argument("--record", action="store_true", help=RECORD_HELP)


def build_parser() -> argparse.ArgumentParser:
    from fpcore import __version__

    parser = _Parser(
        prog="python -m fpcore",
        description="fpcore: recurrent networks as fixed points, parallel scans and stable truncations.",
    )
    parser.add_argument("--version", action="version", version=f"fpcore {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", parser_class=_Parser)
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    for name in RECORDING:
        if name in sub.choices:
            _add_record_flag(sub.choices[name])
    return parser


def check_environment(parser: argparse.ArgumentParser) -> None:
    """Settings read from the environment fail here, in one line (exit 2), rather than deep inside a command."""
    from fpcore import config

    for check in (config.profile, config.device):
        try:
            check()
        except ValueError as err:
            parser.exit(2, f"{parser.prog}: error: {err}\n")


def run_command(prog: str, run: Callable[[], int]) -> int:
    """``run()``'s exit code; an error on the input (``ValueError``, ``OSError``, a diverged run) is one line
    on stderr and exit 1, Ctrl-C is exit 130 with the checkpoint to resume from. ``prog`` starts the line."""
    from fpcore.checkpoint import TrainingDiverged

    try:
        return int(run() or 0)
    except KeyboardInterrupt as err:  # a trainer says which checkpoint to resume from
        print(f"interrupted: {err}" if str(err) else "interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, TrainingDiverged) as err:  # DataError, CheckpointError, WriteError: no traceback
        message = str(err).strip() or type(err).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # for commands that start copies of themselves
    check_environment(parser)
    from fpcore import results

    def run() -> int:
        # --record: exported to the environment, so notebooks run by `reproduce --record` record too
        with results.recording() if getattr(args, "record", False) else contextlib.nullcontext():
            return int(args.func(args) or 0)

    return run_command(f"{parser.prog} {args.command}", run)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
