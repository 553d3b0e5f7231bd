"""Fixed-point solvers for recurrent layers: Jacobi, quasi-Newton, Newton (DEER), damped Newton, block Jacobi.

    >>> from torch import nn
    >>> from fpcore import cells, fixed_point
    >>> gru = nn.GRU(8, 16, batch_first=True)
    >>> res = fixed_point.solve(cells.from_torch(gru), x, method="newton")   # doctest: +SKIP
    >>> res.outputs.shape, res.iterations, res.converged                     # doctest: +SKIP

See :func:`solve` for the contract, and each method's module for its mathematics.
"""

from .result import DivergenceWarning, FixedPointResult
from .solve import METHODS, SolveOptions, default_tol, solve

__all__ = ["solve", "SolveOptions", "FixedPointResult", "DivergenceWarning", "METHODS", "default_tol"]
