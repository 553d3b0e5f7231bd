r"""Seeded synthetic word lattices made from reference sentences (no lattices ship with this project).

The noise model (:class:`NoiseModel`; every figure below is one of its fields, defaults in brackets). For a
reference sentence :math:`w_1 \dots w_m`, position i becomes a *slot* between node i - 1 and node i:

1. **the reference word** :math:`w_i` is an arc of the slot, except with probability ``p_missing`` [0.04]
   (the recogniser pruned it: then no path spells the reference and the oracle error rate is above 0);
2. **confusions**: ``Binomial(max_confusions, p_confusion)`` [4, 0.5] competing words, drawn without
   replacement from the ``pool`` [8] words most similar to :math:`w_i` in spelling (same first letter, most
   character bigrams in common: spelling stands in for pronunciation, which PTB does not give us);
3. **deletion**: with probability ``p_deletion`` [0.08] a null arc (``!NULL``) that skips the slot;
4. **insertion**: with probability ``p_insertion`` [0.08] a detour through a node inside the slot:
   :math:`w_i` (or a confusion) followed by a short frequent word (one of the ``insertion_pool`` [50] most
   frequent words of at most 3 letters).

**Acoustic scores** (natural log, one draw per arc, :math:`\epsilon \sim |N(0, 1)|`): the reference word
:math:`a = -\sigma \epsilon`; a confusion :math:`a = -\mu (1 - s) - \sigma \epsilon`, where s in [0, 1] is its
spelling similarity to :math:`w_i` (Dice coefficient of character bigrams), so close spellings are close
acoustically; a deletion :math:`a = -\mu_{del} - \sigma \epsilon`; an inserted word
:math:`a = -\mu_{ins} - \sigma \epsilon`. Defaults: ``margin`` :math:`\mu` = 4, ``noise`` :math:`\sigma` = 2.5,
``deletion_cost`` = 4, ``insertion_cost`` = 3.

**First-pass LM scores**: an n-gram model (:class:`fpcore.lattice.NGramLM`, ``n = first_pass_n`` [2], counted
on the training text) scores every arc, as the decoder that made a real lattice would; the lattice is expanded
to that order first, so that each arc's history is unique, as in a real n-gram decoder's lattice. The last arc
of every path is ``</s>`` (the model's end-of-sentence probability). Node times: 0.3 s per slot. Header:
``lmscale=1`` (scores are on the scale of LM log-probabilities), ``wdpenalty=0``, ``acscale=1``.

The lattice of sentence ``index`` depends only on (``seed``, ``index``, the sentence, the noise model), so any
subset of a test set can be regenerated alone.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

from fpcore.lattice.core import Arc, Lattice, Node, expand
from fpcore.lattice.scorers import NGramLM, Vocabulary
from fpcore.lattice.slf import write_slf

__all__ = [
    "NoiseModel",
    "SimilarWords",
    "similarity",
    "synthesize",
    "insertion_words",
    "write_lattice_set",
    "read_references",
    "iter_pairs",
    "sentences",
]


@dataclass(frozen=True)
class NoiseModel:
    """The parameters of the synthetic lattices (see the module docstring for what each does)."""

    p_missing: float = 0.04
    max_confusions: int = 4
    p_confusion: float = 0.5
    pool: int = 8
    p_deletion: float = 0.08
    p_insertion: float = 0.08
    insertion_pool: int = 50
    margin: float = 4.0
    noise: float = 2.5
    deletion_cost: float = 4.0
    insertion_cost: float = 3.0
    first_pass_n: int = 2
    seconds_per_slot: float = 0.3

    def __post_init__(self):
        for name in ("p_missing", "p_confusion", "p_deletion", "p_insertion"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability, got {getattr(self, name)}")
        for name in ("max_confusions", "pool", "insertion_pool", "first_pass_n"):
            if getattr(self, name) < (1 if name == "first_pass_n" else 0):
                raise ValueError(f"{name} is too small: {getattr(self, name)}")


def _bigrams(word: str) -> frozenset[str]:
    w = f"^{word}$"
    return frozenset(w[i : i + 2] for i in range(len(w) - 1))


def similarity(a: str, b: str) -> float:
    """Dice coefficient of the sets of character bigrams of ``^a$`` and ``^b$``: 1 for equal words, 0 for none
    shared."""
    x, y = _bigrams(a), _bigrams(b)
    return 2 * len(x & y) / (len(x) + len(y))


class SimilarWords:
    """For each word, the ``pool`` words of the vocabulary most similar in spelling (same first letter), with
    their similarity; computed on first use per word and cached."""

    def __init__(self, words: Sequence[str], pool: int, exclude: Sequence[str] = ()):
        skip = set(exclude)
        self.pool = pool
        self.by_letter: dict[str, list[tuple[str, frozenset[str]]]] = {}
        for w in words:
            if w not in skip:
                self.by_letter.setdefault(w[:1], []).append((w, _bigrams(w)))
        self._cache: dict[str, list[tuple[str, float]]] = {}

    def __call__(self, word: str) -> list[tuple[str, float]]:
        hit = self._cache.get(word)
        if hit is None:
            x = _bigrams(word)
            ranked = sorted(
                ((2 * len(x & y) / (len(x) + len(y)), w) for w, y in self.by_letter.get(word[:1], []) if w != word),
                key=lambda sw: (-sw[0], sw[1]),
            )
            hit = self._cache[word] = [(w, s) for s, w in ranked[: self.pool]]
        return hit


def _eps(rng: random.Random) -> float:
    return abs(rng.gauss(0.0, 1.0))


def synthesize(
    words: Sequence[str],
    *,
    first_pass: NGramLM,
    similar: SimilarWords,
    insertions: Sequence[str],
    noise: NoiseModel = NoiseModel(),
    seed: int = 0,
    index: int = 0,
    utterance: str | None = None,
) -> Lattice:
    """The synthetic lattice of one reference sentence ``words`` (see the module docstring)."""
    rng = random.Random(f"{seed}:{index}:{' '.join(words)}")
    nz = noise
    nodes = [Node(time=round(i * nz.seconds_per_slot, 6)) for i in range(len(words) + 1)]
    arcs: list[Arc] = []
    for i, ref in enumerate(words):
        u, v = i, i + 1
        slot: list[tuple[str, float]] = []  # (word, acoustic)
        if rng.random() >= nz.p_missing:
            slot.append((ref, -nz.noise * _eps(rng)))
        pool = similar(ref)
        k = sum(rng.random() < nz.p_confusion for _ in range(nz.max_confusions))
        for w, s in rng.sample(pool, min(k, len(pool))):
            slot.append((w, -nz.margin * (1 - s) - nz.noise * _eps(rng)))
        if not slot:  # the reference was pruned and no confusion drawn: keep the closest word
            w, s = pool[0] if pool else (ref, 1.0)
            slot.append((w, -nz.margin * (1 - s) - nz.noise * _eps(rng)))
        arcs += [Arc(u, v, w, a) for w, a in slot]
        if rng.random() < nz.p_deletion:
            arcs.append(Arc(u, v, None, -nz.deletion_cost - nz.noise * _eps(rng)))
        if rng.random() < nz.p_insertion and insertions:
            mid = len(nodes)
            nodes.append(Node(time=round((i + 0.5) * nz.seconds_per_slot, 6)))
            w, a = slot[rng.randrange(len(slot))]
            arcs.append(Arc(u, mid, w, a - nz.noise * _eps(rng)))
            arcs.append(Arc(mid, v, rng.choice(list(insertions)), -nz.insertion_cost - nz.noise * _eps(rng)))
    end = len(nodes)
    nodes.append(Node(time=round((len(words) + 0.5) * nz.seconds_per_slot, 6)))
    arcs.append(Arc(len(words), end, "</s>", 0.0))
    lat = Lattice(nodes=nodes, arcs=arcs, start=0, end=end, utterance=utterance)
    return _first_pass_scores(lat, first_pass)


def _first_pass_scores(lattice: Lattice, lm: NGramLM) -> Lattice:
    """Expand to the first-pass model's order and put its log-probabilities on the arcs."""
    vocab = lm.vocab
    exp = expand(lattice, lm.n, token=vocab.token)
    lat = exp.lattice
    scores = []
    for arc in lat.arcs:
        t = vocab.token(arc.word)
        history = cast(tuple[int, ...], exp.history[arc.start])  # token ids: vocab.token made them
        scores.append(0.0 if t is None else lm.logprob((vocab.bos, *history), t))
    return lat.with_lm_scores(scores)


def sentences(tokens: Sequence[int], eos: int) -> list[list[int]]:
    """Split a token stream (one eos after each sentence, as fpcore's corpora) into sentences without eos."""
    out: list[list[int]] = []
    cur: list[int] = []
    for t in tokens:
        if t == eos:
            out.append(cur)
            cur = []
        else:
            cur.append(t)
    if cur:
        out.append(cur)
    return out


def insertion_words(vocab: Vocabulary, counts: Counter, n: int) -> list[str]:
    """The ``n`` most frequent words of at most 3 letters (no markers, no ``<unk>``)."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    short = [vocab.words[t] for t, _ in ranked if len(vocab.words[t]) <= 3 and vocab.words[t].isalpha()]
    return short[:n]


def write_lattice_set(
    refs: Sequence[Sequence[str]],
    directory: str | os.PathLike,
    *,
    first_pass: NGramLM,
    train_counts: Counter,
    noise: NoiseModel = NoiseModel(),
    seed: int = 0,
    prefix: str = "ptb-test",
    progress: bool = False,
) -> list[Path]:
    """Write one gzip SLF lattice per reference sentence into ``directory`` (``<prefix>-<index>.lat.gz``) and
    the references to ``references.txt`` (``utterance<TAB>words``), plus ``noise_model.txt`` with the
    parameters, the seed and the first-pass model. A lattice already there is kept when those are unchanged
    (it would come out the same); otherwise every lattice is rewritten."""
    from tqdm.auto import tqdm

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = first_pass.vocab
    params = "\n".join(f"{k}={v}" for k, v in {**asdict(noise), "seed": seed, "first_pass": first_pass}.items())
    stamp = directory / "noise_model.txt"
    fresh = not stamp.exists() or stamp.read_text() != params + "\n"  # other settings: rewrite every lattice
    similar = SimilarWords(vocab.words, noise.pool, exclude=[vocab.words[vocab.eos], "<unk>"])
    inserts = insertion_words(vocab, train_counts, noise.insertion_pool)
    paths, lines = [], []
    for index, words in enumerate(tqdm(refs, desc="lattices", disable=not progress)):
        utt = f"{prefix}-{index:05d}"
        path = directory / f"{utt}.lat.gz"
        if fresh or not path.exists():
            lat = synthesize(
                words,
                first_pass=first_pass,
                similar=similar,
                insertions=inserts,
                noise=noise,
                seed=seed,
                index=index,
                utterance=utt,
            )
            write_slf(lat, path)
        paths.append(path)
        lines.append(f"{utt}\t{' '.join(words)}")
    (directory / "references.txt").write_text("\n".join(lines) + "\n")
    stamp.write_text(params + "\n")
    return paths


def read_references(path: str | os.PathLike) -> dict[str, list[str]]:
    """``utterance<TAB>words`` lines -> {utterance: words}."""
    out = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        utt, sep, text = line.partition("\t")
        if not sep:
            raise ValueError(f"{path}:{n}: expected 'utterance<TAB>words'")
        out[utt] = text.split()
    return out


def iter_pairs(directory: str | os.PathLike) -> Iterator[tuple[str, Path, list[str]]]:
    """(utterance, lattice file, reference words) for every reference in ``directory/references.txt``."""
    directory = Path(directory)
    for utt, words in read_references(directory / "references.txt").items():
        yield utt, directory / f"{utt}.lat.gz", words
