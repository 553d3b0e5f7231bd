"""torch.nn recurrent layers to test against: one factory for the suites of cells, the solver and its gradients."""

from __future__ import annotations

import torch
from torch import nn

LAYERS = {"tanh": nn.RNN, "relu": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


def torch_rnn(
    kind: str, D: int = 3, H: int = 5, layers: int = 1, *, bias: bool = True, seed: int = 0, dtype=torch.float64
) -> nn.Module:
    """A batch-first torch.nn layer of ``kind`` ("tanh", "relu", "gru", "lstm") with seeded default init."""
    torch.manual_seed(seed)
    kw = {"nonlinearity": "relu"} if kind == "relu" else {}
    return LAYERS[kind](D, H, num_layers=layers, bias=bias, batch_first=True, **kw).to(dtype)
