"""Damped Newton: a trust region on the Jacobian, between Jacobi (alpha = 0) and Newton (alpha = 1).

Each iteration solves the Newton recurrence with the Jacobian shrunk by alpha in [0, 1]:

    d_t = alpha J_t d_{t-1} + r_t,   d_0 = 0,   r = F(S) - S,   S_try = S + d

and accepts S_try when the merit  m(S) = ||F(S) - S||_2^2  (the Levenberg-Marquardt / ELK objective) does
not grow. A rejected trial shrinks the trust region, alpha <- alpha / 4 (as LM raises lambda); an accepted
one widens it, alpha <- min(1, 2 alpha). Below alpha_min = 1e-3 the step is the Jacobi step S <- F(S),
which is always taken.

Why this damping rather than ELK's Kalman smoother. ELK (Gonzalez et al. 2024) minimises
||r_lin(S)||^2 + lambda ||S - S^(k)||^2, a two-sided (smoothing) problem: it needs a parallel Kalman
smoother, and because the smoother looks backwards in time it gives up the causal guarantee that an
iteration makes one more position exact. Shrinking the Jacobian keeps that guarantee for every alpha
(d_{t-1} = 0 at an exact position makes s_t exact), so the damped method, like Jacobi, is exact after at
most T iterations, whatever happens; it reuses Newton's matrix scan unchanged; and the shrunk products
alpha^m J_t...J_{t-m+1} are what explode when Newton diverges, so shrinking alpha attacks the cause
directly. Near the solution the merit falls, alpha returns to 1 and convergence is Newton's.
"""

from __future__ import annotations

import math

from torch import Tensor

from .newton import newton_step

ALPHA_MIN = 1e-3
SHRINK, GROW = 4.0, 2.0


def _merit(S: Tensor, FS: Tensor) -> float:
    m = float(((FS - S).detach() ** 2).sum())
    return m if math.isfinite(m) else math.inf


def step(ctx, S: Tensor, FS: Tensor):
    alpha = ctx.state.setdefault("alpha", 1.0)
    J = ctx.cell.jacobian(ctx.prev(S), ctx.u)  # (B, T, S, S), computed once per iteration
    merit = _merit(S, FS)
    while alpha >= ALPHA_MIN:
        S_try = newton_step(ctx, S, FS, J, alpha)
        FS_try = ctx.F(S_try)
        if _merit(S_try, FS_try) <= merit:
            ctx.state["alpha"] = min(1.0, alpha * GROW)
            ctx.state.setdefault("alphas", []).append(alpha)
            return S_try, FS_try
        alpha /= SHRINK
    ctx.state["alpha"] = ALPHA_MIN
    ctx.state.setdefault("alphas", []).append(0.0)
    return ctx.jacobi_step(S, FS), None  # the Jacobi step: always progress, never divergence
