"""Pictures of small lattices and of lattice growth, for notebook 08."""

from __future__ import annotations

from collections.abc import Sequence

from fpcore.lattice.core import Lattice

__all__ = ["draw_lattice", "plot_growth"]


def _layout(lattice: Lattice) -> dict[int, tuple[float, float]]:
    """x: the longest distance (in arcs) from the start; y: nodes of one column spread evenly."""
    into = lattice.in_arcs()
    depth = dict.fromkeys(range(len(lattice.nodes)), 0)
    for v in lattice.topological_order():
        for i in into[v]:
            depth[v] = max(depth[v], depth[lattice.arcs[i].start] + 1)
    columns: dict[int, list[int]] = {}
    for v in range(len(lattice.nodes)):
        columns.setdefault(depth[v], []).append(v)
    pos = {}
    for x, nodes in columns.items():
        for j, v in enumerate(nodes):
            pos[v] = (float(x), (len(nodes) - 1) / 2 - j)
    return pos


def draw_lattice(lattice: Lattice, ax=None, *, labels: Sequence[str] | None = None, title: str | None = None):
    """Draw a (small) lattice: nodes in columns by depth, arcs with their words (``!NULL`` for null arcs).
    ``labels``: text per node (e.g. its history after :func:`fpcore.lattice.expand`)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3))
    pos = _layout(lattice)
    for arc in lattice.arcs:
        (x0, y0), (x1, y1) = pos[arc.start], pos[arc.end]
        ax.annotate(
            "", xy=(x1, y1), xytext=(x0, y0), arrowprops=dict(arrowstyle="->", color="0.4", shrinkA=9, shrinkB=9)
        )
        word = "!NULL" if arc.word is None else arc.word
        # the label a third of the way along, so crossing arcs keep their words apart
        ax.text(x0 + (x1 - x0) / 3, y0 + (y1 - y0) / 3, word, fontsize=8, ha="center", va="bottom", color="C0")
    for v, (x, y) in pos.items():
        color = "C2" if v == lattice.start else "C3" if v == lattice.end else "white"
        ax.plot([x], [y], "o", ms=14, mfc=color, mec="k")
        ax.text(x, y, str(v), ha="center", va="center", fontsize=7)
        if labels is not None:
            ax.text(x, y - 0.28, labels[v], ha="center", va="top", fontsize=7, color="C1")
    ax.set_axis_off()
    ax.margins(0.08, 0.25)
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def plot_growth(orders: Sequence[int], nodes: Sequence[float], arcs: Sequence[float], ax=None, *, title: str = ""):
    """Lattice size (nodes and arcs, relative to order 1) against the expansion order, log scale."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.2))
    ax.semilogy(orders, [n / nodes[0] for n in nodes], "o-", label="nodes")
    ax.semilogy(orders, [a / arcs[0] for a in arcs], "s-", label="arcs")
    ax.set_xlabel("expansion order (unique history of order - 1 tokens)")
    ax.set_ylabel("size / size at order 1")
    ax.set_xticks(list(orders))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=10)
    return ax
