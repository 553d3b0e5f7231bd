"""The command line: --help, the data command, and one-line errors with exit status 2 (or 1)."""

from __future__ import annotations

import argparse
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


def _all_parsers():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = [parser]
    for child in dict.fromkeys(sub.choices.values()):
        out += [child] + [leaf for leaf in cli._leaves(child) if leaf is not child]
    return out


def test_help_shows_no_markup_and_every_train_option_its_default():
    for p in _all_parsers():
        assert "``" not in p.format_help(), p.prog  # reStructuredText from docstrings reads as 'code'
    (train,) = [p for p in _all_parsers() if p.prog.endswith(" train")]
    for action in train._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, action.option_strings
            flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
            assert flag or "default" in action.help, action.option_strings


@pytest.mark.parametrize(
    "args, says",
    [
        (("reproduce", "--timeout", "-5"), "--timeout: must be > 0"),
        (("reproduce", "--timeout", "nan"), "--timeout: expected an integer"),
    ],
)
def test_negative_and_nan_values_exit_2(args, says, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(list(args))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and says in err, err


def test_argument_types_refuse_nan_inf_and_signs():
    for parse, bad in (
        (cli.positive(float), ("nan", "inf", "-inf", "0", "-1", "x")),
        (cli.positive(int), ("0", "-3", "1.5", "nan")),
        (cli.non_negative(float), ("nan", "-0.1")),
        (cli.finite, ("nan", "inf")),
    ):
        for text in bad:
            with pytest.raises(argparse.ArgumentTypeError, match="must be|expected"):
                parse(text)
    assert cli.positive(int)("1_000") == 1000 and cli.non_negative(float)("0") == 0.0 and cli.finite("-2") == -2.0
    argv = ["train", "--nproc-per-node", "2", "--lr=1", "--nproc-per-node=3"]
    assert cli.without_option(argv, "--nproc-per-node") == ["train", "--lr=1"]


def test_the_experiments_command_fails_in_one_line_too(tmp_path, monkeypatch, capsys):
    from fpcore import experiments

    monkeypatch.setenv("FPCORE_RESULTS_DIR", str(tmp_path))
    monkeypatch.setenv("FPCORE_DEVICE", "bogus")
    with pytest.raises(SystemExit) as info:
        experiments.main(["ptb", "--ks", "1"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "python -m fpcore.experiments: error: device 'bogus' (from $FPCORE_DEVICE) is not a device" in err
    monkeypatch.delenv("FPCORE_DEVICE")

    def unreadable(name, root=None):
        raise data.DataError(f"{tmp_path}/ptb.train.txt: cannot be read (Permission denied)")

    monkeypatch.setattr(data, "load_corpus", unreadable)
    assert experiments.main(["ptb", "--ks", "1"]) == 1
    err = capsys.readouterr().err
    assert err == f"python -m fpcore.experiments: error: {tmp_path}/ptb.train.txt: cannot be read (Permission denied)\n"
