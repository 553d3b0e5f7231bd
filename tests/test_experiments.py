"""The experiment grids, the plan and its records, the tables and the claims read off them."""

from __future__ import annotations

import os

import pytest

from fpcore import experiments
from fpcore.train import build_model, evaluate, fit
from tests.test_lm import _tiny_cfg, markov_corpus


def test_smallest_truncation_and_contraction_of_a_trained_model():
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


def test_run_grid_spends_a_budget_pauses_and_skips_finished_runs(tmp_path, monkeypatch):
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
    assert lines[1].startswith("small: paper B: stable lstm 104.00 vs unstable 100.00 test ppl (+4.0%; within 5%: yes")
    assert lines[2].endswith("(+6.7%; within 5%: no)")
    assert len(lines) == 3, "medium has no BPTT baseline: no claim is made for it"
    assert "none" in experiments.claims([_rec(), _rec(method="jacobi", iters=2, test_ppl=120.0)])[0]


def test_format_analyses_shows_the_smallest_window_or_that_none_was_close():
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
    assert "| lm_ptb_small_rnn_bptt_full | 120.00 | > 64 | 130.00 at k = 64 |" in table
    found["fixed_point"] = dict(tokens=1000, ppl=dict(bptt=120.0, newton=120.0001, quasi_newton=119.9999))
    found["eval_tokens"] = 20_000
    table = experiments.format_analyses([found])
    assert "| lm_ptb_small_lstm_bptt_full | 120.00 (20,000) | 2 |" in table
    assert "| 1.0%; 1.0% | 120.000 / 120.000 / 120.000 (1,000) |" in table


def test_the_grid_has_one_schedule_named_into_every_run_cheap_runs_first():
    assert experiments.schedule_tag(experiments.TrainConfig.preset("small")) == ""
    grid = experiments.lm_grid("ptb")
    assert {(c.epochs, c.decay_after, c.lr_decay, c.lr) for c in grid} == {(4, 3, 2.0, 1.0)}
    names = [c.record_name for c in grid]
    assert names[0] == "lm_ptb_small_e4d3_lstm_bptt_" + names[0].rsplit("_", 1)[1]
    runs = [(c.method, c.iters, c.stable) for c in grid]
    assert runs == [
        ("bptt", None, False),
        ("jacobi", 1, False),  # truncated-1 is the same model: trained once
        ("jacobi", 2, False),
        ("jacobi", 4, False),
        ("truncated", 2, False),
        ("truncated", 4, False),
        ("jacobi", 8, False),
        ("truncated", 8, False),
        ("bptt", None, True),
        ("jacobi", 16, False),
        ("truncated", 16, False),
    ]
    assert len(set(names)) == len(names) and all(c.checkpoint.endswith(c.record_name + ".pt") for c in grid)
    steps = experiments.plan("ptb")
    assert steps[0] == grid[0] and steps[1] == f"mismatch:{names[0]}" and steps[2:] == grid[1:]
    stab = experiments.stability_grid("wikitext-2")
    assert [(c.cell, c.stable) for c in stab] == [("lstm", False), ("lstm", True), ("rnn", False), ("rnn", True)]
    # one schedule per pair: the LSTMs the grid's, the tanh RNNs the same at lr 0.1 (named so, without a dot)
    assert [c.lr for c in stab] == [1.0, 1.0, 0.1, 0.1]
    assert {(c.epochs, c.decay_after, c.lr_decay) for c in stab} == {(4, 3, 2.0)}
    assert stab[2].record_name == "lm_wikitext2_small_e4d3lr0p1_rnn_bptt_" + stab[2].record_name.rsplit("_", 1)[1]
    assert stab[0].record_name == "lm_wikitext2_small_e4d3_lstm_bptt_" + stab[0].record_name.rsplit("_", 1)[1]
    assert stab[0].record_name == experiments.lm_grid("wikitext-2")[0].record_name, "shared with the lm grid"
    with pytest.raises(ValueError, match="grid must be"):
        experiments.plan("ptb", "other")


def test_plan_runs_trains_evaluates_the_mismatch_and_refuses_another_configs_record(tmp_path, monkeypatch):
    """The whole plan on a toy corpus in short sittings; the mismatch record reproduces the run's own test
    perplexity, jacobi-1 = truncated-1, and Newton's fixed point = the BPTT model."""
    monkeypatch.setenv("FPCORE_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.chdir(tmp_path)
    corpus = markov_corpus()
    small = dict(max_train_tokens=2000, progress=False, bptt=10, batch_size=4, eval_batch_size=4, hidden=12)
    steps = experiments.plan("markov", "lm", "tiny", ks=(1, 2), schedule=dict(epochs=1, decay_after=1), **small)
    assert [s if isinstance(s, str) else (s.method, s.iters, s.stable) for s in steps] == [
        ("bptt", None, False),
        f"mismatch:{steps[0].record_name}",
        ("jacobi", 1, False),
        ("jacobi", 2, False),
        ("truncated", 2, False),
        ("bptt", None, True),
    ]
    sittings, log = 0, []
    while not experiments.run_plan(steps, corpus, max_seconds=0.3, log=log.append):
        sittings += 1
        assert sittings < 500
    assert sittings >= 1 and any("evaluating" in line for line in log)
    rows = experiments.lm_table("markov", profile="quick")
    assert len(rows) == 5 and {r["schedule"] for r in rows} == {"1 ep: lr 1 x1, first 2,000 train tokens"}
    assert {r["order"] for r in rows if r["method"] != "bptt"} == {1, 2}
    (m,) = experiments.mismatches("markov")
    base = next(r for r in rows if r["method"] == "bptt" and not r["stable"])
    assert m["as_trained"] == pytest.approx(base["test_ppl"], rel=1e-9)
    assert m["as_k"]["jacobi"]["1"] == pytest.approx(m["as_k"]["truncated"]["1"], rel=1e-9)
    assert sorted(m["as_k"]["jacobi"], key=int) == ["1", "2", "4", "8", "16"]
    fp = m["fixed_point"]["ppl"]
    assert fp["newton"] == pytest.approx(fp["bptt"], rel=1e-4)
    table = experiments.format_mismatch([m], rows)
    trained_j2 = next(r["test_ppl"] for r in rows if r["method"] == "jacobi" and r["iters"] == 2)
    assert f"| 2 | {trained_j2:.1f} | {m['as_k']['jacobi']['2']:.1f} |" in table
    out = experiments.report("markov", show=False)
    assert out["rows"] == [] and out["mismatch"] == [m], "report reads the full profile's records"
    # a record under a run's name that another configuration wrote is an error, never taken as this run's
    other = dict(steps[0].__dict__, lr=0.5)
    with pytest.raises(ValueError, match="holds another configuration; choose another name for this run"):
        experiments.run_grid([experiments.TrainConfig(**other)], corpus)


def test_a_run_another_process_trains_is_left_to_it_and_the_plan_goes_on(tmp_path, monkeypatch):
    """Two terminals on one plan: a run whose checkpoint another process holds is not trained twice."""
    from fpcore.checkpoint import CheckpointBusy
    from fpcore.train import find_record
    from tests.test_checkpoint import held_elsewhere

    monkeypatch.setenv("FPCORE_RESULTS_DIR", str(tmp_path / "results"))
    corpus = markov_corpus()
    small = dict(max_train_tokens=1000, progress=False, bptt=10, batch_size=4, eval_batch_size=4, hidden=12)
    steps = experiments.plan("markov", "lm", "tiny", ks=(1,), schedule=dict(epochs=1, decay_after=1), **small)
    bptt, others = steps[0], [s for s in steps[2:] if not isinstance(s, str)]
    log: list[str] = []
    with held_elsewhere(bptt.checkpoint) as holder:
        with pytest.raises(CheckpointBusy, match=f"process {holder.pid} "):
            fit(build_model(bptt, corpus.vocab_size), corpus, bptt)
        assert not experiments.run_plan(steps, corpus, log=log.append), "not done: BPTT is left to its holder"
        assert find_record(bptt) is None and not os.path.exists(bptt.checkpoint), "this process trained none of it"
        assert all(find_record(s) for s in others), "the plan went on with the next steps"
        assert any(line.startswith(f"{bptt.record_name}: skipped, left to the process") for line in log)
    assert experiments.run_plan(steps, corpus, log=log.append), "once its holder is gone, the run is trained here"


def _row(method="bptt", iters=None, stable=False, test_ppl=100.0, **kw):
    return dict(
        config="small", schedule="4 ep", method=method, iters=iters, cell="lstm", stable=stable, test_ppl=test_ppl, **kw
    )


def test_claims_say_none_with_the_gap_and_use_bits_per_character():
    rows = [
        _row(),
        _row("jacobi", 1, test_ppl=150.0),
        _row("jacobi", 2, test_ppl=110.0),
        _row("truncated", 2, test_ppl=120),
    ]
    lines = experiments.claims(rows)
    assert lines[0] == (
        "small, 4 ep: paper A: jacobi-k within +3% of BPTT (100.0): none up to k = 2 (k = 2: +10.0%) (k tried: [1, 2])"
    )
    assert lines[1].endswith(
        "truncated-k within +3% of BPTT (100.0): none up to k = 2 (k = 2: +20.0%) (k tried: [1, 2])"
    )
    char = [_row(test_bpc=1.40), _row(stable=True, test_bpc=1.46)]
    assert experiments.claims(char)[0].endswith("stable lstm 1.460 vs unstable 1.400 test bpc (+4.3%; within 5%: yes)")
    lone_rnn = dict(_row(stable=True, test_bpc=1.5), cell="rnn")  # no unprojected twin: no pair
    (pair,) = experiments.stable_pairs([*char, lone_rnn])
    assert pair["unit"] == "bpc" and pair["gap"] == pytest.approx(1.46 / 1.40 - 1)
    other = dict(_row(stable=True, test_ppl=90.0), schedule="13 ep")  # another schedule's stable model is no twin
    assert [p["gap"] for p in experiments.stable_pairs([_row(), other, _row(stable=True, test_ppl=110.0)])] == [
        pytest.approx(0.1)
    ]


def test_lm_table_labels_the_old_carried_state_records_and_their_schedule(tmp_path):
    from fpcore.results import save_json

    old = dict(
        dataset="ptb",
        config="small",
        method="jacobi",
        iters=4,
        cell="lstm",
        layers=2,
        stable=False,
        profile="full",
        valid_ppl=133.3,
        test_ppl=127.6,
        tokens_per_s=2400.0,
        device="cpu",
        train_config=dict(epochs=13, decay_after=4, lr=1.0, lr_decay=2.0, max_train_tokens=None),
    )
    save_json("lm_ptb_small_lstm_jacobi_k4_full", old, directory=tmp_path)
    save_json(
        "lm_ptb_small_e4d3_lstm_jacobi_k4_full",
        dict(old, order=7, train_config=dict(old["train_config"], epochs=4, decay_after=3)),
        directory=tmp_path,
    )
    rows = experiments.lm_table("ptb", directory=tmp_path)
    assert [(r["method"], r["order"], r["schedule"]) for r in rows] == [
        ("jacobi_carry", None, "13 ep: lr 1 x4, then /2"),
        ("jacobi", 7, "4 ep: lr 1 x3, then /2"),
    ]
    assert "| small | 13 ep: lr 1 x4, then /2 | lstm | jacobi_carry | 4 | ∞ |" in experiments.format_table(rows)


def test_the_command_line_lists_the_plan_and_rejects_bad_arguments(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FPCORE_RESULTS_DIR", str(tmp_path))
    assert experiments.main(["ptb", "--list", "--ks", "1,2"]) == 0
    out = capsys.readouterr().out.splitlines()
    listed = [line.split()[-1] for line in out if line.startswith("to do")]
    trained = [c.record_name for c in experiments.lm_grid("ptb", ks=(1, 2))]
    # the BPTT model first, then its evaluation as every jacobi-k / truncated-k, then the other runs in order
    assert listed[:2] == [trained[0], f"mismatch:{trained[0]}"]
    assert [n for n in listed if not n.startswith("mismatch:")] == trained
    bad_lines = (
        ["ptb", "--ks", "0"],
        ["ptb", "--ks", "a"],
        ["ptb", "--max-minutes", "nan"],
        ["imdb"],
        ["ptb", "--job", "2"],
    )
    for bad in bad_lines:
        with pytest.raises(SystemExit) as exit_:
            experiments.main(bad)
        assert exit_.value.code == 2


def test_the_tanh_rnn_pair_trains_at_its_learning_rate_and_diverges_at_the_lstms():
    # why SHORT_RNN exists: on PTB-char the unprojected tanh RNN at the LSTMs' lr 1 explodes within 100,000
    # characters (validation perplexity ~5e6 on 50 characters), while at SHORT_RNN's lr it learns (~10)
    from fpcore.checkpoint import TrainingDiverged
    from fpcore.data import load_corpus

    chars = load_corpus("ptb-char")
    run = dict(cell="rnn", epochs=1, max_train_tokens=100_000, max_eval_tokens=20_000, progress=False, device="cpu")
    slow = experiments.TrainConfig.preset("small", dataset="ptb-char", lr=experiments.SHORT_RNN["lr"], **run)
    assert fit(build_model(slow, len(chars.vocab)), chars, slow)["valid_ppl"] < 15
    fast = experiments.TrainConfig.preset("small", dataset="ptb-char", lr=1.0, **run)
    with pytest.raises(TrainingDiverged, match="more than 10 times that of a uniform guess"):
        fit(build_model(fast, len(chars.vocab)), chars, fast)


def test_several_steps_run_at_once_each_in_its_own_process(tmp_path, monkeypatch, capsys):
    """``--jobs 2`` on a trial of paper B's grid (tiny models, 2,000 training tokens): a step that cannot run
    fails alone, a second sitting runs only what is left, and a child's record is the one this process gives."""
    import dataclasses

    from fpcore.data import load_corpus

    monkeypatch.setenv("FPCORE_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setenv("FPCORE_CHECKPOINT_DIR", str(tmp_path / "ck"))
    trial = ["ptb", "--grid", "stability", "--preset", "tiny", "--schedule", "preset", "--max-train-tokens", "2000"]
    steps = experiments.plan(
        "ptb",
        "stability",
        "tiny",
        schedule={},
        rnn_schedule=dict(lr=experiments.SHORT_RNN["lr"]),
        max_train_tokens=2000,
    )
    names = [experiments.step_name(s) for s in steps]
    assert len(names) == 4
    # too little time to start anything: nothing runs, the plan is left for another sitting
    assert experiments.main([*trial, "--jobs", "2", "--max-minutes", "0.1"]) == 3
    assert not (tmp_path / "results").exists()
    # one step's checkpoint is not a checkpoint: that step fails, the other three finish beside it
    (tmp_path / "ck" / f"{names[1]}.pt").write_bytes(b"not a checkpoint")
    assert experiments.main([*trial, "--jobs", "2"]) == 1
    out = capsys.readouterr().out
    assert f"{names[1]}: failed (exit 1)" in out and "a step failed" in out
    assert "error" in (tmp_path / "ck" / f"{names[1]}.log").read_text()
    assert [(tmp_path / "results" / f"{n}.json").exists() for n in names] == [True, False, True, True]
    # mended, the next sitting runs only the step that is left
    (tmp_path / "ck" / f"{names[1]}.pt").unlink()
    assert experiments.main([*trial, "--jobs", "2"]) == 0
    out = capsys.readouterr().out
    assert [line.split(":")[0] for line in out.splitlines() if line.endswith("started (1 running)")] == [names[1]]
    assert out.strip().endswith("all done")
    # what a child recorded is what the same configuration gives when trained here
    corpus = load_corpus("ptb")
    here = dataclasses.replace(steps[1], record_name="here", checkpoint=str(tmp_path / "here.pt"))
    mine = fit(build_model(here, corpus.vocab_size), corpus, here)
    theirs = experiments.find_record(steps[1])
    assert theirs is not None and theirs["test_ppl"] == pytest.approx(mine["test_ppl"], rel=1e-5)
    for bad in ([*trial, "--only", "nothing"], [*trial, "--only", names[0], "--jobs", "2"]):
        with pytest.raises(SystemExit) as exit_:
            experiments.main(bad)
        assert exit_.value.code == 2
