"""The CUDA backend: the kernels of ``scan_kernels.cu``, compiled by CuPy (NVRTC) on first use.

Nothing happens at import: the source is read and compiled by :func:`_module` the first time a scan
runs on a CUDA tensor (once per device; CuPy also caches the binary on disk). Tensors cross to CuPy
through DLPack without copies (16-bit types as raw int16 bits, so CuPy need not know bf16), and every
launch goes on torch's current CUDA stream, so the scan orders correctly with the torch ops around it.

Launch shape: a block of 32 x W threads owns 32 features of one batch row; B * ceil(D / 32) blocks.
If that cannot fill the GPU (fewer than 2 blocks per SM, the SM count read from the device), T is
split into G groups (grid.y) with one extra reduce launch; the per-group aggregates live in scratch
memory that is cached per (device, dtype) and grown, never allocated per call.

Equation, shapes and dtypes as :func:`fpcore.linear_scan`: fp32 / fp16 / bf16 accumulate in fp32,
fp64 in fp64; any T >= 1. The backward is one fused launch (g and dL/da together).
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path

import torch

__all__ = ["available", "scan", "scan_backward", "launch_config"]

SOURCE = Path(__file__).with_name("scan_kernels.cu")
W, L = 8, 8  # must match FPCORE_W, FPCORE_L in the source
_SUFFIX = {torch.float32: "f32", torch.float64: "f64", torch.float16: "f16", torch.bfloat16: "bf16"}
_ACC = {
    torch.float32: torch.float32,
    torch.float64: torch.float64,
    torch.float16: torch.float32,
    torch.bfloat16: torch.float32,
}
_MAX_GROUPS = 256
_lock = threading.Lock()
_scratch: dict = {}


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """True when CuPy imports and torch sees a CUDA device (does not compile anything)."""
    if not torch.cuda.is_available():
        return False
    try:
        import cupy  # noqa: F401
    except Exception:  # ImportError, or a CuPy built for another CUDA failing at import
        return False
    return True


@functools.cache
def _module(device_index: int):
    import cupy

    with cupy.cuda.Device(device_index):
        module = cupy.RawModule(code=SOURCE.read_text(), options=("--std=c++14",))
        module.compile()
    return module


_compile_errors: dict[int, str] = {}


def usable(device_index: int) -> bool:
    """Compile the kernels for this device now (first call only); False, with the reason kept in
    ``_compile_errors``, if NVRTC or the driver refuses them. ``backend="auto"`` then uses torch."""
    if device_index in _compile_errors:
        return False
    try:
        _module(device_index)
    except Exception as err:  # CompileException, a driver/toolkit mismatch, ...
        _compile_errors[device_index] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        return False
    return True


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def launch_config(B: int, T: int, D: int, sm_count: int) -> tuple[int, int]:
    """(G groups over T, span steps per group): split T only when B * ceil(D/32) blocks < 2 per SM."""
    blocks = B * (-(-D // 32))
    tile = W * L
    groups = 1
    if blocks < 2 * sm_count:
        groups = min(-(-2 * sm_count // blocks), _MAX_GROUPS, max(1, T // (4 * tile)))
    span = -(-T // groups)
    span = -(-span // tile) * tile  # whole tiles per group
    groups = -(-T // span)
    return groups, span


def _scratch_for(device: torch.device, acc: torch.dtype, n: int, stream: int) -> torch.Tensor:
    # one buffer per (device, dtype, stream): work queued on one stream never races another's scratch
    key = (device.index, acc, stream)
    with _lock:
        buf = _scratch.get(key)
        if buf is None or buf.numel() < 2 * n:
            buf = torch.empty(max(2 * n, 1 << 16), dtype=acc, device=device)
            _scratch[key] = buf
    return buf


def _cp(x: torch.Tensor):
    import cupy

    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.view(torch.int16)  # raw bits; the kernel converts
    return cupy.from_dlpack(x)


def _launch(a, b, h0, out, *, reverse, shifted, hf=None, hb=None, da=None):
    import cupy
    import numpy as np

    B, T, D = a.shape
    dev = a.device
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    suffix = _SUFFIX[a.dtype]
    groups, span = launch_config(B, T, D, _sm_count(idx))
    acc = _ACC[a.dtype]
    torch_stream = torch.cuda.current_stream(dev)
    scratch = _scratch_for(dev, acc, groups * B * D, torch_stream.cuda_stream)
    aggA, aggH = scratch[: groups * B * D], scratch[groups * B * D : 2 * groups * B * D]
    dummy = out  # a valid pointer for arguments a flag switches off
    grid = (B * (-(-D // 32)), groups)
    block = (32, W)
    i64, i32 = np.int64, np.int32
    module = _module(idx)
    stream = cupy.cuda.ExternalStream(torch_stream.cuda_stream, idx)
    with cupy.cuda.Device(idx), stream:
        ca, cb = _cp(a), _cp(b)
        cagA, cagH = _cp(aggA), _cp(aggH)
        if groups > 1:
            module.get_function(f"scan_reduce_{suffix}")(
                grid, block, (ca, cb, i64(B), i64(T), i64(D), i64(span), i32(reverse), i32(shifted), cagA, cagH)
            )
        module.get_function(f"scan_main_{suffix}")(
            grid,
            block,
            (
                ca,
                cb,
                _cp(h0 if h0 is not None else dummy),
                _cp(out),
                _cp(hf if hf is not None else dummy),
                _cp(hb if hb is not None else dummy),
                _cp(da if da is not None else dummy),
                cagA,
                cagH,
                i64(B),
                i64(T),
                i64(D),
                i64(span),
                i32(reverse),
                i32(shifted),
                i32(h0 is not None),
                i32(da is not None),
                i32(hb is not None),
            ),
        )


def scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None, *, reverse: bool) -> torch.Tensor:
    """``h_t = a_t * h_{t-1} + b_t`` (reverse: ``h_{t+1}``) on CUDA; a, b [B, T, D] contiguous, h0 [B, D] or None."""
    out = torch.empty_like(b)
    _launch(
        a.contiguous(),
        b.contiguous(),
        None if h0 is None else h0.contiguous(),
        out,
        reverse=bool(reverse),
        shifted=False,
    )
    return out


def scan_backward(a, h, h0, grad, *, reverse: bool):
    """Fused backward: (dL/da, dL/db, dL/dh0) for ``h = scan(a, b, h0, reverse=reverse)``, one launch.

    The pass runs opposite to the forward with the shifted gate (g_t = dL/dh_t + a_{t+1} g_{t+1}) and
    writes dL/da_t = g_t * h_{t-1} (h_0 = h0 at the boundary) in the same sweep.
    """
    a, h, grad = a.contiguous(), h.contiguous(), grad.contiguous()
    g = torch.empty_like(grad)
    da = torch.empty_like(grad)
    _launch(
        a, grad, None, g, reverse=not reverse, shifted=True, hf=h, hb=None if h0 is None else h0.contiguous(), da=da
    )
    first = a.shape[1] - 1 if reverse else 0  # h0 enters only the first step of the forward
    acc = _ACC[a.dtype]
    dh0 = (a[:, first].to(acc) * g[:, first].to(acc)).to(a.dtype)
    return da, g, dh0
