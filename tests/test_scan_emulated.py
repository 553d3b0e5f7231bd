"""The CUDA kernels of fpcore/scan/scan_kernels.cu, run on the CPU by a tiny host emulation.

No GPU here, but the kernels' logic (tiles, the warp-carry scan through shared memory, T split into
groups, reverse, the shifted-gate backward with the fused dL/da, fp16/bf16 conversions) can still be
checked: the same source is compiled by g++ with a shim in which every CUDA thread of a block is a
std::thread, ``__syncthreads`` is a std::barrier and ``__shared__`` is a static shared by the block
(blocks run one after another). Results are compared with the loop. This cannot catch GPU-only
problems (memory coalescing, NVRTC quirks, streams); those are the GPU tests' job.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from fpcore.scan import cupy_backend, ref

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not on the PATH")

SHIM = r"""
#include <barrier>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>
#define FPCORE_HOST_EMULATION 1
struct dim3 { unsigned x = 1, y = 1, z = 1; };
static thread_local dim3 threadIdx, blockIdx;
static std::barrier<>* g_barrier = nullptr;
static inline void __syncthreads() { g_barrier->arrive_and_wait(); }
static inline float __uint_as_float(unsigned int u) { float f; std::memcpy(&f, &u, 4); return f; }
static inline unsigned int __float_as_uint(float f) { unsigned int u; std::memcpy(&u, &f, 4); return u; }
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static
#include "SOURCE"

// Run kernel `fn` on grid (gx, gy) with blocks of (32, W) threads: blocks in turn, threads concurrently.
static void launch(unsigned gx, unsigned gy, const std::function<void()>& fn) {
    const unsigned nthreads = 32 * FPCORE_W;
    for (unsigned by = 0; by < gy; ++by)
        for (unsigned bx = 0; bx < gx; ++bx) {
            std::barrier<> bar(nthreads);
            g_barrier = &bar;
            std::vector<std::thread> threads;
            for (unsigned t = 0; t < nthreads; ++t)
                threads.emplace_back([=, &fn] {
                    threadIdx.x = t % 32; threadIdx.y = t / 32; blockIdx.x = bx; blockIdx.y = by;
                    fn();
                });
            for (auto& th : threads) th.join();
        }
}

#define EMULATE(SUFFIX, P)                                                                                 \
extern "C" void emu_reduce_##SUFFIX(unsigned gx, unsigned gy, const P::E* a, const P::E* b, long long Bn,  \
        long long T, long long D, long long span, int reverse, int shifted, P::Acc* aggA, P::Acc* aggH) {  \
    launch(gx, gy, [=] { scan_reduce_##SUFFIX(a, b, Bn, T, D, span, reverse, shifted, aggA, aggH); });   \
}                                                                                                          \
extern "C" void emu_main_##SUFFIX(unsigned gx, unsigned gy, const P::E* a, const P::E* b, const P::E* h0, \
        P::E* out, const P::E* hf, const P::E* hb, P::E* da, const P::Acc* aggA, const P::Acc* aggH,       \
        long long Bn, long long T, long long D, long long span, int reverse, int shifted, int has_h0,      \
        int has_da, int has_hb) {                                                                          \
    launch(gx, gy, [=] { scan_main_##SUFFIX(a, b, h0, out, hf, hb, da, aggA, aggH, Bn, T, D, span,        \
                                            reverse, shifted, has_h0, has_da, has_hb); });                 \
}
EMULATE(f32, F32)
EMULATE(f64, F64)
EMULATE(f16, F16)
EMULATE(bf16, BF16)
"""


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    d = tmp_path_factory.mktemp("emu")
    (d / "emu.cpp").write_text(SHIM.replace("SOURCE", str(cupy_backend.SOURCE)))
    so = d / "emu.so"
    run = subprocess.run(
        ["g++", "-std=c++20", "-O1", "-pthread", "-shared", "-fPIC", "-x", "c++", str(d / "emu.cpp"), "-o", str(so)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return ctypes.CDLL(str(so))


_SUFFIX = {torch.float32: "f32", torch.float64: "f64", torch.float16: "f16", torch.bfloat16: "bf16"}


def _launch(lib, a, b, h0, *, reverse, shifted, sm_count, hf=None, hb=None, want_da=False):
    """What cupy_backend._launch does, with the emulated kernels and CPU tensors."""
    B, T, D = a.shape
    suffix = _SUFFIX[a.dtype]
    groups, span = cupy_backend.launch_config(B, T, D, sm_count)
    acc = cupy_backend._ACC[a.dtype]
    aggA = torch.zeros(groups * B * D, dtype=acc)
    aggH = torch.zeros(groups * B * D, dtype=acc)
    out = torch.empty_like(b)
    da = torch.empty_like(b) if want_da else None
    ptr = lambda x: ctypes.c_void_p((x if x is not None else out).data_ptr())  # noqa: E731
    ll, i = ctypes.c_longlong, ctypes.c_int
    gx, gy = ctypes.c_uint(B * -(-D // 32)), ctypes.c_uint(groups)
    if groups > 1:
        getattr(lib, f"emu_reduce_{suffix}")(
            gx, gy, ptr(a), ptr(b), ll(B), ll(T), ll(D), ll(span), i(reverse), i(shifted), ptr(aggA), ptr(aggH)
        )
    getattr(lib, f"emu_main_{suffix}")(
        gx,
        gy,
        ptr(a),
        ptr(b),
        ptr(h0),
        ptr(out),
        ptr(hf),
        ptr(hb),
        ptr(da),
        ptr(aggA),
        ptr(aggH),
        ll(B),
        ll(T),
        ll(D),
        ll(span),
        i(reverse),
        i(shifted),
        i(h0 is not None),
        i(want_da),
        i(hb is not None),
    )
    return out, da, groups


TOL = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize(
    "B, T, D, sms",
    [(2, 1, 3, 1), (1, 7, 33, 1), (2, 200, 5, 1), (1, 1000, 40, 8)],
    ids=["T=1", "T=7-D=33", "T=200", "T=1000-groups"],
)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("use_h0", [False, True])
def test_emulated_forward_matches_loop(lib, dtype, B, T, D, sms, reverse, use_h0):
    g = torch.Generator().manual_seed(T + D)
    a = (torch.rand(B, T, D, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)
    b = torch.randn(B, T, D, generator=g, dtype=torch.float64).to(dtype)
    h0 = torch.randn(B, D, generator=g, dtype=torch.float64).to(dtype) if use_h0 else None
    h, _, groups = _launch(lib, a, b, h0, reverse=reverse, shifted=False, sm_count=sms)
    if (B, T, D) == (1, 1000, 40):
        assert groups > 1  # this case exercises the reduce kernel and the carry fold
    expected = ref.loop(a.double(), b.double(), None if h0 is None else h0.double(), reverse=reverse)
    rtol, atol = TOL[dtype]
    assert_close(h.double(), expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("T, sms", [(9, 1), (700, 16)], ids=["one-group", "groups"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("use_h0", [False, True])
def test_emulated_fused_backward_matches_autograd(lib, T, sms, reverse, use_h0):
    """cupy_backend.scan_backward's launch: shifted gates, opposite direction, dL/da in the same pass."""
    B, D = 2, 36
    g = torch.Generator().manual_seed(T)
    a = (torch.rand(B, T, D, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()
    b = torch.randn(B, T, D, generator=g, dtype=torch.float64).requires_grad_()
    h0 = torch.randn(B, D, generator=g, dtype=torch.float64).requires_grad_() if use_h0 else None
    dh = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    h = ref.loop(a, b, h0, reverse=reverse)
    leaves = (a, b) if h0 is None else (a, b, h0)
    expected = torch.autograd.grad(h, leaves, dh)
    gsc, da, groups = _launch(
        lib,
        a.detach(),
        dh,
        None,
        reverse=not reverse,
        shifted=True,
        sm_count=sms,
        hf=h.detach(),
        hb=None if h0 is None else h0.detach(),
        want_da=True,
    )
    assert groups == (1 if sms == 1 else groups) and (sms == 1 or groups > 1)
    assert_close(da, expected[0])
    assert_close(gsc, expected[1])
    if h0 is not None:
        first = T - 1 if reverse else 0
        assert_close(a.detach()[:, first] * gsc[:, first], expected[2])


def test_emulated_bf16_rounding_is_nearest_even(lib):
    """The kernel's bf16 store rounds like torch's float32 -> bfloat16 conversion."""
    vals = torch.tensor([1.0, 1.00390625, 1.01171875, 3.14159, -2.5e-3, 65504.0, 1e-30], dtype=torch.float32)
    B, T, D = 1, vals.numel(), 1
    a = torch.zeros(B, T, D, dtype=torch.bfloat16)  # h_t = b_t: a load and a store must round-trip exactly
    b_exact = vals.view(B, T, D)
    h, _, _ = _launch(lib, a, b_exact.to(torch.bfloat16), None, reverse=False, shifted=False, sm_count=1)
    assert_close(h.float(), b_exact.to(torch.bfloat16).float(), rtol=0, atol=0)
    two = torch.full((1, 2, 1), 0.5, dtype=torch.bfloat16)
    b2 = torch.tensor([1.0, 1.0078125], dtype=torch.bfloat16).view(1, 2, 1)
    h2, _, _ = _launch(lib, two, b2, None, reverse=False, shifted=False, sm_count=1)
    exact = torch.tensor([1.0, 0.5 * 1.0 + 1.0078125], dtype=torch.float32)  # 1.5078125: a tie, rounds to even
    assert_close(h2.view(-1).float(), exact.to(torch.bfloat16).float(), rtol=0, atol=0)
    assert np.isfinite(h2.float().numpy()).all()
