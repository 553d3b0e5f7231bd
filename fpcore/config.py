"""Profiles, device choice and seeding: the one place that owns these switches.

Profiles
--------
``FPCORE_PROFILE=quick`` (the default, and what CI runs) shrinks corpora slices, widths, steps and
sequence lengths so that every notebook runs in about two minutes on two CPU cores.
``FPCORE_PROFILE=full`` runs the paper-scale configuration (meant for a GPU).

The profile is read from the environment each time it is asked for, so a notebook or a test can
switch it with :func:`set_profile` (which also exports it to child processes).

>>> from fpcore import config
>>> config.pick(quick=64, full=1536)   # doctest: +SKIP
64

Threads
-------
torch's OpenMP threads spin while they wait for each other. On a machine that others share (a
classroom server, a laptop running a training) the waiting threads burn the cores the working ones
need: a loop of small tensor steps ran 13-145x slower on a loaded 2-core machine. With ``OMP_WAIT_POLICY=PASSIVE``
they sleep instead, and a busy neighbour costs only the cores it takes. The variable must be set
before torch is imported, so the places that start kernels set it (:data:`KERNEL_ENV`): the Jupyter
kernel that ``make setup`` installs, ``make test`` (nbval and the JupyterLab tests) and ``python -m
fpcore reproduce``. :func:`set_threads` chooses the thread count (``$FPCORE_THREADS``, read at
import, does the same): one thread is the fairest choice on a crowded server.

"""

from __future__ import annotations

import math
import os
import random
import sys
from typing import TypeVar

import torch

__all__ = [
    "PROFILES",
    "KERNEL_ENV",
    "profile",
    "set_profile",
    "is_full",
    "pick",
    "device",
    "seed_everything",
    "cpu_count",
    "threads_for_load",
    "set_threads",
    "describe",
]

PROFILES = ("quick", "full")
_ENV = "FPCORE_PROFILE"
_THREADS_ENV = "FPCORE_THREADS"
# What every kernel the project starts gets in its environment (unless the user set it): sleeping, not
# spinning, OpenMP threads, so that a notebook on a shared machine slows by the cores others take, no more.
KERNEL_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}

T = TypeVar("T")


def profile() -> str:
    """The active profile, ``"quick"`` or ``"full"`` (from ``$FPCORE_PROFILE``, quick by default)."""
    value = os.environ.get(_ENV, "quick").strip().lower() or "quick"
    if value not in PROFILES:
        raise ValueError(f"{_ENV}={os.environ[_ENV]!r} is not a profile; use one of {', '.join(PROFILES)}")
    return value


def set_profile(name: str) -> str:
    """Switch the profile for this process and the processes it starts; returns the new profile."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; use one of {', '.join(PROFILES)}")
    os.environ[_ENV] = name
    return name


def is_full() -> bool:
    """True in the full (paper-scale) profile."""
    return profile() == "full"


def pick(*, quick: T, full: T) -> T:
    """Return ``quick`` or ``full`` by the active profile: ``steps = pick(quick=200, full=20_000)``."""
    return full if is_full() else quick


def device(prefer: str | torch.device | None = None) -> torch.device:
    """The device to compute on: ``prefer`` if given, else ``$FPCORE_DEVICE``, else CUDA when available.

    Asking for CUDA where there is none raises a ValueError rather than failing later inside a kernel.
    """
    choice = prefer if prefer is not None else os.environ.get("FPCORE_DEVICE")
    if choice is None or str(choice) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(choice)
    except (RuntimeError, TypeError):
        source = "" if prefer is not None else " (from $FPCORE_DEVICE)"
        raise ValueError(f"device {str(choice)!r}{source} is not a device; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(dev)!r} was asked for, but torch sees no CUDA device here")
    return dev


def seed_everything(seed: int = 0, *, deterministic: bool = False) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices); return a CPU ``torch.Generator`` seeded the same.

    ``deterministic=True`` also asks torch for deterministic kernels (slower on GPU; some ops then
    raise instead of running non-deterministically).
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # numpy is a dependency, but seeding must not be what breaks without it
        pass
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return torch.Generator().manual_seed(seed)


def cpu_count() -> int:
    """The cores this process may run on (its affinity mask: containers and ``taskset`` narrow it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def threads_for_load(cores: int | None = None, load: float | None = None) -> int:
    """The threads that leave the busy cores to their owners: ``cores - round(load)``, between 1 and ``cores``.

    ``load`` is the one-minute load average (the processes running or waiting to run), read now if not given.
    """
    cores = cpu_count() if cores is None else cores
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # Windows has no load average
            load = 0.0
    return max(1, min(cores, cores - math.floor(load + 0.5)))


def set_threads(n: int | str | None = None) -> int:
    """Set torch's CPU threads; return the count. ``n``: a positive int, ``"all"`` (one per core) or
    ``"auto"`` (:func:`threads_for_load`: the cores the others leave free); by default ``$FPCORE_THREADS``,
    else ``"auto"``.

    Numba's OpenMP layer resets the count of the OpenMP runtime it shares with torch when it first
    starts, so ``$NUMBA_NUM_THREADS`` is set to the same count if Numba is not loaded yet.
    """
    choice = os.environ.get(_THREADS_ENV, "auto") if n is None else n
    text = str(choice).strip().lower()
    if text == "auto":
        count = threads_for_load()
    elif text == "all":
        count = cpu_count()
    elif text.isdigit() and int(text) > 0:
        count = int(text)
    else:
        raise ValueError(f"threads must be a positive int, 'all' or 'auto', got {choice!r} (from ${_THREADS_ENV}?)")
    torch.set_num_threads(count)
    if "numba" not in sys.modules:
        os.environ["NUMBA_NUM_THREADS"] = str(count)
    return count


def _threads_at_import() -> None:
    """``$FPCORE_THREADS``, when set, chooses the thread count as soon as fpcore.config is imported."""
    if os.environ.get(_THREADS_ENV):
        set_threads()


def describe() -> str:
    """One line for the first cell of a notebook: version, profile, device, torch, threads."""
    from fpcore import __version__

    dev = device()
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    return f"fpcore {__version__} | profile {profile()} | device {dev} ({name}) | torch {torch.__version__}"


_threads_at_import()
