"""The language model's evaluation methods and the trainer: equivalences, learning, exact resume, DDP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from fpcore import cells
from fpcore.data import Corpus
from fpcore.models.lm import RNNLM
from fpcore.train import PRESETS, TrainConfig, build_model, evaluate, fit

ROOT = Path(__file__).resolve().parents[1]


def markov_corpus(vocab: int = 12, n: int = 6000, seed: int = 0) -> Corpus:
    """A learnable toy corpus: a sparse random first-order Markov chain over ``vocab`` symbols."""
    gen = torch.Generator().manual_seed(seed)
    P = torch.rand(vocab, vocab, generator=gen) ** 8
    P /= P.sum(1, keepdim=True)
    ids = [0]
    for _ in range(n - 1):
        ids.append(int(torch.multinomial(P[ids[-1]], 1, generator=gen)))
    ids = torch.tensor(ids)
    return Corpus(
        "markov",
        [f"w{i}" for i in range(vocab - 1)] + ["<eos>"],
        ids[: n * 8 // 10],
        ids[n * 8 // 10 : n * 9 // 10],
        ids[n * 9 // 10 :],
    )


def _twin(method, iters=None, cell="lstm", layers=2, seed=0, vocab=11):
    torch.manual_seed(seed)
    return RNNLM(vocab, 8, layers, cell=cell, method=method, iters=iters, tol=1e-12).double().eval()


def _stream_logits(model, tokens, window):
    """Logits of a stream fed in windows of ``window`` tokens, the state carried (not detached)."""
    out, state = [], None
    for w in tokens.split(window, dim=1):
        logits, state = model(w, state)
        out.append(logits)
    return torch.cat(out, 1)


def _support(model, tokens, t, window=None):
    """The stream positions s whose token embedding the logits at t depend on (non-zero gradient)."""
    captured = []
    hook = model.embed.register_forward_hook(lambda mod, inp, out: captured.append(out) or out.retain_grad())
    try:
        logits = _stream_logits(model, tokens, window or tokens.shape[1])
    finally:
        hook.remove()
    logits[:, t].sum().backward()
    # each forward embeds context + window: map the gradient of every embedded copy back to stream positions
    grad = torch.zeros(tokens.shape[1], dtype=torch.float64)
    start = 0
    for w, emb in zip(tokens.split(window or tokens.shape[1], dim=1), captured):
        C = emb.shape[1] - w.shape[1]  # the context tokens this window embedded before itself
        g = emb.grad.abs().sum((0, 2)) if emb.grad is not None else torch.zeros(emb.shape[1], dtype=torch.float64)
        grad[start - C : start + w.shape[1]] += g
        start += w.shape[1]
    return [s for s in range(tokens.shape[1]) if grad[s] > 0]


def test_order_of_each_model():
    assert [RNNLM(5, 4, L, method="jacobi", iters=k).order for L, k in ((1, 1), (1, 4), (2, 1), (2, 3), (3, 5))] == [
        1,
        4,
        1,
        5,
        13,
    ]
    assert [RNNLM(5, 4, L, method="truncated", iters=k).order for L, k in ((1, 4), (2, 4), (3, 2))] == [4, 4, 2]
    for method, iters in (("bptt", None), ("newton", None), ("quasi_newton", None), ("jacobi_carry", 3)):
        model = RNNLM(5, 4, 2, method=method, iters=iters)
        assert model.order is None and model.context == 0
    assert RNNLM(5, 4, 2, method="jacobi", iters=3).context == 4


TOKENS = torch.randint(0, 11, (2, 15), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("method, k", [("jacobi", 1), ("jacobi", 2), ("jacobi", 3), ("truncated", 2), ("truncated", 4)])
def test_gradient_support_is_exactly_the_stated_window(method, k, layers):
    """The logits at t depend on the tokens t-n+1..t (n = model.order) and on no other, across windows too."""
    model = _twin(method, k, cell="gru" if k == 2 else "lstm", layers=layers)
    n = model.order
    for t in (0, 3, 9, 14):
        for window in (15, 4):
            model.zero_grad()
            assert _support(model, TOKENS, t, window) == list(range(max(0, t - n + 1), t + 1)), (t, window)


@pytest.mark.parametrize("method", ["bptt", "newton"])
def test_the_recurrent_network_reads_every_earlier_token(method):
    model = _twin(method)
    assert _support(model, TOKENS, 13, window=5) == list(range(14))


def test_carried_state_jacobi_has_its_documented_position_dependent_window():
    """One layer, windows of 6, k = 2: a position i <= k of a window reads k + i tokens, later ones k."""
    model, k, T = _twin("jacobi_carry", 2, layers=1), 2, 6
    for t in range(15):
        i = t % T + 1  # 1-based position in its window
        first = t - k + 1 if (i > k or t < T) else t - i + 1 - k
        model.zero_grad()
        assert _support(model, TOKENS, t, window=T) == list(range(max(0, first), t + 1)), t


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("method, k", [("jacobi", 1), ("jacobi", 3), ("truncated", 1), ("truncated", 3)])
@pytest.mark.parametrize("layers", [1, 2])
def test_one_window_or_many_gives_the_same_logits(cell, method, k, layers):
    model = _twin(method, k, cell=cell, layers=layers)
    whole = _stream_logits(model, TOKENS, 15)
    for window in (1, 2, 4, 7):
        torch.testing.assert_close(_stream_logits(model, TOKENS, window), whole, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_jacobi_k_is_truncated_k_for_one_layer_only(cell, k):
    """From the zero start, Jacobi's k-th iterate is the k-window truncated recurrence (this series' own
    observation); with two layers jacobi-k reads L(k-1)+1 tokens and truncated-k only k, so they differ."""
    jac, tru = _twin("jacobi", k, cell=cell, layers=1), _twin("truncated", k, cell=cell, layers=1)
    tru.load_state_dict(jac.state_dict())
    torch.testing.assert_close(_stream_logits(tru, TOKENS, 6), _stream_logits(jac, TOKENS, 6), rtol=1e-12, atol=1e-12)
    jac2, tru2 = _twin("jacobi", k, cell=cell), _twin("truncated", k, cell=cell)
    tru2.load_state_dict(jac2.state_dict())
    gap = float((_stream_logits(tru2, TOKENS, 15) - _stream_logits(jac2, TOKENS, 15)).detach().abs().max())
    assert gap == 0 if k == 1 else gap > 1e-6


def test_jacobi_layers_are_papers_iteration_and_the_truncated_stack_is_the_network_over_k_tokens():
    """References: jacobi = fpcore.fixed_point.solve(method="jacobi", iters=k) from zero on each layer over
    the stream; truncated = torch's own layers run over the last k tokens from a zero state (paper B)."""
    from fpcore import fixed_point

    k = 3
    jac, tru = _twin("jacobi", k), _twin("truncated", k)
    tru.load_state_dict(jac.state_dict())
    h = jac.embed(TOKENS)  # (B, T, H)
    for rnn in jac.rnns:
        h = fixed_point.solve(cells.from_torch(rnn), h, method="jacobi", iters=k).outputs
    torch.testing.assert_close(_stream_logits(jac, TOKENS, 4), jac.decoder(h), rtol=1e-12, atol=1e-12)
    ref = []
    for t in range(TOKENS.shape[1]):
        h = tru.embed(TOKENS[:, max(0, t - k + 1) : t + 1])  # the last k tokens (fewer at the start)
        for rnn in tru.rnns:
            h = rnn(h)[0]  # from a zero state
        ref.append(tru.decoder(h[:, -1]))
    torch.testing.assert_close(_stream_logits(tru, TOKENS, 4), torch.stack(ref, 1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("method, iters", [("newton", None), ("quasi_newton", None), ("jacobi_carry", 7)])
def test_exact_methods_equal_bptt_across_windows(cell, method, iters):
    ref, model = _twin("bptt", cell=cell), _twin(method, iters, cell=cell)
    model.load_state_dict(ref.state_dict())
    tokens = torch.randint(0, 11, (3, 14), generator=torch.Generator().manual_seed(1))
    s_ref = s = None
    for window in tokens.split(7, dim=1):  # two windows of 7: k = 7 iterations are exact, state carried
        a, s_ref = ref(window, s_ref)
        b, s = model(window, s)
        torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-8)


def test_jacobi_with_k_beyond_the_stream_is_the_recurrent_network():
    """Jacobi is exact at t <= k, so with k >= T each layer, and the model, is the recurrent network. (An order
    n >= T is not enough: n says which tokens a position reads, not that it reads them exactly.)"""
    ref, model = _twin("bptt"), _twin("jacobi", 14)  # k >= the 14 tokens
    model.load_state_dict(ref.state_dict())
    torch.testing.assert_close(
        _stream_logits(model, TOKENS[:, :14], 5), _stream_logits(ref, TOKENS[:, :14], 5), rtol=1e-10, atol=1e-10
    )


def test_truncated_is_a_strict_kth_order_model_across_windows():
    k = 4
    ref, model = _twin("bptt", cell="rnn", layers=1), _twin("truncated", k, cell="rnn", layers=1)
    model.load_state_dict(ref.state_dict())
    tokens = torch.randint(0, 11, (2, 15), generator=torch.Generator().manual_seed(2))
    logits, ctx = [], None
    for window in tokens.split(5, dim=1):
        out, ctx = model(window, ctx)
        logits.append(out)
        assert ctx.shape == (2, k - 1)
    # reference: each position from exactly its last k tokens, zero state (paper B), over the whole stream
    h = cells.truncated(cells.from_torch(ref.rnns[0]), ref.embed(tokens), k)
    torch.testing.assert_close(torch.cat(logits, 1), ref.decoder(h), rtol=1e-9, atol=1e-9)


def test_carried_state_jacobi_is_approximate_and_carries_state():
    ref, model = _twin("bptt", cell="gru", layers=1), _twin("jacobi_carry", 2, cell="gru", layers=1)
    model.load_state_dict(ref.state_dict())
    tokens = torch.randint(0, 11, (2, 10), generator=torch.Generator().manual_seed(3))
    a, _ = ref(tokens)
    b, state = model(tokens)
    torch.testing.assert_close(b[:, :2], a[:, :2])  # exact for t <= k
    assert float((a - b).detach().abs().max()) > 1e-6  # approximate after
    assert state[0].shape == (1, 2, 8)


@pytest.mark.parametrize(
    "method, k, layers", [("jacobi", 3, 2), ("truncated", 4, 2), ("jacobi", 2, 1), ("bptt", None, 2)]
)
def test_next_log_probs_are_the_streams(method, k, layers):
    """Scoring histories (lattice rescoring): a history of at least n tokens gives the log-probabilities the
    model assigns inside the stream; a shorter one is the start of a stream."""
    model = _twin(method, k, layers=layers)
    stream = torch.log_softmax(_stream_logits(model, TOKENS, 15), -1)  # (B, T, V)
    n = model.order
    for t in (0, 2, 6, 14):
        if n is not None or t < 3:
            start = 0 if n is None else max(0, t - n - 2)  # a few tokens more than needed: ignored
            got = model.next_log_probs(TOKENS[:, start : t + 1])
            torch.testing.assert_close(got, stream[:, t], rtol=1e-10, atol=1e-10)
    if n is not None:
        hists = [TOKENS[0, : t + 1].tolist() for t in (0, 5, 3, 14, 1)]
        got = model.next_log_probs(hists, batch_size=2)
        torch.testing.assert_close(got, stream[0, [0, 5, 3, 14, 1]], rtol=1e-10, atol=1e-10)
        assert torch.allclose(got.exp().sum(-1), torch.ones(5, dtype=got.dtype))
    assert model.training is False
    with pytest.raises(ValueError, match="at least one token"):
        model.next_log_probs(TOKENS[:, :0])


def test_token_ids_outside_the_vocabulary_are_a_clear_error():
    model = _twin("bptt")
    for bad in (torch.tensor([[1, 11]]), torch.tensor([[-1, 2]])):
        with pytest.raises(ValueError, match=r"ids in \[0, 11\) \(the model's vocabulary\)"):
            model(bad)
    with pytest.raises(ValueError, match="integer token ids"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"histories must be ids in \[0, 11\)"):
        model.next_log_probs([[3, 12]])
    with pytest.raises(ValueError, match=r"ids in \[0, 11\)"):
        evaluate(model.float(), torch.tensor([1, 2, 3, 40, 5, 6, 7]), batch_size=1, bptt=3)


def test_bad_model_arguments_are_clear():
    with pytest.raises(ValueError, match="needs iters"):
        RNNLM(10, 4, method="jacobi")
    with pytest.raises(ValueError, match="iters is for"):
        RNNLM(10, 4, method="bptt", iters=3)
    with pytest.raises(ValueError, match="method must be"):
        RNNLM(10, 4, method="adjoint")
    with pytest.raises(ValueError, match="tokens must be"):
        RNNLM(10, 4)(torch.zeros(3, dtype=torch.long))


def test_presets_and_schedule():
    cfg = TrainConfig.preset("small")
    assert (cfg.hidden, cfg.layers, cfg.bptt, cfg.epochs, cfg.batch_size) == (200, 2, 20, 13, 20)
    assert [cfg.lr_at(e) for e in (1, 4, 5, 6)] == [1.0, 1.0, 0.5, 0.25]
    assert TrainConfig.preset("medium").hidden == 650 and set(PRESETS) >= {"small", "medium"}
    with pytest.raises(ValueError, match="unknown preset"):
        TrainConfig.preset("large")
    with pytest.raises(ValueError, match="bptt must be"):
        TrainConfig(bptt=0)


def _tiny_cfg(**kw):
    # lr 0.3 on a loss summed over 10 steps; from about 1 the tiny model's training turns chaotic, and a
    # float-rounding difference (one process against two) grows into a different model
    base = dict(
        hidden=16,
        layers=1,
        bptt=10,
        batch_size=4,
        eval_batch_size=4,
        epochs=3,
        lr=0.3,
        decay_after=2,
        progress=False,
        checkpoint_every=5,
    )
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("method, iters", [("bptt", None), ("jacobi", 3)])
def test_fit_reduces_perplexity(method, iters):
    corpus = markov_corpus()
    cfg = _tiny_cfg(method=method, iters=iters)
    model = build_model(cfg, corpus.vocab_size)
    before = evaluate(model, corpus.valid, batch_size=4, bptt=10)
    record = fit(model, corpus, cfg)
    assert record["valid_ppl"] < 0.8 * before
    assert [h["epoch"] for h in record["history"]] == [1, 2, 3]
    assert record["tokens_per_s"] > 0 and record["method"] == method and record["iters"] == iters


def test_stable_training_keeps_the_projection():
    corpus = markov_corpus()
    norms = {}
    for stable in (False, True):  # the same run unprojected pushes ||W||_2 above 1 (to 1.47): the projection acts
        cfg = _tiny_cfg(cell="rnn", stable=stable, epochs=1)
        model = build_model(cfg, corpus.vocab_size)
        fit(model, corpus, cfg)
        norms[stable] = float(torch.linalg.matrix_norm(model.rnns[0].weight_hh_l0.detach().double(), ord=2))
    assert norms[False] > 1.2 and norms[True] <= 1 + 1e-5, norms


_RUN = """
import json, sys
sys.path.insert(0, {root!r})
from tests.test_lm import markov_corpus, _tiny_cfg
from fpcore.train import build_model, fit
cfg = _tiny_cfg(checkpoint={ckpt!r}, dropout=0.3, epochs=3, checkpoint_every=3)
corpus = markov_corpus()
record = fit(build_model(cfg, corpus.vocab_size), corpus, cfg)
print(json.dumps({{"valid": record["valid_ppl"], "test": record["test_ppl"]}}))
"""


def _run(tmp_path, name, ckpt):
    script = tmp_path / f"{name}.py"
    script.write_text(textwrap.dedent(_RUN.format(root=str(ROOT), ckpt=str(ckpt))))
    return subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env={**os.environ, "FPCORE_DEVICE": "cpu"}
    )


def test_sigkill_mid_epoch_then_resume_ends_like_an_uninterrupted_run(tmp_path):
    import json

    whole = _run(tmp_path, "whole", tmp_path / "whole.pt")
    expected = json.loads(whole.communicate(timeout=300)[0].strip().splitlines()[-1])

    ckpt = tmp_path / "killed.pt"
    victim = _run(tmp_path, "victim", ckpt)
    deadline = time.time() + 300
    while not ckpt.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert ckpt.exists(), "the run wrote no checkpoint"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    saved = torch.load(ckpt, weights_only=False)
    assert (saved["epoch"], saved["window"]) != (4, 0), "killed before the end"

    resumed = _run(tmp_path, "resumed", ckpt)
    got = json.loads(resumed.communicate(timeout=300)[0].strip().splitlines()[-1])
    assert got["valid"] == pytest.approx(expected["valid"], rel=1e-9)
    assert got["test"] == pytest.approx(expected["test"], rel=1e-9)


def test_checkpoint_of_another_config_is_refused(tmp_path):
    corpus = markov_corpus()
    cfg = _tiny_cfg(epochs=1, checkpoint=str(tmp_path / "c.pt"))
    fit(build_model(cfg, corpus.vocab_size), corpus, cfg)
    other = _tiny_cfg(epochs=1, hidden=8, checkpoint=str(tmp_path / "c.pt"))
    with pytest.raises(ValueError, match="another configuration"):
        fit(build_model(other, corpus.vocab_size), corpus, other)


_DDP = """
import json, os, sys
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads(1)
from tests.test_lm import markov_corpus, _tiny_cfg
from fpcore.train import build_model, fit
cfg = _tiny_cfg(epochs=2)
corpus = markov_corpus()
record = fit(build_model(cfg, corpus.vocab_size), corpus, cfg)
if record:
    print(json.dumps({{"valid": record["valid_ppl"], "world": record["world_size"]}}))
"""


def test_torchrun_data_parallel_on_two_cpu_processes_matches_one(tmp_path):
    import json

    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(_DDP.format(root=str(ROOT))))
    env = {**os.environ, "FPCORE_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = json.loads(single.stdout.strip().splitlines()[-1])
    two = json.loads(ddp.stdout.strip().splitlines()[-1])
    assert (one["world"], two["world"]) == (1, 2)
    # the same global batch, split over two processes with averaged gradients: the same model
    assert two["valid"] == pytest.approx(one["valid"], rel=1e-4)


def test_a_time_budget_pauses_and_resumes_to_the_same_result(tmp_path):
    corpus = markov_corpus()
    whole_cfg = _tiny_cfg(epochs=2, dropout=0.2)
    whole = fit(build_model(whole_cfg, corpus.vocab_size), corpus, whole_cfg)
    assert whole["finished"] is True

    cfg = _tiny_cfg(epochs=2, dropout=0.2, checkpoint=str(tmp_path / "budget.pt"))
    calls, record = 0, {"finished": False}
    while not record.get("finished"):
        calls += 1
        record = fit(build_model(cfg, corpus.vocab_size), corpus, cfg, max_seconds=0.02)
        assert calls < 2000
        if not record["finished"]:
            assert (tmp_path / "budget.pt").exists() and record["window"] >= 0
    assert calls > 1, "the budget paused the run at least once"
    assert record["valid_ppl"] == pytest.approx(whole["valid_ppl"], rel=1e-9)
    assert record["test_ppl"] == pytest.approx(whole["test_ppl"], rel=1e-9)
    with pytest.raises(ValueError, match="needs cfg.checkpoint"):
        fit(build_model(whole_cfg, corpus.vocab_size), corpus, whole_cfg, max_seconds=1.0)


def test_the_loss_is_summed_over_time_like_zarembas():
    """lr on the window-summed loss equals lr x bptt on the per-token mean (no clipping, whole windows)."""
    corpus = markov_corpus()
    assert (len(corpus.train) // 4 - 1) % 11 == 0, "every window holds 11 steps"
    summed = fit(
        build_model(_tiny_cfg(epochs=1, bptt=11, clip=0.0, lr=0.1), corpus.vocab_size),
        corpus,
        _tiny_cfg(epochs=1, bptt=11, clip=0.0, lr=0.1),
    )
    mean = fit(
        build_model(_tiny_cfg(epochs=1, bptt=11, clip=0.0, lr=1.1, sum_over_time=False), corpus.vocab_size),
        corpus,
        _tiny_cfg(epochs=1, bptt=11, clip=0.0, lr=1.1, sum_over_time=False),
    )
    assert summed["valid_ppl"] == pytest.approx(mean["valid_ppl"], rel=1e-6)
    plain = fit(
        build_model(_tiny_cfg(epochs=1, bptt=11, clip=0.0, lr=0.1, sum_over_time=False), corpus.vocab_size),
        corpus,
        _tiny_cfg(epochs=1, bptt=11, clip=0.0, lr=0.1, sum_over_time=False),
    )
    assert plain["valid_ppl"] > summed["valid_ppl"] * 1.02, "the per-token mean at the same lr learns slower"
