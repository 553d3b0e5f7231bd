"""The command line: --help, the data command, and one-line errors with exit status 2 (or 1)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fpcore import cli, data


def run(*args):
    return subprocess.run([sys.executable, "-m", "fpcore", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_the_commands():
    out = run("--help")
    assert out.returncode == 0
    for name in ("data", "reproduce"):
        assert name in out.stdout


@pytest.mark.parametrize(
    "args, says",
    [
        ((), "the following arguments are required: <command>"),
        (("nonsense",), "invalid choice: 'nonsense'"),
        (("data", "ptb3"), "unknown corpus 'ptb3'"),
        (("data", "--bogus"), "unrecognized arguments: --bogus"),
        (("reproduce", "--profile", "huge"), "invalid choice: 'huge'"),
    ],
)
def test_bad_arguments_exit_2_with_one_clear_line(args, says, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(list(args))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert says in err and "--help" in err


@pytest.mark.skipif(not (data.SHARED_DATA / "ptb" / "train.txt").exists(), reason="needs ../shared/data")
def test_data_command_prints_verified_figures():
    out = run("data", "ptb")
    assert out.returncode == 0, out.stderr
    assert "929,589" in out.stdout and "10,000" in out.stdout


def test_data_errors_exit_1_with_the_message_not_a_traceback(tmp_path):
    out = run("data", "ptb", "--root", str(tmp_path))
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "train.txt: file not found" in out.stderr and data.REGISTRY["ptb"].files["train"].sha256 in out.stderr
