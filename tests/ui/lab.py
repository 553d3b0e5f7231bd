"""A JupyterLab server on 127.0.0.1 and a headless Chromium that uses it as a student would.

:class:`LabServer` runs ``jupyter lab`` with every Jupyter folder (config, data, runtime, IPython,
workspaces, user settings) in a temporary directory, so nothing in the home folder is read or
written, and serves a copy of ``notebooks/`` (autosave writes outputs into what it opens).
:class:`NotebookPage` drives one notebook through the menus: clear outputs, run all, wait for every
cell, read errors from the saved copy, and move every ipywidgets control with the keyboard and the
mouse, checking after each move that the output a student looks at changed and shows no traceback.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat

from fpcore import config

ROOT = Path(__file__).resolve().parents[2]

# User settings that keep the screen free of toasts and render every cell (JupyterLab 4 can window a
# long notebook, leaving cells out of the page until scrolled to).
USER_SETTINGS: dict[str, dict[str, Any]] = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {
        "windowingMode": "none",
        "scrollPastEnd": False,
        "recordTiming": True,  # each cell's start and end in its metadata: the report names the slowest cells
    },
}


class UIFailure(AssertionError):
    """What a student would have seen go wrong, in words (the test fails with it)."""


def _ansi_free(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)


def _wait(predicate: Callable[[], Any], timeout: float, what: str, poll: float = 0.25) -> Any:
    """Call ``predicate`` until it returns something truthy; raise UIFailure naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise UIFailure(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def _timestamp(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _not_regular_files(folder: str, names: list[str]) -> set[str]:
    """What copying notebooks/ leaves out: checkpoints and anything but files and folders (a kernel's sockets)."""
    return {
        n for n in names if n == ".ipynb_checkpoints" or not (Path(folder, n).is_file() or Path(folder, n).is_dir())
    }


# -- the server ---------------------------------------------------------------------------------------
class LabServer:
    """``jupyter lab`` on 127.0.0.1 (a free port), serving a copy of ``notebooks``; stop it with :meth:`stop`."""

    def __init__(self, workdir: Path, notebooks: Path, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.root = workdir / notebooks.name
        self.token = secrets.token_hex(16)
        self.env = dict(os.environ if env is None else env)
        for key, value in config.KERNEL_ENV.items():  # what the kernelspec of `make setup` gives a student
            self.env.setdefault(key, value)
        self.url = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.children: set[int] = set()  # kernels the server started, by process id
        shutil.copytree(notebooks, self.root, ignore=_not_regular_files)

    def start(self, timeout: float = 180) -> LabServer:
        dirs = {}
        for name in ("config", "data", "runtime", "ipython", "settings", "workspaces"):
            dirs[name] = self.workdir / "jupyter" / name
            dirs[name].mkdir(parents=True, exist_ok=True)
        for rel, values in USER_SETTINGS.items():
            path = dirs["settings"] / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        env = {
            **self.env,
            "JUPYTER_CONFIG_DIR": str(dirs["config"]),
            "JUPYTER_DATA_DIR": str(dirs["data"]),
            "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
            "IPYTHONDIR": str(dirs["ipython"]),
            "JUPYTER_PLATFORM_DIRS": "1",
        }
        cmd = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            "--ServerApp.port=0",
            "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={self.root}",
            f"--IdentityProvider.token={self.token}",
            f"--LabApp.user_settings_dir={dirs['settings']}",
            f"--LabApp.workspaces_dir={dirs['workspaces']}",
            "--LabApp.news_url=",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")
        self.log = self.workdir / "jupyterlab.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, env=env, cwd=self.root, stdout=log, stderr=subprocess.STDOUT)
        info = dirs["runtime"] / f"jpserver-{self.proc.pid}.json"

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise UIFailure(
                    f"jupyter lab exited with status {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            if not info.exists():
                return False
            try:
                self.url = json.loads(info.read_text())["url"].rstrip("/") + "/"
                return self.api("GET", "api/status") is not None
            except (ValueError, KeyError, OSError):
                return False

        _wait(ready, timeout, "jupyter lab to answer on 127.0.0.1")
        return self

    def api(self, method: str, path: str, timeout: float = 30) -> Any:
        request = urllib.request.Request(
            self.url + path,
            method=method,
            headers={"Authorization": f"token {self.token}"},
            data=b"" if method == "POST" else None,
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else {}

    def lab_url(self) -> str:
        return f"{self.url}lab?reset&token={self.token}"

    def record_children(self) -> None:
        """Remember the server's child processes (its kernels run in their own process sessions)."""
        if self.proc is None:
            return
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid:
                self.children.add(int(stat.parent.name))

    def shutdown_kernels(self, timeout: float = 30) -> None:
        """Stop every kernel through the REST API (one notebook's kernel must not share the cores with the next)."""
        self.record_children()
        for kernel in self.api("GET", "api/kernels"):
            self.api("DELETE", f"api/kernels/{kernel['id']}", timeout=timeout)

    def stop(self) -> None:
        """Shut the server down through ``/api/shutdown``, then end any kernel it left, by process id."""
        if self.proc is None:
            return
        self.record_children()
        try:
            self.api("POST", "api/shutdown", timeout=10)
            self.proc.wait(timeout=30)
        except (OSError, urllib.error.URLError, subprocess.TimeoutExpired):
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in sorted(self.children):
            _end(pid)
        self.proc = None


def _end(pid: int) -> None:
    """End one process we recorded, if it is still a kernel (process ids are reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if b"ipykernel" not in cmdline:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if not Path(f"/proc/{pid}").exists():
                return
            time.sleep(0.1)


# -- one notebook in the browser ------------------------------------------------------------------------
# JavaScript run in the page. The notebook shown is the one panel that is not hidden.
_PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"
_JS_PROMPTS = f"""() => [...document.querySelectorAll('{_PANEL} .jp-CodeCell')].map(
    c => (c.querySelector('.jp-InputArea-prompt')?.textContent || '').trim())"""
_JS_STATUS = """() => document.querySelector('#jp-main-statusbar')?.innerText || ''"""

# ipywidgets controls the driver knows how to move, by the class ipywidgets 8 gives their view.
CONTROL_KINDS = {
    "slider": ".widget-slider:not(.widget-readout)",
    "dropdown": ".widget-dropdown",
    "checkbox": ".widget-checkbox",
    "toggle": ".widget-toggle-buttons",
    "radio": ".widget-radio",
    "button": ".widget-button, .widget-toggle-button",
    "text": ".widget-text, .widget-textarea",
}
# Anything a student can operate inside a widget area; one outside every known control is reported.
_OPERABLE = "input, select, textarea, button, .noUi-handle, [contenteditable='true']"

# The output a student reads beside a control: the text and the pictures of the cell's output area,
# leaving out the controls' own readouts (a readout changes before the kernel has redrawn anything).
_JS_DISPLAY = """(area) => {
    const skip = new Set(['SCRIPT', 'STYLE']);
    const texts = [];
    const walk = (node) => {
        if (node.nodeType === Node.TEXT_NODE) { texts.push(node.textContent); return; }
        if (node.nodeType !== Node.ELEMENT_NODE || skip.has(node.tagName)) return;
        if (node.classList.contains('widget-readout')) return;
        for (const child of node.childNodes) walk(child);
    };
    walk(area);
    const images = [...area.querySelectorAll('img')].map(i => i.getAttribute('src') || '');
    const errors = [...area.querySelectorAll('[data-mime-type="application/vnd.jupyter.stderr"]')]
        .map(e => e.innerText).filter(t => /Traceback|Error/.test(t));
    return {text: texts.join('').replace(/\\s+/g, ' ').trim(), images, errors};
}"""


@dataclass
class Display:
    """What the output area around a control shows: its text, its pictures (hashed) and any traceback."""

    text: str
    images: tuple[str, ...]
    errors: tuple[str, ...]

    @classmethod
    def of(cls, raw: dict[str, Any]) -> Display:
        images = tuple(hashlib.sha256(src.encode()).hexdigest()[:12] for src in raw["images"])
        return cls(raw["text"], images, tuple(raw["errors"]))


@dataclass
class Control:
    """One ipywidgets control on the page: its kind, its label, and the locator that finds it."""

    kind: str
    label: str
    index: int  # among the controls of its kind on the page
    cell: int  # the code cell (0-based among code cells) whose output holds it


@dataclass
class Move:
    """One move of a control and what followed it, for the report."""

    control: Control
    how: str
    before: str
    after: str
    seconds: float


class NotebookPage:
    """One notebook of the served copy, open in a Playwright page."""

    def __init__(self, page: Any, server: LabServer, name: str, *, cell_timeout: float = 900) -> None:
        self.page = page
        self.server = server
        self.name = name
        self.path = server.root / name
        self.cell_timeout = cell_timeout
        self.moves: list[Move] = []
        self.saved: nbformat.NotebookNode | None = None

    # ---- opening and running ----
    def open(self, timeout: float = 180) -> None:
        """Open the notebook from the file browser (double click) and wait for its kernel to be idle."""
        if not self.page.locator(".jp-DirListing").count():
            self.page.goto(self.server.lab_url(), wait_until="domcontentloaded", timeout=timeout * 1000)
        name = re.compile(rf"^{re.escape(self.name)}$")
        item = self.page.locator(".jp-DirListing-item", has=self.page.locator(".jp-DirListing-itemText", has_text=name))
        item.dblclick(timeout=timeout * 1000)
        self.page.wait_for_selector(f"{_PANEL} .jp-Cell", timeout=timeout * 1000)
        _wait(self._kernel_idle, timeout, "the kernel to start (status bar)")

    def _kernel_idle(self) -> bool:
        """True once the status bar says Idle; accepts the kernel JupyterLab proposes if it asks for one."""
        dialog = self.page.locator(".jp-Dialog", has_text="Select Kernel")
        if dialog.count():
            dialog.locator(".jp-Dialog-button.jp-mod-accept").first.click()
        failed = self.page.locator(".jp-Dialog", has_text="Error Starting Kernel")
        if failed.count():
            raise UIFailure(f"{self.name}: JupyterLab could not start the kernel: {failed.first.inner_text()[:500]}")
        return bool(re.search(r"\bIdle\b", self.page.evaluate(_JS_STATUS)))

    def close(self) -> None:
        """Close the notebook's tab (discarding what was not saved) and shut its kernel down."""
        self.menu("File", "Close Tab")
        discard = self.page.locator(".jp-Dialog-button", has_text=re.compile("^(Discard|Don.t Save)$"))
        try:
            discard.first.click(timeout=2000)
        except Exception:  # no dialog: nothing was left unsaved
            pass
        self.server.shutdown_kernels()

    def menu(self, top: str, item: str) -> None:
        """Click ``top`` in the menu bar, then the entry ``item`` (as a student would)."""
        self.page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(rf"^{re.escape(top)}$")).click()
        entry = self.page.locator(".lm-Menu-content .lm-Menu-itemLabel", has_text=re.compile(rf"^{re.escape(item)}$"))
        entry.first.click()

    def prompts(self) -> list[str]:
        return self.page.evaluate(_JS_PROMPTS)

    def run_all(self) -> float:
        """Show every cell's code, clear outputs and run all cells from the menus; wait until no cell is
        queued or running.

        A cell whose code is collapsed (a solution, say) has no prompt on the page, so it could run on
        unseen after the last visible prompt was numbered: View > Expand All Code first, and a code cell
        without a prompt fails the run rather than being waited for by no one.
        """
        self.menu("View", "Expand All Code")
        self.menu("Edit", "Clear Outputs of All Cells")
        try:
            _wait(lambda: all(p == "[ ]:" for p in self.prompts()), 30, "the outputs to clear")
        except UIFailure:
            unseen = [i for i, p in enumerate(self.prompts()) if p != "[ ]:"]
            raise UIFailure(
                f"{self.name}: code cells {unseen} show no cleared prompt '[ ]:' after Clear Outputs"
            ) from None
        start = time.monotonic()
        self.menu("Run", "Run All Cells")
        _wait(lambda: any("*" in p for p in self.prompts()) or self._all_numbered(), 60, "Run All to start")
        last, changed = self.prompts(), time.monotonic()
        while any("*" in p for p in last):
            time.sleep(0.5)
            status = self.page.evaluate(_JS_STATUS)
            if re.search(r"\b(Dead|Unknown)\b", status):
                raise UIFailure(f"{self.name}: the kernel died while running (status bar: {status!r})")
            now = self.prompts()
            if now != last:
                last, changed = now, time.monotonic()
            elif time.monotonic() - changed > self.cell_timeout:
                cell = next(i for i, p in enumerate(now) if "*" in p)
                raise UIFailure(f"{self.name}: code cell {cell} ran for more than {self.cell_timeout:.0f} s")
        return time.monotonic() - start

    def _all_numbered(self) -> bool:
        prompts = self.prompts()
        return bool(prompts) and all(re.fullmatch(r"\[\d+\]:", p) for p in prompts)

    def save(self, timeout: float = 60) -> nbformat.NotebookNode:
        """Save through the File menu and read the saved copy back (outputs and tracebacks exactly)."""
        before = self.path.stat().st_mtime_ns
        self.menu("File", "Save Notebook")
        _wait(lambda: self.path.stat().st_mtime_ns != before, timeout, f"{self.name} to be saved")
        _wait(lambda: self.page.locator(".jp-mod-current.jp-mod-dirty").count() == 0, timeout, "the save to finish")
        return nbformat.read(self.path, as_version=4)

    def check_cells(self) -> None:
        """Fail with the traceback of the first cell that raised, or name the cells that never ran."""
        nb = self.saved = self.save()
        code = [c for c in nb.cells if c.cell_type == "code"]
        for i, cell in enumerate(code):
            for out in cell.get("outputs", []):
                if out.get("output_type") == "error":
                    trace = _ansi_free("\n".join(out.get("traceback", [])))
                    raise UIFailure(
                        f"{self.name}: code cell {i} raised {out['ename']}: {out['evalue']}\n"
                        f"--- cell source ---\n{cell.source}\n--- traceback ---\n{trace}"
                    )
        missing = [i for i, c in enumerate(code) if c.source.strip() and not c.get("execution_count")]
        if missing:
            raise UIFailure(f"{self.name}: code cells {missing} did not run (no execution count after Run All)")

    def cell_seconds(self) -> dict[int, float]:
        """How long each code cell ran (0-based among code cells), from the timing JupyterLab records in the
        metadata of the copy saved by :meth:`check_cells`."""
        seconds = {}
        code = [c for c in self.saved.cells if c.cell_type == "code"] if self.saved is not None else []
        for i, cell in enumerate(code):
            times = cell.metadata.get("execution", {})
            start, end = times.get("shell.execute_reply.started"), times.get("shell.execute_reply")
            if start and end:
                seconds[i] = (_timestamp(end) - _timestamp(start)).total_seconds()
        return seconds

    # ---- widgets ----
    def controls(self) -> list[Control]:
        """Every ipywidgets control in the notebook's outputs; an operable element of no known kind fails."""
        found: list[Control] = []
        for kind, selector in CONTROL_KINDS.items():
            for index, el in enumerate(self.page.locator(f"{_PANEL} .jp-OutputArea {selector}").all()):
                label = el.evaluate(
                    """(e) => [...e.querySelectorAll('.widget-label, .widget-label-basic')]
                        .map(l => l.innerText.replace(/[\\u200b\\s]+/g, ' ').trim()).find(t => t) || ''"""
                )
                cell = el.evaluate(
                    f"(e) => [...document.querySelectorAll('{_PANEL} .jp-CodeCell')].indexOf(e.closest('.jp-CodeCell'))"
                )
                found.append(Control(kind, label.strip() or f"{kind} {index}", index, cell))
        known = ", ".join(CONTROL_KINDS.values())
        stray = self.page.evaluate(
            """([panel, operable, known]) => [...document.querySelectorAll(panel + ' .jp-OutputArea .jupyter-widgets')]
                .flatMap(w => [...w.querySelectorAll(operable)])
                .filter(e => !e.closest(known))
                .map(e => e.closest('.jupyter-widgets').className)""",
            [_PANEL, _OPERABLE, known],
        )
        if stray:
            raise UIFailure(f"{self.name}: widget controls the UI tests cannot move yet: {sorted(set(stray))}")
        return found

    def _locator(self, control: Control) -> Any:
        return self.page.locator(f"{_PANEL} .jp-OutputArea {CONTROL_KINDS[control.kind]}").nth(control.index)

    def _area(self, control: Control) -> Any:
        return self.page.locator(f"{_PANEL} .jp-CodeCell").nth(control.cell).locator(".jp-OutputArea").first

    def display(self, control: Control) -> Display:
        return Display.of(self._area(control).evaluate(_JS_DISPLAY))

    def value(self, control: Control) -> str:
        """The value a student reads off the control itself (a slider's readout, a dropdown's choice...)."""
        el = self._locator(control)
        if control.kind == "slider":
            return el.locator(".widget-readout").first.inner_text().strip()
        if control.kind == "dropdown":
            return el.locator("select").evaluate("(s) => s.options[s.selectedIndex]?.text ?? ''")
        if control.kind == "checkbox":
            return str(el.locator("input").is_checked())
        if control.kind in ("toggle", "radio"):
            return el.evaluate(
                "(e) => [...e.querySelectorAll('.mod-active, input:checked')].map(x => x.value || x.innerText).join()"
            )
        if control.kind == "text":
            return el.locator("input, textarea").first.input_value()
        return ""

    def moves_for(self, control: Control) -> list[tuple[str, Callable[[], None]]]:
        """The ways a student moves this control: by keyboard and by mouse."""
        el, page = self._locator(control), self.page
        if control.kind == "slider":
            handle = el.locator(".noUi-handle").first

            def key() -> None:
                at_max = handle.get_attribute("aria-valuenow") == handle.get_attribute("aria-valuemax")
                handle.focus()
                page.keyboard.press("ArrowLeft" if at_max else "ArrowRight")

            def drag() -> None:
                box, track = handle.bounding_box(), el.locator(".noUi-target").first.bounding_box()
                x0, y0 = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
                fraction = 0.25 if x0 > track["x"] + track["width"] / 2 else 0.75
                page.mouse.move(x0, y0)
                page.mouse.down()
                page.mouse.move(track["x"] + fraction * track["width"], y0, steps=8)
                page.mouse.up()

            return [("keyboard (arrow key)", key), ("mouse drag", drag)]
        if control.kind == "dropdown":
            select = el.locator("select")

            def key() -> None:  # type the label of another option: a closed <select> jumps to it
                labels = select.evaluate("(s) => [...s.options].map(o => o.text)")
                current = select.evaluate("(s) => s.options[s.selectedIndex]?.text")
                select.focus()
                page.keyboard.type(next(t for t in labels if t != current and not t.startswith(current or "")))

            def pick() -> None:
                options = select.evaluate("(s) => [...s.options].map(o => o.value)")
                current = select.input_value()
                select.select_option(next(o for o in options if o != current))

            return [("keyboard (typing an option)", key), ("mouse (choose an option)", pick)]
        if control.kind == "checkbox":
            box = el.locator("input")

            def space() -> None:
                box.focus()
                page.keyboard.press("Space")

            return [("keyboard (space)", space), ("mouse click", box.click)]
        if control.kind in ("toggle", "radio"):
            options = el.locator("button, input")

            def other() -> None:
                for i in range(options.count()):
                    option = options.nth(i)
                    if not option.evaluate("(o) => o.classList.contains('mod-active') || o.checked === true"):
                        option.click()
                        return

            def key() -> None:
                options.first.focus()
                page.keyboard.press("ArrowRight" if control.kind == "radio" else "Space")

            return [("mouse click", other), ("keyboard", key)]
        if control.kind == "button":
            button = el if el.evaluate("(e) => e.tagName") == "BUTTON" else el.locator("button").first

            def enter() -> None:
                button.focus()
                page.keyboard.press("Enter")

            return [("mouse click", button.click), ("keyboard (enter)", enter)]
        if control.kind == "text":
            box = el.locator("input, textarea").first

            def typed() -> None:
                box.fill(box.input_value() + "1")
                box.press("Enter")

            return [("keyboard (typing)", typed)]
        raise UIFailure(f"no way to move a {control.kind}")

    def move_every_control(self, expect: Callable[[Control, Display], None], timeout: float = 180) -> list[Move]:
        """Move each control every way (:meth:`move`); return the moves made."""
        for control in self.controls():
            self.move(control, expect, timeout)
        return self.moves

    def move(self, control: Control, expect: Callable[[Control, Display], None], timeout: float = 180) -> None:
        """Move one control every way a student would; after each move its own value and the output beside it
        must change, the output must show no traceback, and ``expect(control, display)`` must hold."""
        for how, act in self.moves_for(control):
            before_value, before = self.value(control), self.display(control)
            start = time.monotonic()
            act()
            if control.kind != "button":
                _wait(
                    lambda c=control, v=before_value: self.value(c) != v,
                    10,
                    f"{self.name}: '{control.label}' to change by {how} (still {before_value})",
                )
            after = self._settled(control, before, timeout, how)
            if after.errors:
                raise UIFailure(
                    f"{self.name}: moving '{control.label}' ({how}, {before_value} -> {self.value(control)}) "
                    f"shows a traceback:\n{after.errors[0]}"
                )
            expect(control, after)
            self.moves.append(Move(control, how, before_value, self.value(control), time.monotonic() - start))

    def _settled(self, control: Control, before: Display, timeout: float, how: str) -> Display:
        """Wait for the output to differ from ``before`` and then hold still for a second with the kernel idle."""
        deadline = time.monotonic() + timeout
        current, since = self.display(control), time.monotonic()
        while True:
            time.sleep(0.25)
            now = self.display(control)
            if now != current:
                current, since = now, time.monotonic()
            changed = current.images != before.images or current.text != before.text or current.errors
            idle = all(k.get("execution_state") == "idle" for k in self.server.api("GET", "api/kernels"))
            if changed and idle and time.monotonic() - since > 1.0:
                return current
            if time.monotonic() > deadline:
                raise UIFailure(
                    f"{self.name}: moving '{control.label}' ({how}) to {self.value(control)} changed nothing a student "
                    f"can see within {timeout:.0f} s (output text and {len(before.images)} picture(s) unchanged)"
                )

    # ---- pictures ----
    def screenshot(self, path: Path, max_height: int = 16000) -> Path:
        """The whole notebook in one picture, from its top: the viewport is made as tall as the notebook
        (JupyterLab scrolls inside its own panel, so a ``full_page`` screenshot would show one screen)."""
        js_height = f"""() => {{
            const outer = document.querySelector('{_PANEL} .jp-WindowedPanel-outer');
            outer.scrollTop = 0;
            return outer.scrollHeight - outer.clientHeight;
        }}"""
        width = self.page.viewport_size["width"] if self.page.viewport_size else 1280
        for _ in range(3):  # growing the window re-lays the notebook out; repeat until nothing is left below
            hidden = self.page.evaluate(js_height)
            if hidden <= 0:
                break
            height = self.page.viewport_size["height"] + hidden
            self.page.set_viewport_size({"width": width, "height": int(min(max_height, height))})
            self.page.wait_for_timeout(300)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path))
        return path
