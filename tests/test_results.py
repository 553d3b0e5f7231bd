"""fpcore.results: every record carries hardware, versions and commit, and is written atomically."""

from __future__ import annotations

import argparse
import json
import os
import stat

import pytest
import torch

from fpcore import results


def test_save_json_records_metadata(tmp_path):
    path = results.save_json("demo", {"rows": [{"T": 4, "ms": torch.tensor(1.5)}]}, directory=tmp_path)
    record = results.load_json(path)
    assert record["rows"] == [{"T": 4, "ms": 1.5}]
    meta = record["meta"]
    assert meta["torch_version"] == torch.__version__ and meta["profile"] == "quick"
    assert meta["device"] and meta["device_type"] in ("cpu", "cuda")
    assert meta["commit"] is None or len(meta["commit"].split("+")[0]) == 40
    assert results.find("demo*.json", tmp_path) == [path]
    assert [p.name for p in tmp_path.iterdir()] == ["demo.json"]  # no temporary file left


def test_bad_names_and_payloads_are_refused(tmp_path):
    with pytest.raises(ValueError, match="plain file stem"):
        results.save_json("../escape", {}, directory=tmp_path)
    with pytest.raises(TypeError, match="cannot write object"):
        results.save_json("bad", {"x": object()}, directory=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_readme_results_section_is_generated_from_results():
    from fpcore import report

    readme = report.README.read_text()
    generated = report.section()
    assert generated in readme, "README's results section is stale: run python -m fpcore results --readme"


def test_results_section_lists_lm_runs_and_targets(tmp_path):
    from fpcore import report

    row = dict(
        dataset="ptb",
        config="small",
        method="jacobi",
        iters=4,
        cell="lstm",
        hidden=200,
        layers=2,
        epochs=13,
        stable=False,
        valid_ppl=120.5,
        test_ppl=116.25,
        tokens_per_s=12345.0,
        profile="full",
        device="NVIDIA H100",
    )
    results.save_json("lm_ptb_small_lstm_jacobi_k4", row, directory=tmp_path)
    results.save_json("lm_ptb_quick", {**row, "profile": "quick"}, directory=tmp_path)  # quick runs stay out
    results.save_json(
        "bench", {"targets": {"fwd_x_copy": {"value": 1.1, "target": 1.25, "met": True}}}, directory=tmp_path
    )
    text = report.section(tmp_path)
    # a record of the carried-state model (before finite-order models were named) is shown as such
    assert "| small | 13 ep | lstm | jacobi_carry | 4 | ∞ |  | 120.5 | 116.2 | 12,345 | NVIDIA H100 |" in text
    assert text.count("| small |") == 1
    assert "| `bench.json` | fwd_x_copy | 1.1 | 1.25 | yes |" in text
    assert "**wikitext-2**: no full-profile run recorded yet." in text


# -- where records go: a user's runs never touch the repository --------------------------------------------------
def test_records_go_to_build_results_unless_recording(tmp_path, monkeypatch):
    monkeypatch.delenv("FPCORE_RESULTS_DIR")
    assert results.results_dir() == results.REPO_ROOT / "build" / "results"  # ignored by git
    monkeypatch.setenv("FPCORE_RESULTS_DIR", str(tmp_path / "mine"))
    assert results.results_dir() == tmp_path / "mine"
    monkeypatch.setattr(results, "TRACKED", tmp_path / "tracked")
    with results.recording() as where:
        assert where == tmp_path / "tracked" and results.results_dir() == where
        assert os.environ["FPCORE_RECORD"] == "1"  # notebooks and child processes record too
    assert results.results_dir() == tmp_path / "mine" and "FPCORE_RECORD" not in os.environ
    monkeypatch.setenv("FPCORE_RECORD", "1")
    assert results.results_dir() == tmp_path / "tracked"


def test_readers_see_your_records_first_then_the_tracked_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "TRACKED", tmp_path / "tracked")
    monkeypatch.setenv("FPCORE_RESULTS_DIR", str(tmp_path / "mine"))
    results.save_json("a", {"who": "mine"})
    results.save_json("b", {"who": "mine"})
    with results.recording():
        results.save_json("a", {"who": "tracked"})
        results.save_json("c", {"who": "tracked"})
    found = results.find("*.json")
    assert [(p.name, results.load_json(p)["who"]) for p in found] == [
        ("a.json", "mine"),
        ("b.json", "mine"),
        ("c.json", "tracked"),
    ]


def test_the_record_flag_is_on_every_command_that_writes_records(tmp_path, monkeypatch):
    from fpcore import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in cli.RECORDING:
        for leaf in cli._leaves(sub.choices[name]):
            assert any("--record" in a.option_strings for a in leaf._actions), leaf.prog
    assert not any("--record" in a.option_strings for a in sub.choices["results"]._actions)
    # and it records: a run with --record lands in the tracked folder, one without it does not
    monkeypatch.setattr(results, "TRACKED", tmp_path / "tracked")
    seen = []
    monkeypatch.setattr("fpcore.longdep.train_longdep", lambda cfg: seen.append(results.results_dir()) or 1 / 0)
    for argv in (["longdep", "--record", "--no-progress"], ["longdep", "--no-progress"]):
        with pytest.raises(ZeroDivisionError, match="division by zero"):
            cli.main(argv)
    assert seen == [tmp_path / "tracked", results.results_dir()] and seen[1] != seen[0]


def test_records_are_strict_json_with_non_finite_values_listed(tmp_path):
    path = results.save_json(
        "nan", {"rows": [{"err": float("nan")}, {"err": 1.0}], "inf": float("inf")}, directory=tmp_path
    )
    text = path.read_text()
    record = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in a record"))
    assert record["rows"] == [{"err": None}, {"err": 1.0}] and record["inf"] is None
    assert record["meta"]["non_finite"] == ["rows[0].err", "inf"]


def test_a_record_is_not_replaced_by_another_configuration(tmp_path):
    results.save_json("run", {"x": 1}, directory=tmp_path, fingerprint="aaaa")
    results.save_json("run", {"x": 2}, directory=tmp_path, fingerprint="aaaa")  # the same run again: fine
    with pytest.raises(results.RecordClash, match="holds another configuration"):
        results.save_json("run", {"x": 3}, directory=tmp_path, fingerprint="bbbb")
    assert results.load_json(tmp_path / "run.json")["x"] == 2


def test_results_files_are_readable_by_others(tmp_path):
    old = os.umask(0o022)
    try:
        path = results.save_json("shared", {}, directory=tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


@pytest.mark.parametrize(
    "name, text, says",
    [
        ("scan_cpu.json", '{"targets": {', "scan_cpu.json: not valid JSON"),
        ("scan_cpu.json", "[1, 2]", "scan_cpu.json: holds a JSON list, not a record"),
        ("scan_cpu.json", '{"targets": [1]}', "scan_cpu.json: 'targets' is a list"),
        ("scan_cpu.json", '{"targets": {"t": {"value": "fast"}}}', "target 't' has value 'fast', not a number"),
        ("lm_ptb_x.json", '{"profile": "full", "test_ppl": 1.0}', "lm_ptb_x.json: the record has no 'config'"),
        ("analysis_lm_ptb_x.json", '{"run": "x", "truncation": {}, "contraction": []}', "truncation has no"),
    ],
)
def test_the_results_command_names_a_bad_record_in_one_line(name, text, says, tmp_path, monkeypatch, capsys):
    from fpcore import cli

    monkeypatch.setattr(results, "TRACKED", tmp_path)
    (tmp_path / name).write_text(text)
    assert cli.main(["results"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and says in err and str(tmp_path / name) in err, err


def _spoil(record: dict, key: str, value) -> dict:
    """``record`` with ``key`` (``a.b`` one level down) set to ``value``, or removed when ``value`` is ``...``."""
    record = json.loads(json.dumps(record))
    *up, last = key.split(".")
    inner = record[up[0]] if up else record
    if value is ...:
        del inner[last]
    else:
        inner[last] = value
    return record


@pytest.mark.parametrize(
    "name, key, value",
    [
        ("lm_ptb_small_lstm_bptt_full.json", "dataset", ...),
        ("lm_ptb_small_lstm_bptt_full.json", "train_config", [1]),
        ("analysis_lm_ptb_small_lstm_bptt_full.json", "fixed_point", "x"),
        ("analysis_lm_ptb_small_lstm_bptt_full.json", "fixed_point.tokens", ...),
        ("analysis_lm_ptb_small_lstm_bptt_full.json", "truncation.smallest_k", "x"),
        ("analysis_lm_ptb_small_lstm_bptt_full.json", "eval_tokens", None),
        ("scan_cpu.json", "meta", None),
    ],
)
def test_a_record_missing_or_mistyping_any_field_the_tables_read_is_named_in_one_line(
    name, key, value, tmp_path, monkeypatch, capsys
):
    from fpcore import cli

    monkeypatch.setattr(results, "TRACKED", tmp_path)
    for other in ("lm_ptb_small_lstm_jacobi_k4_full.json", "scan_cpu_target_1thread.json"):  # good neighbours
        (tmp_path / other).write_bytes((results.REPO_ROOT / "results" / other).read_bytes())
    spoilt = _spoil(results.load_json(results.REPO_ROOT / "results" / name), key, value)
    (tmp_path / name).write_text(json.dumps(spoilt))
    assert cli.main(["results"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"error: {tmp_path / name}: the record lacks a field the tables read, or holds one of the wrong" in err


def test_the_readme_table_reads_the_tracked_folder_only(tmp_path, monkeypatch):
    from fpcore import report

    mine = dict(dataset="ptb", config="small", method="bptt", iters=None, cell="lstm", stable=False)
    mine.update(valid_ppl=99.0, test_ppl=98.0, tokens_per_s=1.0, profile="full", device="my laptop")
    results.save_json("lm_ptb_small_lstm_bptt_mine", mine)  # a user's own full-profile run
    assert "my laptop" not in report.section()
    assert "my laptop" in report.section(results.results_dir())
