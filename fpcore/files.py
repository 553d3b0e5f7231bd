"""Files that survive interruption: the one atomic write every record, checkpoint and download goes through.

    atomic_write(path, data)                  # bytes, or a function that writes into a binary file

A file is written to a temporary name beside ``path``, flushed to disk, and renamed over ``path`` in one
step (``os.replace``), so a reader sees the old file or the new one, never half of one. What can still go
wrong, and what happens then:

- an exception (a full disk, Ctrl-C): the temporary file is removed and one :class:`WriteError` line says
  what failed and that the previous file is intact;
- a hard kill (SIGKILL, power loss) between creating the temporary file and the rename: nothing can run,
  so the temporary file stays. Its name says which host and process wrote it
  (``.<name>.<host>.<pid>.<random>.tmp``), and the next write to the same path removes every one whose
  process is no longer alive (:func:`clean_stale`). No orphan outlives the next write.

Files are created with mode 0666 less the umask (0644 under the usual umask 022), like any file a
program writes, so others in a shared folder can read results, checkpoints and cached corpora.

``REPO_ROOT`` (the checkout this package runs from) is defined here, once, for every module that needs it.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["REPO_ROOT", "WriteError", "atomic_write", "clean_stale", "temporaries", "ensure_dir"]

REPO_ROOT = Path(__file__).resolve().parents[1]

_HOST = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname()) or "host"
_STALE_AFTER_S = 24 * 3600  # a temporary file of another host counts as orphaned after a day
# errors that mean the file could not be written (others, from inside a writer function, pass as they are)
_WRITE_ERRORS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EIO,
    errno.ENOENT,
}


class WriteError(OSError):
    """A file could not be written; the message names it, says why, and that the old file is intact."""

    def __str__(self) -> str:  # one line, without the "[Errno 28]" prefix
        return str(self.args[0]) if self.args else "write failed"


def ensure_dir(directory: str | os.PathLike, *, what: str = "folder") -> Path:
    """Create ``directory`` (and its parents) if needed; a clear :class:`WriteError` if it cannot be.

    Used before long work starts, so that a folder under a regular file or without write permission is
    reported in one line before anything is computed.
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise WriteError(f"{what} {directory} cannot be created: a file of that name is in the way") from None
    except NotADirectoryError:
        raise WriteError(f"{what} {directory} cannot be created: one of its parents is a file") from None
    except OSError as err:
        raise WriteError(f"{what} {directory} cannot be created: {err.strerror or err}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise WriteError(f"{what} {directory} is not writable by this user")
    return directory


def _pattern(path: Path) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(path.name)}\.(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>\d+)\.[0-9a-f]{{8}}\.tmp$")


def temporaries(path: str | os.PathLike) -> list[Path]:
    """The temporary files beside ``path`` that writes of ``path`` created (live or orphaned)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = _pattern(path)
    return sorted(p for p in path.parent.iterdir() if pattern.match(p.name))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def clean_stale(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of ``path`` left by killed writes; return what was removed.

    A temporary file is stale when the process that wrote it (same host) is gone, or, for another
    host's file on a shared disk, when it is older than a day. Files of live writers are left alone.
    """
    removed = []
    for tmp in temporaries(path):
        m = _pattern(Path(path)).match(tmp.name)
        assert m is not None
        pid = int(m["pid"])
        if m["host"] == _HOST:
            stale = pid != os.getpid() and not _alive(pid)
        else:
            try:
                stale = time.time() - tmp.stat().st_mtime > _STALE_AFTER_S
            except FileNotFoundError:
                continue
        if stale:
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def atomic_write(
    path: str | os.PathLike,
    data: bytes | bytearray | memoryview | Callable[[BinaryIO], None],
    *,
    check: Callable[[Path], None] | None = None,
    what: str = "file",
) -> Path:
    """Write ``data`` to ``path`` atomically and return ``path``.

    ``data`` is the bytes, or a function that writes them into the open binary file it is given (a
    download streaming in, ``torch.save``). ``check(tmp)``, if given, runs on the complete temporary
    file before the rename and may raise to abandon the write (a download whose sha256 is wrong).
    Raises :class:`WriteError` (one line, naming ``path``) when the disk is full or the folder is not
    writable; whatever ``check`` or ``data`` raise otherwise propagates. In every failure the previous
    ``path`` is untouched and no temporary file is left.
    """
    path = Path(path)
    ensure_dir(path.parent, what=f"the folder of {path.name}:")
    clean_stale(path)
    tmp = path.with_name(f".{path.name}.{_HOST}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        # mode 0o666 filtered by the umask, as for any file a program creates (mkstemp would give 0600)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, WriteError) or err.errno not in _WRITE_ERRORS:
            raise  # not the disk's doing (a network error inside ``data``, say): as it is
        reason = "the disk is full" if err.errno in (errno.ENOSPC, errno.EDQUOT) else (err.strerror or str(err))
        raise WriteError(
            f"could not write {what} {path}: {reason}; the previous {path.name} (if any) is intact"
        ) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (best effort: not every file system lets a folder be synced)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
