r"""Rescoring a lattice with a language model: exactly with a finite-order model, approximately with a
recurrent one.

Rescoring replaces every arc's LM score ``l`` by the new model's log-probability of the arc's token given
the path's history (null arcs get 0); acoustic scores and the scales stay. Three ways:

============================ ===================================================================================
:func:`rescore_exact`        a :class:`FiniteOrderLM` of order n (it reads n tokens): expand the lattice until
                             every node has a unique n-token history (n-gram order n + 1), score every arc once.
                             Every path's lattice LM score is then the model's score of that sentence (paper A's
                             claim, arXiv 2106.02417).
:func:`rescore_merged`       a :class:`RecurrentLM`: expand to a chosen history, run the recurrence along the
                             expanded lattice and keep, at every node, the state of its best incoming path only
                             (n-gram history clustering; Liu et al., ICASSP 2014 and IEEE/ACM TASLP 2016). Paths
                             whose own history was merged away get a score computed from another history.
:func:`rescore_nbest`        any :class:`LanguageModel`: the N best paths by the lattice's scores, each rescored
                             as a sentence. Exact for the N paths, blind to the rest of the lattice.
============================ ===================================================================================

Sentence ends: the model scores eos after the last word. A lattice whose paths end in an end marker
(``</s>``, ``!SENT_END``) has an arc for it; one whose paths do not gets a ``</s>`` arc before its end node
(:func:`with_sentence_end`), with zero acoustic and LM score: every path gains one word arc, so the word
insertion penalty shifts every path's total alike and no ranking changes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from fpcore.lattice.core import Arc, Expansion, Lattice, LatticeError, Node, Path, expand, nbest
from fpcore.lattice.scorers import FiniteOrderLM, LanguageModel, RecurrentLM, Vocabulary

__all__ = [
    "Rescored",
    "with_sentence_end",
    "rescore_exact",
    "rescore_merged",
    "rescore_nbest",
    "sentence_scores",
    "path_tokens",
    "hypothesis",
    "discrepancy",
]


@dataclass
class Rescored:
    """A rescored lattice: ``lattice`` (expanded, new LM scores on its arcs) and the ``expansion`` it came from."""

    lattice: Lattice
    expansion: Expansion

    def best(self) -> Path:
        return self.lattice.best_path()


def path_tokens(path: Path, vocab: Vocabulary) -> list[int]:
    """A path's words as the model's token ids (markers dropped; the sentence score adds eos itself)."""
    return vocab.encode(path.words)


def hypothesis(path: Path, vocab: Vocabulary) -> list[str]:
    """A path's words without sentence markers: what word errors are counted on."""
    return [w for w in path.words if not vocab.is_marker(w)]


def with_sentence_end(lattice: Lattice, vocab: Vocabulary, end_word: str = "</s>") -> Lattice:
    """The lattice itself if every path ends in an end token, else a copy with an ``end_word`` arc in front of
    the end node. Raises LatticeError if some paths end in one and some do not, or a word follows one."""
    tokens = [vocab.token(a.word) for a in lattice.arcs]
    seen: list[set[bool]] = [set() for _ in lattice.nodes]  # per node: "an end token was read" on some path
    seen[lattice.start].add(False)
    out = lattice.out_arcs()
    for u in lattice.topological_order():
        for i in out[u]:
            t = tokens[i]
            for s in seen[u]:
                if s and t is not None:
                    raise LatticeError(f"arc {i} ({lattice.arcs[i].word!r}) follows the end of the sentence")
                seen[lattice.arcs[i].end].add(s or t == vocab.eos)
    at_end = seen[lattice.end]
    if at_end == {True}:
        return lattice
    if at_end == {True, False}:
        raise LatticeError("some paths end with an end-of-sentence word and some do not")
    n = len(lattice.nodes)
    nodes = lattice.nodes + [Node(time=lattice.nodes[lattice.end].time)]
    arcs = [replace(a, end=n) if a.end == lattice.end else a for a in lattice.arcs]
    arcs.append(Arc(n, lattice.end, end_word, 0.0, 0.0))
    return replace(lattice, nodes=nodes, arcs=arcs)


def _contexts(history: tuple, bos: int, c: int) -> tuple[int, ...]:
    """A node's model history: bos, then its tokens, cut to the last c (bos drops out once c tokens are read)."""
    return ((bos, *history))[-c:] if c else ()


def _context_logprobs(
    lm: FiniteOrderLM, row_of: dict[tuple[int, ...], int], rows: list[int], toks: list[int], batch_size: int
) -> torch.Tensor:
    """log P(toks[i] | the context of row rows[i]) for every i, float64: ``lm.next_logprobs`` once per distinct
    context (``row_of``: context -> row), in batches of ``batch_size`` contexts of equal length."""
    out = torch.zeros(len(rows), dtype=torch.float64)
    at_row, at_tok = torch.tensor(rows, dtype=torch.long), torch.tensor(toks, dtype=torch.long)
    by_len: dict[int, list[tuple[int, ...]]] = {}
    for ctx in row_of:
        by_len.setdefault(len(ctx), []).append(ctx)
    local = torch.full((len(row_of),), -1, dtype=torch.long)
    for length, ctxs in by_len.items():
        for at in range(0, len(ctxs), batch_size):
            part = ctxs[at : at + batch_size]
            logp = lm.next_logprobs(torch.tensor(part, dtype=torch.long).view(len(part), length))  # [b, V]
            local.fill_(-1)
            local[torch.tensor([row_of[x] for x in part])] = torch.arange(len(part))
            hit = local[at_row] >= 0
            out[hit] = logp[local[at_row[hit]], at_tok[hit]].double()
    return out


def rescore_exact(lattice: Lattice, lm: FiniteOrderLM, *, batch_size: int = 512) -> Rescored:
    """Expand ``lattice`` to unique ``lm.order``-token histories (``expand(lattice, lm.order + 1)``) and put
    ``lm``'s log-probability on every arc.

    Exact: every path of the result has LM score = ``lm.sentence_logprobs`` of its sentence (to rounding).
    The model is called once per distinct (node history), in batches of ``batch_size`` histories of equal
    length (:meth:`FiniteOrderLM.next_logprobs`).
    """
    c = getattr(lm, "order", None)
    if not isinstance(c, int):
        raise TypeError(f"{lm!r} is not of finite order (no integer .order): use rescore_merged or rescore_nbest")
    vocab = lm.vocab
    exp = expand(with_sentence_end(lattice, vocab), c + 1, token=vocab.token)
    lat = exp.lattice
    tokens = [vocab.token(a.word) for a in lat.arcs]
    row_of: dict[tuple[int, ...], int] = {}
    arc_rows, arc_toks, arc_ids = [], [], []
    for i, (arc, t) in enumerate(zip(lat.arcs, tokens)):
        if t is None:
            continue
        ctx = _contexts(exp.history[arc.start], vocab.bos, c)
        arc_rows.append(row_of.setdefault(ctx, len(row_of)))
        arc_toks.append(t)
        arc_ids.append(i)
    new_lm = torch.zeros(len(lat.arcs), dtype=torch.float64)
    if arc_ids:
        new_lm[torch.tensor(arc_ids)] = _context_logprobs(lm, row_of, arc_rows, arc_toks, batch_size)
    return Rescored(lattice=lat.with_lm_scores(new_lm.tolist()), expansion=exp)


def rescore_merged(lattice: Lattice, lm: RecurrentLM, *, history: int) -> Rescored:
    """Approximate rescoring by a recurrent model: expand to unique ``history``-token histories (``expand(lattice,
    history + 1)``: paths that share their last ``history`` tokens merge), then walk the nodes in topological
    order; each node keeps the state of its best incoming path (Viterbi by the new scores), and the arcs that
    leave it are scored from that state. Nodes at the same depth are stepped as one batch.

    With ``history`` long enough that no two paths merge, this is exact; below that, a path whose history
    lost a merge is scored from the winner's state (the lattice-vs-sentence discrepancy it causes is measured
    by :func:`discrepancy`).
    """
    vocab = lm.vocab
    exp = expand(with_sentence_end(lattice, vocab), history + 1, token=vocab.token)
    lat = exp.lattice
    tokens = [vocab.token(a.word) for a in lat.arcs]
    into = lat.in_arcs()
    topo = lat.topological_order()
    depth = [0] * len(lat.nodes)
    for u in topo:
        for i in into[u]:
            depth[u] = max(depth[u], depth[lat.arcs[i].start] + 1)
    levels: dict[int, list[int]] = {}
    for v in topo:
        levels.setdefault(depth[v], []).append(v)
    logp0, state0 = lm.step(torch.tensor([vocab.bos]), None)
    # per node: (its next-token log-probabilities [V], its state as a batch of one)
    node_logp: list[torch.Tensor | None] = [None] * len(lat.nodes)
    node_state: list[object] = [None] * len(lat.nodes)
    node_logp[lat.start], node_state[lat.start] = logp0[0], state0
    fwd = [-math.inf] * len(lat.nodes)
    fwd[lat.start] = 0.0
    new_lm = [0.0] * len(lat.arcs)
    for d in sorted(levels)[1:]:
        stepping: list[tuple[int, int, int]] = []  # (node, best predecessor, token)
        for v in levels[d]:
            best, best_arc = -math.inf, -1
            for i in into[v]:
                arc, t = lat.arcs[i], tokens[i]
                logp = node_logp[arc.start]
                assert logp is not None
                new_lm[i] = float(logp[t]) if t is not None else 0.0
                s = fwd[arc.start] + lat.arc_score(replace(arc, lm=new_lm[i]))
                if s > best:
                    best, best_arc = s, i
            fwd[v] = best
            u, t = lat.arcs[best_arc].start, tokens[best_arc]
            if t is None:  # a null arc reads nothing: the state passes through
                node_logp[v], node_state[v] = node_logp[u], node_state[u]
            else:
                stepping.append((v, u, t))
        if stepping:
            state = lm.cat([node_state[u] for _, u, _ in stepping])
            logp, state = lm.step(torch.tensor([t for _, _, t in stepping]), state)
            for r, (v, _, _) in enumerate(stepping):
                node_logp[v] = logp[r]
                node_state[v] = lm.select(state, torch.tensor([r]))
    return Rescored(lattice=lat.with_lm_scores(new_lm), expansion=exp)


@dataclass(frozen=True)
class RescoredPath:
    """An N-best hypothesis after rescoring: the ``path`` (with its old scores), its new LM score and total."""

    path: Path
    lm: float
    total: float


def rescore_nbest(lattice: Lattice, lm: LanguageModel, n: int = 100) -> list[RescoredPath]:
    """The ``n`` best distinct sentences of the lattice (by its own scores), each rescored as a sentence by
    ``lm`` (:func:`sentence_scores`); best new total first.
    total = acscale * a + lmscale * (new LM score) + wdpenalty * (word arcs).

    The word arcs are the path's, plus one when the lattice has no end marker (the sentence score includes
    eos): the same for every path, as in :func:`with_sentence_end`.
    """
    vocab = lm.vocab
    paths = nbest(lattice, n, unique=True)
    scores = sentence_scores(lm, [path_tokens(p, vocab) for p in paths])
    adds_end = with_sentence_end(lattice, vocab) is not lattice
    out = [
        RescoredPath(
            p,
            float(s),
            lattice.acscale * p.acoustic + lattice.lmscale * float(s) + lattice.wdpenalty * (len(p.words) + adds_end),
        )
        for p, s in zip(paths, scores)
    ]
    return sorted(out, key=lambda r: -r.total)


def sentence_scores(lm: LanguageModel, sentences: Sequence[Sequence[int]], *, batch_size: int = 512) -> torch.Tensor:
    """Each sentence's score by ``lm`` (as ``lm.sentence_logprobs``, to rounding), computing what the sentences
    share once. An N-best list is a few words of difference on a common frame, so this is most of the work saved:

    - a finite-order model (integer ``order``): one next-token distribution per distinct context of ``order``
      tokens across all the sentences (:meth:`FiniteOrderLM.next_logprobs`);
    - a recurrent model that can be stepped: one step per distinct prefix, the sentences walked as a prefix
      tree, one batch per depth;
    - anything else: ``lm.sentence_logprobs``.
    """
    if not sentences:
        return torch.zeros(0, dtype=torch.float64)
    vocab = lm.vocab
    order = getattr(lm, "order", None)
    if isinstance(order, int) and isinstance(lm, FiniteOrderLM):
        row_of: dict[tuple[int, ...], int] = {}
        rows, toks, owner = [], [], []
        for i, s in enumerate(sentences):
            for j, t in enumerate((*s, vocab.eos)):
                rows.append(row_of.setdefault(_contexts(tuple(s[:j]), vocab.bos, order), len(row_of)))
                toks.append(t)
                owner.append(i)
        picked = _context_logprobs(lm, row_of, rows, toks, batch_size)
        return torch.zeros(len(sentences), dtype=torch.float64).index_add_(0, torch.tensor(owner), picked)
    if isinstance(lm, RecurrentLM) and getattr(lm, "steps", True):
        return _prefix_tree_scores(lm, sentences)
    return lm.sentence_logprobs(sentences)


def _prefix_tree_scores(lm: RecurrentLM, sentences: Sequence[Sequence[int]]) -> torch.Tensor:
    """The sentences' scores by stepping ``lm`` once per distinct prefix (depth by depth, one batch each)."""
    vocab = lm.vocab
    out = torch.zeros(len(sentences), dtype=torch.float64)
    logp, state = lm.step(torch.tensor([vocab.bos]), None)
    row_of: dict[tuple[int, ...], int] = {(): 0}  # the prefixes of the current depth -> their row in logp / state
    for depth in range(max(len(s) for s in sentences) + 1):
        for i, s in enumerate(sentences):
            if len(s) >= depth:
                out[i] += float(logp[row_of[tuple(s[:depth])], s[depth] if depth < len(s) else vocab.eos])
        nxt: dict[tuple[int, ...], int] = {}
        parents, toks = [], []
        for s in sentences:
            if len(s) > depth and tuple(s[: depth + 1]) not in nxt:
                nxt[tuple(s[: depth + 1])] = len(nxt)
                parents.append(row_of[tuple(s[:depth])])
                toks.append(s[depth])
        if not nxt:
            break
        logp, state = lm.step(torch.tensor(toks), lm.select(state, torch.tensor(parents)))
        row_of = nxt
    return out


def discrepancy(lattice: Lattice, lm: LanguageModel, paths: Sequence[Path]) -> torch.Tensor:
    """For each path of a rescored lattice: its lattice LM score (sum of arc ``l``) minus the model's score of
    its sentence on its own, [len(paths)] float64. Zero (to rounding) for :func:`rescore_exact`."""
    if not paths:
        return torch.zeros(0, dtype=torch.float64)
    own = lm.sentence_logprobs([path_tokens(p, lm.vocab) for p in paths])
    return torch.tensor([p.lm for p in paths], dtype=torch.float64) - own
