"""Linear recurrences as parallel scans: ``h_t = a_t * h_{t-1} + b_t`` (paper C, Martin & Cundy 2018).

Public API (batch-first everywhere):

- :func:`linear_scan` ``(a, b, h0=None, *, reverse=False, backend="auto") -> h``, a, b: [B, T, D]
- :func:`matrix_scan` ``(A, b, h0=None) -> h`` for dense A_t: [B, T, D, D]
- :func:`available_backends` ``(device="cpu")`` and :data:`BACKENDS`, the registry

Backends, one file each, one signature ``scan(a, b, h0, *, reverse) -> h``:

=================  =====================================================  ===========
name               what                                                   devices
=================  =====================================================  ===========
``ref``            the plain step loop, the oracle (:mod:`.ref`)          cpu, cuda
``hillis_steele``  Hillis-Steele tree scan, for teaching (:mod:`.ref`)    cpu, cuda
``blelloch``       Blelloch tree scan, for teaching (:mod:`.ref`)         cpu, cuda
``torch``          chunked three-phase scan in torch ops                  cpu, cuda
``numba``          compiled step loop, one pass (the CPU fast path)       cpu
``cupy``           CUDA kernels through CuPy (the GPU fast path)          cuda
=================  =====================================================  ===========

``backend="auto"`` takes ``numba`` on CPU and ``cupy`` on CUDA, and falls back to ``torch`` with one
warning when those are missing. Importing this package imports neither Numba nor CuPy and compiles
nothing; availability is feature-detected.

All backends share one ``torch.autograd.Function`` (:class:`LinearScanFunction`); its backward is the
reverse scan with shifted gates (paper C, section 2.2). A backend may offer a fused
``scan_backward``; otherwise the generic one below runs its ``scan`` on the shifted gates.
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from dataclasses import dataclass

import torch

__all__ = ["linear_scan", "matrix_scan", "available_backends", "BACKENDS", "LinearScanFunction", "Backend"]


@dataclass(frozen=True)
class Backend:
    """One registry entry: where the implementation lives and where it can run."""

    name: str
    module: str  # "package.module" exposing scan(a, b, h0, *, reverse) [and scan_backward]
    devices: tuple[str, ...]
    attribute: str = "scan"  # the forward function's name in that module
    description: str = ""

    def is_available(self) -> bool:
        if self.name == "numba":
            return importlib.util.find_spec("numba") is not None
        if self.name == "cupy":
            return _cupy_available()
        return True

    def load(self):
        module = importlib.import_module(self.module)
        return getattr(module, self.attribute), getattr(module, "scan_backward", None)


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("ref", "fpcore.scan.ref", ("cpu", "cuda"), description="plain step loop (oracle)"),
        Backend("hillis_steele", "fpcore.scan.ref", ("cpu", "cuda"), "hillis_steele", "Hillis-Steele tree scan"),
        Backend("blelloch", "fpcore.scan.ref", ("cpu", "cuda"), "blelloch", "Blelloch tree scan"),
        Backend("torch", "fpcore.scan.torch_backend", ("cpu", "cuda"), description="chunked torch ops"),
        Backend("numba", "fpcore.scan.numba_backend", ("cpu",), description="compiled loop (Numba)"),
        Backend("cupy", "fpcore.scan.cupy_backend", ("cuda",), description="CUDA kernels (CuPy)"),
    )
}
_AUTO = {"cpu": ("numba", "torch"), "cuda": ("cupy", "torch")}
_warned: set[str] = set()


def _cupy_available() -> bool:
    if not torch.cuda.is_available() or importlib.util.find_spec("cupy") is None:
        return False
    from fpcore.scan import cupy_backend

    return cupy_backend.available()


def available_backends(device: str | torch.device = "cpu") -> list[str]:
    """Names of the backends that run on tensors of ``device`` here (feature-detected, nothing compiled)."""
    kind = torch.device(device).type
    return [n for n, b in BACKENDS.items() if kind in b.devices and b.is_available()]


def _choose(backend: str, device: torch.device) -> str:
    kind = device.type
    if backend == "auto":
        if kind not in _AUTO:
            return "torch"
        fast, fallback = _AUTO[kind]
        why = None
        if BACKENDS[fast].is_available():
            if fast != "cupy":
                return fast
            from fpcore.scan import cupy_backend

            index = device.index if device.index is not None else torch.cuda.current_device()
            if cupy_backend.usable(index):  # compiles the kernels on the first CUDA call, once
                return fast
            why = f"the CUDA kernels did not compile ({cupy_backend._compile_errors[index]})"
        if kind not in _warned:
            _warned.add(kind)
            if why is None:
                why = "Numba is not installed" if fast == "numba" else "CuPy is not installed or cannot use this GPU"
            warnings.warn(
                f"fpcore.linear_scan: {why}; using the slower '{fallback}' backend on {kind}",
                RuntimeWarning,
                stacklevel=3,
            )
        return fallback
    spec = BACKENDS.get(backend)
    if spec is None:
        raise ValueError(f"unknown backend {backend!r}; choose 'auto' or one of {', '.join(BACKENDS)}")
    if kind not in spec.devices:
        raise ValueError(f"backend {backend!r} runs on {'/'.join(spec.devices)} tensors, got tensors on {device}")
    if not spec.is_available():
        raise ValueError(f"backend {backend!r} is not available here ({spec.description}: missing package or device)")
    return backend


def _generic_backward(scan, a, h, h0, grad, *, reverse: bool):
    """(dL/da, dL/db, dL/dh0) by paper C, section 2.2, using any backend's forward scan.

    Forward h_t = a_t h_{t-1} + b_t gives g_t := dL/db_t = dL/dh_t + a_{t+1} g_{t+1} (a reverse scan
    whose gate is shifted by one step), dL/da_t = g_t h_{t-1}, dL/dh0 = a_1 g_1. For reverse=True
    mirror every index.
    """
    B, T, D = a.shape
    zeros = a.new_zeros(B, 1, D)
    h0_ = zeros if h0 is None else h0[:, None, :].to(h.dtype)
    if not reverse:
        a_shift = torch.cat([a[:, 1:], zeros], dim=1)  # a_shift[t] = a[t+1]        (B, T, D)
        g = scan(a_shift, grad, None, reverse=True)
        h_prev = torch.cat([h0_, h[:, :-1]], dim=1)  # h_prev[t] = h[t-1], h[-1] = h0 (B, T, D)
        first = 0
    else:
        a_shift = torch.cat([zeros, a[:, :-1]], dim=1)  # a_shift[t] = a[t-1]
        g = scan(a_shift, grad, None, reverse=False)
        h_prev = torch.cat([h[:, 1:], h0_], dim=1)  # h_prev[t] = h[t+1], h[T] = h0
        first = T - 1
    return g * h_prev, g, a[:, first] * g[:, first]


class LinearScanFunction(torch.autograd.Function):
    """The one autograd Function for every backend. Inputs are checked by :func:`linear_scan`.

    forward(a, b, h0, reverse, backend) saves (a, h, h0); backward returns (da, db, dh0) from the
    backend's fused ``scan_backward`` or :func:`_generic_backward`. First derivatives only.
    """

    @staticmethod
    def forward(ctx, a, b, h0, reverse: bool, backend: str):
        scan, _ = BACKENDS[backend].load()
        h = scan(a, b, h0, reverse=reverse)
        ctx.save_for_backward(a, h, h0)
        ctx.reverse, ctx.backend = reverse, backend
        return h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        a, h, h0 = ctx.saved_tensors
        scan, fused = BACKENDS[ctx.backend].load()
        grad = grad.contiguous()
        if fused is not None:
            da, db, dh0 = fused(a, h, h0, grad, reverse=ctx.reverse)
        else:
            da, db, dh0 = _generic_backward(scan, a, h, h0, grad, reverse=ctx.reverse)
        need = ctx.needs_input_grad
        return (
            da if need[0] else None,
            db if need[1] else None,
            dh0.to(h0.dtype) if h0 is not None and need[2] else None,
            None,
            None,
        )


def _check(a, b, h0, reverse) -> None:
    for name, x in (("a", a), ("b", b), ("h0", h0)):
        if not isinstance(x, torch.Tensor) and not (name == "h0" and x is None):
            kind = "a torch.Tensor or None" if name == "h0" else "a torch.Tensor"
            raise TypeError(f"linear_scan: {name} must be {kind}, got {type(x).__name__}")
    if a.dim() != 3:
        raise ValueError(f"linear_scan: a must be [B, T, D], got shape {tuple(a.shape)}")
    if b.shape != a.shape:
        raise ValueError(
            f"linear_scan: a and b must have the same shape [B, T, D], got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.shape[1] == 0:
        raise ValueError("linear_scan: T = 0 (empty sequence); need T >= 1")
    if not a.is_floating_point() or not b.is_floating_point():
        raise ValueError(f"linear_scan: a and b must be floating point, got {a.dtype} and {b.dtype}")
    if a.dtype != b.dtype:
        raise ValueError(f"linear_scan: a and b must share a dtype, got {a.dtype} and {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"linear_scan: a and b are on different devices ({a.device} and {b.device})")
    if h0 is not None:
        B, _, D = a.shape
        if h0.shape != (B, D):
            raise ValueError(f"linear_scan: h0 must be [B, D] = {[B, D]}, got {list(h0.shape)}")
        if h0.dtype != a.dtype:
            raise ValueError(f"linear_scan: h0 must have the dtype of a ({a.dtype}), got {h0.dtype}")
        if h0.device != a.device:
            raise ValueError(f"linear_scan: h0 is on {h0.device} but a is on {a.device}")
    if not isinstance(reverse, bool):
        raise ValueError(f"linear_scan: reverse must be a bool, got {reverse!r}")


def linear_scan(
    a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None, *, reverse: bool = False, backend: str = "auto"
) -> torch.Tensor:
    """Solve the diagonal linear recurrence ``h_t = a_t * h_{t-1} + b_t`` for all t at once.

    reverse=False: h_t = a_t * h_{t-1} + b_t for t = 1..T, with h_0 = h0.
    reverse=True:  h_t = a_t * h_{t+1} + b_t for t = T..1, with h_{T+1} = h0.

    Args:
        a: gates [B, T, D]; any sign (gates near 1 and negative gates are fine; |a| > 1 grows, as the
           recurrence does).
        b: inputs [B, T, D], same dtype and device as a.
        h0: initial state [B, D] (same dtype/device) or None for zeros.
        reverse: run the recurrence from t = T down to 1.
        backend: "auto" (numba on CPU, cupy on CUDA, else torch with one warning), or a name from
           :data:`BACKENDS` ("ref", "hillis_steele", "blelloch", "torch", "numba", "cupy").

    Returns:
        h: [B, T, D] in the dtype of a. float16/bfloat16 are accumulated in float32 by every backend;
        float32 in float32; float64 in float64.

    Differentiable in a, b and h0 (first derivatives) through :class:`LinearScanFunction`, whose
    backward is the reverse scan g_t = dL/dh_t + a_{t+1} g_{t+1} (paper C, section 2.2).

    Limits: any T >= 1; non-contiguous inputs are made contiguous (a copy). On overflow the ref, numba,
    torch and tree backends give what the sequential recurrence gives: inf where the state overflows,
    never NaN from a product of gates that overflowed while the state did not (the chunked and tree
    scans answer with the loop there). fp32 rounding error grows with T: measured against float64 it
    stays near 1e-6 relative for contractive gates
    (notebook 01 and ``python -m fpcore bench scan`` report the max-abs-error beside every timing).

    Raises:
        TypeError: a, b or h0 is not a tensor (h0 may be None).
        ValueError: shape mismatch, T = 0, non-floating or mixed dtypes, tensors on different devices,
            an unknown backend, or a backend that cannot run here or on this device.
    """
    _check(a, b, h0, reverse)
    name = _choose(backend, a.device)
    if a.numel() == 0:  # B = 0 or D = 0: nothing to scan, keep the graph
        return b + 0 * a
    a, b = a.contiguous(), b.contiguous()
    h0 = None if h0 is None else h0.contiguous()
    return LinearScanFunction.apply(a, b, h0, reverse, name)


def matrix_scan(A: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """``h_t = A_t @ h_{t-1} + b_t`` for dense A_t: see :func:`fpcore.scan.matrix.matrix_scan`."""
    from fpcore.scan.matrix import matrix_scan as _matrix_scan

    return _matrix_scan(A, b, h0)
