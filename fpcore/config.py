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
"""

from __future__ import annotations

import os
import random
from typing import TypeVar

import torch

__all__ = [
    "PROFILES",
    "profile",
    "set_profile",
    "is_full",
    "pick",
    "device",
    "seed_everything",
    "describe",
]

PROFILES = ("quick", "full")
_ENV = "FPCORE_PROFILE"

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


def describe() -> str:
    """One line for the first cell of a notebook: version, profile, device, torch, threads."""
    from fpcore import __version__

    dev = device()
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    return f"fpcore {__version__} | profile {profile()} | device {dev} ({name}) | torch {torch.__version__}"
