"""A minimal character model and a deterministic window sampler, for notebook 04's stability experiments.

:class:`CharRNN` is embedding -> one recurrent layer -> linear, evaluated either recurrently (torch's own
layer) or as paper B's k-window truncated model (k Jacobi iterations of the fixed-point engine from a zero
start, gradients through them). :func:`char_batches` draws random windows of a token stream, the same
windows for the same step, so two models trained side by side see exactly the same data. The language
models of the experiments live in :mod:`fpcore.models.lm`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from fpcore import cells

__all__ = ["CharRNN", "char_batches"]


class CharRNN(nn.Module):
    """Embedding (V -> E) -> one recurrent layer (E -> H) -> linear (H -> V).

    ``cell`` is "rnn" (tanh), "gru" or "lstm". ``forward(tokens, k=None)`` maps tokens [B, T] to logits
    [B, T, V]: the recurrent model when ``k`` is None, else the k-truncated model (k Jacobi iterations
    from zero; paper B's feed-forward approximation).
    """

    def __init__(self, vocab: int, hidden: int = 64, embed: int = 16, cell: str = "rnn"):
        super().__init__()
        kinds = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
        if cell not in kinds:
            raise ValueError(f"cell must be one of {', '.join(kinds)}, got {cell!r}")
        self.embed = nn.Embedding(vocab, embed)
        self.rnn = kinds[cell](embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def hidden_states(self, tokens: Tensor, k: int | None = None) -> Tensor:
        """The recurrent layer's outputs h [B, T, H] (recurrent for k=None, else k-truncated)."""
        from fpcore import fixed_point

        x = self.embed(tokens)  # (B, T, E)
        if k is None:
            return self.rnn(x)[0]  # (B, T, H), torch's own sequential layer
        return fixed_point.solve(cells.from_torch(self.rnn), x, method="jacobi", iters=k, grad="unrolled").outputs

    def forward(self, tokens: Tensor, k: int | None = None) -> Tensor:
        return self.head(self.hidden_states(tokens, k))  # (B, T, V)


def char_batches(tokens: Tensor, batch: int, length: int, seed: int = 0) -> Callable[[int], tuple[Tensor, Tensor]]:
    """Random windows of a 1-D token stream: ``batches(step)`` -> (x [B, L], y [B, L] shifted by one).

    Deterministic in (seed, step), so two models fed ``batches(step)`` see exactly the same data.
    """
    if tokens.numel() <= length + 1:
        raise ValueError(f"{tokens.numel()} tokens are too few for windows of {length}")

    def batches(step: int) -> tuple[Tensor, Tensor]:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        start = torch.randint(0, tokens.numel() - length - 1, (batch, 1), generator=gen)
        idx = start + torch.arange(length + 1)  # (B, L + 1)
        window = tokens[idx]
        return window[:, :-1], window[:, 1:]

    return batches
