"""Dense linear recurrences ``h_t = A_t @ h_{t-1} + b_t``: the scan a Newton (DEER) step needs.

The associative operator on pairs (M, v) is the affine map composition::

    (M1, v1) . (M2, v2) = (M2 @ M1,  M2 @ v1 + v2)        "first (M1, v1), then (M2, v2)"

:func:`matrix_scan` uses the same chunked three-phase algorithm as the diagonal torch backend:
inside chunks of L ~ sqrt(T) steps (all chunks at once) run the step loop from zero while keeping the
running matrix product, scan the chunk carries recursively, then fix up with one batched matmul.
Work O(T D^3), about 2 sqrt(T) Python steps, memory O(T D^2) (the size of A itself).
Gradients flow by torch autograd through these ops (first and higher derivatives).

Overflow. The loop multiplies the state by one A_t at a time; the chunked scan multiplies the A_t together
first, and a product of many can overflow where the state does not (A_t = 1.1 I, b = 0: the state stays 0,
the product is inf, and inf * 0 is NaN). A level whose chunk products, carries or result are not all finite
therefore answers with the loop (:func:`matrix_loop`): the sequential recurrence's answer, overflow
included, at the loop's speed, only on such inputs. (The checks read [B, C, D, D] and [B, T, D] numbers,
little beside the O(T D^3) work.)
"""

from __future__ import annotations

import math

import torch

__all__ = ["matrix_scan", "matrix_loop"]

_SMALL_T = 16


def _check(A, b, h0):
    for name, value in (("A", A), ("b", b), ("h0", h0)):
        if not isinstance(value, torch.Tensor) and not (name == "h0" and value is None):
            raise TypeError(
                f"matrix_scan: {name} must be a torch.Tensor{' or None' if name == 'h0' else ''}, "
                f"got {type(value).__name__}"
            )
    if b.dim() != 3:
        raise ValueError(f"matrix_scan: b must be [B, T, D], got shape {tuple(b.shape)}")
    B, T, D = b.shape
    if A.shape != (B, T, D, D):
        raise ValueError(f"matrix_scan: A must be [B, T, D, D] = {[B, T, D, D]}, got {list(A.shape)}")
    if T == 0:
        raise ValueError("matrix_scan: T = 0 (empty sequence); need T >= 1")
    if not A.is_floating_point() or A.dtype != b.dtype:
        raise ValueError(f"matrix_scan: A and b must share a floating dtype, got {A.dtype} and {b.dtype}")
    if A.device != b.device:
        raise ValueError(f"matrix_scan: A is on {A.device} but b is on {b.device}")
    if h0 is not None and (h0.shape != (B, D) or h0.dtype != b.dtype or h0.device != b.device):
        raise ValueError(
            f"matrix_scan: h0 must be [B, D] = {[B, D]} with b's dtype/device, got "
            f"{list(h0.shape)} {h0.dtype} on {h0.device}"
        )


def matrix_loop(A: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """The oracle: ``h_t = A_t @ h_{t-1} + b_t`` one step at a time; shapes as :func:`matrix_scan`."""
    B, T, D = b.shape
    h = b.new_zeros(B, D) if h0 is None else h0
    out = []
    for t in range(T):
        h = (A[:, t] @ h[..., None])[..., 0] + b[:, t]
        out.append(h)
    return torch.stack(out, dim=1)  # (B, T, D)


def matrix_scan(A: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """Solve ``h_t = A_t @ h_{t-1} + b_t`` (t = 1..T, h_0 = h0) for all t by a chunked parallel scan.

    Args:
        A: [B, T, D, D] transition matrices (any floating dtype; fp16/bf16 are computed in float32).
        b: [B, T, D] inputs, same dtype and device.
        h0: [B, D] initial state or None (zeros).

    Returns:
        h: [B, T, D] in b's dtype. Differentiable in A, b, h0 by autograd.

    Limits: any T >= 1; O(T D^3) work and O(T D^2) memory, so meant for the modest D of Newton
    solvers. Where products of many A_t overflow, the answer is the sequential loop's (see the module
    docstring): inf where the recurrence overflows, never NaN from the order of the products.

    Raises:
        TypeError: A, b or h0 is not a tensor (h0 may be None).
        ValueError: shape mismatch, T = 0, non-floating or mixed dtypes, tensors on different devices.
    """
    _check(A, b, h0)
    out_dtype = b.dtype
    acc = torch.promote_types(b.dtype, torch.float32)
    h = _forward(A.to(acc), b.to(acc), None if h0 is None else h0.to(acc))
    return h.to(out_dtype)


def _forward(A, b, h0):
    B, T, D = b.shape
    if T <= _SMALL_T:
        return matrix_loop(A, b, h0)
    L = max(4, int(math.ceil(math.sqrt(T))))
    C = -(-T // L)
    pad = C * L - T
    if pad:  # identity pairs (I, 0)
        eye = torch.eye(D, dtype=A.dtype, device=A.device).expand(B, pad, D, D)
        A = torch.cat([A, eye], dim=1)
        b = torch.cat([b, b.new_zeros(B, pad, D)], dim=1)
    A5 = A.reshape(B, C, L, D, D)  # (B, C, L, D, D)
    b4 = b.reshape(B, C, L, D)  # (B, C, L, D)
    # phase 1: inside every chunk, from zero; P_s = A_s ... A_1 (the chunk's running product)
    h, P = b4[:, :, 0], A5[:, :, 0]
    local, prods = [h], [P]
    for s in range(1, L):
        h = (A5[:, :, s] @ h[..., None])[..., 0] + b4[:, :, s]
        P = A5[:, :, s] @ P
        local.append(h)
        prods.append(P)
    local = torch.stack(local, dim=2)  # (B, C, L, D)
    prods = torch.stack(prods, dim=2)  # (B, C, L, D, D)
    if not _finite(prods[:, :, -1]):  # a chunk's product overflowed: see the module docstring
        return matrix_loop(A, b, h0)[:, :T]
    # phase 2: the state at the end of every chunk (recursively)
    ends = _forward(prods[:, :, -1], local[:, :, -1], h0)  # (B, C, D)
    first = b.new_zeros(B, 1, D) if h0 is None else h0[:, None, :]
    carry_in = torch.cat([first, ends[:, :-1]], dim=1)  # (B, C, D)
    # phase 3: h = local + P @ carry_in
    h = local + (prods @ carry_in[:, :, None, :, None])[..., 0]  # (B, C, L, D)
    if not (_finite(carry_in) and _finite(h)):  # the state overflowed: inf * 0 and inf - inf give NaN here
        return matrix_loop(A, b, h0)[:, :T]
    return h.reshape(B, C * L, D)[:, :T]


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t.detach()).all())
