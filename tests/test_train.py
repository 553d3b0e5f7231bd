"""The trainer keeps finished work: names checked before training, fingerprinted records, damaged or foreign
checkpoints refused in one line, divergence stopped before it is saved, exact resume after kills anywhere."""

from __future__ import annotations

import dataclasses
import errno
import inspect
import json
import os
import random
import signal
import stat
import sys
import textwrap

import pytest
import torch

from fpcore import checkpoint, cli, experiments, files, results, train
from fpcore.checkpoint import TrainingDiverged
from fpcore.data import Corpus
from fpcore.train import TrainConfig, build_model, fit


def toy_corpus(vocab: int = 10, n: int = 3000, seed: int = 0) -> Corpus:
    """A learnable stream: mostly t_i = 3 t_{i-1} + 1 mod vocab, with one token in five random."""
    gen = torch.Generator().manual_seed(seed)
    ids, noise, rand = [0], torch.rand(n, generator=gen), torch.randint(0, vocab, (n,), generator=gen)
    for i in range(1, n):
        ids.append(int(rand[i]) if noise[i] < 0.2 else (3 * ids[-1] + 1) % vocab)
    t = torch.tensor(ids)
    return Corpus(
        "toy",
        [f"w{i}" for i in range(vocab - 1)] + ["<eos>"],
        t[: n * 8 // 10],
        t[n * 8 // 10 : n * 9 // 10],
        t[n * 9 // 10 :],
    )


def _cfg(**kw) -> TrainConfig:
    base = dict(hidden=8, layers=1, bptt=10, batch_size=4, eval_batch_size=4, epochs=2, lr=0.3, progress=False)
    return TrainConfig(**{**base, **kw})


@pytest.fixture
def toy(monkeypatch):
    """The CLI's corpus replaced by the toy one (so `python -m fpcore train` runs in a second)."""
    corpus = toy_corpus()
    monkeypatch.setattr("fpcore.data.load_corpus", lambda name, root=None: corpus)
    return corpus


TINY_CLI = ["train", "--preset", "tiny", "--epochs", "1", "--device", "cpu"]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.rsplit("\r", 1)[-1]  # what a terminal shows once the progress bar is cleared
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


# -- before training: names, folders, arguments -------------------------------------------------------------------
def test_a_bad_name_or_folder_fails_before_any_training(tmp_path, monkeypatch):
    corpus = toy_corpus()
    monkeypatch.setattr(train._Run, "train", lambda *a: pytest.fail("trained before checking where the record goes"))
    with pytest.raises(ValueError, match="plain file stem"):
        fit(build_model(_cfg(), 10), corpus, _cfg(record_name="../evil"))
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("FPCORE_RESULTS_DIR", str(tmp_path / "file" / "results"))
    with pytest.raises(files.WriteError, match="results folder .* cannot be created: one of its parents is a file"):
        fit(build_model(_cfg(), 10), corpus, _cfg(record_name="fine"))


def test_a_checkpoint_folder_that_cannot_be_made_fails_before_any_training(tmp_path, monkeypatch):
    from fpcore.longdep import LongDepConfig, LongDepNet, train_longdep

    (tmp_path / "file").write_text("not a folder")
    ckpt = str(tmp_path / "file" / "ck.pt")
    says = r"the folder of ck.pt: .*file cannot be created: a file of that name is in the way"
    monkeypatch.setattr(train._Run, "train", lambda *a: pytest.fail("trained before checking the checkpoint folder"))
    with pytest.raises(files.WriteError, match=says):
        fit(build_model(_cfg(), 10), toy_corpus(), _cfg(checkpoint=ckpt))
    monkeypatch.setattr(LongDepNet, "forward", lambda *a: pytest.fail("trained before checking the checkpoint folder"))
    cfg = LongDepConfig(seq_len=8, hidden=4, layers=1, batch=2, embed=4, device="cpu", save=False, checkpoint=ckpt)
    with pytest.raises(files.WriteError, match=says):
        train_longdep(dataclasses.replace(cfg, progress=False))


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--name", "../evil"], "--name: record name must be a plain file stem"),
        (["--lr", "nan"], "--lr: must be a finite number"),
        (["--lr", "-1"], "--lr: must be > 0"),
        (["--epochs", "-1"], "--epochs: must be > 0"),
        (["--iters", "-3"], "--iters: must be > 0"),
        (["--max-train-tokens", "0"], "--max-train-tokens: must be > 0"),
        (["--max-train-tokens", "-1"], "--max-train-tokens: must be > 0"),
        (["--max-minutes", "nan"], "--max-minutes: must be a finite number"),
        (["--max-minutes", "-1"], "--max-minutes: must be > 0"),
        (["--seed", "-1"], "--seed: must be >= 0"),
        (["--device", "bogus"], "'bogus' is not a device"),
        (["--method", "jacobi"], "--method jacobi needs --iters k"),
        (["--iters", "3"], "--iters is for --method jacobi, truncated, jacobi_carry"),
        (["--nproc-per-node", "0"], "--nproc-per-node: must be > 0"),
    ],
)
def test_bad_train_arguments_exit_2_with_fpcores_own_line(argv, says, capsys, monkeypatch):
    monkeypatch.setattr("fpcore.data.load_corpus", lambda *a, **k: pytest.fail("loaded the corpus"))
    with pytest.raises(SystemExit) as info:
        cli.main(TINY_CLI + argv)
    assert info.value.code == 2
    assert says in _one_line_error(capsys)


def test_bad_config_values_raise_before_training():
    for kw, says in (
        (dict(lr=float("nan")), "lr must be a finite number > 0"),
        (dict(clip=float("nan")), "clip must be a finite number >= 0"),
        (dict(max_train_tokens=0), "max_train_tokens must be an int >= 2"),
        (dict(max_train_tokens=-1), "max_train_tokens must be an int >= 2"),
        (dict(method="jacobi"), "needs iters"),
        (dict(iters=3), "iters is for"),
        (dict(dropout=1.0), "dropout must be"),
    ):
        with pytest.raises(ValueError, match=says):
            _cfg(**kw)


def test_a_bogus_device_in_the_environment_is_one_line(capsys, monkeypatch):
    monkeypatch.setenv("FPCORE_DEVICE", "bogus")
    with pytest.raises(SystemExit) as info:
        cli.main(["results"])
    assert info.value.code == 2
    assert "FPCORE_DEVICE" in _one_line_error(capsys)


# -- records: fingerprints, names, clashes -----------------------------------------------------------------------
def test_different_settings_never_share_a_default_name(toy, tmp_path, capsys):
    assert cli.main(TINY_CLI + ["--seed", "1", "--max-train-tokens", "1200"]) == 0
    assert cli.main(TINY_CLI + ["--seed", "2", "--lr", "0.5", "--max-train-tokens", "1200"]) == 0
    found = sorted(p.name for p in results.results_dir().glob("lm_*.json"))
    assert len(found) == 2 and all(name.startswith("lm_ptb_tiny_lstm_bptt_quick_") for name in found)
    plain = TrainConfig.preset("tiny", dataset="ptb")
    assert train.default_name(plain) == "lm_ptb_tiny_lstm_bptt_quick"
    assert train.default_name(dataclasses.replace(plain, seed=1)) != train.default_name(plain)
    # the record carries the fingerprint of its whole configuration
    rec = results.load_json(results.results_dir() / found[0])
    assert rec["fingerprint"] == TrainConfig.from_dict(rec["train_config"]).fingerprint()


def test_a_name_taken_by_another_configuration_is_refused_before_training(tmp_path, monkeypatch):
    corpus = toy_corpus()
    fit(build_model(_cfg(epochs=1), 10), corpus, _cfg(epochs=1, record_name="mine"))
    monkeypatch.setattr(train._Run, "train", lambda *a: pytest.fail("trained before checking the name"))
    with pytest.raises(results.RecordClash, match=r"mine.json holds another configuration; choose another name"):
        fit(build_model(_cfg(epochs=1, seed=5), 10), corpus, _cfg(epochs=1, seed=5, record_name="mine"))


def test_run_grid_returns_only_records_of_exactly_its_configuration(tmp_path, monkeypatch):
    corpus = toy_corpus()
    mine = _cfg(epochs=1, record_name="lm_toy", checkpoint=str(tmp_path / "a.pt"))
    other = dataclasses.replace(mine, lr=0.1, checkpoint=str(tmp_path / "b.pt"))
    fit(build_model(other, 10), corpus, other)  # a record named lm_toy, of another configuration
    with pytest.raises(results.RecordClash, match="holds another configuration"):
        experiments.run_grid([mine], corpus)  # never the other run's figures
    # a record in the tracked results/ of another configuration: not returned; this run writes its own
    tracked = tmp_path / "tracked"
    tracked.mkdir()
    os.replace(results.results_dir() / "lm_toy.json", tracked / "lm_toy.json")
    monkeypatch.setattr(results, "TRACKED", tracked)
    (got,) = experiments.run_grid([mine], corpus)
    assert got["train_config"]["lr"] == 0.3 and got["path"] == str(results.results_dir() / "lm_toy.json")
    again = experiments.run_grid([mine], corpus, max_seconds=0.0)  # done: read back, not trained
    assert again[0]["test_ppl"] == got["test_ppl"]


def test_records_written_before_fingerprints_count_by_their_train_config(tmp_path, monkeypatch):
    corpus = toy_corpus()
    cfg = _cfg(epochs=1, record_name="lm_old")
    legacy = {"finished": True, "method": "bptt", "test_ppl": 1.0, "train_config": dataclasses.asdict(cfg)}
    legacy["train_config"]["checkpoint"] = "checkpoints/somewhere.pt"  # how it was spelled then: no matter
    (results.results_dir()).mkdir(parents=True, exist_ok=True)
    (results.results_dir() / "lm_old.json").write_text(json.dumps(legacy))
    monkeypatch.setattr(train._Run, "train", lambda *a: pytest.fail("trained a run that is recorded"))
    assert experiments.run_grid([cfg], corpus)[0]["test_ppl"] == 1.0
    changed = dataclasses.replace(cfg, hidden=12)
    with pytest.raises(results.RecordClash, match="lm_old.json holds another configuration"):
        experiments.run_grid([changed], corpus)


def test_a_record_that_cannot_be_written_loses_nothing(tmp_path, monkeypatch, capsys):
    corpus = toy_corpus()
    cfg = _cfg(record_name="run", checkpoint=str(tmp_path / "run.pt"))

    def full_disk(path, data, **kw):
        raise files.WriteError(f"could not write record {path}: the disk is full; the previous run.json is intact")

    monkeypatch.setattr(results, "atomic_write", full_disk)
    with pytest.raises(
        train.RecordNotWritten, match=r"the disk is full.*the trained model is safe in .*run.pt"
    ) as info:
        fit(build_model(cfg, 10), corpus, cfg)
    assert "\n" not in str(info.value) and info.value.record["test_ppl"] > 1
    monkeypatch.undo()
    monkeypatch.setenv("FPCORE_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setattr(train._Run, "_step", lambda *a, **k: pytest.fail("trained again"))
    again = fit(build_model(cfg, 10), corpus, cfg)  # the same call writes the record from the checkpoint
    assert again["test_ppl"] == info.value.record["test_ppl"]
    assert results.load_json(again["path"])["valid_ppl"] == info.value.record["valid_ppl"]


def test_a_corrected_name_reuses_the_checkpoint_of_the_same_run(tmp_path, monkeypatch):
    corpus = toy_corpus()
    ckpt = str(tmp_path / "ck.pt")
    first = fit(build_model(_cfg(), 10), corpus, _cfg(record_name="first", checkpoint=ckpt))
    monkeypatch.chdir(tmp_path)
    for spelling in ("ck.pt", "./ck.pt", ckpt):  # identity is the configuration, not the path's spelling
        again = fit(build_model(_cfg(), 10), corpus, _cfg(record_name="second", checkpoint=spelling))
        assert again["test_ppl"] == first["test_ppl"]


# -- checkpoints through the command line -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "damage, says",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:300]), "not a readable checkpoint"),
        (lambda p: p.write_bytes(b""), "is empty"),
        (lambda p: p.write_bytes(b"garbage" * 100), "not a readable checkpoint"),
        (lambda p: torch.save({"model": {}}, p), "not an fpcore checkpoint"),
    ],
)
def test_a_damaged_checkpoint_stops_train_and_longdep_in_one_line(damage, says, toy, tmp_path, capsys):
    ckpt = tmp_path / "ck.pt"
    ckpt.write_bytes(b"x")
    damage(ckpt)
    assert cli.main(TINY_CLI + ["--checkpoint", str(ckpt)]) == 1
    err = _one_line_error(capsys)
    assert says in err and str(ckpt) in err
    argv = ["longdep", "--seq-len", "8", "--hidden", "4", "--layers", "1", "--batch", "2", "--embed", "4"]
    assert cli.main([*argv, "--device", "cpu", "--no-progress", "--checkpoint", str(ckpt)]) == 1
    assert says in _one_line_error(capsys)


def test_a_full_disk_during_a_checkpoint_write_is_one_line(toy, tmp_path, capsys, monkeypatch):
    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", fsync)
    assert cli.main(TINY_CLI + ["--checkpoint", str(tmp_path / "ck.pt")]) == 1
    assert "could not write checkpoint" in _one_line_error(capsys) and list(tmp_path.iterdir()) == []


# -- divergence ------------------------------------------------------------------------------------------------
def test_a_non_finite_loss_stops_before_the_step_with_the_last_finite_checkpoint(tmp_path, monkeypatch):
    corpus = toy_corpus()
    cfg = _cfg(checkpoint=str(tmp_path / "ck.pt"), checkpoint_every=3)
    calls, real = [0], train._loss

    def loss(logits, targets):
        calls[0] += 1
        value = real(logits, targets)
        return value * float("nan") if calls[0] == 8 else value

    monkeypatch.setattr(train, "_loss", loss)
    model = build_model(cfg, 10)
    says = r"loss became nan at epoch 1, window 7 \(the step was not taken\): .*/ck.pt \(epoch 1, window 6\)"
    with pytest.raises(TrainingDiverged, match=says):
        fit(model, corpus, cfg)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())  # the bad step was not taken
    saved = checkpoint.load(tmp_path / "ck.pt", identity=cfg.identity())
    assert (saved["epoch"], saved["window"]) == (1, 6)  # resumable, from before


def test_a_learning_rate_that_blows_up_is_one_line_not_an_overflow(toy, capsys):
    assert cli.main(TINY_CLI + ["--lr", "3000", "--max-train-tokens", "2400"]) == 1
    err = _one_line_error(capsys)
    assert "the validation perplexity became inf at the end of epoch 1: training stopped" in err
    assert "Lower the learning rate" in err


def test_a_loss_that_explodes_but_stays_finite_stops_at_the_end_of_the_epoch(tmp_path):
    corpus = toy_corpus()  # 10 tokens: a uniform guess has perplexity 10
    cfg = _cfg(cell="rnn", lr=3.0, epochs=3, checkpoint=str(tmp_path / "ck.pt"))  # a tanh RNN at too large an lr
    with pytest.raises(TrainingDiverged, match=r"perplexity is .* at the end of epoch 1, more than 10 times .*ck.pt"):
        fit(build_model(cfg, 10), corpus, cfg)
    healthy = fit(build_model(_cfg(cell="rnn"), 10), corpus, _cfg(cell="rnn"))
    assert healthy["valid_ppl"] < 10  # the same model at lr 0.3 learns and is not stopped


# -- fault injection: kill anywhere, resume, end bit-identical ---------------------------------------------------
def _arm(rng: random.Random, rate: float, log) -> None:
    """In a forked child: die (os._exit, like SIGKILL: no clean-up runs) at random training steps and inside
    atomic writes (before the data is synced, before the rename, after it); ``log`` gets where."""

    def maybe(where: str) -> None:
        if rng.random() < rate:
            with open(log, "a") as fh:
                fh.write(where + "\n")
            os._exit(77)

    step, fsync, replace = train._Run._step, os.fsync, os.replace

    def killing_step(self, *a, **k):
        maybe("step")
        return step(self, *a, **k)

    def killing_fsync(fd):
        maybe("fsync")
        return fsync(fd)

    def killing_replace(src, dst):
        maybe("replace")
        replace(src, dst)
        maybe("after-replace")

    train._Run._step = killing_step
    files.os.fsync = killing_fsync
    files.os.replace = killing_replace


def _run_until_done(cfg: TrainConfig, corpus: Corpus, seed: int, rate: float, log) -> int:
    """Train in forked children killed at random points until one finishes; return the number of kills."""
    kills = 0
    for attempt in range(40):
        pid = os.fork()
        if pid == 0:  # the child: train, dying somewhere
            code = 1
            try:
                torch.set_num_threads(1)
                _arm(random.Random(seed * 1000 + attempt), rate if attempt < 30 else 0.0, log)
                fit(build_model(cfg, corpus.vocab_size), corpus, cfg)
                code = 0
            finally:
                os._exit(code)
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        if code == 0:
            return kills
        assert code == 77, f"the child failed (exit {code}), not by an injected kill"
        kills += 1
    raise AssertionError("never finished")


def _fault_trials(trials: int, tmp_path, monkeypatch) -> list[str]:
    """Run ``trials`` killed-and-resumed trainings, check each against an uninterrupted one; return where
    the kills struck."""
    corpus = toy_corpus(n=1500)
    base = _cfg(dropout=0.3, layers=2, checkpoint_every=2, record_name="run")
    monkeypatch.setenv("FPCORE_RESULTS_DIR", str(tmp_path / "reference"))
    ref_cfg = dataclasses.replace(base, checkpoint=str(tmp_path / "reference" / "ck.pt"))
    reference = fit(build_model(ref_cfg, corpus.vocab_size), corpus, ref_cfg)
    ref_state = checkpoint.load(ref_cfg.checkpoint, identity=base.identity())
    log = tmp_path / "kills.log"
    log.touch()
    for trial in range(trials):
        folder = tmp_path / f"trial{trial}"
        monkeypatch.setenv("FPCORE_RESULTS_DIR", str(folder))
        cfg = dataclasses.replace(base, checkpoint=str(folder / "ck.pt"))
        _run_until_done(cfg, corpus, seed=trial, rate=0.04, log=log)
        record = results.load_json(folder / "run.json")
        for key in ("valid_ppl", "test_ppl", "history"):
            assert record[key] == reference[key], (trial, key)
        state = checkpoint.load(cfg.checkpoint, identity=base.identity())
        for name, tensor in ref_state["model"].items():
            assert torch.equal(state["model"][name], tensor), (trial, name)
        assert state["optimizer"]["param_groups"] == ref_state["optimizer"]["param_groups"]
        assert state["trained_tokens"] == ref_state["trained_tokens"]
        assert sorted(p.name for p in folder.iterdir()) == ["ck.pt", "run.json"], "a temporary file was left"
    return log.read_text().split()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_killed_anywhere_any_number_of_times_every_run_ends_bit_identical(tmp_path, monkeypatch):
    kills = _fault_trials(8, tmp_path, monkeypatch)
    # mid-training, mid-write (before the data is synced, before the rename) and just after a write
    assert {"step", "fsync", "replace", "after-replace"} <= set(kills), kills


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fault_injection_many_trials(tmp_path, monkeypatch):
    kills = _fault_trials(200, tmp_path, monkeypatch)
    print(f"200 trials, {len(kills)} kills, every run bit-identical, no temporary file left")


# -- data parallel: a pause is exit 3, a stopped process a bounded wait ------------------------------------------
_DDP = """
import os, signal, sys
import torch
torch.set_num_threads(1)
from fpcore import train
from fpcore.data import Corpus
{corpus}
corpus = toy_corpus()
cfg = train.TrainConfig(hidden=8, layers=1, bptt=10, batch_size=4, eval_batch_size=4, epochs=2, lr=0.3,
                        progress=False, checkpoint=sys.argv[2], checkpoint_every=2)
if sys.argv[1] == "stop" and os.environ["RANK"] == "1":
    step, calls = train._Run._step, []
    def stopping(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGSTOP)
        return step(self, *a, **k)
    train._Run._step = stopping
try:
    record = train.fit(train.build_model(cfg, corpus.vocab_size), corpus, cfg,
                       max_seconds=0.0 if sys.argv[1] == "pause" else None)
except (OSError, ValueError) as err:
    print(f"error: {{err}}", file=sys.stderr)
    sys.exit(1)
sys.exit(0 if record.get("finished", True) else 3)
"""


def test_data_parallel_pause_is_exit_3_and_a_stopped_process_cannot_hang_the_others(tmp_path, monkeypatch, capfd):
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(_DDP.format(corpus=inspect.getsource(toy_corpus))))
    monkeypatch.setenv("FPCORE_DEVICE", "cpu")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("FPCORE_DIST_TIMEOUT", "5")
    assert train.launch([sys.executable, str(script), "pause", str(tmp_path / "a.pt")], 2) == 3
    capfd.readouterr()
    # a checkpoint holds each process's stream state: another number of processes is refused, in one line
    assert train.launch([sys.executable, str(script), "run", str(tmp_path / "a.pt")], 1) == 1
    err = capfd.readouterr().err
    assert "was written by 2 process(es), this run has 1: resume it with --nproc-per-node 2" in err, err
    assert train.launch([sys.executable, str(script), "run", str(tmp_path / "a.pt")], 2) == 0  # resumed to the end
    capfd.readouterr()
    code = train.launch([sys.executable, str(script), "stop", str(tmp_path / "b.pt")], 2, grace_s=2.0)
    err = capfd.readouterr().err
    assert code == 1
    assert "error: process 0: another process stopped answering for 5 s (FPCORE_DIST_TIMEOUT)" in err, err
    assert "run the same command again to resume" in err and "Traceback" not in err
    assert "error: process 0 of 2 exited with status 1" in err  # and the stopped one was ended by the launcher


def test_a_paused_command_is_exit_3_and_under_torchrun_says_how_torchrun_reports_it(toy, tmp_path, capsys, monkeypatch):
    ckpt = tmp_path / "ck.pt"
    argv = [*TINY_CLI, "--max-train-tokens", "1200", "--checkpoint", str(ckpt)]
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # as torchrun sets it in each process
    old = os.umask(0o022)
    try:
        assert cli.main([*argv, "--max-minutes", "1e-9"]) == 3
    finally:
        os.umask(old)
    out = capsys.readouterr().out
    assert f"paused at epoch 1, window 1; checkpoint {ckpt}: run the same command again to resume" in out
    assert "(torchrun reports this pause as a failure; --nproc-per-node N reports it as exit 3)" in out
    assert stat.S_IMODE(ckpt.stat().st_mode) == 0o644  # others in a shared folder can read it
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    assert cli.main(argv) == 0 and "torchrun" not in capsys.readouterr().out


def test_a_timeout_setting_that_is_not_a_number_is_refused(monkeypatch):
    monkeypatch.setenv("FPCORE_DIST_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="FPCORE_DIST_TIMEOUT='soon'"):
        train.dist_timeout()
    monkeypatch.setenv("FPCORE_DIST_TIMEOUT", "90")
    assert train.dist_timeout().total_seconds() == 90


def test_ctrl_c_checkpoints_at_the_next_window_and_the_run_resumes_exactly(
    tmp_path, monkeypatch, capsys, ctrl_c_reaches_python
):
    corpus = toy_corpus()
    cfg = _cfg(checkpoint=str(tmp_path / "ck.pt"), checkpoint_every=100, dropout=0.2)
    whole = fit(build_model(cfg, 10), corpus, dataclasses.replace(cfg, checkpoint=str(tmp_path / "whole.pt")))
    step, calls = train._Run._step, [0]

    def interrupted(self, *a, **k):
        calls[0] += 1
        if calls[0] == 5:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C does, in the middle of a window
        return step(self, *a, **k)

    monkeypatch.setattr(train._Run, "_step", interrupted)
    with pytest.raises(KeyboardInterrupt, match=r"ck.pt holds epoch 1, window 5: run the same training again"):
        fit(build_model(cfg, 10), corpus, cfg)
    monkeypatch.undo()
    assert "stopping after the current step, to checkpoint (Ctrl-C again: stop at once)" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    again = fit(build_model(cfg, 10), corpus, cfg)
    assert again["history"] == whole["history"] and again["test_ppl"] == whole["test_ppl"]


def test_ctrl_c_on_the_long_dependency_task_checkpoints_too(tmp_path, monkeypatch, ctrl_c_reaches_python):
    from fpcore.longdep import LongDepConfig, LongDepNet, train_longdep

    base = dict(seq_len=16, hidden=4, layers=1, batch=4, embed=4, lr=0.03, progress=False, device="cpu", save=False)
    whole = train_longdep(LongDepConfig(max_iters=8, streak=1000, **base))
    forward, calls = LongDepNet.forward, [0]

    def interrupted(self, symbols):
        calls[0] += 1
        if calls[0] == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return forward(self, symbols)

    monkeypatch.setattr(LongDepNet, "forward", interrupted)
    ck = str(tmp_path / "ck.pt")
    with pytest.raises(KeyboardInterrupt, match=r"ck.pt \(step 3\): run the same command again"):
        train_longdep(LongDepConfig(max_iters=8, streak=1000, checkpoint=ck, **base))
    monkeypatch.undo()
    rest = train_longdep(LongDepConfig(max_iters=8, streak=1000, checkpoint=ck, resume=True, **base))
    assert rest.losses == whole.losses
