"""Execute the notebook series and keep what it shows: ``python -m fpcore reproduce``.

Each notebook in ``notebooks/`` runs top to bottom in a fresh kernel of this Python (the profile is
passed through ``$FPCORE_PROFILE``), and is written, executed, to ``<out>/notebooks/`` and as HTML
to ``<out>/html/`` as soon as it finishes, so an interrupted run keeps what it had done. A notebook
that fails is still written (with the error in place) and the command exits with status 1 after
running the rest. ``<out>/summary.json`` lists each notebook's status and wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _kernel_manager():
    """A kernel manager whose "python3" kernel is this interpreter, whatever kernelspecs are installed."""
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
    from jupyter_client.manager import KernelManager

    class ThisPython(KernelSpecManager):
        def get_kernel_spec(self, kernel_name):
            return KernelSpec(
                argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                display_name=f"Python {sys.version_info.major}.{sys.version_info.minor} (fpcore)",
                language="python",
            )

    return KernelManager(kernel_name="python3", kernel_spec_manager=ThisPython())


def run_notebook(path: Path, out: Path, *, timeout: int | None) -> tuple[bool, float, str]:
    """Execute one notebook; write it (and its HTML) under ``out``; return (ok, seconds, error line)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    from nbconvert import HTMLExporter

    nb = nbformat.read(path, as_version=4)
    km = _kernel_manager()
    client = NotebookClient(nb, km=km, timeout=timeout, resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    ok, error = True, ""
    try:
        client.execute()
    except CellExecutionError as err:
        ok = False
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # drop the traceback's terminal colours
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        error = lines[-1] if lines else type(err).__name__
    except Exception as err:  # a dead kernel or a timeout: keep going with the next notebook
        ok, error = False, f"{type(err).__name__}: {err}"
    finally:
        if km.has_kernel:  # the client does not own a kernel manager it was given
            km.shutdown_kernel(now=False)
    seconds = time.perf_counter() - start
    (out / "notebooks").mkdir(parents=True, exist_ok=True)
    (out / "html").mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out / "notebooks" / path.name)
    html, _ = HTMLExporter().from_notebook_node(nb)
    (out / "html" / f"{path.stem}.html").write_text(html, encoding="utf-8")
    return ok, seconds, error


def reproduce(out: Path, *, profile: str = "quick", only: list[str] | None = None, timeout: int | None = None) -> int:
    from tqdm.auto import tqdm

    from fpcore import config

    config.set_profile(profile)
    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if only:
        paths = [p for p in paths if any(key in p.stem for key in only)]
        if not paths:
            raise ValueError(f"no notebook in {NOTEBOOKS} matches {only}")
    out.mkdir(parents=True, exist_ok=True)
    summary = {"profile": profile, "notebooks": []}
    failed = 0
    bar = tqdm(paths, desc=f"notebooks ({profile})", unit="nb")
    for path in bar:
        bar.set_postfix_str(path.stem)
        ok, seconds, error = run_notebook(path, out, timeout=timeout)
        failed += not ok
        status = "ok" if ok else f"FAILED: {error}"
        tqdm.write(f"{path.name:<48} {seconds:7.1f} s  {status}")
        summary["notebooks"].append({"name": path.name, "ok": ok, "seconds": round(seconds, 1), "error": error})
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    total = sum(n["seconds"] for n in summary["notebooks"])
    print(
        f"{len(paths) - failed} of {len(paths)} notebooks ran in {total:.0f} s; executed notebooks in "
        f"{out / 'notebooks'}, HTML in {out / 'html'}"
    )
    return 1 if failed else 0


def register(sub: argparse._SubParsersAction) -> None:
    from fpcore import cli

    p = sub.add_parser(
        "reproduce",
        help="execute every notebook (quick profile by default) into a build folder, with HTML",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--out", type=Path, default=Path("build"), help="output folder (default: build)")
    p.add_argument(
        "--profile",
        choices=("quick", "full"),
        default=os.environ.get("FPCORE_PROFILE", "quick"),
        help="profile to run the notebooks in (default: $FPCORE_PROFILE or quick)",
    )
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only notebooks whose name contains NAME")
    p.add_argument(
        "--timeout",
        type=cli.positive(int),
        default=None,
        help="per-cell timeout in seconds (default: 900 in quick, none in full)",
    )
    p.set_defaults(
        func=lambda a: reproduce(
            a.out,
            profile=a.profile,
            only=a.only,
            timeout=a.timeout if a.timeout is not None else (900 if a.profile == "quick" else None),
        )
    )
