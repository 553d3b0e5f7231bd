"""Block Jacobi: Jacobi at L = 1, the loop at L = T, exact block by block, paper B's truncation in its
first sweep, an exact residual from the block starts alone, and the stopping rule that uses it."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fpcore import cells
from fpcore.fixed_point import solve

F64 = torch.float64


def make(kind, D=3, H=6, seed=0, dtype=F64):
    torch.manual_seed(seed)
    return {"tanh": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[kind](D, H, batch_first=True).to(dtype)


def chaotic_rnn(H=8, D=3, norm=3.0, seed=0):
    m = make("tanh", D=D, H=H, seed=seed)
    with torch.no_grad():
        W = torch.randn(H, H, dtype=F64)
        m.weight_hh_l0.copy_(norm * W / torch.linalg.matrix_norm(W, 2))
    return m


def full_residual(cell, x, S):
    """max |F(S) - S| evaluated at every position (what block Jacobi measures at block starts only)."""
    u = cell.prepare(x)
    prev = torch.cat([cell.initial_state(None, x.shape[0], dtype=S.dtype)[:, None], S[:, :-1]], dim=1)
    return float((cell.step(prev, u) - S).detach().abs().max())


@pytest.mark.parametrize("kind", ["tanh", "gru", "lstm"])
def test_block_1_without_overlap_is_jacobi(kind):
    cell = cells.from_torch(make(kind))
    x = torch.randn(2, 17, 3, dtype=F64)
    for k in (1, 2, 5):
        blocked = solve(cell, x, method="block_jacobi", block=1, overlap=0, iters=k)
        jacobi = solve(cell, x, method="jacobi", iters=k)
        torch.testing.assert_close(blocked.states, jacobi.states, rtol=0, atol=1e-13)
        assert blocked.residuals == pytest.approx(jacobi.residuals, rel=1e-10, abs=1e-14)


@pytest.mark.parametrize("kind", ["tanh", "lstm"])
def test_one_block_is_the_step_loop(kind):
    cell = cells.from_torch(make(kind))
    x = torch.randn(2, 23, 3, dtype=F64)
    res = solve(cell, x, method="block_jacobi", block=23)
    assert res.iterations == 1 and res.converged and res.fp_residual == 0.0
    torch.testing.assert_close(res.states, cells.sequential(cell, x), rtol=0, atol=1e-13)


@pytest.mark.parametrize("T, L, w", [(60, 8, 0), (60, 8, 3), (61, 8, 8), (7, 3, 1)])
def test_block_b_is_exact_after_b_plus_1_sweeps_even_when_chaotic(T, L, w):
    cell = cells.from_torch(chaotic_rnn())
    x = torch.randn(2, T, 3, dtype=F64)
    seq = cells.sequential(cell, x)
    nb = math.ceil(T / L)
    for k in range(1, nb):
        res = solve(cell, x, method="block_jacobi", block=L, overlap=w, iters=k)
        torch.testing.assert_close(res.states[:, : k * L], seq[:, : k * L], rtol=0, atol=1e-12)
    res = solve(cell, x, method="block_jacobi", block=L, overlap=w, iters=10 * T)  # capped at nb sweeps
    assert res.iterations <= nb and res.converged and not res.diverged
    torch.testing.assert_close(res.states, seq, rtol=0, atol=1e-12)
    if T >= 60 and w < L:  # chaotic: a sweep short of the end, the last block is still far off
        # (with w = L a warm-up spans the whole block before, so each sweep makes two blocks exact)
        early = solve(cell, x, method="block_jacobi", block=L, overlap=w, iters=nb - 1)
        assert (early.states - seq).abs().max() > 1e-2


@pytest.mark.parametrize("w", [0, 2, 5])
def test_the_first_sweep_from_zero_is_the_truncated_model(w):
    """Position bL + j (block b >= 1) sees its last w + j + 1 inputs from a zero state: paper B's model."""
    cell = cells.from_torch(make("gru"))
    T, L = 40, 8
    x = torch.randn(2, T, 3, dtype=F64)
    res = solve(cell, x, method="block_jacobi", block=L, overlap=w, iters=1)
    seq = cells.sequential(cell, x)
    torch.testing.assert_close(res.states[:, :L], seq[:, :L], rtol=0, atol=1e-13)  # block 0 starts at h_0
    for j in range(L):
        trunc = cells.truncated(cell, x, w + j + 1)
        torch.testing.assert_close(res.states[:, L + j :: L], trunc[:, L + j :: L], rtol=0, atol=1e-13)


@pytest.mark.parametrize("kind, T, L", [("gru", 50, 7), ("lstm", 48, 8), ("tanh", 30, 4)])
def test_residuals_and_fixed_point_residual_are_exact(kind, T, L):
    """The recorded change is max |S^(k) - S^(k-1)| over the sequence (padding excluded), and the residual
    measured at block starts equals max |F(S) - S| over every position."""
    cell = cells.from_torch(chaotic_rnn() if kind == "tanh" else make(kind))
    x = torch.randn(3, T, 3, dtype=F64)
    prev = torch.zeros(3, T, cell.state_size, dtype=F64)
    for k in range(1, 4):
        res = solve(cell, x, method="block_jacobi", block=L, overlap=2, iters=k, tol=0.0)
        assert res.residuals[-1] == pytest.approx(float((res.states - prev).detach().abs().max()), rel=1e-12, abs=0)
        assert res.fp_residual == pytest.approx(full_residual(cell, x, res.states), rel=1e-9, abs=1e-15)
        prev = res.states.detach()


def test_a_stable_cell_converges_in_one_or_two_sweeps_and_stops_on_the_residual():
    torch.manual_seed(3)
    gru = nn.GRU(8, 16, batch_first=True)
    with torch.no_grad():
        W = gru.weight_hh_l0
        for i in range(3):  # every gate block to spectral norm 0.5: a clearly stable cell
            W[16 * i : 16 * (i + 1)] *= 0.5 / torch.linalg.matrix_norm(W[16 * i : 16 * (i + 1)], 2)
    cell = cells.from_torch(gru)
    x = torch.randn(4, 4096, 8)
    with torch.no_grad():
        y, _ = gru(x)
        res = solve(cell, x, method="block_jacobi", tol=1e-5)
    assert res.info == {"block": 64, "overlap": 16}
    assert res.converged and res.iterations <= 2 and res.fp_residual <= 1e-5
    assert (res.outputs - y).abs().max() < 1e-4
    # the change between sweeps was still large: the residual, not the change, stopped it
    assert res.residuals[-1] > 1e-5


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(method="block_jacobi", block=0),
        dict(method="block_jacobi", block=2.5),
        dict(method="block_jacobi", block=True),
        dict(method="block_jacobi", overlap=-1),
        dict(method="jacobi", block=4),
        dict(method="newton", overlap=2),
    ],
)
def test_bad_block_settings_raise_value_error(kwargs):
    with pytest.raises(ValueError, match="block|overlap"):
        solve(cells.from_torch(make("gru")), torch.randn(2, 8, 3, dtype=F64), **kwargs)


def test_block_and_overlap_are_capped_and_recorded():
    cell = cells.from_torch(make("gru"))
    x = torch.randn(2, 10, 3, dtype=F64)
    res = solve(cell, x, method="block_jacobi", block=100, overlap=50)
    assert res.info == {"block": 10, "overlap": 10} and res.iterations == 1
    stack = cells.from_torch(nn.GRU(3, 6, num_layers=2, batch_first=True).to(F64))
    res = solve(stack, x, method="block_jacobi", block=4, overlap=1)
    assert res.info == {"block": 4, "overlap": 1} and res.converged
