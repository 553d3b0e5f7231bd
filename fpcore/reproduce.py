"""Execute the notebook series and keep what it shows: ``python -m fpcore reproduce``.

Each notebook in notebooks/ runs top to bottom in a fresh kernel of this Python (the profile is
passed through $FPCORE_PROFILE), and is written, executed, to <out>/notebooks/ and as HTML to
<out>/html/ as soon as it finishes, so an interrupted run keeps what it had done. A notebook that
fails is still written (with the error in place) and the command exits with status 1 after running
the rest. <out>/summary.json lists each notebook's status and wall time.

The HTML reads offline: formulas are typeset by the MathJax that the install ships (the
jupyter-server-mathjax package), copied once to <out>/html/mathjax/, and each widget shows what it
last drew (its figure, taken from the widget state stored in the executed notebook) with the values
of its controls, since a static page cannot run the kernel a widget talks to.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
MATHJAX_CONFIG = "TeX-AMS-MML_HTMLorMML-full,Safe"  # a configuration the shipped MathJax holds
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
NEEDS = "the notebooks extra (pip install -e '.[notebooks]'; `make setup` installs it)"


def _kernel_manager():
    """A kernel manager whose "python3" kernel is this interpreter, whatever kernelspecs are installed,
    with :data:`fpcore.config.KERNEL_ENV` in its environment (OpenMP threads that sleep while they wait).

    On POSIX the kernel talks over local (IPC) sockets, not TCP: nothing listens on the network and
    ipykernel has no reason to warn about unencrypted TCP.
    """
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
    from jupyter_client.manager import KernelManager

    from fpcore import config

    class ThisPython(KernelSpecManager):
        def get_kernel_spec(self, kernel_name):
            return KernelSpec(
                argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                display_name=f"Python {sys.version_info.major}.{sys.version_info.minor} (fpcore)",
                language="python",
                env={k: os.environ.get(k, v) for k, v in config.KERNEL_ENV.items()},
            )

    if os.name != "posix":
        return KernelManager(kernel_name="python3", kernel_spec_manager=ThisPython())
    from jupyter_core.paths import jupyter_runtime_dir

    # The socket paths must be absolute: the kernel starts in the notebook's folder, this process does not.
    # A socket's path is limited to about 100 bytes: a deep runtime folder falls back to the temporary one.
    runtime = Path(jupyter_runtime_dir())
    if len(str(runtime)) > 60:
        runtime = Path(tempfile.gettempdir())
    runtime.mkdir(parents=True, exist_ok=True)
    ip = str(runtime / f"fpcore-{os.getpid()}-{uuid.uuid4().hex[:8]}-ipc")
    return KernelManager(kernel_name="python3", kernel_spec_manager=ThisPython(), transport="ipc", ip=ip)


def mathjax_beside(html_dir: Path) -> str:
    """Copy the shipped MathJax into ``html_dir/mathjax`` (once); return the relative URL to load it from."""
    import jupyter_server_mathjax

    src = Path(jupyter_server_mathjax.__file__).parent / "static"
    dst = html_dir / "mathjax"
    if not (dst / "MathJax.js").is_file():
        shutil.copytree(src, dst, dirs_exist_ok=True)
    return f"mathjax/MathJax.js?config={MATHJAX_CONFIG}"


def _widget_outputs(model_id: str, state: dict[str, Any], seen: set[str]) -> tuple[list[Any], list[str]]:
    """What a widget (and its children) last showed: Output widgets' outputs, and 'label = value' lines."""
    model = state.get(model_id)
    if model is None or model_id in seen:
        return [], []
    seen.add(model_id)
    s = model.get("state", {})
    outputs, values = list(s.get("outputs", [])), []
    if "value" in s and model.get("model_name", "").endswith(("SliderModel", "DropdownModel", "CheckboxModel")):
        value = s.get("_options_labels", [None])[s["value"]] if "DropdownModel" in model["model_name"] else s["value"]
        values.append(f"{s.get('description') or 'value'} = {value}")
    for child in s.get("children", []):
        ref = child[len("IPY_MODEL_") :] if isinstance(child, str) and child.startswith("IPY_MODEL_") else None
        if ref:
            more, vals = _widget_outputs(ref, state, seen)
            outputs += more
            values += vals
    return outputs, values


def static_widgets(nb):
    """A copy of ``nb`` in which each widget view is replaced by what it last showed, for a static page.

    The executed notebook keeps the widget state (JupyterLab redraws the widgets from it); the HTML
    cannot run them, and its widget renderer would come from the internet, so it gets the widget's
    figure and a line naming its controls' values instead.
    """
    import nbformat

    out = copy.deepcopy(nb)
    state = out.metadata.pop("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for cell in out.cells:
        if cell.cell_type != "code":
            continue
        new = []
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get(WIDGET_VIEW)
            if view is None:
                new.append(output)
                continue
            shown, values = _widget_outputs(view.get("model_id", ""), state, set())
            note = "An interactive widget: run this notebook in JupyterLab to move it."
            if values:
                note = (
                    f"An interactive widget, shown at {', '.join(values)}: run this notebook in JupyterLab to move it."
                )
            new.append(nbformat.v4.new_output("display_data", data={"text/markdown": f"*{note}*"}))
            new += [nbformat.from_dict(o) for o in shown]
        cell.outputs = new
    return out


def run_notebook(path: Path, out: Path, *, timeout: int | None) -> tuple[bool, float, str]:
    """Execute one notebook; write it (and its HTML) under ``out``; return (ok, seconds, error line)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    from nbconvert import HTMLExporter

    nb = nbformat.read(path, as_version=4)
    km = _kernel_manager()
    client = NotebookClient(
        nb, km=km, timeout=timeout, store_widget_state=True, resources={"metadata": {"path": str(path.parent)}}
    )
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
    html_dir = out / "html"
    html_dir.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out / "notebooks" / path.name)
    html, _ = HTMLExporter(mathjax_url=mathjax_beside(html_dir)).from_notebook_node(static_widgets(nb))
    (html_dir / f"{path.stem}.html").write_text(html, encoding="utf-8")
    return ok, seconds, error


def reproduce(out: Path, *, profile: str = "quick", only: list[str] | None = None, timeout: int | None = None) -> int:
    try:
        import jupyter_server_mathjax  # noqa: F401
        import nbclient  # noqa: F401
        import nbconvert  # noqa: F401
    except ImportError as err:
        print(f"python -m fpcore reproduce: error: it needs {NEEDS} ({err})", file=sys.stderr)
        return 1
    from tqdm.auto import tqdm

    from fpcore import config

    config.set_profile(profile)
    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if only:
        paths = [p for p in paths if any(key in p.stem for key in only)]
        if not paths:
            raise ValueError(f"no notebook in {NOTEBOOKS} matches {only}")
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"profile": profile, "notebooks": []}
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
        description=__doc__.split("\n\n")[0].replace("``", "'"),
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
