"""The Markov-chain toy corpus: its stationary distribution, conditional entropies, sampler and oracle losses."""

from __future__ import annotations

import math

import pytest
import torch

from fpcore.markov import MarkovChain


def test_a_two_state_chain_has_its_closed_form_entropy_rate():
    p, q = 0.1, 0.3  # P(1 | 0) = p, P(0 | 1) = q
    chain = MarkovChain(torch.tensor([[1 - p, p], [q, 1 - q]], dtype=torch.float64))
    pi = chain.stationary()
    torch.testing.assert_close(pi, torch.tensor([q / (p + q), p / (p + q)], dtype=torch.float64))

    def h(x):
        return -x * math.log(x) - (1 - x) * math.log(1 - x)

    H0, H1 = chain.entropies()
    assert H1 == pytest.approx(pi[0].item() * h(p) + pi[1].item() * h(q), rel=1e-12)
    assert H0 == pytest.approx(h(q / (p + q)), rel=1e-12) and chain.entropy_rate == H1


@pytest.mark.parametrize("vocab, order", [(3, 1), (4, 2), (6, 3)])
def test_conditional_entropies_fall_until_the_order_and_stop_there(vocab, order):
    chain = MarkovChain.random(vocab, order, seed=vocab)
    pi = chain.stationary()
    torch.testing.assert_close((pi[..., None] * chain.table).sum(0), pi, rtol=0, atol=1e-14)  # stationary
    H = chain.entropies(up_to=order + 2)
    assert all(a > b for a, b in zip(H[: order + 1], H[1 : order + 1])), H
    assert H[order + 1] == pytest.approx(H[order], abs=1e-12) and H[order + 2] == pytest.approx(H[order], abs=1e-12)
    assert H[0] <= math.log(vocab) + 1e-12


def test_samples_follow_the_table_and_their_loss_is_the_entropy_rate():
    chain = MarkovChain.random(4, 2, sharpness=2.0, seed=3)
    x = chain.sample(200_000, seed=4)
    assert x.dtype == torch.long and x.shape == (200_000,) and int(x.min()) >= 0 and int(x.max()) < 4
    counts = torch.zeros(4, 4, 4, dtype=torch.float64)
    counts.index_put_((x[:-2], x[1:-1], x[2:]), torch.ones(len(x) - 2, dtype=torch.float64), accumulate=True)
    freq = counts / counts.sum(-1, keepdim=True)
    seen = counts.sum(-1) > 2000
    assert float((freq - chain.table)[seen].abs().max()) < 0.03
    for j, H in enumerate(chain.entropies(up_to=3)):
        nll = chain.nll(x, j)
        assert len(nll) == len(x) - 1 - j
        assert float(nll.mean()) == pytest.approx(H, abs=5 * float(nll.std()) / math.sqrt(len(nll)) + 0.01)
    # the oracle's loss at one position, by hand
    t = 10
    assert float(chain.nll(x, 2)[t - 2]) == pytest.approx(-math.log(chain.table[x[t - 1], x[t], x[t + 1]].item()))


def test_the_corpus_and_bad_arguments():
    chain = MarkovChain.random(5, 2, seed=0)
    corpus = chain.corpus(300, 50, 60, seed=1)
    assert (len(corpus.train), len(corpus.valid), len(corpus.test), corpus.vocab_size) == (300, 50, 60, 5)
    assert torch.equal(torch.cat([corpus.train, corpus.valid, corpus.test]), chain.sample(410, seed=1))
    with pytest.raises(ValueError, match="positive probabilities"):
        MarkovChain(torch.tensor([[1.0, 0.0], [0.5, 0.5]]))
    with pytest.raises(ValueError, match="order \\+ 1 axes"):
        MarkovChain(torch.ones(2, 3) / 3)
    with pytest.raises(ValueError, match="need vocab >= 2"):
        MarkovChain.random(1, 2)
    with pytest.raises(ValueError, match="need more than"):
        chain.nll(torch.tensor([1, 2]), 2)
