r"""A word- or character-level language model whose recurrent layers are evaluated by a chosen *method*.

    embedding -> dropout -> L recurrent layers (LSTM | GRU | tanh RNN) -> dropout -> decoder (tied or not)

The same ``method`` is used in training and in evaluation (paper A's point: the model that is trained is
the model that is evaluated). A forward pass takes one window of ``bptt`` tokens and the state carried
from the previous window, and returns the logits and the state to carry:

============== ==========================================================================================
method         what each layer computes over a window
============== ==========================================================================================
"bptt"         the sequential layer (torch.nn, cuDNN on GPU) from the carried state: truncated BPTT
"jacobi"       paper A's approximate fixed point: ``iters=k`` Jacobi iterations from a zero start,
               in parallel over the window, with the carried state as :math:`h_0`. Positions t <= k are
               exact given :math:`h_0`; later ones see the last k inputs. The carried state is the
               approximate trajectory's last state, so information still flows across windows.
"truncated"    paper B's feed-forward model with window ``iters=k``: every position sees exactly its last
               k tokens from a zero state, nothing is carried; the k - 1 tokens before the window are
               kept as context, so a window boundary changes nothing (a strict k-th order model)
"newton",      the exact fixed point, computed in parallel (DEER / quasi-DEER) from the carried state:
"quasi_newton" equal to "bptt" up to the solver's tolerance
============== ==========================================================================================

Any method combines with ``stable=True``: the recurrent weights are projected onto paper B's stable set
after every optimizer step (:func:`fpcore.stability.project_model_`); the trainer applies it.

State between windows: a tuple with one entry per layer, ``h`` [B, H] (LSTM: (h, c)), plus the previous
window's last k - 1 tokens for "truncated". The trainer detaches it between windows (truncated BPTT).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fpcore import cells as _cells

__all__ = ["METHODS", "RNNLM"]

METHODS = ("bptt", "jacobi", "truncated", "newton", "quasi_newton")
_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class RNNLM(nn.Module):
    """Embedding, ``layers`` recurrent layers evaluated by ``method``, dropout, decoder.

    vocab      vocabulary size V
    hidden     H (also the embedding size, so a tied decoder fits)
    layers     L
    cell       "lstm" | "gru" | "rnn" (tanh)
    dropout    on the embedding, between layers and before the decoder (Zaremba et al.)
    tie        share the embedding and decoder weights
    method     see the module docstring; ``iters`` = k for "jacobi" and "truncated"
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
        if method in ("jacobi", "truncated") and (not isinstance(iters, int) or iters < 1):
            raise ValueError(f"method {method!r} needs iters = k >= 1, got {iters!r}")
        if method not in ("jacobi", "truncated") and iters is not None:
            raise ValueError(f"iters is for 'jacobi' and 'truncated', not {method!r}")
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
    def context(self) -> int:
        """Tokens of left context a window needs beyond itself: k - 1 for "truncated", else 0."""
        return self.iters - 1 if self.method == "truncated" else 0

    def describe(self) -> str:
        k = f", k={self.iters}" if self.iters else ""
        return f"{self.layers}x{self.hidden} {self.cell_kind.upper()} LM, method={self.method}{k}"

    # -- one layer over one window ---------------------------------------------------------------------
    def _layer(self, i: int, x: Tensor, h0):
        rnn = self.rnns[i]
        if self.method == "bptt":
            return rnn(x, h0)  # (B, T, H), torch's state layout
        from fpcore import fixed_point

        cell = _cells.from_torch(rnn)
        if self.method == "truncated":
            states = _cells.truncated(cell, x, self.iters)  # (B, T, S), zero start for every window
            return cell.output(states), None
        kw = {"iters": self.iters} if self.method == "jacobi" else {"tol": self.tol}
        grad = "unrolled" if self.method == "jacobi" else "implicit"
        res = fixed_point.solve(cell, x, h0, method=self.method, grad=grad, **kw)
        return res.outputs, res.final

    def forward(self, tokens: Tensor, state=None) -> tuple[Tensor, tuple]:
        """tokens [B, T] -> (logits [B, T, V], state to carry to the next window).

        For "truncated", ``state`` holds the previous window's last k - 1 tokens (None at the start of a
        stream: the first positions then see fewer than k tokens, like the recurrent model at t < k).
        """
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [B, T], got shape {tuple(tokens.shape)}")
        B, T = tokens.shape
        if self.method == "truncated":
            ctx = state if state is not None else tokens.new_empty(B, 0)
            full = torch.cat([ctx, tokens], 1)  # (B, C + T)
            h = self.drop(self.embed(full))
            for i in range(self.layers):
                h, _ = self._layer(i, h, None)
                h = self.drop(h)
            logits = self.decoder(h[:, -T:])  # (B, T, V): drop the context positions
            keep = full[:, -self.context :] if self.context else tokens.new_empty(B, 0)
            return logits, keep
        h = self.drop(self.embed(tokens))  # (B, T, H)
        new_state = []
        for i in range(self.layers):
            h0 = None if state is None else state[i]
            h, hn = self._layer(i, h, h0)
            new_state.append(hn)
            h = self.drop(h)
        return self.decoder(h), tuple(new_state)


def detach_state(state):
    """Cut the graph between windows (truncated BPTT): detach every tensor in a nested state."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return state.detach()
    return type(state)(detach_state(s) for s in state)
