r"""Stability of recurrent models and their feed-forward (truncated) approximation (paper B).

A recurrent model :math:`h_t = \phi(h_{t-1}, x_t)` is *stable* if :math:`\phi` is
:math:`\lambda`-contractive in :math:`h` for some :math:`\lambda < 1`:
:math:`\|\phi(h, x) - \phi(h', x)\| \le \lambda \|h - h'\|` for all h, h', x (Miller & Hardt, ICLR 2019).
Then the k-window truncated model (run the recurrence over only the last k inputs, from a zero state)
differs from the recurrent one by at most :math:`\lambda^k \max_t \|h_t\|`, for inference, and models
trained by gradient descent from the same start stay close too. The truncated model is exactly k Jacobi
iterations of the fixed-point engine from a zero start (:func:`fpcore.fixed_point.solve` with
``method="jacobi", iters=k``), which is how it is computed here.

This module has four parts:

* norms: :func:`spectral_norm` (exact SVD or power iteration), :func:`contraction_bound` (a certified
  :math:`\lambda` for a tanh/ReLU RNN, LSTM or GRU, derived in its docstring);
* projections onto stable models: :func:`project_spectral`, :func:`lstm_rescale_`, :func:`project_model_`
  and :func:`project_after_step` (a hook that re-projects after every optimizer step);
* data-dependent stability: :func:`local_contraction`, the distribution of
  :math:`\|\partial h_t/\partial h_{t-1}\|_2` along real trajectories;
* truncation and training equivalence: :func:`truncation_errors`, :func:`train_twins`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from fpcore import cells as _cells

__all__ = [
    "LIPSCHITZ",
    "spectral_norm",
    "gate_upper_bound",
    "contraction_bound",
    "project_spectral",
    "LSTM_COLUMN_NORMS",
    "LSTM_INPUT_FORGET_NORM",
    "lstm_rescale_",
    "init_forget_bias_",
    "project_model_",
    "project_after_step",
    "local_contraction",
    "truncation_errors",
    "CharRNN",
    "char_batches",
    "fit_char_model",
    "TwinHistory",
    "train_twins",
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


def _norm1(W: Tensor) -> float:
    """Induced 1-norm: the largest column L1 norm (the norm the LSTM rescaling controls)."""
    return float(W.detach().abs().sum(0).max())


def gate_upper_bound(
    W_h: Tensor, W_x: Tensor | None, bias: Tensor | None, *, h_max: float = 1.0, x_max: float | None = None
) -> float:
    r"""An upper bound on a sigmoid gate :math:`\sigma(W_h h + W_x x + b)` over all |h| <= h_max, |x| <= x_max.

    Per unit j: :math:`\sigma(h_{max}\sum_i|W_h[j,i]| + x_{max}\sum_i|W_x[j,i]| + b_j)`, maximised over j.
    ``x_max=None`` means unbounded inputs: the bound is then 1 (no gate is bounded away from 1).
    """
    if x_max is None and W_x is not None:
        return 1.0
    pre = h_max * W_h.detach().abs().sum(1)
    if W_x is not None:
        pre = pre + x_max * W_x.detach().abs().sum(1)
    if bias is not None:
        pre = pre + bias.detach()
    return float(torch.sigmoid(pre.double()).max())


def contraction_bound(cell, *, x_max: float | None = None) -> float:
    r"""A certified contraction constant :math:`\lambda` of one recurrent layer: stable if < 1.

    ``cell``: an fpcore cell (:func:`fpcore.cells.from_torch`) or a one-layer torch RNN/GRU/LSTM.
    ``x_max`` bounds the inputs (max |x_i|; 1 for one-hot inputs), needed to bound gates below 1.
    The bounds are sufficient, not necessary: a model above 1 may still be stable (see
    :func:`local_contraction` for what it does on data).

    tanh / ReLU RNN, :math:`h' = \rho(W h + U x + b)`, in the 2-norm:
    :math:`\lambda = L_\rho \|W\|_2` with :math:`L_{\tanh} = L_{relu} = 1` (Miller & Hardt, Prop. 1).

    LSTM, state (c, h), gates i, f, o = sigmoid, z = tanh of :math:`W_\ast h + U_\ast x + b_\ast`,
    :math:`c' = f c + i z`, :math:`h' = o \tanh(c')`. Measure a difference of states by
    :math:`\max(\|\Delta c\|_1, \|\Delta h\|_1)`, write :math:`a_\ast = \|W_\ast\|_1` (largest column L1
    norm) and use :math:`\|u \odot v\|_1 \le \|u\|_\infty \|v\|_1`, :math:`|\sigma'| \le 1/4`,
    :math:`|\tanh'| \le 1`, :math:`|i|, |o|, |z|, |\tanh| \le 1`. With :math:`\bar f` an upper bound on
    f (:func:`gate_upper_bound`; |h| <= 1) and :math:`\bar c = 1/(1 - \bar f)` a bound on |c| (from
    :math:`|c_t| \le \bar f |c_{t-1}| + 1`, c_0 = 0):

    .. math::
        \|\Delta c'\|_1 &\le \bar f \|\Delta c\|_1 + (\bar c a_f/4 + a_i/4 + a_z)\|\Delta h\|_1 \\
        \|\Delta h'\|_1 &\le (a_o/4)\|\Delta h\|_1 + \|\Delta c'\|_1

    so :math:`\lambda = \bar f + \bar c a_f/4 + a_i/4 + a_z + a_o/4` (the h row dominates the c row).
    Paper B's rescaling (columns of W_i, W_f, W_z, W_o at 0.395, 0.155, 0.099, 0.395) gives
    :math:`a_i/4 + a_z + a_o/4 = 0.2965`, so the LSTM is certified whenever
    :math:`\bar f + 0.03875/(1-\bar f) < 0.7035`, e.g. forget gates below 0.6.

    GRU, :math:`h' = (1 - z) n + z h`, :math:`n = \tanh(U_n x + b_n + r(W_n h + b_{hn}))`, in the
    :math:`\infty`-norm: :math:`|\Delta h'_j| \le (1-z_j)|\Delta n_j| + z_j |\Delta h_j| + |h_j - n_j||\Delta z_j|`
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
    H = cell.hidden_size
    Wx = cell.weight_ih.detach()
    b = _total_bias(cell)
    if isinstance(cell, _cells.LSTMCell):
        Wi, Wf, Wz, Wo = W.split(H)
        f_bar = gate_upper_bound(Wf, Wx[H : 2 * H], None if b is None else b[H : 2 * H], x_max=x_max)
        if f_bar >= 1.0:
            return math.inf
        c_bar = 1.0 / (1.0 - f_bar)
        return f_bar + c_bar * _norm1(Wf) / 4 + _norm1(Wi) / 4 + _norm1(Wz) + _norm1(Wo) / 4
    if isinstance(cell, _cells.GRUCell):
        Wr, Wz, Wn = W.split(H)
        inf = lambda M: float(M.abs().sum(1).max())  # noqa: E731 - induced infinity-norm
        b_hn = cell.bias_hh[2 * H :].detach() if cell.bias_hh is not None else torch.zeros(H)
        beta = inf(Wn) + inf(Wr) * (inf(Wn) + float(b_hn.abs().max())) / 4
        z_bar = gate_upper_bound(Wz, Wx[H : 2 * H], None if b is None else b[H : 2 * H], x_max=x_max)
        return max(beta, z_bar + (1 - z_bar) * beta) + inf(Wz) / 2
    raise ValueError(f"no contraction bound for a {type(cell).__name__}")


def _total_bias(cell) -> Tensor | None:
    parts = [p.detach() for p in (cell.bias_ih, cell.bias_hh) if p is not None]
    return sum(parts) if parts else None


# -------------------------------------------------------------------------------------------------
# Projections
# -------------------------------------------------------------------------------------------------
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


# Paper B's LSTM projection (authors' code): each column of these recurrent blocks to this L1 norm.
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
    """Paper B's LSTM projection, in place: column L1 norms of W_i, W_f, W_z, W_o (and U_f) clipped.

    torch's gate order in ``weight_hh`` is (i, f, g=z, o). Every column whose L1 norm exceeds its
    target (:data:`LSTM_COLUMN_NORMS`: 0.395, 0.155, 0.099, 0.395; U_f: 0.25) is scaled down to it;
    smaller columns are left alone, so the map is a projection (idempotent). Applied after every
    optimizer step, every column stays at or below its target. Returns the module.
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
    """Set the forget-gate bias (b_ih + b_hh over the f block) to ``value``, as paper B's authors initialise."""
    suffixes = [""] if isinstance(lstm, nn.LSTMCell) else [f"_l{i}" for i in range(lstm.num_layers)]
    for sfx in suffixes:
        for name, v in ((f"bias_ih{sfx}", value), (f"bias_hh{sfx}", 0.0)):
            bias = getattr(lstm, name, None)
            if bias is not None:
                bias.chunk(4)[1].fill_(v)
    return lstm


@torch.no_grad()
def project_model_(model: nn.Module, *, max_norm: float = 1.0, lstm: str = "rescale") -> list[str]:
    """Project every recurrent layer inside ``model`` onto a stable set, in place; return what was touched.

    * ``nn.RNN`` / ``nn.RNNCell``: clip the spectral norm of each ``weight_hh`` at ``max_norm``;
    * ``nn.LSTM`` / ``nn.LSTMCell``: ``lstm="rescale"`` applies :func:`lstm_rescale_` (paper B);
      ``lstm="spectral"`` clips each gate block's spectral norm at ``max_norm`` instead;
    * ``nn.GRU`` / ``nn.GRUCell``: clip each gate block's spectral norm at ``max_norm`` (a heuristic:
      a certificate also needs the update gate bounded below 1, see :func:`contraction_bound`).
    """
    if lstm not in ("rescale", "spectral"):
        raise ValueError(f"lstm must be 'rescale' or 'spectral', got {lstm!r}")
    touched = []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.LSTM, nn.LSTMCell)) and lstm == "rescale":
            lstm_rescale_(mod)
            touched.append(name or type(mod).__name__)
            continue
        if not isinstance(mod, (nn.RNNBase, nn.RNNCellBase)):
            continue
        blocks = 1 if isinstance(mod, (nn.RNN, nn.RNNCell)) else (4 if isinstance(mod, (nn.LSTM, nn.LSTMCell)) else 3)
        for pname, p in mod.named_parameters(recurse=False):
            if pname.startswith("weight_hh"):
                for block in p.chunk(blocks, 0):
                    block.copy_(project_spectral(block, max_norm))
        touched.append(name or type(mod).__name__)
    return touched


def project_after_step(optimizer: torch.optim.Optimizer, model: nn.Module, **kwargs):
    """Re-project ``model`` (:func:`project_model_` with ``kwargs``) after every ``optimizer.step()``.

    Returns the hook handle; ``handle.remove()`` stops it. Projected gradient descent in one line::

        handle = stability.project_after_step(opt, model, max_norm=0.99)
    """
    project_model_(model, **kwargs)  # start inside the stable set too
    return optimizer.register_step_post_hook(lambda opt, args, kw: project_model_(model, **kwargs))


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


class CharRNN(nn.Module):
    """A minimal character model for the demonstrations here: embedding -> one recurrent layer -> linear.

    ``cell`` is "rnn" (tanh), "gru" or "lstm". ``forward(tokens, k=None)`` returns logits [B, T, V]: the
    recurrent model when ``k`` is None, else paper B's k-truncated model (k Jacobi iterations from zero,
    gradients through them). The language models of the experiments live in :mod:`fpcore.models`.
    """

    def __init__(self, vocab: int, hidden: int = 64, embed: int = 16, cell: str = "rnn"):
        super().__init__()
        kinds = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
        if cell not in kinds:
            raise ValueError(f"cell must be one of {', '.join(kinds)}, got {cell!r}")
        self.embed = nn.Embedding(vocab, embed)
        self.rnn = kinds[cell](embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def hidden_states(self, tokens: Tensor, k: int | None = None) -> Tensor:
        from fpcore import fixed_point

        x = self.embed(tokens)  # (B, T, E)
        cell = _cells.from_torch(self.rnn)
        if k is None:
            return self.rnn(x)[0]  # (B, T, H), torch's own sequential layer
        return fixed_point.solve(cell, x, method="jacobi", iters=k, grad="unrolled").outputs

    def forward(self, tokens: Tensor, k: int | None = None) -> Tensor:
        return self.head(self.hidden_states(tokens, k))  # (B, T, V)


def char_batches(tokens: Tensor, batch: int, length: int, seed: int = 0) -> Callable[[int], tuple[Tensor, Tensor]]:
    """Random windows of a 1-D token stream: ``batches(step)`` -> (x [B, L], y [B, L] shifted by one).

    Deterministic in (seed, step), so two models fed ``batches(step)`` see exactly the same data.
    """
    if tokens.numel() <= length + 1:
        raise ValueError(f"{tokens.numel()} tokens are too few for windows of {length}")

    def batches(step: int):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        start = torch.randint(0, tokens.numel() - length - 1, (batch, 1), generator=gen)
        idx = start + torch.arange(length + 1)  # (B, L + 1)
        window = tokens[idx]
        return window[:, :-1], window[:, 1:]

    return batches


def fit_char_model(
    model: CharRNN,
    tokens: Tensor,
    *,
    steps: int,
    batch: int = 32,
    length: int = 64,
    lr: float = 3e-3,
    k: int | None = None,
    project: bool = False,
    seed: int = 0,
) -> list[float]:
    """Train ``model`` with Adam on random windows of ``tokens``; return the loss (nats/char) per step."""
    from tqdm.auto import tqdm

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    if project:
        project_after_step(opt, model)
    batches, losses = char_batches(tokens, batch, length, seed), []
    for step in tqdm(range(steps), desc="train", leave=False):
        x, y = batches(step)
        loss = nn.functional.cross_entropy(model(x, k).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    return losses


@dataclass
class TwinHistory:
    """Weight distance between a recurrent model and its k-truncated twin over training."""

    k: int
    steps: list[int] = field(default_factory=list)
    distance: list[float] = field(default_factory=list)  # ||theta_rec - theta_trunc||_2 over all weights
    loss_recurrent: list[float] = field(default_factory=list)
    loss_truncated: list[float] = field(default_factory=list)


def train_twins(
    make_model: Callable[[], nn.Module],
    batches: Callable[[int], tuple[Tensor, Tensor]],
    *,
    k: int,
    steps: int,
    lr: float = 0.1,
    project: bool = True,
    max_norm: float = 1.0,
    record_every: int = 1,
    seed: int = 0,
) -> TwinHistory:
    r"""Train a recurrent model and its k-truncated twin from the same initialisation, side by side.

    ``make_model()`` returns a model whose ``forward(x, k=None)`` gives logits [B, T, C] (recurrent for
    k=None, truncated otherwise), e.g. :class:`CharRNN`; both twins are built by it from the same seed.
    ``batches(step)`` returns (x, y [B, T]) class targets, the same for both twins. Both take plain
    (full-batch-per-step) SGD steps; with ``project=True`` both are projected after every step
    (projected gradient descent, :func:`project_after_step`). Paper B: for stable models the distance
    :math:`\|\theta_{rec} - \theta_{trunc}\|_2` stays small and shrinks with k (the gradient gap is
    :math:`O(k \lambda^k)`); for unstable ones it need not.
    """

    def build():
        torch.manual_seed(seed)
        return make_model()

    twins = {"recurrent": build(), "truncated": build()}
    opts = {n: torch.optim.SGD(m.parameters(), lr=lr) for n, m in twins.items()}
    if project:
        for n, m in twins.items():
            project_after_step(opts[n], m, max_norm=max_norm)
    history = TwinHistory(k=k)
    for step in range(steps + 1):
        if step % record_every == 0 or step == steps:
            pr, pt = (torch.cat([p.detach().flatten() for p in m.parameters()]) for m in twins.values())
            history.steps.append(step)
            history.distance.append(float((pr - pt).norm()))
        if step == steps:
            break
        x, y = batches(step)
        for name, model in twins.items():
            logits = model(x, None if name == "recurrent" else k)  # (B, T, C)
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
            opts[name].zero_grad()
            loss.backward()
            opts[name].step()
            getattr(history, f"loss_{name}").append(float(loss.detach()))
    return history
