"""fpcore.fixed_point.solve: every method equals torch.nn; Jacobi's Markov orders; divergence; bad input."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from torch import nn

from fpcore import cells
from fpcore.fixed_point import METHODS, DivergenceWarning, solve

from rnns import torch_rnn

F64 = torch.float64
KINDS = ["tanh", "relu", "gru", "lstm"]


make = functools.partial(torch_rnn, H=6, dtype=torch.float32)


def chaotic_rnn(H=8, D=3, norm=3.0, seed=0, dtype=F64):
    """A tanh RNN with ||W_hh||_2 = norm (3: far outside paper B's stable region ||W|| < 1)."""
    m = make("tanh", D=D, H=H, seed=seed, dtype=dtype)
    with torch.no_grad():
        W = torch.randn(H, H, dtype=dtype)
        m.weight_hh_l0.copy_(norm * W / torch.linalg.matrix_norm(W, 2))
    return m


def h0_for(kind, layers, B, H, dtype=torch.float32):
    h = torch.randn(layers, B, H, dtype=dtype)
    return (h, torch.randn(layers, B, H, dtype=dtype)) if kind == "lstm" else h


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("with_h0", [False, True])
def test_converged_solution_equals_torch_layer(method, kind, layers, with_h0):
    m = make(kind, layers=layers)
    B, T, H = 3, 33, 6
    torch.manual_seed(1)
    x = torch.randn(B, T, 3)
    h0 = h0_for(kind, layers, B, H) if with_h0 else None
    with torch.no_grad():
        y, hn = m(x, h0) if with_h0 else m(x)
        res = solve(cells.from_torch(m), x, h0, method=method, tol=1e-6)
    assert res.converged and not res.diverged
    assert 1 <= res.iterations <= layers * T
    assert len(res.residuals) == res.iterations
    assert res.outputs.shape == (B, T, H)
    assert res.states.shape == (B, T, 2 * H if kind == "lstm" else H)
    torch.testing.assert_close(res.outputs, y, rtol=0, atol=1e-5)
    for got, want in zip(res.final if kind == "lstm" else (res.final,), hn if kind == "lstm" else (hn,)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_jacobi_after_T_iterations_is_exact_for_a_chaotic_rnn():
    m = chaotic_rnn()
    T = 60
    x = torch.randn(2, T, 3, dtype=F64)
    seq = cells.sequential(cells.from_torch(m), x)
    res = solve(cells.from_torch(m), x, method="jacobi", iters=10 * T)  # capped at T
    assert res.iterations == T and res.converged
    torch.testing.assert_close(res.states, seq, rtol=0, atol=1e-12)
    # ...and the system really is chaotic: far from converged a few iterations before T
    early = solve(cells.from_torch(m), x, method="jacobi", iters=T - 10)
    assert (early.states - seq).abs().max() > 1e-2


@pytest.mark.parametrize("kind", ["tanh", "gru", "lstm"])
@pytest.mark.parametrize("method", list(METHODS))
def test_positions_up_to_k_are_exact_after_k_iterations(kind, method):
    m = chaotic_rnn() if (kind == "tanh" and method == "jacobi") else make(kind, dtype=F64)
    cell = cells.from_torch(m)
    T = 25
    x = torch.randn(2, T, 3, dtype=F64)
    seq = cells.sequential(cell, x)
    for k in (1, 4, 9):
        res = solve(cell, x, method=method, iters=k)
        assert res.iterations <= k
        torch.testing.assert_close(res.states[:, :k], seq[:, :k], rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["tanh", "relu", "gru", "lstm"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("with_h0", [False, True])
def test_k_jacobi_iterations_equal_the_k_window_truncated_model(kind, layers, with_h0):
    m = chaotic_rnn() if (kind == "tanh" and layers == 1) else make(kind, layers=layers, dtype=F64)
    cell = cells.from_torch(m)
    B, T = 2, 30
    x = torch.randn(B, T, 3, dtype=F64)
    h0 = h0_for(kind, layers, B, cell.hidden_size if layers > 1 else m.hidden_size, F64) if with_h0 else None
    if with_h0 and layers == 1:
        h0 = tuple(h[0] for h in h0) if kind == "lstm" else h0[0]
    for k in (1, 2, 5, 12):
        res = solve(cell, x, h0, method="jacobi", iters=k)
        ref = cells.truncated(cell, x, k, h0)
        torch.testing.assert_close(res.states, ref, rtol=0, atol=1e-12)
    if kind == "tanh" and layers == 1:  # the chaotic case: the truncation really differs from the full model
        assert (cells.truncated(cell, x, 5, h0) - cells.sequential(cell, x, h0)).abs().max() > 1e-2


def test_jacobi_residuals_are_the_max_abs_change_per_iteration():
    cell = cells.from_torch(make("gru", dtype=F64))
    x = torch.randn(2, 20, 3, dtype=F64)
    res = solve(cell, x, method="jacobi", iters=6)
    for k in range(1, 6):
        a = solve(cell, x, method="jacobi", iters=k).states
        b = solve(cell, x, method="jacobi", iters=k + 1).states
        assert res.residuals[k] == pytest.approx(float((b - a).detach().abs().max()), rel=1e-12, abs=0)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("layers", [1, 2])
def test_callback_sees_every_iterate_of_every_layer(method, layers):
    """callback(k, S) runs after every iteration of every layer, k counting as .residuals does."""
    m = make("gru", layers=layers, dtype=F64)
    cell = cells.from_torch(m)
    x = torch.randn(2, 12, 3, dtype=F64)
    seen = []
    res = solve(cell, x, method=method, callback=lambda k, S: seen.append((k, S.detach().clone())))
    layer_results = res.layers or [res]
    assert [k for k, _ in seen] == list(range(1, res.iterations + 1))
    assert res.iterations == sum(r.iterations for r in layer_results) >= layers
    # the last iterate each layer saw is what that layer returned
    ends = [sum(r.iterations for r in layer_results[: i + 1]) for i in range(layers)]
    for r, end in zip(layer_results, ends):
        torch.testing.assert_close(seen[end - 1][1], r.states, rtol=0, atol=0)


def test_newton_converges_in_few_iterations_on_a_stable_cell():
    cell = cells.from_torch(make("gru", dtype=F64))
    x = torch.randn(2, 200, 3, dtype=F64)
    res = solve(cell, x, method="newton", tol=1e-10)
    assert res.converged and res.iterations < 15
    torch.testing.assert_close(res.states, cells.sequential(cell, x), rtol=0, atol=1e-10)


def test_init_at_the_solution_stops_after_one_iteration():
    cell = cells.from_torch(make("lstm", dtype=F64))
    x = torch.randn(2, 15, 3, dtype=F64)
    seq = cells.sequential(cell, x)
    for method in METHODS:
        res = solve(cell, x, method=method, init=seq, tol=1e-9)
        assert res.iterations == 1 and res.converged and res.residuals[0] < 1e-12


def test_newton_divergence_is_detected_reported_and_rescued_by_damping():
    m = chaotic_rnn()
    cell = cells.from_torch(m)
    T = 200
    x = torch.randn(2, T, 3, dtype=F64)
    seq = cells.sequential(cell, x)
    with pytest.warns(DivergenceWarning, match="newton"):
        res = solve(cell, x, method="newton", safeguard=False)
    assert res.diverged and not res.converged and "best iterate" in res.message
    assert torch.isfinite(res.states).all()  # the best iterate, not the exploded one
    assert res.fp_residual == pytest.approx(float((res.states - _F(cell, x, res.states)).detach().abs().max()))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DivergenceWarning)
        damped = solve(cell, x, method="damped")
        guarded = solve(cell, x, method="newton")  # the safeguard takes Jacobi steps where Newton's explode
    assert damped.converged and not damped.diverged and damped.iterations < T
    torch.testing.assert_close(damped.states, seq, rtol=0, atol=1e-10)
    assert guarded.converged and guarded.info["rejected"] and guarded.iterations < T
    torch.testing.assert_close(guarded.states, seq, rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", list(METHODS))
def test_non_finite_iterates_are_divergence_and_the_hint_names_another_method(method):
    cell = cells.from_torch(make("relu", dtype=F64))
    x = torch.randn(2, 10, 3, dtype=F64)
    x[0, 3, 0] = float("nan")
    with pytest.warns(DivergenceWarning, match="non-finite"):
        res = solve(cell, x, method=method)
    assert res.diverged and not res.converged
    assert f"'{method}'" not in res.message  # never "try jacobi" after jacobi


def unstable_rnn(seed, H=12, D=3, gain=4.0):
    """A float32 tanh RNN with W_hh ~ N(0, gain^2 / H): ||J|| well above 1, so rounding errors grow."""
    torch.manual_seed(seed)
    m = nn.RNN(D, H, batch_first=True)
    with torch.no_grad():
        m.weight_hh_l0.copy_(torch.randn(H, H) * gain / H**0.5)
    return m


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("seed", range(6))
def test_converged_means_the_residual_check_passes_in_float32(method, seed):
    """W_hh ~ N(0, 16/H), H = 12, T = 64, float32, tol 1e-6: damped Newton used to run all T iterations and
    claim convergence by causality with max |F(S) - S| = 1.5e-3 (seed 2) and states off by 0.65."""
    m = unstable_rnn(seed)
    cell = cells.from_torch(m)
    x = torch.randn(2, 64, 3)
    with torch.no_grad():
        res = solve(cell, x, method=method, tol=1e-6)
        fp = float((_F(cell, x, res.states) - res.states).abs().max())
        m64 = nn.RNN(3, 12, batch_first=True).double()
        m64.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
        exact = cells.sequential(cells.from_torch(m64), x.double())
        loop_error = float((cells.sequential(cell, x).double() - exact).abs().max())
    assert res.converged and not res.diverged
    assert fp <= 1e-6 * max(1.0, float(res.states.abs().max())) and fp == pytest.approx(res.fp_residual)
    assert float((res.states.double() - exact).abs().max()) <= 100 * loop_error + 1e-5


class NoisyRNNCell(cells.RNNCell):
    """A tanh RNN step plus 1e-3 of fresh noise per evaluation: no iterate can pass the residual check at
    tol = 1e-6 (an exaggerated model of rounding that a non-contractive cell amplifies)."""

    def step(self, s_prev, u):
        return super().step(s_prev, u) + 1e-3 * torch.randn_like(s_prev)


@pytest.mark.parametrize("method", list(METHODS))
def test_converged_is_never_claimed_from_the_iteration_count_alone(method):
    torch.manual_seed(0)
    m = make("tanh", dtype=F64)
    cell = NoisyRNNCell(m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0)
    x = torch.randn(2, 12, 3, dtype=F64)
    with torch.no_grad(), pytest.warns(DivergenceWarning, match=r"after \d+ iterations, which make every position"):
        # (block Jacobi: blocks shorter than T, since one block is the loop, whose residual is zero by construction)
        res = solve(cell, x, method=method, tol=1e-6, **({"block": 4} if method == "block_jacobi" else {}))
    assert not res.converged and not res.diverged and res.fp_residual > 1e-6


def deer_difficult_gru(seed, T=100):
    """DEER's own test_rnn "difficult" case (github.com/machine-discovery/deer, deer/tests/test_deer.py):
    a GRU with 2 units and 2 inputs in float32, weights U(-1, 1) / sqrt(fan-in) * 100, hidden biases
    U(-1, 1) / sqrt(2), no input bias, x ~ N(0, 1) / 100, h0 ~ N(0, 1), 100 steps (drawn with torch)."""
    g = torch.Generator().manual_seed(seed)
    U = lambda *shape: torch.rand(*shape, generator=g) * 2 - 1  # noqa: E731
    gru = nn.GRU(2, 2, batch_first=True)
    with torch.no_grad():
        gru.weight_ih_l0.copy_(U(6, 2) / 2**0.5 * 100)
        gru.weight_hh_l0.copy_(U(6, 2) / 2**0.5 * 100)
        gru.bias_ih_l0.zero_()
        gru.bias_hh_l0.copy_(U(6) / 2**0.5)
    return gru, torch.randn(1, T, 2, generator=g) / 100, torch.randn(1, 2, generator=g)


@pytest.mark.parametrize("method", ["newton", "quasi_newton", "damped"])
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("with_h0", [True, False])
def test_the_newton_family_converges_on_deers_difficult_gru(method, seed, with_h0):
    """Its Jacobian products overflow float32: plain Newton's first step is non-finite or explodes. The
    start s_0 repeated over t (DEER's) and the safeguard (a Jacobi step instead) make every method converge
    to the loop's answer (within the float32 loop's own error against float64)."""
    gru, x, h0 = deer_difficult_gru(seed)
    h0 = h0 if with_h0 else None
    cell = cells.from_torch(gru)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", DivergenceWarning)
        res = solve(cell, x, h0, method=method)
        loop = cells.sequential(cell, x, h0).double()
        gru.double()
        exact = cells.sequential(cells.from_torch(gru), x.double(), None if h0 is None else h0.double())
    assert res.converged and not res.diverged and res.iterations <= x.shape[1]
    assert float((res.states.double() - exact).abs().max()) <= 10 * float((loop - exact).abs().max()) + 1e-5


@pytest.mark.parametrize("method", list(METHODS))
def test_the_newton_family_starts_from_h0_repeated_and_jacobi_from_zeros(method):
    cell = cells.from_torch(make("gru", dtype=F64))
    x, h0 = torch.randn(2, 9, 3, dtype=F64), torch.randn(2, 6, dtype=F64)
    start = h0[:, None].expand(2, 9, 6) if method in ("quasi_newton", "newton", "damped") else torch.zeros(2, 9, 6)
    for k in (1, 2):
        default = solve(cell, x, h0, method=method, iters=k).states
        given = solve(cell, x, h0, method=method, iters=k, init=start.to(F64)).states
        torch.testing.assert_close(default, given, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
@pytest.mark.parametrize("layers", [1, 2])
def test_h0_of_another_dtype_is_a_clear_error(kind, layers):
    cell = cells.from_torch(make(kind, layers=layers))
    h0 = h0_for(kind, layers, 2, 6, dtype=F64)
    if layers == 1:
        h0 = tuple(h[0] for h in h0) if kind == "lstm" else h0[0]
    with pytest.raises(ValueError, match=r"h0 is torch.float64 but the inputs are torch.float32; convert it"):
        solve(cell, torch.randn(2, 8, 3), h0, method="jacobi")
    with pytest.raises(ValueError, match=r"h0 is torch.float64 but the inputs are torch.float32"):
        cells.sequential(cell, torch.randn(2, 8, 3), h0)


def test_options_are_checked_once_and_frozen():
    from dataclasses import FrozenInstanceError

    from fpcore.fixed_point import SolveOptions

    opts = SolveOptions(method="newton", tol=1e-8)
    with pytest.raises(FrozenInstanceError, match="cannot assign"):
        opts.tol = 1.0
    with pytest.raises(ValueError, match="safeguard must be True or False"):
        SolveOptions(safeguard=1)
    with pytest.raises(ValueError, match="callback must be callable"):
        SolveOptions(callback=3)


def _F(cell, x, S):
    u = cell.prepare(x)
    prev = torch.cat([torch.zeros_like(S[:, :1]), S[:, :-1]], 1)
    return cell.step(prev, u)


def test_grad_none_runs_without_a_graph():
    m = make("gru")
    res = solve(cells.from_torch(m), torch.randn(2, 8, 3), method="jacobi", grad="none")
    assert not res.outputs.requires_grad


@pytest.mark.parametrize(
    "kwargs, says",
    [
        (dict(method="gauss_seidel"), "unknown method 'gauss_seidel'"),
        (dict(method="jacobi", iters=0), "iters must be an int >= 1"),
        (dict(method="jacobi", iters=2.5), "iters must be an int >= 1"),
        (dict(method="jacobi", iters=True), "iters must be an int >= 1"),
        (dict(method="jacobi", tol=-1.0), "tol must be a finite number >= 0"),
        (dict(method="jacobi", tol=float("nan")), "tol must be a finite number >= 0"),
        (dict(method="jacobi", grad="adjoint"), "grad must be one of"),
        (dict(method="jacobi", adjoint="magic"), "adjoint must be one of"),
        (dict(method="jacobi", init=torch.zeros(2, 5, 4)), r"init must be packed states \[B, T, S\]"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, says):
    cell = cells.from_torch(make("gru"))
    with pytest.raises(ValueError, match=says):
        solve(cell, torch.randn(2, 8, 3), **kwargs)


@pytest.mark.parametrize(
    "x, h0, says",
    [
        (torch.randn(8, 3), None, r"batch-first tensor \[B, T, D\]"),
        (torch.randn(2, 8, 5), None, "x has 5 features, the cell expects input_size=3"),
        (torch.randn(2, 0, 3), None, "T >= 1"),
        (torch.randint(0, 3, (2, 8, 3)), None, "floating-point"),
        (torch.randn(2, 8, 3), torch.randn(3, 6), r"h0 must have shape \[B, 6\] = \[2, 6\]"),  # wrong B
        (torch.randn(2, 8, 3), torch.randn(2, 7), r"h0 must have shape .* got \(2, 7\)"),  # wrong H
        (torch.randn(2, 8, 3, dtype=F64), None, "weights are torch.float32"),  # float64 x, float32 weights
    ],
)
def test_bad_shapes_raise_value_error(x, h0, says):
    with pytest.raises(ValueError, match=says):
        solve(cells.from_torch(make("gru")), x, h0, method="jacobi")


def test_stack_h0_and_cell_type_are_checked():
    stack = cells.from_torch(make("lstm", layers=2))
    with pytest.raises(ValueError, match=r"h0 \(packed \[h, c\]\)"):
        solve(stack, torch.randn(2, 8, 3), torch.randn(2, 2, 6), method="jacobi")  # LSTM needs (h0, c0)
    with pytest.raises(ValueError, match="cell must be an fpcore.cells.Cell or CellStack"):
        solve(nn.GRU(3, 6), torch.randn(2, 8, 3))
