"""The fixed-point benchmark suite runs end to end on a tiny grid and records what it measured."""
from __future__ import annotations

import json

import pytest

from fpcore.fixed_point import bench


def test_tiny_benchmark_writes_rows_json_and_png(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FPCORE_RESULTS_DIR", str(tmp_path))
    rc = bench.main(["--cells", "gru,lstm", "--hidden", "4", "--lengths", "32", "--batch", "2",
                     "--weights", "stable,unstable", "--name", "fixed_point_test", "--device", "cpu"])
    assert rc == 0
    record = json.loads((tmp_path / "fixed_point_test.json").read_text())
    assert (tmp_path / "fixed_point_test.png").stat().st_size > 0
    assert record["meta"]["device_type"] == "cpu"
    rows = record["rows"]
    assert len(rows) == 2 * 2 * len(bench.METHODS)
    for r in rows:
        assert r["time_s"] > 0 and r["peak_mb"] is not None, r
        if r["method"] == "loop":
            assert r["max_err"] == 0 and r["iterations"] == 32
        elif r["converged"]:
            assert r["max_err"] < 1e-4, r
    assert all(r["converged"] for r in rows if r["weights"] == "stable")
    assert "jacobi" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--cells", "transformer"], ["--hidden", "0"], ["--lengths", "x"],
                                  ["--tol", "-1"], ["--methods", "jacobi,magic"]])
def test_bad_arguments_exit_2(argv):
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2
