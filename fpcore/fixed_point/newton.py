"""Newton's method on the whole trajectory (DEER, Lim et al. 2024).

Linearise f around the current iterate with the full Jacobian J_t = df(s_{t-1}, x_t)/ds_{t-1} [S, S]:

    d_t = J_t d_{t-1} + r_t,   d_0 = 0,   r_t = f(s_{t-1}, x_t) - s_t,   S <- S + d

a dense linear recurrence: one :func:`fpcore.scan.matrix_scan` per iteration, O(T S^3) work and O(T S^2)
memory. Quadratic convergence near the solution; exact after T iterations (positions t <= k are exact
after k). Far from the solution of an unstable cell the products J_t...J_s explode and Newton diverges:
see :mod:`fpcore.fixed_point.damped`.
"""

from __future__ import annotations

from torch import Tensor


def newton_step(ctx, S: Tensor, FS: Tensor, J: Tensor, alpha: float = 1.0) -> Tensor:
    """S + d with d_t = alpha J_t d_{t-1} + r_t (alpha = 1: Newton; alpha = 0: Jacobi)."""
    from fpcore.scan import matrix_scan

    A = J if alpha == 1.0 else alpha * J  # (B, T, S, S)
    return S + matrix_scan(A, ctx.residual(S, FS))


def step(ctx, S: Tensor, FS: Tensor):
    J = ctx.cell.jacobian(ctx.prev(S), ctx.u)  # (B, T, S, S)
    return newton_step(ctx, S, FS, J), None
