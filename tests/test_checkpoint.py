"""Atomic files and checkpoints: nothing half-written, nothing orphaned, nothing wrong read back."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch

from fpcore import checkpoint, files
from fpcore.checkpoint import Checkpointer, CheckpointError, TrainingDiverged

IDENTITY = {"hidden": 8, "lr": 0.5, "method": "bptt"}


def _state(scale: float = 1.0) -> dict:
    gen = torch.Generator().manual_seed(0)
    return {
        "model": {"w": torch.randn(4, 3, generator=gen) * scale, "b": torch.zeros(3)},
        "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 0.5, "params": [0]}]},
        "step": 7,
        "history": [{"epoch": 1, "valid_ppl": 12.5}],
        "carried": (torch.ones(2), None),
    }


# -- one process at a time on a run ------------------------------------------------------------------------------
_HOLD = """
import sys, time
from fpcore.checkpoint import RunLock
print("held" if RunLock(sys.argv[1]).acquire() else "busy", flush=True)
time.sleep(120)
"""


@contextlib.contextmanager
def held_elsewhere(checkpoint_file):
    """Another process holds the run lock of ``checkpoint_file`` (as one training that run would); yields it."""
    child = subprocess.Popen([sys.executable, "-c", _HOLD, str(checkpoint_file)], stdout=subprocess.PIPE)
    try:
        assert _read_until(child.stdout, "held\n") == "held\n"
        yield child
    finally:
        child.kill()  # SIGKILL: nothing of the holder runs on the way out
        child.wait()
        child.stdout.close()


@pytest.mark.skipif(sys.platform == "win32", reason="flock: POSIX only")
def test_one_process_at_a_time_holds_a_run_and_a_killed_holder_blocks_nothing(tmp_path):
    ck = tmp_path / "run.pt"
    with held_elsewhere(ck) as holder:
        assert not checkpoint.RunLock(ck).acquire()
        with pytest.raises(checkpoint.CheckpointBusy, match=rf"run\.pt is in use: process {holder.pid} on \S+ has"):
            with checkpoint.RunLock(ck):
                pass
    assert (tmp_path / "run.pt.lock").exists(), "the killed holder left its file behind..."
    with checkpoint.RunLock(ck):  # ... which blocks nothing: the lock went with its process
        assert not checkpoint.RunLock(ck).acquire(), "a second holder in the same process is refused too"
    assert not (tmp_path / "run.pt.lock").exists(), "a released lock leaves no file"
    assert checkpoint.RunLock(None).acquire(), "no checkpoint, nothing to hold"


# -- atomic writes ---------------------------------------------------------------------------------------------
def test_atomic_write_respects_the_umask_and_leaves_no_temporary(tmp_path):
    old = os.umask(0o022)
    try:
        path = files.atomic_write(tmp_path / "sub" / "x.json", b"{}")
    finally:
        os.umask(old)
    assert path.read_bytes() == b"{}"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # readable by others (mkstemp would give 0600)
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]


def test_a_full_disk_is_one_line_and_the_old_file_survives(tmp_path, monkeypatch):
    path = files.atomic_write(tmp_path / "ck.pt", b"old")

    def full(fh):
        fh.write(b"new, half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(files.WriteError, match="could not write file .*ck.pt: the disk is full") as info:
        files.atomic_write(path, full)
    assert "\n" not in str(info.value) and "intact" in str(info.value)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_a_folder_under_a_regular_file_is_one_line(tmp_path):
    (tmp_path / "blocker").write_text("a file")
    with pytest.raises(files.WriteError, match="one of its parents is a file"):
        files.atomic_write(tmp_path / "blocker" / "sub" / "x.json", b"{}")


def test_a_killed_write_leaves_a_temporary_that_the_next_write_removes(tmp_path):
    target = tmp_path / "ck.pt"
    # a writer killed between creating its temporary file and the rename (SIGKILL: nothing can clean up)
    script = (
        "import os, sys; from fpcore import files\n"
        "files.atomic_write(sys.argv[1], lambda fh: (fh.write(b'half'), fh.flush(), os._exit(9)))\n"
    )
    killed = subprocess.run([sys.executable, "-c", script, str(target)], timeout=120)
    assert killed.returncode == 9
    orphans = files.temporaries(target)
    assert len(orphans) == 1 and not target.exists()
    # a live writer's temporary file is left alone
    live = target.with_name(f".ck.pt.{files._HOST}.{os.getpid()}.0123abcd.tmp")
    live.write_bytes(b"in progress")
    files.atomic_write(target, b"whole")
    assert target.read_bytes() == b"whole"
    assert files.temporaries(target) == [live]
    live.unlink()


def test_clean_stale_keeps_other_hosts_files_for_a_day(tmp_path):
    target = tmp_path / "r.json"
    other = tmp_path / ".r.json.otherhost.1.deadbeef.tmp"
    other.write_text("")
    assert files.clean_stale(target) == [] and other.exists()
    os.utime(other, (0, 0))  # written long ago
    assert files.clean_stale(target) == [other] and not other.exists()


# -- checkpoints -------------------------------------------------------------------------------------------------
def test_save_and_load_round_trip_and_the_file_is_a_plain_torch_file(tmp_path):
    path = checkpoint.save(tmp_path / "ck.pt", _state(), identity=IDENTITY)
    back = checkpoint.load(path, identity=dict(reversed(IDENTITY.items())), required=("model", "step"))
    torch.testing.assert_close(back["model"]["w"], _state()["model"]["w"])
    assert back["step"] == 7 and back["history"] == [{"epoch": 1, "valid_ppl": 12.5}]
    assert back["carried"][1] is None
    raw = torch.load(path, weights_only=True)  # still opens with torch for a look inside
    assert raw["version"] == checkpoint.VERSION and raw["identity"] == IDENTITY and raw["step"] == 7


def test_the_path_spelling_is_not_part_of_the_identity(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Checkpointer("ck.pt", IDENTITY).save(_state())
    for spelling in ("ck.pt", "./ck.pt", str(tmp_path / "ck.pt"), "sub/../ck.pt"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        assert Checkpointer(spelling, IDENTITY).load()["step"] == 7, spelling


def _truncated(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_a_weight_bit(path):
    w = _state()["model"]["w"]
    data = bytearray(path.read_bytes())
    at = bytes(data).find(w.numpy().tobytes())
    assert at > 0
    data[at + 5] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, says",
    [
        (lambda p: p.write_bytes(b""), "is empty"),
        (_truncated, "not a readable checkpoint"),
        (lambda p: p.write_bytes(os.urandom(4096)), "not a readable checkpoint"),
        (lambda p: torch.save({"weights": torch.ones(2)}, p), "not an fpcore checkpoint"),
        (lambda p: torch.save([1, 2], p), "holds a list"),
        (_flip_a_weight_bit, "corrupt: its contents do not match its checksum"),
        (lambda p: (p.unlink(), p.mkdir()), "is a folder"),
    ],
)
def test_a_damaged_checkpoint_is_one_clear_line(tmp_path, damage, says):
    path = checkpoint.save(tmp_path / "ck.pt", _state(), identity=IDENTITY)
    damage(path)
    with pytest.raises(CheckpointError, match=says) as info:
        Checkpointer(path, IDENTITY).load()
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert "delete" in message or "restore" in message  # what to do


def test_wrong_keys_another_configuration_and_a_newer_format_are_refused(tmp_path):
    path = checkpoint.save(tmp_path / "ck.pt", _state(), identity=IDENTITY)
    with pytest.raises(CheckpointError, match="lacks optimizer_v2"):
        checkpoint.load(path, identity=IDENTITY, required=("model", "optimizer_v2"))
    with pytest.raises(CheckpointError, match=r"another configuration \(hidden 8 there, 16 here\)"):
        checkpoint.load(path, identity={**IDENTITY, "hidden": 16})
    raw = torch.load(path, weights_only=True)
    raw["version"] = checkpoint.VERSION + 1
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="format version 2; this fpcore reads versions up to 1"):
        checkpoint.load(path, identity=IDENTITY)


def test_a_non_finite_checkpoint_is_never_written_nor_resumed(tmp_path):
    path = tmp_path / "ck.pt"
    checkpoint.save(path, _state(), identity=IDENTITY)
    bad = _state()
    bad["model"]["w"][1, 2] = float("nan")
    with pytest.raises(TrainingDiverged, match="model.w holds NaN or inf"):
        checkpoint.save(path, bad, identity=IDENTITY)
    assert checkpoint.load(path, identity=IDENTITY)["step"] == 7  # the last finite state is intact
    # a file with a valid checksum over a NaN (written by other code): refused on load
    full = {**bad, "format": checkpoint.FORMAT, "version": 1, "identity": IDENTITY}
    from fpcore.results import fingerprint

    full["fingerprint"] = fingerprint(IDENTITY)
    full["checksum"] = checkpoint._checksum(full)
    torch.save(full, path)
    with pytest.raises(CheckpointError, match="holds NaN or inf in model.w"):
        checkpoint.load(path, identity=IDENTITY)


def test_checkpoints_written_before_the_format_had_a_version_are_read(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({**_state(), "identity": IDENTITY}, path)
    back = checkpoint.load(path, identity=IDENTITY, legacy_identity=lambda saved: saved["identity"])
    assert back["step"] == 7
    with pytest.raises(CheckpointError, match="another configuration"):
        checkpoint.load(path, identity={**IDENTITY, "lr": 1.0}, legacy_identity=lambda saved: saved["identity"])
    with pytest.raises(CheckpointError, match="not an fpcore checkpoint"):
        checkpoint.load(path, identity=IDENTITY)  # without a way to read its identity


def test_check_finite_names_the_place_and_the_last_checkpoint(tmp_path):
    ck = Checkpointer(tmp_path / "ck.pt", IDENTITY)
    checkpoint.check_finite(1.5, what="loss", where="step 3", checkpointer=ck)
    ck.save(_state(), label="step 2")
    with pytest.raises(
        TrainingDiverged,
        match=r"loss became nan at step 3: .*; the last finite state is in checkpoint .*ck.pt \(step 2\)",
    ):
        checkpoint.check_finite(float("nan"), what="loss", where="step 3", checkpointer=ck)


def test_a_finite_perplexity_far_above_a_uniform_guess_is_divergence(tmp_path):
    ck = Checkpointer(tmp_path / "ck.pt", IDENTITY)
    for healthy in (1.0, 50.0, 500.0):  # up to ten times a uniform guess over 50 tokens: not stopped
        checkpoint.check_not_diverged(healthy, 50, where="the end of epoch 1", checkpointer=ck)
    for exploded in (500.001, 2.0e10):
        with pytest.raises(TrainingDiverged, match=r"at the end of epoch 1, more than 10 times .* 50 .*no checkpoint"):
            checkpoint.check_not_diverged(exploded, 50, where="the end of epoch 1", checkpointer=ck)
    ck.save(_state(), label="epoch 1, window 200")
    with pytest.raises(TrainingDiverged, match=r"ck.pt \(epoch 1, window 200\) may hold the diverged model"):
        checkpoint.check_not_diverged(2.0e10, 50, where="the end of epoch 1", checkpointer=ck)


def test_checkpoint_dir_is_one_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("FPCORE_CHECKPOINT_DIR", str(tmp_path))
    assert checkpoint.checkpoint_path("run_1") == tmp_path / "run_1.pt"
    monkeypatch.delenv("FPCORE_CHECKPOINT_DIR")
    assert checkpoint.checkpoint_dir() == files.REPO_ROOT / "checkpoints"
    with pytest.raises(ValueError, match="plain file stem"):
        checkpoint.checkpoint_path("../escape")


# -- Ctrl-C ---------------------------------------------------------------------------------------------------
# A child whose main thread sits in one long call that Python's handlers cannot interrupt, as the backward pass
# of a long sequence does: SIGINT is blocked in the main thread (after the listener thread has started), so the
# signal reaches Python only through the listener. A sleep stands for the call; "ready" is said from another
# thread a second into it, so that no signal arrives while the main thread still runs Python code (where its
# handler would run, rightly, between two bytecodes).
_STUCK = """
import signal, sys, threading, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (a background parent ignores it)
from fpcore.checkpoint import GracefulInterrupt
with GracefulInterrupt(exit_on_second={exit_on_second}) as stop:
    signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGINT}})
    threading.Timer(1.0, lambda: print("ready", flush=True)).start()
    time.sleep(60)
    print("returned", stop.requested, flush=True)
"""


def _stuck_child(exit_on_second: bool) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, "-c", _STUCK.format(exit_on_second=exit_on_second)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert _read_until(child.stdout, "ready\n") == "ready\n"
    return child


def _read_until(stream, text: str, timeout: float = 20.0) -> str:
    """What ``stream`` (a child's binary pipe) says until ``text`` appears, or until ``timeout`` seconds pass."""
    import selectors

    got, deadline = b"", time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        while text.encode() not in got and sel.select(max(0.0, deadline - time.monotonic())):
            chunk = os.read(stream.fileno(), 4096)
            if not chunk:
                break
            got += chunk
    return got.decode()


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX only")
def test_ctrl_c_is_answered_at_once_and_a_second_one_stops_a_long_call():
    child = _stuck_child(exit_on_second=True)
    try:
        child.send_signal(signal.SIGINT)
        said = _read_until(child.stderr, "(Ctrl-C again: stop at once)\n")
        assert said == "\nstopping after the current step, to checkpoint (Ctrl-C again: stop at once)\n"
        assert child.poll() is None  # the first Ctrl-C only asks
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=20) == 130  # not the 60 s of the call
        out, err = child.communicate()
        assert b"returned" not in out and b"stopped at once" in err
    finally:
        child.kill()


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX only")
def test_in_a_kernel_a_second_ctrl_c_does_not_end_the_process():
    child = _stuck_child(exit_on_second=False)
    try:
        child.send_signal(signal.SIGINT)
        assert "stopping after the current step" in _read_until(child.stderr, "stop at once)\n")
        child.send_signal(signal.SIGINT)  # (two sent back to back could merge into one pending signal)
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(timeout=3)  # still in its call: the kernel lives on
    finally:
        child.kill()
        child.wait()


def test_two_quick_ctrl_cs_in_python_code_raise_keyboard_interrupt(capsys, ctrl_c_reaches_python):
    with pytest.raises(KeyboardInterrupt):
        with checkpoint.GracefulInterrupt() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # Python code: the handler runs between bytecodes
                if stop.requested:
                    break
                time.sleep(0.001)
            assert stop.requested
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):
                time.sleep(0.001)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.set_wakeup_fd(-1) == -1  # the wake-up descriptor was given back
    assert capsys.readouterr().err.count("stopping after the current step") == 1
