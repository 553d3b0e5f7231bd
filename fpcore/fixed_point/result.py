"""The object every solver returns."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

__all__ = ["FixedPointResult", "DivergenceWarning"]


class DivergenceWarning(RuntimeWarning):
    """A solver did not reach the fixed point it was asked for: its iterates became non-finite or its residuals
    grew (the best iterate was returned), or it ran every iteration and the residual check still fails."""


@dataclass
class FixedPointResult:
    """What :func:`fpcore.fixed_point.solve` found.

    outputs     [B, T, H]  what the torch layer outputs (``h``; for a stack, the last layer's)
    states      [B, T, S]  the packed states (S = H, or 2H for the LSTM's [h, c]; stack: last layer)
    iterations  solver iterations run (stack: summed over layers)
    residuals   one float per iteration: max |S^(k+1) - S^(k)| over batch, time and features
    converged   True when the returned states pass the residual check max |F(S) - S| <= tol * max(1, max |S|)
                (``fp_residual`` below); never from the iteration count alone. False on divergence
    diverged    True when the iterates became non-finite or the residuals grew (see ``message``)
    fp_residual max |F(S) - S| of the returned states (the fixed-point residual; 0 at the exact answer)
    layers      per-layer results for a :class:`~fpcore.cells.CellStack` (empty for one cell)
    info        what the method kept between iterations (damped: ``alphas``, the accepted alpha per
                iteration, 0 for a Jacobi step; the Newton family: ``rejected``, the iterations whose step
                the safeguard replaced by a Jacobi step)
    """

    outputs: Tensor
    states: Tensor
    iterations: int
    residuals: list[float]
    converged: bool
    method: str
    tol: float
    diverged: bool = False
    fp_residual: float = float("nan")
    message: str = ""
    final: Tensor | tuple[Tensor, ...] | None = None  # torch's h_n [L, B, H] (LSTM: (h_n, c_n))
    layers: list[FixedPointResult] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        B, T, H = self.outputs.shape
        last = f"{self.residuals[-1]:.2e}" if self.residuals else "-"
        return (
            f"FixedPointResult(method={self.method!r}, outputs=[{B}, {T}, {H}], iterations={self.iterations}, "
            f"last residual={last}, converged={self.converged}, diverged={self.diverged})"
        )
