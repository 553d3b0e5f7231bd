"""Linear-surrogate RNNs: GILR, GILR-LSTM, SRU and QRNN (paper C, Martin & Cundy 2018, arXiv 1709.04057, section 3).

Every layer here has a recurrence that is *linear* in its state once the gates are known, and the
gates depend only on the inputs (never on the state they update). So the whole layer is

1. one batched projection of the inputs over all T steps at once (a matmul or a causal convolution),
2. one (or two) diagonal linear recurrences ``h_t = a_t * h_{t-1} + b_t``, solved exactly by
   :func:`fpcore.linear_scan` (the parallel scan), and
3. elementwise output maps.

No iteration is needed: the scan is exact. Each layer also has :meth:`sequential`, the same model
evaluated one step at a time like an ordinary RNN cell (projection of x_t, state update, output).
It is the oracle: the tests check ``forward == sequential`` for values and gradients in float64.

Shapes are batch-first everywhere: x [B, T, D_in] -> y [B, T, H]. ``forward(x, state=None)`` returns
``(y, state)`` where ``state`` is the final state (a tensor or a tuple of tensors, see each layer),
which can be passed back in to continue a sequence (truncated BPTT, streaming). Layers stack:
:class:`SurrogateStack` chains ``num_layers`` of one kind.

Layer         recurrence solved by the scan                            output
-----------   ------------------------------------------------------   -------------------------------
GILR          h_t = g_t h_{t-1} + (1 - g_t) j_t                        h_t
GILR-LSTM     h~_t = GILR(x)_t;  c_t = f_t c_{t-1} + i_t z_t           h_t = o_t c_t
SRU           c_t = f_t c_{t-1} + (1 - f_t) x~_t                       h_t = r_t tanh(c_t) + (1 - r_t) x_t
QRNN(w)       c_t = f_t c_{t-1} + (1 - f_t) z_t  (gates: width-w conv)  h_t = o_t c_t

Notation is the series' (notebook 00): U are weights on the inputs x_t, W weights on the surrogate state
h~_{t-1}; paper C writes V for the first and U for the second.

Paper C's released code (github.com/eamartin/parallelizing_linear_rnns, ``layers_new.py`` at commit
da10de3) differs from the equations in three places; these layers follow the papers' equations, and
each class says where: GILR-LSTM's gates read h~_t there (h~_{t-1} here), its SRU has no tanh on c_t,
and its ``QRNN(X, n)`` reads n - 1 inputs (w here).
"""

from __future__ import annotations

import torch
from torch import nn

from fpcore.scan import linear_scan

__all__ = ["GILR", "GILRLSTM", "SRU", "QRNN", "SurrogateStack", "LAYERS", "make_layer", "state_tensors"]


def _check_input(layer: nn.Module, x, what: str = "x") -> None:
    """Clear errors for the mistakes people make: wrong rank, width, dtype, empty sequence."""
    name = type(layer).__name__
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: {what} must be a torch.Tensor [B, T, D], got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{name}: {what} must be batch-first [B, T, D], got shape {tuple(x.shape)}")
    if x.shape[-1] != layer.input_size:
        raise ValueError(
            f"{name}: {what} has D = {x.shape[-1]} features but the layer expects input_size = {layer.input_size}"
        )
    if x.shape[1] == 0:
        raise ValueError(f"{name}: {what} is an empty sequence (T = 0); need T >= 1")
    if not x.is_floating_point():
        raise ValueError(f"{name}: {what} must be floating point, got {x.dtype}")


def state_tensors(state) -> list[torch.Tensor]:
    """Every tensor in a (nested tuple/list) layer or stack state, in order; None holds none."""
    if state is None:
        return []
    if isinstance(state, torch.Tensor):
        return [state]
    return [t for item in state for t in state_tensors(item)]


def _check_state(layer: nn.Module, s, B: int, width: int, ref: torch.Tensor, what: str) -> torch.Tensor | None:
    if s is None:
        return None
    name = type(layer).__name__
    if not isinstance(s, torch.Tensor) or tuple(s.shape) != (B, width):
        got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
        raise ValueError(f"{name}: {what} must be a tensor of shape [B, {width}] = {(B, width)}, got {got}")
    if s.dtype != ref.dtype or s.device != ref.device:
        raise ValueError(
            f"{name}: {what} must match x's dtype/device ({ref.dtype}, {ref.device}), got ({s.dtype}, {s.device})"
        )
    return s


def _check_positive(name: str, **sizes) -> None:
    for key, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}: {key} must be a positive int, got {value!r}")


def _shift_right(h: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
    """[h_0, h_1, ..., h_{T-1}] from h = [h_1..h_T] (B, T, H) and h_0 (zeros when None)."""
    first = h.new_zeros(h.shape[0], 1, h.shape[2]) if h0 is None else h0[:, None, :]
    return torch.cat([first, h[:, :-1]], dim=1)  # (B, T, H)


class _Layer(nn.Module):
    """Shared plumbing: sizes, the scan backend, input checks."""

    def __init__(self, input_size: int, hidden_size: int, *, backend: str = "auto"):
        super().__init__()
        _check_positive(type(self).__name__, input_size=input_size, hidden_size=hidden_size)
        self.input_size, self.hidden_size, self.backend = input_size, hidden_size, backend

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, backend={self.backend!r}"

    def _scan(self, a, b, h0, backend):
        return linear_scan(a, b, h0, backend=backend or self.backend)


# --------------------------------------------------------------------------------------------------
class GILR(_Layer):
    r"""Gated impulse linear recurrence (paper C, section 3.1).

    .. math::
        g_t = \sigma(U_g x_t + b_g), \quad j_t = \tanh(U_j x_t + b_j), \quad
        h_t = g_t \odot h_{t-1} + (1 - g_t) \odot j_t

    The gate g_t and the impulse j_t depend on x_t only, so h is one scan with a = g, b = (1 - g) j.
    h_t is a convex combination of h_{t-1} and j_t, so |h_t| <= 1 always (from |h_0| <= 1). Paper C
    allows any activation for the impulse; tanh is the one its GILR-LSTM uses.

    x [B, T, D_in] -> (h [B, T, H], h_T [B, H]); ``state`` = h_0 [B, H] or None (zeros).
    ``gate_bias`` initialises b_g: sigma(b_g) is the initial memory per step.
    """

    def __init__(self, input_size: int, hidden_size: int, *, gate_bias: float = 0.0, backend: str = "auto"):
        super().__init__(input_size, hidden_size, backend=backend)
        self.proj = nn.Linear(input_size, 2 * hidden_size)  # [U_g; U_j] x + [b_g; b_j]
        with torch.no_grad():
            self.proj.bias[:hidden_size].fill_(gate_bias)

    def gates(self, pre: torch.Tensor):
        """(g, j) from the projected inputs pre = [U_g; U_j] x + b, [..., 2H]."""
        g_pre, i_pre = pre.chunk(2, dim=-1)
        return torch.sigmoid(g_pre), torch.tanh(i_pre)

    def forward(self, x, state=None, *, backend: str | None = None):
        _check_input(self, x)
        h0 = _check_state(self, state, x.shape[0], self.hidden_size, x, "state (h_0)")
        g, i = self.gates(self.proj(x))  # (B, T, H) each
        h = self._scan(g, (1 - g) * i, h0, backend)  # h_t = g_t h_{t-1} + (1 - g_t) i_t
        return h, h[:, -1]

    def sequential(self, x, state=None):
        _check_input(self, x)
        B, T, _ = x.shape
        h = _check_state(self, state, B, self.hidden_size, x, "state (h_0)")
        h = x.new_zeros(B, self.hidden_size) if h is None else h
        out = []
        for t in range(T):
            g, i = self.gates(self.proj(x[:, t]))  # (B, H)
            h = g * h + (1 - g) * i
            out.append(h)
        return torch.stack(out, dim=1), h  # (B, T, H)


# --------------------------------------------------------------------------------------------------
class GILRLSTM(_Layer):
    r"""The linear-surrogate LSTM (paper C, section 3.2): an LSTM whose gates read a GILR state.

    An LSTM's gates read h_{t-1}, which makes the recurrence non-linear. GILR-LSTM replaces h_{t-1} in
    the gates by a *linear surrogate* \tilde h_{t-1}, the state of a GILR run over the same inputs:

    .. math::
        \tilde h_t = g_t \odot \tilde h_{t-1} + (1 - g_t) \odot j_t
            \quad (g_t = \sigma(U_g x_t + b_g),\ j_t = \tanh(U_j x_t + b_j))

        f_t, i_t, o_t = \sigma(W_{f,i,o} \tilde h_{t-1} + U_{f,i,o} x_t + b_{f,i,o}), \quad
        z_t = \tanh(W_z \tilde h_{t-1} + U_z x_t + b_z)

        c_t = f_t \odot c_{t-1} + i_t \odot z_t, \qquad h_t = o_t \odot c_t

    Two scans: first \tilde h (then W \tilde h_{t-1} for all t is one matmul), then c. The output map
    h_t = o_t c_t is the one written in paper C (no tanh on c_t).

    Paper C's released code differs here: its ``linear_surrogate_lstm`` (``layers_new.py``, commit
    da10de3) feeds ``tf.concat([h_tilde, X])`` to the gates, i.e. \tilde h_t, the surrogate *including*
    step t. This class follows paper C's equations (\tilde h_{t-1}); notebook 02 shows that the two
    differ by far more than rounding on the same weights.

    x [B, T, D_in] -> (h [B, T, H], (\tilde h_T, c_T)); ``state`` = (\tilde h_0, c_0), each [B, H], or None.
    ``forget_bias`` initialises b_f (and the surrogate's gate bias): sigma(b) is the initial memory per step.
    """

    def __init__(self, input_size: int, hidden_size: int, *, forget_bias: float = 1.0, backend: str = "auto"):
        super().__init__(input_size, hidden_size, backend=backend)
        H = hidden_size
        # x -> [surrogate gate, surrogate impulse, f, i, o, z]: all input projections in one matmul
        self.proj = nn.Linear(input_size, 6 * H)
        # \tilde h_{t-1} -> [f, i, o, z]: the weights W
        self.rec = nn.Linear(H, 4 * H, bias=False)
        with torch.no_grad():
            self.proj.bias[0:H].fill_(forget_bias)  # surrogate gate
            self.proj.bias[2 * H : 3 * H].fill_(forget_bias)  # LSTM forget gate

    @torch.no_grad()
    def chrono_init_(self, t_max: float) -> GILRLSTM:
        """Chrono initialisation (Tallec & Ollivier, ICLR 2018) for dependencies up to ``t_max`` steps.

        b_f ~ log(U(1, t_max - 1)) and b_i = -b_f, so the forget gates' characteristic memory times
        1 / (1 - sigma(b_f)) spread over 1..t_max while the input gates start nearly shut (distractors
        then add little to c); the surrogate's gate bias gets its own draw from the same law. In place.
        """
        if not t_max > 2:
            raise ValueError(f"GILRLSTM.chrono_init_: t_max must be > 2, got {t_max}")
        H, bias = self.hidden_size, self.proj.bias

        def draw():
            return torch.log(torch.empty(H, dtype=bias.dtype, device=bias.device).uniform_(1.0, t_max - 1.0))

        bias[0:H] = draw()  # surrogate gate
        b_f = draw()
        bias[2 * H : 3 * H] = b_f  # forget gate
        bias[3 * H : 4 * H] = -b_f  # input gate
        return self

    def _cell_gates(self, pre_x: torch.Tensor, pre_h: torch.Tensor):
        """(f, i, o, z) from the input part [..., 4H] and the surrogate part [..., 4H]."""
        f, i, o, z = (pre_x + pre_h).chunk(4, dim=-1)
        return torch.sigmoid(f), torch.sigmoid(i), torch.sigmoid(o), torch.tanh(z)

    def _states(self, state, x):
        if state is None:
            return None, None
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise ValueError("GILRLSTM: state must be a pair (h~_0, c_0) of [B, H] tensors, or None")
        B = x.shape[0]
        return (
            _check_state(self, state[0], B, self.hidden_size, x, "state[0] (h~_0)"),
            _check_state(self, state[1], B, self.hidden_size, x, "state[1] (c_0)"),
        )

    def forward(self, x, state=None, *, backend: str | None = None):
        _check_input(self, x)
        s0, c0 = self._states(state, x)
        H = self.hidden_size
        sg, si, pre_x = self.proj(x).split([H, H, 4 * H], dim=-1)  # (B, T, H), (B, T, H), (B, T, 4H)
        sg, si = torch.sigmoid(sg), torch.tanh(si)
        s = self._scan(sg, (1 - sg) * si, s0, backend)  # surrogate \tilde h, (B, T, H)
        f, i, o, z = self._cell_gates(pre_x, self.rec(_shift_right(s, s0)))  # gates read \tilde h_{t-1}
        c = self._scan(f, i * z, c0, backend)  # c_t = f_t c_{t-1} + i_t z_t, (B, T, H)
        return o * c, (s[:, -1], c[:, -1])

    def sequential(self, x, state=None):
        _check_input(self, x)
        B, T, _ = x.shape
        H = self.hidden_size
        s, c = self._states(state, x)
        s = x.new_zeros(B, H) if s is None else s
        c = x.new_zeros(B, H) if c is None else c
        out = []
        for t in range(T):
            pre = self.proj(x[:, t])  # (B, 6H)
            f, i, o, z = self._cell_gates(pre[:, 2 * H :], self.rec(s))  # s is \tilde h_{t-1}
            c = f * c + i * z
            out.append(o * c)
            sg, si = torch.sigmoid(pre[:, :H]), torch.tanh(pre[:, H : 2 * H])
            s = sg * s + (1 - sg) * si  # now \tilde h_t
        return torch.stack(out, dim=1), (s, c)  # (B, T, H)


# --------------------------------------------------------------------------------------------------
class SRU(_Layer):
    r"""Simple recurrent unit (Lei et al. 2017, arXiv 1709.02755; one of the layers paper C times, Table 2).

    .. math::
        \tilde x_t = U x_t, \quad f_t = \sigma(U_f x_t + b_f), \quad r_t = \sigma(U_r x_t + b_r)

        c_t = f_t \odot c_{t-1} + (1 - f_t) \odot \tilde x_t, \qquad
        h_t = r_t \odot \tanh(c_t) + (1 - r_t) \odot x_t

    The last term is a highway connection; when input_size != hidden_size x_t is first mapped by
    a bias-free linear map (the usual choice). One scan (a = f, b = (1 - f) x~). Lei et al. write
    g(c_t) for an activation g; this class takes tanh. Paper C does not write SRU's equations, and its
    released code (``SRU`` in ``layers_new.py``, commit da10de3) outputs ``r * c + (1 - r) * X``,
    without an activation on c_t.

    x [B, T, D_in] -> (h [B, T, H], c_T [B, H]); ``state`` = c_0 [B, H] or None.
    """

    def __init__(self, input_size: int, hidden_size: int, *, forget_bias: float = 0.0, backend: str = "auto"):
        super().__init__(input_size, hidden_size, backend=backend)
        H = hidden_size
        self.proj = nn.Linear(input_size, 3 * H)  # [U; U_f; U_r] x + [0; b_f; b_r]
        with torch.no_grad():
            self.proj.bias[:H].zero_()
            self.proj.bias[H : 2 * H].fill_(forget_bias)
        self.highway = nn.Identity() if input_size == H else nn.Linear(input_size, H, bias=False)

    def _gates(self, pre):
        xt, f, r = pre.chunk(3, dim=-1)
        return xt, torch.sigmoid(f), torch.sigmoid(r)

    def forward(self, x, state=None, *, backend: str | None = None):
        _check_input(self, x)
        c0 = _check_state(self, state, x.shape[0], self.hidden_size, x, "state (c_0)")
        xt, f, r = self._gates(self.proj(x))  # (B, T, H) each
        c = self._scan(f, (1 - f) * xt, c0, backend)
        return r * torch.tanh(c) + (1 - r) * self.highway(x), c[:, -1]

    def sequential(self, x, state=None):
        _check_input(self, x)
        B, T, _ = x.shape
        c = _check_state(self, state, B, self.hidden_size, x, "state (c_0)")
        c = x.new_zeros(B, self.hidden_size) if c is None else c
        out = []
        for t in range(T):
            xt, f, r = self._gates(self.proj(x[:, t]))  # (B, H)
            c = f * c + (1 - f) * xt
            out.append(r * torch.tanh(c) + (1 - r) * self.highway(x[:, t]))
        return torch.stack(out, dim=1), c


# --------------------------------------------------------------------------------------------------
class QRNN(_Layer):
    r"""Quasi-recurrent network with fo-pooling (Bradbury et al. 2017, arXiv 1611.01576), filter width ``window`` = w.

    .. math::
        Z = \tanh(U_z * X), \quad F = \sigma(U_f * X), \quad O = \sigma(U_o * X)
        \qquad (* = \text{causal convolution over time of width } w:\ \text{step } t \text{ reads } x_{t-w+1..t})

        c_t = f_t \odot c_{t-1} + (1 - f_t) \odot z_t, \qquad h_t = o_t \odot c_t

    w = 1 makes the gates per-step linear maps (like GILR); paper C times w = 2 and w = 10. Paper C's
    released code differs in what a width means: its ``QRNN(X, n)`` (``layers_new.py``, commit da10de3)
    stacks X with the shifts ``m in range(1, n-1)``, so its "filter size n" reads the n - 1 inputs
    x_{t-n+2..t}. This class follows Bradbury et al.: ``window=w`` reads w inputs, x_{t-w+1..t}.

    x [B, T, D_in] -> (h [B, T, H], (c_T, x_tail)); x_tail [B, w-1, D_in] holds the last w-1 inputs,
    which the next chunk of a stream needs for its first convolution windows. ``state`` =
    (c_0 [B, H], x_tail [B, w-1, D_in]) or None (zeros: the sequence starts here).
    """

    def __init__(
        self, input_size: int, hidden_size: int, window: int = 2, *, forget_bias: float = 0.0, backend: str = "auto"
    ):
        super().__init__(input_size, hidden_size, backend=backend)
        _check_positive("QRNN", window=window)
        self.window = window
        H = hidden_size
        self.conv = nn.Conv1d(input_size, 3 * H, kernel_size=window)  # [W_z; W_f; W_o], no padding: we pad
        with torch.no_grad():
            assert self.conv.bias is not None
            self.conv.bias[H : 2 * H].fill_(forget_bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, window={self.window}"

    def _states(self, state, x):
        B, D, w = x.shape[0], self.input_size, self.window
        if state is None:
            return None, x.new_zeros(B, w - 1, D)
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise ValueError("QRNN: state must be a pair (c_0 [B, H], x_tail [B, w-1, D_in]), or None")
        c0 = _check_state(self, state[0], B, self.hidden_size, x, "state[0] (c_0)")
        tail = state[1]
        if not isinstance(tail, torch.Tensor) or tuple(tail.shape) != (B, w - 1, D):
            raise ValueError(f"QRNN: state[1] (x_tail) must have shape [B, w-1, D_in] = {(B, w - 1, D)}")
        return c0, tail.to(x)

    def _gates(self, pre):
        z, f, o = pre.chunk(3, dim=-1)
        return torch.tanh(z), torch.sigmoid(f), torch.sigmoid(o)

    def forward(self, x, state=None, *, backend: str | None = None):
        _check_input(self, x)
        c0, tail = self._states(state, x)
        xe = torch.cat([tail, x], dim=1)  # (B, w-1+T, D): the causal padding
        pre = self.conv(xe.transpose(1, 2)).transpose(1, 2)  # conv wants (B, D, T); back to (B, T, 3H)
        z, f, o = self._gates(pre)
        c = self._scan(f, (1 - f) * z, c0, backend)
        return o * c, (c[:, -1], xe[:, xe.shape[1] - (self.window - 1) :])

    def sequential(self, x, state=None):
        _check_input(self, x)
        B, T, _ = x.shape
        w, H = self.window, self.hidden_size
        c, tail = self._states(state, x)
        c = x.new_zeros(B, H) if c is None else c
        xe = torch.cat([tail, x], dim=1)  # (B, w-1+T, D)
        weight = self.conv.weight  # (3H, D, w): tap k multiplies x_{t-w+1+k}
        out = []
        for t in range(T):
            window = xe[:, t : t + w]  # x_{t-w+1..t}, (B, w, D)
            pre = torch.einsum("bkd,hdk->bh", window, weight) + self.conv.bias  # (B, 3H)
            z, f, o = self._gates(pre)
            c = f * c + (1 - f) * z
            out.append(o * c)
        return torch.stack(out, dim=1), (c, xe[:, xe.shape[1] - (w - 1) :])


# --------------------------------------------------------------------------------------------------
LAYERS: dict[str, type[_Layer]] = {"gilr": GILR, "gilr-lstm": GILRLSTM, "sru": SRU, "qrnn": QRNN}


def make_layer(kind: str, input_size: int, hidden_size: int, **kwargs) -> _Layer:
    """One layer by name: ``"gilr" | "gilr-lstm" | "sru" | "qrnn"`` (QRNN takes ``window=w``)."""
    cls = LAYERS.get(kind)
    if cls is None:
        raise ValueError(f"unknown surrogate layer {kind!r}; choose one of {', '.join(LAYERS)}")
    return cls(input_size, hidden_size, **kwargs)


class SurrogateStack(nn.Module):
    """``num_layers`` layers of one kind; layer 1 maps D_in -> H, the others H -> H.

    ``forward(x, state=None, *, backend=None) -> (y [B, T, H], [state per layer])`` (parallel: one
    scan per recurrence per layer); :meth:`sequential` is the step-by-step oracle with the same
    signature. ``state`` is None or a list with one entry per layer (each as that layer takes it).
    """

    def __init__(self, kind: str, input_size: int, hidden_size: int, num_layers: int = 2, **layer_kwargs):
        super().__init__()
        _check_positive("SurrogateStack", num_layers=num_layers)
        self.kind, self.input_size, self.hidden_size = kind, input_size, hidden_size
        self.layers = nn.ModuleList(
            make_layer(kind, input_size if k == 0 else hidden_size, hidden_size, **layer_kwargs)
            for k in range(num_layers)
        )

    def _run(self, x, state, step):
        if state is not None and (not isinstance(state, (list, tuple)) or len(state) != len(self.layers)):
            raise ValueError(f"SurrogateStack: state must be None or a list of {len(self.layers)} layer states")
        states = []
        for k, layer in enumerate(self.layers):
            x, s = step(layer, x, None if state is None else state[k])
            states.append(s)
        return x, states

    def forward(self, x, state=None, *, backend: str | None = None):
        return self._run(x, state, lambda layer, x, s: layer(x, s, backend=backend))

    def sequential(self, x, state=None):
        return self._run(x, state, lambda layer, x, s: layer.sequential(x, s))
