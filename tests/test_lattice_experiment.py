"""Notebook 08's experiment driver: per-lattice evaluation, its cache, the record and its targets."""

from __future__ import annotations

import json

import pytest
import torch
from test_lattice_rescore import VOCAB, WORDS, markov_stream, random_lattice

from fpcore.lattice import NGramLM, TorchLM, Vocabulary
from fpcore.lattice import experiment as lx
from fpcore.models.lm import RNNLM


@pytest.fixture(scope="module")
def scorers():
    trigram = NGramLM(VOCAB, [markov_stream(3000)], n=3)
    torch.manual_seed(0)
    lstm = TorchLM(RNNLM(len(WORDS), 8, 1, init_range=0.6).eval(), VOCAB)
    return trigram, lstm


def problem(n: int = 4):
    lattices = [random_lattice(seed) for seed in range(n)]
    for i, lat in enumerate(lattices):
        lat.utterance = f"u{i}"
    refs = [list(lat.best_path().words[:-1])[:3] + ["cat"] for lat in lattices]
    return lattices, refs


def test_evaluate_reports_every_method_and_the_exact_gap(scorers):
    trigram, lstm = scorers
    lattices, refs = problem()
    res = lx.evaluate(lattices, refs, exact=trigram, recurrent=lstm, nbest_n=5, merge_history=1, progress=False)
    assert list(res["methods"]) == lx.method_names(5, 1)
    assert res["complete"] and res["lattices"] == 4 and res["reference_words"] == sum(map(len, refs))
    m = res["methods"]
    assert m["finite-order exact"]["discrepancy"]["max_abs"] < 1e-9
    assert m["BPTT merged (1-token histories)"]["discrepancy"]["paths"] > 0
    assert all(m["oracle"]["errors"] <= v["errors"] for v in m.values())
    exact, listed = res["best_totals"]["exact"], res["best_totals"]["nbest"]
    assert all(e >= b - 1e-9 for e, b in zip(exact, listed))
    assert res["nbest_search_errors"] == sum(e > b + 1e-6 * max(1, abs(e)) for e, b in zip(exact, listed))
    rows = lx.summary_rows(res)
    assert [r["method"] for r in rows] == list(m) and rows[2]["max gap (lattice - sentence)"] != ""
    per = res["per_lattice"]
    assert sum(per["words"]) == res["reference_words"]
    assert all(sum(per["errors"][k]) == v["errors"] for k, v in m.items())
    assert (
        rows[2]["WER - finite-order exact (95% interval)"] == ""
        and "[" in rows[0]["WER - finite-order exact (95% interval)"]
    )


def test_paired_bootstrap_interval():
    # method b makes one error fewer than a on every one of 400 ten-word lattices: 10 points better, no spread
    same = {"words": [10] * 400, "errors": {"a": [3] * 400, "b": [2] * 400}}
    out = lx.paired_bootstrap({"per_lattice": same}, "b", "a")
    assert (
        out["diff"] == pytest.approx(-0.1) and out["low"] == pytest.approx(-0.1) and out["high"] == pytest.approx(-0.1)
    )
    assert out["p_not_better"] == 0
    # no difference on average (half the lattices better by one, half worse): the interval holds 0
    mixed = {"words": [10] * 400, "errors": {"a": [3] * 400, "b": [2, 4] * 200}}
    out = lx.paired_bootstrap({"per_lattice": mixed}, "b", "a", samples=4000)
    assert out["diff"] == 0 and out["low"] < 0 < out["high"] and 0.3 < out["p_not_better"] < 0.7
    # about the width the normal approximation gives: sd of the mean of +-1 per 10 words over 400 lattices
    assert out["high"] - out["low"] == pytest.approx(2 * 1.96 * 0.1 / 400**0.5, rel=0.15)
    with pytest.raises(ValueError, match="no per-lattice errors"):
        lx.paired_bootstrap({"methods": {}}, "b", "a")


def test_evaluate_cache_resumes_and_restarts_on_a_new_fingerprint(scorers, tmp_path, monkeypatch):
    trigram, _ = scorers
    lattices, refs = problem()
    cache = tmp_path / "eval.jsonl"
    first = lx.evaluate(lattices, refs, exact=trigram, cache=cache, fingerprint="a", max_seconds=0, progress=False)
    assert not first["complete"] and first["lattices"] == 0  # the budget ran out before the first lattice
    half = lx.evaluate(lattices[:2], refs[:2], exact=trigram, cache=cache, fingerprint="a", progress=False)
    assert half["complete"] and len(cache.read_text().splitlines()) == 3  # the fingerprint line + 2 rows
    calls = []
    real = lx.evaluate_one
    monkeypatch.setattr(lx, "evaluate_one", lambda *a, **k: calls.append(1) or real(*a, **k))
    with cache.open("a") as fh:
        fh.write('{"utt": "u2", "hyp": ')  # a row cut short by an interruption is ignored
    full = lx.evaluate(lattices, refs, exact=trigram, cache=cache, fingerprint="a", progress=False)
    assert len(calls) == 2 and full["complete"] and full["lattices"] == 4
    again = lx.evaluate(lattices, refs, exact=trigram, cache=cache, fingerprint="b", progress=False)
    assert len(calls) == 6  # a new fingerprint: every lattice again, same figures
    assert {k: v["errors"] for k, v in again["methods"].items()} == {k: v["errors"] for k, v in full["methods"].items()}
    assert json.loads(cache.read_text().splitlines()[0]) == {"fingerprint": "b"}


def test_record_writes_targets_and_a_figure(scorers, tmp_path, monkeypatch):
    monkeypatch.setenv("FPCORE_RESULTS_DIR", str(tmp_path))
    trigram, lstm = scorers
    lattices, refs = problem(3)
    plan = lx.LatticePlan.for_profile("quick")
    res = lx.evaluate(lattices, refs, exact=trigram, recurrent=lstm, nbest_n=plan.nbest_n, progress=False)
    grown = lx.growth(lattices, VOCAB, (1, 2, 3))
    path = lx.record(plan, res, None, growth=grown)
    assert path == tmp_path / "lattice_quick.json" and path.with_suffix(".png").stat().st_size > 0
    rec = json.loads(path.read_text())
    t = rec["targets"]["lattice_exact_finite_order_max_abs_discrepancy"]
    assert t["met"] and t["value"] < 1e-9 and t["paths"] > 0
    w = rec["targets"]["lattice_wer_exact_finite_order"]
    assert w["met"] and set(w["wer"]) == {"finite-order exact", "BPTT N-best (N=100)", "lattice 1-best", "oracle"}
    vs = w["against_exact"]["oracle"]
    assert set(w["against_exact"]) == set(rec["methods"]) - {"finite-order exact"}
    assert vs["low"] <= vs["diff"] <= vs["high"] <= 0  # the oracle is never worse than any rescoring
    assert rec["meta"]["device"] and rec["plan"]["noise"]["p_missing"] == 0.04
    assert grown["nodes"][0] == sum(len(x.nodes) for x in lattices)  # order 1: the lattices themselves
    assert grown["nodes"] == sorted(grown["nodes"])


def test_a_broken_exact_rescoring_misses_its_target(scorers, tmp_path, monkeypatch):
    monkeypatch.setenv("FPCORE_RESULTS_DIR", str(tmp_path))
    trigram, _ = scorers
    lattices, refs = problem(2)
    res = lx.evaluate(lattices, refs, exact=trigram, progress=False)
    res["methods"]["finite-order exact"]["discrepancy"]["max_abs"] = 3e-3
    rec = json.loads(lx.record(lx.LatticePlan.for_profile("quick"), res).read_text())
    assert rec["targets"]["lattice_exact_finite_order_max_abs_discrepancy"]["met"] is False


def test_plans_name_their_runs():
    quick, full = lx.LatticePlan.for_profile("quick"), lx.LatticePlan.for_profile("full")
    assert (quick.sentences, quick.recorded, full.sentences, full.recorded) == (12, False, None, True)
    assert full.run_name("finite") == "lattice_lm_ptb_1x200_truncated_k4_e2_ptb_test"
    part = lx.LatticePlan.for_profile("full", sentences=500)
    assert part.name == "ptb_test_first500" and part.run_name("bptt") == full.run_name("bptt")
    assert lx.describe(full) == "truncated-4 1x200 vs bptt 1x200"


def test_torch_lm_refuses_what_its_model_cannot_do():
    lm = TorchLM(RNNLM(len(WORDS), 8, 1, method="truncated", iters=2).eval(), VOCAB)
    with pytest.raises(TypeError, match="needs a recurrent model"):
        lm.step(torch.tensor([0]), None)
    with pytest.raises(ValueError, match=r"histories must be \[B, h\] with 1 <= h <= 2"):
        lm.next_logprobs(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="unbounded history"):
        TorchLM(RNNLM(len(WORDS), 8, 1).eval(), VOCAB).next_logprobs(torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="the model has 5 outputs but the vocabulary 15 words"):
        TorchLM(RNNLM(5, 8, 1), Vocabulary(WORDS))
