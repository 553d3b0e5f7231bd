"""Notebook housekeeping: strip outputs and execution counts in place (notebooks are committed clean).

python tools/nbtool.py strip notebooks/*.ipynb
python tools/nbtool.py check notebooks/*.ipynb    # exit 1 if any notebook holds outputs
"""

from __future__ import annotations

import sys

import nbformat


def is_clean(nb) -> bool:
    return not any(c.get("outputs") or c.get("execution_count") for c in nb.cells if c.cell_type == "code")


def strip(nb):
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cell.metadata.pop("execution", None)
    return nb


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("strip", "check"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    dirty = []
    for path in argv[1:]:
        nb = nbformat.read(path, as_version=4)
        if argv[0] == "strip":
            nbformat.write(strip(nb), path)
        elif not is_clean(nb):
            dirty.append(path)
    for path in dirty:
        print(f"{path}: holds outputs; run python tools/nbtool.py strip {path}", file=sys.stderr)
    return 1 if dirty else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
