"""Training on the long-dependency task: converges on a tiny T, resumes exactly, records every field."""

from __future__ import annotations

import json

import pytest
import torch

from fpcore import cli
from fpcore.longdep import LongDepConfig, LongDepNet, load_records, records_table, train_longdep
from fpcore.tasks import dense_inputs, sign_batch

REQUIRED = (
    "model",
    "seq_len",
    "hidden",
    "layers",
    "batch",
    "iterations",
    "wall_time_s",
    "converged",
    "device",
    "peak_mem_bytes",
    "torch_version",
    "commit",
)
TINY = dict(seq_len=32, hidden=8, layers=1, batch=8, embed=8, lr=3e-2, progress=False, threads=1)


@pytest.mark.parametrize("model", ["gilr-lstm", "lstm"])
def test_converges_on_a_tiny_length_and_writes_a_record(tmp_path, model):
    cfg = LongDepConfig(model=model, max_iters=400, results_dir=str(tmp_path), device="cpu", **TINY)
    res = train_longdep(cfg)
    assert res.converged, f"{model} did not reach the criterion in {res.iterations} iterations"
    assert res.accuracies[-5:] == [1.0] * 5  # paper C's criterion: 5 perfect minibatches in a row
    assert res.iterations == len(res.losses) < 400
    # settings other than the default ones: the name carries the configuration's fingerprint
    assert res.path == tmp_path / f"longdep_{model}_T32_h8x1_s0_{cfg.fingerprint()[:8]}.json"
    rec = json.loads(res.path.read_text())
    for key in REQUIRED:
        assert key in rec, key
    assert rec["converged"] is True and rec["iterations"] == res.iterations and rec["seq_len"] == 32
    assert rec["peak_mem_bytes"] > 0 and rec["wall_time_s"] > 0 and rec["torch_version"] == torch.__version__
    assert rec["meta"]["device_type"] == "cpu"


def test_threads_hold_during_a_run_and_are_restored_after(monkeypatch):
    import fpcore.longdep as ld

    seen, forward = [], ld.LongDepNet.forward
    monkeypatch.setattr(
        ld.LongDepNet, "forward", lambda self, s: seen.append(torch.get_num_threads()) or forward(self, s)
    )
    before = torch.get_num_threads()
    train_longdep(LongDepConfig(max_iters=3, save=False, device="cpu", **TINY))
    assert seen == [1, 1, 1]  # even after the first scan starts Numba's thread pool
    assert torch.get_num_threads() == before


def test_budget_stops_an_unconverged_run(tmp_path):
    res = train_longdep(LongDepConfig(max_iters=3, save=False, device="cpu", **TINY))
    assert not res.converged and res.iterations == 3 and res.path is None


def test_checkpoint_and_resume_continue_exactly(tmp_path):
    base = dict(device="cpu", save=False, seed=3, **TINY)
    whole = train_longdep(LongDepConfig(max_iters=12, streak=1000, **base))
    ckpt = tmp_path / "run.pt"
    first = train_longdep(LongDepConfig(max_iters=5, streak=1000, checkpoint=str(ckpt), checkpoint_every=2, **base))
    assert first.iterations == 5 and ckpt.exists()
    rest = train_longdep(LongDepConfig(max_iters=12, streak=1000, checkpoint=str(ckpt), resume=True, **base))
    assert rest.iterations == whole.iterations == 12
    assert rest.losses == whole.losses  # bit-for-bit: same weights, optimiser state and batches
    assert rest.accuracies == whole.accuracies
    assert rest.losses[:5] == first.losses


def test_a_non_finite_loss_stops_before_the_step_with_the_last_finite_checkpoint(tmp_path, monkeypatch):
    from fpcore.checkpoint import TrainingDiverged, load

    forward, calls = LongDepNet.forward, [0]

    def poisoned(self, symbols):
        calls[0] += 1
        out = forward(self, symbols)
        return out * float("nan") if calls[0] == 4 else out

    monkeypatch.setattr(LongDepNet, "forward", poisoned)
    ckpt = tmp_path / "run.pt"
    cfg = LongDepConfig(
        max_iters=8, streak=1000, checkpoint=str(ckpt), checkpoint_every=2, save=False, device="cpu", **TINY
    )
    says = r"the training loss became nan at step 3: .* the last finite state is in checkpoint .*run.pt \(step 2\)"
    with pytest.raises(TrainingDiverged, match=says):
        train_longdep(cfg)
    saved = load(ckpt, identity=cfg.identity())
    assert saved["step"] == 2 and len(saved["losses"]) == 2
    assert all(bool(torch.isfinite(v).all()) for v in saved["model"].values())


def test_resume_refuses_a_checkpoint_from_another_experiment_or_in_use(tmp_path):
    ckpt = tmp_path / "run.pt"
    train_longdep(LongDepConfig(max_iters=2, checkpoint=str(ckpt), save=False, device="cpu", **TINY))
    other = {**TINY, "hidden": 16}
    with pytest.raises(ValueError, match="hidden"):
        train_longdep(LongDepConfig(max_iters=4, checkpoint=str(ckpt), resume=True, save=False, device="cpu", **other))
    from fpcore.checkpoint import CheckpointBusy
    from tests.test_checkpoint import held_elsewhere

    with held_elsewhere(ckpt), pytest.raises(CheckpointBusy, match="in use"):  # another process trains it now
        train_longdep(LongDepConfig(max_iters=4, checkpoint=str(ckpt), resume=True, save=False, device="cpu", **TINY))


def test_model_reads_the_lookup_inputs_like_dense_one_hots():
    torch.manual_seed(0)
    cfg = LongDepConfig(seq_len=16, hidden=4, layers=2, batch=3, embed=5)
    net = LongDepNet(cfg).double()
    symbols, _ = sign_batch(3, 16, seed=1)
    x = dense_inputs(symbols, dtype=torch.float64) @ net.inp.weight  # the explicit W x_t
    y, _ = net.rnn.sequential(x)
    torch.testing.assert_close(net(symbols), net.head(y[:, -1]).squeeze(-1))


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(model="gru"), "model"),
        (dict(seq_len=1), "seq_len"),
        (dict(seq_len=2**20 + 1), "seq_len"),
        (dict(hidden=0), "hidden"),
        (dict(threads=0), "threads"),
        (dict(lr=0.0), "lr"),
        (dict(init="xavier"), "init"),
        (dict(resume=True), "checkpoint"),
        (dict(clip=float("nan")), "clip"),
        (dict(lr=float("inf")), "lr"),
        (dict(forget_bias=float("nan")), "forget_bias"),
        (dict(max_time_s=-1.0), "max_time_s"),
        (dict(backend="nosuch"), "backend"),
        (dict(device="bogus"), "bogus"),
        (dict(name="../x"), "plain file stem"),
        (dict(seed=-1), "seed"),
    ],
)
def test_bad_config_raises_value_error_before_training(kw, match, monkeypatch):
    monkeypatch.setattr(LongDepNet, "forward", lambda *a: pytest.fail("trained before checking the config"))
    with pytest.raises(ValueError, match=match):
        train_longdep(LongDepConfig(**{**TINY, **kw}))


def test_records_table_lists_recorded_runs(tmp_path):
    train_longdep(LongDepConfig(max_iters=2, results_dir=str(tmp_path), device="cpu", **TINY))
    recs = load_records(tmp_path)
    assert len(recs) == 1 and "gilr-lstm" in records_table(recs) and "1x8" in records_table(recs)


def test_cli_trains_and_bad_arguments_exit_2_with_one_line(tmp_path, capsys):
    rc = cli.main(
        [
            "longdep",
            "--seq-len",
            "32",
            "--hidden",
            "8",
            "--layers",
            "1",
            "--batch",
            "8",
            "--embed",
            "8",
            "--lr",
            "0.03",
            "--max-iters",
            "400",
            "--device",
            "cpu",
            "--no-progress",
            "--threads",
            "1",
            "--results-dir",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "converged after" in out
    (record,) = tmp_path.glob("longdep_gilr-lstm_T32_h8x1_s0_*.json")
    assert f"wrote {record}" in out
    for argv, says in (
        (["longdep", "--seq-len", "0"], "--seq-len"),
        (["longdep", "--model", "gru"], "invalid choice: 'gru'"),
        (["longdep", "--seq-len", str(2**20 + 1)], "--seq-len"),
        (["longdep", "--lr", "-1"], "--lr: must be > 0"),
        (["longdep", "--lr", "nan"], "--lr: must be a finite number"),
        (["longdep", "--clip", "nan"], "--clip: must be a finite number"),
        (["longdep", "--clip", "-1"], "--clip: must be >= 0"),
        (["longdep", "--forget-bias", "inf"], "--forget-bias: must be a finite number"),
        (["longdep", "--max-time", "nan"], "--max-time: must be a finite number"),
        (["longdep", "--seed", "-2"], "--seed: must be >= 0"),
        (["longdep", "--backend", "nosuch"], "invalid choice: 'nosuch'"),
        (["longdep", "--device", "bogus"], "'bogus' is not a device"),
        (["longdep", "--name", "../x"], "plain file stem"),
        (["longdep", "--record", "--results-dir", str(tmp_path)], "does not go with --results-dir"),
    ):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, argv
        assert says in err, (argv, err)


def test_targets_are_read_off_recorded_runs():
    from fpcore.longdep import targets

    def rec(model, T, secs, ok=True):
        return {"model": model, "seq_len": T, "wall_time_s": secs, "converged": ok}

    t = targets(
        [
            rec("gilr-lstm", 8192, 100.0),
            rec("gilr-lstm", 8192, 50.0),
            rec("lstm", 8192, 400.0, ok=False),
            rec("gilr-lstm", 2**20, 700.0),
        ]
    )
    assert t["T8192_lstm_over_gilr_lstm_wall_time"]["value"] == 8.0 and t["T8192_lstm_over_gilr_lstm_wall_time"]["met"]
    assert t["T8192_lstm_over_gilr_lstm_wall_time"]["lstm_converged"] is False
    assert t["T1048576_gilr_lstm_wall_time_s"] == {"value": 700.0, "target": 600.0, "met": False}
    assert targets([rec("lstm", 1024, 1.0)]) == {}


def test_profile_configs_are_valid_and_the_quick_one_is_cpu_sized():
    from fpcore.longdep import paper_configs

    quick, full = paper_configs(quick=True), paper_configs(quick=False)
    assert all(c.validate() for c in quick + full)
    assert len(quick) == 1 and quick[0].seq_len <= 4096 and quick[0].model == "gilr-lstm"
    assert {(c.model, c.seq_len) for c in full} == {
        ("gilr-lstm", 1024),
        ("lstm", 1024),
        ("gilr-lstm", 8192),
        ("lstm", 8192),
        ("gilr-lstm", 2**20),
    }
    assert all((c.hidden, c.layers) == (512, 2) for c in full if c.seq_len <= 8192)  # paper C's size
