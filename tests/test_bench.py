"""fpcore.bench: the command line, the suite registry and its one entry-point shape, the shared toolkit, and
tiny end-to-end runs of the scan, surrogate and language-model suites."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import types

import pytest
import torch

from fpcore import bench, cli
from fpcore.bench import toolkit


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "fpcore", *args], capture_output=True, text=True)


def test_help_lists_every_suite_and_the_gpu_suite():
    run = _cli("bench", "--help")
    assert run.returncode == 0 and all(name in run.stdout for name in bench.SUITES)
    run = _cli("bench", "scan", "--help")
    assert run.returncode == 0 and "--log2-t" in run.stdout and "--max-minutes" in run.stdout
    assert _cli("gpu-suite", "--help").returncode == 0


def test_every_suite_has_the_same_entry_point_shape():
    for name in bench.SUITES:
        module = bench.load(name)
        for attr in ("STEM", "HELP", "add_arguments", "measure", "report", "figure"):
            assert hasattr(module, attr), (name, attr)
    with pytest.raises(ValueError, match="unknown benchmark suite"):
        bench.load("nosuch")


def test_importing_the_operator_and_the_engine_loads_no_benchmark():
    code = (
        "import sys, fpcore.scan, fpcore.fixed_point; print([m for m in sys.modules if m.startswith('fpcore.bench')])"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stdout + run.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["bench"],
        ["bench", "nosuchsuite"],
        ["bench", "scan", "--shapes", "8"],
        ["bench", "scan", "--log2-t", "20:10"],
        ["bench", "scan", "--providers", "nope"],
        ["bench", "scan", "--threads", "0"],
        ["bench", "surrogates", "--models", "lstm"],
        ["bench", "lm-speed", "--iters", "0"],
        ["bench", "scan", "--repeat", "0"],
        ["bench", "scan", "--max-elements", "-1"],
        ["bench", "scan", "--max-seconds", "nan"],
        ["bench", "scan", "--warmup", "-1"],
        ["bench", "scan", "--max-minutes", "inf"],
        ["bench", "surrogates", "--hidden", "0"],
        ["bench", "surrogates", "--tokens", "-5"],
        ["gpu-suite", "--parts", "nosuch"],
        ["gpu-suite", "--resume", "/nonexistent/archive.tar.gz"],
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error" in err and "Traceback" not in err


def test_a_suite_plugs_in_with_one_registry_entry(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("FPCORE_RESULTS_DIR", str(tmp_path))
    calls = []
    fake = types.ModuleType("fake_suite")
    fake.__doc__ = "A fake suite."
    fake.STEM, fake.HELP = "fake", "a fake suite"
    fake.add_arguments = lambda p: p.add_argument("--n", type=int, default=1)
    fake.measure = lambda args: (
        calls.append(args.n)
        or {
            "config": {"device": "cpu"},
            "rows": [{"n": args.n}],
            "targets": {"fake_goal": {"value": 2.0, "target": "<= 3", "met": True}},
        }
    )
    fake.report = lambda payload: f"rows: {payload['rows']}"
    fake.figure = lambda payload: None
    monkeypatch.setitem(sys.modules, "fake_suite", fake)
    monkeypatch.setitem(bench.SUITES, "fake", "fake_suite")
    assert cli.main(["bench", "fake", "--n", "3"]) == 0
    out = capsys.readouterr().out
    assert calls == [3] and "rows: [{'n': 3}]" in out and "target fake_goal: 2 (goal <= 3) -> met" in out
    assert json.loads((tmp_path / "fake_cpu.json").read_text())["rows"] == [{"n": 3}]


def test_helpers():
    assert toolkit.gbps(3e9, 1.5) == pytest.approx(2.0)
    table = toolkit.format_table([{"a": 1, "b": 0.5}, {"a": 22, "b": None, "c": True}], ["a", "b", "c"])
    lines = table.splitlines()
    assert lines[0].split() == ["a", "b", "c"] and lines[3].split() == ["22", "-", "yes"]
    assert len({len(line) for line in lines}) == 1  # aligned
    assert toolkit.device_tag("cpu") == "cpu"
    count = []
    timed = toolkit.time_side_by_side({"x": lambda: count.append(1), "y": lambda: None}, warmup=2, repeat=4)
    assert timed["x"]["n"] == 4 and len(count) == 6 and timed["x"]["median"] >= timed["x"]["min"] >= 0
    out, seconds = toolkit.best_of(lambda: 7)
    assert out == 7 and seconds >= 0
    assert toolkit.int_list("1024,2^4,2**3") == [1024, 16, 8]
    for bad in ("0", "x", ""):
        with pytest.raises(Exception, match="positive integers"):
            toolkit.int_list(bad)
    watch = toolkit.LoadWatch().record()
    assert set(watch) == {"before", "after", "cpus"}


def test_deadline_and_threads():
    assert not toolkit.Deadline(None).passed() and toolkit.Deadline(None).note(1, 2) is None
    d = toolkit.Deadline(1e-6)
    time.sleep(0.01)
    assert d.passed() and d.note(1, 3) == "stopped by --max-minutes 1e-06 after 1 of 3 points"
    before = torch.get_num_threads()
    with toolkit.pin_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be"):
        with toolkit.pin_threads(0):
            pass


def test_peak_memory_sees_a_large_allocation():
    mb = toolkit.peak_memory_mb(lambda: torch.ones(16 * 2**20).sum(), "cpu")  # 64 MiB of float32
    assert 30 < mb < 1000


def test_figures_leave_the_backend_alone(monkeypatch):
    """Library code never switches matplotlib's backend (that would turn off a notebook's inline plots)."""
    import matplotlib

    monkeypatch.setattr(matplotlib, "use", lambda *a, **k: pytest.fail("matplotlib.use called"))
    payload = {
        "config": {"device": "cpu", "dtype": "float32", "threads": 1, "repeat": 1},
        "rows": [{"B": 1, "T": 8, "D": 2, "mode": "fwd", "provider": "numba", "ms": 1.0}],
        "load_average": {"before": [0.0, 0.0, 0.0]},
    }
    import matplotlib.pyplot as plt

    plt.close(bench.load("scan").figure(payload))


def test_tiny_scan_sweep_writes_json_and_png(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FPCORE_RESULTS_DIR", str(tmp_path))
    argv = ["bench", "scan", "--device", "cpu", "--shapes", "2x8", "--log2-t", "5:6", "--repeat", "1"]
    argv += ["--providers", "loop,torch,numba,cupy", "--no-progress", "--name", "scan_test", "--threads", "1"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "membound:addcmul" in out and "not run: cupy" in out
    record = json.loads((tmp_path / "scan_test.json").read_text())
    assert record["meta"]["device_type"] == "cpu" and "commit" in record["meta"]
    assert record["config"]["threads"] == 1 and record["stopped_early"] is None
    timed = [r for r in record["rows"] if "ms" in r]
    assert {r["mode"] for r in timed} == {"fwd", "bwd", "fwdbwd"}
    assert {r["T"] for r in timed} == {32, 64}
    for r in timed:
        assert r["ms"] > 0 and r["GB/s"] > 0
        if not r["provider"].startswith("membound"):
            assert r["max_abs_err"] < 1e-4, r
    assert (tmp_path / "scan_test.png").stat().st_size > 1000


def test_scan_target_compares_the_scan_with_an_equally_allocating_pass():
    scan = bench.load("scan")
    rows = [
        {"B": 8, "T": 4096, "D": 256, "mode": "fwd", "provider": "numba", "ms": 1.1, "x_membound": 1.1},
        {"B": 8, "T": 4096, "D": 256, "mode": "fwd", "provider": "torch", "ms": 9.0, "x_membound": 9.0},
    ]
    rows[0]["x_membound_min"] = 1.05
    ((key, t),) = scan.targets(rows, "cpu", threads=2).items()
    assert key == "cpu_2thread_fwd_8x4096x256_linear_scan_over_addcmul" and t["met"] and t["target"] == 1.2
    rows[0]["x_membound"] = 1.3
    assert not next(iter(scan.targets(rows, "cpu").values()))["met"]


def test_speed_suite_runs_small_and_every_provider_computes_the_same_model(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FPCORE_RESULTS_DIR", str(tmp_path))
    speed = bench.load("surrogates")
    argv = ["bench", "surrogates", "--device", "cpu", "--hidden", "4", "--tokens", "64", "--seq-lens", "8,64"]
    argv += ["--repeat", "1", "--warmup", "0", "--providers", "loop,torch", "--threads", "1", "--no-progress"]
    assert cli.main([*argv, "--name", "surrogate_speed_test"]) == 0
    out = capsys.readouterr().out
    assert "gilr-lstm" in out and "qrnn10" in out
    ((name, payload),) = [t for t in speed.recorded() if t[0] == "surrogate_speed_test.json"]
    rows = [r for r in payload["rows"] if "ms" in r]
    assert {(r["model"], r["T"], r["B"], r["provider"]) for r in rows} == {
        (m, T, 64 // T, p) for m in speed.MODELS for T in (8, 64) for p in ("loop", "torch")
    }
    assert all(r["max_abs_err"] < 1e-5 and r["ms"] > 0 for r in rows)
    assert "x_loop torch" in speed.summary(payload)
    assert (tmp_path / "surrogate_speed_test.png").exists()


def test_speed_suite_rejects_lengths_that_do_not_divide_the_tokens(capsys):
    with pytest.raises(ValueError, match="divide"):
        bench.main("surrogates", ["--tokens", "64", "--seq-lens", "7", "--no-save"])
    assert cli.main(["bench", "surrogates", "--tokens", "64", "--seq-lens", "7", "--no-save"]) == 1
    assert "divide" in capsys.readouterr().err


def test_lm_speed_times_bptt_and_jacobi_side_by_side(capsys):
    argv = ["--device", "cpu", "--vocab", "30", "--hidden", "8", "--batch", "2", "--bptt", "6", "--iters", "2"]
    assert bench.main("lm-speed", [*argv, "--repeat", "2", "--no-save"]) == 0
    out = capsys.readouterr().out
    assert "bptt" in out and "jacobi-2" in out and "tokens_per_s" in out


def test_a_sweep_stops_at_its_budget_and_says_so():
    args = bench.parse_args("scan", ["--device", "cpu", "--shapes", "1x4", "--log2-t", "3:6", "--providers", "torch"])
    args.max_minutes, args.no_progress = 1e-9, True
    payload = bench.load("scan").measure(args)
    assert payload["stopped_early"] == "stopped by --max-minutes 1e-09 after 0 of 4 points"
    assert payload["rows"] == []
