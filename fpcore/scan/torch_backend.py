"""The pure-torch fast path: a chunked three-phase scan, vectorised, for any device and any T.

Paper C's algorithm (Martin & Cundy 2018, section 3) with torch ops instead of processors:

1. split T into C chunks of L steps (padding the tail with the identity pair (1, 0)); inside every
   chunk at once, scan from a zero state (a loop over the L steps, each op over [B, C, D]) and keep
   the running product of the gates;
2. scan the C chunk carries (chunk gate product, chunk end state) - the same problem, C times
   shorter, solved by calling this function again;
3. fix up: h = local_h + cumprod(a) * carry_in, one vectorised op.

Python steps: about 2 sqrt(T) instead of T. Equation, shapes and dtypes as :func:`fpcore.linear_scan`;
fp16/bf16 are computed in float32 and returned in the input dtype.

Overflow. The loop never forms a product of gates; phases 2 and 3 do, and the product of many gates can
overflow where the recurrence does not: with a = 1.1 and b = 0 the state stays 0, but the product over a
long span is inf and the fix-up's inf * 0 is NaN; with a tiny h0 the product is inf where the state is
finite. So a level whose chunk products are not all finite (checked on [B, C, D], a 1/L-th of the data)
answers with the plain loop instead, at the loop's speed; where the state itself overflows (a carry is
inf), every chunk steps from its incoming state (L more steps) instead of the fix-up. Either way the
answer is the loop's, overflow included; only such inputs pay.
"""

from __future__ import annotations

import math

import torch

__all__ = ["scan", "chunk_length"]

_SMALL_T = 32  # below this the plain loop is as fast as anything torch can do


def chunk_length(T: int) -> int:
    """Steps per chunk: about sqrt(T), a multiple of 8, at least 8."""
    return max(8, int(math.ceil(math.sqrt(T) / 8.0)) * 8)


def scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None, *, reverse: bool) -> torch.Tensor:
    """``h_t = a_t * h_{t-1} + b_t`` (reverse: ``h_t = a_t * h_{t+1} + b_t``); a, b [B, T, D], h0 [B, D] or None."""
    out_dtype = a.dtype
    acc = torch.promote_types(a.dtype, torch.float32)
    a, b = a.to(acc), b.to(acc)
    h0 = None if h0 is None else h0.to(acc)
    if reverse:  # a reverse scan is a forward scan of the time-flipped sequence
        return _forward(a.flip(1), b.flip(1), h0).flip(1).to(out_dtype)
    return _forward(a, b, h0).to(out_dtype)


def _loop(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
    """The step loop over [B, T, D], T Python steps (short sequences, and the overflow fall-back)."""
    B, T, D = a.shape
    h = torch.zeros(B, D, dtype=a.dtype, device=a.device) if h0 is None else h0
    out = torch.empty_like(b)
    for t in range(T):
        h = torch.addcmul(b[:, t], a[:, t], h)
        out[:, t] = h
    return out


def _rescan(a4: torch.Tensor, b4: torch.Tensor, carry_in: torch.Tensor) -> torch.Tensor:
    """Phase 3 by the loop instead of the fix-up: every chunk steps from its incoming state, [B, C, L, D]."""
    out = torch.empty_like(b4)
    h = carry_in
    for s in range(b4.shape[2]):
        h = torch.addcmul(b4[:, :, s], a4[:, :, s], h)
        out[:, :, s] = h
    return out


def _forward(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
    B, T, D = a.shape
    if T <= _SMALL_T:
        return _loop(a, b, h0)
    L = chunk_length(T)
    C = -(-T // L)
    pad = C * L - T
    if pad:  # identity pairs (a=1, b=0) leave the state unchanged
        a = torch.cat([a, a.new_ones(B, pad, D)], dim=1)
        b = torch.cat([b, b.new_zeros(B, pad, D)], dim=1)
    a4 = a.view(B, C, L, D)  # (B, C, L, D)
    b4 = b.view(B, C, L, D)  # (B, C, L, D)
    # phase 1: every chunk scans from zero; P = running product of gates inside the chunk
    local = torch.empty_like(b4)
    prod = torch.empty_like(a4)
    h = b4[:, :, 0].clone()
    p = a4[:, :, 0].clone()
    local[:, :, 0], prod[:, :, 0] = h, p
    for s in range(1, L):
        h = torch.addcmul(b4[:, :, s], a4[:, :, s], h)
        p = p * a4[:, :, s]
        local[:, :, s], prod[:, :, s] = h, p
    if not bool(torch.isfinite(prod[:, :, -1]).all()):  # a chunk's gate product overflowed: see the module doc
        return _loop(a, b, h0)[:, :T]
    # phase 2: the state at the end of each chunk, by scanning the chunk carries (recursively)
    ends = _forward(prod[:, :, -1].contiguous(), local[:, :, -1].contiguous(), h0)  # (B, C, D)
    carry_in = torch.zeros_like(ends)
    carry_in[:, 1:] = ends[:, :-1]
    if h0 is not None:
        carry_in[:, 0] = h0
    if not bool(torch.isfinite(carry_in).all()):  # the state itself overflowed: 0 * inf would give NaN
        if bool(carry_in.isnan().any()):  # already NaN (inf * 0 among the chunk carries, or NaN inputs)
            return _loop(a, b, h0)[:, :T]
        return _rescan(a4, b4, carry_in).view(B, C * L, D)[:, :T]  # loop semantics inside every chunk
    # phase 3: fix up every step with its chunk's incoming state
    h = torch.addcmul(local, prod, carry_in[:, :, None, :])  # (B, C, L, D)
    return h.view(B, C * L, D)[:, :T]
