"""Reference scans: the plain step loop (the oracle) and two tree scans written for teaching.

The recurrence (paper C, Martin & Cundy 2018, section 2)::

    h_t = a_t * h_{t-1} + b_t,      t = 1..T,   h_0 given          (elementwise over D)

is a *scan* with the associative operator on pairs (a, b)::

    (a1, b1) . (a2, b2) = (a1 * a2,  a2 * b1 + b2)        "first (a1, b1), then (a2, b2)"

so the prefix (a_1, b_1) . ... . (a_t, b_t) = (prod a, h_t with h_0 = 0), and h_t = A_t * h_0 + H_t.

Every function here takes the shapes of the public API: a, b: [B, T, D] (floating, same dtype and
device), h0: [B, D] or None, and returns h: [B, T, D] in the dtype of a. They are written to be read,
not to be fast: :func:`loop` is one tiny torch op per time step; the tree scans do O(log T) passes of
full-size tensor ops. Every fast backend is tested against :func:`loop`.

Floating point is not associative past overflow. The loop multiplies the state by one gate at a time;
the tree scans multiply gates together first, and a product of many gates can overflow where the state
does not (a = 1.1, b = 0: the state stays 0, the product over a long span is inf, and inf * 0 is NaN). So
when a tree scan's prefix products or results are not all finite, it answers with :func:`loop`: the same
answer as the sequential recurrence, overflow included.

The tree scans can *record* what they do (``record=[]``): one entry per level, each a dict
``{"phase": ..., "pairs": [(src, dst), ...]}`` meaning "dst := element[src] . element[dst]", which
:func:`fpcore.scan.viz.draw_tree` turns into the step-by-step diagrams of notebook 01.
"""

from __future__ import annotations

import torch

__all__ = ["combine", "loop", "hillis_steele", "blelloch", "three_phase", "compare_with_loop", "scan"]


def combine(first, second):
    """The associative operator: ``(a1, b1) . (a2, b2) = (a1 * a2, a2 * b1 + b2)``.

    ``first`` and ``second`` are pairs of broadcastable tensors; the result applies ``first`` then
    ``second``: h -> a2 * (a1 * h + b1) + b2.
    """
    a1, b1 = first
    a2, b2 = second
    return a1 * a2, a2 * b1 + b2


def loop(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None, *, reverse: bool = False) -> torch.Tensor:
    """The oracle: ``h_t = a_t * h_{t-1} + b_t`` one step at a time (reverse: ``h_t = a_t * h_{t+1} + b_t``).

    Shapes: a, b [B, T, D]; h0 [B, D] or None (zeros); returns [B, T, D]. Accumulates in float32
    for fp16/bf16 inputs (float64 stays float64) and returns the input dtype. Differentiable by
    autograd (T small ops), so it is also the gradient oracle. Any T >= 1; O(T) Python steps.
    """
    B, T, D = a.shape
    acc = torch.promote_types(a.dtype, torch.float32)
    h = torch.zeros(B, D, dtype=acc, device=a.device) if h0 is None else h0.to(acc)
    out: list[torch.Tensor] = []  # in the order computed
    steps = range(T - 1, -1, -1) if reverse else range(T)
    for t in steps:
        h = a[:, t].to(acc) * h + b[:, t].to(acc)
        out.append(h)
    if reverse:
        out.reverse()
    return torch.stack(out, dim=1).to(a.dtype)  # (B, T, D)


def hillis_steele(a, b, h0=None, *, reverse=False, record: list | None = None) -> torch.Tensor:
    """Hillis-Steele inclusive scan: log2(T) levels; at level k every element i >= 2^k combines i - 2^k.

    Work O(T log T), depth O(log T). Same shapes, dtypes and equation as :func:`loop`. ``record``
    (a list) receives one ``{"phase": "sweep", "offset": 2^k, "pairs": [(i - 2^k, i), ...]}`` per level.
    """
    if reverse:  # a reverse scan is a forward scan of the time-flipped sequence
        return hillis_steele(a.flip(1), b.flip(1), h0, record=record).flip(1)
    acc = torch.promote_types(a.dtype, torch.float32)
    A, H = a.to(acc), b.to(acc)
    T = A.shape[1]
    offset = 1
    while offset < T:
        if record is not None:
            record.append({"phase": "sweep", "offset": offset, "pairs": [(i - offset, i) for i in range(offset, T)]})
        # element i := element[i - offset] . element[i]; the slices read the old values (no aliasing)
        A_new, H_new = combine((A[:, :-offset], H[:, :-offset]), (A[:, offset:], H[:, offset:]))
        A = torch.cat([A[:, :offset], A_new], dim=1)  # (B, T, D)
        H = torch.cat([H[:, :offset], H_new], dim=1)  # (B, T, D)
        offset *= 2
    if h0 is not None:
        H = H + A * h0.to(acc)[:, None, :]  # h_t = (prod_{s<=t} a_s) h_0 + H_t
    if not bool(torch.isfinite(A).all() and torch.isfinite(H).all()):  # overflow: see the module docstring
        return loop(a, b, h0)
    return H.to(a.dtype)


def blelloch(a, b, h0=None, *, reverse=False, record: list | None = None) -> torch.Tensor:
    """Blelloch work-efficient scan: an up-sweep (reduce) and a down-sweep over a balanced tree.

    T is padded to the next power of two with the identity pair (1, 0). Work O(T), depth 2 log2(T).
    The down-sweep gives the *exclusive* scan (the state before each step); one last combine with
    each element makes it inclusive. Same shapes, dtypes and equation as :func:`loop`. ``record``
    receives the up-sweep levels ("up") and the down-sweep levels ("down", pairs (left, right) that
    swap-and-combine) on the padded length.
    """
    if reverse:
        return blelloch(a.flip(1), b.flip(1), h0, record=record).flip(1)
    acc = torch.promote_types(a.dtype, torch.float32)
    B, T, D = a.shape
    n = 1 << (T - 1).bit_length()
    A = torch.ones(B, n, D, dtype=acc, device=a.device)
    H = torch.zeros(B, n, D, dtype=acc, device=a.device)
    A[:, :T], H[:, :T] = a.to(acc), b.to(acc)
    a_in, b_in = A.clone(), H.clone()
    # up-sweep: at stride s, node i (i = 2s-1, 4s-1, ...) := node[i - s] . node[i]
    stride = 1
    while stride < n:
        right = torch.arange(2 * stride - 1, n, 2 * stride, device=a.device)
        left = right - stride
        if record is not None:
            record.append({"phase": "up", "offset": stride, "pairs": list(zip(left.tolist(), right.tolist()))})
        A[:, right], H[:, right] = combine((A[:, left], H[:, left]), (A[:, right], H[:, right]))
        stride *= 2
    # down-sweep: root := identity; at each level left gets parent's prefix, right := left_old . parent
    A[:, n - 1], H[:, n - 1] = 1.0, 0.0
    stride = n // 2
    while stride >= 1:
        right = torch.arange(2 * stride - 1, n, 2 * stride, device=a.device)
        left = right - stride
        if record is not None:
            record.append({"phase": "down", "offset": stride, "pairs": list(zip(left.tolist(), right.tolist()))})
        A_l, H_l = A[:, left].clone(), H[:, left].clone()
        A_r, H_r = A[:, right].clone(), H[:, right].clone()
        A[:, left], H[:, left] = A_r, H_r  # the prefix before the left subtree = parent's prefix
        A[:, right], H[:, right] = combine((A_r, H_r), (A_l, H_l))  # prefix before right = parent . left
        stride //= 2
    # exclusive prefix (A, H) . own element = inclusive prefix
    A, H = combine((A, H), (a_in, b_in))
    A, H = A[:, :T], H[:, :T]
    if h0 is not None:
        H = H + A * h0.to(acc)[:, None, :]
    if not bool(torch.isfinite(A).all() and torch.isfinite(H).all()):  # overflow: see the module docstring
        return loop(a, b, h0)
    return H.to(a.dtype)


def scan(a, b, h0, *, reverse: bool) -> torch.Tensor:
    """Backend entry point (see :mod:`fpcore.scan`): the plain loop."""
    return loop(a, b, h0, reverse=reverse)


def three_phase(a, b, h0=None, *, chunks: int = 4, record: dict | None = None) -> torch.Tensor:
    """Paper C's chunked algorithm, spelled out for teaching (forward only; any T >= chunks).

    1. every chunk reduces its steps to one pair (prod a, h from a zero state);
    2. a short sequential scan over the chunk pairs gives each chunk's incoming state;
    3. every chunk re-scans its steps from that state.
    Phases 1 and 3 are independent across chunks (one processor each). ``record`` (a dict) receives
    ``bounds``, ``pairs`` (phase 1: list of (A_c, H_c)) and ``carries`` (phase 2: incoming states).
    """
    B, T, D = a.shape
    acc = torch.promote_types(a.dtype, torch.float32)
    a, b = a.to(acc), b.to(acc)
    bounds = [(T * c // chunks, T * (c + 1) // chunks) for c in range(chunks)]
    # phase 1: one (A, H) pair per chunk, all chunks independent
    pairs = []
    for lo, hi in bounds:
        A, H = torch.ones(B, D, dtype=acc), torch.zeros(B, D, dtype=acc)
        for t in range(lo, hi):
            A, H = combine((A, H), (a[:, t], b[:, t]))
        pairs.append((A, H))
    # phase 2: scan the chunk pairs (short and sequential: `chunks` steps)
    h = torch.zeros(B, D, dtype=acc) if h0 is None else h0.to(acc)
    carries = []
    for A, H in pairs:
        carries.append(h)
        h = A * h + H
    # phase 3: every chunk re-scans from its incoming state, all chunks independent
    out = torch.empty(B, T, D, dtype=acc)
    for (lo, hi), h in zip(bounds, carries):
        for t in range(lo, hi):
            h = a[:, t] * h + b[:, t]
            out[:, t] = h
    if record is not None:
        record.update(bounds=bounds, pairs=pairs, carries=carries)
    return out


def compare_with_loop(backend: str, device="cpu", *, T: int = 1000, B: int = 3, D: int = 16, seed: int = 0) -> float:
    """Max |difference| between ``backend`` and :func:`loop` in float64: h and dL/d(a, b, h0), both directions.

    Gates U(-1, 1), inputs N(0, 1), a random h0 and a random dL/dh. Used by notebook 01 to assert that
    every available backend agrees with the oracle.
    """
    from fpcore.scan import linear_scan

    g = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64).to(device)  # noqa: E731
    a = (torch.rand(B, T, D, generator=g, dtype=torch.float64) * 2 - 1).to(device).requires_grad_()
    b, h0 = make(B, T, D).requires_grad_(), make(B, D).requires_grad_()
    worst = 0.0
    for reverse in (False, True):
        got = linear_scan(a, b, h0, reverse=reverse, backend=backend)
        exp = loop(a, b, h0, reverse=reverse)
        dh = make(B, T, D)
        pairs = zip((got, *torch.autograd.grad(got, (a, b, h0), dh)), (exp, *torch.autograd.grad(exp, (a, b, h0), dh)))
        worst = max([worst] + [(x - y).abs().max().item() for x, y in pairs])
    return worst
