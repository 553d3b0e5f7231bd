"""Implicit gradients of a converged fixed point (DEER's adjoint; paper A's adjoint recursion).

At the fixed point S* = F(S*), with F(S)_t = f(s_{t-1}, x_t; theta), the implicit function theorem gives
dL/dtheta = g^T dF/dtheta where the adjoint g solves  g = dL/dS + (dF/dS)^T g,  i.e. per position

    g_t = dL/ds_t + J_{t+1}^T g_{t+1},   g_T = dL/ds_T,        J_t = df(s_{t-1}, x_t)/ds_{t-1}

a linear recurrence run backwards in time. We build it into autograd like this: the engine recomputes one
differentiable application S = F(S*) (same value as S*), and :class:`ImplicitAdjoint` is the identity on S
whose backward replaces the incoming dL/dS by the adjoint g. Backpropagating g through that one
application of F then yields g^T dF/dtheta, g^T dF/dx and (through s_0) dL/dh_0 = J_1^T g_1. Nothing of
the solver's iterations is stored.

Two adjoint solvers:
  "scan"    the full Jacobians, and one dense reverse linear recurrence (:func:`fpcore.scan.matrix_scan`
            on the time-reversed, transposed Jacobians): exact, O(T S^2) memory.
  "jacobi"  g <- dL/dS + (dF/dS)^T g by vector-Jacobian products (paper A): O(T S) memory, exact after T
            iterations, and for a contractive cell the error falls like lambda^k; stops at ``tol``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["ImplicitAdjoint", "adjoint_scan", "adjoint_jacobi"]


def adjoint_scan(J: Tensor, grad: Tensor) -> Tensor:
    """Solve g_t = grad_t + J_{t+1}^T g_{t+1} (g_T = grad_T). J: [B, T, S, S], grad: [B, T, S] -> [B, T, S]."""
    from fpcore.scan import matrix_scan

    # Reverse time, u = T+1-t:  gr_u = grad_{T+1-u} + J_{T+2-u}^T gr_{u-1},  gr_0 = 0, so the coefficient
    # at u = 1 is irrelevant (zero) and at u >= 2 it is J^T of positions T..2.
    Jt = J.transpose(-1, -2)  # (B, T, S, S)
    A = torch.cat([torch.zeros_like(Jt[:, :1]), Jt[:, 1:].flip(1)], dim=1)  # (B, T, S, S)
    return matrix_scan(A, grad.flip(1)).flip(1)


def adjoint_jacobi(F, S_star: Tensor, grad: Tensor, tol: float, max_iters: int) -> Tensor:
    """Solve g = grad + (dF/dS)^T g by Jacobi iteration with vector-Jacobian products through ``F``."""
    with torch.enable_grad():
        S = S_star.detach().requires_grad_(True)
        FS = F(S)
        g = grad
        for _ in range(max_iters):
            (vjp,) = torch.autograd.grad(FS, S, g, retain_graph=True)
            g_new = grad + vjp
            change = float((g_new - g).detach().abs().max())
            g = g_new
            if not change > tol:  # also stops on nan (reported by the caller's gradients)
                break
    return g


class ImplicitAdjoint(torch.autograd.Function):
    """Identity on S = F(S*) in forward; backward returns the adjoint g instead of dL/dS (see module doc).

    forward(S, ctx_args): S [B, T, S] -> S. ``solver`` is a callable grad -> g built by the engine.
    """

    @staticmethod
    def forward(ctx, S: Tensor, solver) -> Tensor:
        ctx.solver = solver
        return S.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        return ctx.solver(grad), None
