"""The CPU fast path: the step loop compiled by Numba, one pass over memory, threads over (batch, feature).

Why a sequential loop is the fast CPU scan: a CPU has a handful of cores, and B * D independent
recurrences are already far more parallel work than that. So each thread takes a block of
contiguous features of one batch row and walks t = 1..T: it reads a_t and b_t once and writes h_t
once, with the inner loop over D vectorised by LLVM. That is the same memory traffic as one
elementwise op (read 2, write 1), which is the CPU target (forward within 2x of ``torch.addcmul``
over the same bytes). A tree or chunked scan would only add passes.

Compiled on first use (about a second per dtype; importing this module imports Numba but compiles
nothing, and importing :mod:`fpcore.scan` does not import this module at all). float32 and float64
run natively; fp16/bf16 are converted to float32 around the kernel (Numba has no bf16). Equation,
shapes and limits as :func:`fpcore.linear_scan`.

The backward kernel is fused: one reverse pass computes g_t = dL/dh_t + a_{t+1} g_{t+1} (paper C,
section 2.2) and dL/da_t = g_t * h_{t-1} together, reading a, dL/dh and h once.
"""
from __future__ import annotations

import numba
import numpy as np
import torch
from numba import njit, prange

__all__ = ["scan", "scan_backward"]

_NATIVE = (torch.float32, torch.float64)


@njit(parallel=True, cache=False)
def _forward_kernel(a, b, h0, out, reverse, block):  # pragma: no cover - compiled
    B, T, D = a.shape
    nblk = (D + block - 1) // block
    for task in prange(B * nblk):
        i = task // nblk
        d0 = (task % nblk) * block
        d1 = min(d0 + block, D)
        h = h0[i, d0:d1].copy()
        n = d1 - d0
        for s in range(T):
            t = T - 1 - s if reverse else s
            for k in range(n):
                h[k] = a[i, t, d0 + k] * h[k] + b[i, t, d0 + k]
                out[i, t, d0 + k] = h[k]


@njit(parallel=True, cache=False)
def _backward_kernel(a, grad, h, h0, g_out, da_out, reverse, block):  # pragma: no cover - compiled
    # forward reverse=False: g_t = grad_t + a_{t+1} g_{t+1} (t = T-1..0),  da_t = g_t * h_{t-1}, h_{-1} = h0
    # forward reverse=True:  g_t = grad_t + a_{t-1} g_{t-1} (t = 0..T-1),   da_t = g_t * h_{t+1}, h_T = h0
    B, T, D = a.shape
    nblk = (D + block - 1) // block
    for task in prange(B * nblk):
        i = task // nblk
        d0 = (task % nblk) * block
        d1 = min(d0 + block, D)
        n = d1 - d0
        g = np.zeros(n, dtype=a.dtype)
        for s in range(T):
            t = s if reverse else T - 1 - s
            prev = t - 1 if reverse else t + 1  # the step this backward pass processed just before
            nxt = t + 1 if reverse else t - 1  # the forward scan's previous state
            if prev >= 0 and prev < T:
                for k in range(n):
                    g[k] = a[i, prev, d0 + k] * g[k] + grad[i, t, d0 + k]
            else:
                for k in range(n):
                    g[k] = grad[i, t, d0 + k]
            for k in range(n):
                g_out[i, t, d0 + k] = g[k]
            if nxt >= 0 and nxt < T:
                for k in range(n):
                    da_out[i, t, d0 + k] = g[k] * h[i, nxt, d0 + k]
            else:
                for k in range(n):
                    da_out[i, t, d0 + k] = g[k] * h0[i, d0 + k]


def _block(B: int, D: int) -> int:
    """Features per task: whole rows when B alone fills the threads, else split D (multiples of 16)."""
    threads = numba.get_num_threads()
    if B >= threads:
        return D
    parts = -(-threads // B) * 2  # two tasks per thread for balance
    per = -(-D // parts)
    return max(16, -(-per // 16) * 16)


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().contiguous().numpy()


def scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None, *, reverse: bool) -> torch.Tensor:
    """``h_t = a_t * h_{t-1} + b_t`` (reverse: ``h_{t+1}``) on CPU tensors; a, b [B, T, D], h0 [B, D] or None."""
    out_dtype = a.dtype
    work = a.dtype if a.dtype in _NATIVE else torch.float32
    a, b = a.to(work), b.to(work)
    B, T, D = a.shape
    h0 = torch.zeros(B, D, dtype=work) if h0 is None else h0.to(work)
    out = torch.empty(B, T, D, dtype=work)
    _forward_kernel(_np(a), _np(b), _np(h0), out.numpy(), bool(reverse), _block(B, D))
    return out.to(out_dtype)


def scan_backward(a, h, h0, grad, *, reverse: bool):
    """Fused backward: returns (dL/da, dL/db, dL/dh0) for ``h = scan(a, b, h0, reverse=reverse)``."""
    out_dtype = a.dtype
    work = a.dtype if a.dtype in _NATIVE else torch.float32
    B, T, D = a.shape
    a_w, h_w, grad_w = a.to(work), h.to(work), grad.to(work)
    h0_w = torch.zeros(B, D, dtype=work) if h0 is None else h0.to(work)
    g = torch.empty(B, T, D, dtype=work)
    da = torch.empty(B, T, D, dtype=work)
    _backward_kernel(_np(a_w), _np(grad_w), _np(h_w), _np(h0_w), g.numpy(), da.numpy(), bool(reverse), _block(B, D))
    first = T - 1 if reverse else 0  # dL/dh0 = a_first * g_first: h0 enters only the first step
    dh0 = a_w[:, first] * g[:, first]
    return da.to(out_dtype), g.to(out_dtype), dh0.to(out_dtype)
