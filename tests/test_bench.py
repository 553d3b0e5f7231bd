"""fpcore.bench: the CLI command, the suite registry, the shared helpers, a tiny scan sweep end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest

from fpcore import bench, cli


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "fpcore", *args], capture_output=True, text=True)


def test_help_lists_the_scan_suite():
    run = _cli("bench", "--help")
    assert run.returncode == 0 and "scan" in run.stdout
    run = _cli("bench", "scan", "--help")
    assert run.returncode == 0 and "--log2-t" in run.stdout and "--full" in run.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["bench"],
        ["bench", "nosuchsuite"],
        ["bench", "scan", "--shapes", "8"],
        ["bench", "scan", "--log2-t", "20:10"],
        ["bench", "scan", "--providers", "nope"],
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error" in err and "Traceback" not in err


def test_a_suite_plugs_in_with_one_registry_entry(monkeypatch, capsys):
    calls = []
    fake = types.ModuleType("fake_suite")
    fake.__doc__ = "A fake suite."
    fake.add_arguments = lambda p: p.add_argument("--n", type=int, default=1)
    fake.run = lambda args: calls.append(args.n) or 0
    monkeypatch.setitem(sys.modules, "fake_suite", fake)
    monkeypatch.setitem(bench.SUITES, "fake", "fake_suite")
    assert cli.main(["bench", "fake", "--n", "3"]) == 0
    assert calls == [3]


def test_helpers():
    assert bench.gbps(3e9, 1.5) == pytest.approx(2.0)
    table = bench.format_table([{"a": 1, "b": 0.5}, {"a": 22, "b": None}], ["a", "b"])
    lines = table.splitlines()
    assert lines[0].split() == ["a", "b"] and lines[3].split() == ["22", "-"]
    assert len({len(line) for line in lines}) == 1  # aligned
    assert bench.device_tag("cpu") == "cpu"
    count = []
    timed = bench.time_side_by_side({"x": lambda: count.append(1), "y": lambda: None}, warmup=2, repeat=4)
    assert timed["x"]["n"] == 4 and len(count) == 6 and timed["x"]["median"] >= timed["x"]["min"] >= 0


def test_tiny_scan_sweep_writes_json_and_png(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FPCORE_RESULTS_DIR", str(tmp_path))
    code = cli.main(
        [
            "bench",
            "scan",
            "--device",
            "cpu",
            "--shapes",
            "2x8",
            "--log2-t",
            "5:6",
            "--repeat",
            "1",
            "--warmup",
            "1",
            "--providers",
            "loop,torch,numba,cupy",
            "--no-progress",
            "--name",
            "scan_test",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "membound:addcmul" in out and "not run: cupy" in out
    record = json.loads((tmp_path / "scan_test.json").read_text())
    assert record["meta"]["device_type"] == "cpu" and "commit" in record["meta"]
    timed = [r for r in record["rows"] if "ms" in r]
    assert {r["mode"] for r in timed} == {"fwd", "bwd", "fwdbwd"}
    assert {r["T"] for r in timed} == {32, 64}
    for r in timed:
        assert r["ms"] > 0 and r["GB/s"] > 0
        if not r["provider"].startswith("membound"):
            assert r["max_abs_err"] < 1e-4, r
    assert (tmp_path / "scan_test.png").stat().st_size > 1000
