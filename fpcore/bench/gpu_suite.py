"""The GPU checks in one command: ``python -m fpcore gpu-suite --minutes N --archive PATH [--dry-run]``.

Meant to be the first command whenever a GPU is lent (slots of about 30 minutes, commands of at most 10). In
order, each part under its own time budget and each writing its records (:mod:`fpcore.results`):

==============  ======  ==========================================================================================
part            budget  what
==============  ======  ==========================================================================================
tests           1.5     ``pytest -m gpu`` (the CUDA kernels against the references; nvcc compiles the sources)
scan            2.5     the scan at the target point (8, 65536, 1536) with accelerated-scan and torch's
                        associative_scan, then the full sweep (``bench scan --full``) in what is left
fixed-point     1.5     the fixed-point target (stable GRU, H = 64, B = 16, T = 65,536 against cuDNN), then
                        block Jacobi's (M, w) grid and the fused layer's step cost on this GPU
surrogates      2.5     the surrogate speed table (``bench surrogates --full``, T = 65,536 first)
longdep-8192    3.0     GILR-LSTM on the T = 8,192 task (up to a third of the budget), then cuDNN LSTM for 6x the
                        time GILR-LSTM took (so the ratio, or its lower bound, is known)
lm              0.5     language-model training tokens/s, jacobi-k against cuDNN BPTT
longdep-1m      5.0     GILR-LSTM at T = 1,048,576 (checkpointed: a later sitting resumes it)
==============  ======  ==========================================================================================

(minutes; 8 + 8.5 in all, so the suite fits two commands of ``--minutes 9``, the README's device command lines.)
Every part runs in a child process (``python -m fpcore ...``) with a timeout, so a crash or an out-of-memory
error costs one part, not the sitting. A sitting runs the parts not yet done, in order, and stops before a part
whose whole budget no longer fits in its ``--minutes`` (the next sitting starts there). Everything it writes
lives under a work folder (``records/``, ``logs/``, ``checkpoints/``, ``state.json``, ``summary.md``) that is
packed into one archive (``--archive``; files over 4 MiB, the large models' checkpoints, stay out): the one file
a GPU machine needs to send back. ``--resume ARCHIVE`` (or an existing ``--archive``) unpacks an earlier
sitting's archive and goes on where it stopped; ``--unpack ARCHIVE`` copies its records into results/ to be
committed. The summary table lists every target with its value and verdict (``not measured`` where its part has
not run).

``--dry-run`` runs the same code path at tiny sizes on the CPU, in about a minute (the tests run it).
``--fetch-wheels`` downloads what the GPU machines lack (accelerated-scan) for Python 3.12 into ``.whl/``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fpcore.bench.toolkit import format_table, positive

__all__ = ["PARTS", "Part", "Step", "run_suite", "summary_rows", "register", "WHEELS", "fetch_wheels"]

REPO = Path(__file__).resolve().parents[2]
WHEELS = ("accelerated-scan==0.3.1",)  # not on the GPU machines' image (torch, CuPy, Triton, Numba, pytest are)
MAX_ARCHIVED_BYTES = 4 << 20
MIN_PART_SECONDS = 30.0
GRACE_SECONDS = 45.0  # a child's start-up and record writing beyond its own --max-minutes


@dataclass
class Step:
    """One child process of a part: ``python -m ARGV`` under at most ``share`` of the part's remaining budget."""

    name: str
    argv: list[str]
    share: float = 1.0
    ok: tuple[int, ...] = (0,)  # exit codes that mean "done" (longdep exits 3 when its budget ends first)
    env: dict[str, str] | None = None


@dataclass
class Part:
    name: str
    minutes: float
    what: str
    steps: Callable[[Context], Iterator[Step]]


@dataclass
class Context:
    """What a part's steps may read: the sizes (dry run or not), the work folder and the seconds left."""

    dry: bool
    work: Path
    seconds: float  # the part's budget left when its step is made

    @property
    def records(self) -> Path:
        return self.work / "records"

    def minutes(self, share: float = 1.0) -> str:
        """--max-minutes for a child: its share of what is left, less the child's start-up."""
        return f"{max(0.05, (self.seconds * share - GRACE_SECONDS) / 60):.2f}"


# -- the parts ------------------------------------------------------------------------------------------
def _tests(ctx: Context) -> Iterator[Step]:
    files = ["tests/test_scan.py"] if ctx.dry else ["tests"]
    yield Step(
        "pytest-gpu",
        ["pytest", "-m", "gpu", *files, "-q", "-o", "addopts=", "-p", "no:cacheprovider", "-rfE"]
        + ["--continue-on-collection-errors"]  # a test module needing a package the machine lacks costs only itself
        + [f"--junitxml={ctx.records / 'gpu_tests.xml'}"],
        ok=(0, 1),  # failures are results too: the summary reports them
    )


def _scan(ctx: Context) -> Iterator[Step]:
    dev = ["--device", "cpu"] if ctx.dry else []
    providers = "torch,numba,cupy,accelerated_scan_warp,accelerated_scan_scalar,assoc_scan"
    target = ["--shapes", "2x8", "--log2-t", "6:6"] if ctx.dry else ["--shapes", "8x1536", "--log2-t", "16:16"]
    yield Step(
        "scan-target",
        ["fpcore", "bench", "scan", *dev, *target, "--providers", providers, "--modes", "fwd,bwd", "--repeat", "10"]
        + ["--name", "scan_gpu_target", "--no-progress", "--max-minutes", ctx.minutes(0.5)],
        share=0.5,
        env={"TORCH_CUDA_ARCH_LIST": "9.0"},  # accelerated-scan compiles its CUDA kernel at import: one arch only
    )
    sweep = ["--shapes", "2x8,1x4", "--log2-t", "5:7"] if ctx.dry else ["--full"]
    yield Step(
        "scan-sweep",
        ["fpcore", "bench", "scan", *dev, *sweep, "--providers", "torch,cupy,accelerated_scan_warp"]
        + ["--no-progress", "--max-minutes", ctx.minutes()],
        env={"TORCH_CUDA_ARCH_LIST": "9.0"},
    )


def _fixed_point(ctx: Context) -> Iterator[Step]:
    if ctx.dry:
        size = ["--device", "cpu", "--hidden", "4", "--lengths", "64", "--batch", "2"]
        grid = ["--device", "cpu", "--hidden", "4", "--batch", "2", "--length", "256", "--blocks", "16,32"]
        grid += ["--overlaps", "0,8", "--cells", "gru"]
    else:
        size = ["--hidden", "64", "--lengths", "65536", "--newton-max-gb", "40", "--repeat", "3"]
        grid = ["--blocks", "32,64,128,256,512", "--overlaps", "16,32,64"]
    yield Step(
        "fixed-point-target",
        ["fpcore", "bench", "fixed-point", *size, "--cells", "gru", "--weights", "stable"]
        + ["--methods", "torch.nn,block_jacobi,block_jacobi_loop,quasi_newton,jacobi", "--time-limit", "20"]
        + ["--no-progress", "--max-minutes", ctx.minutes(0.6)],
        share=0.6,
    )
    yield Step(
        "block-jacobi-rule",
        ["fpcore", "bench", "block-jacobi", *grid, "--no-progress", "--max-minutes", ctx.minutes()],
    )


def _surrogates(ctx: Context) -> Iterator[Step]:
    if ctx.dry:
        size = ["--device", "cpu", "--hidden", "8", "--tokens", "64", "--seq-lens", "64,16", "--models", "sru,qrnn2"]
    else:  # SRU at T = 65,536 (the target) first
        size = ["--full", "--seq-lens", "65536,4096,256,16", "--models", "sru,qrnn2,qrnn10,gilr-lstm"]
    yield Step(
        "surrogates",
        ["fpcore", "bench", "surrogates", *size, "--repeat", "3", "--no-progress", "--max-minutes", ctx.minutes()],
    )


def _longdep(ctx: Context, model: str, seq_len: int, seconds: float, checkpoint: bool) -> Step:
    """One run of the long-dependency task through its command line (the models of paper C's Table 3)."""
    name = f"longdep-{model}-T{seq_len}"
    if ctx.dry:
        size = ["--device", "cpu", "--hidden", "4", "--layers", "1", "--batch", "4", "--embed", "4", "--max-iters", "5"]
        seq_len = min(seq_len, 128)
    elif seq_len > 10**5:  # paper C's million-step model: narrower, batch 2
        size = ["--hidden", "64", "--layers", "2", "--batch", "2", "--embed", "64", "--lr", "1e-3"]
    else:
        size = ["--hidden", "512", "--layers", "2", "--batch", "32", "--embed", "64", "--lr", "1e-3"]
    argv = ["fpcore", "longdep", "--model", model, "--seq-len", str(seq_len), *size, "--no-progress"]
    argv += ["--max-time", f"{max(5.0, seconds):.0f}", "--results-dir", str(ctx.records)]
    if checkpoint:
        argv += ["--checkpoint", str(ctx.work / "checkpoints" / f"{model}_T{seq_len}.pt")]  # resumed if there
    return Step(name, argv, ok=(0, 3))


def _longdep_8192(ctx: Context) -> Iterator[Step]:
    yield _longdep(ctx, "gilr-lstm", 8192, 0.35 * ctx.seconds - GRACE_SECONDS, checkpoint=False)
    # cuDNN LSTM for 6x GILR-LSTM's time: if it has not converged by then, the ratio is at least 6 (the target)
    gilr = _records(ctx.records, "longdep_gilr-lstm_T*.json")
    took = max((r.get("wall_time_s", 0.0) for r in gilr), default=ctx.seconds)
    yield _longdep(ctx, "lstm", 8192, min(6.05 * took, ctx.seconds - GRACE_SECONDS), checkpoint=False)


def _lm(ctx: Context) -> Iterator[Step]:
    size = ["--device", "cpu", "--vocab", "50", "--hidden", "8", "--batch", "2", "--bptt", "8"] if ctx.dry else []
    yield Step("lm-speed", ["fpcore", "bench", "lm-speed", *size, "--no-progress", "--max-minutes", ctx.minutes()])


def _longdep_1m(ctx: Context) -> Iterator[Step]:
    yield _longdep(ctx, "gilr-lstm", 1 << 20, ctx.seconds - GRACE_SECONDS, checkpoint=True)


PARTS: tuple[Part, ...] = (
    Part("tests", 1.5, "pytest -m gpu", _tests),
    Part("scan", 2.5, "scan: target point, then the full sweep", _scan),
    Part("fixed-point", 1.5, "fixed point vs cuDNN; block Jacobi's rule", _fixed_point),
    Part("surrogates", 2.5, "surrogate speed table", _surrogates),
    Part("longdep-8192", 3.0, "GILR-LSTM vs cuDNN LSTM at T = 8,192", _longdep_8192),
    Part("lm", 0.5, "LM tokens/s: jacobi-k vs cuDNN BPTT", _lm),
    Part("longdep-1m", 5.0, "GILR-LSTM at T = 1,048,576", _longdep_1m),
)
DRY_SECONDS = 240.0  # a dry-run part's budget: a cap for a slow, shared CI machine (tiny sizes finish sooner)


# -- running --------------------------------------------------------------------------------------------
def _records(folder: Path, pattern: str) -> list[dict[str, Any]]:
    out = []
    for path in sorted(folder.glob(pattern)):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return out


def _load_state(work: Path) -> dict[str, Any]:
    path = work / "state.json"
    return json.loads(path.read_text()) if path.exists() else {"steps": {}, "sittings": []}


def _save_state(work: Path, state: dict[str, Any]) -> None:
    tmp = work / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, work / "state.json")


def _run_step(step: Step, ctx: Context, timeout: float) -> tuple[str, int | None, float]:
    """Run one child; return (status, exit code, seconds). Its output goes to logs/<step>.log."""
    env = {**os.environ, **(step.env or {}), "FPCORE_RESULTS_DIR": str(ctx.records), "PYTHONUNBUFFERED": "1"}
    log = ctx.work / "logs" / f"{step.name}.log"
    t0 = time.perf_counter()
    with open(log, "a") as fh:
        fh.write(f"$ python -m {' '.join(step.argv)}\n")
        fh.flush()
        proc = subprocess.Popen([sys.executable, "-m", *step.argv], cwd=REPO, env=env, stdout=fh, stderr=fh)
        try:
            code: int | None = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
    seconds = time.perf_counter() - t0
    if code is None:
        return "timed out", None, seconds
    return ("done" if code in step.ok else "failed"), code, seconds


def run_suite(
    *,
    minutes: float,
    work: Path,
    dry: bool = False,
    parts: list[str] | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the parts not yet done (``parts``: only these) while ``minutes`` last; return the state."""
    for sub in ("records", "logs", "checkpoints"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    state = _load_state(work)
    start = time.perf_counter()
    left = lambda: 60 * minutes - (time.perf_counter() - start)  # noqa: E731
    state["sittings"].append({"started": time.strftime("%Y-%m-%d %H:%M:%S"), "minutes": minutes, "dry_run": dry})
    for part in PARTS:
        if parts is not None and part.name not in parts:
            continue
        if part.name in state.setdefault("parts_done", []):
            continue
        begun = any(r.get("part") == part.name for r in state["steps"].values())  # in an earlier sitting
        budget = DRY_SECONDS if dry else 60 * part.minutes
        if left() < budget and not (begun and left() >= MIN_PART_SECONDS):
            echo(f"[gpu-suite] stopping before {part.name}: it needs {budget / 60:.1f} min, {left() / 60:.1f} left")
            break
        budget = min(budget, left())
        part_start = time.perf_counter()
        ctx = Context(dry, work, budget)
        for step in part.steps(ctx):
            record = state["steps"].get(step.name, {})
            if record.get("status") in ("done", "failed"):
                continue
            ctx.seconds = budget - (time.perf_counter() - part_start)
            timeout = min(ctx.seconds * step.share, left())
            if timeout < (1.0 if dry else MIN_PART_SECONDS):
                echo(f"[gpu-suite] {step.name}: not started ({timeout:.0f} s left); a later sitting runs it")
                break
            echo(f"[gpu-suite] {step.name}: up to {timeout:.0f} s")
            status, code, seconds = _run_step(step, ctx, timeout)
            sittings = record.get("sittings", 0) + 1
            state["steps"][step.name] = {"status": status, "exit": code, "seconds": round(seconds, 1)}
            state["steps"][step.name].update(part=part.name, sittings=sittings)
            _save_state(work, state)
            echo(f"[gpu-suite] {step.name}: {status} (exit {code}) in {seconds:.0f} s")
            ctx.seconds = budget - (time.perf_counter() - part_start)  # what the part's next step is made with
        if all(state["steps"].get(st.name, {}).get("status") in ("done", "failed") for st in part.steps(ctx)):
            state["parts_done"].append(part.name)
    _save_state(work, state)
    return state


# -- the summary ----------------------------------------------------------------------------------------
# every target the suite checks: (record pattern, key prefix or None for a computed one, what)
EXPECTED = (
    ("gpu_tests.json", "gpu_tests_pass", "pytest -m gpu: no failures"),
    ("scan_gpu_target.json", "gpu_fwd_8x65536x1536_cupy_over_copy", "scan fwd within 1.25x a copy"),
    ("scan_gpu_target.json", "gpu_bwd_over_fwd_8x65536x1536_cupy", "scan bwd within 1.5x fwd"),
    ("scan_gpu_target.json", "gpu_fwd_cupy_over_accelerated_scan_warp", "scan faster than accelerated-scan (warp)"),
    ("scan_gpu_target.json", "gpu_fwd_cupy_over_accelerated_scan_scalar", "scan faster than accelerated-scan (Triton)"),
    ("fixed_point_*.json", "gpu_gru64_T65536_B16_fastest_solver_over_cudnn", "fixed point >= 10x cuDNN GRU"),
    ("fixed_point_blocks_*.json", "cuda_gru64_T65536_rule_over_best_block", "block rule within 1.25x the best M, w"),
    ("surrogate_speed_*.json", "sru_T65536_cupy_over_loop", "SRU >= 9x parallel over sequential"),
    ("longdep_*.json", "T8192_lstm_over_gilr_lstm_wall_time", "GILR-LSTM >= 6x sooner than cuDNN LSTM, T = 8,192"),
    ("longdep_*.json", "T1048576_gilr_lstm_wall_time_s", "GILR-LSTM at T = 1,048,576 within 10 minutes"),
    ("tokens_per_second_*.json", "lm_jacobi_over_bptt", "LM tokens/s, jacobi-k over cuDNN BPTT"),
)


def _pytest_record(records: Path) -> None:
    """Turn the JUnit XML of ``pytest -m gpu`` into a record with counts, failures and a target."""
    xml = records / "gpu_tests.xml"
    if not xml.exists():
        return
    root = ET.parse(xml).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    failed = [
        f"{case.get('classname')}::{case.get('name')}"
        for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    payload = {
        "config": {"command": "pytest -m gpu"},
        "counts": {**n, "passed": passed},
        "failed": failed,
        "targets": {
            "gpu_tests_pass": {
                "value": n["failures"] + n["errors"],
                "target": "0 failed, > 0 passed",
                "met": not failed and passed > 0,
                "passed": passed,
                "skipped": n["skipped"],
            }
        },
    }
    (records / "gpu_tests.json").write_text(json.dumps(payload, indent=2))


def _derived_targets(records: Path) -> dict[str, dict[str, Any]]:
    """Targets computed from several records: the long-dependency ones (through fpcore.longdep's own reader)
    and the LM's tokens/s ratio (informational: the fastest jacobi-k over BPTT)."""
    from fpcore import longdep

    out = dict(longdep.targets(longdep.load_records(records)))
    for rec in _records(records, "tokens_per_second_*.json"):
        jac = [r for r in rec.get("rows", []) if r["method"].startswith("jacobi")]
        if jac:
            best = max(jac, key=lambda r: r["over_bptt"])
            out["lm_jacobi_over_bptt"] = {
                "value": best["over_bptt"],
                "target": "(reported)",
                "met": None,
                "method": best["method"],
            }
    return out


def summary_rows(work: Path) -> list[dict[str, Any]]:
    """One row per expected target: its value, goal and verdict, from the records in ``work/records``."""
    records = work / "records"
    _pytest_record(records)
    found: dict[str, tuple[dict[str, Any], str]] = {}
    for path in sorted(records.glob("*.json")):
        try:
            for key, t in (json.loads(path.read_text()).get("targets") or {}).items():
                found[key] = (t, path.name)
        except (OSError, ValueError):
            continue
    for key, t in _derived_targets(records).items():
        found[key] = (t, "longdep_*.json" if key.startswith("T") else "tokens_per_second_*.json")
    rows, seen = [], set()
    for _, key, what in EXPECTED:
        t, source = found.get(key, ({}, "-"))
        seen.add(key)
        rows.append(_summary_row(what, key, t, source))
    for key, (t, source) in found.items():  # the others this run recorded (CPU dry runs, extra points)
        if key not in seen:
            rows.append(_summary_row(key, key, t, source))
    return rows


def _summary_row(what: str, key: str, t: dict[str, Any], source: str) -> dict[str, Any]:
    if not t:
        verdict = "not measured"
    elif t.get("met") is None:
        verdict = "reported"
    else:
        verdict = "met" if t["met"] else "NOT met"
    value = t.get("value")
    return {
        "target": what,
        "value": round(value, 4) if isinstance(value, float) else value,
        "goal": t.get("target", "-"),
        "verdict": verdict,
        "record": source,
    }


def _summary_text(work: Path, state: dict[str, Any]) -> str:
    steps = [{"step": k, **v} for k, v in state["steps"].items()]
    lines = ["# gpu-suite summary", ""]
    if any(s.get("dry_run") for s in state["sittings"]):
        lines += ["Dry run (tiny sizes on the CPU): the verdicts below check the plumbing, not the targets.", ""]
    lines += ["Steps:", "", format_table(steps, ("step", "part", "status", "exit", "seconds"))]
    lines += ["", "Targets:", "", format_table(summary_rows(work), ("target", "value", "goal", "verdict", "record"))]
    return "\n".join(lines) + "\n"


# -- the archive ----------------------------------------------------------------------------------------
def pack(work: Path, archive: Path) -> list[str]:
    """Pack the work folder into ``archive`` (tar.gz, written atomically); return what was left out (too big)."""
    from fpcore.files import atomic_write

    left_out: list[str] = []

    def write(fh) -> None:
        with tarfile.open(fileobj=fh, mode="w:gz") as tar:
            for path in sorted(work.rglob("*")):
                if path.is_file():
                    if path.stat().st_size > MAX_ARCHIVED_BYTES:
                        left_out.append(f"{path.relative_to(work)} ({path.stat().st_size >> 20} MiB)")
                        continue
                    tar.add(path, arcname=str(path.relative_to(work)))

    atomic_write(archive, write, what="archive")  # readable by others (0666 less the umask), never half-written
    return left_out


def unpack(archive: Path, work: Path) -> None:
    """Unpack an earlier sitting's archive into the work folder (plain files only, nothing outside it)."""
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            target = (work / member.name).resolve()
            if not member.isfile() or not str(target).startswith(str(work.resolve())):
                raise ValueError(f"{archive}: unexpected entry {member.name!r}")
        if hasattr(tarfile, "data_filter"):  # Python >= 3.12 (and 3.11.4): refuse links and odd modes too
            tar.extractall(work, filter="data")
        else:
            tar.extractall(work)


def copy_records(archive: Path) -> list[Path]:
    """Copy the records (JSON, PNG) of an archive into the results folder (:func:`fpcore.results.results_dir`:
    the tracked results/ with ``--record``)."""
    from fpcore.results import results_dir

    with tempfile.TemporaryDirectory() as tmp:
        unpack(archive, Path(tmp))
        out = []
        folder = results_dir()
        folder.mkdir(parents=True, exist_ok=True)
        for path in sorted((Path(tmp) / "records").glob("*")):
            if path.suffix in (".json", ".png"):
                dest = folder / path.name
                shutil.copyfile(path, dest)
                out.append(dest)
        return out


# -- wheels for the GPU machines -------------------------------------------------------------------------
def fetch_wheels(folder: Path = REPO / ".whl") -> int:
    """Download :data:`WHEELS` for CPython 3.12 on manylinux x86-64 into ``folder`` (pip download, no deps)."""
    platforms = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12"]
    cmd += ["--implementation", "cp", *[a for p in platforms for a in ("--platform", p)], "-d", str(folder), *WHEELS]
    print("$", " ".join(cmd))
    return subprocess.run(cmd).returncode


# -- the command ----------------------------------------------------------------------------------------
def register(subparsers) -> None:
    p = subparsers.add_parser(
        "gpu-suite",
        help="run every GPU check in order under time budgets, resumable; pack the records into one archive",
        description="Run every GPU check in order, each part under its own time budget and in its own process; "
        "resume where an earlier sitting stopped; pack the records into one archive; print every target's verdict.",
    )
    p.add_argument("--minutes", type=positive(float), default=9.5, help="this sitting's time (default 9.5)")
    p.add_argument("--archive", type=Path, help="write everything into this tar.gz (resumes from it if it exists)")
    p.add_argument("--resume", type=Path, help="an earlier sitting's archive to go on from")
    p.add_argument("--work", type=Path, default=None, help="work folder (default build/gpu_suite, or a temporary one)")
    p.add_argument("--parts", help=f"only these parts, comma-separated: {', '.join(p.name for p in PARTS)}")
    p.add_argument("--dry-run", action="store_true", help="the same code path at tiny sizes on the CPU")
    p.add_argument("--unpack", type=Path, help="copy this archive's records into results/ and exit")
    p.add_argument("--fetch-wheels", action="store_true", help="download the wheels the GPU machines lack into .whl/")
    p.set_defaults(func=_main, _parser=p)


def _main(args: argparse.Namespace) -> int:
    if args.fetch_wheels:
        return fetch_wheels()
    if args.unpack:
        if not args.unpack.is_file():
            args._parser.error(f"--unpack: no such archive {args.unpack}")
        for path in copy_records(args.unpack):
            print(f"wrote {path}")
        return 0
    names = [p.name for p in PARTS]
    parts = None
    if args.parts:
        parts = [s.strip() for s in args.parts.split(",") if s.strip()]
        bad = [s for s in parts if s not in names]
        if bad or not parts:
            args._parser.error(f"--parts: unknown {bad or args.parts!r}; choose from {', '.join(names)}")
    resume = args.resume or (args.archive if args.archive is not None and args.archive.exists() else None)
    if args.resume is not None and not args.resume.is_file():
        args._parser.error(f"--resume: no such archive {args.resume}")
    if not args.dry_run and not _has_gpu():
        args._parser.error(
            "no CUDA GPU here (torch.cuda.is_available() is False): the suite measures GPU kernels; "
            "--dry-run runs the same code path at tiny sizes on the CPU"
        )
    interrupted = False
    with _WorkFolder(args.work, keep=args.archive is None) as work:
        if resume is not None:
            unpack(resume, work)
            print(f"[gpu-suite] resuming from {resume}")
        try:
            state = run_suite(minutes=args.minutes, work=work, dry=args.dry_run, parts=parts)
        except KeyboardInterrupt:  # the parts finished so far are kept: summary and archive as after a sitting
            interrupted = True
            state = _load_state(work)
            print("[gpu-suite] interrupted: the parts done so far are kept; run again with --resume to go on")
        text = _summary_text(work, state)
        (work / "summary.md").write_text(text)
        print(text)
        if args.archive is not None:
            for what in pack(work, args.archive):
                print(f"[gpu-suite] not archived (too big): {what}")
            print(f"[gpu-suite] wrote {args.archive}")
    return 130 if interrupted else 0


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


class _WorkFolder:
    """The work folder: ``path`` if given (kept), else build/gpu_suite (kept) when no archive is written, else
    a temporary folder (removed: the archive holds everything)."""

    def __init__(self, path: Path | None, *, keep: bool):
        self.path, self.keep = path, keep
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> Path:
        if self.path is not None:
            self.path.mkdir(parents=True, exist_ok=True)
            return self.path
        if self.keep:
            work = REPO / "build" / "gpu_suite"
            work.mkdir(parents=True, exist_ok=True)
            return work
        self._tmp = tempfile.TemporaryDirectory(prefix="gpu_suite_")
        return Path(self._tmp.name)

    def __exit__(self, *exc: object) -> Literal[False]:
        if self._tmp is not None:
            self._tmp.cleanup()
        return False
