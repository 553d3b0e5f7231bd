r"""What lattice rescoring asks of a language model, and the models that answer it.

Every model scores sentences in natural log, from a start-of-sentence history ``bos`` to an end token
``eos`` (PTB has one boundary token, ``<eos>``, used for both):

.. math:: \log P(w_1 \dots w_m) = \sum_{i=1}^{m+1} \log P(w_i \mid \mathrm{bos}, w_1, \dots, w_{i-1}),
          \qquad w_{m+1} = \mathrm{eos}.

Two kinds of model, two protocols:

- :class:`FiniteOrderLM` of order n (``.order``, the series' notation): the next-token distribution reads the
  last n tokens only, an (n + 1)-gram in n-gram terms. ``next_logprobs(histories)`` gives it for a batch of
  histories at once. A lattice expanded so that every node has a unique n-token history
  (``expand(lattice, n + 1)``) is rescored exactly by it. Paper A's approximate fixed points (arXiv 2106.02417:
  k Jacobi iterations per layer from the zero start, order L(k - 1) + 1 for L layers) and paper B's truncated
  models (arXiv 1805.10369) are such models.
- :class:`RecurrentLM`: a state carried from token to token (an LSTM trained by BPTT), unbounded history.
  ``step(tokens, state)`` advances a batch of states by one token.

Both give ``sentence_logprobs(sentences)``: the score of each whole sentence by the model's ordinary forward
pass, which is what a lattice score is compared with.

:class:`NGramLM` (interpolated absolute discounting) is a finite-order model counted from text: the first-pass
model of the synthetic lattices and the reference in the tests. :class:`TorchLM` adapts an
:class:`fpcore.models.lm.RNNLM` to both protocols.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = [
    "LanguageModel",
    "FiniteOrderLM",
    "RecurrentLM",
    "Vocabulary",
    "NGramLM",
    "TorchLM",
    "order_of",
]

START_WORDS = frozenset({"<s>", "!SENT_START"})
END_WORDS = frozenset({"</s>", "!SENT_END"})


class Vocabulary:
    """Words <-> token ids for a model, and the mapping from lattice words to tokens.

    ``token(word)``: None for a null arc (``word=None``) or a sentence-start marker (``<s>``, ``!SENT_START``:
    the history already starts with ``bos``); ``eos`` for an end marker (``</s>``, ``!SENT_END``) or the
    model's own end word; the word's id otherwise, or ``unk``'s id for a word outside the vocabulary (a
    KeyError when the vocabulary has no ``unk``).
    """

    def __init__(self, words: Sequence[str], *, bos: str = "<eos>", eos: str = "<eos>", unk: str | None = "<unk>"):
        self.words = list(words)
        self.ids = {w: i for i, w in enumerate(self.words)}
        if len(self.ids) != len(self.words):
            raise ValueError("the vocabulary has repeated words")
        for name, w in (("bos", bos), ("eos", eos)):
            if w not in self.ids:
                raise ValueError(f"{name} word {w!r} is not in the vocabulary")
        self.bos, self.eos = self.ids[bos], self.ids[eos]
        self.unk = self.ids.get(unk) if unk is not None else None

    def __len__(self) -> int:
        return len(self.words)

    def token(self, word: str | None) -> int | None:
        if word is None or word in START_WORDS:
            return None
        if word in END_WORDS:
            return self.eos
        i = self.ids.get(word)
        if i is None:
            if self.unk is None:
                raise KeyError(f"word {word!r} is not in the vocabulary, which has no unknown-word token")
            return self.unk
        return i

    def encode(self, words: Iterable[str]) -> list[int]:
        """Token ids of a sentence's words (markers and null words dropped; an end marker is not kept:
        every sentence score adds eos itself)."""
        return [t for t in (self.token(w) for w in words) if t is not None and not (t == self.eos)]

    def is_marker(self, word: str) -> bool:
        """A sentence marker, not a word of the hypothesis (left out of word error counts)."""
        return word in START_WORDS or word in END_WORDS or self.ids.get(word) == self.eos


@runtime_checkable
class LanguageModel(Protocol):
    """Scores whole sentences: log P(tokens, eos | bos) in natural log, one float64 per sentence."""

    vocab: Vocabulary

    def sentence_logprobs(self, sentences: Sequence[Sequence[int]]) -> Tensor: ...


@runtime_checkable
class FiniteOrderLM(LanguageModel, Protocol):
    """A model of order n: its next-token distribution reads the last ``order`` = n tokens only (an adapter
    whose model turns out recurrent may say None; :func:`fpcore.lattice.rescore_exact` then refuses it)."""

    order: int | None

    def next_logprobs(self, histories: Tensor) -> Tensor:
        """histories [B, h] (token ids, h <= order: the last h tokens read; shorter than ``order`` only at the
        start of a sentence, where it begins with bos) -> log P(next | history), [B, V] float64."""
        ...


@runtime_checkable
class RecurrentLM(LanguageModel, Protocol):
    """A model with a state carried from token to token."""

    def step(self, tokens: Tensor, state: Any) -> tuple[Tensor, Any]:
        """tokens [B] and the state after the previous tokens (None: the empty history) -> (log P(next token
        | history + tokens) [B, V] float64, the new state)."""
        ...

    def select(self, state: Any, index: Tensor) -> Any:
        """The states of rows ``index`` of a batch of states."""
        ...

    def cat(self, states: Sequence[Any]) -> Any:
        """One batch of states from several (rows in order)."""
        ...


# -- a counted n-gram model --------------------------------------------------------------------------------------
class NGramLM:
    r"""An ``n``-gram model (order ``n - 1`` in this series' notation: it reads the last n - 1 tokens) with
    interpolated absolute discounting (Ney, Essen & Kneser 1994), counted from token ids:

    .. math:: P(w \mid h) = \frac{\max(c(h w) - D, 0)}{c(h)} + \frac{D \, N_{1+}(h \cdot)}{c(h)} P(w \mid h'),

    where :math:`h'` drops the oldest token of :math:`h`; unseen histories back off entirely; the order-1 model
    interpolates the unigram with a uniform distribution the same way (so every word has P > 0). Counts are
    taken over ``streams`` (token-id sequences; each is read as bos + stream, so the model learns sentence
    starts when the streams are sentences or a corpus with eos between sentences).

    Two code paths on purpose: :meth:`logprob` looks up one (history, word) pair from the counts and is what
    :meth:`sentence_logprobs` adds up; :meth:`next_logprobs` builds whole rows [B, V] with tensors.
    """

    def __init__(self, vocab: Vocabulary, streams: Iterable[Sequence[int]], *, n: int = 3, discount: float = 0.75):
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not 0 < discount < 1:
            raise ValueError(f"discount must be in (0, 1), got {discount}")
        self.vocab, self.n, self.discount = vocab, n, discount
        self.order = n - 1  # the tokens its next-token distribution reads
        order = n
        V = len(vocab)
        self.counts: list[Counter] = [Counter() for _ in range(order)]  # counts[n][(h..., w)] for n-token history
        for stream in streams:
            seq = [vocab.bos, *stream]
            for t in range(1, len(seq)):
                for n in range(order):
                    if t - n < 0:
                        break
                    self.counts[n][tuple(seq[t - n : t + 1])] += 1
        # per history: total count c(h) and the number of distinct followers N1+(h .)
        self.hist_total: list[dict[tuple[int, ...], int]] = [dict() for _ in range(order)]
        self.hist_types: list[dict[tuple[int, ...], int]] = [dict() for _ in range(order)]
        self.followers: list[dict[tuple[int, ...], list[tuple[int, int]]]] = [dict() for _ in range(order)]
        for n in range(order):
            for gram, c in self.counts[n].items():
                h, w = gram[:-1], gram[-1]
                self.hist_total[n][h] = self.hist_total[n].get(h, 0) + c
                self.hist_types[n][h] = self.hist_types[n].get(h, 0) + 1
                self.followers[n].setdefault(h, []).append((w, c))
        total = self.hist_total[0].get((), 0)
        if total == 0:
            raise ValueError("no tokens to count")
        uni = torch.zeros(V, dtype=torch.float64)
        for (w,), c in self.counts[0].items():
            uni[w] = c
        D = discount
        self._unigram = (uni - D).clamp(min=0) / total + D * self.hist_types[0][()] / total / V  # [V]

    def __repr__(self) -> str:
        grams = ", ".join(f"{len(c):,}" for c in self.counts)
        return f"NGramLM(n={self.n}, V={len(self.vocab):,}, counts of 1..n-grams: {grams})"

    def logprob(self, history: Sequence[int], word: int) -> float:
        """log P(word | history); only the last ``order`` = n - 1 tokens of ``history`` matter."""
        h = tuple(history)[-self.order :] if self.order else ()
        return math.log(self._prob(h, word))

    def _prob(self, h: tuple[int, ...], w: int) -> float:
        if not h:
            return float(self._unigram[w])
        n, lower = len(h), self._prob(h[1:], w)
        total = self.hist_total[n].get(h)
        if not total:
            return lower
        c = self.counts[n].get(h + (w,), 0)
        D = self.discount
        return max(c - D, 0) / total + D * self.hist_types[n][h] / total * lower

    def next_logprobs(self, histories: Tensor) -> Tensor:
        if histories.dim() != 2 or histories.shape[1] > max(self.order, 1):
            raise ValueError(f"histories must be [B, h] with h <= {self.order}, got {tuple(histories.shape)}")
        rows = []
        for hist in histories.tolist():
            h = tuple(hist)[-self.order :] if self.order else ()
            row = self._unigram.clone()
            for n in range(1, len(h) + 1):  # from the shortest history up, each order interpolates the one below
                sub = h[len(h) - n :]
                total = self.hist_total[n].get(sub)
                if not total:
                    continue
                D = self.discount
                row *= D * self.hist_types[n][sub] / total
                ws, cs = zip(*self.followers[n][sub])
                row[list(ws)] += (torch.tensor(cs, dtype=torch.float64) - D).clamp(min=0) / total
            rows.append(row)
        return torch.stack(rows).log()

    def sentence_logprobs(self, sentences: Sequence[Sequence[int]]) -> Tensor:
        out = []
        for s in sentences:
            seq = [self.vocab.bos, *s, self.vocab.eos]
            out.append(sum(self.logprob(seq[:t], seq[t]) for t in range(1, len(seq))))
        return torch.tensor(out, dtype=torch.float64)


# -- fpcore's RNNLM -----------------------------------------------------------------------------------------------
def order_of(model: torch.nn.Module) -> int | None:
    """The order n of a language model (its logits at t read x_{t-n+1..t}): ``model.order``, None (unbounded)
    for a recurrent model or a model that states none. :class:`fpcore.models.lm.RNNLM` states it: L(k - 1) + 1
    for ``"jacobi"`` with k iterations per layer over L layers, k for ``"truncated"``, None otherwise."""
    order = getattr(model, "order", None)
    return order if isinstance(order, int) else None


class TorchLM:
    """An :class:`fpcore.models.lm.RNNLM` as a lattice scorer (float64 by default, evaluation mode, no
    gradients; the wrapped model is copied, never changed).

    - ``order``: :func:`order_of` the model (None for a recurrent model: it then has no
      ``next_logprobs``, and :func:`fpcore.lattice.rescore_exact` refuses it);
    - ``next_logprobs(histories)``: the model's own ``next_log_probs`` when it has one, else one forward pass
      over the histories from a zero state and the last position's log-softmax;
    - ``sentence_logprobs``: one forward pass per batch of sentences (bos + words, right-padded), summed
      log-probabilities of words + eos: the model's own score of each sentence;
    - ``step`` / ``select``: the recurrence one token at a time (models evaluated by "bptt", or the exact
      "newton"/"quasi_newton" solvers, whose weights give the same recurrence: stepped by torch.nn); ``steps``
      says whether the model is one of these.
    """

    def __init__(
        self, model: torch.nn.Module, vocab: Vocabulary, *, dtype: torch.dtype = torch.float64, batch_size: int = 256
    ):
        if getattr(model, "vocab", len(vocab)) != len(vocab):
            raise ValueError(f"the model has {model.vocab} outputs but the vocabulary {len(vocab)} words")
        self.vocab, self.dtype, self.batch_size = vocab, dtype, batch_size
        self.model = copy.deepcopy(model).to(dtype).eval()
        self.device = next(self.model.parameters()).device
        self.order = order_of(self.model)
        self.method = getattr(self.model, "method", "bptt")
        self.steps = self.method in ("bptt", "newton", "quasi_newton")  # step() runs its recurrence

    def __repr__(self) -> str:
        describe = getattr(self.model, "describe", None)
        name = describe() if callable(describe) else type(self.model).__name__
        return f"TorchLM({name}, order={self.order})"

    @torch.no_grad()
    def next_logprobs(self, histories: Tensor) -> Tensor:
        if self.order is None:
            raise TypeError(f"{self!r} has unbounded history: no next-token function of a finite history")
        if histories.dim() != 2 or not 1 <= histories.shape[1] <= self.order:
            raise ValueError(f"histories must be [B, h] with 1 <= h <= {self.order}, got {tuple(histories.shape)}")
        native = getattr(self.model, "next_log_probs", None)
        if callable(native):  # the model's own function for this (fpcore's RNNLM states its order and has one)
            return native(histories.to(self.device), batch_size=self.batch_size).double()
        out = []
        for part in histories.to(self.device).split(self.batch_size):
            logits, _ = self.model(part, None)  # (b, h, V), from a zero state
            out.append(torch.log_softmax(logits[:, -1], -1).double())
        return torch.cat(out)

    @torch.no_grad()
    def sentence_logprobs(self, sentences: Sequence[Sequence[int]]) -> Tensor:
        out = torch.empty(len(sentences), dtype=torch.float64)
        order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))  # similar lengths batch together
        for at in range(0, len(order), self.batch_size):
            idx = order[at : at + self.batch_size]
            T = max(len(sentences[i]) for i in idx) + 1
            x = torch.full((len(idx), T), self.vocab.eos, dtype=torch.long)
            y = torch.full((len(idx), T), -1, dtype=torch.long)  # -1: padding, not scored
            for r, i in enumerate(idx):
                s = list(sentences[i])
                x[r, : len(s) + 1] = torch.tensor([self.vocab.bos, *s])
                y[r, : len(s) + 1] = torch.tensor([*s, self.vocab.eos])
            logits, _ = self.model(x.to(self.device), None)  # (b, T, V); causal, so padding on the right is inert
            logp = torch.log_softmax(logits, -1)  # in the model's dtype: float64 by default
            picked = logp.gather(-1, y.clamp(min=0).unsqueeze(-1).to(logp.device)).squeeze(-1).double().cpu()  # (b, T)
            out[idx] = (picked * (y >= 0)).sum(1)
        return out

    # -- the recurrence, one token at a time --------------------------------------------------------------------
    def _stepper(self) -> torch.nn.Module:
        if not self.steps:
            raise TypeError(
                f"{self!r}: stepping one token at a time needs a recurrent model; method {self.method!r} is not "
                "the recurrence of its weights"
            )
        stepper = getattr(self, "_bptt", None)
        if stepper is None:
            stepper = copy.deepcopy(self.model)
            # same weights; torch.nn's layer steps the exact recurrence (Module.__setattr__ is typed for tensors)
            stepper.method = "bptt"  # type: ignore[assignment]
            self._bptt = stepper
        return stepper

    @torch.no_grad()
    def step(self, tokens: Tensor, state: Any) -> tuple[Tensor, Any]:
        logits, state = self._stepper()(tokens.to(self.device).view(-1, 1), state)  # (B, 1, V)
        return torch.log_softmax(logits[:, 0], -1).double(), state

    def select(self, state: Any, index: Tensor) -> Any:
        """torch.nn's recurrent states are [layers=1, B, H] (LSTM: a pair of them) per layer: rows are dim 1."""
        if isinstance(state, Tensor):
            return state.index_select(1, index.to(state.device))
        return type(state)(self.select(s, index) for s in state)

    def cat(self, states: Sequence[Any]) -> Any:
        first = states[0]
        if isinstance(first, Tensor):
            return torch.cat(list(states), 1)
        return type(first)(self.cat([s[j] for s in states]) for j in range(len(first)))
