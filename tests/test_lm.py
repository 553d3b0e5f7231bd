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


def _twin(method, iters=None, cell="lstm", layers=2, seed=0):
    torch.manual_seed(seed)
    return RNNLM(11, 8, layers, cell=cell, method=method, iters=iters, tol=1e-12).double().eval()


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("method, iters", [("newton", None), ("quasi_newton", None), ("jacobi", 7)])
def test_exact_methods_equal_bptt_across_windows(cell, method, iters):
    ref, model = _twin("bptt", cell=cell), _twin(method, iters, cell=cell)
    model.load_state_dict(ref.state_dict())
    tokens = torch.randint(0, 11, (3, 14), generator=torch.Generator().manual_seed(1))
    s_ref = s = None
    for window in tokens.split(7, dim=1):  # two windows of 7: jacobi with k = 7 is exact, state carried
        a, s_ref = ref(window, s_ref)
        b, s = model(window, s)
        torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-8)


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


def test_jacobi_k_is_approximate_and_carries_state():
    ref, model = _twin("bptt", cell="gru", layers=1), _twin("jacobi", 2, cell="gru", layers=1)
    model.load_state_dict(ref.state_dict())
    tokens = torch.randint(0, 11, (2, 10), generator=torch.Generator().manual_seed(3))
    a, _ = ref(tokens)
    b, state = model(tokens)
    torch.testing.assert_close(b[:, :2], a[:, :2])  # exact for t <= k
    assert float((a - b).detach().abs().max()) > 1e-6  # approximate after
    assert state[0].shape == (1, 2, 8)


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
    cfg = _tiny_cfg(cell="rnn", stable=True, epochs=1, lr=5.0)
    model = build_model(cfg, corpus.vocab_size)
    fit(model, corpus, cfg)
    assert float(torch.linalg.matrix_norm(model.rnns[0].weight_hh_l0.detach().double(), ord=2)) <= 1 + 1e-5


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


def test_smallest_truncation_and_contraction_of_a_trained_model():
    from fpcore import experiments

    corpus = markov_corpus()
    cfg = _tiny_cfg(cell="rnn", epochs=2)
    model = build_model(cfg, corpus.vocab_size)
    fit(model, corpus, cfg)
    found = experiments.smallest_truncation(model, corpus.valid, rel=0.01, ks=(1, 2, 4, 8, 16, 32, 64), bptt=10)
    assert found["k"] is not None and found["k"] in found["ppl"]
    assert found["ppl"][found["k"]] <= found["recurrent"] * 1.01
    smaller = [k for k in found["ppl"] if k < found["k"]]
    assert all(found["ppl"][k] > found["recurrent"] * 1.01 for k in smaller)
    # a long enough window is the recurrent model itself
    long = experiments.with_method(model, "truncated", 400)
    assert evaluate(long, corpus.valid[:400], batch_size=1, bptt=400) == pytest.approx(
        evaluate(model, corpus.valid[:400], batch_size=1, bptt=400), rel=1e-5
    )
    norms = experiments.lm_contraction(model, corpus.valid, k=2, windows=4, length=20)
    assert len(norms) == 1 and norms[0].shape == (4, 19) and bool((norms[0] >= 0).all())


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


def test_run_grid_spends_a_budget_pauses_and_skips_finished_runs(tmp_path, monkeypatch):
    from fpcore import experiments
    from fpcore.train import run_name

    monkeypatch.setenv("FPCORE_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.chdir(tmp_path)  # checkpoints/ lands here
    corpus = markov_corpus()
    grid = [
        _tiny_cfg(
            epochs=1,
            method=m,
            iters=k,
            record_name=run_name("markov", "tiny", "lstm", m, k),
            checkpoint=str(tmp_path / "checkpoints" / f"{run_name('markov', 'tiny', 'lstm', m, k)}.pt"),
        )
        for m, k in (("bptt", None), ("jacobi", 2))
    ]
    assert grid[1].record_name == "lm_markov_tiny_lstm_jacobi_k2_quick"
    calls, records = 0, [{"finished": False}]
    while not all(r.get("finished", True) for r in records) or len(records) < len(grid):
        calls += 1
        records = experiments.run_grid(grid, corpus, max_seconds=0.05)
        assert calls < 2000
        assert sum(not r.get("finished", True) for r in records) <= 1, "at most the one run the budget ran out in"
    assert calls > 2, "the budget paused the grid more than once"
    assert [r["method"] for r in records] == ["bptt", "jacobi"] and all(r["finished"] for r in records)
    # finished runs are read back, not trained again, and the analysis reads the checkpoint the run left
    again = experiments.run_grid(grid, corpus, max_seconds=0.0)
    assert [r["test_ppl"] for r in again] == [r["test_ppl"] for r in records]
    ana = experiments.analyse_run(grid[0].record_name, corpus, eval_tokens=300, ks=(1, 2, 4, 64))
    assert ana["truncation"]["recurrent_ppl"] > 1 and len(ana["contraction"]) == grid[0].layers
    fp = ana["fixed_point"]["ppl"]
    assert fp["newton"] == pytest.approx(fp["bptt"], rel=1e-4) and fp["quasi_newton"] == pytest.approx(
        fp["bptt"], rel=1e-4
    )
    assert (tmp_path / "results" / f"analysis_{grid[0].record_name}.json").exists()
    assert experiments.analyses("markov")[0]["run"] == grid[0].record_name
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        experiments.analyse_run("lm_markov_tiny_gru_bptt_quick", corpus)


def _rec(config="small", method="bptt", iters=None, cell="lstm", stable=False, test_ppl=100.0):
    return dict(config=config, method=method, iters=iters, cell=cell, stable=stable, test_ppl=test_ppl)


def test_claims_read_the_smallest_k_and_the_stability_gap_off_the_records():
    from fpcore import experiments

    rows = [
        _rec(test_ppl=100.0),
        _rec(method="jacobi", iters=1, test_ppl=110.0),
        _rec(method="jacobi", iters=4, test_ppl=102.9),
        _rec(method="jacobi", iters=8, test_ppl=101.0),
        _rec(stable=True, test_ppl=104.0),
        _rec(cell="rnn", test_ppl=150.0),
        _rec(cell="rnn", stable=True, test_ppl=160.0),
        _rec(config="medium", method="jacobi", iters=2),
    ]
    lines = experiments.claims(rows)
    assert lines[0] == "small: paper A: jacobi-k within +3% of BPTT (100.0): smallest k = 4 (k tried: [1, 4, 8])"
    assert lines[1].startswith("small: paper B: stable lstm 104.00 vs unstable 100.00 (+4.0%; within 5%: yes")
    assert lines[2].endswith("(+6.7%; within 5%: no)")
    assert len(lines) == 3, "medium has no BPTT baseline: no claim is made for it"
    assert "none" in experiments.claims([_rec(), _rec(method="jacobi", iters=2, test_ppl=120.0)])[0]


def test_format_analyses_shows_the_smallest_window_or_that_none_was_close():
    from fpcore import experiments

    layer = dict(median=0.5, p90=0.8, p99=0.9, max=1.2, frac_above_1=0.01)
    found = dict(
        run="lm_ptb_small_lstm_bptt_full",
        contraction=[layer, layer],
        truncation=dict(recurrent_ppl=120.0, ppl={"1": 300.0, "2": 121.0}, smallest_k=2),
    )
    none = dict(
        run="lm_ptb_small_rnn_bptt_full",
        contraction=[layer],
        truncation=dict(recurrent_ppl=120.0, ppl={"1": 300.0, "64": 130.0}, smallest_k=None),
    )
    table = experiments.format_analyses([found, none])
    assert "| lm_ptb_small_lstm_bptt_full | 120.00 | 2 | 121.00 | 0.50 / 0.80 / 1.20; 0.50 / 0.80 / 1.20 |" in table
    assert "| lm_ptb_small_rnn_bptt_full | 120.00 | > 64 | nan |" in table
    found["fixed_point"] = dict(tokens=1000, ppl=dict(bptt=120.0, newton=120.0001, quasi_newton=119.9999))
    found["eval_tokens"] = 20_000
    table = experiments.format_analyses([found])
    assert "| lm_ptb_small_lstm_bptt_full | 120.00 (20,000) | 2 |" in table
    assert "| 1.0%; 1.0% | 120.000 / 120.000 / 120.000 (1,000) |" in table


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
