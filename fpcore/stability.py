r"""Stability of recurrent models and their feed-forward (truncated) approximation: the theory (paper B).

A recurrent model :math:`s_t = f(s_{t-1}, x_t)` is *stable* if :math:`f` is :math:`\lambda`-contractive in
the state for some :math:`\lambda < 1`: :math:`\|f(s, x) - f(s', x)\| \le \lambda \|s - s'\|` for all s, s', x
(Miller & Hardt, *Stable Recurrent Models*, ICLR 2019, arXiv 1805.10369). Then the k-window truncated model
(run the recurrence over only the last k inputs, from a zero state) differs from the recurrent one by at most
:math:`\lambda^k \max_t \|s_t\|`, and models trained by gradient descent from the same start stay close too.
The truncated model is exactly k Jacobi iterations of the fixed-point engine from a zero start
(:func:`fpcore.fixed_point.solve` with ``method="jacobi", iters=k``; this equality is the series' own
observation), which is how it is computed here.

This module holds the theory only, in four parts:

* norms and certificates: :func:`spectral_norm` (exact SVD or power iteration), :func:`gate_upper_bound`,
  :func:`lstm_condition` (paper B's LSTM condition, in its norm and in the norm the LSTM rescaling controls)
  and :func:`contraction_bound` (a certified :math:`\lambda` for a tanh/ReLU RNN, LSTM or GRU);
* models with a chosen norm and projections onto stable models: :func:`scale_spectral_`,
  :func:`project_spectral`, :func:`lstm_rescale_`, :func:`init_forget_bias_`, :func:`project_model_` and
  :func:`project_after_step` (a hook that re-projects after every optimizer step);
* data-dependent stability: :func:`local_contraction`, the distribution of
  :math:`\|\partial s_t/\partial s_{t-k}\|_2` along real trajectories;
* truncation: :func:`truncation_errors`.

The experiments built on it (training a recurrent model and its truncated twin side by side) live in
:mod:`fpcore.experiments_stability`, the small character model they train in :mod:`fpcore.models.char`.

What paper B's released code does, read from the authors' repository (millerjohnp/TCN, files
``TCN/poly_music/model.py`` and ``TCN/mnist_pixel/pmnist_test.py``), where it differs from this module:

* the forget-gate bias is initialised by writing 10 into *both* ``bias_ih`` and ``bias_hh`` of every layer,
  an effective bias of 20 (:func:`init_forget_bias_` sets the sum);
* the LSTM "projection" sets every column of W_i, W_f, W_z, W_o (and U_f) *to* its L1 constant, small columns
  included, and touches layer 0 only (:func:`lstm_rescale_` clips the columns above the constant, in every
  layer: a projection);
* the constants bound column sums (the induced 1-norm), while the paper's LSTM condition is stated in the
  induced :math:`\infty`-norm, row sums (see :func:`lstm_condition`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fpcore import cells as _cells

__all__ = [
    "LIPSCHITZ",
    "spectral_norm",
    "gate_upper_bound",
    "LSTMCondition",
    "lstm_condition",
    "contraction_bound",
    "scale_spectral_",
    "project_spectral",
    "LSTM_COLUMN_NORMS",
    "LSTM_INPUT_FORGET_NORM",
    "lstm_rescale_",
    "init_forget_bias_",
    "project_model_",
    "project_after_step",
    "local_contraction",
    "truncation_errors",
]

# Lipschitz constants of the activations (sup |rho'|).
LIPSCHITZ = {"tanh": 1.0, "relu": 1.0, "sigmoid": 0.25}


# -------------------------------------------------------------------------------------------------
# Norms
# -------------------------------------------------------------------------------------------------
def spectral_norm(
    W: Tensor, *, method: str = "svd", iters: int = 5000, tol: float = 1e-8, generator: torch.Generator | None = None
) -> Tensor:
    r"""The largest singular value :math:`\|W\|_2` of a matrix W [m, n] (or a batch [..., m, n]).

    ``method="svd"``: exact, from ``torch.linalg.svdvals`` in float64 (O(m n min(m, n)) with a large
    constant: about 0.7 s for one 2600 x 650 matrix on two CPU cores).
    ``method="power"``: power iteration on the Gram matrix :math:`G = W^\top W` (or :math:`W W^\top`,
    whichever is smaller, r x r with r = min(m, n)): v <- G v / ||G v||, with the Rayleigh quotient
    :math:`v^\top G v \to \sigma_1^2`. Forming G costs one matrix product; each step then costs only
    O(r^2). The estimate approaches :math:`\sigma_1` from below (it never overstates the norm) at the
    rate :math:`(\sigma_2/\sigma_1)^2` per step, which is slow for random matrices (their top singular
    values crowd together), hence the cheap steps. It stops when the estimate changes by less than
    ``tol`` (relative) or after ``iters`` steps; tol = 1e-8 gives about 1e-6 relative error on random
    650-wide matrices. Returns a tensor [...] in W's dtype.
    """
    if W.dim() < 2:
        raise ValueError(f"spectral_norm needs a matrix [..., m, n], got shape {tuple(W.shape)}")
    if not W.is_floating_point():
        raise ValueError(f"spectral_norm needs a floating-point matrix, got {W.dtype}")
    W = W.detach()
    if method == "svd":
        return torch.linalg.svdvals(W.double())[..., 0].to(W.dtype)
    if method != "power":
        raise ValueError(f"method must be 'svd' or 'power', got {method!r}")
    Wf = W.float() if W.dtype in (torch.float16, torch.bfloat16) else W
    G = (Wf.mT @ Wf if W.shape[-2] >= W.shape[-1] else Wf @ Wf.mT).double()  # (..., r, r)
    v = torch.randn(*G.shape[:-1], 1, dtype=torch.double, device=W.device, generator=generator)
    v = v / v.norm(dim=-2, keepdim=True)
    lam = torch.zeros(G.shape[:-2], dtype=torch.double, device=W.device)
    for i in range(iters):
        w = G @ v  # (..., r, 1)
        new = (v * w).sum((-2, -1))  # Rayleigh quotient v^T G v
        v = w / w.norm(dim=-2, keepdim=True).clamp_min(1e-300)
        if i % 8 == 7 and bool(((new - lam).abs() <= tol * new.abs()).all()):  # check every 8 steps
            lam = new
            break
        lam = new
    return lam.clamp_min(0).sqrt().to(W.dtype)


def _induced(W: Tensor, norm: str) -> float:
    """Induced matrix norm of W [m, n] acting as W h: "1" = the largest column L1 sum, "inf" = the largest row
    L1 sum (the norm the columns rescaling controls, and the norm paper B's LSTM condition is stated in)."""
    return float(W.detach().abs().sum(0 if norm == "1" else 1).max())


def gate_upper_bound(
    W_h: Tensor,
    W_x: Tensor | None,
    bias: Tensor | None,
    *,
    h_max: float = 1.0,
    x_max: float | None = None,
    inputs: Tensor | None = None,
) -> float:
    r"""An upper bound on a sigmoid gate :math:`\sigma(W_h h + W_x x + b)` over all |h| <= h_max and all inputs x.

    Per unit j: :math:`\sigma(h_{max}\sum_i|W_h[j,i]| + x_{max}\sum_i|W_x[j,i]| + b_j)`, maximised over j, for all
    |x_i| <= ``x_max``; or, when the inputs form a known finite set ``inputs`` [N, D] (the embedding table of a
    language model), :math:`\sigma(h_{max}\sum_i|W_h[j,i]| + (W_x x)_j + b_j)` maximised over j and those x (tighter).
    Neither given means unbounded inputs: the bound is then 1 (no gate is bounded away from 1).
    """
    pre = h_max * W_h.detach().abs().sum(1)  # (units,)
    if W_x is not None:
        if inputs is not None:
            pre = pre + inputs.detach() @ W_x.detach().T  # (N, units)
        elif x_max is not None:
            pre = pre + x_max * W_x.detach().abs().sum(1)
        else:
            return 1.0
    if bias is not None:
        pre = pre + bias.detach()
    return float(torch.sigmoid(pre.double()).max())


@dataclass(frozen=True)
class LSTMCondition:
    r"""Paper B's sufficient condition for a stable LSTM, evaluated on one layer (see :func:`lstm_condition`).

    ``norm``: "inf" (paper B's: largest row sum) or "1" (largest column sum). ``f_bar``: an upper bound on
    every forget gate. ``a``: :math:`\|W_i\|, \|W_f\|, \|W_z\|, \|W_o\|` in that norm (keys "i", "f", "z", "o").
    ``lam``: the contraction constant those numbers certify, :math:`\bar f + a_f / (4(1 - \bar f)) + a_i/4 +
    a_z + a_o/4` (inf when :math:`\bar f \ge 1`). ``holds``: paper B's four inequalities, each of which keeps
    one term of ``lam`` below a quarter of the margin :math:`1 - \bar f`, so ``holds`` implies ``lam < 1``.
    """

    norm: str
    f_bar: float
    a: dict[str, float]
    lam: float
    holds: bool


def lstm_condition(
    cell, *, x_max: float | None = None, inputs: Tensor | None = None, norm: str = "inf"
) -> LSTMCondition:
    r"""Paper B's LSTM stability condition on one LSTM layer, in the induced ``norm`` ("inf" or "1").

    The LSTM (gates :math:`i, f, o = \sigma(\cdot)`, :math:`z = \tanh(\cdot)` of :math:`W_\ast h + U_\ast x + b_\ast`,
    :math:`c' = f \odot c + i \odot z`, :math:`h' = o \odot \tanh(c')`) is contractive in the state s = (c, h)
    when, with :math:`\bar f = \sup \|f_t\|_\infty` (Miller & Hardt, arXiv 1805.10369, its LSTM proposition, in the
    induced :math:`\infty`-norm, the largest absolute row sum):

    .. math::
        \|W_i\|, \|W_o\| < 1 - \bar f, \qquad \|W_z\| \le (1 - \bar f)/4, \qquad \|W_f\| < (1 - \bar f)^2.

    Why (three lines; this module's derivation, which gives the same constant in any induced norm): measure a
    difference of states by :math:`\max(\|\Delta c\|, \|\Delta h\|)` and use
    :math:`\|u \odot v\| \le \|u\|_\infty \|v\|`, :math:`|\sigma'| \le 1/4`, :math:`|\tanh'| \le 1`,
    :math:`|i|, |o|, |z| \le 1`, and :math:`|c| \le \bar c = 1/(1 - \bar f)` (from :math:`|c_t| \le \bar f
    |c_{t-1}| + 1`, :math:`c_0 = 0`):

    .. math::
        \|\Delta c'\| &\le \bar f \|\Delta c\| + (\bar c\, a_f/4 + a_i/4 + a_z)\|\Delta h\| \\
        \|\Delta h'\| &\le (a_o/4)\|\Delta h\| + \|\Delta c'\|

    so :math:`\lambda = \bar f + \bar c\, a_f/4 + a_i/4 + a_z + a_o/4`, and each of paper B's inequalities keeps
    one of the four terms after :math:`\bar f` below :math:`(1 - \bar f)/4`. The authors' constants (columns of
    W_i, W_f, W_z, W_o at 0.395, 0.155, 0.099, 0.395) are those inequalities at :math:`1 - \bar f = 0.396`
    (0.395 < 0.396, 0.099 = 0.396/4, 0.155 < 0.396^2), i.e. for forget gates up to 0.604. They bound column
    sums (``norm="1"``), not the row sums of the paper's norm: a matrix whose every column sum is 0.395 can have
    row sums far above it, so the rescaling alone does not establish the paper's condition; the same
    derivation in the 1-norm does (:func:`contraction_bound` uses it).

    ``cell``: an fpcore LSTM cell or a one-layer ``nn.LSTM`` / ``nn.LSTMCell``. :math:`\bar f` is
    :func:`gate_upper_bound` over |h| <= 1 and |x| <= ``x_max`` (max |x_i| of the inputs; 1 for one-hot
    inputs), or over the finite set ``inputs`` [N, D] (e.g. an embedding table); neither means unbounded inputs,
    which leaves :math:`\bar f = 1` and ``lam`` infinite.
    """
    if norm not in ("inf", "1"):
        raise ValueError(f"norm must be 'inf' or '1', got {norm!r}")
    if isinstance(cell, nn.Module):
        cell = _cells.from_torch(cell)
    if not isinstance(cell, _cells.LSTMCell):
        raise ValueError(f"lstm_condition takes one LSTM layer, got {type(cell).__name__}")
    H = cell.hidden_size
    W, U, b = cell.weight_hh.detach(), cell.weight_ih.detach(), _total_bias(cell)
    a = {g: _induced(block, norm) for g, block in zip("ifzo", W.split(H))}
    f_bar = gate_upper_bound(
        W[H : 2 * H], U[H : 2 * H], None if b is None else b[H : 2 * H], x_max=x_max, inputs=inputs
    )
    if f_bar >= 1.0:
        return LSTMCondition(norm, f_bar, a, math.inf, False)
    m = 1.0 - f_bar
    lam = f_bar + a["f"] / (4 * m) + a["i"] / 4 + a["z"] + a["o"] / 4
    holds = a["i"] < m and a["o"] < m and a["z"] <= m / 4 and a["f"] < m * m
    return LSTMCondition(norm, f_bar, a, lam, holds)


def contraction_bound(cell, *, x_max: float | None = None, inputs: Tensor | None = None) -> float:
    r"""A certified contraction constant :math:`\lambda` of one recurrent layer: stable if < 1.

    ``cell``: an fpcore cell (:func:`fpcore.cells.from_torch`) or a one-layer torch RNN/GRU/LSTM.
    ``x_max`` bounds the inputs (max |x_i|; 1 for one-hot inputs), or ``inputs`` [N, D] lists them all (an
    embedding table): needed to bound gates below 1 (:func:`gate_upper_bound`).
    The bounds are sufficient, not necessary: a model above 1 may still be stable (see
    :func:`local_contraction` for what it does on data).

    tanh / ReLU RNN, :math:`h' = \rho(W h + U x + b)`, in the 2-norm:
    :math:`\lambda = L_\rho \|W\|_2` with :math:`L_{\tanh} = L_{relu} = 1` (paper B).

    LSTM, state (c, h): :func:`lstm_condition` in the induced 1-norm (largest column sum, the norm
    :func:`lstm_rescale_` controls), i.e. the state difference measured by
    :math:`\max(\|\Delta c\|_1, \|\Delta h\|_1)`: :math:`\lambda = \bar f + \bar c a_f/4 + a_i/4 + a_z + a_o/4`.
    After the rescaling, :math:`a_i/4 + a_z + a_o/4 \le 0.2965`, so the LSTM is certified whenever
    :math:`\bar f + 0.03875/(1-\bar f) < 0.7035`, e.g. forget gates below 0.6.

    GRU, :math:`h' = (1 - z) n + z h`, :math:`n = \tanh(U_n x + b_n + r(W_n h + b_{hn}))`, in the
    :math:`\infty`-norm (this module's derivation; paper B treats the RNN and the LSTM only):
    :math:`|\Delta h'_j| \le (1-z_j)|\Delta n_j| + z_j |\Delta h_j| + |h_j - n_j||\Delta z_j|`
    with :math:`|h - n| \le 2`, :math:`\|\Delta z\|_\infty \le \|W_z\|_\infty\|\Delta h\|_\infty/4` and
    :math:`\|\Delta n\|_\infty \le \beta\|\Delta h\|_\infty`,
    :math:`\beta = \|W_n\|_\infty + \|W_r\|_\infty (\|W_n\|_\infty + \|b_{hn}\|_\infty)/4`. Since
    :math:`(1-z)\beta + z` grows with z when :math:`\beta < 1`, an upper bound :math:`\bar z` on z gives
    :math:`\lambda = \max(\beta, \bar z + (1-\bar z)\beta) + \|W_z\|_\infty / 2`.
    """
    if isinstance(cell, nn.Module):
        cell = _cells.from_torch(cell)
    if isinstance(cell, _cells.CellStack):
        raise ValueError("contraction_bound takes one layer; call it per layer of a CellStack")
    W = cell.weight_hh.detach()
    if isinstance(cell, _cells.RNNCell):
        return LIPSCHITZ[cell.nonlinearity] * float(spectral_norm(W))
    if isinstance(cell, _cells.LSTMCell):
        return lstm_condition(cell, x_max=x_max, inputs=inputs, norm="1").lam
    if isinstance(cell, _cells.GRUCell):
        H = cell.hidden_size
        Wx, b = cell.weight_ih.detach(), _total_bias(cell)
        Wr, Wz, Wn = W.split(H)
        b_hn = cell.bias_hh[2 * H :].detach() if cell.bias_hh is not None else torch.zeros(H)
        beta = _induced(Wn, "inf") + _induced(Wr, "inf") * (_induced(Wn, "inf") + float(b_hn.abs().max())) / 4
        z_bar = gate_upper_bound(Wz, Wx[H : 2 * H], None if b is None else b[H : 2 * H], x_max=x_max, inputs=inputs)
        return max(beta, z_bar + (1 - z_bar) * beta) + _induced(Wz, "inf") / 2
    raise ValueError(f"no contraction bound for a {type(cell).__name__}")


def _total_bias(cell) -> Tensor | None:
    parts = [p.detach() for p in (cell.bias_ih, cell.bias_hh) if p is not None]
    return sum(parts) if parts else None


# -------------------------------------------------------------------------------------------------
# Projections
# -------------------------------------------------------------------------------------------------
@torch.no_grad()
def scale_spectral_(module: nn.Module, norm: float) -> nn.Module:
    r"""Scale every gate block of every ``weight_hh`` in ``module`` to spectral norm ``norm``, in place.

    For a tanh RNN this makes :math:`\lambda = \|W\|_2` exactly ``norm`` (< 1: paper B's stable regime;
    > 1: not contractive). For a GRU / LSTM each of the 3 / 4 gate blocks gets that norm (which bounds the
    blocks, not the cell's contraction: see :func:`contraction_bound`). Returns the module.
    """
    if not norm > 0:
        raise ValueError(f"norm must be > 0, got {norm}")
    for mod in module.modules():
        if not isinstance(mod, (nn.RNNBase, nn.RNNCellBase)):
            continue
        for name, p in mod.named_parameters(recurse=False):
            if name.startswith("weight_hh"):
                for block in p.chunk(_gates(mod), 0):
                    block.mul_(norm / spectral_norm(block))
    return module


def _gates(mod: nn.Module) -> int:
    """How many gate blocks a torch recurrent module stacks in its ``weight_hh``: RNN 1, GRU 3, LSTM 4."""
    if isinstance(mod, (nn.LSTM, nn.LSTMCell)):
        return 4
    return 3 if isinstance(mod, (nn.GRU, nn.GRUCell)) else 1


def project_spectral(W: Tensor, max_norm: float = 1.0) -> Tensor:
    r"""The nearest matrix (in Frobenius and spectral norm) with :math:`\|W\|_2 \le` ``max_norm``.

    Clip the singular values: :math:`W = U \Sigma V^\top \mapsto U \min(\Sigma, m) V^\top`. A matrix
    already inside the ball (up to a relative 1e-6 of rounding) is returned unchanged (the same values,
    not a round trip through the SVD), so the projection is idempotent to the bit. This is paper B's
    projection for the RNN (the authors clip at 1).
    """
    if max_norm <= 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    Wd = W.detach().double()
    U, S, Vh = torch.linalg.svd(Wd, full_matrices=False)
    if float(S[..., 0].max()) <= max_norm * (1 + 1e-6):  # slack: a clipped matrix rounds to max_norm +- ulp
        return W.detach().clone()
    return ((U * S.clamp(max=max_norm).unsqueeze(-2)) @ Vh).to(W.dtype)


# The constants of paper B's LSTM rescaling (the authors' code): an L1 norm for each column of these recurrent
# blocks. They are paper B's LSTM condition at 1 - max forget gate = 0.396 (see lstm_condition).
LSTM_COLUMN_NORMS = {"i": 0.395, "f": 0.155, "z": 0.099, "o": 0.395}
LSTM_INPUT_FORGET_NORM = 0.25  # the columns of the forget gate's input weights U_f


def _clip_columns_(M: Tensor, max_l1: float) -> None:
    """Scale each column of M whose L1 norm exceeds ``max_l1`` down to exactly ``max_l1`` (in place)."""
    norms = M.abs().sum(0, keepdim=True)  # (1, cols)
    # A relative slack of 1e-6 keeps a clipped column (whose norm rounds to max_l1 +- 1 ulp) untouched the
    # next time, so the projection is idempotent to the bit.
    over = norms > max_l1 * (1 + 1e-6)
    M.mul_(torch.where(over, max_l1 / norms.clamp_min(1e-30), torch.ones_like(norms)))


@torch.no_grad()
def lstm_rescale_(
    lstm: nn.LSTM | nn.LSTMCell,
    *,
    column_norms: dict[str, float] | None = None,
    input_forget_norm: float | None = LSTM_INPUT_FORGET_NORM,
) -> nn.Module:
    """Paper B's LSTM constants as a projection, in place: column L1 norms of W_i, W_f, W_z, W_o (and U_f) clipped.

    torch's gate order in ``weight_hh`` is (i, f, g=z, o), each block [H, H] acting as ``W h``, so a column
    sum is the induced 1-norm. Every column whose L1 norm exceeds its target (:data:`LSTM_COLUMN_NORMS`:
    0.395, 0.155, 0.099, 0.395; U_f: 0.25) is scaled down to it; smaller columns are left alone, so the map
    is a projection (idempotent), applied to every layer. Applied after every optimizer step, every column
    stays at or below its target. Returns the module.

    Two differences from the authors' code (millerjohnp/TCN, ``TCN/poly_music/model.py``, ``stabilize``):
    it rescales every column *to* its constant (columns below it grow) and only layer 0. What this
    certifies: :func:`contraction_bound` (the condition in the 1-norm, which needs the forget gates bounded
    too); paper B's condition in its own norm (row sums) is not implied, see :func:`lstm_condition`.
    """
    norms = {**LSTM_COLUMN_NORMS, **(column_norms or {})}
    suffixes = [""] if isinstance(lstm, nn.LSTMCell) else [f"_l{i}" for i in range(lstm.num_layers)]
    for sfx in suffixes:
        W = getattr(lstm, f"weight_hh{sfx}")
        for block, gate in zip(W.chunk(4, 0), ("i", "f", "z", "o")):
            _clip_columns_(block, norms[gate])
        if input_forget_norm is not None:
            U = getattr(lstm, f"weight_ih{sfx}")
            _clip_columns_(U.chunk(4, 0)[1], input_forget_norm)
    return lstm


@torch.no_grad()
def init_forget_bias_(lstm: nn.LSTM | nn.LSTMCell, value: float = 10.0) -> nn.Module:
    """Set the effective forget-gate bias, b_ih + b_hh over the f block, to ``value`` in every layer (b_hh's f
    block becomes 0).

    Paper B's code (millerjohnp/TCN, ``init_weights``) writes 10 into the f block of *both* ``bias_ih`` and
    ``bias_hh``, an effective bias of 20: ``init_forget_bias_(lstm, 20.0)`` reproduces it. Either way
    sigmoid(b) is within 1e-4 of 1, so no stability certificate applies at that start
    (:func:`lstm_condition` needs forget gates below about 0.6). Returns the module.
    """
    suffixes = [""] if isinstance(lstm, nn.LSTMCell) else [f"_l{i}" for i in range(lstm.num_layers)]
    for sfx in suffixes:
        for name, v in ((f"bias_ih{sfx}", value), (f"bias_hh{sfx}", 0.0)):
            bias = getattr(lstm, name, None)
            if bias is not None:
                bias.chunk(4)[1].fill_(v)
    return lstm


@torch.no_grad()
def project_model_(
    model: nn.Module,
    *,
    max_norm: float = 1.0,
    lstm: str = "rescale",
    input_forget_norm: float | None = LSTM_INPUT_FORGET_NORM,
) -> list[str]:
    """Project every recurrent layer inside ``model`` onto a stable set, in place; return what was touched.

    * ``nn.RNN`` / ``nn.RNNCell``: clip the spectral norm of each ``weight_hh`` at ``max_norm``;
    * ``nn.LSTM`` / ``nn.LSTMCell``: ``lstm="rescale"`` applies :func:`lstm_rescale_` (paper B's constants,
      clipped, in every layer; ``input_forget_norm`` bounds the columns of U_f, None leaves U_f free);
      ``lstm="spectral"`` clips each gate block's spectral norm at ``max_norm`` instead;
    * ``nn.GRU`` / ``nn.GRUCell``: clip each gate block's spectral norm at ``max_norm`` (a heuristic:
      a certificate also needs the update gate bounded below 1, see :func:`contraction_bound`).
    """
    if lstm not in ("rescale", "spectral"):
        raise ValueError(f"lstm must be 'rescale' or 'spectral', got {lstm!r}")
    touched = []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.LSTM, nn.LSTMCell)) and lstm == "rescale":
            lstm_rescale_(mod, input_forget_norm=input_forget_norm)
            touched.append(name or type(mod).__name__)
            continue
        if not isinstance(mod, (nn.RNNBase, nn.RNNCellBase)):
            continue
        for pname, p in mod.named_parameters(recurse=False):
            if pname.startswith("weight_hh"):
                for block in p.chunk(_gates(mod), 0):
                    block.copy_(project_spectral(block, max_norm))
        touched.append(name or type(mod).__name__)
    return touched


def project_after_step(
    optimizer: torch.optim.Optimizer, model: nn.Module, **kwargs
) -> torch.utils.hooks.RemovableHandle:
    """Re-project ``model`` (:func:`project_model_` with ``kwargs``) after every ``optimizer.step()``.

    Returns the hook handle; ``handle.remove()`` stops it. Projected gradient descent in one line::

        handle = stability.project_after_step(opt, model, max_norm=0.99)
    """
    project_model_(model, **kwargs)  # start inside the stable set too

    def hook(opt, args, kw) -> None:
        project_model_(model, **kwargs)

    return optimizer.register_step_post_hook(hook)


# -------------------------------------------------------------------------------------------------
# Data-dependent stability
# -------------------------------------------------------------------------------------------------
def _chain_norm_power(
    cell, s_prev: Tensor, u: Tensor, k: int, *, iters: int = 300, tol: float = 1e-4, seed: int = 0
) -> Tensor:
    """||J_{j+k-1} ... J_j||_2 for every window of k consecutive steps, without forming a Jacobian.

    Power iteration on P^T P, where P v is k Jacobian-vector products (``torch.func.jvp`` of the step)
    and P^T w is k vector-Jacobian products: each costs about one step of the cell over the positions,
    O(S x G) per position instead of the O(S^2) memory and O(S^3) time of forming J and its SVD.
    Returns [B, T - k + 1]; approaches each norm from below and stops at a relative change of ``tol``.
    """
    from torch.func import jvp, vjp

    B, T, S = s_prev.shape
    n = T - k + 1
    steps = [lambda s, j=j: cell.step(s, u[:, j : j + n]) for j in range(k)]  # factor j: positions j..j+n-1
    points = [s_prev[:, j : j + n] for j in range(k)]  # (B, n, S) each
    pullbacks = [vjp(f, p)[1] for f, p in zip(steps, points)]
    gen = torch.Generator(device=s_prev.device).manual_seed(seed)
    v = torch.randn(B, n, S, dtype=s_prev.dtype, device=s_prev.device, generator=gen)
    v = v / v.norm(dim=-1, keepdim=True)
    lam = torch.zeros(B, n, dtype=s_prev.dtype, device=s_prev.device)
    for i in range(iters):
        w = v
        for f, p in zip(steps, points):  # P v: the earliest factor first
            w = jvp(f, (p,), (w,))[1]
        for pull in reversed(pullbacks):  # P^T (P v)
            w = pull(w)[0]
        new = (v * w).sum(-1)  # Rayleigh quotient of P^T P, per window
        v = w / w.norm(dim=-1, keepdim=True).clamp_min(1e-30)
        done = i > 0 and bool(((new - lam).abs() <= tol * new.abs()).all())
        lam = new
        if done:
            break
    return lam.clamp_min(0).sqrt()


@torch.no_grad()
def local_contraction(
    cell, x: Tensor, h0=None, *, k: int = 1, states: Tensor | None = None, method: str = "auto"
) -> Tensor:
    r"""How much the trajectory forgets: :math:`\|\partial s_t/\partial s_{t-k}\|_2` along the real trajectory.

    ``cell``: one layer (an fpcore cell or a one-layer torch module); x [B, T, D]. The trajectory is the
    sequential solution (or ``states`` [B, T, S] if given). Returns [B, T - k + 1]: entry (b, j) is the
    spectral norm of the product of Jacobians :math:`J_t J_{t-1} \cdots J_{t-k+1}` with t = j + k
    (1-based), i.e. the sensitivity of :math:`s_t` to the state k steps earlier.

    ``k=1`` is the one-step local contraction: below 1 at (b, t) means that step contracts. Paper B
    observes that nominally unstable trained models operate in the stable regime on their data; the
    k-step form shows it even when single steps expand: the effective rate per step,
    :math:`\|J_t \cdots J_{t-k+1}\|^{1/k}`, is what bounds the truncation error. For the LSTM the state is
    (h, c) and each Jacobian is [2H, 2H].

    ``method``: "svd" forms each product and takes its exact norm (O(k S^3) per position); "power"
    runs a power iteration on Jacobian-vector products without forming J (a lower bound, stopped at a
    relative change of 1e-4, accurate to about 1e-3); "auto" takes "svd" for S <= 128 and "power" above
    (a 650-unit LSTM has S = 1300).
    """
    if method not in ("auto", "svd", "power"):
        raise ValueError(f"method must be 'auto', 'svd' or 'power', got {method!r}")
    if isinstance(cell, nn.Module):
        cell = _cells.from_torch(cell)
    if isinstance(cell, _cells.CellStack):
        raise ValueError("local_contraction takes one layer; pass from_torch(module, layer=i)")
    T = x.shape[1]
    if not isinstance(k, int) or not 1 <= k <= T:
        raise ValueError(f"k must be an int in [1, T={T}], got {k!r}")
    u = cell.prepare(x)  # (B, T, G)
    if states is None:
        states = _cells.sequential(cell, x, h0)  # (B, T, S)
    s0 = cell.initial_state(h0, x.shape[0], dtype=u.dtype, device=u.device)
    s_prev = torch.cat([s0[:, None], states[:, :-1]], 1)  # (B, T, S)
    if method == "power" or (method == "auto" and s_prev.shape[-1] > 128):
        return _chain_norm_power(cell, s_prev, u, k).to(x.dtype)
    J = cell.jacobian(s_prev, u).double()  # (B, T, S, S): J[:, t] = d s_t / d s_{t-1}
    P = J
    for j in range(1, k):
        P = J[:, j:] @ P[:, :-1]  # (B, T - j, S, S): d s_t / d s_{t-j-1}
    return torch.linalg.matrix_norm(P, ord=2).to(x.dtype)


# -------------------------------------------------------------------------------------------------
# Truncation: the feed-forward approximation, for inference and for training
# -------------------------------------------------------------------------------------------------
@torch.no_grad()
def truncation_errors(cell, x: Tensor, ks: Sequence[int], h0=None) -> dict[str, Tensor]:
    r"""How far the k-window truncated model is from the recurrent one, for each k in ``ks``.

    Returns ``{"k": [K], "error": [K], "scale": []}`` with
    :math:`error_k = \max_{b,t} \|h_t - h_t^{(k)}\|_2` (outputs h, 2-norm over features) and
    ``scale`` = :math:`\max_{b,t} \|h_t\|_2`. For a :math:`\lambda`-contractive RNN (2-norm),
    :math:`error_k \le \lambda^k \cdot scale`: the truncated model starts from 0 instead of
    :math:`h_{t-k}`, and k contractive steps shrink that gap by :math:`\lambda^k`.
    :math:`h^{(k)}` is computed as k Jacobi iterations from zero (paper A = paper B).
    """
    from fpcore import fixed_point

    if isinstance(cell, nn.Module):
        cell = _cells.from_torch(cell)
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be window lengths >= 1, got {ks}")
    exact = _output(cell, _cells.sequential(cell, x, h0))  # (B, T, H)
    errors = {}
    if isinstance(cell, _cells.CellStack):  # each layer truncated to k: one solve per k
        for k in ks:
            approx = fixed_point.solve(cell, x, h0, method="jacobi", iters=k, grad="none").outputs
            errors[k] = (exact - approx).norm(dim=-1).max()
    else:  # one layer: the Jacobi iterates from zero ARE the truncated models, so one sweep gives every k
        u = cell.prepare(x)  # (B, T, G)
        s0 = cell.initial_state(h0, x.shape[0], dtype=u.dtype, device=u.device)  # (B, S)
        S = torch.zeros(*u.shape[:2], s0.shape[-1], dtype=u.dtype, device=u.device)  # (B, T, S)
        for k in range(1, max(ks) + 1):
            S = cell.step(torch.cat([s0[:, None], S[:, :-1]], 1), u)  # S^(k) = F(S^(k-1))
            if k in ks:
                errors[k] = (exact - cell.output(S)).norm(dim=-1).max()
    return {"k": torch.tensor(ks), "error": torch.stack([errors[k] for k in ks]), "scale": exact.norm(dim=-1).max()}


def _output(cell, states: Tensor) -> Tensor:
    last = cell[-1] if isinstance(cell, _cells.CellStack) else cell
    return last.output(states)
