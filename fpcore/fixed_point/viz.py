"""Plots and widgets for notebooks 03 (RNNs as fixed points) and 05 (Newton and quasi-Newton).

Plots only: what they draw is computed in the notebooks, where the algorithms are written out, or by
:mod:`fpcore.fixed_point` itself. Every function takes plain tensors, lists and dicts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "plot_errors",
    "plot_dependency",
    "dependency_grid",
    "dependency_widget",
    "plot_curves",
    "plot_iterations_vs_T",
    "plot_block_table",
    "plot_damping_map",
    "damping_widget",
    "plot_benchmark",
]


# -- notebook 03: one Markov order per iteration ---------------------------------------------------------
def plot_errors(err: Tensor, ks, ax=None):
    """Heatmap of log10 max-abs error of h_t^(k) (rows k, columns t), with the line t = k."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(7, 3))[1]
    T = err.shape[1]
    im = ax.imshow(
        torch.log10(err.clamp_min(1e-16)).cpu(),
        aspect="auto",
        cmap="magma",
        origin="lower",
        extent=(0.5, T + 0.5, -0.5, len(ks) - 0.5),
        vmin=-16,
        vmax=0,
    )
    ax.plot(list(ks), range(len(ks)), "c--", lw=1, label="t = k")
    ax.set(
        yticks=range(len(ks)),
        yticklabels=ks,
        xlabel="position t",
        ylabel="Jacobi iterations k",
        title="log10 |s_t^(k) - s_t|: exact (black) for t <= k",
    )
    ax.legend(loc="lower right", fontsize=8)
    plt.colorbar(im, ax=ax)
    return ax


def plot_dependency(dep: Tensor, k: int, ax=None):
    """Heatmap of log10 ||d s_t^(k) / d x_t'|| over (t, t'): a band of width k ending on the diagonal."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(4, 3.6))[1]
    T = dep.shape[0]
    ax.imshow(
        torch.log10(dep.clamp_min(1e-16)).cpu(),
        cmap="viridis",
        origin="upper",
        vmin=-8,
        vmax=0,
        extent=(0.5, T + 0.5, T + 0.5, 0.5),
    )
    ax.set(xlabel="input position t'", ylabel="output position t", title=f"k = {k}: d s_t / d x_t'")
    return ax


def dependency_grid(deps: dict):
    """One static figure: the dependency heatmap for each ``{k: dependency(cell, x, k)}``."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(deps), figsize=(3.3 * len(deps), 3.2), squeeze=False)
    for ax, (k, dep) in zip(axes[0], deps.items()):
        plot_dependency(dep, k, ax)
    fig.tight_layout()
    return fig


def dependency_widget(dependency: Callable[[int], Tensor], k_max: int):
    """An ipywidgets slider over k redrawing :func:`plot_dependency` of ``dependency(k)`` ([T, T]); its first
    render (k = 1) is static output, so an executed notebook still shows one heatmap."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    def show(k=1):
        plot_dependency(dependency(k), k)
        plt.show()

    return widgets.interact(
        show,
        k=widgets.IntSlider(value=1, min=1, max=k_max, step=1, description="iterations k", continuous_update=False),
    )


# -- notebook 05: Newton and quasi-Newton --------------------------------------------------------------
# one look per method, so that lines that coincide (damped = Newton when it never damps) stay visible: the
# lower one wide and hollow, the upper one thin and dashed
STYLE = {
    "jacobi": dict(color="C0", marker="o", ls="-", lw=1.2, ms=3),
    "quasi_newton": dict(color="C1", marker="s", ls="-", lw=1.2, ms=3),
    "newton": dict(color="C2", marker="o", ls="-", lw=4, ms=9, mfc="none", alpha=0.55),
    "damped": dict(color="C3", marker="x", ls="--", lw=1.2, ms=5),
    "block_jacobi": dict(color="C4", marker="^", ls="-", lw=1.2, ms=3),
}


def _style(method: str, i: int) -> dict:
    return STYLE.get(method, dict(color=f"C{i}", marker="o", ls="-", ms=3))


def plot_curves(curves: dict, title: str = "", ax=None):
    """Error against the sequential result per iteration (log y), one line per method.

    ``curves``: method -> {"errors": [max-abs error after each iteration], "diverged": bool}. Newton is drawn
    wide and hollow under a thin dashed damped line, so the two stay visible where they coincide.
    """
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(5.5, 3.6))[1]
    for i, (method, c) in enumerate(curves.items()):
        errs = [max(e, 1e-17) if math.isfinite(e) else float("nan") for e in c["errors"]]
        label = method + (" (diverged)" if c.get("diverged") else "")
        ax.semilogy(range(1, len(errs) + 1), errs, label=label, **_style(method, i))
    ax.set(xlabel="iteration k", ylabel="max |s^(k) - s|", title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=9)
    return ax


def plot_iterations_vs_T(table: dict, title: str = ""):
    """Two log-log panels from ``table``: method -> [(T, iterations, max-abs error, converged)]."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    for i, (method, rows) in enumerate(table.items()):
        Ts = [r[0] for r in rows]
        a.loglog(Ts, [r[1] for r in rows], label=method, **_style(method, i))
        b.loglog(Ts, [max(r[2], 1e-17) for r in rows], label=method, **_style(method, i))
    a.set(xlabel="T", ylabel="iterations to tol", title=title)
    b.set(xlabel="T", ylabel="max-abs error vs sequential", title="error at the stop")
    for ax in (a, b):
        ax.grid(True, which="both", alpha=0.3)
    a.legend(fontsize=9)
    fig.tight_layout()
    return fig


def plot_damping_map(iterations: Tensor, norms: Sequence[float], alphas: Sequence[float], T: int, ax=None):
    """Heatmap of the iterations a fixed damping alpha needs, for each weight norm (rows) and alpha (columns).

    ``iterations`` [len(norms), len(alphas)]: iterations to the tolerance, or ``nan`` where the iteration
    diverged (drawn white, marked "div"). alpha = 0 is Jacobi, alpha = 1 Newton; the colour scale ends at T,
    the most any causal method needs.
    """
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(6, 3.8))[1]
    im = ax.imshow(iterations.double().cpu(), cmap="viridis", aspect="auto", origin="lower", vmin=1, vmax=T)
    ax.set(
        xticks=range(len(alphas)),
        xticklabels=[f"{a:g}" for a in alphas],
        yticks=range(len(norms)),
        yticklabels=[f"{n:g}" for n in norms],
        xlabel="damping alpha (0: Jacobi, 1: Newton)",
        ylabel="||W_hh||_2",
        title="iterations to tol (white: diverged)",
    )
    for r in range(len(norms)):
        for c in range(len(alphas)):
            v = float(iterations[r, c])
            dark = not math.isnan(v) and v <= T / 2  # white text on the dark end of viridis
            ax.text(
                c,
                r,
                "div" if math.isnan(v) else f"{v:.0f}",
                ha="center",
                va="center",
                fontsize=8,
                color="w" if dark else "k",
            )
    plt.colorbar(im, ax=ax)
    return ax


def damping_widget(run: Callable[[float, float], dict], norms: Sequence[float], alphas: Sequence[float], title=""):
    """Sliders over the weight norm and the damping alpha; ``run(norm, alpha)`` returns curves for
    :func:`plot_curves` (e.g. Jacobi, Newton and the damped step at that alpha). The first render is static."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    def show(norm=norms[0], alpha=alphas[0]):
        plot_curves(run(norm, alpha), f"{title} ||W|| = {norm:g}, alpha = {alpha:g}")
        plt.show()

    return widgets.interact(
        show,
        norm=widgets.SelectionSlider(
            options=list(norms), value=norms[0], description="||W_hh||_2", continuous_update=False
        ),
        alpha=widgets.SelectionSlider(
            options=list(alphas), value=alphas[0], description="alpha", continuous_update=False
        ),
    )


def plot_block_table(rows: list[dict], T: int, ax=None):
    """Sequential steps (the depth) against the block length, one line per cell and overlap, with the
    loop's T steps for reference (log-log)."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(5.5, 3.6))[1]
    keys = sorted({(r["cell"], r["w"] > 0) for r in rows})
    for i, (name, overlap) in enumerate(keys):
        pts = [r for r in rows if r["cell"] == name and (r["w"] > 0) == overlap]
        ax.loglog(
            [r["L"] for r in pts],
            [r["steps"] for r in pts],
            "o-" if overlap else "s--",
            ms=4,
            color=f"C{i}",
            label=f"{name}, {'default w' if overlap else 'no overlap'}",
        )
    ax.axhline(T, color="k", lw=1, ls=":", label=f"the loop: T = {T} steps")
    ax.set(xlabel="block length M", ylabel="sequential steps to tol", title="block Jacobi: depth vs M")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=9)
    return ax


def plot_benchmark(rows: list[dict], title: str = ""):
    """Seconds to the tolerance per method, from the rows of a fixed-point benchmark record (results/): one panel
    per (cell, T), stable and unstable weights side by side (log y). Hatched: stopped by the benchmark's time
    limit before reaching the tolerance (``converged`` false); "skipped": not run (the reason is in ``note``)."""
    import matplotlib.pyplot as plt

    cases = sorted({(r["cell"], r["T"]) for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    ncols = min(2, len(cases))
    nrows = -(-len(cases) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.8 * ncols, 3.6 * nrows), sharey=True, squeeze=False)
    for ax in axes.flat[len(cases) :]:
        ax.set_visible(False)
    for ax, (cell, T) in zip(axes.flat, cases):
        for j, weights in enumerate(("stable", "unstable")):
            for i, method in enumerate(methods):
                r = next(
                    (r for r in rows if (r["cell"], r["T"], r["weights"], r["method"]) == (cell, T, weights, method)),
                    None,
                )
                x = i + (j - 0.5) * 0.4
                if r is None or r["time_s"] is None:
                    ax.text(
                        x,
                        0.02,
                        "skipped",
                        rotation=90,
                        ha="center",
                        va="bottom",
                        fontsize=7,
                        transform=ax.get_xaxis_transform(),
                    )
                    continue
                ax.bar(
                    x,
                    r["time_s"],
                    width=0.4,
                    color=f"C{j}",
                    hatch="" if r["converged"] else "///",
                    edgecolor="k",
                    lw=0.5,
                    label=weights if i == 0 else None,
                )
        ax.set(yscale="log", title=f"{cell}, T = {T}", xticks=range(len(methods)))
        ax.set_xticklabels(methods, rotation=45, ha="right", fontsize=8)
        ax.grid(True, axis="y", which="both", alpha=0.3)
    for row in axes:
        row[0].set_ylabel("seconds to tol")
    axes[0][0].legend(fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
