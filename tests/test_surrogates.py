"""Linear-surrogate layers: the parallel path (projections + scan) equals the step-by-step oracle.

Values AND gradients (inputs, initial states, every parameter), in float64, single layers and stacks,
over odd and even lengths and every CPU scan backend; streaming (state carried across chunks) equals
one long call; bad inputs raise ValueError.
"""

from __future__ import annotations

import pytest
import torch

from fpcore.models import GILR, GILRLSTM, QRNN, SRU, SurrogateStack, make_layer
from fpcore.models.surrogates import state_tensors
from fpcore.scan import available_backends

KINDS = [
    ("gilr", {}),
    ("gilr-lstm", {}),
    ("sru", {}),
    ("qrnn", {"window": 1}),
    ("qrnn", {"window": 2}),
    ("qrnn", {"window": 10}),
]
IDS = ["gilr", "gilr-lstm", "sru", "qrnn1", "qrnn2", "qrnn10"]
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=1e-5)}


def _random_state(model, B, D, dtype, gen):
    """A non-zero initial state in the layout each layer takes (so state gradients are tested too)."""

    def one(layer):
        H = layer.hidden_size
        r = lambda *s: (0.5 * torch.randn(*s, generator=gen, dtype=dtype)).requires_grad_()  # noqa: E731
        if isinstance(layer, GILRLSTM):
            return (r(B, H), r(B, H))
        if isinstance(layer, QRNN):
            return (r(B, H), r(B, layer.window - 1, layer.input_size))
        return r(B, H)

    if isinstance(model, SurrogateStack):
        return [one(layer) for layer in model.layers]
    return one(model)


def _grads(model, x, state, run, weight):
    y, final = run(x, state)
    loss = (y * weight).sum() + sum((s * (k + 1)).sum() for k, s in enumerate(state_tensors(final)))
    leaves = [x, *state_tensors(state), *model.parameters()]
    return y.detach(), [s.detach() for s in state_tensors(final)], torch.autograd.grad(loss, leaves, allow_unused=True)


@pytest.mark.parametrize("kind,kw", KINDS, ids=IDS)
@pytest.mark.parametrize("T", [1, 8, 33])
@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("with_state", [False, True])
def test_parallel_equals_sequential_values_and_gradients(kind, kw, T, layers, with_state):
    gen = torch.Generator().manual_seed(T * 10 + layers)
    torch.manual_seed(T + 100 * layers)
    B, D, H = 3, 5, 6
    model = SurrogateStack(kind, D, H, layers, **kw).double()
    x = torch.randn(B, T, D, generator=gen, dtype=torch.float64).requires_grad_()
    state = _random_state(model, B, D, torch.float64, gen) if with_state else None
    weight = torch.randn(B, T, H, generator=gen, dtype=torch.float64)
    y_par, s_par, g_par = _grads(model, x, state, model.forward, weight)
    y_seq, s_seq, g_seq = _grads(model, x, state, model.sequential, weight)
    assert y_par.shape == (B, T, H)
    torch.testing.assert_close(y_par, y_seq, **TOL[torch.float64])
    for a, b in zip(s_par, s_seq, strict=True):
        torch.testing.assert_close(a, b, **TOL[torch.float64])
    for a, b in zip(g_par, g_seq, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, **TOL[torch.float64])
    assert any(g is not None and g.abs().sum() > 0 for g in g_par[1:])  # the test sees real gradients


@pytest.mark.parametrize("backend", [b for b in available_backends("cpu") if b != "hillis_steele"])
@pytest.mark.parametrize("kind,kw", KINDS, ids=IDS)
def test_every_cpu_backend_float32(kind, kw, backend):
    torch.manual_seed(1)
    model = make_layer(kind, 4, 8, **kw)
    x = torch.randn(2, 50, 4)
    y, _ = model(x, backend=backend)
    y_seq, _ = model.sequential(x)
    torch.testing.assert_close(y, y_seq, **TOL[torch.float32])


@pytest.mark.parametrize("kind,kw", KINDS, ids=IDS)
def test_streaming_in_chunks_equals_one_call(kind, kw):
    torch.manual_seed(2)
    model = SurrogateStack(kind, 3, 4, 2, **kw).double()
    x = torch.randn(2, 23, 3, dtype=torch.float64)
    y_all, s_all = model(x)
    y1, s1 = model(x[:, :9])
    y2, s2 = model(x[:, 9:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), y_all)
    for a, b in zip(state_tensors(s2), state_tensors(s_all), strict=True):
        torch.testing.assert_close(a, b)


def test_gradcheck_gilr_lstm_layer():
    torch.manual_seed(3)
    layer = GILRLSTM(2, 3).double()
    x = torch.randn(2, 6, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: layer(x)[0], (x,))


def test_sru_highway_is_identity_when_widths_match_else_projection():
    assert isinstance(SRU(8, 8).highway, torch.nn.Identity)
    assert isinstance(SRU(4, 8).highway, torch.nn.Linear)


def test_gilr_state_is_bounded_and_remembers_with_gate_near_one():
    torch.manual_seed(4)
    layer = GILR(3, 5, gate_bias=10.0).double()  # sigma(10) ~ 0.99995: almost pure memory
    x = torch.randn(1, 200, 3, dtype=torch.float64)
    h, _ = layer(x, torch.ones(1, 5, dtype=torch.float64))
    assert h.abs().max() <= 1.0 + 1e-12  # a convex combination of h_{t-1} and tanh(...)
    assert h[0, -1].min() > 0.9  # the initial state is still there after 200 steps


def test_gilr_lstm_gates_read_the_surrogate_not_the_output():
    """Changing the recurrent weights changes h, but never the surrogate state h~ (it only reads x)."""
    torch.manual_seed(5)
    layer = GILRLSTM(3, 4).double()
    x = torch.randn(2, 10, 3, dtype=torch.float64)
    y1, (s1, _) = layer(x)
    with torch.no_grad():
        layer.rec.weight.mul_(3.0)
    y2, (s2, _) = layer(x)
    torch.testing.assert_close(s1, s2)
    assert not torch.allclose(y1, y2)


@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.randn(3, 5), "batch-first"),
        (torch.randn(2, 4, 7), "input_size"),
        (torch.randn(2, 0, 5), "T = 0"),
        (torch.ones(2, 3, 5, dtype=torch.long), "floating point"),
        ([[1.0]], "torch.Tensor"),
    ],
)
@pytest.mark.parametrize("kind", ["gilr", "gilr-lstm", "sru", "qrnn"])
def test_bad_input_raises_value_error(kind, bad, match):
    layer = make_layer(kind, 5, 4)
    with pytest.raises(ValueError, match=match):
        layer(bad)
    with pytest.raises(ValueError, match=match):
        layer.sequential(bad)


def test_bad_state_and_sizes_raise_value_error():
    x = torch.randn(2, 4, 3)
    with pytest.raises(ValueError, match=r"\[B, 5\]"):
        GILR(3, 5)(x, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="pair"):
        GILRLSTM(3, 5)(x, torch.zeros(2, 5))
    with pytest.raises(ValueError, match="x_tail"):
        QRNN(3, 5, window=3)(x, (torch.zeros(2, 5), torch.zeros(2, 1, 3)))
    with pytest.raises(ValueError, match="dtype"):
        SRU(3, 5)(x, torch.zeros(2, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="list of 2"):
        SurrogateStack("gilr", 3, 5, 2)(x, [None])
    with pytest.raises(ValueError, match="unknown surrogate"):
        make_layer("gru", 3, 5)
    with pytest.raises(ValueError, match="window"):
        QRNN(3, 5, window=0)
    with pytest.raises(ValueError, match="hidden_size"):
        GILR(3, 0)
    with pytest.raises(ValueError, match="unknown backend"):
        GILR(3, 5)(x, backend="nope")
