"""``python -m fpcore gpu-suite``: the dry run of the whole suite in two sittings (the second resumes from the
first's archive), the summary's verdicts, the archive, and the wheels command."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from fpcore.bench import gpu_suite

REPO = Path(__file__).resolve().parents[1]


def _suite(*args, env=None):
    run = subprocess.run(
        [sys.executable, "-m", "fpcore", "gpu-suite", *args], cwd=REPO, capture_output=True, text=True, env=env
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout


def _members(archive: Path) -> set[str]:
    with tarfile.open(archive) as tar:
        return set(tar.getnames())


def test_dry_run_in_two_sittings_resumes_and_packs_every_record(tmp_path):
    results_before = sorted(p.name for p in (REPO / "results").glob("*"))
    first, second = tmp_path / "sitting1.tar.gz", tmp_path / "sitting2.tar.gz"
    out = _suite("--dry-run", "--minutes", "30", "--parts", "tests,scan,fixed-point", "--archive", str(first))
    assert "Dry run" in out and "pytest-gpu: done" in out and "surrogates" not in out.split("Targets:")[0]
    names = _members(first)
    assert {"state.json", "summary.md", "records/gpu_tests.json", "records/scan_gpu_target.json"} <= names
    state = json.loads(tarfile.open(first).extractfile("state.json").read())
    assert set(state["steps"]) == {"pytest-gpu", "scan-target", "scan-sweep", "fixed-point-target", "block-jacobi-rule"}

    out = _suite("--dry-run", "--minutes", "30", "--resume", str(first), "--archive", str(second))
    assert "resuming from" in out and "pytest-gpu: up to" not in out  # the first sitting's steps are not re-run
    state = json.loads(tarfile.open(second).extractfile("state.json").read())
    steps = {s["part"] for s in state["steps"].values()}
    assert steps == {p.name for p in gpu_suite.PARTS} and len(state["sittings"]) == 2
    assert all(s["status"] == "done" for s in state["steps"].values()), state["steps"]
    names = _members(second)
    for stem in ("fixed_point_cpu", "fixed_point_blocks_cpu", "surrogate_speed_cpu", "tokens_per_second_cpu"):
        assert f"records/{stem}.json" in names and f"records/{stem}.png" in names
    assert any(n.startswith("records/longdep_gilr-lstm") for n in names)
    summary = tarfile.open(second).extractfile("summary.md").read().decode()
    for _, _, what in gpu_suite.EXPECTED:  # every target has a line, measured or not
        assert what in summary
    assert "LM tokens/s, jacobi-k over cuDNN BPTT" in summary and "reported" in summary
    # the dry run wrote nothing into the repository's results
    assert sorted(p.name for p in (REPO / "results").glob("*")) == results_before


def _write(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


def test_summary_gives_every_target_a_verdict(tmp_path):
    records = tmp_path / "records"
    xml = '<testsuites><testsuite tests="5" failures="1" errors="0" skipped="1"><testcase classname="t" name="a">'
    xml += "<failure/></testcase></testsuite></testsuites>"
    records.mkdir(parents=True)
    (records / "gpu_tests.xml").write_text(xml)
    scan = {"gpu_fwd_8x65536x1536_cupy_over_copy": {"value": 1.1, "target": 1.25, "met": True}}
    _write(records / "scan_gpu_target.json", {"targets": scan})
    run = {"model": "gilr-lstm", "seq_len": 8192, "converged": True, "wall_time_s": 10.0, "hidden": 512}
    _write(records / "longdep_gilr-lstm_T8192_h512x2_s0.json", run)
    _write(
        records / "longdep_lstm_T8192_h512x2_s0.json", {**run, "model": "lstm", "converged": False, "wall_time_s": 61}
    )
    rows = {r["target"]: r for r in gpu_suite.summary_rows(tmp_path)}
    tests = rows["pytest -m gpu: no failures"]
    assert tests["verdict"] == "NOT met" and tests["value"] == 1
    assert json.loads((records / "gpu_tests.json").read_text())["failed"] == ["t::a"]
    assert rows["scan fwd within 1.25x a copy"]["verdict"] == "met"
    assert rows["GILR-LSTM >= 6x sooner than cuDNN LSTM, T = 8,192"]["value"] == pytest.approx(6.1)
    assert rows["GILR-LSTM >= 6x sooner than cuDNN LSTM, T = 8,192"]["verdict"] == "met"
    assert rows["SRU >= 9x parallel over sequential"]["verdict"] == "not measured"


def test_archive_round_trip_refuses_entries_outside_the_work_folder(tmp_path):
    work = tmp_path / "work"
    (work / "records").mkdir(parents=True)
    (work / "records" / "a.json").write_text("{}")
    (work / "checkpoints").mkdir()
    (work / "checkpoints" / "big.pt").write_bytes(b"0" * (gpu_suite.MAX_ARCHIVED_BYTES + 1))
    archive = tmp_path / "a.tar.gz"
    left_out = gpu_suite.pack(work, archive)
    assert left_out == ["checkpoints/big.pt (4 MiB)"] and _members(archive) == {"records/a.json"}
    gpu_suite.unpack(archive, tmp_path / "again")
    assert (tmp_path / "again" / "records" / "a.json").read_text() == "{}"
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../outside.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    with pytest.raises(ValueError, match="unexpected entry"):
        gpu_suite.unpack(evil, tmp_path / "w2")


def test_unpack_copies_the_records_into_results(tmp_path, monkeypatch):
    work = tmp_path / "work"
    _write(work / "records" / "scan_x.json", {"rows": []})
    (work / "logs").mkdir()
    (work / "logs" / "x.log").write_text("log")
    gpu_suite.pack(work, tmp_path / "a.tar.gz")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.tar.gz").stat().st_mode & 0o777 == 0o666 & ~umask  # as any file a program creates
    monkeypatch.setenv("FPCORE_RESULTS_DIR", str(tmp_path / "results"))
    assert [p.name for p in gpu_suite.copy_records(tmp_path / "a.tar.gz")] == ["scan_x.json"]


def test_fetch_wheels_downloads_cp312_manylinux_wheels(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    assert gpu_suite.fetch_wheels(tmp_path) == 0
    (cmd,) = calls
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and "accelerated-scan==0.3.1" in cmd
    assert cmd[cmd.index("--python-version") + 1] == "3.12" and "manylinux2014_x86_64" in cmd
    assert cmd[cmd.index("-d") + 1] == str(tmp_path)


def test_without_a_gpu_the_suite_says_so_in_one_line(monkeypatch, capsys):
    from fpcore import cli

    monkeypatch.setattr(gpu_suite, "_has_gpu", lambda: False)
    with pytest.raises(SystemExit) as stop:
        cli.main(["gpu-suite", "--minutes", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and "no CUDA GPU here" in err[-1] and "--dry-run" in err[-1]


def test_an_interrupted_sitting_still_writes_what_it_did(monkeypatch, tmp_path, capsys):
    from fpcore import cli

    def interrupted(*, minutes, work, dry, parts):  # one part done, then Ctrl-C
        gpu_suite._save_state(work, {"steps": {"pytest-gpu": {"status": "done"}}, "sittings": []})
        (work / "records").mkdir(exist_ok=True)
        (work / "records" / "gpu_tests.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(gpu_suite, "run_suite", interrupted)
    archive = tmp_path / "a.tar.gz"
    assert cli.main(["gpu-suite", "--dry-run", "--minutes", "1", "--archive", str(archive)]) == 130
    assert "interrupted" in capsys.readouterr().out
    assert {"state.json", "records/gpu_tests.json", "summary.md"} <= _members(archive)
