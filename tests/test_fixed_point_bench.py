"""The fixed-point and block-Jacobi benchmark suites run end to end on tiny grids and record what they measured."""

from __future__ import annotations

import json

import pytest
import torch

from fpcore import bench
from fpcore.bench import fixed_point as fp_bench


def test_tiny_benchmark_writes_rows_json_and_png(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FPCORE_RESULTS_DIR", str(tmp_path))
    argv = ["--cells", "gru,lstm", "--hidden", "4", "--lengths", "32", "--batch", "2", "--weights", "stable,unstable"]
    rc = bench.main("fixed-point", [*argv, "--name", "fixed_point_test", "--device", "cpu", "--no-progress"])
    assert rc == 0
    record = json.loads((tmp_path / "fixed_point_test.json").read_text())
    assert (tmp_path / "fixed_point_test.png").stat().st_size > 0
    assert record["meta"]["device_type"] == "cpu" and record["load_average"]["cpus"] >= 1
    rows = record["rows"]
    assert len(rows) == 2 * 2 * len(fp_bench.ENTRIES)
    for r in rows:
        assert r["time_s"] > 0 and r["peak_mb"] is not None, r
        if r["method"] == "loop":
            assert r["max_err"] == 0 and r["iterations"] == 32
        elif r["converged"]:
            assert r["max_err"] < 1e-4, r
    inner = {r["method"]: r["inner"] for r in rows if r["method"].startswith("block_jacobi")}
    assert inner == {"block_jacobi": "torch.nn", "block_jacobi_loop": "loop"}
    assert all(r["converged"] for r in rows if r["weights"] == "stable")
    assert "block_jacobi_loop" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [["--cells", "transformer"], ["--hidden", "0"], ["--lengths", "x"], ["--tol", "-1"], ["--methods", "jacobi,magic"]],
)
def test_bad_arguments_exit_2(argv):
    with pytest.raises(SystemExit) as exc:
        bench.main("fixed-point", argv)
    assert exc.value.code == 2


def _row(method, time_s, converged=True, max_err=0.0, T=16384, cell="gru", **kw):
    return dict(
        cell=cell, H=64, B=16, T=T, weights="stable", method=method, time_s=time_s, iterations=1,
        converged=converged, max_err=max_err, **kw,
    )  # fmt: skip


def test_targets_pick_the_fastest_accurate_solver_against_torch_nn():
    rows = [
        _row("loop", 2.0),
        _row("torch.nn", 1.25),
        _row("jacobi", 0.1, max_err=1e-3),  # too inaccurate
        _row("quasi_newton", 0.1, converged=False),  # did not converge
        _row("block_jacobi", 0.4),
        _row("block_jacobi_loop", 0.6),
        _row("block_jacobi", 0.01, T=1024),  # another T
        _row("torch.nn", 0.3, cell="lstm"),
        _row("block_jacobi", 0.2, cell="lstm"),
    ]
    t = fp_bench.targets(rows, torch.device("cpu"), threads=2)
    gru, lstm = (
        t["cpu_2thread_gru64_T16384_B16_fastest_solver_over_torch_nn"],
        t["cpu_2thread_lstm64_T16384_B16_fastest_solver_over_torch_nn"],
    )
    assert gru["method"] == "block_jacobi" and gru["value"] == pytest.approx(3.125) and gru["met"]
    assert lstm["value"] == pytest.approx(1.5) and not lstm["met"]
    assert fp_bench.targets([_row("jacobi", 3.0)], torch.device("cpu")) == {}  # no baseline measured
    gpu = fp_bench.targets([_row("torch.nn", 1.0, T=65536), _row("block_jacobi", 0.05, T=65536)], "cuda")
    assert gpu["gpu_gru64_T65536_B16_fastest_solver_over_cudnn"]["value"] == pytest.approx(20)


def test_block_jacobi_suite_measures_kappa_and_the_grid_around_the_rule(tmp_path, monkeypatch):
    monkeypatch.setenv("FPCORE_RESULTS_DIR", str(tmp_path))
    argv = ["--device", "cpu", "--cells", "lstm", "--hidden", "4", "--batch", "2", "--length", "200"]
    argv += ["--blocks", "16,64", "--overlaps", "0,8", "--no-progress", "--name", "blocks_test"]
    assert bench.main("block-jacobi", argv) == 0
    record = json.loads((tmp_path / "blocks_test.json").read_text())
    fit = record["step_costs"]["lstm"]
    assert fit["beta_s"] > 0 and len(fit["seconds_per_step"]) == len(fit["rows"]) == 7
    grid = {(r["block"], r["overlap"]) for r in record["rows"] if r["method"] == "block_jacobi"}
    assert {(16, 0), (16, 8), (64, 0), (64, 8)} <= grid
    (chosen,) = [r for r in record["rows"] if r.get("rule")]
    from fpcore.fixed_point import block_jacobi

    assert (chosen["block"], chosen["overlap"]) == block_jacobi.choose(200, 2, "cpu")
    assert all(r["converged"] and r["max_err"] < 1e-4 for r in record["rows"] if r["method"] == "block_jacobi")
    (target,) = record["targets"].values()
    assert target["value"] >= 1.0 and target["rule"] == [chosen["block"], chosen["overlap"]]
    with pytest.raises(SystemExit) as exc:
        bench.main("block-jacobi", ["--overlaps", "-1"])
    assert exc.value.code == 2
