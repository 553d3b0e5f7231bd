"""Training speed of the language model, tokens per second: ``python -m fpcore bench lm-speed``.

One training step of :class:`fpcore.models.RNNLM` (forward over a window of ``--bptt`` tokens from the carried
state, cross-entropy, backward, an SGD step) on random tokens, timed side by side for ``method="bptt"``
(torch.nn's layer: cuDNN on a GPU) and ``method="jacobi"`` with each ``--iters`` k (paper A's parallel
evaluation). Only the model's public API is used. Reports tokens/s and the ratio to BPTT.

Default: PTB small (vocabulary 10,000, 2 x 200 LSTM, batch 20, window 35), k in {2, 4, 8}. Writes the record
tokens_per_second_<device>.json and .png.
"""

from __future__ import annotations

import argparse
from typing import Any

from fpcore.bench.toolkit import int_list, positive

STEM = "tokens_per_second"
HELP = "language model training speed: tokens/s of jacobi-k against BPTT (torch.nn / cuDNN), side by side"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vocab", type=positive(int), default=10000, help="vocabulary size V (default 10000)")
    p.add_argument("--hidden", type=positive(int), default=200, help="H (default 200: PTB small)")
    p.add_argument("--layers", type=positive(int), default=2, help="L (default 2)")
    p.add_argument("--cell", choices=("lstm", "gru", "rnn"), default="lstm")
    p.add_argument("--batch", type=positive(int), default=20, help="B (default 20)")
    p.add_argument("--bptt", type=positive(int), default=35, help="window length (default 35)")
    p.add_argument("--iters", type=int_list, default=[2, 4, 8], help="jacobi k values (default 2,4,8)")
    p.add_argument("--repeat", type=positive(int), default=10, help="timed rounds (default 10)")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from fpcore import config
    from fpcore.bench.toolkit import LoadWatch, time_side_by_side
    from fpcore.models import RNNLM

    device = config.device(None if args.device == "auto" else args.device)
    load = LoadWatch()
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(args.vocab, (args.batch, args.bptt + 1), generator=gen).to(device)
    fns = {}
    for method, k in [("bptt", None)] + [("jacobi", k) for k in args.iters]:
        torch.manual_seed(0)
        model = RNNLM(args.vocab, args.hidden, args.layers, cell=args.cell, method=method, iters=k).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)

        def train_step(model=model, opt=opt):
            logits, _ = model(tokens[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, args.vocab), tokens[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        fns[method if k is None else f"jacobi-{k}"] = train_step
    timed = time_side_by_side(fns, device=device, warmup=2, repeat=args.repeat)
    per_step = args.batch * args.bptt
    t_bptt = timed["bptt"]["median"]
    rows = [
        {
            "method": name,
            "ms": t["median"] * 1e3,
            "tokens_per_s": per_step / t["median"],
            "over_bptt": t_bptt / t["median"],
        }
        for name, t in timed.items()
    ]
    return {
        "config": {
            "device": str(device),
            "vocab": args.vocab,
            "hidden": args.hidden,
            "layers": args.layers,
            "cell": args.cell,
            "batch": args.batch,
            "bptt": args.bptt,
            "iters": args.iters,
            "repeat": args.repeat,
            "threads": torch.get_num_threads(),
            "timed": "one training step: forward, cross-entropy, backward, SGD",
        },
        "rows": rows,
        "targets": {},
        "load_average": load.record(),
    }


def report(payload: dict[str, Any]) -> str:
    from fpcore.bench.toolkit import format_table

    return format_table(payload["rows"], ("method", "ms", "tokens_per_s", "over_bptt"))


def figure(payload: dict[str, Any]):
    """Tokens per second, one bar per method."""
    import matplotlib.pyplot as plt

    from fpcore.bench.toolkit import machine

    c, rows = payload["config"], payload["rows"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([r["method"] for r in rows], [r["tokens_per_s"] for r in rows], color=["C0"] + ["C1"] * (len(rows) - 1))
    ax.set(ylabel="tokens / s (training)")
    ax.set_title(
        f"{c['layers']} x {c['hidden']} {c['cell'].upper()} LM, V={c['vocab']}, B={c['batch']}, window {c['bptt']} | "
        f"{machine(payload)}",
        fontsize=8,
    )
    fig.tight_layout()
    return fig
