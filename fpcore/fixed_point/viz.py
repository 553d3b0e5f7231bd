"""Computations and plots behind notebooks 03 (RNNs as fixed points) and 05 (Newton and quasi-Newton).

The notebooks stay thin: each helper here computes one thing the notebook shows (and asserts), or draws it.
"""

from __future__ import annotations

import math
import time
import warnings

import torch
from torch import Tensor, nn

from fpcore import cells
from fpcore.fixed_point import solve
from fpcore.fixed_point.block_jacobi import blocks, default_overlap

# the four ways of linearising the step that notebook 05 compares (block Jacobi has a section of its own)
METHODS = ("jacobi", "quasi_newton", "newton", "damped")

__all__ = [
    "rnn_with_norm",
    "jacobi_errors",
    "dependency",
    "plot_errors",
    "plot_dependency",
    "dependency_grid",
    "dependency_widget",
    "error_curves",
    "plot_curves",
    "iterations_vs_T",
    "plot_iterations_vs_T",
    "cost_per_iteration",
    "block_table",
    "plot_block_table",
]


# -- models --------------------------------------------------------------------------------------------
def rnn_with_norm(
    kind: str = "tanh", D: int = 3, H: int = 16, norm: float = 0.5, seed: int = 0, dtype=torch.float64
) -> nn.Module:
    """A one-layer nn.RNN ("tanh") / nn.GRU ("gru") / nn.LSTM ("lstm") whose every W_hh gate block has
    spectral norm ``norm`` (< 1: contractive, paper B's stable regime for the tanh RNN; 3: chaotic)."""
    torch.manual_seed(seed)
    m = {"tanh": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[kind](D, H, batch_first=True).to(dtype)
    with torch.no_grad():
        W = m.weight_hh_l0
        for g in range(W.shape[0] // H):
            block = W[g * H : (g + 1) * H]
            block.mul_(norm / torch.linalg.matrix_norm(block, ord=2))
    return m.eval()


# -- notebook 03: one Markov order per iteration ---------------------------------------------------------
def jacobi_errors(cell, x: Tensor, ks, h0=None) -> Tensor:
    """max-abs error of the Jacobi iterate h_t^(k) against the sequential h_t, per k and t: [len(ks), T]."""
    ref = cells.sequential(cell, x, h0)
    with torch.no_grad():
        return torch.stack(
            [(solve(cell, x, h0, method="jacobi", iters=k).states - ref).abs().amax(dim=(0, 2)) for k in ks]
        )


def dependency(cell, x: Tensor, k: int) -> Tensor:
    """How h_t^(k) (k Jacobi iterations from zero) depends on x_s: D[t, s] = ||d h_t^(k) / d x_s||_F.

    x [1, T, D] -> [T, T], from the Jacobian of the whole map (torch.autograd.functional.jacobian).
    """
    if x.shape[0] != 1:
        raise ValueError(f"dependency takes one sequence, x [1, T, D]; got {tuple(x.shape)}")
    fn = lambda xx: solve(cell, xx, method="jacobi", iters=k).outputs[0]  # noqa: E731  (T, H)
    J = torch.autograd.functional.jacobian(fn, x, vectorize=True)  # (T, H, 1, T, D), one batched backward
    return J[:, :, 0].pow(2).sum(dim=(1, 3)).sqrt()  # (T, T)


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
        title="log10 |h_t^(k) - h_t|: exact (black) for t <= k",
    )
    ax.legend(loc="lower right", fontsize=8)
    plt.colorbar(im, ax=ax)
    return ax


def plot_dependency(dep: Tensor, k: int, ax=None):
    """Heatmap of log10 ||d h_t^(k) / d x_s|| over (t, s): a band of width k below the diagonal."""
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
    ax.set(xlabel="input position s", ylabel="output position t", title=f"k = {k}: d h_t / d x_s")
    return ax


def dependency_grid(deps: dict):
    """One static figure: the dependency heatmap for each ``{k: dependency(cell, x, k)}``."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(deps), figsize=(3.3 * len(deps), 3.2), squeeze=False)
    for ax, (k, dep) in zip(axes[0], deps.items()):
        plot_dependency(dep, k, ax)
    fig.tight_layout()
    return fig


def dependency_widget(cell, x: Tensor, k_max: int):
    """An ipywidgets slider over k redrawing :func:`plot_dependency` (first render at k = 1, static)."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    def show(k=1):
        plot_dependency(dependency(cell, x, k), k)
        plt.show()

    return widgets.interact(
        show,
        k=widgets.IntSlider(value=1, min=1, max=k_max, step=1, description="iterations k", continuous_update=False),
    )


# -- notebook 05: Newton and quasi-Newton --------------------------------------------------------------
def error_curves(cell, x: Tensor, methods=tuple(METHODS), **kwargs) -> dict[str, dict]:
    """Per method: max-abs error against the sequential states after each iteration, and the result.

    Returns {method: {"errors": [...], "result": FixedPointResult, "warnings": [messages]}}.
    """
    ref = cells.sequential(cell, x)
    out = {}
    for method in methods:
        errs = []
        with warnings.catch_warnings(record=True) as caught, torch.no_grad():
            warnings.simplefilter("always")
            res = solve(
                cell,
                x,
                method=method,
                grad="none",
                callback=lambda k, S, errs=errs: errs.append(float((S - ref).abs().max())),
                **kwargs,
            )
        out[method] = dict(errors=errs, result=res, warnings=[str(w.message) for w in caught])
    return out


def plot_curves(curves: dict, title: str = "", ax=None):
    """Error against the sequential result per iteration (log y), one line per method."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(5, 3.5))[1]
    for i, (method, c) in enumerate(curves.items()):
        errs = [e if math.isfinite(e) else float("nan") for e in c["errors"]]
        label = method + (" (diverged)" if c["result"].diverged else "")
        ax.semilogy(range(1, len(errs) + 1), [max(e, 1e-17) for e in errs], "o-", ms=3, color=f"C{i}", label=label)
    ax.set(xlabel="iteration", ylabel="max |h^(k) - h|", title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def iterations_vs_T(cell_fn, lengths, methods=tuple(METHODS), B: int = 4, tol: float = 1e-8, seed: int = 0):
    """Iterations to ``tol`` and final max-abs error for each T and method: {method: [(T, iters, err)]}."""
    out = {m: [] for m in methods}
    for T in lengths:
        cell = cell_fn()
        x = torch.randn(
            B, T, cell.input_size, generator=torch.Generator().manual_seed(seed), dtype=cell.weight_hh.dtype
        )
        ref = cells.sequential(cell, x)
        for method in methods:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = solve(cell, x, method=method, tol=tol, grad="none")
            out[method].append((T, res.iterations, float((res.states - ref).abs().max()), res.converged))
    return out


def plot_iterations_vs_T(table: dict, title: str = ""):
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    for i, (method, rows) in enumerate(table.items()):
        Ts = [r[0] for r in rows]
        a.loglog(Ts, [r[1] for r in rows], "o-", color=f"C{i}", label=method)
        b.loglog(Ts, [max(r[2], 1e-17) for r in rows], "o-", color=f"C{i}", label=method)
    a.set(xlabel="T", ylabel="iterations to tol", title=title)
    b.set(xlabel="T", ylabel="max-abs error vs sequential", title="error at the stop")
    for ax in (a, b):
        ax.grid(True, which="both", alpha=0.3)
    a.legend(fontsize=8)
    fig.tight_layout()
    return fig


def cost_per_iteration(cell, x: Tensor, methods=tuple(METHODS), iters: int = 3) -> dict[str, float]:
    """Seconds per iteration of each method (``iters`` iterations, after one warm-up): a rough guide."""
    out = {}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for method in methods:
            solve(cell, x, method=method, iters=1, grad="none")  # warm-up (the CPU scan compiles once)
            t0 = time.perf_counter()
            res = solve(cell, x, method=method, iters=iters, tol=0.0, grad="none")
            out[method] = (time.perf_counter() - t0) / max(res.iterations, 1)
    return out


def block_table(cases: dict, x: Tensor, lengths=None, tol: float = 1e-10) -> list[dict]:
    """Block Jacobi from Jacobi (L = 1) to the loop (L = T): for each named cell in ``cases`` and each block
    length L, with no overlap and with the default one, the sweeps to ``tol``, the sequential steps they
    take (sweeps x (L + w): the depth), the work relative to the loop (sweeps x (L + w) / L), the rows per
    step (B x ceil(T / L)) and the max-abs error against the loop."""
    B, T, _ = x.shape
    lengths = lengths or sorted({1, 4, 16, round(math.sqrt(T)), T})  # sqrt(T): depth and width balance
    rows = []
    for name, cell in cases.items():
        with torch.no_grad():
            ref = cells.sequential(cell, x)
        for L in lengths:
            for w in sorted({0, default_overlap(L)}):
                with torch.no_grad():
                    r = solve(cell, x, method="block_jacobi", block=L, overlap=w, tol=tol, grad="none")
                rows.append(
                    dict(
                        cell=name,
                        L=L,
                        w=w,
                        sweeps=r.iterations,
                        steps=r.iterations * (L + w),
                        work=r.iterations * (L + w) / L,
                        rows=B * blocks(T, L),
                        error=float((r.states - ref).abs().max()),
                        converged=r.converged,
                    )
                )
    return rows


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
    ax.set(xlabel="block length L", ylabel="sequential steps to tol", title="block Jacobi: depth vs L")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return ax
