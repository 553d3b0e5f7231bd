"""Block Jacobi's block length M and overlap w, measured: ``python -m fpcore bench block-jacobi``.

Two measurements on one stable layer (GRU or LSTM, H = 64, B = 16, float32, the same weights as the
fixed-point benchmark), to test the rule of :mod:`fpcore.fixed_point.block_jacobi`:

1. the fused layer's step cost: torch's layer run for a fixed number of steps on R rows, R from B to 64 B;
   a least-squares fit of time per step = alpha + beta R gives kappa = alpha / beta, the constant of the rule
   M* = sqrt(B T w / kappa) (compared with the one built in, ``block_jacobi.KAPPA``);
2. the solve to ``--tol`` over a grid of (M, w): time, sweeps and max-abs error against torch.nn, beside
   torch.nn itself and the rule's own choice. The target: the rule's choice within 1.25x of the fastest
   grid point.

Defaults: T = 16,384 on a CPU and 65,536 on a GPU; M = 2^5 .. 2^12, w in {0, 16, 32, 64, 128}. Writes the
record fixed_point_blocks_<device>.json and .png.
"""

from __future__ import annotations

import argparse
import functools
import math
from collections.abc import Callable
from typing import Any

from fpcore.bench.toolkit import comma_list, int_list, positive

STEM = "fixed_point_blocks"
HELP = "block Jacobi: the fused layer's step cost (kappa) and time to tol over block length x overlap vs the rule"
RULE_WITHIN = 1.25  # the target: the rule's (M, w) at most this much slower than the best grid point


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cells", type=comma_list(("gru", "lstm")), default=["gru", "lstm"], help="gru, lstm or both")
    p.add_argument("--hidden", type=positive(int), default=64, help="H (default 64)")
    p.add_argument("--batch", type=positive(int), default=16, help="B (default 16)")
    p.add_argument("--length", type=positive(int), default=None, help="T (default: 16384 on CPU, 65536 on CUDA)")
    p.add_argument("--blocks", type=int_list, default=None, help="block lengths M (default 2^5..2^12, <= T)")
    p.add_argument("--overlaps", type=_overlap_list, default=None, help="overlaps w >= 0 (default 0,16,32,64,128)")
    p.add_argument("--tol", type=positive(float), default=1e-5, help="stopping tolerance (default 1e-5)")
    p.add_argument("--repeat", type=positive(int), default=1, help="timed rounds per point (default 1)")
    p.add_argument("--seed", type=int, default=0)


def _overlap_list(text: str) -> list[int]:
    """An argparse ``type``: ``0,16,32`` (integers >= 0)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected integers >= 0 like 0,16,32; got {text!r}")
    return values


def step_costs(cell, B: int, device, steps: int = 64) -> dict[str, Any]:
    """Time per step of torch's layer for ``cell`` on R rows (R = B, 2B, ..., 64B); fit alpha + beta R."""
    import torch

    from fpcore import cells
    from fpcore.bench.toolkit import time_side_by_side

    layer = cells.to_torch(cell, batch_first=False)
    rows = [B * 2**k for k in range(7)]
    fns = {}
    for R in rows:
        x = torch.randn(steps, R, cell.input_size, device=device)
        fns[R] = lambda x=x: layer(x)
    with torch.no_grad():
        timed = time_side_by_side(fns, device=device, warmup=1, repeat=3)
    per_step = [timed[R]["median"] / steps for R in rows]
    n = len(rows)
    mr, mt = sum(rows) / n, sum(per_step) / n
    beta = sum((r - mr) * (t - mt) for r, t in zip(rows, per_step)) / sum((r - mr) ** 2 for r in rows)
    alpha = max(mt - beta * mr, 0.0)
    return {
        "rows": rows,
        "seconds_per_step": per_step,
        "alpha_s": alpha,
        "beta_s": beta,
        "kappa": alpha / beta if beta > 0 else math.inf,
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import warnings

    import torch
    from tqdm.auto import tqdm

    from fpcore import cells, config
    from fpcore.bench.fixed_point import make_layer
    from fpcore.bench.toolkit import Deadline, LoadWatch, best_of, time_side_by_side
    from fpcore.fixed_point import block_jacobi, solve

    device = config.device(None if args.device == "auto" else args.device)
    T = args.length or (65536 if device.type == "cuda" else 16384)
    B = args.batch
    blocks = [M for M in (args.blocks or [2**k for k in range(5, 13)]) if M <= T]
    overlaps = args.overlaps if args.overlaps is not None else [0, 16, 32, 64, 128]
    load, deadline = LoadWatch(), Deadline(args.max_minutes)
    rows, fits, done, total = [], {}, 0, 0
    for kind in args.cells:
        m = make_layer(kind, args.hidden, "stable", args.seed).to(device)
        cell = cells.from_torch(m)
        x = torch.randn(B, T, args.hidden, generator=torch.Generator().manual_seed(args.seed + 1)).to(device)
        fits[kind] = step_costs(cell, B, device)
        rule = block_jacobi.choose(T, B, device)
        grid = [rule] + sorted({(M, w) for M in blocks for w in overlaps if w <= M} - {rule})  # the rule's first
        total += len(grid)
        with torch.no_grad():
            y = m(x)[0]

            def solver(M, w, cell=cell, x=x):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return solve(cell, x, method="block_jacobi", block=M, overlap=w, tol=args.tol, grad="none")

            solver(*rule)  # warm-up (Numba's scan for the LSTM compiles on first use)
            for M, w in tqdm(grid, desc=f"bench block-jacobi {kind}", disable=args.no_progress, leave=False):
                if deadline.passed():
                    break
                done += 1
                run: Callable[[], Any] = functools.partial(solver, M, w)
                if args.repeat == 1:
                    res, t = best_of(run, device)
                else:
                    res = solver(M, w)
                    t = time_side_by_side({"s": run}, device=device, repeat=args.repeat)["s"]["median"]
                rows.append(
                    dict(
                        cell=kind,
                        H=args.hidden,
                        B=B,
                        T=T,
                        method="block_jacobi",
                        block=M,
                        overlap=w,
                        rule=(M, w) == rule,
                        time_s=t,
                        sweeps=res.iterations,
                        converged=res.converged,
                        max_err=(res.outputs - y).abs().max().item(),
                    )
                )
            _, t_nn = best_of(functools.partial(m, x), device)
            rows.append(dict(cell=kind, H=args.hidden, B=B, T=T, method="torch.nn", time_s=t_nn))
    return {
        "config": {
            "device": str(device),
            "cells": args.cells,
            "hidden": args.hidden,
            "batch": B,
            "length": T,
            "blocks": blocks,
            "overlaps": overlaps,
            "tol": args.tol,
            "repeat": args.repeat,
            "threads": torch.get_num_threads(),
            "kappa_built_in": block_jacobi.KAPPA.get(device.type),
            "overlap_built_in": block_jacobi.OVERLAP,
            "weights": "stable: each W_hh gate block projected to spectral norm <= 0.9",
        },
        "step_costs": fits,
        "rows": rows,
        "targets": targets(rows, device),
        "load_average": load.record(),
        "stopped_early": deadline.note(done, total),
    }


def targets(rows: list[dict[str, Any]], device) -> dict[str, dict[str, Any]]:
    """Per cell: the rule's (M, w) time over the fastest converged grid point's (goal <= 1.25)."""
    import torch

    out = {}
    for kind in dict.fromkeys(r["cell"] for r in rows):
        pts = [r for r in rows if r["cell"] == kind and r["method"] == "block_jacobi" and r["converged"]]
        rule = next((r for r in pts if r["rule"]), None)
        if rule is None or not pts:
            continue
        best = min(pts, key=lambda r: r["time_s"])
        value = rule["time_s"] / best["time_s"]
        name = f"{torch.device(device).type}_{kind}{rule['H']}_T{rule['T']}_rule_over_best_block"
        out[name] = dict(
            value=value,
            target=f"<= {RULE_WITHIN:g}",
            met=value <= RULE_WITHIN,
            rule=[rule["block"], rule["overlap"]],
            best=[best["block"], best["overlap"]],
        )
    return out


COLUMNS = ("cell", "T", "method", "block", "overlap", "rule", "time_s", "sweeps", "converged", "max_err")


def report(payload: dict[str, Any]) -> str:
    from fpcore.bench.toolkit import format_table

    lines = [format_table(payload["rows"], COLUMNS)]
    for kind, fit in payload["step_costs"].items():
        per = ", ".join(f"R={R}: {t * 1e6:.0f} us" for R, t in zip(fit["rows"], fit["seconds_per_step"]))
        lines.append(
            f"{kind} fused step: {per}; fit alpha {fit['alpha_s'] * 1e6:.1f} us + beta "
            f"{fit['beta_s'] * 1e9:.1f} ns/row, kappa = {fit['kappa']:.1f} rows "
            f"(built in: {payload['config']['kappa_built_in']})"
        )
    return "\n".join(lines)


def figure(payload: dict[str, Any]):
    """Time to tol against M, one line per w and a panel per cell; the rule's choice starred, torch.nn dashed."""
    import matplotlib.pyplot as plt

    from fpcore.bench.toolkit import machine

    c = payload["config"]
    kinds = list(dict.fromkeys(r["cell"] for r in payload["rows"]))
    fig, axes = plt.subplots(1, max(1, len(kinds)), figsize=(5.5 * max(1, len(kinds)), 4.2), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        pts = [r for r in payload["rows"] if r["cell"] == kind and r["method"] == "block_jacobi"]
        for i, w in enumerate(sorted({r["overlap"] for r in pts})):
            sel = sorted((r["block"], r["time_s"], r["converged"]) for r in pts if r["overlap"] == w)
            ax.plot([s[0] for s in sel], [s[1] for s in sel], "-", color=f"C{i}", label=f"w = {w}")
            for M, t, ok in sel:
                ax.plot(M, t, "o", color=f"C{i}", mfc=f"C{i}" if ok else "none", ms=4)
        for r in pts:
            if r["rule"]:
                ax.plot(
                    r["block"], r["time_s"], "*", color="black", ms=14, label=f"rule: M={r['block']}, w={r['overlap']}"
                )
        nn_t = next((r["time_s"] for r in payload["rows"] if r["cell"] == kind and r["method"] == "torch.nn"), None)
        if nn_t:
            ax.axhline(nn_t, color="gray", ls="--", label="torch.nn")
        ax.set(xscale="log", yscale="log", xlabel="block length M", ylabel="seconds to tol", title=f"{kind.upper()}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(
        f"block Jacobi, H={c['hidden']}, B={c['batch']}, T={c['length']}, tol {c['tol']:g}, float32 | "
        f"{machine(payload)} (hollow: not converged)",
        fontsize=9,
    )
    fig.tight_layout()
    return fig
