"""Checkpoints: a run's resumable state, written so that nothing is lost and nothing wrong is read back.

Every trainer in fpcore (language models: :mod:`fpcore.train`; the long-dependency task:
:mod:`fpcore.longdep`) has the same shape, and any new training loop should take it too:

1. a config dataclass whose ``identity()`` returns the fields that define the experiment (a resume must
   match them) and leaves out the fields of one sitting (budget, paths, progress bar, device);
2. a :class:`Checkpointer` ``(path, identity)``: ``.load()`` gives the saved state (or None: start
   afresh), ``.save(state)`` writes it on the trainer's schedule, atomically;
3. one folder setting for checkpoints, :func:`checkpoint_dir` (``$FPCORE_CHECKPOINT_DIR``, else
   ``checkpoints/`` at the repository root, which git ignores);
4. :func:`check_finite` on every loss: a NaN or inf stops the run with one clear line, and the newest
   checkpoint on disk is the last finite state (a checkpoint holding a non-finite tensor is never written);
   a trainer with a validation perplexity also calls :func:`check_not_diverged` on it, which stops a run
   whose loss grew but stayed finite;
5. a :class:`GracefulInterrupt` around the loop: a first Ctrl-C only asks the loop to stop at its next
   safe point, where it checkpoints and raises KeyboardInterrupt (a second Ctrl-C stops at once).

    ck = Checkpointer(path, cfg.identity())
    saved = ck.load()                     # None, or the verified dict
    ...
    ck.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "rng": rng_state()})

The file (format version 1) is an ordinary ``torch.save`` file of one flat dict: the trainer's keys plus
``format``, ``version``, ``identity``, ``fingerprint`` (:func:`fpcore.results.fingerprint` of the identity)
and ``checksum``, a sha256 over every value in it (tensor bytes included), so ``torch.load`` still opens it
for inspection. Loading checks, in order, and says in one line what failed and what to do: readable (not
empty, truncated or garbage), an fpcore checkpoint of a version this code reads, the checksum (a flipped
bit), the identity (another configuration: the path's spelling plays no part), the keys the trainer
needs, and that every floating-point value is finite. Loading uses ``weights_only=True``: a checkpoint
cannot run code.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from fpcore.files import REPO_ROOT, atomic_write, ensure_dir

__all__ = [
    "FORMAT",
    "VERSION",
    "CheckpointError",
    "CheckpointBusy",
    "TrainingDiverged",
    "Checkpointer",
    "RunLock",
    "checkpoint_dir",
    "checkpoint_path",
    "save",
    "load",
    "check_finite",
    "check_not_diverged",
    "DIVERGED_FACTOR",
    "GracefulInterrupt",
    "rng_state",
    "set_rng_state",
]

FORMAT = "fpcore-checkpoint"
VERSION = 1
_META = ("format", "version", "identity", "fingerprint", "checksum")


class CheckpointError(ValueError):
    """A checkpoint cannot be resumed from; the message names the file, the fault and what to do."""


class CheckpointBusy(CheckpointError):
    """Another process is training the run of this checkpoint now (:class:`RunLock`)."""


class TrainingDiverged(FloatingPointError):
    """A loss or a weight became NaN or inf; the message names where and the last finite checkpoint."""


def checkpoint_dir() -> Path:
    """The one checkpoint folder: ``$FPCORE_CHECKPOINT_DIR``, else ``checkpoints/`` at the repository root."""
    env = os.environ.get("FPCORE_CHECKPOINT_DIR")
    return Path(env).expanduser() if env else REPO_ROOT / "checkpoints"


def checkpoint_path(name: str) -> Path:
    """``<checkpoint_dir()>/<name>.pt`` for a run named ``name`` (a plain file stem)."""
    from fpcore.results import check_name

    return checkpoint_dir() / f"{check_name(name)}.pt"


class RunLock:
    """One process at a time trains the run whose checkpoint is ``path``: it holds ``<path>.lock`` meanwhile.

    Two processes resuming one checkpoint would each train from it and overwrite the other's progress (two
    terminals running one plan, say). ``with RunLock(path):`` around the training raises
    :class:`CheckpointBusy` when another process holds the lock, naming it; ``acquire()`` says the same with a
    bool. The lock is the operating system's (``flock``), so it goes with its process however that ends, a
    crash or SIGKILL included: a stale lock file never blocks a run. ``path`` None, or a system without
    ``fcntl`` (Windows): no lock is taken.
    """

    def __init__(self, path: str | os.PathLike | None):
        self.run = None if path is None else Path(path)
        self.path = None if path is None else Path(f"{path}.lock")
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock; False when another process holds it."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return True
        if self.run is None or self.path is None or self._fd is not None:
            return True
        ensure_dir(self.path.parent, what=f"the folder of {self.run.name}:")
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # else its holder removed it between our open and lock: take the new file
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {os.uname().nodename} {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is None:
            return
        assert self.path is not None
        self.path.unlink(missing_ok=True)  # while still held, so that no one waits on a file that is gone
        os.close(self._fd)
        self._fd = None

    def busy(self) -> CheckpointBusy:
        """The error for a lock another process holds: who holds it, since when, and what to do."""
        assert self.path is not None and self.run is not None
        try:
            pid, host, since = (self.path.read_text().split() + ["?", "?", "?"])[:3]
            holder = f"process {pid} on {host} has trained it since {since}"
        except OSError:
            holder = "another process is training it"
        return CheckpointBusy(
            f"{self.run} is in use: {holder}. Two processes on one run would each overwrite the other's progress: "
            "wait for that one to finish (its record then counts as done), or stop it and run this again"
        )

    def __enter__(self) -> RunLock:
        if not self.acquire():
            raise self.busy()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# -- the checksum: sha256 over every value, in a fixed order ------------------------------------------------------
def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, Mapping):
        h.update(b"{")
        for key in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
            _feed(h, key)
            _feed(h, obj[key])
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[" if isinstance(obj, list) else b"(")
        for item in obj:
            _feed(h, item)
        h.update(b"]")
    elif isinstance(obj, float):
        h.update(b"f" + struct.pack("<d", obj))  # exact, NaN included
    elif obj is None or isinstance(obj, (bool, int, str, bytes)):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    else:
        raise TypeError(f"a checkpoint holds tensors, numbers, strings, lists and dicts, not {type(obj).__name__}")


def _checksum(state: Mapping[str, Any]) -> str:
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != "checksum"})
    return h.hexdigest()


def _non_finite(obj: Any, prefix: str = "") -> str | None:
    """The first place in ``obj`` holding a NaN or inf (``"model.decoder.weight"``), or None."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() or obj.is_complex():
            return None if bool(torch.isfinite(obj).all()) else prefix or "value"
        return None
    if isinstance(obj, float):
        return None if obj == obj and abs(obj) != float("inf") else prefix or "value"
    if isinstance(obj, Mapping):
        items: Any = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return None
    for key, value in items:
        found = _non_finite(value, f"{prefix}.{key}" if prefix else str(key))
        if found:
            return found
    return None


def _canonical(identity: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(identity, sort_keys=True, default=str))


def _differences(saved: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    keys = sorted(set(saved) | set(wanted))
    diffs = [f"{k} {saved.get(k)!r} there, {wanted.get(k)!r} here" for k in keys if saved.get(k) != wanted.get(k)]
    return "; ".join(diffs[:4]) + ("; ..." if len(diffs) > 4 else "")


# -- save and load ---------------------------------------------------------------------------------------------
def save(path: str | os.PathLike, state: Mapping[str, Any], *, identity: Mapping[str, Any]) -> Path:
    """Write ``state`` (a flat dict of the trainer's keys) with its identity and checksum, atomically.

    Refuses (:class:`TrainingDiverged`) a state holding a NaN or inf, so the checkpoint on disk is always
    the last finite state. A full disk raises :class:`fpcore.files.WriteError` and leaves the previous
    checkpoint intact.
    """
    from fpcore.results import fingerprint

    path = Path(path)
    clash = set(state) & set(_META)
    if clash:
        raise ValueError(f"checkpoint keys {sorted(clash)} are reserved for the file format")
    bad = _non_finite(state)
    if bad:
        raise TrainingDiverged(
            f"not writing checkpoint {path}: {bad} holds NaN or inf; the previous checkpoint (if any) is the last "
            "finite state"
        )
    identity = _canonical(identity)
    full = {**state, "format": FORMAT, "version": VERSION, "identity": identity, "fingerprint": fingerprint(identity)}
    full["checksum"] = _checksum(full)
    buffer = io.BytesIO()
    torch.save(full, buffer)
    return atomic_write(path, buffer.getbuffer(), what="checkpoint")


def load(
    path: str | os.PathLike,
    *,
    identity: Mapping[str, Any] | None,
    required: tuple[str, ...] = (),
    legacy_identity: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Read and verify a checkpoint written by :func:`save` (on the CPU); raise :class:`CheckpointError`.

    ``identity``: what the file must have been written for (None: any; to read a finished run's weights).
    ``required``: keys the caller reads.
    ``legacy_identity``: for files written before the format had a version (no checksum to verify):
    how to read their identity from their contents; None refuses them.
    """
    from fpcore.results import fingerprint

    path = Path(path)
    fix = f"delete {path} (or give another checkpoint path) to start afresh"
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a file; {fix}")
    try:
        size = path.stat().st_size
    except OSError as err:
        raise CheckpointError(f"checkpoint {path} cannot be read: {err.strerror or err}") from None
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (a write that never finished?); {fix}")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as err:
        raise CheckpointError(f"checkpoint {path} cannot be read: {err.strerror}") from None
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, IndexError, KeyError) as err:
        raise CheckpointError(
            f"checkpoint {path} is not a readable checkpoint (truncated, or not a torch file: {_reason(err)}); {fix}"
        ) from None
    if not isinstance(saved, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(saved).__name__}, not an fpcore checkpoint; {fix}")
    if "format" not in saved and legacy_identity is not None:  # written before the format had a version
        try:
            have = _canonical(legacy_identity(saved))
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"checkpoint {path} is not an fpcore checkpoint (no {err}); {fix}") from None
    else:
        if saved.get("format") != FORMAT:
            raise CheckpointError(f"checkpoint {path} is not an fpcore checkpoint (no format mark); {fix}")
        version = saved.get("version")
        if not isinstance(version, int) or version > VERSION:
            raise CheckpointError(
                f"checkpoint {path} has format version {version!r}; this fpcore reads versions up to {VERSION}: "
                f"update fpcore, or {fix}"
            )
        if saved.get("checksum") != _checksum(saved):
            raise CheckpointError(
                f"checkpoint {path} is corrupt: its contents do not match its checksum (a flipped bit or an edit); "
                f"restore a good copy, or {fix}"
            )
        stored = saved.get("identity")
        if not isinstance(stored, dict) or saved.get("fingerprint") != fingerprint(stored):
            raise CheckpointError(f"checkpoint {path} has no valid identity; {fix}")
        have = stored
    wanted = _canonical(identity) if identity is not None else have
    if fingerprint(have) != fingerprint(wanted):
        raise CheckpointError(
            f"checkpoint {path} holds a run of another configuration ({_differences(have, wanted)}); "
            f"give this run another checkpoint path, or delete {path} if that run is not wanted"
        )
    missing = [k for k in required if k not in saved]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}; {fix}")
    bad = _non_finite({k: v for k, v in saved.items() if k not in _META})
    if bad:
        raise CheckpointError(f"checkpoint {path} holds NaN or inf in {bad}: it cannot be resumed; {fix}")
    return {k: v for k, v in saved.items() if k not in _META}


def _reason(err: BaseException) -> str:
    """torch's reason for refusing a file, in a few words."""
    text = " ".join(str(err).split())
    if "Weights only load failed" in text:  # torch's unpickler met something that is not plain data
        return "its contents are not plain tensors and numbers"
    if not text:
        return type(err).__name__
    return text if len(text) <= 100 else text[:100].rsplit(" ", 1)[0] + " ..."


class Checkpointer:
    """Where one run keeps its resumable state: ``load()`` it at the start, ``save(state)`` on a schedule.

    ``path`` None: the run keeps no checkpoint (``load`` gives None, ``save`` does nothing). Its folder is
    created now, before any training (a folder that cannot be is a :class:`fpcore.files.WriteError`).
    ``identity``: the config's ``identity()``; ``required``: the keys ``load`` must find.
    """

    def __init__(
        self,
        path: str | os.PathLike | None,
        identity: Mapping[str, Any],
        *,
        required: tuple[str, ...] = ("model",),
        legacy_identity: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None,
    ):
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            ensure_dir(self.path.parent, what=f"the folder of {self.path.name}:")
        self.identity = dict(identity)
        self.required = required
        self.legacy_identity = legacy_identity
        self.last: str | None = None  # what the newest checkpoint on disk holds, for messages

    def load(self) -> dict[str, Any] | None:
        """The saved state, verified; None when there is no checkpoint yet (or no path)."""
        if self.path is None or not (self.path.exists() or self.path.is_symlink()):
            return None
        return load(self.path, identity=self.identity, required=self.required, legacy_identity=self.legacy_identity)

    def save(self, state: Mapping[str, Any], *, label: str | None = None) -> None:
        """Write ``state`` atomically (``label``: where the run is, for messages: "epoch 2, window 40")."""
        if self.path is None:
            return
        save(self.path, state, identity=self.identity)
        self.last = label

    def describe(self) -> str:
        """ "checkpoint ck.pt (epoch 2, window 40)" or a note that none was written, for error messages."""
        if self.path is None:
            return "this run keeps no checkpoint"
        if self.path.exists():
            return f"checkpoint {self.path}" + (f" ({self.last})" if self.last else "")
        return f"no checkpoint was written to {self.path} yet"


def check_finite(value: float, *, what: str, where: str, checkpointer: Checkpointer | None = None) -> None:
    """Raise :class:`TrainingDiverged` when ``value`` (a loss, a gradient norm) is NaN or inf.

    The message says what diverged where, which checkpoint holds the last finite state, and what to try.
    """
    if value == value and abs(value) != float("inf"):
        return
    raise _diverged(f"{what} became {value} at {where}", checkpointer, saved="the last finite state is in {}")


def _diverged(what: str, checkpointer: Checkpointer | None, *, saved: str) -> TrainingDiverged:
    """The error of a diverged run: ``what`` happened, where the newest checkpoint is (``saved`` phrases one
    that exists, ``{}`` standing for it), and what to try."""
    if checkpointer is not None and checkpointer.path is not None and checkpointer.path.exists():
        state = saved.format(checkpointer.describe())
    else:
        state = checkpointer.describe() if checkpointer is not None else "this run keeps no checkpoint"
    return TrainingDiverged(
        f"{what}: training stopped; {state}. Lower the learning rate or clip gradients harder, and train again"
    )


# A model whose validation perplexity is more than this many times the vocabulary size (a uniform guess)
# has diverged: its mean log-loss is more than ln 10 = 2.3 nats above that of knowing nothing. A model at
# its initialisation (small weights) sits near the uniform guess, and training only lowers it.
DIVERGED_FACTOR = 10.0


def check_not_diverged(perplexity: float, vocab: int, *, where: str, checkpointer: Checkpointer | None = None) -> None:
    """Raise :class:`TrainingDiverged` when a finite ``perplexity`` is more than :data:`DIVERGED_FACTOR`
    times ``vocab``: a loss that exploded without reaching inf (a tanh RNN under too large a learning rate
    does this: perplexity 1e10 on 50 characters), which :func:`check_finite` cannot see."""
    if not perplexity > DIVERGED_FACTOR * vocab:
        return
    raise _diverged(
        f"the validation perplexity is {perplexity:.3g} at {where}, more than {DIVERGED_FACTOR:g} times that of a "
        f"uniform guess over the {vocab:,} tokens (the loss exploded)",
        checkpointer,
        saved="{} may hold the diverged model (delete it to start again)",
    )


class GracefulInterrupt:
    """``with GracefulInterrupt(enabled) as stop:`` turns a first Ctrl-C (SIGINT) into ``stop.requested =
    True``, for the loop to check at a point where its state is whole (a window or step boundary): it then
    checkpoints and raises KeyboardInterrupt. A second Ctrl-C stops at once. Only in the main thread, and
    only over Python's default handler (a handler someone else installed is left alone).

    Python runs its signal handlers in the main thread between bytecodes, so during one long C++ call (the
    backward pass of a long sequence: minutes on a CPU) neither Ctrl-C would be seen until the call returns. A
    small thread therefore listens on the signal wake-up file descriptor: it says at once that the run will
    stop after the current step, and on a second Ctrl-C it ends the process (exit 130) if the main thread has
    not stopped by itself within a second. The checkpoint on disk is never half-written (:func:`save` writes
    atomically), so it survives that exit. In a Jupyter kernel, where ending the process would kill the
    kernel, the second Ctrl-C raises KeyboardInterrupt when the call returns instead (``exit_on_second``:
    None decides so; True / False force it).
    """

    def __init__(self, enabled: bool = True, *, exit_on_second: bool | None = None):
        self.enabled, self.requested = enabled, False
        if exit_on_second is None:
            exit_on_second = "ipykernel" not in sys.modules
        self.exit_on_second = exit_on_second
        self._before: Any = None
        self._calls = 0  # calls of the Python handler (signals that arrive during one C call make one call)
        self._seen = 0  # signals read by the listener (one byte each)
        self._lock = threading.Lock()
        self._pipe: tuple[int, int] | None = None
        self._closed = threading.Event()

    def _first(self) -> None:
        with self._lock:
            if self.requested:
                return
            self.requested = True
        # said at once: the step under way may take a while (a long sequence, a first call that compiles)
        print("\nstopping after the current step, to checkpoint (Ctrl-C again: stop at once)", file=sys.stderr)

    def _handle(self, signum, frame) -> None:
        self._calls += 1
        if max(self._calls, self._seen) >= 2:
            raise KeyboardInterrupt
        self._first()

    def _listen(self, fd: int) -> None:
        try:
            self._read(fd)
        finally:
            os.close(fd)  # the read end is the listener's: closed here, never under a read in progress

    def _read(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, 64)
            except OSError:
                return
            if not data or self._closed.is_set():
                return
            for signum in data:
                if signum != signal.SIGINT:
                    continue
                self._seen += 1
                if self._seen == 1:
                    self._first()
                elif self._seen == 2 and self.exit_on_second and not self._closed.wait(1.0):
                    # the main thread is inside a long call: end the process here
                    print("\nstopped at once (the last checkpoint written, if any, is intact)", file=sys.stderr)
                    for stream in (sys.stdout, sys.stderr):
                        try:
                            stream.flush()
                        except (OSError, ValueError):
                            pass
                    os._exit(130)

    def _start_listener(self) -> None:
        try:
            r, w = os.pipe()
        except OSError:
            return
        try:
            os.set_blocking(w, False)
            previous = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        except (OSError, ValueError):  # no wake-up fd on this platform or thread
            previous = None
        if previous != -1:  # none, or someone else's (an event loop): leave it, and do without the listener
            if previous is not None:
                signal.set_wakeup_fd(previous)
            os.close(r)
            os.close(w)
            return
        self._pipe = (r, w)
        threading.Thread(target=self._listen, args=(r,), name="fpcore-ctrl-c", daemon=True).start()

    def __enter__(self) -> GracefulInterrupt:
        main = threading.current_thread() is threading.main_thread()
        if self.enabled and main and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._before = signal.signal(signal.SIGINT, self._handle)
            self._start_listener()
        return self

    def __exit__(self, *exc) -> None:
        self._closed.set()
        if self._pipe is not None:
            signal.set_wakeup_fd(-1)
            os.close(self._pipe[1])  # the listener reads end-of-file, closes its end and ends
            self._pipe = None
        if self._before is not None:
            signal.signal(signal.SIGINT, self._before)
            self._before = None


# -- random-number state: part of every resumable state ---------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """torch's CPU (and every CUDA device's) generator state, for an exact resume."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
