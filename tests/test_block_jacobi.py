"""Block Jacobi: Jacobi at M = 1, the loop at M = T, exact block by block, paper B's truncation in its
first sweep, an exact residual from the block starts alone, the stopping rule that uses it, torch's fused
layer inside the blocks equal to the cell's own step loop, and the rule that chooses M and w."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

from fpcore import cells
from fpcore.fixed_point import block_jacobi, solve

from rnns import torch_rnn

F64 = torch.float64


@pytest.fixture(params=block_jacobi.INNERS)
def inner(request):
    """Every test that takes this runs twice: torch's fused layer inside the blocks, and the cell's step loop."""
    with block_jacobi.inner(request.param):
        yield request.param


make = functools.partial(torch_rnn, H=6)


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
def test_block_1_without_overlap_is_jacobi(kind, inner):
    cell = cells.from_torch(make(kind))
    x = torch.randn(2, 17, 3, dtype=F64)
    for k in (1, 2, 5):
        blocked = solve(cell, x, method="block_jacobi", block=1, overlap=0, iters=k)
        jacobi = solve(cell, x, method="jacobi", iters=k)
        torch.testing.assert_close(blocked.states, jacobi.states, rtol=0, atol=1e-13)
        assert blocked.residuals == pytest.approx(jacobi.residuals, rel=1e-10, abs=1e-14)


@pytest.mark.parametrize("kind", ["tanh", "lstm"])
def test_one_block_is_the_step_loop(kind, inner):
    cell = cells.from_torch(make(kind))
    x = torch.randn(2, 23, 3, dtype=F64)
    res = solve(cell, x, method="block_jacobi", block=23)
    assert res.info["inner"] == inner
    assert res.iterations == 1 and res.converged
    # the loop is F's own step: exact; torch's fused layer sums in another order: rounding
    assert res.fp_residual == 0.0 if inner == "loop" else res.fp_residual <= 1e-13
    torch.testing.assert_close(res.states, cells.sequential(cell, x), rtol=0, atol=1e-13)


@pytest.mark.parametrize("T, L, w", [(60, 8, 0), (60, 8, 3), (61, 8, 8), (7, 3, 1)])
def test_block_b_is_exact_after_b_plus_1_sweeps_even_when_chaotic(T, L, w, inner):
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
def test_the_first_sweep_from_zero_is_the_truncated_model(w, inner):
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
def test_residuals_and_fixed_point_residual_are_exact(kind, T, L, inner):
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
    M = round(math.sqrt(4 * 4096 * block_jacobi.OVERLAP / block_jacobi.KAPPA["cpu"]))  # the rule: sqrt(B T w / kappa)
    assert res.info == {"block": M, "overlap": block_jacobi.OVERLAP, "inner": "torch.nn"}
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
    assert res.info == {"block": 10, "overlap": 10, "inner": "torch.nn"} and res.iterations == 1
    stack = cells.from_torch(nn.GRU(3, 6, num_layers=2, batch_first=True).to(F64))
    res = solve(stack, x, method="block_jacobi", block=4, overlap=1)
    assert res.info == {"block": 4, "overlap": 1, "inner": "torch.nn"} and res.converged


# -- torch's fused layer inside the blocks ----------------------------------------------------------------
@pytest.mark.parametrize("kind", ["tanh", "gru", "lstm"])
@pytest.mark.parametrize("T, M, w", [(37, 8, 0), (37, 8, 3), (37, 8, 8), (40, 5, 2), (37, 37, 4), (9, 1, 0)])
def test_the_fused_layer_makes_the_same_iterates_as_the_step_loop(kind, T, M, w):
    """Sweep by sweep: the same states (h and, for the LSTM, c), changes and fixed-point residuals."""
    cell = cells.from_torch(chaotic_rnn() if kind == "tanh" else make(kind))
    x = torch.randn(3, T, 3, dtype=F64)
    h0 = torch.randn(3, cell.state_size, dtype=F64)
    for k in (1, 2, 3):
        fused = solve(cell, x, h0, method="block_jacobi", block=M, overlap=w, iters=k, tol=0.0)
        with block_jacobi.inner("loop"):
            loop = solve(cell, x, h0, method="block_jacobi", block=M, overlap=w, iters=k, tol=0.0)
        assert fused.info["inner"] == "torch.nn" and loop.info["inner"] == "loop"
        torch.testing.assert_close(fused.states, loop.states, rtol=0, atol=1e-12)
        assert fused.residuals == pytest.approx(loop.residuals, rel=1e-9, abs=1e-13)
        assert fused.fp_residual == pytest.approx(loop.fp_residual, rel=1e-9, abs=1e-13)


@pytest.mark.parametrize("kind", ["tanh", "gru", "lstm"])
def test_the_fused_path_equals_torch_nn_in_float32(kind):
    torch.manual_seed(1)
    m = {"tanh": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[kind](8, 16, batch_first=True)
    x = torch.randn(4, 300, 8)
    with torch.no_grad():
        y, hn = m(x)
        res = solve(cells.from_torch(m), x, method="block_jacobi", block=32, overlap=8, tol=1e-6)
    assert res.info["inner"] == "torch.nn" and res.converged
    assert (res.outputs - y).abs().max() < 1e-5
    final = res.final if kind == "lstm" else (res.final,)
    for mine, theirs in zip(final, hn if kind == "lstm" else (hn,)):
        assert (mine - theirs).abs().max() < 1e-5


@pytest.mark.parametrize("kind", ["tanh", "gru", "lstm"])
def test_gradients_through_the_fused_layer_equal_the_step_loops(kind):
    m = make(kind, H=5)
    x = torch.randn(2, 23, 3, dtype=F64, requires_grad=True)

    def grads(how):
        with block_jacobi.inner(how):
            res = solve(cells.from_torch(m), x, method="block_jacobi", block=6, overlap=2, iters=2)
        return torch.autograd.grad((res.outputs**2).sum(), [x, *m.parameters()])

    for fused, loop in zip(grads("torch.nn"), grads("loop")):
        torch.testing.assert_close(fused, loop, rtol=1e-10, atol=1e-12)


def test_cells_that_torch_has_no_layer_for_run_the_step_loop():
    class Scaled(cells.GRUCell):  # a subclass may change the step: torch's GRU would compute something else
        def step(self, s_prev, u):
            return 0.5 * super().step(s_prev, u)

    m = make("gru")
    cell = Scaled(m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0)
    x = torch.randn(2, 20, 3, dtype=F64)
    res = solve(cell, x, method="block_jacobi", block=5, overlap=2)
    assert res.info["inner"] == "loop"
    torch.testing.assert_close(res.states, cells.sequential(cell, x), rtol=0, atol=1e-12)
    half = solve(cells.from_torch(make("gru", dtype=torch.bfloat16)), x.bfloat16(), method="block_jacobi", iters=1)
    assert half.info["inner"] == "loop"  # torch's CPU layers take no half types
    with pytest.raises(ValueError, match="inner must be one of"):
        with block_jacobi.inner("cudnn"):
            pass


@pytest.mark.parametrize("kind", ["tanh", "gru", "lstm"])
def test_to_torch_inverts_from_torch(kind):
    m = make(kind)
    back = cells.to_torch(cells.from_torch(m))
    assert type(back) is type(m) and back.batch_first
    for name, p in m.named_parameters():
        torch.testing.assert_close(getattr(back, name), p, rtol=0, atol=0)
    x = torch.randn(2, 9, 3, dtype=F64)
    torch.testing.assert_close(back(x)[0], m(x)[0], rtol=0, atol=1e-14)
    relu = nn.RNN(3, 4, nonlinearity="relu", bias=False)
    assert cells.to_torch(cells.from_torch(relu)).nonlinearity == "relu"
    with pytest.raises(ValueError, match="to_torch converts"):
        cells.to_torch(type("Mine", (cells.GRUCell,), {})(m.weight_ih_l0, m.weight_hh_l0))


# -- the rule for M and w --------------------------------------------------------------------------------
def test_the_rule_balances_depth_and_overlap_work():
    """M* = sqrt(B T w / kappa) minimises alpha (M + w) + beta B T (1 + w / M) for kappa = alpha / beta."""
    B, T, w = 16, 16384, 64
    for device in ("cpu", "cuda"):
        kappa = block_jacobi.KAPPA[device]
        M, w_ = block_jacobi.choose(T, B, device)
        assert w_ == block_jacobi.OVERLAP == w and M == round(math.sqrt(B * T * w / kappa))
        cost = lambda m, kappa=kappa: kappa * (m + w) + B * T * (1 + w / m)  # noqa: E731  (in units of beta)
        assert all(cost(M) <= cost(m) for m in range(w, T + 1, 7))
    assert block_jacobi.choose(T, B, "cuda")[0] < block_jacobi.choose(T, B, "cpu")[0]  # latency-bound: shorter
    assert block_jacobi.choose(50, 1, "cpu") == (50, 50)  # M <= T, w <= M
    assert block_jacobi.choose(10**6, 16, "cuda", overlap=0)[0] >= 1
    assert block_jacobi.choose(1000, 16, "cpu", block=7, overlap=3) == (7, 3)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["tanh", "gru", "lstm"])
def test_cudnn_inside_the_blocks_matches_the_step_loop_and_torch_nn(kind):
    torch.manual_seed(2)
    m = {"tanh": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[kind](8, 32, batch_first=True).cuda()
    x = torch.randn(4, 5000, 8, device="cuda")
    with torch.no_grad():
        y, _ = m(x)
        fused = solve(cells.from_torch(m), x, method="block_jacobi", tol=1e-6)
        with block_jacobi.inner("loop"):
            loop = solve(cells.from_torch(m), x, method="block_jacobi", tol=1e-6)
    assert fused.info["inner"] == "torch.nn" and fused.converged and loop.converged
    assert fused.info["block"] == block_jacobi.choose(5000, 4, "cuda")[0]
    assert (fused.outputs - y).abs().max() < 1e-4 and (fused.outputs - loop.outputs).abs().max() < 1e-4
