"""The CPU fast path: the step loop compiled by Numba, one pass over memory, threads over (batch, feature).

Why a sequential loop is the fast CPU scan: a CPU has a handful of cores, and B * D independent
recurrences are already far more parallel work than that. So each thread takes a block of
contiguous features of one batch row and walks t = 1..T: it reads a_t and b_t once and writes h_t
once, with the inner loop over D vectorised by LLVM. That is the same memory traffic as one
elementwise op (read 2, write 1): the benchmark's CPU target is the forward within 1.2x of
``torch.addcmul`` over the same bytes, both writing into a fresh output from :func:`empty`. A tree or chunked
scan would only add passes.

Compiled on first use (about a second per dtype; importing this module imports Numba but compiles
nothing, and importing :mod:`fpcore.scan` does not import this module at all). float32 and float64
run natively; fp16/bf16 are converted to float32 around the kernel (Numba has no bf16). Equation,
shapes and limits as :func:`fpcore.linear_scan`.

The backward kernel is fused: one reverse pass computes g_t = dL/dh_t + a_{t+1} g_{t+1} (paper C,
section 2.2) and dL/da_t = g_t * h_{t-1} together, reading a, dL/dh and h once.
"""

from __future__ import annotations

import functools
import mmap
import os

import numba
import numpy as np
import torch
from numba import njit, prange

__all__ = ["scan", "scan_backward", "empty"]

_NATIVE = (torch.float32, torch.float64)


# Written so that every per-element index comes straight from a range() loop: Numba then emits no
# negative-index wrap-around and LLVM vectorises the k loop. Row views are taken once per time step.
def _forward_kernel(a2, b2, h0, out2, T, reverse, block):  # pragma: no cover - compiled
    # a2, b2, out2: [B * T, D] views of [B, T, D]; task = (batch row i, feature block j)
    BT, D = a2.shape
    nblk = (D + block - 1) // block
    for task in prange((BT // T) * nblk):
        i = task // nblk
        d0 = (task % nblk) * block
        n = min(block, D - d0)
        h = h0[i, d0 : d0 + n].copy()
        for s in range(T):
            r = i * T + (T - 1 - s if reverse else s)
            ar = a2[r, d0 : d0 + n]
            br = b2[r, d0 : d0 + n]
            orow = out2[r, d0 : d0 + n]
            for k in range(n):
                v = ar[k] * h[k] + br[k]
                h[k] = v
                orow[k] = v


def _backward_kernel(a2, grad2, h2, h0, g2, da2, T, reverse, block):  # pragma: no cover - compiled
    # forward reverse=False: g_t = grad_t + a_{t+1} g_{t+1} (t = T-1..0),  da_t = g_t * h_{t-1}, h_{-1} = h0
    # forward reverse=True:  g_t = grad_t + a_{t-1} g_{t-1} (t = 0..T-1),   da_t = g_t * h_{t+1}, h_T = h0
    BT, D = a2.shape
    nblk = (D + block - 1) // block
    for task in prange((BT // T) * nblk):
        i = task // nblk
        d0 = (task % nblk) * block
        n = min(block, D - d0)
        g = np.zeros(n, dtype=a2.dtype)
        for s in range(T):
            t = s if reverse else T - 1 - s
            prev = t - 1 if reverse else t + 1  # the step this pass processed just before
            nxt = t + 1 if reverse else t - 1  # the forward's previous state
            gr = grad2[i * T + t, d0 : d0 + n]
            if prev >= 0 and prev < T:
                ar = a2[i * T + prev, d0 : d0 + n]
                for k in range(n):
                    g[k] = ar[k] * g[k] + gr[k]
            else:
                for k in range(n):
                    g[k] = gr[k]
            hr = h2[i * T + nxt, d0 : d0 + n] if (nxt >= 0 and nxt < T) else h0[i, d0 : d0 + n]
            grow = g2[i * T + t, d0 : d0 + n]
            darow = da2[i * T + t, d0 : d0 + n]
            for k in range(n):
                grow[k] = g[k]
                darow[k] = g[k] * hr[k]


# Two compilations of each kernel: threads (prange) for big inputs, one thread for small ones, where
# waking a thread pool on a busy machine can cost milliseconds (a scheduler tick) for microseconds of work.
_PARALLEL_MIN_ELEMENTS = 1 << 18
_forward_par = njit(parallel=True, cache=False)(_forward_kernel)
_forward_ser = njit(parallel=False, cache=False)(_forward_kernel)
_backward_par = njit(parallel=True, cache=False)(_backward_kernel)
_backward_ser = njit(parallel=False, cache=False)(_backward_kernel)


def _block(B: int, D: int) -> int:
    """Features per task: whole rows, unless B rows cannot keep the threads busy and D >= 512.

    Narrow blocks cost a few row views per step, so a row is split only into pieces >= 256 wide.
    """
    threads = numba.get_num_threads()
    parts = min(-(-threads // B), D // 256)
    return D if parts <= 1 else -(-D // parts)


# Below 32 MiB glibc's malloc reuses freed heap memory for a repeated size (no page faults at all), and
# fresh huge pages of 8-16 MiB measured 20-40x slower than that reuse (11.7 vs 0.21 ms at 8 x 1024 x 256
# fp32); from 32 MiB malloc maps fresh pages on every call and huge pages win (2.7 vs 11.9 ms at 8 x 4096 x 256).
_HUGE_MIN_BYTES = 32 << 20


def empty(B: int, T: int, D: int, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised [B, T, D] CPU tensor; large ones on transparent huge pages where Linux allows.

    Why: the kernel streams at memory speed, so first-touch page faults on a fresh output (one per
    4 KiB page, several per microsecond of kernel time) cost more than the scan itself: measured here
    (2-core EPYC VM) filling a fresh 32 MiB torch.empty took ~22 ms against ~6 ms on huge pages.
    torch's own allocator does this only with THP_MEM_ALLOC_ENABLE=1 set before it starts. Set
    FPCORE_HUGEPAGES=0 to turn it off. The tensor owns its mapping (freed with the tensor). The scan
    benchmark allocates its memory-bound baseline's output here too, so both pay for fresh pages alike.
    """
    numel = B * T * D
    itemsize = torch.empty((), dtype=dtype).element_size()
    if numel * itemsize >= _HUGE_MIN_BYTES and _huge_pages_ok():
        try:
            m = mmap.mmap(-1, numel * itemsize, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            m.madvise(mmap.MADV_HUGEPAGE)
            return torch.frombuffer(m, dtype=dtype, count=numel).view(B, T, D)
        except (OSError, ValueError, AttributeError):
            pass
    return torch.empty(B, T, D, dtype=dtype)


@functools.lru_cache(maxsize=1)
def _huge_pages_ok() -> bool:
    if os.environ.get("FPCORE_HUGEPAGES", "1") == "0" or not hasattr(mmap, "MADV_HUGEPAGE"):
        return False
    try:
        mode = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return False
    return "[never]" not in mode


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().contiguous().numpy()


def scan(
    a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None, *, reverse: bool, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``h_t = a_t * h_{t-1} + b_t`` (reverse: ``h_{t+1}``) on CPU tensors; a, b [B, T, D], h0 [B, D] or None.

    ``out`` (internal): a contiguous float32/float64 [B, T, D] tensor of the working dtype to write h into
    (None: a fresh one from :func:`empty`).
    """
    out_dtype = a.dtype
    work = a.dtype if a.dtype in _NATIVE else torch.float32
    a, b = a.to(work), b.to(work)
    B, T, D = a.shape
    h0 = torch.zeros(B, D, dtype=work) if h0 is None else h0.to(work)
    if out is None or out.dtype != work:
        out = empty(B, T, D, work)
    fn = _forward_par if a.numel() >= _PARALLEL_MIN_ELEMENTS else _forward_ser
    fn(
        _np(a).reshape(B * T, D),
        _np(b).reshape(B * T, D),
        _np(h0),
        out.numpy().reshape(B * T, D),
        T,
        bool(reverse),
        _block(B, D),
    )  # [B, T, D] -> [B * T, D]: rows of one time step
    return out.to(out_dtype)


def scan_backward(a, h, h0, grad, *, reverse: bool):
    """Fused backward: returns (dL/da, dL/db, dL/dh0) for ``h = scan(a, b, h0, reverse=reverse)``."""
    out_dtype = a.dtype
    work = a.dtype if a.dtype in _NATIVE else torch.float32
    B, T, D = a.shape
    a_w, h_w, grad_w = a.to(work), h.to(work), grad.to(work)
    h0_w = torch.zeros(B, D, dtype=work) if h0 is None else h0.to(work)
    g = empty(B, T, D, work)
    da = empty(B, T, D, work)
    rows = lambda x: x.reshape(B * T, D)  # noqa: E731  [B, T, D] -> [B * T, D]
    fn = _backward_par if a.numel() >= _PARALLEL_MIN_ELEMENTS else _backward_ser
    fn(
        rows(_np(a_w)),
        rows(_np(grad_w)),
        rows(_np(h_w)),
        _np(h0_w),
        rows(g.numpy()),
        rows(da.numpy()),
        T,
        bool(reverse),
        _block(B, D),
    )
    first = T - 1 if reverse else 0  # dL/dh0 = a_first * g_first: h0 enters only the first step
    dh0 = a_w[:, first] * g[:, first]
    return da.to(out_dtype), g.to(out_dtype), dh0.to(out_dtype)
