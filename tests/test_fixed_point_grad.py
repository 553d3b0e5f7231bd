"""Gradients of fixed-point solutions: implicit (adjoint) = BPTT; unrolled = autograd through the loop."""

from __future__ import annotations

import pytest
import torch

from fpcore import cells
from fpcore.fixed_point import METHODS, solve

from rnns import torch_rnn

F64 = torch.float64


make = torch_rnn


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors, allow_unused=False)


def _inputs(kind, layers, B, T, H, with_h0):
    x = torch.randn(B, T, 3, dtype=F64, requires_grad=True)
    h0 = None
    if with_h0:
        h0 = torch.randn(layers, B, H, dtype=F64, requires_grad=True)
        if kind == "lstm":
            h0 = (h0, torch.randn(layers, B, H, dtype=F64, requires_grad=True))
    return x, h0


def _leaves(m, x, h0):
    hs = [] if h0 is None else (list(h0) if isinstance(h0, tuple) else [h0])
    return [*m.parameters(), x, *hs]


@pytest.mark.parametrize("kind", ["tanh", "gru", "lstm"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("adjoint", ["scan", "jacobi"])
@pytest.mark.parametrize("with_h0", [False, True])
def test_implicit_gradients_equal_bptt_through_the_torch_layer(kind, layers, adjoint, with_h0):
    m = make(kind, layers=layers)
    B, T, H = 2, 21, 5
    x, h0 = _inputs(kind, layers, B, T, H, with_h0)
    w = torch.randn(B, T, H, dtype=F64)
    y, _ = m(x, h0) if with_h0 else m(x)
    want = grads((y * w).sum(), _leaves(m, x, h0))
    cell = cells.from_torch(m)
    h0_cell = h0 if layers > 1 or h0 is None else (tuple(h[0] for h in h0) if kind == "lstm" else h0[0])
    res = solve(cell, x, h0_cell, method="newton", grad="implicit", adjoint=adjoint)
    assert res.converged
    got = grads((res.outputs * w).sum(), _leaves(m, x, h0))
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("method", list(METHODS))
def test_implicit_gradient_does_not_depend_on_the_forward_method(method):
    m = make("gru")
    x = torch.randn(2, 17, 3, dtype=F64, requires_grad=True)
    y, _ = m(x)
    want = grads(y.square().sum(), [m.weight_hh_l0, x])
    res = solve(cells.from_torch(m), x, method=method, grad="implicit", tol=1e-12)
    got = grads(res.outputs.square().sum(), [m.weight_hh_l0, x])
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("kind", ["tanh", "gru", "lstm"])
@pytest.mark.parametrize("k", [1, 3, 7])
def test_unrolled_jacobi_gradients_equal_autograd_through_the_truncated_loop(kind, k):
    """k unrolled Jacobi iterations are the k-window model: their gradients must be that model's."""
    m = make(kind)
    x = torch.randn(2, 16, 3, dtype=F64, requires_grad=True)
    cell = cells.from_torch(m)
    H = m.hidden_size
    w = torch.randn(2, 16, H, dtype=F64)
    ref = cells.truncated(cell, x, k)[..., :H]
    want = grads((ref * w).sum(), [*m.parameters(), x])
    res = solve(cell, x, method="jacobi", iters=k, grad="unrolled")
    got = grads((res.outputs * w).sum(), [*m.parameters(), x])
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def _jacobi_loop(cell, x, k):
    """k Jacobi iterations written out: S <- F(S) with F(S)_t = f(s_{t-1}, x_t), s_0 = 0."""
    u = cell.prepare(x)
    S = torch.zeros(*x.shape[:2], cell.state_size, dtype=x.dtype)
    for _ in range(k):
        S = cell.step(torch.cat([torch.zeros_like(S[:, :1]), S[:, :-1]], 1), u)
    return S


def test_unrolled_jacobi_gradients_equal_autograd_through_the_written_out_loop():
    m = make("lstm", layers=1)
    x = torch.randn(2, 12, 3, dtype=F64, requires_grad=True)
    cell = cells.from_torch(m)
    want = grads(_jacobi_loop(cell, x, 5).sin().sum(), [*m.parameters(), x])
    got = grads(solve(cell, x, method="jacobi", iters=5).states.sin().sum(), [*m.parameters(), x])
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("method", ["quasi_newton", "newton", "damped", "block_jacobi"])
def test_unrolled_gradients_of_a_converged_solve_equal_bptt(method):
    m = make("gru", layers=2)
    x = torch.randn(2, 15, 3, dtype=F64, requires_grad=True)
    y, _ = m(x)
    want = grads(y.square().sum(), [*m.parameters(), x])
    res = solve(cells.from_torch(m), x, method=method, tol=1e-13, grad="unrolled")
    got = grads(res.outputs.square().sum(), [*m.parameters(), x])
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-7, atol=1e-8)


def test_implicit_gradcheck_float64():
    torch.manual_seed(0)
    H, D = 3, 2
    W_ih = torch.randn(3 * H, D, dtype=F64, requires_grad=True)
    W_hh = (0.5 * torch.randn(3 * H, H, dtype=F64)).requires_grad_()
    b = torch.randn(3 * H, dtype=F64, requires_grad=True)
    x = torch.randn(2, 5, D, dtype=F64, requires_grad=True)
    h0 = torch.randn(2, H, dtype=F64, requires_grad=True)

    def f(W_ih, W_hh, b, x, h0):
        cell = cells.GRUCell(W_ih, W_hh, b, None)
        return solve(cell, x, h0, method="newton", grad="implicit", tol=1e-14).outputs

    assert torch.autograd.gradcheck(f, (W_ih, W_hh, b, x, h0))


def test_implicit_gradient_of_an_unconverged_solve_warns():
    m = make("gru")
    x = torch.randn(2, 30, 3, dtype=F64)
    with pytest.warns(UserWarning, match="did not converge"):
        res = solve(cells.from_torch(m), x, method="jacobi", iters=3, grad="implicit")
    res.outputs.sum().backward()
    assert m.weight_hh_l0.grad is not None
