"""Plots for notebook 01: tree-scan diagrams, the three-phase picture, error growth with T.

Plot helpers only; the computations they draw live in :mod:`fpcore.scan.ref` and
:mod:`fpcore.bench.scan`. Each returns the matplotlib Figure.
"""

from __future__ import annotations

__all__ = ["draw_tree", "draw_three_phase", "error_growth", "plot_error_growth"]


def draw_tree(record: list[dict], T: int, title: str = ""):
    """Draw a recorded tree scan: one row per level, an arrow src -> dst for "dst := src . dst".

    ``record`` comes from ``ref.hillis_steele(..., record=[])`` or ``ref.blelloch(..., record=[])``;
    Blelloch's down-sweep rows also swap (the left node takes the parent's prefix), drawn dashed.
    """
    import matplotlib.pyplot as plt

    n = max([T] + [max(max(p) for p in lvl["pairs"]) + 1 for lvl in record if lvl["pairs"]])
    levels = len(record)
    fig, ax = plt.subplots(figsize=(0.55 * n + 1.5, 0.7 * (levels + 1) + 0.6))
    for row in range(levels + 1):
        y = -row
        ax.scatter(range(n), [y] * n, s=120, c=["C0" if i < T else "0.8" for i in range(n)], zorder=3)
    for row, lvl in enumerate(record):
        y0, y1 = -row, -row - 1
        for i in range(n):  # values that do not change at this level move straight down
            ax.plot([i, i], [y0, y1], color="0.85", lw=0.8, zorder=1)
        for src, dst in lvl["pairs"]:
            ax.annotate("", xy=(dst, y1), xytext=(src, y0), arrowprops=dict(arrowstyle="->", color="C3", lw=1.3))
            if lvl["phase"] == "down":
                ax.annotate(
                    "", xy=(src, y1), xytext=(dst, y0), arrowprops=dict(arrowstyle="->", color="C2", lw=1.0, ls="--")
                )
        ax.text(n - 0.3, (y0 + y1) / 2, f"{lvl['phase']} {lvl['offset']}", fontsize=8, va="center")
    ax.set_yticks([])
    ax.set_xticks(range(n))
    ax.set_xlabel("position t (grey: padding with the identity (1, 0))")
    ax.set_title(title or f"{len(record)} levels for T = {T}")
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    return fig


def draw_three_phase(h, record: dict, title: str = "three-phase chunked scan"):
    """Plot h (batch 0, feature 0) against t with the chunk bounds and each chunk's incoming state."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3))
    ax.plot(h[0, :, 0].detach().cpu(), color="C0", lw=1, label="h_t (phase 3)")
    for c, ((lo, hi), carry) in enumerate(zip(record["bounds"], record["carries"])):
        ax.axvspan(lo - 0.5, hi - 0.5, color=f"C{c % 2 + 1}", alpha=0.12)
        ax.scatter(
            [lo - 0.5], [float(carry[0, 0])], color="C3", zorder=3, label="carry in (phase 2)" if c == 0 else None
        )
    ax.set(xlabel="t", ylabel="h_t", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def error_growth(log2_ts, *, backend: str = "auto", B: int = 1, D: int = 8, gate_low: float = 0.999, seed: int = 0):
    """fp32 scan vs float64 on the same (fp32-rounded) inputs, for T = 2^k: list of dicts.

    Gates U(gate_low, 1) (long memory, the hard case for rounding), inputs N(0, 1). The float64
    result comes from the same backend in float64 (itself tested against the loop); each dict holds
    T, max_abs_err, max |h| and their ratio.
    """
    import torch

    from fpcore.scan import linear_scan

    out = []
    g = torch.Generator().manual_seed(seed)
    for k in log2_ts:
        T = 1 << k
        a = (gate_low + (1 - gate_low) * torch.rand(B, T, D, generator=g)).float()
        b = torch.randn(B, T, D, generator=g).float()
        h32 = linear_scan(a, b, backend=backend)
        h64 = linear_scan(a.double(), b.double(), backend=backend)
        err = (h32.double() - h64).abs().max().item()
        scale = h64.abs().max().item()
        out.append({"T": T, "max_abs_err": err, "max_abs_h": scale, "rel_err": err / scale})
    return out


def plot_error_growth(rows, title: str = "fp32 scan error vs float64"):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    Ts = [r["T"] for r in rows]
    ax.loglog(Ts, [r["max_abs_err"] for r in rows], "o-", label="max |h32 - h64|")
    ax.loglog(Ts, [r["rel_err"] for r in rows], "s--", label="relative to max |h|")
    ax.set(xlabel="T", ylabel="error", title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
