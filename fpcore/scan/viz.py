"""Plots for notebook 01: tree-scan diagrams, the three-phase picture, depth and work, error growth with T.

Plot helpers and the cost model only; the computations they draw live in :mod:`fpcore.scan.ref` and
:mod:`fpcore.bench.scan`. Each plotting function returns the matplotlib Figure.
"""

from __future__ import annotations

import math

__all__ = [
    "draw_tree",
    "draw_three_phase",
    "scan_costs",
    "plot_depth_work",
    "depth_work_explorer",
    "error_growth",
    "plot_error_growth",
]


def _level_label(level: dict) -> str:
    """Row label of a recorded level: Hillis-Steele's offset, or Blelloch's sweep and stride."""
    if level["phase"] in ("up", "down"):
        return f"{level['phase']}-sweep, stride {level['offset']}"
    return f"offset {level['offset']}"  # Hillis-Steele: element i combines element i - offset


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
        ax.text(n - 0.3, (y0 + y1) / 2, _level_label(lvl), fontsize=8, va="center")
    ax.set_yticks([])
    ax.set_xticks(range(n))
    ax.set_xticklabels([str(i + 1) for i in range(n)])  # positions t = 1..n, as in the equations
    padded = n > T
    ax.set_xlabel("position t" + (f" (grey: t > {T}, padding with the identity pair (1, 0))" if padded else ""))
    ax.set_title(title or f"{len(record)} levels for T = {T}")
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    return fig


def draw_three_phase(h, record: dict, title: str = "three-phase chunked scan"):
    """Plot h (batch 0, feature 0) against t = 1..T with the chunk bounds and each chunk's incoming state.

    ``record`` holds ``bounds`` (0-based half-open [lo, hi) per chunk) and ``carries`` (the state before each
    chunk, [B, D]); the carry of a chunk starting at position lo + 1 is h_lo, drawn at t = lo (t = 0: h_0).
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3))
    T = h.shape[1]
    ax.plot(range(1, T + 1), h[0, :, 0].detach().cpu(), color="C0", lw=1, label="$h_t$ (phase 3)")
    for c, ((lo, hi), carry) in enumerate(zip(record["bounds"], record["carries"])):
        ax.axvspan(lo + 0.5, hi + 0.5, color=f"C{c % 2 + 1}", alpha=0.12)
        ax.scatter([lo], [float(carry[0, 0])], color="C3", zorder=3, label="carry in (phase 2)" if c == 0 else None)
    ax.set(xlabel="t (shaded: the chunks)", ylabel="$h_t$", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def scan_costs(T: int, P: int) -> dict[str, dict[str, int]]:
    """Depth (sequential combine steps) and work (combines in all) of each scan of notebook 01, per lane.

    A "combine" is one application of ``(a1, b1) . (a2, b2)`` (or one step ``h = a h + b``) on one
    feature; depth counts the steps that must follow each other when every independent combine of a
    step runs at once. With ``n = 2^ceil(log2 T)`` and ``L = ceil(T / P)``:

    ==============  =======================  ===============================
    scan            depth                    work
    ==============  =======================  ===============================
    loop            T                        T
    hillis_steele   ceil(log2 T)             sum over levels k of (T - 2^k)
    blelloch        2 log2 n + 1             (n - 1) up + (n - 1) down + n
    three_phase     L + P + L                T + P + T
    ==============  =======================  ===============================

    Blelloch's last step combines each exclusive prefix with its own element (the inclusive scan);
    the three-phase scan with P chunks reduces each chunk (L steps, chunks in parallel), scans the P
    chunk pairs (P steps) and re-scans each chunk from its carry (L steps). T, P >= 1, P <= T.
    """
    if not (isinstance(T, int) and isinstance(P, int) and 1 <= P <= T):
        raise ValueError(f"scan_costs: need integers 1 <= P <= T, got T={T!r}, P={P!r}")
    levels = (T - 1).bit_length()  # ceil(log2 T)
    n = 1 << levels
    L = -(-T // P)
    return {
        "loop": {"depth": T, "work": T},
        "hillis_steele": {"depth": levels, "work": sum(T - (1 << k) for k in range(levels))},
        "blelloch": {"depth": 2 * levels + 1, "work": 3 * n - 2},
        "three_phase": {"depth": 2 * L + P, "work": 2 * T + P},
    }


def plot_depth_work(T: int, P: int, axes=None):
    """Depth and work of the three-phase scan against the chunk count P, beside the loop and the trees.

    Left: depth (log-log) over P = 1..T with the chosen P marked and the best P = sqrt(2T) starred;
    right: work. Horizontal lines: the loop, Hillis-Steele and Blelloch, which have no P.
    """
    import matplotlib.pyplot as plt

    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    else:
        fig = axes[0].figure
    Ps = sorted({max(1, min(T, round(2 ** (k / 4)))) for k in range(0, 4 * max(1, T.bit_length()) + 1)} | {P})
    costs = [scan_costs(T, p)["three_phase"] for p in Ps]
    here, best_P = scan_costs(T, P), max(1, min(T, round(math.sqrt(2 * T))))
    for ax, key in zip(axes, ("depth", "work")):
        ax.loglog(Ps, [c[key] for c in costs], color="C0", lw=2, label="three-phase, P chunks")
        for name, color, ls in (("loop", "k", "-"), ("hillis_steele", "C3", "--"), ("blelloch", "C2", ":")):
            ax.axhline(here[name][key], color=color, ls=ls, lw=1.2, label=name.replace("_", "-"))
        ax.plot([P], [here["three_phase"][key]], "o", color="C1", ms=9, zorder=4, label=f"P = {P}")
        if key == "depth":
            best = scan_costs(T, best_P)["three_phase"][key]
            ax.plot(
                [best_P], [best], "*", color="C0", ms=13, zorder=4, label=rf"best P $\approx\sqrt{{2T}}$ = {best_P}"
            )
        ax.set(xlabel="chunks P (processors)", ylabel=f"{key} (combines)", title=f"{key}, T = {T:,}")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def depth_work_explorer(log2_T: int = 12, log2_P: int = 5):
    """An ipywidgets panel: move T and the chunk count P, see the depth and work of every scan.

    Sliders take log2 T (4..20) and log2 P (0..log2 T); the figure is :func:`plot_depth_work`.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    def show(log2_T=log2_T, log2_P=log2_P):
        T, P = 1 << log2_T, 1 << min(log2_P, log2_T)
        plot_depth_work(T, P)
        plt.show()

    return widgets.interactive(
        show,
        log2_T=widgets.IntSlider(value=log2_T, min=4, max=20, description="log2 T"),
        log2_P=widgets.IntSlider(value=log2_P, min=0, max=20, description="log2 P"),
    )


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
