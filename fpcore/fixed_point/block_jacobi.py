"""Block Jacobi (multiple shooting with overlap): the step loop inside blocks, Jacobi across them.

Cut the sequence into nb = ceil(T / L) blocks of L positions. One iteration runs the step loop inside
every block at once (L + w sequential steps on B * nb rows), each block started w positions early (the
overlap, w <= L) from the state the previous iterate holds there:

    block b:  s_{bL-w} from S^(k)  ->  w warm-up steps over x_{bL-w+1..bL}  ->  L steps, stored as S^(k+1)

(the first block starts from h_0 and needs no warm-up). L = 1, w = 0 is Jacobi (paper A); L = T is the step
loop. The warm-up only reads the previous block's region, so block b is exact after b + 1 iterations and
the method after nb (or sooner), whatever the cell.

Why one iteration is usually enough. From the zero start, the first iteration computes position bL + j
from the last w + j + 1 inputs only: paper B's truncated model, with a window of at least w. A stable cell
forgets its start at a rate rho per step, so every block starts within about rho^w of the exact state,
and the positions inside a block are then within rho^(w+j) of it. The iterate's fixed-point residual
F(S) - S is zero inside every block (the loop computed it) and can be non-zero only at the nb - 1 block
starts, so it is measured exactly and cheaply there. Block Jacobi therefore stops when that residual
max |F(S) - S| <= tol (as well as when the change between iterates is, like the other methods): for a
cell that contracts at rate rho the error is then at most tol / (1 - rho).

Why it exists. Jacobi and the Newton family pay for parallelism with work: k iterations evaluate f at all
T positions, so they beat the loop only where each of the loop's T steps is slow for another reason (a
kernel launch on a GPU, the interpreter on a CPU). Block Jacobi does (1 + w/L) times the loop's
arithmetic per iteration in L + w steps of T / L rows each: the parallel method that wins on a CPU.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def default_block(T: int) -> int:
    """The block length L when none is given: ceil(sqrt(T)), which balances L + w sequential steps per
    iteration against T / L rows per step."""
    return math.isqrt(T - 1) + 1 if T > 1 else 1


def default_overlap(L: int) -> int:
    """The warm-up w when none is given: L / 4 (a quarter more work per iteration), at most 64 steps."""
    return min(L // 4, 64)


def blocks(T: int, L: int) -> int:
    """How many blocks of L positions cover T positions (the iterations after which the method is exact)."""
    return -(-T // L)


def _windows(ctx) -> Tensor:
    """The inputs every block reads, [B, nb, G, w + L] (a view of the inputs padded with w steps before
    the start and up to nb * L after the end; cached for the whole solve)."""
    cached = ctx.scratch.get("block_inputs")
    if cached is not None:
        return cached
    B, T, G = ctx.u.shape
    L, w = ctx.state["block"], ctx.state["overlap"]
    nb = blocks(T, L)
    # zero inputs before the start (block 0's warm-up, whose result is then replaced by h_0) and after the
    # end (causal: they change nothing before it)
    u = torch.cat([ctx.u.new_zeros(B, w, G), ctx.u, ctx.u.new_zeros(B, nb * L - T, G)], dim=1)
    ctx.scratch["block_inputs"] = win = u.unfold(1, w + L, L)  # (B, nb, G, w + L), no copy
    return win


def _starts(ctx, S: Tensor, nb: int) -> Tensor:
    """The state each block's warm-up starts from, [B, nb, S]: s at 0-based position bL - w - 1 of the
    previous iterate (h_0 where that is position -1; block 0 is reset to h_0 after its warm-up anyway)."""
    L, w = ctx.state["block"], ctx.state["overlap"]
    idx = torch.arange(nb, device=S.device) * L - w - 1
    start = S[:, idx.clamp(min=0)]
    return torch.where((idx < 0)[None, :, None], ctx.s0[:, None, :], start)


def step(ctx, S: Tensor, FS):
    """One sweep: w + L steps of the loop in every block at once. Also leaves the max-abs change from S in
    ``ctx.scratch["change"]``, measured block-step by block-step on small slabs instead of over [B, T, S]."""
    B, T, Sdim = S.shape
    L, w = ctx.state["block"], ctx.state["overlap"]
    nb = blocks(T, L)
    win = _windows(ctx)
    s = _starts(ctx, S, nb)  # (B, nb, S)
    for j in range(w):
        s = ctx.cell.step(s, win[..., j])
    if w:  # block 0 has nothing before it to warm up on
        s = torch.cat([ctx.s0[:, None], s[:, 1:]], dim=1)
    last = T - (nb - 1) * L  # positions of the last block inside the sequence (the rest is padding)
    old = S.detach()
    old_full = old[:, : (nb - 1) * L].view(B, nb - 1, L, Sdim)  # blocks 0..nb-2 of the previous iterate
    old_last = old[:, (nb - 1) * L :]  # the last block's, [B, last, S]
    change = S.new_zeros(())

    def changed(j, s):  # max |s - old| at block step j, padding excluded
        d = (s[:, :-1] - old_full[:, :, j]).abs().amax() if nb > 1 else change
        return torch.maximum(d, (s[:, -1] - old_last[:, j]).abs().amax()) if j < last else d

    grad = torch.is_grad_enabled()
    out = [] if grad else S.new_empty(B, nb, L, Sdim)
    for j in range(L):
        s = ctx.cell.step(s, win[..., w + j])
        if grad:  # autograd: keep every step's tensor in the graph
            out.append(s)
        else:  # write each step into place
            out[:, :, j] = s
        change = torch.maximum(change, changed(j, s.detach()))
    if grad:
        out = torch.stack(out, dim=2)  # (B, nb, L, S)
    ctx.scratch["change"] = float(change)
    return out.reshape(B, nb * L, Sdim)[:, :T], None


def residual(ctx, S: Tensor) -> float:
    """max |F(S) - S| of an iterate a sweep produced: inside a block the loop made F(S)_t = s_t, so only
    the block starts can be off, and only they are evaluated (B * (nb - 1) rows instead of B * T)."""
    T = S.shape[1]
    L = ctx.state["block"]
    if T <= L:
        return 0.0
    p = torch.arange(L, T, L, device=S.device)  # 0-based positions that start blocks 1..nb-1
    FS = ctx.cell.step(S[:, p - 1], ctx.u[:, p])
    return float((FS - S[:, p]).detach().abs().max())
