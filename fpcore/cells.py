"""Recurrent cells as step functions over a whole sequence, with their Jacobians.

A recurrent layer is a step function ``s_t = f(s_{t-1}, x_t)``. The fixed-point engine
(:mod:`fpcore.fixed_point`) never runs it left to right: it applies ``f`` to *every* position at once,
``F(S)_t = f(s_{t-1}, x_t)`` for t = 1..T, and linearises it through the Jacobian
``J_t = df(s_{t-1}, x_t)/ds_{t-1}``. This module provides those pieces for the three torch.nn layers,
in torch.nn's own weight layout, so any trained ``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM`` can be solved:

    tanh / ReLU RNN   s = h            h' = act(W_ih x + b_ih + W_hh h + b_hh)
    GRU               s = h            r = sig(W_ir x + b_ir + W_hr h + b_hr)
                                       z = sig(W_iz x + b_iz + W_hz h + b_hz)
                                       n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
                                       h' = (1 - z) * n + z * h
    LSTM              s = [h, c]       i, f, g, o = sig, sig, tanh, sig of (W_ih x + b_ih + W_hh h + b_hh)
                      (S = 2H)         c' = f * c + i * g;   h' = o * tanh(c')

State layout. Every cell works on a flat state ``s`` of size ``S = cell.state_size``: S = H for the RNN
and GRU; the LSTM packs ``s = cat([h, c], -1)`` (S = 2H) because both h and c are carried. ``cell.output(s)``
returns the part a torch layer outputs (``h``, [..., H]).

Shapes. ``cell.prepare(x)`` computes the input-only part ``u = W_ih x + b`` once, [B, T, D] -> [B, T, G]
(G = H, 3H or 4H), because it does not change between fixed-point iterations. ``cell.step(s_prev, u)``
applies ``f`` to all positions at once: s_prev [..., S], u [..., G] -> [..., S]. ``cell.jacobian`` returns
[..., S, S] with ``J[..., i, j] = d s_t[i] / d s_{t-1}[j]`` (closed form, checked against ``torch.func``
in the tests), ``cell.jacobian_diag`` its diagonal [..., S].

Multi-layer modules. :func:`from_torch` returns a :class:`Cell` for a one-layer module and a
:class:`CellStack` (a list of cells, layer 0 first) for ``num_layers > 1``. A stack is solved layer by
layer: the outputs ``h`` of layer l are the inputs of layer l + 1, exactly as torch.nn does in eval mode
(inter-layer dropout is not applied). Initial states use torch's layout: ``h0`` [L, B, H] (for the LSTM
the tuple ``(h0, c0)``), and [B, H] (or [1, B, H]) for a single cell.

References: :func:`sequential` (the step-by-step loop) and :func:`truncated` (paper B's k-window
truncated model) are the plain references every parallel solver is tested against.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "Cell",
    "RNNCell",
    "GRUCell",
    "LSTMCell",
    "CellStack",
    "from_torch",
    "to_torch",
    "sequential",
    "truncated",
    "tanh",
]


def _check_x(x: Tensor, cell: Cell) -> None:
    if cell.layout_error is not None:
        raise ValueError(cell.layout_error)
    input_size = cell.input_size
    if not isinstance(x, Tensor):
        raise ValueError(f"x must be a torch.Tensor [B, T, D], got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"x must be batch-first [B, T, D], got shape {tuple(x.shape)}")
    if x.shape[-1] != input_size:
        raise ValueError(f"x has {x.shape[-1]} features, the cell expects input_size={input_size}")
    if x.shape[1] < 1:
        raise ValueError("x must have at least one time step (T >= 1)")


def tanh(x: Tensor) -> Tensor:
    """tanh for the cells: ``torch.tanh`` on accelerators; on the CPU ``2 sigmoid(2x) - 1``.

    The two are equal in real arithmetic and differ by at most a few ulp of 1 in absolute terms (they
    agree with torch.nn's layers to 1e-7 in float32 and 1e-15 in float64). torch's CPU tanh runs about
    ten times slower than its sigmoid (2.4 ns against 0.24 ns an element, one core, this project's CI
    machine), and every solver and the step loop spend much of their time in it.
    """
    if x.device.type != "cpu" or x.numel() < _TANH_MIN:  # small: three ops cost more than the slow one
        return torch.tanh(x)
    return torch.sigmoid(2 * x) * 2 - 1


_TANH_MIN = 1 << 14


def _affine(x: Tensor, weight: Tensor, *biases) -> Tensor:
    """``x @ weight.T + sum(biases)`` over [..., D], with the bias added inside the matrix product (addmm):
    one pass over the [B, T, G] result instead of one more per bias."""
    bias = None
    for b in biases:
        if b is not None:
            bias = b if bias is None else bias + b
    if bias is None:
        return x @ weight.T
    return torch.addmm(bias, x.reshape(-1, x.shape[-1]), weight.T).view(*x.shape[:-1], weight.shape[0])


class Cell:
    """A recurrent step function ``s_t = f(s_{t-1}, x_t)`` applied to all positions at once.

    Subclasses define :meth:`prepare`, :meth:`step` and (optionally, for speed) :meth:`jacobian` and
    :meth:`jacobian_diag`; the defaults here compute the Jacobian with ``torch.func.jacrev`` under
    ``vmap``, so a new cell needs only its step. Parameters are held by reference (not copied), so
    gradients reach the torch module the cell was built from.
    """

    kind = "cell"
    input_size: int
    hidden_size: int
    layout_error: str | None = None  # set by from_torch for a time-major module's cells (see from_torch)

    @property
    def state_size(self) -> int:
        return self.hidden_size

    # -- the step ------------------------------------------------------------------------------------
    def prepare(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self, s_prev: Tensor, u: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, s_prev: Tensor, x: Tensor) -> Tensor:
        """``f(s_prev, x)`` for all positions: s_prev [B, T, S], x [B, T, D] -> [B, T, S]."""
        return self.step(s_prev, self.prepare(x))

    def output(self, s: Tensor) -> Tensor:
        """What the torch layer outputs from a state: ``h`` = the first H entries, [..., H]."""
        return s[..., : self.hidden_size]

    # -- Jacobians -----------------------------------------------------------------------------------
    def jacobian(self, s_prev: Tensor, u: Tensor) -> Tensor:
        """``J[..., i, j] = d f(s_prev, u)[i] / d s_prev[j]``: [..., S] x [..., G] -> [..., S, S]."""
        return jacobian_autograd(self, s_prev, u)

    def jacobian_diag(self, s_prev: Tensor, u: Tensor) -> Tensor:
        """The diagonal of :meth:`jacobian`, [..., S] (quasi-Newton's linearisation)."""
        return torch.diagonal(self.jacobian(s_prev, u), dim1=-2, dim2=-1)

    # -- states --------------------------------------------------------------------------------------
    def initial_state(self, h0, batch: int, *, dtype=None, device=None) -> Tensor:
        """The packed initial state [B, S] from ``h0`` (None: zeros; [B, H] or [1, B, H]; LSTM: (h0, c0))."""
        S = self.state_size
        if h0 is None:
            return torch.zeros(batch, S, dtype=dtype, device=device)
        if isinstance(h0, (tuple, list)):
            raise ValueError(f"{self.kind} takes h0 as one tensor [B, H], not a tuple")
        return _one_layer(h0, batch, S, "h0", dtype, device)

    def final_state(self, s_last: Tensor):
        """The torch-style final state from the last packed state [B, S]: ``h_n`` [1, B, H]."""
        return s_last[None, :, : self.hidden_size]

    def parameters(self) -> list[Tensor]:
        return [p for p in vars(self).values() if isinstance(p, Tensor)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(input_size={self.input_size}, hidden_size={self.hidden_size})"


def _one_layer(t: Tensor, batch: int, size: int, name: str, dtype=None, device=None) -> Tensor:
    """``t`` as [B, size], checked. A dtype or device other than the inputs' is an error, as in torch.nn's
    layers: casting silently would change the precision the caller chose for h0."""
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
    if dtype is not None and t.dtype != dtype:
        raise ValueError(
            f"{name} is {t.dtype} but the inputs are {dtype}; convert it (e.g. {name.split()[0]}.to(x.dtype))"
        )
    if device is not None and t.device != torch.device(device):
        raise ValueError(
            f"{name} is on {t.device} but the inputs are on {device}; move it (e.g. {name.split()[0]}.to(x.device))"
        )
    if t.dim() == 3 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 2 or t.shape != (batch, size):
        raise ValueError(
            f"{name} must have shape [B, {size}] = [{batch}, {size}] (or [1, B, {size}]), got {tuple(t.shape)}"
        )
    return t


def jacobian_autograd(cell: Cell, s_prev: Tensor, u: Tensor) -> Tensor:
    """The Jacobian of ``cell.step`` in ``s_prev`` by ``torch.func.jacrev`` under ``vmap`` (reference)."""
    from torch.func import jacrev, vmap

    lead = s_prev.shape[:-1]
    S, G = s_prev.shape[-1], u.shape[-1]
    fn = vmap(jacrev(lambda s, v: cell.step(s, v), argnums=0))
    J = fn(s_prev.reshape(-1, S), u.reshape(-1, G))  # (N, S, S)
    return J.reshape(*lead, S, S)


class RNNCell(Cell):
    """Elman RNN, ``h' = act(W_ih x + b_ih + W_hh h + b_hh)`` with act = tanh or relu."""

    def __init__(self, weight_ih, weight_hh, bias_ih=None, bias_hh=None, nonlinearity="tanh"):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.weight_ih, self.weight_hh = weight_ih, weight_hh  # [H, D], [H, H]
        self.bias_ih, self.bias_hh = bias_ih, bias_hh
        self.nonlinearity = nonlinearity
        self.kind = f"{nonlinearity} RNN"
        self.hidden_size, self.input_size = weight_ih.shape

    def prepare(self, x):
        _check_x(x, self)
        return _affine(x, self.weight_ih, self.bias_ih, self.bias_hh)  # (B, T, H)

    def _pre(self, s_prev, u):
        return u + s_prev @ self.weight_hh.T

    def step(self, s_prev, u):
        pre = self._pre(s_prev, u)
        return tanh(pre) if self.nonlinearity == "tanh" else torch.relu(pre)

    def _dact(self, s_prev, u):
        pre = self._pre(s_prev, u)
        if self.nonlinearity == "tanh":
            return 1 - tanh(pre) ** 2
        return (pre > 0).to(pre.dtype)

    def jacobian(self, s_prev, u):
        # J = diag(act'(pre)) W_hh
        return self._dact(s_prev, u)[..., :, None] * self.weight_hh

    def jacobian_diag(self, s_prev, u):
        return self._dact(s_prev, u) * torch.diagonal(self.weight_hh)


class GRUCell(Cell):
    """torch.nn.GRU's cell (gate order r, z, n in the weights)."""

    kind = "GRU"

    def __init__(self, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
        self.weight_ih, self.weight_hh = weight_ih, weight_hh  # [3H, D], [3H, H]
        self.bias_ih, self.bias_hh = bias_ih, bias_hh
        self.hidden_size = weight_hh.shape[1]
        self.input_size = weight_ih.shape[1]

    def prepare(self, x):
        _check_x(x, self)
        return _affine(x, self.weight_ih, self.bias_ih)  # (B, T, 3H)

    def _gates(self, s_prev, u):
        H = self.hidden_size
        w = s_prev @ self.weight_hh.T  # (..., 3H)
        if self.bias_hh is not None:
            w = w + self.bias_hh
        r = torch.sigmoid(u[..., :H] + w[..., :H])
        z = torch.sigmoid(u[..., H : 2 * H] + w[..., H : 2 * H])
        hn = w[..., 2 * H :]  # W_hn h + b_hn
        n = tanh(u[..., 2 * H :] + r * hn)
        return r, z, n, hn

    def step(self, s_prev, u):
        # the same gates as _gates, in fewer passes over memory (every solver and the loop spend their time here):
        # r and z through one sigmoid, n = tanh(u_n + r * hn) by addcmul, h' = (1-z) n + z h = lerp(n, h, z)
        H = self.hidden_size
        w = _affine(s_prev, self.weight_hh, self.bias_hh)
        rz = torch.sigmoid(u[..., : 2 * H] + w[..., : 2 * H])
        n = tanh(torch.addcmul(u[..., 2 * H :], rz[..., :H], w[..., 2 * H :]))
        return torch.lerp(n, s_prev, rz[..., H:])

    def _coefficients(self, s_prev, u):
        # h' = (1-z) n + z h, so
        # dh'/dh = diag((1-z)(1-n^2) r) W_hn + diag((1-z)(1-n^2) hn r(1-r)) W_hr
        #          + diag((h - n) z(1-z)) W_hz + diag(z)
        r, z, n, hn = self._gates(s_prev, u)
        dn = (1 - z) * (1 - n * n)
        return dn * r, dn * hn * r * (1 - r), (s_prev - n) * z * (1 - z), z

    def _blocks(self):
        H = self.hidden_size
        W = self.weight_hh
        return W[:H], W[H : 2 * H], W[2 * H :]  # W_hr, W_hz, W_hn

    def jacobian(self, s_prev, u):
        c_n, c_r, c_z, z = self._coefficients(s_prev, u)
        W_r, W_z, W_n = self._blocks()
        J = c_n[..., :, None] * W_n + c_r[..., :, None] * W_r + c_z[..., :, None] * W_z
        return J + torch.diag_embed(z)

    def jacobian_diag(self, s_prev, u):
        c_n, c_r, c_z, z = self._coefficients(s_prev, u)
        W_r, W_z, W_n = (torch.diagonal(W) for W in self._blocks())
        return c_n * W_n + c_r * W_r + c_z * W_z + z


class LSTMCell(Cell):
    """torch.nn.LSTM's cell (gate order i, f, g, o) on the packed state ``s = [h, c]`` (S = 2H)."""

    kind = "LSTM"

    def __init__(self, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
        self.weight_ih, self.weight_hh = weight_ih, weight_hh  # [4H, D], [4H, H]
        self.bias_ih, self.bias_hh = bias_ih, bias_hh
        self.hidden_size = weight_hh.shape[1]
        self.input_size = weight_ih.shape[1]

    @property
    def state_size(self) -> int:
        return 2 * self.hidden_size

    def prepare(self, x):
        _check_x(x, self)
        return _affine(x, self.weight_ih, self.bias_ih, self.bias_hh)  # (B, T, 4H)

    def _gates(self, s_prev, u):
        H = self.hidden_size
        h, c = s_prev[..., :H], s_prev[..., H:]
        pre = u + h @ self.weight_hh.T  # (..., 4H)
        i = torch.sigmoid(pre[..., :H])
        f = torch.sigmoid(pre[..., H : 2 * H])
        g = tanh(pre[..., 2 * H : 3 * H])
        o = torch.sigmoid(pre[..., 3 * H :])
        c_new = f * c + i * g
        tc = tanh(c_new)
        return i, f, g, o, c, c_new, tc

    def step(self, s_prev, u):
        # the same gates as _gates in fewer passes: one sigmoid over all four blocks (g's is unused)
        H = self.hidden_size
        h, c = s_prev[..., :H], s_prev[..., H:]
        pre = u + h @ self.weight_hh.T
        sig = torch.sigmoid(pre)
        g = tanh(pre[..., 2 * H : 3 * H])
        c_new = torch.addcmul(sig[..., H : 2 * H] * c, sig[..., :H], g)
        return torch.cat([sig[..., 3 * H :] * tanh(c_new), c_new], dim=-1)

    def _coefficients(self, s_prev, u):
        # dc'/dh = diag(c f(1-f)) W_hf + diag(g i(1-i)) W_hi + diag(i (1-g^2)) W_hg ;  dc'/dc = diag(f)
        # dh'/dh = diag(tc o(1-o)) W_ho + diag(o (1-tc^2)) dc'/dh ;                  dh'/dc = diag(o (1-tc^2) f)
        i, f, g, o, c, _, tc = self._gates(s_prev, u)
        a_f, a_i, a_g = c * f * (1 - f), g * i * (1 - i), i * (1 - g * g)
        a_o, dtc = tc * o * (1 - o), o * (1 - tc * tc)
        return a_i, a_f, a_g, a_o, dtc, f

    def _blocks(self):
        H = self.hidden_size
        W = self.weight_hh
        return W[:H], W[H : 2 * H], W[2 * H : 3 * H], W[3 * H :]  # W_hi, W_hf, W_hg, W_ho

    def jacobian(self, s_prev, u):
        a_i, a_f, a_g, a_o, dtc, f = self._coefficients(s_prev, u)
        W_i, W_f, W_g, W_o = self._blocks()
        dc_dh = a_f[..., :, None] * W_f + a_i[..., :, None] * W_i + a_g[..., :, None] * W_g  # (..., H, H)
        dh_dh = a_o[..., :, None] * W_o + dtc[..., :, None] * dc_dh
        top = torch.cat([dh_dh, torch.diag_embed(dtc * f)], dim=-1)  # (..., H, 2H)
        bottom = torch.cat([dc_dh, torch.diag_embed(f)], dim=-1)  # (..., H, 2H)
        return torch.cat([top, bottom], dim=-2)  # (..., 2H, 2H)

    def jacobian_diag(self, s_prev, u):
        a_i, a_f, a_g, a_o, dtc, f = self._coefficients(s_prev, u)
        W_i, W_f, W_g, W_o = (torch.diagonal(W) for W in self._blocks())
        dc_dh = a_f * W_f + a_i * W_i + a_g * W_g
        return torch.cat([a_o * W_o + dtc * dc_dh, f], dim=-1)

    def initial_state(self, h0, batch, *, dtype=None, device=None):
        H = self.hidden_size
        if h0 is None:
            return torch.zeros(batch, 2 * H, dtype=dtype, device=device)
        if isinstance(h0, (tuple, list)):
            if len(h0) != 2:
                raise ValueError("LSTM h0 must be (h0, c0) or a packed [B, 2H] tensor")
            h, c = (_one_layer(t, batch, H, n, dtype, device) for t, n in zip(h0, ("h0", "c0")))
            return torch.cat([h, c], -1)
        return _one_layer(h0, batch, 2 * H, "h0 (packed [h, c])", dtype, device)

    def final_state(self, s_last):
        H = self.hidden_size
        return s_last[None, :, :H], s_last[None, :, H:]


class CellStack(list):
    """A multi-layer recurrent network as a list of cells (layer 0 first), solved layer by layer."""

    @property
    def kind(self) -> str:
        return f"{len(self)}-layer {self[0].kind}"

    @property
    def input_size(self) -> int:
        return self[0].input_size

    @property
    def hidden_size(self) -> int:
        return self[-1].hidden_size

    def layer_h0(self, h0, layer: int):
        """Layer ``layer``'s initial state from torch's layout ([L, B, H] or the LSTM tuple), or None."""
        if h0 is None:
            return None
        L = len(self)
        parts = h0 if isinstance(h0, (tuple, list)) else (h0,)
        for p in parts:
            if not isinstance(p, Tensor) or p.dim() != 3 or p.shape[0] != L:
                raise ValueError(
                    f"h0 for a {L}-layer stack must be [L={L}, B, H] (LSTM: a tuple of two), "
                    f"got {tuple(p.shape) if isinstance(p, Tensor) else type(p).__name__}"
                )
        return tuple(p[layer] for p in parts) if isinstance(h0, (tuple, list)) else h0[layer]

    def __repr__(self) -> str:
        return f"CellStack({list.__repr__(self)})"


def _cell_from_weights(module, suffix: str, kind: str, nonlinearity: str = "tanh") -> Cell:
    get = lambda name: getattr(module, f"{name}{suffix}", None)  # noqa: E731
    args = (get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh"))
    if kind == "rnn":
        return RNNCell(*args, nonlinearity=nonlinearity)
    return GRUCell(*args) if kind == "gru" else LSTMCell(*args)


def from_torch(module: nn.Module, layer: int | None = None, *, allow_time_major: bool = False):
    """Cells sharing the weights of a torch recurrent module (gradients reach the module's parameters).

    ``module``: ``nn.RNN`` (tanh or relu), ``nn.GRU``, ``nn.LSTM``, or ``nn.RNNCell`` / ``nn.GRUCell`` /
    ``nn.LSTMCell``. Returns a :class:`Cell` for one layer, a :class:`CellStack` for ``num_layers > 1``,
    or layer ``layer`` alone when given. Bidirectional modules and LSTM projections (``proj_size > 0``)
    are not supported (ValueError). Inter-layer dropout is never applied (the solvers compute the
    eval-mode layer).

    Layout. The cells, the solvers and the references take batch-first x [B, T, D], always. A module built
    with ``batch_first=False`` (torch's default) reads time-major [T, B, D]; its own input handed to a
    solver would be read with B and T swapped, giving wrong numbers without an error. So the cells of such a
    module refuse any x (ValueError from :meth:`Cell.prepare`, which every solver and reference calls)
    unless ``allow_time_major=True``, by which the caller confirms that they will get batch-first x
    (``x.transpose(0, 1)`` of the module's input; the weights are the same). What reads only the weights
    (e.g. :func:`fpcore.stability.contraction_bound`) works either way.
    """
    kinds = {nn.RNN: "rnn", nn.GRU: "gru", nn.LSTM: "lstm", nn.RNNCell: "rnn", nn.GRUCell: "gru", nn.LSTMCell: "lstm"}
    kind = next((k for t, k in kinds.items() if isinstance(module, t)), None)
    if kind is None:
        raise ValueError(f"from_torch takes nn.RNN, nn.GRU, nn.LSTM or their *Cell, got {type(module).__name__}")
    nonlinearity = getattr(module, "nonlinearity", "tanh")
    if isinstance(module, nn.RNNCellBase):
        if layer not in (None, 0):
            raise ValueError(f"a {type(module).__name__} has one layer; got layer={layer}")
        return _cell_from_weights(module, "", kind, nonlinearity)
    assert isinstance(module, nn.RNNBase)  # nn.RNN, nn.GRU or nn.LSTM (kinds above)
    if module.bidirectional:
        raise ValueError("bidirectional modules are not supported: solve each direction as its own cell")
    if getattr(module, "proj_size", 0):
        raise ValueError("LSTM with proj_size > 0 is not supported")
    if module.dropout and module.training:
        warnings.warn(
            "from_torch: the module has inter-layer dropout and is in training mode; the fixed-point "
            "solvers compute the eval-mode layer (no dropout)",
            stacklevel=2,
        )
    L = module.num_layers
    if layer is not None and not 0 <= layer < L:
        raise ValueError(f"layer must be in [0, {L}), got {layer}")
    chosen = range(L) if layer is None else [layer]
    cells = [_cell_from_weights(module, f"_l{i}", kind, nonlinearity) for i in chosen]
    if not module.batch_first and not allow_time_major:
        for c in cells:
            c.layout_error = (
                f"this cell comes from a {type(module).__name__} with batch_first=False, whose own inputs are "
                f"time-major [T, B, D], but fpcore takes batch-first x [B, T, D]. Build the module with "
                f"batch_first=True, or call from_torch(module, allow_time_major=True) and pass x.transpose(0, 1)"
            )
    return cells[0] if len(cells) == 1 else CellStack(cells)


# -- references ---------------------------------------------------------------------------------------
def _layers(cell) -> Sequence[Cell]:
    return cell if isinstance(cell, CellStack) else [cell]


def _layer_h0(cell, h0, i):
    return cell.layer_h0(h0, i) if isinstance(cell, CellStack) else h0


def sequential(cell, x: Tensor, h0=None) -> Tensor:
    """The step-by-step loop ``s_t = f(s_{t-1}, x_t)``, t = 1..T: the reference every solver must match.

    x [B, T, D] -> packed states [B, T, S] (for a :class:`CellStack`: the last layer's states).
    """
    B, T, _ = x.shape
    inp = x
    for i, c in enumerate(_layers(cell)):
        u = c.prepare(inp)  # (B, T, G)
        s = c.initial_state(_layer_h0(cell, h0, i), B, dtype=u.dtype, device=u.device)
        states = []
        for t in range(T):
            s = c.step(s, u[:, t])
            states.append(s)
        S = torch.stack(states, dim=1)  # (B, T, S)
        inp = c.output(S)
    return S


def truncated(cell, x: Tensor, k: int, h0=None) -> Tensor:
    """Paper B's k-window truncated model: h_t from only the last k inputs x_{t-k+1..t}, from a zero state.

    For t <= k the window reaches the start of the sequence, so the recurrence starts from ``h0`` (zeros
    when None): the truncated and the full model agree there. Computed window by window: step j (of k)
    feeds x_{t-k+1+j} to the state of every position t at once; positions whose window starts before
    t = 1 keep their start state until the window reaches x_1. Returns packed states [B, T, S] (stack: the
    last layer's, each layer truncated to k). Costs k steps on [B, T, S].
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    B, T, _ = x.shape
    inp = x
    for i, c in enumerate(_layers(cell)):
        u = c.prepare(inp)  # (B, T, G)
        s0 = c.initial_state(_layer_h0(cell, h0, i), B, dtype=u.dtype, device=u.device)
        t = torch.arange(T, device=u.device)  # 0-based position of each output
        start = t - k + 1  # 0-based index of each window's first input
        s = torch.where((start <= 0)[None, :, None], s0[:, None, :], torch.zeros_like(s0)[:, None, :])
        s = s.expand(B, T, s0.shape[-1])
        for j in range(k):
            src = start + j  # input index fed at step j, per position
            valid = (src >= 0)[None, :, None]
            s = torch.where(valid, c.step(s, u[:, src.clamp(min=0)]), s)
        inp = c.output(s)
    return s


def to_torch(cell: Cell, *, batch_first: bool = True) -> nn.Module:
    """The one-layer ``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM`` that computes ``cell`` (the inverse of :func:`from_torch`).

    The module holds copies of the cell's weights (gradients do not flow back to the cell; to differentiate,
    call it through ``torch.func.functional_call`` with the cell's tensors, as block Jacobi does), on their
    dtype and device, so that torch's fused layer (oneDNN on CPU, cuDNN on CUDA) can run the step loop. Only
    the exact :class:`RNNCell`, :class:`GRUCell` and :class:`LSTMCell` convert: a subclass may change the step.
    """
    kinds = {RNNCell: nn.RNN, GRUCell: nn.GRU, LSTMCell: nn.LSTM}
    if type(cell) not in kinds:
        raise ValueError(f"to_torch converts RNNCell, GRUCell and LSTMCell, not {type(cell).__name__}")
    assert isinstance(cell, (RNNCell, GRUCell, LSTMCell))
    has_bias = cell.bias_ih is not None or cell.bias_hh is not None
    kw = {"nonlinearity": cell.nonlinearity} if isinstance(cell, RNNCell) else {}
    w = cell.weight_hh
    module = kinds[type(cell)](
        cell.input_size, cell.hidden_size, bias=has_bias, batch_first=batch_first, device=w.device, dtype=w.dtype, **kw
    )
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            if hasattr(module, f"{name}_l0"):
                value = getattr(cell, name)
                getattr(module, f"{name}_l0").copy_(value if value is not None else 0.0)
    return module.requires_grad_(False)
