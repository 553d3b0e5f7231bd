"""Plots, tables and widgets shared by the notebooks (each notebook's own figures live beside their logic)."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["Table", "corpus_overview", "line_lengths"]


def _cell(value: Any, spec: str | None) -> str:
    """One table cell as text: ``spec`` (a format spec such as ``".3g"``) for numbers, else a short default."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if spec is not None:
        return format(value, spec)
    if isinstance(value, int):
        return f"{value:,}"
    if math.isnan(value):
        return "nan"
    magnitude = abs(value)
    return "0" if value == 0 else (f"{value:.2e}" if magnitude < 1e-2 or magnitude >= 1e5 else f"{value:.3g}")


class Table:
    """Rows of dicts shown as a table: HTML in a notebook, aligned text in a terminal or ``print``.

    ``Table(rows, columns=None, formats=None, title=None)``: ``columns`` picks and orders the keys (default:
    every key, in first-seen order); ``formats`` maps a column to a format spec (``{"ms": ".2f"}``); numbers
    are right-aligned. A missing value shows as ``-``. Make it the last expression of a cell (or ``display``
    it) to see the HTML table.
    """

    def __init__(
        self,
        rows: Sequence[Mapping[str, Any]],
        columns: Sequence[str] | None = None,
        formats: Mapping[str, str] | None = None,
        title: str | None = None,
    ):
        self.rows = [dict(r) for r in rows]
        self.columns = list(columns) if columns is not None else list(dict.fromkeys(k for r in self.rows for k in r))
        self.formats = dict(formats or {})
        self.title = title

    def _text_cells(self) -> list[list[str]]:
        return [[_cell(r.get(c), self.formats.get(c)) for c in self.columns] for r in self.rows]

    def _numeric(self, column: str) -> bool:
        values = [r.get(column) for r in self.rows if r.get(column) is not None]
        return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)

    def __str__(self) -> str:
        cells = self._text_cells()
        widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(self.columns)]
        out = [self.title] if self.title else []
        out.append("  ".join(c.rjust(w) for c, w in zip(self.columns, widths)))
        out.append("  ".join("-" * w for w in widths))
        out += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
        return "\n".join(out)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        right = [self._numeric(c) for c in self.columns]
        align = lambda r: ' style="text-align:right"' if r else ' style="text-align:left"'  # noqa: E731
        head = "".join(f"<th{align(r)}>{html.escape(c)}</th>" for c, r in zip(self.columns, right))
        body = "".join(
            "<tr>" + "".join(f"<td{align(r)}>{html.escape(v)}</td>" for v, r in zip(row, right)) + "</tr>"
            for row in self._text_cells()
        )
        caption = f"<caption>{html.escape(self.title)}</caption>" if self.title else ""
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def line_lengths(ids: torch.Tensor, eos: int) -> torch.Tensor:
    """Tokens per line (the ``<eos>`` included) of a 1-D id stream in which every line ends with ``eos``."""
    ends = (ids == eos).nonzero().flatten()  # (lines,)
    return torch.diff(ends, prepend=ends.new_tensor([-1]))


def corpus_overview(corpus, split: str = "train"):
    """Two panels: Zipf's rank-frequency law (log-log) and the distribution of line lengths."""
    import matplotlib.pyplot as plt

    ids = corpus.splits()[split]
    counts = torch.bincount(ids, minlength=corpus.vocab_size).sort(descending=True).values
    counts = counts[counts > 0].double()
    ranks = torch.arange(1, counts.numel() + 1, dtype=torch.double)
    lengths = line_lengths(ids, corpus.stoi["<eos>"])

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.loglog(ranks, counts / counts.sum(), lw=1.5, label=f"{corpus.name} {split}")
    ax1.loglog(ranks, (1 / ranks) / (1 / ranks).sum(), "--", color="gray", label=r"Zipf: $p \propto 1/r$")
    ax1.set(xlabel="rank r", ylabel="relative frequency", title=f"{corpus.vocab_size:,} types")
    ax1.legend()
    ax2.hist(lengths.numpy(), bins=range(0, int(lengths.max()) + 2), color="tab:orange")
    ax2.axvline(lengths.double().mean().item(), color="k", ls=":", label=f"mean {lengths.double().mean():.1f}")
    ax2.set(xlabel="tokens per line (with <eos>)", ylabel="lines", title=f"{lengths.numel():,} lines")
    ax2.legend()
    fig.suptitle(f"{corpus.name}: {ids.numel():,} {split} tokens")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------
# Stability and truncation (notebook 04)
# ------------------------------------------------------------------------------------------------
def plot_truncation(curves: dict, ax=None):
    """Error of the k-truncated model against k, one line per model, with its lambda^k bound if known.

    ``curves``: label -> (result of :func:`fpcore.stability.truncation_errors`, lambda or None).
    """
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(5.5, 3.6))[1]
    for i, (label, (res, lam)) in enumerate(curves.items()):
        color = f"C{i}"
        ax.semilogy(res["k"], res["error"].clamp_min(1e-16), "o-", ms=3, color=color, label=label)
        if lam is not None and lam < 1:
            ax.semilogy(
                res["k"],
                lam ** res["k"].double() * res["scale"],
                "--",
                color=color,
                label=rf"bound $\lambda^k \max\|h\|$, $\lambda$={lam:.2f}",
            )
    ax.set(xlabel="window k", ylabel=r"$\max_t \|h_t - h_t^{(k)}\|_2$", title="truncated vs recurrent")
    ax.legend(fontsize=8)
    return ax


def plot_twins(histories: dict, ax=None):
    """Weight distance between recurrent and truncated twins over training; ``histories``: label -> TwinHistory.

    One colour per window k; solid lines for projected (stable) pairs, dashed for unprojected ones; the legend
    sits outside the axes.
    """
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(7.5, 3.8))[1]
    ks = sorted({h.k for h in histories.values()})
    for label, h in histories.items():
        ax.plot(h.steps, h.distance, color=f"C{ks.index(h.k)}", ls="-" if h.project else "--", lw=1.6, label=label)
    ax.set(
        xlabel="SGD step",
        ylabel=r"$\|\theta_{rec} - \theta_{trunc}\|_2$",
        yscale="log",
        title="training: recurrent vs truncated twin",
    )
    ax.legend(fontsize=9, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return ax


def plot_contraction(norms_by_k: dict, ax=None):
    """Histograms of log10 ||ds_t/ds_{t-k}||_2 over (batch, t), one per k, with the line at 1."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(5.5, 3.6))[1]
    for k, n in norms_by_k.items():
        frac = float((n < 1).double().mean())
        ax.hist(
            n.double().clamp_min(1e-30).log10().flatten().numpy(),
            bins=40,
            alpha=0.6,
            label=f"k={k}: {frac:.0%} contractive",
        )
    ax.axvline(0.0, color="k", ls=":")
    ax.set(
        xlabel=r"$\log_{10}\|\partial h_t / \partial h_{t-k}\|_2$",
        ylabel="(t, batch) pairs",
        title="data-dependent stability",
    )
    ax.legend(fontsize=8)
    return ax


def truncation_explorer(hidden: int = 32, length: int = 60, seed: int = 0):
    """An ipywidgets panel: move lambda (the RNN's ||W||_2) and k, see the truncation error and one unit."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from torch import nn

    from fpcore import cells, stability

    torch.manual_seed(seed)
    rnn = nn.RNN(4, hidden, batch_first=True).double()
    W0 = rnn.get_parameter("weight_hh_l0").detach().clone()
    W0 /= stability.spectral_norm(W0)
    x = torch.randn(1, length, 4, dtype=torch.double)

    @torch.no_grad()
    def show(lam=0.8, k=5):
        rnn.weight_hh_l0.copy_(lam * W0)
        res = stability.truncation_errors(rnn, x, ks=range(1, length + 1))
        h = rnn(x)[0][0, :, 0]
        hk = cells.truncated(cells.from_torch(rnn), x, k)[0, :, 0]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.4))
        plot_truncation({f"tanh RNN, ||W||={lam:.2f}": (res, lam)}, a1)
        a1.axvline(k, color="gray", ls=":")
        a2.plot(h, label="recurrent $h_t$ (unit 0)")
        a2.plot(hk, "--", label=f"truncated, k={k}")
        a2.set(xlabel="t", title=f"error at k={k}: {float(res['error'][k - 1]):.2e}")
        a2.legend(fontsize=8)
        plt.show()

    return widgets.interactive(
        show,
        lam=widgets.FloatSlider(value=0.8, min=0.2, max=2.0, step=0.05, description="λ = ||W||₂"),
        k=widgets.IntSlider(value=5, min=1, max=length, description="window k"),
    )


# ------------------------------------------------------------------------------------------------
# The closing notebook (09): one fixed-point view, and the recorded solver measurements
# ------------------------------------------------------------------------------------------------
_STYLES = {
    "jacobi": ("C0", "o", "-"),
    "quasi_newton": ("C1", "s", "--"),
    "newton": ("C3", "^", ":"),
    "damped": ("C4", "v", "-."),
    "block_jacobi": ("C2", "D", "-"),
    "loop": ("k", "P", "-"),
    "torch.nn": ("0.45", "X", "-"),
}


def plot_iterate_errors(errors: Mapping[str, Sequence[float]], title: str = "", ax=None):
    """max |s^(k) - s| against the iteration k (log scale), one line per method.

    ``errors``: method -> errors after iterations 1, 2, ...; each method keeps one colour, marker and dash
    pattern (:data:`_STYLES`), and exact zeros are drawn at 1e-17 so a line that reaches the loop stays visible.
    """
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(6, 3.6))[1]
    for name, errs in errors.items():
        color, marker, ls = _STYLES.get(name, (None, "o", "-"))
        ks = range(1, len(errs) + 1)
        ax.semilogy(ks, [max(e, 1e-17) for e in errs], ls=ls, marker=marker, ms=5, color=color, label=name)
    ax.set(xlabel="iteration k", ylabel=r"$\max_t \|s^{(k)}_t - s_t\|_\infty$", title=title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def plot_solver_times(rows: Sequence[Mapping[str, Any]], title: str = ""):
    """A dot plot of recorded solver times: one row per configuration, one marker per method (log time axis).

    ``rows``: dicts with ``config`` (a label), ``method``, ``time_s`` and ``converged``; unconverged runs (stopped
    by a time limit) are drawn hollow, skipped ones (no time) are left out.
    """
    import matplotlib.pyplot as plt

    configs = list(dict.fromkeys(r["config"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, ax = plt.subplots(figsize=(8.5, 0.42 * len(configs) + 1.6))
    for j, method in enumerate(methods):
        color, marker, _ = _STYLES.get(method, (f"C{j}", "o", "-"))
        offset = (j - (len(methods) - 1) / 2) * 0.08  # a small vertical shift: equal times stay visible
        for converged in (True, False):
            pts = [
                (r["time_s"], configs.index(r["config"]) + offset)
                for r in rows
                if r["method"] == method and r.get("time_s") is not None and bool(r["converged"]) == converged
            ]
            if pts:
                xs, ys = zip(*pts)
                ax.scatter(
                    xs,
                    ys,
                    marker=marker,
                    s=36,
                    color=color if converged else "none",
                    edgecolors=color,
                    label=method if converged else f"{method} (stopped, not converged)",
                )
    ax.set_xscale("log")
    ax.set_yticks(range(len(configs)))
    ax.set_yticklabels(configs, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="time (s)", title=title)
    ax.grid(True, axis="x", which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    return fig
