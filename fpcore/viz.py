"""Plots and widgets shared by the notebooks (each notebook's own figures live beside their logic)."""
from __future__ import annotations

import torch

__all__ = ["corpus_overview", "line_lengths"]


def line_lengths(ids: torch.Tensor, eos: int) -> torch.Tensor:
    """Tokens per line (the ``<eos>`` included) of a 1-D id stream in which every line ends with ``eos``."""
    ends = (ids == eos).nonzero().flatten()  # (lines,)
    return torch.diff(ends, prepend=ends.new_tensor([-1]))


def corpus_overview(corpus, split: str = "train"):
    """Two panels: Zipf's rank-frequency law (log-log) and the distribution of line lengths."""
    import matplotlib.pyplot as plt

    ids = corpus.splits()[split]
    counts = torch.bincount(ids, minlength=corpus.vocab_size).sort(descending=True).values
    counts = counts[counts > 0].double()
    ranks = torch.arange(1, counts.numel() + 1, dtype=torch.double)
    lengths = line_lengths(ids, corpus.stoi["<eos>"])

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.loglog(ranks, counts / counts.sum(), lw=1.5, label=f"{corpus.name} {split}")
    ax1.loglog(ranks, (1 / ranks) / (1 / ranks).sum(), "--", color="gray", label=r"Zipf: $p \propto 1/r$")
    ax1.set(xlabel="rank r", ylabel="relative frequency", title=f"{corpus.vocab_size:,} types")
    ax1.legend()
    ax2.hist(lengths.numpy(), bins=range(0, int(lengths.max()) + 2), color="tab:orange")
    ax2.axvline(lengths.double().mean().item(), color="k", ls=":", label=f"mean {lengths.double().mean():.1f}")
    ax2.set(xlabel="tokens per line (with <eos>)", ylabel="lines", title=f"{lengths.numel():,} lines")
    ax2.legend()
    fig.suptitle(f"{corpus.name}: {ids.numel():,} {split} tokens")
    fig.tight_layout()
    return fig
