r"""Notebook 04's training experiments on paper B's claims (the theory is in :mod:`fpcore.stability`).

* :func:`fit_char_model`: train a :class:`~fpcore.models.char.CharRNN` with Adam on random windows of a
  token stream, optionally projected onto stable weights after every step, and return the loss per step.
* :func:`train_twins`: paper B's training claim. Train a recurrent model and its k-truncated twin from the
  same initialisation, on the same batches, with (projected) gradient descent, and record how far apart
  their weights drift. Paper B (arXiv 1805.10369): for a stable model the distance stays small
  and shrinks as k grows (the gradient gap is :math:`O(k \lambda^k)`); for an unstable one nothing bounds it.
  Two runs of it that differ only in ``project`` (the same initial weights, data, learning rate and k)
  compare a stable pair with an unstable one.

Both run for seconds to a minute inside a notebook, so they keep no checkpoints and stay plain loops; the
trainers that run for hours (:mod:`fpcore.train`, :mod:`fpcore.longdep`) share the resumable shape that
:mod:`fpcore.checkpoint` describes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from fpcore import stability
from fpcore.models.char import CharRNN, char_batches

__all__ = ["fit_char_model", "TwinHistory", "train_twins", "recurrent_norm"]


def fit_char_model(
    model: CharRNN,
    tokens: Tensor,
    *,
    steps: int,
    batch: int = 32,
    length: int = 64,
    lr: float = 3e-3,
    k: int | None = None,
    project: bool = False,
    project_options: dict[str, Any] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Train ``model`` with Adam (gradient norm clipped at 1) on random windows of ``tokens``.

    ``k``: train the k-truncated model instead of the recurrent one; ``project``: project onto stable weights
    after every step (:func:`fpcore.stability.project_after_step`, which also projects at the start), with
    ``project_options`` passed to :func:`fpcore.stability.project_model_` (e.g. ``{"input_forget_norm": None}``).
    Returns the training loss (nats per character) of every step. ``progress`` shows a text progress bar.
    """
    from tqdm import tqdm

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    handle = stability.project_after_step(opt, model, **(project_options or {})) if project else None
    batches, losses = char_batches(tokens, batch, length, seed), []
    for step in tqdm(range(steps), desc="train", disable=not progress, mininterval=1.0):
        x, y = batches(step)
        loss = nn.functional.cross_entropy(model(x, k).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    if handle is not None:
        handle.remove()
    return losses


def recurrent_norm(model: nn.Module) -> float:
    r"""The largest spectral norm among the recurrent weight matrices (``weight_hh*``) of ``model``: for a
    one-layer tanh RNN, its contraction constant :math:`\lambda = \|W\|_2`."""
    norms = [float(stability.spectral_norm(p)) for n, p in model.named_parameters() if "weight_hh" in n]
    if not norms:
        raise ValueError("the model has no recurrent weights (no parameter named weight_hh*)")
    return max(norms)


@dataclass
class TwinHistory:
    """A recurrent model and its k-truncated twin over training (see :func:`train_twins`)."""

    k: int
    project: bool
    steps: list[int] = field(default_factory=list)
    distance: list[float] = field(default_factory=list)  # ||theta_rec - theta_trunc||_2 over all weights
    norm: list[float] = field(default_factory=list)  # recurrent_norm of the recurrent twin
    loss_recurrent: list[float] = field(default_factory=list)
    loss_truncated: list[float] = field(default_factory=list)


def _flat(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def train_twins(
    make_model: Callable[[], nn.Module],
    batches: Callable[[int], tuple[Tensor, Tensor]],
    *,
    k: int,
    steps: int,
    lr: float = 0.1,
    project: bool = True,
    max_norm: float = 1.0,
    record_every: int = 1,
    seed: int = 0,
) -> TwinHistory:
    r"""Train a recurrent model and its k-truncated twin from the same initialisation, side by side.

    ``make_model()`` returns a model whose ``forward(x, k=None)`` gives logits [B, T, C] (recurrent for
    k=None, truncated otherwise), e.g. :class:`~fpcore.models.char.CharRNN`; both twins are built by it after
    ``torch.manual_seed(seed)``, so they start equal. ``batches(step)`` returns (x, y [B, T]) class targets,
    the same for both twins. Each step, each twin takes one plain SGD step ``theta <- theta - lr * grad`` on
    its own loss; with ``project=True`` both are then projected (:func:`fpcore.stability.project_model_`
    with ``max_norm``, which also projects them once before the first step): projected gradient descent.
    Every ``record_every`` steps (and at the end) the history records the weight distance and the recurrent
    twin's :func:`recurrent_norm`.
    """
    if steps < 1 or k < 1 or record_every < 1:
        raise ValueError(f"steps, k and record_every must be >= 1, got {steps}, {k}, {record_every}")

    def build() -> nn.Module:
        torch.manual_seed(seed)
        return make_model()

    twins = {"recurrent": build(), "truncated": build()}
    opts = {n: torch.optim.SGD(m.parameters(), lr=lr) for n, m in twins.items()}
    if project:
        for n, m in twins.items():
            stability.project_after_step(opts[n], m, max_norm=max_norm)
    history = TwinHistory(k=k, project=project)
    for step in range(steps + 1):
        if step % record_every == 0 or step == steps:
            history.steps.append(step)
            history.distance.append(float((_flat(twins["recurrent"]) - _flat(twins["truncated"])).norm()))
            history.norm.append(recurrent_norm(twins["recurrent"]))
        if step == steps:
            break
        x, y = batches(step)
        for name, model in twins.items():
            logits = model(x, None if name == "recurrent" else k)  # (B, T, C)
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
            opts[name].zero_grad()
            loss.backward()
            opts[name].step()
            getattr(history, f"loss_{name}").append(float(loss.detach()))
    return history
