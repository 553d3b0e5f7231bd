"""The fixed-point engine: one loop, five ways to step (see DESIGN.md).

The trajectory S = (s_1..s_T) of a recurrent layer is the fixed point of F(S)_t = f(s_{t-1}, x_t) with
s_0 = h_0 given. Every method iterates S^(k) -> S^(k+1) from a start, computing F(S^(k)) for all t at
once; they differ only in the step:

    "jacobi"        S <- F(S)                                     (paper A)     fpcore.fixed_point.jacobi
    "quasi_newton"  S <- S + d, d_t = diag(J_t) d_{t-1} + r_t     (quasi-DEER)  ... .quasi_newton
    "newton"        S <- S + d, d_t = J_t d_{t-1} + r_t           (DEER)        ... .newton
    "damped"        Newton with J shrunk by a trust region alpha  (LM damping) ... .damped
    "block_jacobi"  the loop inside blocks of M steps, Jacobi across them       ... .block_jacobi

(r = F(S) - S.) All are causal: an iteration makes at least one more position exact (block Jacobi: one
more block), so each is exact after T iterations (block Jacobi: ceil(T / M)), and none ever runs more.

What this engine adds to the bare steps (the series' own choices, each for a failure seen in practice):

- Starts. Jacobi and block Jacobi start from zeros, from which k Jacobi iterations are paper B's k-window
  truncated model. The Newton family starts from s_0 repeated over t, as DEER (arXiv 2309.12252) does.
- Causality in floating point. At the positions already exact, r is rounding error, and a Newton step's
  products J_t ... J_s would amplify it on a non-contractive cell until even T iterations leave a residual
  far above tol. The Newton family zeroes r there (exact arithmetic changes nothing: r is 0 there).
- Safeguard (Newton family, ``safeguard=True``): a step whose fixed-point residual is non-finite or over
  GROWTH = 1e3 times the smallest seen is replaced by the Jacobi step, which makes one more position
  exact like any other. So no method can diverge on a bounded cell; ``safeguard=False`` gives the plain
  methods, which stop at such a step with a :class:`DivergenceWarning`.
- The residual check. ``converged`` means max |F(S) - S| <= tol * max(1, max |S|) for the states returned
  (absolute for states in [-1, 1]); the iteration count alone never sets it.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from fpcore.cells import Cell, CellStack

from . import block_jacobi, damped, jacobi, newton, quasi_newton
from .implicit import ImplicitAdjoint, adjoint_jacobi, adjoint_scan
from .result import DivergenceWarning, FixedPointResult

__all__ = ["solve", "SolveOptions", "METHODS", "default_tol"]

METHODS: dict[str, Callable] = {
    "jacobi": jacobi.step,
    "quasi_newton": quasi_newton.step,
    "newton": newton.step,
    "damped": damped.step,
    "block_jacobi": block_jacobi.step,
}
# methods whose iterate is only wrong at a few positions: their residual is computed there, not by a full F(S)
CHEAP_RESIDUAL = {"block_jacobi": block_jacobi.residual}
JACOBI_LIKE = ("jacobi", "block_jacobi")  # cannot diverge on a bounded cell: only non-finite values count
NEWTON_FAMILY = ("quasi_newton", "newton", "damped")  # they start from s_0 repeated over t, as DEER does
GRADS = ("unrolled", "implicit", "none")
ADJOINTS = ("scan", "jacobi")
GROWTH = 1e3  # residual growth (vs the smallest seen) that counts as divergence, for the Newton family


def _maxabs(t: Tensor) -> float:
    return float(torch.linalg.vector_norm(t.detach(), math.inf))  # one pass, no |t| temporary


def default_tol(dtype: torch.dtype) -> float:
    """Stopping tolerance when none is given: 1e-10 (float64), 1e-6 (float32), 1e-3 (half types)."""
    return {torch.float64: 1e-10, torch.float32: 1e-6}.get(dtype, 1e-3)


@dataclass(frozen=True)
class SolveOptions:
    """How :func:`solve` iterates: every keyword of ``solve`` except the data (``h0``, ``init``).

    ``solve`` builds this once from its keywords (checking them here) and hands the same object to every
    layer of a :class:`~fpcore.cells.CellStack` and, as ``ctx.opts``, to every method's step. The fields
    and their meaning are those of :func:`solve`.
    """

    method: str = "jacobi"
    iters: int | None = None
    tol: float | None = None
    grad: str = "unrolled"
    adjoint: str = "scan"
    backend: str = "auto"
    time_limit: float | None = None
    callback: Callable[[int, Tensor], object] | None = None
    block: int | None = None
    overlap: int | None = None
    safeguard: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; use one of {', '.join(METHODS)}")
        it = self.iters
        if it is not None and (isinstance(it, bool) or not isinstance(it, int) or it < 1):
            raise ValueError(f"iters must be an int >= 1 (or None), got {it!r}")
        tol = self.tol
        if tol is not None and not (isinstance(tol, (int, float)) and tol >= 0 and math.isfinite(tol)):
            raise ValueError(f"tol must be a finite number >= 0 (or None), got {tol!r}")
        if self.grad not in GRADS:
            raise ValueError(f"grad must be one of {', '.join(GRADS)}, got {self.grad!r}")
        if self.adjoint not in ADJOINTS:
            raise ValueError(f"adjoint must be one of {', '.join(ADJOINTS)}, got {self.adjoint!r}")
        limit = self.time_limit
        if limit is not None and not (isinstance(limit, (int, float)) and limit > 0):
            raise ValueError(f"time_limit must be a positive number of seconds (or None), got {limit!r}")
        if not isinstance(self.safeguard, bool):
            raise ValueError(f"safeguard must be True or False, got {self.safeguard!r}")
        if self.callback is not None and not callable(self.callback):
            raise ValueError(f"callback must be callable as callback(k, S) (or None), got {self.callback!r}")
        for name, value, least in (("block", self.block, 1), ("overlap", self.overlap, 0)):
            if value is None:
                continue
            if self.method != "block_jacobi":
                raise ValueError(f"{name}= is a setting of method='block_jacobi'; {self.method!r} takes none")
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an int >= {least} (or None for the default), got {value!r}")


@dataclass
class _Context:
    """What a method's step may use: the cell, the prepared inputs u, the initial state, the options,
    and scratch."""

    cell: Cell
    u: Tensor  # (B, T, G)
    s0: Tensor  # (B, S)
    opts: SolveOptions
    exact_after: int = 0  # iterations after which the method is exact from any start (T; block Jacobi: blocks)
    exact: int = 0  # positions 1..exact are exact by causality (the iterations done so far; see residual)
    state: dict = field(default_factory=dict)  # what a method keeps between iterations (returned as .info)
    scratch: dict = field(default_factory=dict)  # per-solve caches (not returned)

    @property
    def backend(self) -> str:
        return self.opts.backend

    def prev(self, S: Tensor) -> Tensor:
        """(s_0, s_1, ..., s_{T-1}): the states each position's step reads, [B, T, S]."""
        return torch.cat([self.s0[:, None], S[:, :-1]], dim=1)

    def F(self, S: Tensor) -> Tensor:
        """F(S)_t = f(s_{t-1}, x_t) for all t at once, [B, T, S]."""
        return self.cell.step(self.prev(S), self.u)

    def residual(self, S: Tensor, FS: Tensor) -> Tensor:
        """r = F(S) - S, [B, T, S], set to zero at the positions 1..exact the iterations have made exact.

        In exact arithmetic r is already zero there. In floating point it is rounding error, and a Newton
        step's products J_t ... J_s carry it to every later position, multiplied by up to lambda^T on a
        cell with ||J|| = lambda > 1: a chaotic cell then never settles even after T iterations. Zeroing it
        keeps the causal guarantee (one more exact position per iteration) true in floating point.
        """
        r = FS - S
        if self.exact:
            r[:, : self.exact] = 0
        return r

    def jacobi_step(self, S: Tensor, FS: Tensor) -> Tensor:
        """S <- F(S) at the positions not yet exact, [B, T, S]: the fall-back step of the Newton family.

        Positions 1..exact keep their values, so they stay consistent with the positions after them (a
        full F(S) would move them by rounding error, which the zeroed residual there would never correct).
        """
        if not self.exact:
            return FS
        return torch.cat([S[:, : self.exact], FS[:, self.exact :]], dim=1)


def _check_inputs(cell, x) -> None:
    if not isinstance(cell, (Cell, CellStack)):
        raise ValueError(
            f"cell must be an fpcore.cells.Cell or CellStack (see cells.from_torch), got {type(cell).__name__}"
        )
    if not isinstance(x, Tensor) or x.dim() != 3:
        raise ValueError(
            f"x must be a batch-first tensor [B, T, D], got "
            f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}"
        )
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"x must have B >= 1 and T >= 1, got shape {tuple(x.shape)}")
    if x.shape[-1] != cell.input_size:
        raise ValueError(f"x has {x.shape[-1]} features, the cell expects input_size={cell.input_size}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
    w = getattr(cell[0] if isinstance(cell, CellStack) else cell, "weight_hh", None)
    if isinstance(w, Tensor) and (w.dtype != x.dtype or w.device != x.device):
        raise ValueError(
            f"x is {x.dtype} on {x.device} but the cell's weights are {w.dtype} on {w.device}; "
            f"convert one of them (e.g. module.to(x.dtype))"
        )


def solve(
    cell,
    x: Tensor,
    h0=None,
    *,
    method: str = "jacobi",
    iters: int | None = None,
    tol: float | None = None,
    init=None,
    grad: str = "unrolled",
    adjoint: str = "scan",
    backend: str = "auto",
    time_limit: float | None = None,
    callback: Callable[[int, Tensor], object] | None = None,
    block: int | None = None,
    overlap: int | None = None,
    safeguard: bool = True,
) -> FixedPointResult:
    """Solve a recurrent layer for all t at once as the fixed point S = F(S), F(S)_t = f(s_{t-1}, x_t).

    cell    an :class:`fpcore.cells.Cell` or :class:`~fpcore.cells.CellStack` (``cells.from_torch(module)``)
    x       [B, T, D] batch-first inputs (any float dtype; the cell's parameters must match it)
    h0      initial state: [B, H] (LSTM: (h0, c0) or packed [B, 2H]; a stack: torch's [L, B, H]); None = 0
    method  "jacobi" | "quasi_newton" | "newton" | "damped" | "block_jacobi" (see the module docstring)
    iters   at most this many iterations (capped at T; block Jacobi: at ceil(T / block)). ``iters=k``
            with "jacobi" from the zero start is paper A's k-th order approximation = paper B's k-window
            truncated model.
    tol     stop when max |S^(k+1) - S^(k)| <= tol and the residual check max |F(S) - S| <= tol * max(1,
            max |S|) passes (block Jacobi: on the check alone; see its module). With neither ``iters`` nor
            ``tol``: tol = :func:`default_tol` of the dtype. With only ``iters``: run them all (stopping
            only at an exact fixed point); ``converged`` is then judged against the default tol.
    init    starting iterate [B, T, S] (packed states; a stack: a list, one per layer); None = zeros for
            Jacobi and block Jacobi, s_0 repeated over t for the Newton family (DEER's start)
    grad    "unrolled": autograd through the iterations (the approximate model trained as evaluated);
            "implicit": the fixed point's gradient by the adjoint recursion (``adjoint="scan"`` with full
            Jacobians and the matrix scan, or ``"jacobi"`` by vector-Jacobian products), assuming
            convergence; "none": run under no_grad.
    backend the :func:`fpcore.linear_scan` backend quasi-Newton uses.
    time_limit  stop after this many seconds (per layer; checked once per iteration): the benchmark's
            budget for methods that need many iterations. Judged like an early ``iters`` stop.
    callback    called as ``callback(k, S)`` after iteration k with the new iterate (e.g. to record the
            error of every iterate against a reference, as notebook 05 does); its result is ignored. For a
            stack, k counts as ``.residuals`` does, across the layers (layer 0's iterations first), and S
            is the iterate of the layer being solved.
    block, overlap   block Jacobi's block length M and warm-up w (None: the rule of its module; capped at
            T and M), recorded in ``.info``. M = 1, w = 0 is Jacobi and M = T the step loop. Only for
            ``method="block_jacobi"``, which also stops when max |F(S) - S| <= tol (see its module).
    safeguard   Newton family only: replace a step whose residual is non-finite or over GROWTH times the
            smallest seen by the Jacobi step (recorded in ``.info["rejected"]``). False: the plain method,
            which stops there with a :class:`DivergenceWarning` (to show what the safeguard prevents).

    The keywords other than ``init`` travel together as one :class:`SolveOptions`, checked once.

    ``converged`` is the residual check on the returned states. A :class:`DivergenceWarning` says when a solver
    did not get there: non-finite iterates (any method; Jacobi's only failure, which the step loop would
    meet too), a residual grown GROWTH-fold (the Newton family with ``safeguard=False``), or every
    iteration run without passing the check (when neither ``iters`` nor ``time_limit`` cut it short). On
    divergence the iterate with the smallest max |F(S) - S| is returned with ``diverged=True``; the message
    suggests another method, never the one that failed.

    Returns a :class:`FixedPointResult` (``.outputs`` [B, T, H], ``.states`` [B, T, S], ``.iterations``,
    ``.residuals``, ``.converged``). Raises ValueError on bad input.
    """
    opts = SolveOptions(
        method=method,
        iters=iters,
        tol=tol,
        grad=grad,
        adjoint=adjoint,
        backend=backend,
        time_limit=time_limit,
        callback=callback,
        block=block,
        overlap=overlap,
        safeguard=safeguard,
    )
    _check_inputs(cell, x)
    res = _solve_stack(cell, x, h0, init, opts) if isinstance(cell, CellStack) else _solve_cell(cell, x, h0, init, opts)
    for r in res.layers or [res]:  # warned here, so that the warning points at the caller
        if r.diverged or (not r.converged and opts.iters is None and opts.time_limit is None):
            warnings.warn(r.message, DivergenceWarning, stacklevel=2)  # (the second: every iteration ran)
        if opts.grad == "implicit" and torch.is_grad_enabled() and not r.converged:
            warnings.warn(
                f"grad='implicit' differentiates the fixed point, but {method} did not converge "
                f"(last residual {r.residuals[-1]:.2e}): the gradient is approximate",
                stacklevel=2,
            )
    return res


def _solve_stack(stack: CellStack, x: Tensor, h0, init, opts: SolveOptions) -> FixedPointResult:
    """Layer by layer: the outputs of layer l are the inputs of layer l + 1 (as torch.nn in eval mode)."""
    if init is not None and (not isinstance(init, (list, tuple)) or len(init) != len(stack)):
        raise ValueError(f"init for a {len(stack)}-layer stack must be a list of {len(stack)} tensors or None")
    layers: list[FixedPointResult] = []
    inp, done = x, 0
    for i, cell in enumerate(stack):
        layer_opts = opts if opts.callback is None else replace(opts, callback=_counting_on(opts.callback, done))
        r = _solve_cell(cell, inp, stack.layer_h0(h0, i), None if init is None else init[i], layer_opts)
        layers.append(r)
        inp, done = r.outputs, done + r.iterations
    last = layers[-1]
    final: Tensor | tuple[Tensor, ...]
    if isinstance(last.final, tuple):  # LSTM: (h_n, c_n), each [L, B, H]
        final = tuple(torch.cat([r.final[j] for r in layers if isinstance(r.final, tuple)]) for j in range(2))
    else:
        final = torch.cat([r.final for r in layers if isinstance(r.final, Tensor)])  # [L, B, H]
    return FixedPointResult(
        outputs=last.outputs,
        states=last.states,
        iterations=done,
        residuals=[v for r in layers for v in r.residuals],
        converged=all(r.converged for r in layers),
        method=opts.method,
        tol=last.tol,
        diverged=any(r.diverged for r in layers),
        fp_residual=max(r.fp_residual for r in layers),
        message="; ".join(r.message for r in layers if r.message),
        final=final,
        layers=layers,
        info=dict(last.info),
    )


def _counting_on(callback: Callable[[int, Tensor], object], done: int) -> Callable[[int, Tensor], object]:
    """``callback`` with the iterations of the layers already solved added to k."""
    return lambda k, S: callback(done + k, S)


def _solve_cell(cell: Cell, x: Tensor, h0, init, opts: SolveOptions) -> FixedPointResult:
    B, T, _ = x.shape
    method = opts.method
    want_grad = torch.is_grad_enabled() and opts.grad == "unrolled"
    with torch.set_grad_enabled(want_grad or (opts.grad == "implicit" and torch.is_grad_enabled())):
        u = cell.prepare(x)  # (B, T, G): the input-only part, computed once
        s0 = cell.initial_state(h0, B, dtype=u.dtype, device=u.device)  # (B, S)
    Sdim = cell.state_size
    if init is not None:
        if not isinstance(init, Tensor) or init.shape != (B, T, Sdim):
            raise ValueError(
                f"init must be packed states [B, T, S] = [{B}, {T}, {Sdim}], got "
                f"{tuple(init.shape) if isinstance(init, Tensor) else type(init).__name__}"
            )
    check_tol = opts.tol if opts.tol is not None else default_tol(u.dtype)
    stop_tol = opts.tol if opts.tol is not None else (0.0 if opts.iters is not None else check_tol)
    ctx = _Context(cell, u if want_grad else u.detach(), s0 if want_grad else s0.detach(), opts, exact_after=T)
    if method == "block_jacobi":  # block length, overlap and the fused layer's inputs
        ctx.exact_after = block_jacobi.setup(ctx, x, block=opts.block, overlap=opts.overlap)
    max_iters = ctx.exact_after if opts.iters is None else min(opts.iters, ctx.exact_after)
    if init is not None:
        start = init.to(u.dtype)
    elif method in NEWTON_FAMILY:  # DEER's start: s_0 at every position
        start = ctx.s0[:, None].expand(B, T, Sdim).contiguous()
    else:  # the zero start, from which k Jacobi iterations are paper B's k-window truncated model
        start = u.new_zeros(B, T, Sdim)

    with torch.set_grad_enabled(want_grad):
        out = _iterate(ctx, start, max_iters, stop_tol, check_tol)
    ctx.scratch.clear()
    S, residuals = out.S, out.residuals

    if opts.grad == "implicit" and torch.is_grad_enabled():
        S = _attach_implicit(cell, u, s0, S.detach(), opts.adjoint, check_tol, T)
    return FixedPointResult(
        outputs=cell.output(S),
        states=S,
        iterations=len(residuals),
        residuals=residuals,
        converged=out.converged,
        method=method,
        tol=check_tol,
        diverged=out.diverged,
        fp_residual=out.fp_residual,
        message=out.message,
        final=cell.final_state(S[:, -1]),
        info=dict(ctx.state),
    )


@dataclass
class _Outcome:
    """What :func:`_iterate` found for one cell."""

    S: Tensor
    residuals: list[float]
    converged: bool
    diverged: bool
    fp_residual: float
    message: str


def _iterate(ctx: _Context, S: Tensor, max_iters: int, stop_tol: float, check_tol: float) -> _Outcome:
    """Iterate from S until the residual check passes (at ``stop_tol``), divergence, ``max_iters`` or the
    time limit; ``converged`` is the residual check at ``check_tol`` on the iterate returned."""
    opts = ctx.opts
    method = opts.method
    step = METHODS[method]
    cheap_residual = CHEAP_RESIDUAL.get(method)
    guarded = opts.safeguard and method in NEWTON_FAMILY
    deadline = None if opts.time_limit is None else time.perf_counter() + opts.time_limit
    if cheap_residual is None:
        FS = ctx.F(S)
        fp = _maxabs(FS - S)
    else:  # the start's residual only matters for divergence, which these methods do not need to track
        FS, fp = None, math.inf
    best = (fp if math.isfinite(fp) else math.inf, S, 0)  # (fixed-point residual, iterate, iteration)
    residuals: list[float] = []
    message = ""
    for k in range(1, max_iters + 1):
        ctx.exact = k - 1  # by causality, iterations 1..k-1 have made positions 1..k-1 exact
        S_new, FS_new = step(ctx, S, FS)
        change = ctx.scratch.pop("change", None)  # a method may measure it more cheaply as it goes
        if cheap_residual is None:
            FS_new = ctx.F(S_new) if FS_new is None else FS_new
            fp = _maxabs(FS_new - S_new)
        else:
            fp = cheap_residual(ctx, S_new)
        if guarded and not fp <= GROWTH * max(best[0], check_tol):  # also catches nan
            # the linearisation failed (non-finite, or the residual exploded): take the Jacobi step instead,
            # which makes one more position exact like any other
            ctx.state.setdefault("rejected", []).append(k)
            assert FS is not None  # (only methods without a cheap residual are guarded)
            S_new, change = ctx.jacobi_step(S, FS), None
            FS_new = ctx.F(S_new)
            fp = _maxabs(FS_new - S_new)
        residuals.append(_maxabs(S_new - S) if change is None else change)
        S, FS = S_new, FS_new
        if opts.callback is not None:
            opts.callback(k, S)
        if not (math.isfinite(residuals[-1]) and math.isfinite(fp)):
            return _diverged(ctx, best, residuals, f"{method}: non-finite iterate at iteration {k}")
        if fp < best[0]:
            best = (fp, S, k)
        settled = residuals[-1] <= stop_tol or cheap_residual is not None  # (block Jacobi's residual is exact)
        if settled and _passes(fp, S, stop_tol):
            break
        if method not in JACOBI_LIKE and not guarded and fp > GROWTH * max(best[0], check_tol):
            return _diverged(
                ctx,
                best,
                residuals,
                f"{method}: residual grew to {fp:.2e}, over {GROWTH:g}x the smallest seen ({best[0]:.2e}) "
                f"at iteration {k}",
            )
        if deadline is not None and k < max_iters and time.perf_counter() > deadline:
            message = f"{method}: time limit of {opts.time_limit:g} s reached after {k} iterations"
            break
    converged = _passes(fp, S, check_tol)
    if not converged and not message and len(residuals) == ctx.exact_after:
        message = (
            f"{method}: after {len(residuals)} iterations, which make every position exact in exact "
            f"arithmetic, max |F(S) - S| = {fp:.2e} is still above tol = {check_tol:.1e}" + _hint(method)
        )
    return _Outcome(S, residuals, converged, False, fp, message)


def _passes(fp: float, S: Tensor, tol: float) -> bool:
    """The residual check: max |F(S) - S| <= tol * max(1, max |S|) (absolute for states within [-1, 1],
    relative to the largest state beyond: an LSTM's cell state can be 50, whose float32 spacing is 4e-6)."""
    return fp <= tol or fp <= tol * _maxabs(S)


def _diverged(ctx: _Context, best, residuals: list[float], why: str) -> _Outcome:
    fp, S, k = best
    message = f"{why}; returning the best iterate (iteration {k}, max |F(S) - S| = {fp:.2e})"
    return _Outcome(S, residuals, False, True, fp, message + _hint(ctx.opts.method))


def _hint(method: str) -> str:
    """What to try instead of ``method`` (never ``method`` itself)."""
    if method in JACOBI_LIKE:  # these only fail on non-finite values, which the step loop would meet too
        return "; the step itself gives non-finite values: check x, h0 and the weights"
    if method == "damped":
        return "; try method='jacobi' (exact after T iterations: no linearisation to amplify errors)"
    return "; try method='damped' (a trust region) or 'jacobi' (exact after T iterations)"


def _attach_implicit(cell, u, s0, S_star, adjoint, tol, T):
    """One differentiable application of F at S*, whose backward solves the adjoint (see implicit.py)."""
    u_d, s0_d = u.detach(), s0.detach()
    prev_d = torch.cat([s0_d[:, None], S_star[:, :-1]], dim=1)  # (B, T, S), detached

    def F_det(S):
        return cell.step(torch.cat([s0_d[:, None], S[:, :-1]], dim=1), u_d)

    def solver(grad):
        if adjoint == "scan":
            with torch.no_grad():
                return adjoint_scan(cell.jacobian(prev_d, u_d), grad)
        return adjoint_jacobi(F_det, S_star, grad, tol, T)

    FS = cell.step(torch.cat([s0[:, None], S_star[:, :-1]], dim=1), u)  # same value as S*, with a graph
    return ImplicitAdjoint.apply(FS, solver)
