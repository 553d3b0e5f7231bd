"""Quasi-Newton (quasi-DEER, Gonzalez et al. 2024): Newton with only the diagonal of the Jacobian.

Linearise f around the current iterate with D_t = diag(df/ds_{t-1}) and solve for the whole step at once:

    d_t = D_t * d_{t-1} + r_t,   d_0 = 0,   r_t = f(s_{t-1}, x_t) - s_t,   S <- S + d

a diagonal linear recurrence: one :func:`fpcore.linear_scan` per iteration, O(T S) work and memory.
Positions t <= k are exact after k iterations (d_{t-1} = 0 there), so it is exact after T iterations.
"""

from __future__ import annotations

from torch import Tensor


def step(ctx, S: Tensor, FS: Tensor):
    from fpcore import linear_scan

    D = ctx.cell.jacobian_diag(ctx.prev(S), ctx.u)  # (B, T, S)
    d = linear_scan(D, ctx.residual(S, FS), backend=ctx.backend)  # (B, T, S)
    return S + d, None
