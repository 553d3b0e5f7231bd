r"""Block Jacobi (multiple shooting with overlap): the sequential loop inside blocks, Jacobi across them.

Cut the sequence into nb = ceil(T / M) blocks of M positions. One sweep runs the step loop inside every
block at once (w + M sequential steps on B * nb rows), each block started w positions early (the overlap,
w <= M) from the state the previous iterate holds there:

    block b:  s_{bM-w} from S^(k)  ->  w warm-up steps over x_{bM-w+1..bM}  ->  M steps, stored as S^(k+1)

(block 0 starts from h_0 and needs no warm-up). M = 1, w = 0 is Jacobi (paper A); M = T is the step loop. The
warm-up only reads the previous block's region, so block b is exact after b + 1 sweeps and the method after
nb (or sooner), whatever the cell. From the zero start the first sweep computes position bM + j from its
last w + j + 1 inputs only: paper B's truncated model, with a window of at least w.

The loop inside the blocks runs on torch's own fused layer. The B * nb rows of one sweep are one batch of
short sequences (time-major [w + M, B * nb, D]) for ``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM`` with the cell's
weights (:func:`fpcore.cells.to_torch`; oneDNN on CPU, cuDNN on CUDA): a warm-up call of w steps, then one
call of M steps. The layer returns h at every step but the LSTM's c only at the end of each call, so the
LSTM's c inside a block is recovered in parallel: the gates at every position are functions of
h_{t-1} and x_t, known once h is (one matrix product), and then c_t = f_t * c_{t-1} + i_t * g_t is a
linear recurrence, one :func:`fpcore.linear_scan` per block from the c the warm-up call ended with. Cells
that are not exactly RNN/GRU/LSTM cells (a subclass may change the step) run the step loop of their own
``step`` instead (``info["inner"]`` says which ran; :func:`inner` forces one).

Exact residual and stopping rule. The iterate's fixed-point residual F(S) - S is zero inside every block
(the loop computed it) and can be non-zero only at the nb - 1 block starts, so it is evaluated exactly and
cheaply there (:func:`residual`). Block Jacobi stops when max |F(S) - S| <= tol (as well as when the change
between iterates is, like the other methods): for a cell that contracts at rate rho the error is then at
most tol / (1 - rho).

Choosing M and w: depth against work against sweeps (this series' own analysis; the measurement is
``python -m fpcore bench block-jacobi``). Model one step of the fused layer on R rows as alpha + beta R
seconds: alpha is what a step costs whatever its size (kernel launches and synchronisation on a GPU, call
and thread overhead on a CPU), beta the arithmetic of one row. With R = B nb ~ B T / M rows, a sweep costs

    t_sweep(M, w) = (w + M) (alpha + beta B T / M) = alpha (M + w) + beta B T (1 + w / M),

depth (M + w steps) against work (1 + w/M times the loop's arithmetic); the loop costs T (alpha + beta B).

Sweeps. A stable cell forgets its start at a rate rho per step. After the first sweep every block starts
within about C rho^w of the exact state (C: the size of the zero start's error); each further sweep starts
M - w steps into the previous block's new values and warms up w more, multiplying that error by about
rho^M. So one sweep suffices when C rho^w <= tol, and each missing factor rho^M costs a whole sweep.

The rule. (1) w is the cell's memory at the tolerance, w* = ln(tol / C) / ln rho: one step less risks a
second sweep (the cost of a whole sweep), one more costs only 1/M of a sweep's work and one step of depth.
rho is data-dependent and unknown before the solve, so the default is w = 64, which covers rho <= 0.84 at
tol / C = 1e-5 (0.84^64 = 1.4e-5); the stable cells of this series' benchmarks forget faster (one sweep at
w = 32). When w is short the exact residual says so and a second sweep, which gains rho^M, finishes.
(2) Given w, d t_sweep / dM = alpha - beta B T w / M^2 = 0 gives

    M* = sqrt(B T w / kappa),   kappa = alpha / beta,

the block length at which the depth's cost alpha M equals the overlap's extra work beta B T w / M. kappa is
a number of rows: how many rows' arithmetic costs as much as one step's fixed cost. Fitted from the
fused layer's step times (:data:`KAPPA`, measured by the benchmark): a few rows on a CPU, where the fused
layer is arithmetic-bound already at B = 16, and thousands on a GPU, where a step of a few rows is all
latency. (3) M is clamped to [w, T] (and w to M). Consequences: on a GPU (kappa >> B) M* is small,
t_sweep ~ alpha w + beta B T + 2 sqrt(alpha beta B T w) against the loop's T alpha, so one sweep replaces
T step latencies by about M* + w of them; on a CPU (kappa ~ B) M* is large and a sweep does about the loop's
arithmetic (1 + w/M of it) on B nb rows instead of B: the gain comes from the threads the wider steps can
use, not from fewer operations.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor

from fpcore import cells

__all__ = [
    "KAPPA",
    "OVERLAP",
    "choose",
    "default_block",
    "default_overlap",
    "blocks",
    "setup",
    "step",
    "residual",
    "inner",
    "INNERS",
]

# rows of the fused layer whose arithmetic costs one step's fixed cost, per device type (see the docstring;
# measured with `python -m fpcore bench block-jacobi`: CPU on a 2-core EPYC VM, CUDA from the cuDNN step time)
KAPPA = {"cpu": 8.0, "cuda": 4096.0}
OVERLAP = 64  # the default warm-up w: the memory of a cell with rho <= 0.84 at a tolerance of 1e-5
INNERS = ("torch.nn", "loop")
_FORCED: list[str] = []  # set by inner()


def choose(T: int, B: int, device: torch.device | str = "cpu", *, block=None, overlap=None) -> tuple[int, int]:
    """The block length M and overlap w for T positions and B rows on ``device`` (the rule in the module
    docstring): w = ``overlap`` (default :data:`OVERLAP`), M = ``block`` or sqrt(B T w / kappa), M in [max(w, 1), T],
    and w <= M."""
    w = OVERLAP if overlap is None else overlap
    if block is None:
        kappa = KAPPA.get(torch.device(device).type, KAPPA["cuda"])
        block = max(1, w, round(math.sqrt(B * T * max(w, 1) / kappa)))
    M = min(block, T)
    return M, min(w, M)


def default_block(T: int, B: int = 1, device: torch.device | str = "cpu") -> int:
    """The rule's block length M for T positions and B rows on ``device`` (with the default overlap)."""
    return choose(T, B, device)[0]


def default_overlap(M: int) -> int:
    """The default warm-up w for blocks of M positions: :data:`OVERLAP`, at most M."""
    return min(OVERLAP, M)


def blocks(T: int, M: int) -> int:
    """How many blocks of M positions cover T positions (the sweeps after which the method is exact)."""
    return -(-T // M)


@contextlib.contextmanager
def inner(kind: str) -> Iterator[None]:
    """Run block Jacobi's sweeps with ``kind`` inside the blocks: "torch.nn" (the fused layer, where the cell
    converts) or "loop" (the cell's own step, one position at a time). For benchmarks and tests."""
    if kind not in INNERS:
        raise ValueError(f"inner must be one of {', '.join(INNERS)}, got {kind!r}")
    _FORCED.append(kind)
    try:
        yield
    finally:
        _FORCED.pop()


def setup(ctx, x: Tensor, *, block: int | None = None, overlap: int | None = None) -> int:
    """Prepare a solve: choose M and w (kept in ``ctx.state``, so returned in ``.info`` with the inner loop's
    kind), keep x for the fused layer; return the number of sweeps after which the method is exact."""
    B, T, _ = x.shape
    M, w = choose(T, B, x.device, block=block, overlap=overlap)
    fused = type(ctx.cell) in (cells.RNNCell, cells.GRUCell, cells.LSTMCell) and (
        x.is_cuda or x.dtype in (torch.float32, torch.float64)  # torch's CPU layers: no half types
    )
    kind = _FORCED[-1] if _FORCED else "torch.nn"
    ctx.state.update(block=M, overlap=w, inner="torch.nn" if fused and kind == "torch.nn" else "loop")
    ctx.scratch["x"] = x if ctx.u.requires_grad else x.detach()
    return blocks(T, M)


def _starts(ctx, S: Tensor, nb: int) -> Tensor:
    """The state each block's warm-up starts from, [B, nb, S]: s at 0-based position bM - w - 1 of the
    previous iterate (h_0 where that is position -1; block 0 is reset to h_0 after its warm-up anyway)."""
    M, w = ctx.state["block"], ctx.state["overlap"]
    idx = torch.arange(nb, device=S.device) * M - w - 1
    start = S[:, idx.clamp(min=0)]
    return torch.where((idx < 0)[None, :, None], ctx.s0[:, None, :], start)


def _padded(ctx, name: str, t: Tensor, w: int, nb: int, M: int) -> Tensor:
    """``t`` [B, T, C] with w zero positions before and up to nb * M after (cached for the solve): zero
    inputs before the start (block 0's warm-up, whose result is replaced by h_0) and after the end (causal:
    they change nothing before it)."""
    cached = ctx.scratch.get(name)
    if cached is None:
        B, T, C = t.shape
        cached = ctx.scratch[name] = torch.cat([t.new_zeros(B, w, C), t, t.new_zeros(B, nb * M - T, C)], dim=1)
    return cached


def step(ctx, S: Tensor, FS):
    """One sweep: w + M steps of the loop in every block at once. Leaves max |S^(k+1) - S^(k)| (padding
    excluded) in ``ctx.scratch["change"]``."""
    B, T, Sdim = S.shape
    M, w = ctx.state["block"], ctx.state["overlap"]
    nb = blocks(T, M)
    s = _starts(ctx, S, nb)  # (B, nb, S)
    sweep = _fused_sweep if ctx.state["inner"] == "torch.nn" else _loop_sweep
    out = sweep(ctx, s, B, nb, M, w)  # (B, nb * M, S)
    out = out[:, :T]
    ctx.scratch["change"] = float(torch.linalg.vector_norm((out - S).detach(), math.inf))
    return out, None


def _loop_sweep(ctx, s: Tensor, B: int, nb: int, M: int, w: int) -> Tensor:
    """The cell's own step, w + M times on [B, nb, S] (one small op sequence per position)."""
    win = _padded(ctx, "u_padded", ctx.u, w, nb, M).unfold(1, w + M, M)  # (B, nb, G, w + M), no copy
    for j in range(w):
        s = ctx.cell.step(s, win[..., j])
    if w:  # block 0 has nothing before it to warm up on
        s = torch.cat([ctx.s0[:, None], s[:, 1:]], dim=1)
    if torch.is_grad_enabled():  # autograd: keep every step's tensor in the graph
        steps: list[Tensor] = []
        for j in range(M):
            s = ctx.cell.step(s, win[..., w + j])
            steps.append(s)
        return torch.stack(steps, dim=2).reshape(B, nb * M, -1)  # (B, nb, M, S) -> (B, nb * M, S)
    out = s.new_empty(B, nb, M, s.shape[-1])
    for j in range(M):  # write each step into place
        s = ctx.cell.step(s, win[..., w + j])
        out[:, :, j] = s
    return out.reshape(B, nb * M, -1)


class _Fused:
    """The cell as torch's time-major one-layer module; called through ``functional_call`` with the cell's
    own tensors when autograd needs them (gradients then reach the cell's weights)."""

    def __init__(self, cell):
        self.cell, self.lstm = cell, isinstance(cell, cells.LSTMCell)
        self.module = cells.to_torch(cell, batch_first=False)
        if self.module.weight_hh_l0.is_cuda:
            self.module.flatten_parameters()
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        self.params = {f"{n}_l0": getattr(cell, n) for n in names if hasattr(self.module, f"{n}_l0")}

    def __call__(self, x: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """x [N, R, D] time-major, s [R, S] packed -> (h at every step [N, R, H], the last packed state [R, S])."""
        H = self.cell.hidden_size
        hx = (s[None, :, :H].contiguous(), s[None, :, H:].contiguous()) if self.lstm else s[None].contiguous()
        tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False  # cuDNN in full float32, as the cell computes (TF32: ~1e-3 off)
        try:
            if torch.is_grad_enabled() and any(p.requires_grad for p in self.params.values()):
                import warnings

                with warnings.catch_warnings():  # cuDNN compacts the separate weight tensors itself: fine here
                    warnings.filterwarnings("ignore", message=".*contiguous chunk of memory.*")
                    y, hn = torch.func.functional_call(self.module, self.params, (x, hx))
            else:
                y, hn = self.module(x, hx)
        finally:
            torch.backends.cudnn.allow_tf32 = tf32
        return y, (torch.cat([hn[0][0], hn[1][0]], -1) if self.lstm else hn[0])


def _fused_sweep(ctx, s: Tensor, B: int, nb: int, M: int, w: int) -> Tensor:
    """The sweep on torch's fused layer: a warm-up call of w steps and one of M steps on [*, B * nb, D]."""
    layer = ctx.scratch.get("fused")
    if layer is None:
        layer = ctx.scratch["fused"] = _Fused(ctx.cell)
    xw = ctx.scratch.get("x_windows")
    if xw is None:  # every block's inputs, time-major: (w + M, B * nb, D), one copy for the whole solve
        x = _padded(ctx, "x_padded", ctx.scratch["x"], w, nb, M)
        D = x.shape[-1]
        xw = ctx.scratch["x_windows"] = x.unfold(1, w + M, M).permute(3, 0, 1, 2).reshape(w + M, B * nb, D)
    Sdim = s.shape[-1]
    if w and nb > 1:
        _, s = layer(xw[:w], s.reshape(B * nb, Sdim))  # every block's warm-up
        s = torch.cat([ctx.s0[:, None], s.view(B, nb, Sdim)[:, 1:]], dim=1)  # block 0 starts from h_0
    s = s.reshape(B * nb, Sdim)
    y, _ = layer(xw[w:], s)  # (M, B * nb, H): h at every step of every block
    y = y.view(M, B, nb, -1).permute(1, 2, 0, 3)  # (B, nb, M, H)
    if layer.lstm:
        y = torch.cat([y, _lstm_c(ctx, y, s.view(B, nb, Sdim), w, nb, M)], dim=-1)
    return y.reshape(B, nb * M, Sdim)


def _lstm_c(ctx, h: Tensor, start: Tensor, w: int, nb: int, M: int) -> Tensor:
    """The LSTM's c at every step of every block, [B, nb, M, H], from h at every step [B, nb, M, H] and the
    state each block's M steps started from [B, nb, 2H]: the gates are i, f, g = sig, sig, tanh of
    u_t + W_hh h_{t-1} (all positions at once), then c_t = f_t c_{t-1} + i_t g_t (one scan per block)."""
    from fpcore.scan import linear_scan

    B, _, _, H = h.shape
    u = _padded(ctx, "u_padded", ctx.u, w, nb, M)[:, w:].view(B, nb, M, -1)[..., : 3 * H]  # (B, nb, M, 3H)
    h_prev = torch.cat([start[:, :, None, :H], h[:, :, :-1]], dim=2)  # (B, nb, M, H)
    pre = torch.addmm(u.reshape(-1, 3 * H), h_prev.reshape(-1, H), ctx.cell.weight_hh[: 3 * H].T)  # (B nb M, 3H)
    sig = torch.sigmoid(pre[:, : 2 * H])
    g = cells.tanh(pre[:, 2 * H :])
    a = sig[:, H:].reshape(B * nb, M, H)  # f
    b = (sig[:, :H] * g).reshape(B * nb, M, H)  # i * g
    c = linear_scan(a, b, start[:, :, H:].reshape(B * nb, H), backend=ctx.backend)  # (B nb, M, H)
    return c.view(B, nb, M, H)


def residual(ctx, S: Tensor) -> float:
    """max |F(S) - S| of an iterate a sweep produced: inside a block the loop made F(S)_t = s_t, so only
    the block starts can be off, and only they are evaluated (B * (nb - 1) rows instead of B * T). With
    torch's fused layer inside, the layer sums in another order than the cell's step, so its iterate is the
    cell's fixed point only to rounding: then every position is evaluated (one parallel step)."""
    if ctx.state["inner"] == "torch.nn":
        return float((ctx.F(S) - S).detach().abs().max())
    T = S.shape[1]
    M = ctx.state["block"]
    if T <= M:
        return 0.0
    p = torch.arange(M, T, M, device=S.device)  # 0-based positions that start blocks 1..nb-1
    FS = ctx.cell.step(S[:, p - 1], ctx.u[:, p])
    return float((FS - S[:, p]).detach().abs().max())
