"""Rescoring: exact for finite-order models (every path's lattice score = the model's sentence score), the
approximations for recurrent ones, the scorers themselves, and the synthetic lattices."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from fpcore.lattice import (
    Arc,
    Lattice,
    LatticeError,
    NGramLM,
    Node,
    TorchLM,
    Vocabulary,
    discrepancy,
    expand,
    hypothesis,
    nbest,
    oracle,
    order_of,
    path_tokens,
    read_slf,
    rescore_exact,
    rescore_merged,
    rescore_nbest,
    sentence_scores,
    synth,
    with_sentence_end,
    write_slf,
)
from fpcore.models.lm import RNNLM

FIXTURES = Path(__file__).parent / "fixtures" / "slf"
WORDS = ["<eos>", "<unk>", "the", "a", "cat", "hat", "sat", "sad", "on", "mat", "we", "wee", "see", "sea", "it"]
VOCAB = Vocabulary(WORDS)


def markov_stream(n: int, seed: int = 0) -> list[int]:
    """Tokens from a random second-order chain over the vocabulary (so a trigram has something to learn)."""
    rng = random.Random(seed)
    table = {(a, b): rng.sample(range(len(WORDS)), 4) for a in range(len(WORDS)) for b in range(len(WORDS))}
    out = [0, 0]
    for _ in range(n):
        out.append(rng.choice(table[out[-2], out[-1]]) if rng.random() < 0.8 else rng.randrange(len(WORDS)))
    return out


@pytest.fixture(scope="module")
def trigram() -> NGramLM:
    return NGramLM(VOCAB, [markov_stream(3000)], n=3)


def random_lattice(seed: int, slots: int = 5, end_marker: bool = True) -> Lattice:
    rng = random.Random(seed)
    words = WORDS[1:]
    arcs = []
    for i in range(slots):
        for w in rng.sample(words, rng.randint(1, 3)):
            arcs.append(Arc(i, i + 1, w, rng.uniform(-6, 0), rng.uniform(-4, 0)))
        if rng.random() < 0.3:
            arcs.append(Arc(i, i + 1, None, rng.uniform(-6, 0)))
        if i + 2 <= slots and rng.random() < 0.3:
            arcs.append(Arc(i, i + 2, rng.choice(words), rng.uniform(-8, 0), rng.uniform(-4, 0)))
    nodes = [Node() for _ in range(slots + 1)]
    end = slots
    if end_marker:
        nodes.append(Node())
        arcs.append(Arc(slots, slots + 1, "</s>"))
        end = slots + 1
    return Lattice(nodes, arcs, 0, end, lmscale=rng.uniform(0.5, 2), wdpenalty=-0.5)


def all_paths_gap(rescored: Lattice, lm) -> torch.Tensor:
    return discrepancy(rescored, lm, list(rescored.paths()))


# -- scorers ------------------------------------------------------------------------------------------------
def test_vocabulary_maps_markers_nulls_and_unknown_words():
    assert VOCAB.token(None) is None and VOCAB.token("<s>") is None and VOCAB.token("!SENT_START") is None
    assert VOCAB.token("</s>") == VOCAB.token("!SENT_END") == VOCAB.token("<eos>") == VOCAB.eos
    assert VOCAB.token("cat") == WORDS.index("cat") and VOCAB.token("zebra") == VOCAB.unk
    assert VOCAB.encode(["<s>", "the", "cat", "</s>"]) == [2, 4]
    with pytest.raises(KeyError, match="'zebra' is not in the vocabulary"):
        Vocabulary(WORDS, unk=None).token("zebra")
    with pytest.raises(ValueError, match="bos word '<s>' is not in the vocabulary"):
        Vocabulary(WORDS, bos="<s>")


def test_ngram_rows_agree_with_lookups_and_sum_to_one(trigram):
    hist = torch.tensor([[0, 2], [4, 6], [13, 13]])
    rows = trigram.next_logprobs(hist)
    assert rows.shape == (3, len(WORDS)) and rows.dtype == torch.float64
    torch.testing.assert_close(rows.exp().sum(1), torch.ones(3, dtype=torch.float64))
    for r, h in enumerate(hist.tolist()):
        for w in range(len(WORDS)):
            assert rows[r, w].item() == pytest.approx(trigram.logprob(h, w), abs=1e-12)
    short = trigram.next_logprobs(torch.tensor([[0]]))  # a one-token history: the bigram level
    assert short[0, 4].item() == pytest.approx(trigram.logprob([0], 4), abs=1e-12)


def tiny_model(method: str, iters: int | None, layers: int, cell: str = "lstm", seed: int = 0) -> RNNLM:
    torch.manual_seed(seed)
    return RNNLM(len(WORDS), 8, layers, cell=cell, method=method, iters=iters, init_range=0.6).eval()


@pytest.mark.parametrize(
    "method, iters, layers, order",
    [("truncated", 3, 2, 3), ("jacobi", 3, 2, 5), ("jacobi", 4, 1, 4), ("truncated", 1, 1, 1), ("bptt", None, 2, None)],
)
def test_order_of(method, iters, layers, order):
    assert order_of(tiny_model(method, iters, layers)) == order
    assert TorchLM(tiny_model(method, iters, layers), VOCAB).order == order


class WithOwnScorer(RNNLM):
    """A model that states its order and scores histories itself, as fpcore's RNNLM does in newer versions."""

    calls = 0

    @property
    def order(self):
        return 3

    def next_log_probs(self, histories, *, batch_size=512):
        WithOwnScorer.calls += 1
        return torch.log_softmax(self(histories, None)[0][:, -1], -1)


def test_torch_lm_uses_the_model_s_own_order_and_history_scorer():
    torch.manual_seed(0)
    model = WithOwnScorer(len(WORDS), 8, 1, method="truncated", iters=3, init_range=0.6).eval()
    lm = TorchLM(model, VOCAB)
    assert lm.order == 3
    res = rescore_exact(random_lattice(3), lm)
    assert WithOwnScorer.calls > 0
    assert all_paths_gap(res.lattice, lm).abs().max() <= 1e-5


def test_torch_lm_step_agrees_with_its_sentence_score():
    lm = TorchLM(tiny_model("bptt", None, 2), VOCAB)
    sentence = [2, 4, 6, 8, 2, 9]
    total, state, prev = 0.0, None, VOCAB.bos
    for t in [*sentence, VOCAB.eos]:
        logp, state = lm.step(torch.tensor([prev]), state)
        total += float(logp[0, t])
        prev = t
    assert total == pytest.approx(float(lm.sentence_logprobs([sentence])[0]), abs=1e-10)
    # batched sentences of different lengths score as each alone (padding is inert)
    many = [sentence, [3], [5, 5, 5, 5, 5, 5, 5, 5, 5]]
    alone = torch.cat([lm.sentence_logprobs([s]) for s in many])
    torch.testing.assert_close(lm.sentence_logprobs(many), alone, rtol=0, atol=1e-10)


def test_torch_lm_leaves_the_model_alone():
    model = tiny_model("bptt", None, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    TorchLM(model, VOCAB).sentence_logprobs([[2, 3]])
    assert all(v.dtype == torch.float32 and torch.equal(v, before[k]) for k, v in model.state_dict().items())


# -- sentence ends ----------------------------------------------------------------------------------------------------
def test_with_sentence_end_adds_an_end_arc_only_when_missing():
    marked = random_lattice(0)
    assert with_sentence_end(marked, VOCAB) is marked
    bare = random_lattice(0, end_marker=False)
    ended = with_sentence_end(bare, VOCAB)
    assert len(ended.nodes) == len(bare.nodes) + 1 and ended.arcs[-1].word == "</s>"
    assert sorted(p.words + ("</s>",) for p in bare.paths()) == sorted(p.words for p in ended.paths())
    mixed = random_lattice(0, end_marker=False)
    mixed.arcs.append(Arc(mixed.start, mixed.end, "</s>"))
    with pytest.raises(LatticeError, match="some paths end with an end-of-sentence word and some do not"):
        with_sentence_end(mixed, VOCAB)
    late = Lattice([Node(), Node(), Node()], [Arc(0, 1, "</s>"), Arc(1, 2, "cat")], 0, 2)
    with pytest.raises(LatticeError, match="follows the end of the sentence"):
        with_sentence_end(late, VOCAB)


# -- exact rescoring ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("end_marker", [True, False])
def test_exact_rescoring_with_an_ngram_matches_every_sentence(trigram, seed, end_marker):
    lat = random_lattice(seed, end_marker=end_marker)
    res = rescore_exact(lat, trigram)
    gap = all_paths_gap(res.lattice, trigram)
    assert gap.numel() == lat.num_paths() and gap.abs().max() < 1e-9
    # so the lattice's best path is the best sentence by brute force over every path
    by_hand = max(
        lat.paths(),
        key=lambda p: (
            lat.acscale * p.acoustic
            + lat.lmscale * float(trigram.sentence_logprobs([path_tokens(p, VOCAB)])[0])
            + lat.wdpenalty * (len(p.words) + (not end_marker))
        ),
    )
    assert hypothesis(res.best(), VOCAB) == hypothesis(by_hand, VOCAB)


@pytest.mark.parametrize(
    "method, iters, layers, cell",
    [("truncated", 2, 2, "lstm"), ("jacobi", 3, 1, "lstm"), ("jacobi", 2, 2, "gru"), ("truncated", 3, 1, "rnn")],
)
@pytest.mark.parametrize("seed", range(3))
def test_exact_rescoring_with_a_finite_order_network_matches_every_sentence(method, iters, layers, cell, seed):
    lm = TorchLM(tiny_model(method, iters, layers, cell, seed=seed), VOCAB)
    lat = random_lattice(100 + seed, slots=6)
    res = rescore_exact(lat, lm)
    assert res.expansion.order == lm.order + 1
    gap = all_paths_gap(res.lattice, lm)
    assert gap.numel() == lat.num_paths() and gap.abs().max() <= 1e-5


class Shortsighted:
    """A finite-order model that claims one token less context than it uses (to watch exactness break)."""

    def __init__(self, lm: TorchLM):
        self.lm, self.vocab, self.order = lm, lm.vocab, lm.order - 1

    def next_logprobs(self, histories):
        return self.lm.next_logprobs(histories)

    def sentence_logprobs(self, sentences):
        return self.lm.sentence_logprobs(sentences)


def test_expanding_one_order_too_few_breaks_exactness():
    lm = TorchLM(tiny_model("truncated", 2, 2), VOCAB)
    lat = random_lattice(7, slots=6)
    assert all_paths_gap(rescore_exact(lat, lm).lattice, lm).abs().max() <= 1e-5
    assert all_paths_gap(rescore_exact(lat, Shortsighted(lm)).lattice, lm).abs().max() > 1e-3


def test_exact_rescoring_refuses_a_recurrent_model():
    with pytest.raises(TypeError, match="not of finite order"):
        rescore_exact(random_lattice(0), TorchLM(tiny_model("bptt", None, 1), VOCAB))


def test_a_real_slf_lattice_goes_through_the_same_path(trigram, tmp_path):
    lat = read_slf(FIXTURES / "kaldi_words_on_links.slf")
    res = rescore_exact(lat, trigram)  # no end marker in the file: a </s> arc is added
    assert all_paths_gap(res.lattice, trigram).abs().max() < 1e-9
    again = read_slf(write_slf(res.lattice, tmp_path / "rescored.lat.gz"))
    assert again == res.lattice


# -- approximations ----------------------------------------------------------------------------------------------------
def test_merged_rescoring_is_exact_without_merges_and_not_with_them():
    lm = TorchLM(tiny_model("bptt", None, 2, seed=3), VOCAB)
    lat = random_lattice(11, slots=6)
    no_merge = rescore_merged(lat, lm, history=20)  # histories longer than any path: nothing merges
    assert all_paths_gap(no_merge.lattice, lm).abs().max() <= 1e-9
    merged = rescore_merged(lat, lm, history=1)
    gap = all_paths_gap(merged.lattice, lm)
    assert gap.abs().max() > 1e-4  # some path was scored from another history's state
    # the path whose states were kept at every node (the lattice's best) is scored exactly
    assert discrepancy(merged.lattice, lm, [merged.best()]).abs().max() <= 1e-9


def test_nbest_rescoring_scores_sentences_exactly(trigram):
    lat = random_lattice(5, slots=6)
    hyps = rescore_nbest(lat, trigram, n=1000)
    assert len(hyps) == len({p.words for p in lat.paths()})
    for h in hyps:
        assert h.lm == pytest.approx(float(trigram.sentence_logprobs([path_tokens(h.path, VOCAB)])[0]), abs=1e-12)
    # with every sentence in the list, N-best and exact rescoring pick the same sentence and total
    best = rescore_exact(lat, trigram).best()
    assert hyps[0].path.words == best.words and hyps[0].total == pytest.approx(best.total, abs=1e-9)
    assert [h.total for h in hyps] == sorted((h.total for h in hyps), reverse=True)


@pytest.mark.parametrize(
    "method, iters, layers, route",
    [
        ("truncated", 3, 2, "contexts"),
        ("jacobi", 2, 2, "contexts"),
        ("bptt", None, 2, "prefixes"),
        ("jacobi_carry", 2, 1, "whole sentences"),
    ],
)
def test_shared_sentence_scores_equal_the_whole_sentence_scores(method, iters, layers, route):
    """N-best lists share most of their words: scoring each distinct context (finite order) or prefix (a
    recurrence) once must give each sentence's own score; a model that can do neither is scored whole."""
    lm = TorchLM(tiny_model(method, iters, layers, seed=4), VOCAB)
    rng = random.Random(1)
    frame = [rng.randrange(2, len(WORDS)) for _ in range(9)]
    sentences = [frame[: rng.randint(0, 9)] for _ in range(6)] + [list(frame), list(frame), []]
    for _ in range(12):  # N-best-like variants: one or two words changed
        s = list(frame)
        for _ in range(rng.randint(1, 2)):
            s[rng.randrange(len(s))] = rng.randrange(2, len(WORDS))
        sentences.append(s)
    got, want = sentence_scores(lm, sentences), lm.sentence_logprobs(sentences)
    assert got.dtype == torch.float64 and got.shape == (len(sentences),)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-9)
    assert {
        "contexts": isinstance(lm.order, int),
        "prefixes": lm.order is None and lm.steps,
        "whole sentences": lm.order is None and not lm.steps,
    }[route]
    assert sentence_scores(lm, []).shape == (0,)


# -- synthetic lattices ------------------------------------------------------------------------------------------------
def make_synth(words, seed=0, **noise):
    similar = synth.SimilarWords(WORDS, pool=4, exclude=["<eos>", "<unk>"])
    first = NGramLM(VOCAB, [markov_stream(2000)], n=2)
    return synth.synthesize(
        words,
        first_pass=first,
        similar=similar,
        insertions=["on", "a", "it"],
        noise=synth.NoiseModel(**noise),
        seed=seed,
        index=3,
        utterance="u",
    )


def test_synthetic_lattices_are_seeded_and_valid(tmp_path):
    ref = ["the", "cat", "sat", "on", "the", "mat"]
    a, b, c = make_synth(ref), make_synth(ref), make_synth(ref, seed=1)
    assert a == b and a != c
    a.check()
    assert all(p.words[-1] == "</s>" for p in nbest(a, 20))
    # the first pass: a bigram on expanded nodes, so each arc's l is the bigram of its unique previous word
    exp = expand(a, 2, token=VOCAB.token)
    assert len(exp.lattice.nodes) == len(a.nodes)
    assert read_slf(write_slf(a, tmp_path / "s.lat.gz")) == a


def test_synthetic_noise_model_controls_the_oracle():
    ref = ["we", "see", "the", "sea", "it", "sat"]
    never_missing = make_synth(ref, p_missing=0.0)
    assert oracle(never_missing, ref, skip=VOCAB.is_marker)[0] == 0
    always_missing = make_synth(ref, p_missing=1.0)
    assert oracle(always_missing, ref, skip=VOCAB.is_marker)[0] > 0
    with pytest.raises(ValueError, match="p_missing must be a probability"):
        synth.NoiseModel(p_missing=2.0)


def test_similar_words_share_spelling():
    similar = synth.SimilarWords(WORDS, pool=3, exclude=["<eos>"])
    # ^sat$ shares {^s, sa} with ^sad$ (Dice 2*2/8) and {^s} with ^sea$ and ^see$ (2/8); ties go alphabetically
    assert similar("sat") == [("sad", 0.5), ("sea", 0.25), ("see", 0.25)]
    assert synth.similarity("cat", "cat") == 1.0 and synth.similarity("cat", "dog") == 0.0


def test_lattice_sets_and_references_round_trip(tmp_path):
    first = NGramLM(VOCAB, [markov_stream(2000)], n=2)
    refs = [["the", "cat"], ["we", "see", "it"]]
    from collections import Counter

    paths = synth.write_lattice_set(refs, tmp_path, first_pass=first, train_counts=Counter(markov_stream(100)))
    assert [p.name for p in paths] == ["ptb-test-00000.lat.gz", "ptb-test-00001.lat.gz"]
    pairs = list(synth.iter_pairs(tmp_path))
    assert [r for _, _, r in pairs] == refs and all(read_slf(p).utterance == u for u, p, _ in pairs)
    assert "p_missing=0.04" in (tmp_path / "noise_model.txt").read_text()
    before = read_slf(paths[1])
    paths[0].unlink()  # a missing lattice is made again, the same
    again = synth.write_lattice_set(refs, tmp_path, first_pass=first, train_counts=Counter(markov_stream(100)))
    assert read_slf(again[1]) == before and paths[0].exists()
    noisier = synth.NoiseModel(noise=9.0)  # other settings: every lattice is rewritten
    synth.write_lattice_set(refs, tmp_path, first_pass=first, train_counts=Counter(), noise=noisier)
    assert read_slf(paths[1]) != before and "noise=9.0" in (tmp_path / "noise_model.txt").read_text()
