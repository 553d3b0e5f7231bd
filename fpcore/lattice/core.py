r"""Word lattices: the graph, its scores, its best paths, k-gram expansion and word error rates.

A lattice is a directed acyclic graph with one start node and one end node. Every arc is a word instance
(or a null arc, ``word=None``, written ``!NULL`` in SLF) with an acoustic log-likelihood ``a`` and a
language-model log-probability ``l``, both in natural log. Every start-to-end path is one hypothesis.

Score convention (HTK's, kept by every function here): the total score of an arc is

.. math:: \mathrm{acscale} \cdot a + \mathrm{lmscale} \cdot l + \mathrm{wdpenalty} \cdot [\text{the arc has a word}]

and a path's score is the sum over its arcs (a product of scaled likelihoods). The word insertion penalty is
added once per word arc; null arcs get none.

:func:`expand` splits nodes until each has a unique history of the last ``order - 1`` tokens; a language
model that looks back at most ``order - 1`` tokens can then score every arc once, and every path's lattice
score equals the model's score of that path's sentence (the point of paper A, arXiv 2106.02417, for its
finite-order models).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field, replace

__all__ = [
    "Arc",
    "Node",
    "Lattice",
    "LatticeError",
    "Path",
    "Expansion",
    "nbest",
    "expand",
    "edit_distance",
    "oracle",
    "word_errors",
]


class LatticeError(ValueError):
    """A lattice that breaks the rules: a cycle, unreachable nodes, a bad node index."""


@dataclass
class Node:
    """A lattice node: a point in time between words (``time`` in seconds, None when unknown).

    ``fields`` keeps any other SLF node field as read (e.g. a word on the start node), so a round trip
    through SLF loses nothing.
    """

    time: float | None = None
    fields: dict[str, str] = field(default_factory=dict)


@dataclass
class Arc:
    """A word instance from node ``start`` to node ``end``; ``word=None`` is a null arc (``!NULL``).

    ``acoustic`` (SLF ``a=``) and ``lm`` (SLF ``l=``) are natural-log scores, unscaled. ``fields`` keeps any
    other SLF link field as read (``v=``, ``d=``, ``n=``, ...).
    """

    start: int
    end: int
    word: str | None = None
    acoustic: float = 0.0
    lm: float = 0.0
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Path:
    """One start-to-end path: its arcs (indices into ``lattice.arcs``), its words (null arcs left out) and
    its scores: ``total`` (scaled, as the lattice ranks paths), ``acoustic`` and ``lm`` (unscaled sums)."""

    arcs: tuple[int, ...]
    words: tuple[str, ...]
    total: float
    acoustic: float
    lm: float


@dataclass
class Lattice:
    """A word lattice: ``nodes``, ``arcs``, one ``start`` and one ``end`` node, and the scales that turn arc
    scores into path scores (see the module docstring). ``header`` keeps other SLF header fields as read
    (``VERSION``: the SLF version, 1.1 unless read otherwise)."""

    nodes: list[Node]
    arcs: list[Arc]
    start: int
    end: int
    utterance: str | None = None
    lmscale: float = 1.0
    wdpenalty: float = 0.0
    acscale: float = 1.0
    header: dict[str, str] = field(default_factory=lambda: {"VERSION": "1.1"})

    # -- structure ---------------------------------------------------------------------------------------
    def __repr__(self) -> str:
        name = f"{self.utterance!r}, " if self.utterance else ""
        return f"Lattice({name}{len(self.nodes)} nodes, {len(self.arcs)} arcs, {self.num_paths():,} paths)"

    def out_arcs(self) -> list[list[int]]:
        """For each node, the indices of the arcs that leave it."""
        out: list[list[int]] = [[] for _ in self.nodes]
        for i, arc in enumerate(self.arcs):
            out[arc.start].append(i)
        return out

    def in_arcs(self) -> list[list[int]]:
        """For each node, the indices of the arcs that enter it."""
        into: list[list[int]] = [[] for _ in self.nodes]
        for i, arc in enumerate(self.arcs):
            into[arc.end].append(i)
        return into

    def topological_order(self) -> list[int]:
        """Every node, each after all of its predecessors (Kahn's algorithm); raises LatticeError on a cycle."""
        self._check_indices()
        indegree = [0] * len(self.nodes)
        for arc in self.arcs:
            indegree[arc.end] += 1
        out = self.out_arcs()
        ready = [v for v in range(len(self.nodes)) if indegree[v] == 0]
        order: list[int] = []
        while ready:
            u = ready.pop()
            order.append(u)
            for i in out[u]:
                v = self.arcs[i].end
                indegree[v] -= 1
                if indegree[v] == 0:
                    ready.append(v)
        if len(order) < len(self.nodes):
            raise LatticeError(f"not a DAG: {self._describe_cycle(indegree)}")
        return order

    def _check_indices(self) -> None:
        n = len(self.nodes)
        for name, v in (("start", self.start), ("end", self.end)):
            if not 0 <= v < n:
                raise LatticeError(f"{name} node {v} does not exist (the lattice has {n} nodes)")
        for i, arc in enumerate(self.arcs):
            if not (0 <= arc.start < n and 0 <= arc.end < n):
                raise LatticeError(f"arc {i} joins nodes {arc.start} -> {arc.end}, but the lattice has {n} nodes")

    def _describe_cycle(self, indegree: list[int]) -> str:
        """Name one cycle among the nodes Kahn's algorithm could not order (those left with indegree > 0).
        Each of them has a predecessor among them, so walking predecessors must close a loop."""
        left = {v for v, d in enumerate(indegree) if d > 0}
        pred = {v: [a.start for a in self.arcs if a.end == v and a.start in left] for v in left}
        v = min(left)
        seen: dict[int, int] = {}
        walk: list[int] = []
        while v not in seen:
            seen[v] = len(walk)
            walk.append(v)
            v = min(pred[v])
        cycle = walk[seen[v] :][::-1]
        at = cycle.index(min(cycle))
        cycle = cycle[at:] + cycle[:at]  # start at the smallest node, so the message is the same every time
        return "cycle through nodes " + " -> ".join(map(str, cycle + cycle[:1]))

    def check(self) -> None:
        """Raise LatticeError unless the lattice is a DAG in which every node lies on a start-to-end path."""
        self.topological_order()
        unreachable, dead = self.unconnected()
        problems = []
        if unreachable:
            problems.append(f"nodes not reachable from the start node {self.start}: {_short(unreachable)}")
        if dead:
            problems.append(f"nodes from which the end node {self.end} cannot be reached: {_short(dead)}")
        if problems:
            raise LatticeError("; ".join(problems))

    def unconnected(self) -> tuple[list[int], list[int]]:
        """(nodes not reachable from ``start``, nodes that cannot reach ``end``), each sorted."""
        out, into = self.out_arcs(), self.in_arcs()

        def reach(v0: int, adj: list[list[int]], other: Callable[[Arc], int]) -> set[int]:
            seen, stack = {v0}, [v0]
            while stack:
                for i in adj[stack.pop()]:
                    w = other(self.arcs[i])
                    if w not in seen:
                        seen.add(w)
                        stack.append(w)
            return seen

        forward = reach(self.start, out, lambda a: a.end)
        backward = reach(self.end, into, lambda a: a.start)
        nodes = range(len(self.nodes))
        return [v for v in nodes if v not in forward], [v for v in nodes if v not in backward]

    def pruned(self) -> Lattice:
        """A copy without the nodes that lie on no start-to-end path (and their arcs), nodes renumbered."""
        unreachable, dead = self.unconnected()
        drop = set(unreachable) | set(dead)
        keep = [v for v in range(len(self.nodes)) if v not in drop]
        new_id = {v: i for i, v in enumerate(keep)}
        arcs = [
            replace(a, start=new_id[a.start], end=new_id[a.end])
            for a in self.arcs
            if a.start in new_id and a.end in new_id
        ]
        return replace(
            self, nodes=[self.nodes[v] for v in keep], arcs=arcs, start=new_id[self.start], end=new_id[self.end]
        )

    # -- scores ------------------------------------------------------------------------------------------
    def arc_score(self, arc: Arc) -> float:
        """acscale * a + lmscale * l + wdpenalty (the penalty for word arcs only)."""
        penalty = self.wdpenalty if arc.word is not None else 0.0
        return self.acscale * arc.acoustic + self.lmscale * arc.lm + penalty

    def path(self, arcs: Sequence[int]) -> Path:
        """The :class:`Path` made of these arcs (checked to be a start-to-end chain)."""
        chain = [self.arcs[i] for i in arcs]
        at = self.start
        for i, arc in zip(arcs, chain):
            if arc.start != at:
                raise LatticeError(f"arc {i} starts at node {arc.start}, not at {at} where the path is")
            at = arc.end
        if at != self.end:
            raise LatticeError(f"the path ends at node {at}, not at the end node {self.end}")
        return Path(
            arcs=tuple(arcs),
            words=tuple(a.word for a in chain if a.word is not None),
            total=sum(self.arc_score(a) for a in chain),
            acoustic=sum(a.acoustic for a in chain),
            lm=sum(a.lm for a in chain),
        )

    def paths(self, limit: int = 100_000) -> Iterator[Path]:
        """Every start-to-end path, depth first (for small lattices and tests: raises past ``limit`` paths)."""
        if self.num_paths() > limit:
            raise LatticeError(f"the lattice has {self.num_paths():,} paths, more than limit={limit:,}")
        out = self.out_arcs()
        stack: list[tuple[int, tuple[int, ...]]] = [(self.start, ())]
        while stack:
            v, arcs = stack.pop()
            if v == self.end:
                yield self.path(arcs)
                continue
            for i in reversed(out[v]):
                stack.append((self.arcs[i].end, arcs + (i,)))

    def num_paths(self) -> int:
        """The number of start-to-end paths (exact; it can be astronomically large)."""
        count = [0] * len(self.nodes)
        count[self.start] = 1
        out = self.out_arcs()
        for u in self.topological_order():
            for i in out[u]:
                count[self.arcs[i].end] += count[u]
        return count[self.end]

    def best_path(self) -> Path:
        """The highest-scoring path (Viterbi over the topological order)."""
        return nbest(self, 1, unique=False)[0]

    def with_lm_scores(self, lm: Sequence[float]) -> Lattice:
        """A copy whose arcs carry new language-model scores ``lm`` (one per arc, natural log)."""
        if len(lm) != len(self.arcs):
            raise ValueError(f"need one LM score per arc ({len(self.arcs)}), got {len(lm)}")
        return replace(self, arcs=[replace(a, lm=float(s)) for a, s in zip(self.arcs, lm)])


def _short(items: Sequence[int], n: int = 12) -> str:
    shown = ", ".join(map(str, items[:n]))
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


# -- N-best ----------------------------------------------------------------------------------------------------
def nbest(lattice: Lattice, n: int, *, unique: bool = True) -> list[Path]:
    """The ``n`` best paths by total score, best first (fewer if the lattice has fewer).

    ``unique=True`` keeps only the best path of each word sequence (null arcs and parallel arcs can spell
    the same sentence twice); ``unique=False`` returns distinct paths.

    The algorithm enumerates paths lazily in score order (the recursive enumeration of Jimenez & Marzal,
    1999): the k-th best path into node v is the best not yet taken among (j-th best path into u) + arc u->v
    over v's incoming arcs, and each node's candidates sit in a heap. It never looks at more than the paths
    it returns (plus the duplicates it skips).
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    lattice.topological_order()  # raises on a cycle
    arcs, into = lattice.arcs, lattice.in_arcs()
    score = [lattice.arc_score(a) for a in arcs]
    # found[v][j] = (score, arc, j'): the j-th best path into v is the j'-th best path into the start node of
    # `arc`, then `arc`. heaps[v]: candidates (-score, arc, j') not yet taken. done[v]: no more paths into v.
    found: list[list[tuple[float, int, int]]] = [[] for _ in lattice.nodes]
    heaps: list[list[tuple[float, int, int]] | None] = [None] * len(lattice.nodes)
    done = [False] * len(lattice.nodes)
    advanced = [False] * len(lattice.nodes)  # the successor of v's last taken candidate is in its heap
    found[lattice.start].append((0.0, -1, -1))
    done[lattice.start] = True

    def ensure(v0: int, k0: int) -> bool:
        """Compute found[v0][k0] if v0 has a k0-th best path (an explicit stack, not recursion, so that
        lattices thousands of nodes deep work)."""
        stack = [(v0, k0)]
        while stack:
            v, k = stack[-1]
            if len(found[v]) > k or done[v]:
                stack.pop()
                continue
            heap = heaps[v]
            if heap is None:  # first visit: the best path into every predecessor comes first
                need = [(arcs[i].start, 0) for i in into[v] if not found[arcs[i].start] and not done[arcs[i].start]]
                if need:
                    stack.extend(need)
                    continue
                heap = heaps[v] = [
                    (-(found[arcs[i].start][0][0] + score[i]), i, 0) for i in into[v] if found[arcs[i].start]
                ]
                heapq.heapify(heap)
            elif not advanced[v]:  # the candidate after the last one taken: next path of the same predecessor
                _, i, j = found[v][-1]
                u = arcs[i].start
                if len(found[u]) <= j + 1 and not done[u]:
                    stack.append((u, j + 1))
                    continue
                if len(found[u]) > j + 1:
                    heapq.heappush(heap, (-(found[u][j + 1][0] + score[i]), i, j + 1))
                advanced[v] = True
            if not heap:
                done[v] = True
                continue
            neg, i, j = heapq.heappop(heap)
            found[v].append((-neg, i, j))
            advanced[v] = False
        return len(found[v0]) > k0

    paths: list[Path] = []
    seen: set[tuple[str, ...]] = set()
    k = 0
    while len(paths) < n and ensure(lattice.end, k):
        path = lattice.path(_trace(lattice, found, lattice.end, k))
        k += 1
        if unique:
            if path.words in seen:
                continue
            seen.add(path.words)
        paths.append(path)
    return paths


def _trace(lattice: Lattice, found: list[list[tuple[float, int, int]]], v: int, k: int) -> list[int]:
    arcs: list[int] = []
    while v != lattice.start:
        _, i, j = found[v][k]
        arcs.append(i)
        v, k = lattice.arcs[i].start, j
    return arcs[::-1]


# -- expansion -------------------------------------------------------------------------------------------------
Token = Hashable
TokenOf = Callable[[str | None], Token | None]


def _word_token(word: str | None) -> Token | None:
    return word


@dataclass
class Expansion:
    """The result of :func:`expand`: the expanded ``lattice`` and, for each of its nodes, the ``history``
    (a tuple of at most ``order - 1`` tokens, the last ones read on every path into the node) and the
    ``origin`` (the node of the input lattice it copies); ``arc_origin`` likewise for arcs."""

    lattice: Lattice
    history: list[tuple[Token, ...]]
    origin: list[int]
    arc_origin: list[int]
    order: int
    nodes_before: int
    arcs_before: int

    @property
    def node_growth(self) -> float:
        """Nodes after / nodes before."""
        return len(self.lattice.nodes) / self.nodes_before

    @property
    def arc_growth(self) -> float:
        """Arcs after / arcs before."""
        return len(self.lattice.arcs) / self.arcs_before

    def report(self) -> str:
        lat = self.lattice
        return (
            f"order {self.order}: {self.nodes_before:,} -> {len(lat.nodes):,} nodes (x{self.node_growth:.2f}), "
            f"{self.arcs_before:,} -> {len(lat.arcs):,} arcs (x{self.arc_growth:.2f})"
        )


def expand(
    lattice: Lattice, order: int, *, token: TokenOf = _word_token, max_nodes: int | None = 2_000_000
) -> Expansion:
    """Split nodes until every node has a unique history of the last ``order - 1`` tokens.

    ``token(word)`` maps an arc's word to the token a language model reads (None: the arc adds nothing to
    the history, as a null arc or a sentence-start marker). The default reads words as they are and skips
    null arcs. A node's history is then the last ``order - 1`` tokens on any path from the start to it,
    the same on every path once expanded (shorter near the start). A node from which no token arc can be
    reached (the end node, and null arcs into it) keeps one copy: nothing after it is scored.

    Every path of the input has exactly one copy in the output, with the same words and scores, so the
    expansion changes the graph, never the hypotheses or their scores. ``order=1`` returns the lattice
    unchanged (same nodes, same arcs, same order). Raises LatticeError past ``max_nodes`` nodes.
    """
    if not isinstance(order, int) or order < 1:
        raise ValueError(f"order must be a positive int, got {order!r}")
    topo = lattice.topological_order()
    out = lattice.out_arcs()
    keys = [token(a.word) for a in lattice.arcs]
    # scored[v]: some token arc can be reached from v (so v's history matters)
    scored = [False] * len(lattice.nodes)
    for u in reversed(topo):
        scored[u] = any(keys[i] is not None or scored[lattice.arcs[i].end] for i in out[u])
    keep = order - 1
    states: list[dict[tuple[Token, ...], int]] = [dict() for _ in lattice.nodes]  # history -> state index
    states[lattice.start][()] = 0
    count = 1
    new_arcs: list[tuple[int, int, int]] = []  # (input arc, source state, target state)
    state_node: list[int] = [lattice.start]
    state_hist: list[tuple[Token, ...]] = [()]
    for u in topo:
        for hist, s in list(states[u].items()):
            for i in out[u]:
                v = lattice.arcs[i].end
                key = keys[i]
                h = hist if key is None or keep == 0 else (hist + (key,))[-keep:]
                if not scored[v]:
                    h = ()
                t = states[v].get(h)
                if t is None:
                    t = states[v][h] = count
                    count += 1
                    state_node.append(v)
                    state_hist.append(h)
                    if max_nodes is not None and count > max_nodes:
                        raise LatticeError(
                            f"expanding to order {order} passed max_nodes={max_nodes:,} nodes "
                            f"(the input has {len(lattice.nodes):,}); lower the order or raise max_nodes"
                        )
                new_arcs.append((i, s, t))
    # number the new nodes by (original node, creation order): order 1 keeps the original numbering
    ranked = sorted(range(count), key=lambda s: (state_node[s], s))
    new_id = [0] * count
    for rank, s in enumerate(ranked):
        new_id[s] = rank
    new_arcs.sort(key=lambda e: (e[0], new_id[e[1]]))
    arcs = [replace(lattice.arcs[i], start=new_id[s], end=new_id[t]) for i, s, t in new_arcs]
    nodes = [replace(lattice.nodes[state_node[s]]) for s in ranked]
    ends = states[lattice.end]
    assert len(ends) == 1, "the end node has no successors, so it keeps a single copy"
    expanded = replace(lattice, nodes=nodes, arcs=arcs, start=new_id[0], end=new_id[next(iter(ends.values()))])
    return Expansion(
        lattice=expanded,
        history=[state_hist[s] for s in ranked],
        origin=[state_node[s] for s in ranked],
        arc_origin=[e[0] for e in new_arcs],
        order=order,
        nodes_before=len(lattice.nodes),
        arcs_before=len(lattice.arcs),
    )


# -- word errors -------------------------------------------------------------------------------------------------
def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Levenshtein distance between two word sequences (substitutions, insertions, deletions cost 1)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def word_errors(refs: Sequence[Sequence[str]], hyps: Sequence[Sequence[str]]) -> tuple[int, int]:
    """(word errors, reference words) summed over sentences; the WER is their ratio."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    return sum(edit_distance(r, h) for r, h in zip(refs, hyps)), sum(len(r) for r in refs)


def oracle(lattice: Lattice, ref: Sequence[str], *, skip: Callable[[str], bool] = lambda w: False) -> tuple[int, Path]:
    """The lattice path closest to ``ref``: (its word errors, the path), by dynamic programming over
    (node, reference position), exact. Words for which ``skip(word)`` holds (sentence markers) count as
    null arcs."""
    m = len(ref)
    inf = math.inf
    cost = [[inf] * (m + 1) for _ in lattice.nodes]
    back: list[list[tuple[int, int, int] | None]] = [[None] * (m + 1) for _ in lattice.nodes]
    cost[lattice.start][0] = 0
    out = lattice.out_arcs()
    for u in lattice.topological_order():
        row = cost[u]
        for j in range(1, m + 1):  # deletions of reference words while standing at u
            if row[j - 1] + 1 < row[j]:
                row[j] = row[j - 1] + 1
                back[u][j] = (-1, u, j - 1)
        for i in out[u]:
            arc = lattice.arcs[i]
            v = arc.end
            word = None if arc.word is None or skip(arc.word) else arc.word
            for j in range(m + 1):
                c = row[j]
                if c == inf:
                    continue
                steps = [(c, j)] if word is None else [(c + 1, j)]  # null arc / insertion
                if word is not None and j < m:
                    steps.append((c + (word != ref[j]), j + 1))  # match or substitution
                for c2, j2 in steps:
                    if c2 < cost[v][j2]:
                        cost[v][j2] = c2
                        back[v][j2] = (i, u, j)
    errors = cost[lattice.end][m]
    arcs: list[int] = []
    v, j = lattice.end, m
    while (v, j) != (lattice.start, 0):
        step = back[v][j]
        assert step is not None
        i, v, j = step
        if i >= 0:
            arcs.append(i)
    return int(errors), lattice.path(arcs[::-1])
