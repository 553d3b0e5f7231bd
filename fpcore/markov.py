r"""A toy corpus with a known answer: text drawn from a Markov chain of order :math:`m` over :math:`V` symbols.

The next symbol depends on the last :math:`m` symbols only, through a fixed table
:math:`P(x_{t+1} \mid x_{t-m+1..t})` (``chain.table``, [V, ..., V] with m + 1 axes). Everything a language
model can achieve on it is computable exactly:

- the stationary distribution :math:`\pi` of the last m symbols (``chain.stationary()``), by iterating
  :math:`\pi'(a_2..a_m, b) = \sum_{a_1} \pi(a_1..a_m) P(b \mid a_1..a_m)`;
- the conditional entropy :math:`H_j = H(x_{t+1} \mid x_{t-j+1..t})` under :math:`\pi` for every j
  (``chain.entropies()``): the lowest cross-entropy per token that *any* predictor reading the last j symbols
  can reach. :math:`H_j` falls as j grows and stops falling at j = m: :math:`H_m` is the entropy rate;
- the best order-j predictor itself, :math:`P(x_{t+1} \mid x_{t-j+1..t})` (``chain.predictor(j)``), so a
  model's test loss can be set beside the best loss *on the same test tokens* (``chain.nll(tokens, j)``).

So a language model of order :math:`n \ge m` can reach the entropy rate :math:`H_m`, and one of order
:math:`n < m` cannot get below :math:`H_n \ge H_{m-1} > H_m`: it stays above the entropy rate by at least
:math:`H_{m-1} - H_m`, a margin the chain fixes. Notebook 06 trains models of each order on such a corpus.

>>> chain = MarkovChain.random(vocab=6, order=3, seed=0)
>>> corpus = chain.corpus(30_000, 5_000, 10_000, seed=1)     # a fpcore.data.Corpus
>>> chain.entropies()                                        # [H_0, H_1, H_2, H_3] in nats
"""

from __future__ import annotations

import bisect

import torch
from torch import Tensor

from fpcore.data import Corpus

__all__ = ["MarkovChain"]


class MarkovChain:
    """A stationary Markov chain of order ``order`` (m) over ``vocab`` (V) symbols.

    table  [V] * (m + 1) float64: ``table[a_1, ..., a_m, b]`` = P(next = b | last m symbols a_1..a_m, oldest
           first); every entry > 0 (so the chain is ergodic) and each row sums to 1.
    """

    def __init__(self, table: Tensor):
        if not isinstance(table, Tensor) or table.dim() < 2 or len(set(table.shape)) != 1:
            raise ValueError("table must be a [V, ..., V] tensor with order + 1 axes")
        table = table.to(torch.float64)
        if not bool((table > 0).all()) or not torch.allclose(table.sum(-1), torch.ones((), dtype=torch.float64)):
            raise ValueError("table must hold positive probabilities whose last axis sums to 1")
        self.table = table
        self.vocab, self.order = table.shape[0], table.dim() - 1

    @classmethod
    def random(cls, vocab: int = 6, order: int = 3, *, sharpness: float = 3.0, seed: int = 0) -> MarkovChain:
        """A random chain: each row is softmax(sharpness * N(0, 1) logits); larger sharpness, lower entropy."""
        if vocab < 2 or order < 1:
            raise ValueError(f"need vocab >= 2 and order >= 1, got vocab={vocab}, order={order}")
        gen = torch.Generator().manual_seed(seed)
        logits = sharpness * torch.randn([vocab] * (order + 1), generator=gen, dtype=torch.float64)
        return cls(logits.softmax(-1))

    def stationary(self, *, tol: float = 1e-14, max_iters: int = 100_000) -> Tensor:
        """pi [V] * m: the stationary distribution of the last m symbols (power iteration)."""
        V, m = self.vocab, self.order
        pi = torch.full([V] * m, V**-m, dtype=torch.float64)
        for _ in range(max_iters):
            new = (pi[..., None] * self.table).sum(0)  # drop the oldest symbol, append the next
            new = new / new.sum()
            if float((new - pi).abs().max()) <= tol:
                return new
            pi = new
        raise RuntimeError(f"the stationary distribution did not converge in {max_iters} iterations")

    def _joint(self, j: int) -> Tensor:
        """P(x_{t-j+1..t}, x_{t+1}) under the stationary distribution, [V] * (j + 1)."""
        if not 0 <= j:
            raise ValueError(f"j must be >= 0, got {j}")
        joint = self.stationary()[..., None] * self.table  # [V] * (m + 1)
        return joint.sum(tuple(range(self.order - j))) if j < self.order else joint

    def predictor(self, j: int) -> Tensor:
        """The best predictor reading the last j symbols: P(next | last j) [V] * (j + 1) (j >= m: the table)."""
        if j >= self.order:
            return self.table
        joint = self._joint(j)
        return joint / joint.sum(-1, keepdim=True)

    def entropies(self, up_to: int | None = None) -> list[float]:
        """[H_0, ..., H_up_to] (default up to m), nats: H_j = H(next | last j symbols) under stationarity."""

        def entropy(p: Tensor) -> float:
            return float(-(p * p.log()).sum())

        out = []
        for j in range(self.order + 1 if up_to is None else up_to + 1):
            joint = self._joint(min(j, self.order))
            out.append(entropy(joint) - entropy(joint.sum(-1)))
        return out

    @property
    def entropy_rate(self) -> float:
        """H_m (nats per symbol)."""
        return self.entropies()[-1]

    def sample(self, n: int, *, seed: int = 0) -> Tensor:
        """n symbols [n] int64, the first m from the stationary distribution (so the whole stream is stationary)."""
        V, m = self.vocab, self.order
        if n < m:
            raise ValueError(f"n must be >= the order {m}, got {n}")
        gen = torch.Generator().manual_seed(seed)
        first = int(torch.multinomial(self.stationary().flatten(), 1, generator=gen))
        out = [first // V ** (m - 1 - i) % V for i in range(m)]
        # row index = the context in base V, oldest digit first; one uniform per step, inverted through the
        # row's cumulative distribution
        cdf = self.table.reshape(-1, V).cumsum(-1).tolist()  # (V^m, V)
        ctx = first
        for u in torch.rand(n - m, generator=gen, dtype=torch.float64).tolist():
            b = min(bisect.bisect_right(cdf[ctx], u), V - 1)
            out.append(b)
            ctx = (ctx * V + b) % V**m
        return torch.tensor(out, dtype=torch.long)

    def corpus(self, train: int, valid: int, test: int, *, seed: int = 0) -> Corpus:
        """A :class:`fpcore.data.Corpus` of one stationary stream cut into train / valid / test."""
        ids = self.sample(train + valid + test, seed=seed)
        return Corpus(
            f"markov-{self.order}",
            [f"s{i}" for i in range(self.vocab - 1)] + ["<eos>"],
            ids[:train],
            ids[train : train + valid],
            ids[train + valid :],
        )

    def nll(self, tokens: Tensor, j: int) -> Tensor:
        """Per-token -log P(x_{t+1} | last j symbols) of the best order-j predictor, for t = j..len-2: [len - 1 - j]
        (the first j predictions, which lack a full history, are left out; compare on the same positions)."""
        jj, count = min(j, self.order), len(tokens) - 1 - j
        if count < 1:
            raise ValueError(f"need more than {j + 1} tokens, got {len(tokens)}")
        idx = torch.zeros(count, dtype=torch.long)
        for i in range(jj + 1):  # the last jj history symbols, oldest first, then the next symbol
            start = j - jj + 1 + i
            idx = idx * self.vocab + tokens[start : start + count].long()
        return -self.predictor(jj).flatten()[idx].log()

    def __repr__(self) -> str:
        return f"MarkovChain(vocab={self.vocab}, order={self.order}, entropy_rate={self.entropy_rate:.4f} nats)"
