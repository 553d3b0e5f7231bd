"""Synthetic long-dependency task: Hochreiter & Schmidhuber (1997) problem 2b, paper C's synthetic experiment.

The network reads a sequence x_0, x_1, ..., x_{T-1} of (p+1)-dimensional vectors and, after the last
step, must say the sign of x_0:

- x_0 = s * e_p with s = +1 or -1 (probability 1/2 each): the only informative step;
- x_t for t >= 1 is a random one-hot e_k, k uniform in {0, ..., p-1} (distractors, p = 128);
- the label is y = 1 if s = +1 else 0.

So the dependency is T - 1 steps long, and T can be anything up to 2^20 (= 1,048,576, paper C's
longest). A [B, T, p+1] one-hot batch at T = 2^20 would be 129 floats per step (0.5 GB per sequence
in float32), so nothing here builds it: a batch is a [B, T] tensor of integer *symbols* made directly
on the training device,

    symbol k in {0..p-1}  means  x_t = e_k,        symbol p  means  x_0 = +e_p,        symbol p+1  means  x_0 = -e_p,

and the first layer's input projection W x_t is a lookup (:class:`SignedOneHot`): W e_k is row k of
W^T, and W (-e_p) is minus row p. :func:`dense_inputs` builds the explicit one-hots for small checks.

Batches are deterministic by ``(seed, step)`` on a given device type: batch ``step`` is drawn from a
generator seeded with a mix of both, so training can resume at any step without replaying the stream.
(CPU and CUDA generators are different streams: the same seed gives different, equally random,
batches on the two.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["P", "MAX_T", "sign_batch", "SignedOneHot", "dense_inputs", "batch_seed"]

P = 128  # distractor symbols (paper C)
MAX_T = 1 << 20


def batch_seed(seed: int, step: int) -> int:
    """The generator seed for batch ``step`` of stream ``seed``: a splitmix64 hash of the pair, < 2^63.

    Hashed, not concatenated: torch's CPU generator (mt19937) keeps only the low 32 bits of a seed, so
    every bit of (seed, step) must reach them.
    """
    if not (isinstance(seed, int) and 0 <= seed < 2**31):
        raise ValueError(f"seed must be an int in [0, 2^31), got {seed!r}")
    if not (isinstance(step, int) and 0 <= step < 2**32):
        raise ValueError(f"step must be an int in [0, 2^32), got {step!r}")
    z = ((seed << 32) | step) + 0x9E3779B97F4A7C15
    z &= 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) >> 1


def sign_batch(
    batch: int, seq_len: int, *, p: int = P, seed: int = 0, step: int = 0, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of problem 2b: ``(symbols [B, T] int64, labels [B] float)`` made on ``device``.

    symbols[:, 0] is p (x_0 = +e_p, label 1.0) or p + 1 (x_0 = -e_p, label 0.0); symbols[:, 1:] are
    uniform in [0, p). Deterministic by (seed, step) for a device type. 1 <= T <= 2^20, B >= 1, p >= 1.
    Memory: 8 B T bytes (8 MiB per sequence at T = 2^20), never B T (p + 1) floats.
    """
    for name, value in (("batch", batch), ("seq_len", seq_len), ("p", p)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"sign_batch: {name} must be a positive int, got {value!r}")
    if seq_len > MAX_T:
        raise ValueError(f"sign_batch: seq_len must be <= 2^20 = {MAX_T}, got {seq_len}")
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(batch_seed(seed, step))
    symbols = torch.randint(0, p, (batch, seq_len), generator=gen, device=device)  # (B, T) int64
    positive = torch.randint(0, 2, (batch,), generator=gen, device=device)  # 1 -> x_0 = +e_p
    symbols[:, 0] = p + 1 - positive  # p for +, p + 1 for -
    return symbols, positive.to(torch.float32)


class SignedOneHot(nn.Module):
    r"""The first linear map W x_t for the task's inputs, as a lookup: symbols [B, T] -> [B, T, E].

    x_t is a one-hot e_k (symbol k < p) or +-e_p (symbols p, p+1), so W x_t is a row of
    ``weight`` [p + 1, E] or minus its last row. Mathematically ``dense_inputs(symbols) @ weight``,
    computed without ever forming the [B, T, p + 1] one-hots.
    """

    def __init__(self, p: int, embed: int):
        super().__init__()
        if p < 1 or embed < 1:
            raise ValueError(f"SignedOneHot: p and embed must be positive, got {p}, {embed}")
        self.p, self.embed = p, embed
        self.weight = nn.Parameter(torch.randn(p + 1, embed) / (p + 1) ** 0.5)

    def forward(self, symbols: torch.Tensor) -> torch.Tensor:
        if not isinstance(symbols, torch.Tensor) or symbols.dtype not in (torch.int64, torch.int32):
            raise ValueError("SignedOneHot: symbols must be an integer tensor (int64 or int32)")
        table = torch.cat([self.weight, -self.weight[-1:]], dim=0)  # (p + 2, E): row p+1 is W(-e_p)
        return F.embedding(symbols, table)  # (B, T, E)

    def extra_repr(self) -> str:
        return f"p={self.p}, embed={self.embed}"


def dense_inputs(symbols: torch.Tensor, p: int = P, dtype=torch.float32) -> torch.Tensor:
    """The explicit inputs x [B, T, p + 1] for ``symbols`` (for teaching and small checks only)."""
    if symbols.numel() * (p + 1) > 1 << 26:
        raise ValueError("dense_inputs: refusing to build more than 2^26 one-hot entries; use SignedOneHot")
    x = F.one_hot(symbols.clamp(max=p), p + 1).to(dtype)  # (B, T, p + 1); symbols p, p+1 -> e_p
    return torch.where((symbols == p + 1)[..., None], -x, x)
