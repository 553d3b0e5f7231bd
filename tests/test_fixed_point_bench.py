"""The fixed-point benchmark suite runs end to end on a tiny grid and records what it measured."""

from __future__ import annotations

import json

import pytest

from fpcore.fixed_point import bench


def test_tiny_benchmark_writes_rows_json_and_png(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FPCORE_RESULTS_DIR", str(tmp_path))
    rc = bench.main(
        [
            "--cells",
            "gru,lstm",
            "--hidden",
            "4",
            "--lengths",
            "32",
            "--batch",
            "2",
            "--weights",
            "stable,unstable",
            "--name",
            "fixed_point_test",
            "--device",
            "cpu",
        ]
    )
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


@pytest.mark.parametrize(
    "argv",
    [["--cells", "transformer"], ["--hidden", "0"], ["--lengths", "x"], ["--tol", "-1"], ["--methods", "jacobi,magic"]],
)
def test_bad_arguments_exit_2(argv):
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2


def _row(method, time_s, converged=True, max_err=0.0, T=16384, **kw):
    return dict(
        cell="gru",
        H=64,
        B=16,
        T=T,
        weights="stable",
        method=method,
        time_s=time_s,
        iterations=1,
        converged=converged,
        max_err=max_err,
        **kw,
    )


def test_targets_pick_the_fastest_accurate_solver_against_the_right_baseline():
    import torch

    rows = [
        _row("loop", 2.0),
        _row("torch.nn", 1.0),
        _row("jacobi", 0.5, max_err=1e-3),  # too inaccurate
        _row("quasi_newton", 0.4, converged=False),  # did not converge
        _row("block_jacobi", 0.8),
        _row("newton", 4.0),
        _row("block_jacobi", 0.1, T=1024),
    ]  # other T
    t = bench.targets(rows, torch.device("cpu"))
    ((name, rec),) = t.items()
    assert name == "cpu_gru64_T16384_B16_fastest_solver_speedup_vs_loop"
    assert rec["method"] == "block_jacobi" and rec["value"] == pytest.approx(2.5) and rec["met"]
    slow = bench.targets([_row("loop", 1.0), _row("jacobi", 3.0)], torch.device("cpu"))
    assert not next(iter(slow.values()))["met"]
    assert bench.targets([_row("jacobi", 3.0)], torch.device("cpu")) == {}  # no baseline measured
    gpu = bench.targets([_row("torch.nn", 1.0, T=65536), _row("newton", 0.05, T=65536)], torch.device("cuda"))
    assert next(iter(gpu.values()))["value"] == pytest.approx(20) and next(iter(gpu.values()))["met"]
