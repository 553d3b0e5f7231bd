"""fpcore.stability: norms, certified contraction bounds (paper B's LSTM condition), projections, truncation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fpcore import cells
from fpcore import stability as st

torch.set_default_dtype(torch.float32)


def _scaled(W: torch.Tensor, norm: float) -> torch.Tensor:
    return W * (norm / torch.linalg.matrix_norm(W.double(), ord=2).item())


# -------------------------------------------------------------------------------------------------
# Norms
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(7, 7), (40, 13), (13, 40), (3, 20, 20)])
@pytest.mark.parametrize("seed", [0, 1])
def test_spectral_norm_matches_torch(shape, seed):
    W = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    expected = torch.linalg.matrix_norm(W.double(), ord=2)
    torch.testing.assert_close(st.spectral_norm(W).double(), expected, rtol=1e-6, atol=0)
    power = st.spectral_norm(W, method="power", generator=torch.Generator().manual_seed(seed)).double()
    torch.testing.assert_close(power, expected, rtol=1e-3, atol=0)
    assert bool((power <= expected * (1 + 1e-6)).all()), "power iteration approaches from below"


def test_power_iteration_on_lstm_sized_weights_agrees_with_svd():
    lstm = nn.LSTM(650, 650, num_layers=2, batch_first=True)
    for name in ("weight_hh_l0", "weight_ih_l1"):  # [2600, 650] each; the exact SVD is the slow part
        p = getattr(lstm, name).detach()
        exact, power = torch.linalg.svdvals(p)[0], st.spectral_norm(p, method="power")
        assert abs(power / exact - 1) < 1e-3, name


def test_spectral_norm_rejects_bad_input():
    with pytest.raises(ValueError, match="matrix"):
        st.spectral_norm(torch.ones(3))
    with pytest.raises(ValueError, match="floating-point"):
        st.spectral_norm(torch.ones(3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="'svd' or 'power'"):
        st.spectral_norm(torch.ones(3, 3), method="lanczos")


# -------------------------------------------------------------------------------------------------
# Certified contraction: the bounds really are Lipschitz constants of the step
# -------------------------------------------------------------------------------------------------
def test_rnn_bound_is_the_spectral_norm():
    rnn = nn.RNN(5, 9, batch_first=True)
    assert st.contraction_bound(rnn) == pytest.approx(float(st.spectral_norm(rnn.weight_hh_l0)), rel=1e-6)


def _worst_ratio(cell, states, inputs, norm):
    """max over random pairs of ||f(s) - f(s')|| / ||s - s'|| in the given norm."""
    u = cell.prepare(inputs)  # (N, 1, G)
    s1, s2 = states
    d_out = cell.step(s1, u) - cell.step(s2, u)
    return float((norm(d_out) / norm(s1 - s2)).max())


@torch.no_grad()
def test_lstm_bound_holds_on_random_state_pairs():
    torch.manual_seed(0)
    H, D, N = 12, 6, 4000
    lstm = nn.LSTM(D, H, batch_first=True)
    st.lstm_rescale_(lstm)
    lstm.bias_ih_l0.chunk(4)[1].fill_(-1.0)  # forget gates bounded well below 1
    lstm.bias_hh_l0.zero_()
    cell = cells.from_torch(lstm)
    lam = st.contraction_bound(cell, x_max=1.0)
    assert lam < 1, "these weights are certified stable"
    f_bar = st.gate_upper_bound(
        lstm.weight_hh_l0.chunk(4)[1], lstm.weight_ih_l0.chunk(4)[1], lstm.bias_ih_l0.chunk(4)[1], x_max=1.0
    )
    c_bar = 1 / (1 - f_bar)
    # states inside the invariant set |h| <= 1, |c| <= c_bar; close pairs probe the local constant
    h = torch.rand(N, 1, H) * 2 - 1
    c = (torch.rand(N, 1, H) * 2 - 1) * c_bar
    s1 = torch.cat([h, c], -1)
    s2 = (s1 + 1e-3 * torch.randn_like(s1)).clamp(-1, 1) * torch.cat([torch.ones(H), torch.full((H,), c_bar)])
    x = torch.rand(N, 1, D) * 2 - 1
    norm = lambda s: torch.maximum(s[..., :H].abs().sum(-1), s[..., H:].abs().sum(-1))  # noqa: E731
    assert _worst_ratio(cell, (s1, s2), x, norm) <= lam


@torch.no_grad()
def test_gru_bound_holds_on_random_state_pairs():
    torch.manual_seed(1)
    H, D, N = 10, 4, 4000
    gru = nn.GRU(D, H, batch_first=True)
    gru.weight_hh_l0.mul_(0.1)
    gru.weight_ih_l0.mul_(0.3)
    gru.bias_ih_l0.chunk(3)[1].fill_(-2.0)  # update gate bounded below 1
    cell = cells.from_torch(gru)
    lam = st.contraction_bound(cell, x_max=1.0)
    assert lam < 1
    s1 = torch.rand(N, 1, H) * 2 - 1
    s2 = (s1 + 1e-3 * torch.randn_like(s1)).clamp(-1, 1)
    x = torch.rand(N, 1, D) * 2 - 1
    assert _worst_ratio(cell, (s1, s2), x, lambda s: s.abs().amax(-1)) <= lam


def test_unbounded_inputs_certify_no_gated_model():
    assert st.contraction_bound(nn.LSTM(3, 4)) == float("inf")
    assert st.contraction_bound(nn.GRU(3, 4)) >= 1


# -------------------------------------------------------------------------------------------------
# Projections
# -------------------------------------------------------------------------------------------------
def test_project_spectral_clips_and_is_idempotent():
    W = _scaled(torch.randn(20, 20), 3.0)
    P = st.project_spectral(W, 1.0)
    assert float(st.spectral_norm(P)) == pytest.approx(1.0, rel=1e-5)
    torch.testing.assert_close(st.project_spectral(P, 1.0), P)
    inside = _scaled(torch.randn(20, 20), 0.7)
    assert torch.equal(st.project_spectral(inside, 1.0), inside)  # unchanged, bit for bit
    # only the singular values above the bound move
    s_w, s_p = torch.linalg.svdvals(W.double()), torch.linalg.svdvals(P.double())
    torch.testing.assert_close(s_p, s_w.clamp(max=1.0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="max_norm"):
        st.project_spectral(W, 0.0)


def test_lstm_rescale_gives_the_stated_column_norms():
    lstm = nn.LSTM(30, 40, num_layers=2, batch_first=True)
    with torch.no_grad():
        for p in lstm.parameters():
            p.mul_(20)  # every column well above its target
    st.lstm_rescale_(lstm)
    for layer in range(2):
        W = getattr(lstm, f"weight_hh_l{layer}").detach()
        for block, gate in zip(W.chunk(4), "ifzo"):
            torch.testing.assert_close(block.abs().sum(0), torch.full((40,), st.LSTM_COLUMN_NORMS[gate]))
        U_f = getattr(lstm, f"weight_ih_l{layer}").detach().chunk(4)[1]
        torch.testing.assert_close(U_f.abs().sum(0), torch.full((U_f.shape[1],), 0.25))
    before = [p.detach().clone() for p in lstm.parameters()]
    st.lstm_rescale_(lstm)
    assert all(torch.equal(a, b) for a, b in zip(before, lstm.parameters())), "idempotent"
    st.init_forget_bias_(lstm, 10.0)
    assert float((lstm.bias_ih_l0 + lstm.bias_hh_l0).detach().chunk(4)[1].min()) == 10.0


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_projection_holds_after_every_optimizer_step(kind):
    torch.manual_seed(0)
    model = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[kind](4, 16, batch_first=True)
    opt = torch.optim.SGD(model.parameters(), lr=5.0)  # large steps push the weights out every time
    handle = st.project_after_step(opt, model, max_norm=0.9)

    def check():
        W = model.weight_hh_l0.detach()
        if kind == "lstm":
            for block, gate in zip(W.chunk(4), "ifzo"):
                assert float(block.abs().sum(0).max()) <= st.LSTM_COLUMN_NORMS[gate] * (1 + 1e-5)
        else:
            for block in W.chunk(1 if kind == "rnn" else 3):
                assert float(st.spectral_norm(block)) <= 0.9 * (1 + 1e-5)

    check()  # projected at attach time
    for _ in range(5):
        out = model(torch.randn(3, 7, 4))[0]
        opt.zero_grad()
        (out**2).sum().backward()
        opt.step()
        check()
    handle.remove()
    model.weight_hh_l0.data.mul_(10)
    opt.step()
    assert float(st.spectral_norm(model.weight_hh_l0)) > 1, "removing the hook stops the projection"


# -------------------------------------------------------------------------------------------------
# Data-dependent stability and truncation
# -------------------------------------------------------------------------------------------------
def test_local_contraction_is_the_jacobian_norm_along_the_trajectory():
    torch.manual_seed(0)
    rnn = nn.RNN(3, 6, batch_first=True)
    x = torch.randn(2, 9, 3)
    norms = st.local_contraction(rnn, x)
    assert norms.shape == (2, 9)
    h = rnn(x)[0]
    h_prev = torch.cat([torch.zeros(2, 1, 6), h[:, :-1]], 1)
    J = (1 - h**2)[..., :, None] * rnn.weight_hh_l0.detach()  # diag(tanh') W
    torch.testing.assert_close(norms, torch.linalg.matrix_norm(J, ord=2), rtol=1e-4, atol=1e-5)
    assert bool((norms <= st.contraction_bound(rnn) + 1e-5).all())
    # k steps: the norm of the product of the k Jacobians ending at t
    norms3 = st.local_contraction(rnn, x, k=3)
    assert norms3.shape == (2, 7)
    J_prev = (1 - h_prev**2)[..., :, None] * rnn.weight_hh_l0.detach()
    assert torch.equal(J_prev[:, 1:], J[:, :-1])
    prod = J[:, 2:] @ J[:, 1:-1] @ J[:, :-2]  # d h_t / d h_{t-3}, t = 3..9 (1-based)
    torch.testing.assert_close(norms3, torch.linalg.matrix_norm(prod, ord=2), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="k must be"):
        st.local_contraction(rnn, x, k=10)
    # the matrix-free power iteration (what large models use) agrees with the exact norms
    for k in (1, 3):
        torch.testing.assert_close(
            st.local_contraction(rnn, x, k=k, method="power"),
            st.local_contraction(rnn, x, k=k, method="svd"),
            rtol=1e-3,
            atol=1e-6,
        )


@pytest.mark.parametrize("lam", [0.5, 0.9])
def test_truncation_error_obeys_the_lambda_k_bound(lam):
    torch.manual_seed(0)
    rnn = nn.RNN(4, 16, batch_first=True).double()
    with torch.no_grad():
        rnn.weight_hh_l0.copy_(_scaled(rnn.weight_hh_l0, lam))
    x = torch.randn(3, 40, 4, dtype=torch.double)
    res = st.truncation_errors(rnn, x, ks=range(1, 41))
    bound = lam ** res["k"].double() * res["scale"]
    assert bool((res["error"] <= bound + 1e-12).all())
    assert float(res["error"][-1]) < 1e-12, "k = T is exact"
    # and the truncated model is cells.truncated, paper B's definition
    cell = cells.from_torch(rnn)
    with torch.no_grad():
        k5 = cells.truncated(cell, x, 5)
    assert float((rnn(x)[0].detach() - k5).norm(dim=-1).max()) == pytest.approx(float(res["error"][4]), rel=1e-9)
    # a stack goes through the solver, one layer at a time; a one-layer "stack" must agree with the sweep
    stack = cells.CellStack([cell])
    torch.testing.assert_close(st.truncation_errors(stack, x, ks=[3, 7])["error"], res["error"][[2, 6]])


def test_unstable_rnn_breaks_the_bound():
    torch.manual_seed(0)
    rnn = nn.RNN(4, 16, batch_first=True).double()
    with torch.no_grad():
        rnn.weight_hh_l0.copy_(_scaled(rnn.weight_hh_l0, 3.0))
    res = st.truncation_errors(rnn, torch.randn(3, 40, 4, dtype=torch.double), ks=[5, 10, 20])
    assert float(res["error"][1]) > 0.1, "a non-contractive RNN (||W||_2 = 3) is not approximated by a short window"


# -------------------------------------------------------------------------------------------------
# Paper B's LSTM condition, the norm convention, models with a chosen norm
# -------------------------------------------------------------------------------------------------
def _rescaled_lstm(bias: float, seed: int = 0, D: int = 16, H: int = 32) -> nn.LSTM:
    torch.manual_seed(seed)
    lstm = st.lstm_rescale_(nn.LSTM(D, H, batch_first=True))
    return st.init_forget_bias_(lstm, bias)


def test_the_authors_constants_are_the_condition_at_a_forget_margin_of_0_396():
    c, m = st.LSTM_COLUMN_NORMS, 0.396
    assert c["i"] < m and c["o"] < m and c["z"] <= m / 4 + 1e-12 and c["f"] < m * m
    # and not at a slightly smaller margin: the constants are tight
    assert not (c["z"] <= 0.39 / 4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_column_rescaling_certifies_the_1_norm_but_not_paper_b_rows(seed):
    lstm = _rescaled_lstm(0.0, seed)
    W = lstm.weight_hh_l0.detach()
    for block, gate in zip(W.chunk(4), "ifzo"):
        assert float(block.abs().sum(0).max()) <= st.LSTM_COLUMN_NORMS[gate] * (1 + 1e-6)  # columns: at the target
        assert float(block.abs().sum(1).max()) > st.LSTM_COLUMN_NORMS[gate]  # rows: above it
    ones, rows = st.lstm_condition(lstm, x_max=1.0, norm="1"), st.lstm_condition(lstm, x_max=1.0, norm="inf")
    assert ones.holds and ones.lam < 1
    assert not rows.holds and rows.lam > ones.lam
    assert ones.lam == pytest.approx(st.contraction_bound(lstm, x_max=1.0))


def test_paper_b_condition_implies_lambda_below_one():
    gen = torch.Generator().manual_seed(0)
    held = 0
    for _ in range(300):
        lstm = nn.LSTM(4, 8)
        with torch.no_grad():
            for block in lstm.weight_hh_l0.chunk(4):  # each block at a random induced 1-norm in [0, 0.6)
                block.mul_(float(torch.rand((), generator=gen)) * 0.6 / float(block.abs().sum(0).max()))
            lstm.weight_ih_l0.mul_(0.1)
        st.init_forget_bias_(lstm, float(torch.rand((), generator=gen)) * 5 - 4)
        cond = st.lstm_condition(lstm, x_max=1.0, norm="1")
        held += cond.holds
        if cond.holds:
            assert cond.lam < 1, cond
    assert held > 10, "the condition holds for some of the draws"


@torch.no_grad()
@pytest.mark.parametrize("norm", ["inf", "1"])
def test_lstm_condition_is_a_lipschitz_constant_in_its_norm(norm):
    torch.manual_seed(0)
    H, D, N = 12, 6, 4000
    lstm = nn.LSTM(D, H, batch_first=True)
    lstm.weight_hh_l0.mul_(0.05)
    lstm.weight_ih_l0.mul_(0.3)
    st.init_forget_bias_(lstm, -1.0)
    cond = st.lstm_condition(lstm, x_max=1.0, norm=norm)
    assert cond.lam < 1
    cell = cells.from_torch(lstm)
    c_bar = 1 / (1 - cond.f_bar)
    h = torch.rand(N, 1, H) * 2 - 1
    c = (torch.rand(N, 1, H) * 2 - 1) * c_bar
    s1 = torch.cat([h, c], -1)
    s2 = (s1 + 1e-3 * torch.randn_like(s1)).clamp(-1, 1) * torch.cat([torch.ones(H), torch.full((H,), c_bar)])
    x = torch.rand(N, 1, D) * 2 - 1
    p = 1 if norm == "1" else float("inf")

    def size(s):  # max(||h||_p, ||c||_p) over a packed state
        return torch.maximum(torch.linalg.vector_norm(s[..., :H], p, -1), torch.linalg.vector_norm(s[..., H:], p, -1))

    assert _worst_ratio(cell, (s1, s2), x, size) <= cond.lam


def test_forget_gate_bound_over_a_finite_input_set_is_tighter_and_valid():
    torch.manual_seed(0)
    lstm = _rescaled_lstm(-1.0)
    H = 32
    table = torch.randn(50, 16) * 2  # an "embedding table"
    W_f, U_f = lstm.weight_hh_l0.detach()[H : 2 * H], lstm.weight_ih_l0.detach()[H : 2 * H]
    b_f = (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach()[H : 2 * H]
    by_set = st.gate_upper_bound(W_f, U_f, b_f, inputs=table)
    by_box = st.gate_upper_bound(W_f, U_f, b_f, x_max=float(table.abs().max()))
    assert by_set < by_box
    h = torch.rand(2000, 1, H) * 2 - 1  # any |h| <= 1 ...
    x = table[torch.randint(0, 50, (2000,))][:, None]  # ... and any input from the table
    f = torch.sigmoid(h @ W_f.T + x @ U_f.T + b_f)
    assert float(f.max()) <= by_set
    assert st.gate_upper_bound(W_f, U_f, b_f) == 1.0, "unbounded inputs: no bound"


def test_init_forget_bias_sets_the_sum_and_the_authors_start_is_not_certified():
    lstm = nn.LSTM(4, 8, num_layers=2)
    st.init_forget_bias_(lstm, 20.0)  # the authors' 10 in bias_ih and 10 in bias_hh
    for layer in range(2):
        total = (getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}")).detach()
        assert torch.equal(total.chunk(4)[1], torch.full((8,), 20.0))
        assert torch.equal(getattr(lstm, f"bias_hh_l{layer}").detach().chunk(4)[1], torch.zeros(8))
    one = nn.LSTM(4, 8)
    st.lstm_rescale_(st.init_forget_bias_(one, 20.0))
    cond = st.lstm_condition(one, x_max=1.0, norm="1")
    assert cond.f_bar > 1 - 1e-8 and not cond.holds and cond.lam > 1e6


def test_lstm_condition_rejects_bad_input():
    with pytest.raises(ValueError, match="'inf' or '1'"):
        st.lstm_condition(nn.LSTM(3, 4), norm="2")
    with pytest.raises(ValueError, match="one LSTM layer"):
        st.lstm_condition(nn.GRU(3, 4))
    assert st.lstm_condition(nn.LSTM(3, 4)).lam == float("inf"), "unbounded inputs"


@pytest.mark.parametrize("kind, blocks", [(nn.RNN, 1), (nn.GRU, 3), (nn.LSTM, 4)])
def test_scale_spectral_sets_every_gate_block(kind, blocks):
    torch.manual_seed(0)
    module = kind(5, 7, num_layers=2).double()
    assert st.scale_spectral_(module, 0.7) is module
    for layer in range(2):
        for block in getattr(module, f"weight_hh_l{layer}").detach().chunk(blocks):
            assert float(torch.linalg.matrix_norm(block, ord=2)) == pytest.approx(0.7, rel=1e-9)
    rnn = st.scale_spectral_(nn.RNN(3, 6).double(), 2.5)
    assert st.contraction_bound(rnn) == pytest.approx(2.5, rel=1e-9)
    with pytest.raises(ValueError, match="norm must be > 0"):
        st.scale_spectral_(rnn, 0.0)


def test_project_model_can_leave_the_forget_gate_inputs_free():
    lstm = nn.LSTM(5, 6)
    with torch.no_grad():
        for p in lstm.parameters():
            p.mul_(20)
    U_f = lstm.weight_ih_l0.detach().chunk(4)[1].clone()
    st.project_model_(lstm, input_forget_norm=None)
    assert torch.equal(lstm.weight_ih_l0.detach().chunk(4)[1], U_f), "U_f untouched"
    assert float(lstm.weight_hh_l0.detach().chunk(4)[1].abs().sum(0).max()) <= 0.155 * (1 + 1e-6), "W_f clipped"
    st.project_model_(lstm)
    assert float(lstm.weight_ih_l0.detach().chunk(4)[1].abs().sum(0).max()) <= 0.25 * (1 + 1e-6), "by default U_f too"
