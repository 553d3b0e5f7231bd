"""The command line: ``python -m fpcore <command> [options]``.

Each command lives in the module that owns its logic and registers itself through a
``register(subparsers)`` function that adds a parser and ``set_defaults(func=handler)``; the handler
takes the parsed arguments and returns an exit code. Adding a command is one line in ``COMMANDS``.

Bad arguments exit with status 2 and one line on stderr (never a traceback); a command that fails on
its input (a corrupt corpus, a bad value) exits with status 1 and the error's message.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that contribute a command, in the order `--help` lists them.
COMMANDS: tuple[str, ...] = (
    "fpcore.data",
    "fpcore.reproduce",
    "fpcore.train",
    "fpcore.longdep",
    "fpcore.bench",
    "fpcore.report",
)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: ``prog: error: message (try 'prog --help')``."""

    def error(self, message: str):  # noqa: D102 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (try '{self.prog} --help')\n")


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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as err:  # DataError is a ValueError: say it, no traceback
        print(f"{parser.prog} {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
