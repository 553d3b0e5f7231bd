"""Benchmark of the fixed-point solvers against the step loop and torch.nn: ``python -m fpcore bench fixed-point``.

For GRU and LSTM layers (B = 16, H in {64, 256}, input size D = H, float32) over sequence lengths T, with
stable and unstable recurrent weights, it times:

    loop                the step-by-step loop over our cell (fpcore.cells.sequential): the reference result
    torch.nn            the torch layer itself (oneDNN on a CPU, cuDNN on a GPU)
    jacobi, quasi_newton, newton, damped, block_jacobi     fpcore.fixed_point.solve(..., tol=--tol)
    block_jacobi_loop   block Jacobi with the cell's own step loop inside the blocks instead of torch's layer

and reports for each: wall time to ``tol`` (``--repeat 1``: one call, or the faster of two under 2 s; more:
the median of interleaved rounds), iterations, whether it converged, max-abs error of the outputs against the
loop, and peak memory in a separate untimed pass (:func:`fpcore.bench.toolkit.peak_memory_mb`; solvers: a
2-iteration solve, since a no-grad solver allocates the same every iteration). Methods that need many
iterations are stopped by ``--time-limit`` (reported as not converged); Newton-type methods are skipped where
their Jacobians [B, T, S, S] would exceed ``--newton-max-gb``.

Weights. ``stable``: every gate block of W_hh projected to spectral norm <= 0.9 (paper B's sufficient
condition for the tanh RNN, ||W||_2 < 1, applied block by block); ``unstable``: every block scaled to
spectral norm 3.

Quick (CPU, default): T in {2^10, 2^14} at the smallest H, T = 2^10 at the others; a few minutes.
``--full`` (T = 2^10 .. 2^20) is meant for a GPU. Writes the record fixed_point_<device>.json and .png.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from typing import Any

import torch
from torch import nn

from fpcore.bench.toolkit import comma_list, int_list, positive

STEM = "fixed_point"
HELP = "fixed-point solvers vs the step loop and torch.nn: GRU/LSTM, time to tol, iterations, error, memory"
BASELINES = ("loop", "torch.nn")
SOLVERS = ("jacobi", "quasi_newton", "newton", "damped", "block_jacobi", "block_jacobi_loop")
ENTRIES = BASELINES + SOLVERS  # what --methods chooses from
QUICK_LENGTHS = (2**10, 2**14)
FULL_LENGTHS = tuple(2**p for p in range(10, 21, 2))
TARGET_ERR = 1e-4  # the accuracy at which a solver counts as having reached the solution
# targets: (device type, cells, T, goal as a speed-up of the fastest accurate solver over torch.nn)
TARGETS = (("cpu", ("gru", "lstm"), 16384, 3.0), ("cuda", ("gru",), 65536, 10.0))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cells", type=comma_list(("gru", "lstm")), default=["gru", "lstm"], help="gru, lstm or both (default)"
    )
    parser.add_argument("--hidden", type=int_list, default=[64, 256], help="hidden sizes H (default: 64,256)")
    parser.add_argument("--batch", type=positive(int), default=16, help="batch size B (default: 16)")
    parser.add_argument(
        "--lengths",
        type=int_list,
        default=None,
        help="sequence lengths T, e.g. 1024,2^14 (default: 2^10,2^14; --full: 2^10..2^20)",
    )
    parser.add_argument("--full", action="store_true", help="the full sweep: T = 2^10, 2^12, ..., 2^20")
    parser.add_argument(
        "--weights",
        type=comma_list(("stable", "unstable")),
        default=["stable", "unstable"],
        help="stable, unstable or both (default)",
    )
    parser.add_argument(
        "--methods", type=comma_list(ENTRIES), default=list(ENTRIES), help=f"subset of {','.join(ENTRIES)}"
    )
    parser.add_argument("--tol", type=positive(float), default=1e-5, help="stopping tolerance (default: 1e-5)")
    parser.add_argument(
        "--repeat",
        type=positive(int),
        default=1,
        help="timed rounds per point, interleaved across methods, median reported (default 1: one call, or "
        "the faster of two short ones)",
    )
    parser.add_argument(
        "--time-limit",
        type=positive(float),
        default=None,
        help="seconds per solve before it is stopped (default: 8 on CPU, 60 on GPU)",
    )
    parser.add_argument(
        "--newton-max-gb",
        type=positive(float),
        default=None,
        help="skip newton/damped where 3 x the Jacobians' bytes exceed this (default: 1.5 CPU, half the GPU's memory)",
    )
    parser.add_argument("--seed", type=int, default=0)


# -- weights -------------------------------------------------------------------------------------------
def scale_recurrent_blocks(module: nn.Module, norm: float, *, clip: bool) -> None:
    """Scale every gate block of every W_hh to spectral norm ``norm`` (``clip``: only blocks above it)."""
    with torch.no_grad():
        for name, W in module.named_parameters():
            if not name.startswith("weight_hh"):
                continue
            H = W.shape[1]
            for g in range(W.shape[0] // H):
                block = W[g * H : (g + 1) * H]
                s = torch.linalg.matrix_norm(block.double(), ord=2).item()
                if s > 0 and (not clip or s > norm):
                    block.mul_(norm / s)


def make_layer(kind: str, H: int, weights: str, seed: int) -> nn.Module:
    """A one-layer nn.GRU / nn.LSTM (H -> H) with ``stable`` or ``unstable`` recurrent weights."""
    torch.manual_seed(seed)
    m = (nn.GRU if kind == "gru" else nn.LSTM)(H, H, batch_first=True)
    scale_recurrent_blocks(m, 0.9 if weights == "stable" else 3.0, clip=weights == "stable")
    return m.eval()


# -- one configuration ---------------------------------------------------------------------------------
def _solver(cell, x, method: str, **kw):
    """A callable running ``method`` (block_jacobi_loop: block Jacobi with the step loop inside)."""
    from fpcore.fixed_point import block_jacobi, solve

    if method == "block_jacobi_loop":

        def run():
            with block_jacobi.inner("loop"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return solve(cell, x, method="block_jacobi", grad="none", **kw)

        return run

    def run_plain():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return solve(cell, x, method=method, grad="none", **kw)

    return run_plain


def bench_one(kind, H, B, T, weights, methods, *, tol, time_limit, newton_max_bytes, device, seed, repeat):
    """The rows of one (cell, H, B, T, weights) point: every method timed side by side, error against the loop."""
    from fpcore import cells
    from fpcore.bench.toolkit import best_of, peak_memory_mb, time_side_by_side

    m = make_layer(kind, H, weights, seed).to(device)
    cell = cells.from_torch(m)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(B, T, H, generator=g).to(device)
    base = dict(cell=kind, H=H, B=B, T=T, weights=weights, dtype="float32")
    rows, fns, notes, last = [], {}, {}, {}

    def keeping(name, fn):  # time fn, keep its last result
        return lambda: last.__setitem__(name, fn())

    with torch.no_grad():
        loop = lambda: cell.output(cells.sequential(cell, x))  # noqa: E731
        ref = loop()
        for method in methods:
            if method == "loop":
                fns[method] = loop
            elif method == "torch.nn":
                fns[method] = lambda: m(x)[0]
            else:
                jac_bytes = 3 * B * T * cell.state_size**2 * 4
                if method in ("newton", "damped") and jac_bytes > newton_max_bytes:
                    notes[method] = f"skipped: Jacobians ~{jac_bytes / 2**30:.1f} GiB > limit"
                    continue
                fns[method] = _solver(cell, x, method, tol=tol, time_limit=time_limit)
        fns = {name: keeping(name, fn) for name, fn in fns.items()}
        if repeat == 1:
            timed = {}
            for name, fn in fns.items():
                _, t = best_of(fn, device)
                timed[name] = {"median": t, "min": t, "n": 1}
        else:
            timed = time_side_by_side(fns, device=device, warmup=1, repeat=repeat)
        for method in methods:
            row = dict(base, method=method, time_s=None, min_s=None, iterations=None, converged=None, max_err=None)
            row.update(peak_mb=None, note=notes.get(method, ""), block=None, overlap=None, inner=None)
            if method in timed:
                out = last[method]
                row.update(time_s=timed[method]["median"], min_s=timed[method]["min"], rounds=timed[method]["n"])
                if method in BASELINES:
                    row.update(iterations=T, converged=True, max_err=(out - ref).abs().max().item())
                    row["peak_mb"] = peak_memory_mb(loop if method == "loop" else lambda: m(x), device)
                else:
                    row.update(
                        iterations=out.iterations,
                        converged=out.converged,
                        max_err=(out.outputs - ref).abs().max().item(),
                        note="diverged" if out.diverged else ("time limit" if "time limit" in out.message else ""),
                        **{k: out.info.get(k) for k in ("block", "overlap", "inner")},
                    )
                    row["peak_mb"] = peak_memory_mb(_solver(cell, x, method, iters=2), device)
            rows.append(row)
    t_loop = timed.get("loop", {}).get("median")
    t_nn = timed.get("torch.nn", {}).get("median")
    for row in rows:
        row["speedup_vs_loop"] = t_loop / row["time_s"] if (t_loop and row["time_s"]) else None
        row["speedup_vs_torch_nn"] = t_nn / row["time_s"] if (t_nn and row["time_s"]) else None
    return rows


def _warm_up(device) -> None:
    """Compile/load every kernel once (the Numba scan compiles on first use) so timings exclude it."""
    from fpcore import cells

    for kind in ("gru", "lstm"):
        m = make_layer(kind, 4, "stable", 0).to(device)
        x = torch.randn(2, 64, 4, device=device)
        with torch.no_grad():
            for method in SOLVERS:
                _solver(cells.from_torch(m), x, method)()


# -- the command ---------------------------------------------------------------------------------------
def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Time every (cell, H, T, weights, method) point; return the payload (config, rows, targets, load_average)."""
    from tqdm.auto import tqdm

    from fpcore import config
    from fpcore.bench.toolkit import Deadline, LoadWatch

    device = config.device(None if args.device == "auto" else args.device)
    lengths = args.lengths or list(FULL_LENGTHS if args.full else QUICK_LENGTHS)
    quick_grid = not (args.lengths or args.full)  # quick: the longest T only at the smallest H
    time_limit = args.time_limit or (60.0 if device.type == "cuda" else 8.0)
    if args.newton_max_gb is not None:
        newton_max = args.newton_max_gb * 2**30
    elif device.type == "cuda":
        newton_max = torch.cuda.get_device_properties(device).total_memory / 2
    else:
        newton_max = 1.5 * 2**30
    config.seed_everything(args.seed)
    _warm_up(device)
    load, t0, deadline = LoadWatch(), time.perf_counter(), Deadline(args.max_minutes)
    points = [
        (kind, H, T, w)
        for kind in args.cells
        for H in args.hidden
        for T in lengths
        if not (quick_grid and H > min(args.hidden) and T > min(lengths))
        for w in args.weights
    ]
    rows, done = [], 0
    for kind, H, T, w in tqdm(points, desc="bench fixed-point", disable=args.no_progress, leave=False):
        if deadline.passed():
            break
        done += 1
        rows += bench_one(
            kind,
            H,
            args.batch,
            T,
            w,
            args.methods,
            tol=args.tol,
            time_limit=time_limit,
            newton_max_bytes=newton_max,
            device=device,
            seed=args.seed,
            repeat=args.repeat,
        )
    threads = torch.get_num_threads()
    return dict(
        config=dict(
            device=str(device),
            cells=args.cells,
            hidden=args.hidden,
            batch=args.batch,
            lengths=lengths,
            weights=args.weights,
            methods=args.methods,
            tol=args.tol,
            repeat=args.repeat,
            time_limit_s=time_limit,
            newton_max_bytes=newton_max,
            dtype="float32",
            input_size="= H",
            seed=args.seed,
            threads=threads,
            stable="each W_hh gate block projected to spectral norm <= 0.9",
            unstable="each W_hh gate block scaled to spectral norm 3",
            memory="separate untimed pass; CUDA: peak allocated bytes; CPU: peak RSS growth sampled every 2 ms "
            "(solvers: a 2-iteration solve)",
        ),
        wall_time_s=time.perf_counter() - t0,
        rows=rows,
        targets=targets(rows, device, threads),
        load_average=load.record(),
        stopped_early=deadline.note(done, len(points)),
    )


def targets(rows: list[dict[str, Any]], device, threads: int = 1) -> dict[str, dict[str, Any]]:
    """The targets, read off this run's rows (absent points stay absent): stable weights, H = 64, B = 16; the
    fastest solver that converged within max-abs error 1e-4 of the loop, as a speed-up over torch.nn's own
    layer measured in the same run. CPU (keyed by the thread count): GRU and LSTM at T = 16,384, goal >= 3.
    CUDA: GRU at T = 65,536 against cuDNN, goal >= 10."""
    dev = torch.device(device).type
    out = {}
    for where, kinds, T, goal in TARGETS:
        if where != dev:
            continue
        for kind in kinds:
            pick = [r for r in rows if (r["cell"], r["H"], r["B"], r["T"], r["weights"]) == (kind, 64, 16, T, "stable")]
            ref = next((r for r in pick if r["method"] == "torch.nn" and r["time_s"]), None)
            ok = [
                r
                for r in pick
                if r["method"] in SOLVERS
                and r["time_s"]
                and r["converged"]
                and r["max_err"] is not None
                and r["max_err"] <= TARGET_ERR
            ]
            if ref is None or not ok:
                continue
            best = min(ok, key=lambda r: r["time_s"])
            value = ref["time_s"] / best["time_s"]
            name = f"{dev}_{threads}thread_{kind}64_T{T}_B16_fastest_solver_over_torch_nn"
            if dev == "cuda":
                name = f"gpu_{kind}64_T{T}_B16_fastest_solver_over_cudnn"
            out[name] = dict(
                value=value,
                target=f">= {goal:g}",
                met=value >= goal,
                method=best["method"],
                iterations=best["iterations"],
                time_s=best["time_s"],
                baseline_s=ref["time_s"],
                max_err=best["max_err"],
            )
    return out


COLUMNS = (
    "cell",
    "H",
    "T",
    "weights",
    "method",
    "time_s",
    "iterations",
    "converged",
    "max_err",
    "peak_mb",
    "speedup_vs_loop",
    "speedup_vs_torch_nn",
    "note",
)


def report(payload: dict[str, Any]) -> str:
    from fpcore.bench.toolkit import format_table

    return format_table(payload["rows"], COLUMNS)


def figure(payload: dict[str, Any]):
    """Time to tol vs T, one panel per (cell, H, weights), log-log; hollow markers: not converged."""
    import matplotlib.pyplot as plt

    from fpcore.bench.toolkit import machine

    rows, c = payload["rows"], payload["config"]
    panels = sorted({(r["cell"], r["H"], r["weights"]) for r in rows})
    ncol = min(4, max(1, len(panels)))
    nrow = max(1, math.ceil(len(panels) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow), squeeze=False)
    for ax, (kind, H, w) in zip(axes.flat, panels):
        for i, method in enumerate(ENTRIES):
            pts = [
                r
                for r in rows
                if (r["cell"], r["H"], r["weights"], r["method"]) == (kind, H, w, method) and r["time_s"] is not None
            ]
            if not pts:
                continue
            color = f"C{i}"
            ax.plot([r["T"] for r in pts], [r["time_s"] for r in pts], "-", color=color, label=method)
            for r in pts:
                ax.plot(r["T"], r["time_s"], "o", color=color, mfc=color if r["converged"] else "none")
        ax.set(xscale="log", yscale="log", xlabel="T", ylabel="seconds", title=f"{kind.upper()} H={H}, {w}")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(
        f"fixed-point solvers, time to tol {c['tol']:g} (hollow: not converged) | B={c['batch']}, float32 | "
        f"{machine(payload)}",
        fontsize=9,
    )
    fig.tight_layout()
    return fig
