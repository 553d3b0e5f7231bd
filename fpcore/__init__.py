"""fpcore: recurrent networks as fixed points, computed in parallel over the sequence.

The package has one operator at the bottom (the linear scan, :func:`fpcore.linear_scan`), one engine
above it (fixed-point solvers over a step function, :mod:`fpcore.fixed_point`), and models, training
and notebooks above those. See DESIGN.md in the repository for the map.

Importing fpcore is cheap: it compiles and launches nothing, and heavy submodules load on first use.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> "module:attribute", resolved on first access (PEP 562) so `import fpcore` stays light.
_LAZY = {
    "linear_scan": "fpcore.scan:linear_scan",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'fpcore' has no attribute {name!r}")
    module, attr = target.split(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
