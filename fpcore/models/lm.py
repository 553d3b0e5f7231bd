r"""A word- or character-level language model whose recurrent layers are evaluated by a chosen *method*.

    embedding -> dropout -> L recurrent layers (LSTM | GRU | tanh RNN) -> dropout -> decoder (tied or not)

The logits at position :math:`t` give the distribution of the next token :math:`x_{t+1}`. The same
``method`` is used in training and in evaluation (paper A's point, arXiv 2106.02417: the model that is
trained is the model that is evaluated). A forward pass takes one window of tokens [B, T] and the state
carried from the previous window, and returns the logits [B, T, V] and the state to carry.

Each method is a different model, and what sets them apart is which tokens the logits at :math:`t` depend
on. A model of finite *order* :math:`n` reads the last :math:`n` tokens, :math:`x_{t-n+1..t}` (the current
one and :math:`n - 1` before it): the next token's distribution depends on nothing earlier, so it is an
:math:`(n + 1)`-gram model in n-gram terms, and a word lattice expanded to histories of :math:`n` words
scores every path exactly as the model scores its sentence. ``model.order`` is :math:`n` (None: unbounded).

================ =======================================================================================
method           the model, and the tokens the logits at t depend on
================ =======================================================================================
"bptt"           the recurrent network, by the sequential layer (torch.nn) from the carried state: every
                 earlier token of the stream (order unbounded); trained by truncated BPTT
"newton",        the same recurrent network, its trajectory solved as the exact fixed point in parallel
"quasi_newton"   (DEER / quasi-DEER) from the carried state: equal to "bptt" up to the solver's tolerance
"jacobi"         paper A's approximate fixed point: each layer takes ``iters = k`` Jacobi iterations
                 :math:`\mathbf{s}^{(j+1)} = F(\mathbf{s}^{(j)})` from the zero start over the token stream.
                 Order :math:`n = L(k - 1) + 1` (derived below). The :math:`L(k-1)` tokens before a window
                 are carried as the state, so a window boundary changes nothing.
"truncated"      paper B's truncated model (arXiv 1805.10369): the whole L-layer recurrent network run over
                 the last k tokens from a zero state, :math:`x_{t-k+1..t}`. Order :math:`n = k` for any L;
                 the k - 1 tokens before a window are carried as the state.
"jacobi_carry"   k Jacobi iterations per layer from the zero start within each window, with the previous
                 window's last approximate state as :math:`s_0` (what earlier versions called "jacobi").
                 Unbounded order, and position-dependent: see below. Not paper A's model.
================ =======================================================================================

**The order of "jacobi".** Jacobi from the zero start makes position t exact for :math:`t \le j` after j
iterations, and for :math:`t > j` the iterate :math:`s_t^{(j)}` is a function of :math:`x_{t-j+1..t}` only
(each iteration reaches one step further back; paper A). So after k iterations layer 1's output at t reads
:math:`x_{t-k+1..t}`: k tokens. Layer :math:`l` reads layer :math:`l-1`'s outputs at :math:`t-k+1..t`; if
each of those reads :math:`(l-1)(k-1)+1` tokens ending at its own position, their union runs from
:math:`t - k + 1 - (l-1)(k-1)` to t: :math:`l(k-1)+1` tokens. By induction an L-layer stack reads
:math:`n = L(k-1)+1` tokens. For one layer "jacobi" and "truncated" are the same model (from the zero
start, Jacobi's k-th iterate *is* the k-window truncated recurrence): this equivalence is this series' own
observation, not a claim of either paper. For :math:`L > 1` they differ: "truncated" restarts the whole
stack k tokens back (order k), "jacobi" truncates each layer separately (order :math:`L(k-1)+1`).
With k = 1 both read only the current token.

**Windows and context.** A finite-order model carries the last :math:`n - 1` tokens (``model.context``) as
its state, a LongTensor [B, n - 1]; a forward pass runs over context + window and returns logits for the
window only. Its logits are therefore identical whether a stream is fed in one window or in many (the tests
check this for every method). At the start of a stream (``state=None``) the first positions read the
:math:`t` tokens there are, as the recurrent network from :math:`s_0 = 0` does.

**"jacobi_carry"'s dependencies** (one layer, windows of T > k tokens): the carried state is the previous
window's iterate at its last position, a function of that window's last k tokens; position i of a window
reads :math:`x_{i-k+1..i}` of its window when :math:`i > k`, and for :math:`i \le k` the window's first i
tokens *and*, through the carried state, the k tokens before the window (k + i tokens; with
``state=None``, the i tokens there are). Each further layer carries its own state, so with L layers the
first positions of a window reach further back still. The order is unbounded (a chain of carried states
links every window to the previous one) and depends on where a token sits in its window.

Any method combines with ``stable=True`` in the trainer: the recurrent weights are projected onto paper B's
stable set after every optimizer step (:func:`fpcore.stability.project_model_`).

The carried state is detached between windows by the trainer (truncated BPTT). For "bptt", "newton",
"quasi_newton" and "jacobi_carry" it is a tuple with one entry per layer, :math:`h` [1, B, H] (LSTM:
:math:`(h, c)`); for "jacobi" and "truncated", the context tokens [B, C] with :math:`C \le n - 1`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from fpcore import cells as _cells

__all__ = ["METHODS", "ITERATED", "FINITE_ORDER", "RNNLM", "model_order", "check_token_ids", "detach_state"]

METHODS = ("bptt", "jacobi", "truncated", "newton", "quasi_newton", "jacobi_carry")
FINITE_ORDER = ("jacobi", "truncated")  # the methods whose model has a finite order
ITERATED = ("jacobi", "truncated", "jacobi_carry")  # the methods that take iters = k
_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


def check_token_ids(tokens: Tensor, vocab: int, what: str = "tokens") -> None:
    """Raise ValueError unless ``tokens`` holds integer ids in [0, vocab) (torch would raise an IndexError
    deep inside the embedding or the loss, or read out of bounds on a GPU)."""
    if tokens.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"{what} must hold integer token ids, got dtype {tokens.dtype}")
    if tokens.numel():
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= vocab:
            raise ValueError(
                f"{what} must be ids in [0, {vocab}) (the model's vocabulary), got ids from {lo} to {hi}: "
                "is the corpus the one the model was built for?"
            )


def model_order(method: str, iters: int | None, layers: int) -> int | None:
    """The order n of a model (it reads the last n tokens), or None when it is unbounded.

    "jacobi": :math:`L(k-1)+1`; "truncated": :math:`k`; every other method: None.
    """
    if method in FINITE_ORDER and iters is None:
        raise ValueError(f"method {method!r} needs iters = k")
    if method == "jacobi" and iters is not None:
        return layers * (iters - 1) + 1
    return iters if method == "truncated" else None


class RNNLM(nn.Module):
    """Embedding, ``layers`` recurrent layers evaluated by ``method``, dropout, decoder.

    vocab      vocabulary size V; token ids must lie in [0, V)
    hidden     H (also the embedding size, so a tied decoder fits)
    layers     L
    cell       "lstm" | "gru" | "rnn" (tanh)
    dropout    on the embedding, between layers and before the decoder (Zaremba et al., arXiv 1409.2329)
    tie        share the embedding and decoder weights
    method     see the module docstring; ``iters`` = k for "jacobi", "truncated" and "jacobi_carry"
    tol        stopping tolerance of "newton" / "quasi_newton" (None: fpcore's default for the dtype)
    """

    def __init__(
        self,
        vocab: int,
        hidden: int = 200,
        layers: int = 2,
        *,
        cell: str = "lstm",
        dropout: float = 0.0,
        tie: bool = False,
        method: str = "bptt",
        iters: int | None = None,
        tol: float | None = None,
        init_range: float = 0.1,
    ):
        super().__init__()
        if cell not in _CELLS:
            raise ValueError(f"cell must be one of {', '.join(_CELLS)}, got {cell!r}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        if method in ITERATED and (not isinstance(iters, int) or isinstance(iters, bool) or iters < 1):
            raise ValueError(f"method {method!r} needs iters = k >= 1, got {iters!r}")
        if method not in ITERATED and iters is not None:
            raise ValueError(f"iters is for {', '.join(map(repr, ITERATED))}, not {method!r}")
        if not isinstance(vocab, int) or vocab < 1:
            raise ValueError(f"vocab must be a positive int, got {vocab!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.vocab, self.hidden, self.layers, self.cell_kind = vocab, hidden, layers, cell
        self.method, self.iters, self.tol = method, iters, tol
        self.embed = nn.Embedding(vocab, hidden)
        self.drop = nn.Dropout(dropout)
        # one module per layer, so dropout sits between layers whatever the method
        self.rnns = nn.ModuleList(_CELLS[cell](hidden, hidden, batch_first=True) for _ in range(layers))
        self.decoder = nn.Linear(hidden, vocab)
        if tie:
            self.decoder.weight = self.embed.weight
        self.reset_parameters(init_range)

    def reset_parameters(self, init_range: float = 0.1) -> None:
        """Uniform(-r, r) for every weight, zero decoder bias (Zaremba et al.'s initialisation)."""
        for p in self.parameters():
            nn.init.uniform_(p, -init_range, init_range)
        nn.init.zeros_(self.decoder.bias)

    @property
    def order(self) -> int | None:
        """n: the logits at t read exactly :math:`x_{t-n+1..t}` (None: unbounded). See :func:`model_order`."""
        return model_order(self.method, self.iters, self.layers)

    @property
    def _k(self) -> int:
        """k of an iterated method (the constructor checked it is an int >= 1)."""
        if self.iters is None:
            raise ValueError(f"method {self.method!r} has no k")
        return self.iters

    @property
    def context(self) -> int:
        """Tokens carried as the state between windows: n - 1 for a finite-order model, else 0."""
        n = self.order
        return 0 if n is None else n - 1

    def describe(self) -> str:
        k = f", k={self.iters}" if self.iters else ""
        n = f", order {self.order}" if self.order else ""
        return f"{self.layers}x{self.hidden} {self.cell_kind.upper()} LM, method={self.method}{k}{n}"

    def _check_tokens(self, tokens: Tensor, what: str = "tokens") -> None:
        if not isinstance(tokens, Tensor) or tokens.dim() != 2:
            shape = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(f"{what} must be [B, T], got {shape}")
        check_token_ids(tokens, self.vocab, what)

    # -- the layers --------------------------------------------------------------------------------------
    def _cell(self, i: int) -> _cells.Cell:
        return _cells.from_torch(self.rnns[i])

    def _jacobi_layer(self, i: int, x: Tensor) -> Tensor:
        """Layer i by k Jacobi iterations from the zero start: x [B, P, H] -> outputs h [B, P, H].

        :math:`s^{(0)} = 0`, :math:`s^{(j+1)}_t = f(s^{(j)}_{t-1}, x_t)` with :math:`s_0 = 0`: paper A's
        iteration (:func:`fpcore.fixed_point.solve` with ``method="jacobi", iters=k`` computes the same).
        """
        cell = self._cell(i)
        u = cell.prepare(x)  # (B, P, G): the input part, computed once
        B, P, _ = u.shape
        s = u.new_zeros(B, P, cell.state_size)  # (B, P, S): the zero start
        zero = u.new_zeros(B, 1, cell.state_size)
        for _ in range(min(self._k, P)):  # exact after P iterations: more change nothing
            s = cell.step(torch.cat([zero, s[:, :-1]], dim=1), u)  # F(s)_t = f(s_{t-1}, x_t)
        return cell.output(s)

    def _truncated_stack(self, x: Tensor, T: int) -> Tensor:
        """The whole stack over the last k inputs from a zero state, for the last T positions of x [B, P, H].

        Step j (of k) feeds input :math:`x_{t-k+1+j}` to every position t at once; a position whose window
        starts before the sequence keeps its zero state until the window reaches :math:`x_1` (the start of a
        stream). Returns the last layer's outputs [B, T, H].
        """
        k = self._k
        B, P, _ = x.shape
        cells = [self._cell(i) for i in range(self.layers)]
        u0 = cells[0].prepare(x)  # (B, P, G): layer 1's input part, once for all positions
        t = torch.arange(P - T, P, device=x.device)  # the positions whose outputs are wanted
        states = [u0.new_zeros(B, T, c.state_size) for c in cells]  # (B, T, S) per layer
        for j in range(k):
            src = t - k + 1 + j  # the input fed at step j, per position
            valid = (src >= 0)[None, :, None]
            u = u0[:, src.clamp(min=0)]  # (B, T, G)
            for i, c in enumerate(cells):
                if i:
                    u = c.prepare(self.drop(cells[i - 1].output(states[i - 1])))
                states[i] = torch.where(valid, c.step(states[i], u), states[i])
        return cells[-1].output(states[-1])

    def _carried_layer(self, i: int, x: Tensor, h0):
        rnn = self.rnns[i]
        if self.method == "bptt":
            return rnn(x, h0)  # (B, T, H), torch's state layout
        from fpcore import fixed_point

        kw: dict[str, Any]
        if self.method == "jacobi_carry":
            kw, grad = {"iters": self.iters}, "unrolled"
        else:
            kw, grad = {"tol": self.tol}, "implicit"
        res = fixed_point.solve(self._cell(i), x, h0, method=self.method.removesuffix("_carry"), grad=grad, **kw)
        return res.outputs, res.final

    def forward(self, tokens: Tensor, state=None) -> tuple[Tensor, object]:
        """tokens [B, T] -> (logits [B, T, V], the state to carry to the next window).

        ``state``: None at the start of a stream, else what the previous window returned (see the module
        docstring). Token ids outside [0, V) raise ValueError.
        """
        self._check_tokens(tokens)
        B, T = tokens.shape
        if self.method in FINITE_ORDER:
            ctx = tokens.new_empty(B, 0) if state is None else state
            if ctx.dim() != 2 or ctx.shape[0] != B:
                raise ValueError(f"the state of a {self.method!r} model is context tokens [B={B}, C], got {ctx.shape}")
            full = torch.cat([ctx[:, ctx.shape[1] - min(ctx.shape[1], self.context) :], tokens], 1)  # (B, C + T)
            h = self.drop(self.embed(full))  # (B, C + T, H)
            if self.method == "truncated":
                h = self._truncated_stack(h, T)  # (B, T, H)
            else:
                k = self._k
                for i in range(self.layers):
                    h = self._jacobi_layer(i, h)
                    # the layers above need the last T + (L-1-i)(k-1) positions; those before them read the
                    # zero start in place of tokens that are there (unless the stream starts there)
                    h = self.drop(h[:, -(T + (self.layers - 1 - i) * (k - 1)) :])
            keep = full[:, full.shape[1] - min(full.shape[1], self.context) :]  # (B, <= n - 1)
            return self.decoder(self.drop(h) if self.method == "truncated" else h), keep
        h = self.drop(self.embed(tokens))  # (B, T, H)
        new_state = []
        for i in range(self.layers):
            h0 = None if state is None else state[i]
            h, hn = self._carried_layer(i, h, h0)
            new_state.append(hn)
            h = self.drop(h)
        return self.decoder(h), tuple(new_state)

    # -- scoring histories (lattice rescoring) -----------------------------------------------------------
    @torch.no_grad()
    def next_log_probs(self, histories: Tensor | Sequence[Sequence[int]], *, batch_size: int = 512) -> Tensor:
        """log P(next token | history) for many histories at once: [N, m] (or N lists of ids) -> [N, V].

        Each history is the tokens before the predicted one, oldest first (at least one). A finite-order
        model reads only the last ``order`` of them, so a history of n or more tokens gives exactly the
        log-probabilities the model assigns inside a stream; a shorter one is the start of a stream. For an
        unbounded model the whole history is read from a zero state. Runs in eval mode (no dropout) in
        chunks of ``batch_size`` histories; lists of different lengths are grouped by length.
        """
        if not isinstance(histories, Tensor):
            seqs = [list(h) for h in histories]
            w = self.decoder.weight
            out = torch.empty(len(seqs), self.vocab, dtype=w.dtype, device=w.device)
            for length in sorted({len(s) for s in seqs}):
                idx = [i for i, s in enumerate(seqs) if len(s) == length]
                hist = torch.tensor([seqs[i] for i in idx], dtype=torch.long, device=out.device).view(len(idx), length)
                out[idx] = self.next_log_probs(hist, batch_size=batch_size)
            return out
        self._check_tokens(histories, "histories")
        if histories.shape[1] < 1:
            raise ValueError("each history needs at least one token")
        was_training = self.training
        self.eval()
        try:
            if self.order is not None:
                histories = histories[:, -self.order :]
            chunks = []
            for h in histories.split(batch_size):
                if self.order is not None:  # the last token is the window; the tokens before it the context
                    logits, _ = self(h[:, -1:], h[:, :-1])
                else:
                    logits, _ = self(h)
                chunks.append(torch.log_softmax(logits[:, -1], dim=-1))
            return torch.cat(chunks) if chunks else self.decoder.weight.new_empty(0, self.vocab)
        finally:
            self.train(was_training)


def detach_state(state):
    """Cut the graph between windows (truncated BPTT): detach every tensor in a nested state."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return state.detach()
    return type(state)(detach_state(s) for s in state)
