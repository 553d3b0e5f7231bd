"""fpcore.results: every record carries hardware, versions and commit, and is written atomically."""

from __future__ import annotations

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
