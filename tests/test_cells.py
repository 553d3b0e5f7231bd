"""fpcore.cells: step functions equal torch.nn, closed-form Jacobians equal torch.func, references."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fpcore import cells
from fpcore.cells import jacobian_autograd

from rnns import torch_rnn

F64 = torch.float64


make = torch_rnn


def torch_h0(kind, layers, B, H, dtype=F64):
    h = torch.randn(layers, B, H, dtype=dtype)
    return (h, torch.randn(layers, B, H, dtype=dtype)) if kind == "lstm" else h


@pytest.mark.parametrize("kind", ["tanh", "relu", "gru", "lstm"])
@pytest.mark.parametrize("bias", [True, False])
def test_closed_form_jacobians_equal_torch_func(kind, bias):
    cell = cells.from_torch(make(kind, bias=bias))
    B, T = 2, 7
    x = torch.randn(B, T, 3, dtype=F64)
    u = cell.prepare(x)
    s = torch.randn(B, T, cell.state_size, dtype=F64)
    J_ref = jacobian_autograd(cell, s, u)
    assert J_ref.shape == (B, T, cell.state_size, cell.state_size)
    torch.testing.assert_close(cell.jacobian(s, u), J_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        cell.jacobian_diag(s, u), torch.diagonal(J_ref, dim1=-2, dim2=-1), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("kind", ["tanh", "relu", "gru", "lstm"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("with_h0", [False, True])
def test_sequential_equals_torch(kind, layers, with_h0):
    m = make(kind, layers=layers)
    B, T, H = 3, 11, 5
    x = torch.randn(B, T, 3, dtype=F64)
    h0 = torch_h0(kind, layers, B, H) if with_h0 else None
    y, _ = m(x, h0) if with_h0 else m(x)
    cell = cells.from_torch(m)
    assert isinstance(cell, cells.CellStack) == (layers > 1)
    if layers == 1 and with_h0:  # a single cell takes [B, H] (or [1, B, H]) like the torch layout
        h0 = tuple(h[0] for h in h0) if kind == "lstm" else h0[0]
    S = cells.sequential(cell, x, h0)
    torch.testing.assert_close(S[..., :H], y, rtol=0, atol=1e-12)


def test_step_applies_to_all_positions_and_packs_lstm_state():
    cell = cells.from_torch(make("lstm"))
    x = torch.randn(2, 6, 3, dtype=F64)
    s_prev = torch.randn(2, 6, 10, dtype=F64)
    out = cell(s_prev, x)  # (B, T, 2H)
    assert out.shape == (2, 6, 10)
    ref = nn.LSTMCell(3, 5).to(F64)
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        getattr(ref, name).data.copy_(getattr(cell, name))
    h, c = ref(x[:, 2], (s_prev[:, 2, :5], s_prev[:, 2, 5:]))
    torch.testing.assert_close(out[:, 2], torch.cat([h, c], -1))


def _truncated_double_loop(cell, x, k):
    """Literally paper B: for each t, run f over x_{t-k+1..t} from a zero state."""
    B, T, _ = x.shape
    u = cell.prepare(x)
    out = []
    for t in range(T):
        s = torch.zeros(B, cell.state_size, dtype=x.dtype)
        for j in range(max(0, t - k + 1), t + 1):
            s = cell.step(s, u[:, j])
        out.append(s)
    return torch.stack(out, 1)


@pytest.mark.parametrize("kind", ["tanh", "gru", "lstm"])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_truncated_equals_double_loop(kind, k):
    cell = cells.from_torch(make(kind))
    x = torch.randn(2, 13, 3, dtype=F64)
    torch.testing.assert_close(cells.truncated(cell, x, k), _truncated_double_loop(cell, x, k), rtol=0, atol=1e-13)


def test_truncated_with_long_window_is_the_full_model():
    m = make("gru", layers=2)
    x = torch.randn(2, 9, 3, dtype=F64)
    h0 = torch_h0("gru", 2, 2, 5)
    cell = cells.from_torch(m)
    torch.testing.assert_close(cells.truncated(cell, x, 9, h0), cells.sequential(cell, x, h0), rtol=0, atol=1e-13)


def test_cells_share_the_module_parameters():
    m = make("gru")
    cell = cells.from_torch(m)
    x = torch.randn(2, 5, 3, dtype=F64)
    cells.sequential(cell, x).sum().backward()
    assert m.weight_hh_l0.grad is not None and m.weight_hh_l0.grad.abs().sum() > 0


def test_from_torch_cell_modules_and_layer_choice():
    m = make("lstm", layers=3)
    assert len(cells.from_torch(m)) == 3
    assert cells.from_torch(m, layer=2).weight_hh is m.weight_hh_l2
    c = cells.from_torch(nn.GRUCell(4, 6))
    assert (c.input_size, c.hidden_size, c.state_size) == (4, 6, 6)
    assert cells.from_torch(nn.LSTMCell(4, 6)).state_size == 12


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda: cells.from_torch(nn.Linear(3, 4)), "from_torch takes"),
        (lambda: cells.from_torch(nn.GRU(3, 4, bidirectional=True)), "bidirectional"),
        (lambda: cells.from_torch(nn.LSTM(3, 4, proj_size=2)), "proj_size"),
        (lambda: cells.from_torch(nn.GRU(3, 4, num_layers=2), layer=2), "layer must be in"),
        (lambda: cells.from_torch(nn.GRU(3, 4, batch_first=True)).prepare(torch.randn(2, 5)), "batch-first"),
        (lambda: cells.from_torch(nn.GRU(3, 4, batch_first=True)).prepare(torch.randn(2, 5, 7)), "7 features"),
        (lambda: cells.from_torch(nn.GRU(3, 4)).initial_state(torch.randn(3, 4), 2), "h0 must have shape"),
        (lambda: cells.from_torch(nn.LSTM(3, 4)).initial_state((torch.randn(2, 4),), 2), r"\(h0, c0\)"),
        (lambda: cells.truncated(cells.from_torch(nn.GRU(3, 4, batch_first=True)), torch.randn(1, 5, 3), 0), "k must"),
        (lambda: cells.from_torch(nn.GRU(3, 4)).prepare(torch.randn(2, 5, 3)), "batch_first=False"),
        (
            lambda: cells.from_torch(nn.GRU(3, 4)).initial_state(torch.randn(2, 4).double(), 2, dtype=torch.float32),
            "float64",
        ),
    ],
)
def test_bad_input_raises_value_error(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()


@pytest.mark.parametrize("kind", ["tanh", "gru", "lstm"])
@pytest.mark.parametrize("layers", [1, 2])
def test_a_time_major_module_is_refused_unless_allowed_and_then_exact(kind, layers):
    """A batch_first=False module reads [T, B, D]; its own input given to a solver would be read as
    [B, T, D]. Its cells refuse x unless allow_time_major=True, and then x.transpose(0, 1) is exact."""
    from fpcore import stability
    from fpcore.fixed_point import solve

    torch.manual_seed(0)
    m = {"tanh": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[kind](3, 6, num_layers=layers).double()  # time-major
    x_tm = torch.randn(7, 2, 3, dtype=F64)  # (T, B, D), the module's own layout
    with pytest.raises(ValueError, match="batch_first=False"):
        solve(cells.from_torch(m), x_tm, method="jacobi")
    with pytest.raises(ValueError, match="allow_time_major=True"):
        cells.sequential(cells.from_torch(m), x_tm)
    cell = cells.from_torch(m, allow_time_major=True)
    with torch.no_grad():
        want = m(x_tm)[0].transpose(0, 1)  # (B, T, H)
        got = solve(cell, x_tm.transpose(0, 1), method="newton").outputs
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    assert stability.contraction_bound(cells.from_torch(m, layer=0)) > 0  # reads only the weights: works


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 3e-7), (torch.float64, 1e-15)])
def test_cpu_tanh_through_sigmoid_matches_torch_tanh(dtype, atol):
    """Large CPU tensors take 2 sigmoid(2x) - 1 (torch's CPU tanh is ~10x slower than its sigmoid): the
    same function to a few ulp of 1, saturating correctly, and the small-tensor path is torch.tanh itself."""
    x = torch.cat([torch.randn(1 << 15, dtype=dtype) * 3, torch.tensor([0.0, 1e-8, -40.0, 40.0], dtype=dtype)])
    assert x.numel() >= cells._TANH_MIN
    torch.testing.assert_close(cells.tanh(x), torch.tanh(x), rtol=0, atol=atol)
    assert cells.tanh(x)[-2:].tolist() == [-1.0, 1.0]
    small = x[:100]
    assert torch.equal(cells.tanh(small), torch.tanh(small))


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_cell_steps_on_large_batches_match_the_torch_layer(kind):
    """The fast steps (one sigmoid over the gates, addcmul, lerp, the sigmoid tanh) equal nn's layer where
    every tensor is above the sigmoid-tanh threshold: one step over 512 x 64 positions at once."""
    torch.manual_seed(0)
    m = (nn.GRU if kind == "gru" else nn.LSTM)(8, 32, batch_first=True)
    cell = cells.from_torch(m)
    x = torch.randn(512, 1, 8)
    s0 = torch.randn(512, cell.state_size) * 0.5
    h0 = (s0[None, :, :32], s0[None, :, 32:]) if kind == "lstm" else s0[None]
    with torch.no_grad():
        y, _ = m(x, h0)
        s1 = cell.step(s0[:, None], cell.prepare(x))
    assert s1[..., :32].numel() >= cells._TANH_MIN
    torch.testing.assert_close(s1[..., :32], y, rtol=0, atol=1e-6)
