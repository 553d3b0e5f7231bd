"""Whole-model speed, parallel vs sequential recurrence (paper C, Table 2): SRU, QRNN(w=2), QRNN(w=10), GILR-LSTM.

Each model is a 2-layer stack of width H with B x T fixed (paper: 2 x 256, B T = 65,536), so every
point does the same arithmetic and only the shape of the recurrence changes. A point times one
forward + backward pass (gradients of all parameters and of x) with the linear recurrences solved by
each provider, everything else (projections, convolutions, gates) identical:

- ``loop``: the step loop (:func:`fpcore.scan.ref.loop`, backend "ref"): T small ops per recurrence,
  the sequential recurrence as plain PyTorch runs it;
- ``numba`` (CPU): the compiled step loop, threads over (batch, feature): a *serial-in-T kernel*,
  like paper C's serial baseline, and the fastest CPU scan;
- ``torch``: the chunked three-phase parallel scan in torch ops;
- ``cupy`` (CUDA): the parallel scan kernels.

The table gives the median time, the speed-up over ``loop`` (``x_loop``) and over the serial kernel
where one ran (``x_serial``), and the max-abs-error of the forward output against the float64 model
with the loop recurrence. Quick (default): H = 64, B T = 4,096, T in {16, 256, 4096}, CPU-sized.
``--full``: H = 256, B T = 65,536, T in {16, 256, 4096, 65536}. Writes the record surrogate_speed_<device>.json
and .png.
"""

from __future__ import annotations

import argparse
from typing import Any

from fpcore.bench.toolkit import comma_list, positive
from fpcore.cli import non_negative

STEM = "surrogate_speed"
HELP = "surrogate RNNs (SRU, QRNN w=2/10, GILR-LSTM), 2 layers, B*T fixed: parallel vs sequential recurrence, fwd+bwd"

MODELS = {
    "sru": ("sru", {}),
    "qrnn2": ("qrnn", {"window": 2}),
    "qrnn10": ("qrnn", {"window": 10}),
    "gilr-lstm": ("gilr-lstm", {}),
}
PROVIDERS = ("loop", "numba", "torch", "cupy")
QUICK: dict[str, Any] = {"hidden": 64, "layers": 2, "tokens": 4096, "seq_lens": [16, 256, 4096], "repeat": 3}
FULL: dict[str, Any] = {"hidden": 256, "layers": 2, "tokens": 65536, "seq_lens": [16, 256, 4096, 65536], "repeat": 5}
_BACKEND = {"loop": "ref", "numba": "numba", "torch": "torch", "cupy": "cupy"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--full", action="store_true", help="paper scale: H = 256, B*T = 65536, T up to 65536")
    p.add_argument(
        "--models",
        type=comma_list(tuple(MODELS)),
        default=list(MODELS),
        help=f"comma list from {', '.join(MODELS)} (default all)",
    )
    p.add_argument(
        "--providers",
        type=comma_list(PROVIDERS),
        default=list(PROVIDERS),
        help=f"comma list from {', '.join(PROVIDERS)} (default: all that run here)",
    )
    p.add_argument("--hidden", type=positive(int), help="width H of both layers (default: by profile)")
    p.add_argument("--tokens", type=positive(int), help="B * T, fixed (default: by profile)")
    p.add_argument(
        "--seq-lens", type=comma_list(None, int), help="T values, each dividing --tokens (default: by profile)"
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--repeat", type=positive(int), help="timed rounds per point (default: by profile)")
    p.add_argument("--warmup", type=non_negative(int), default=1, help="untimed calls per provider first")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every (model, T, provider) point; return the payload (config, rows, targets, load_average)."""
    import copy

    import torch
    from tqdm.auto import tqdm

    from fpcore import config
    from fpcore.bench.toolkit import Deadline, LoadWatch, time_side_by_side
    from fpcore.models import SurrogateStack
    from fpcore.scan import available_backends

    device = config.device(None if args.device == "auto" else args.device)
    prof = FULL if (args.full or config.is_full()) else QUICK
    H = args.hidden or prof["hidden"]
    tokens = args.tokens or prof["tokens"]
    seq_lens = args.seq_lens or prof["seq_lens"]
    repeat = args.repeat or prof["repeat"]
    if H < 1 or tokens < 1 or repeat < 1:
        raise ValueError("--hidden, --tokens and --repeat must be positive")
    bad = [T for T in seq_lens if T < 1 or tokens % T]
    if bad:
        raise ValueError(f"every T must divide B*T = {tokens}; these do not: {bad}")
    dtype = getattr(torch, args.dtype)
    load, deadline, done = LoadWatch(), Deadline(args.max_minutes), 0
    here = set(available_backends(device))
    providers = [p for p in args.providers if _BACKEND[p] in here]
    not_here = [p for p in args.providers if p not in providers]
    rows = []
    points = [(m, T) for m in args.models for T in seq_lens]
    bar = tqdm(points, desc="bench surrogates", disable=args.no_progress, leave=False)
    for name, T in bar:
        if deadline.passed():
            break
        done += 1
        bar.set_postfix_str(f"{name} T={T}")
        kind, kw = MODELS[name]
        B = tokens // T
        torch.manual_seed(0)
        model = SurrogateStack(kind, H, H, prof["layers"], **kw).to(device=device, dtype=dtype)
        gen = torch.Generator(device="cpu").manual_seed(T)
        x = torch.randn(B, T, H, generator=gen).to(device=device, dtype=dtype).requires_grad_()
        gout = torch.randn(B, T, H, generator=gen).to(device=device, dtype=dtype)
        leaves = [x, *model.parameters()]
        # float64 reference: the same weights, the loop recurrence
        ref_model = copy.deepcopy(model).double()
        with torch.no_grad():
            y_ref = ref_model(x.detach().double(), backend="ref")[0]
        del ref_model

        def step(backend, model=model, x=x, leaves=leaves, gout=gout):
            y, _ = model(x, backend=backend)
            return torch.autograd.grad(y, leaves, gout)

        fns = {p: (lambda b=_BACKEND[p]: step(b)) for p in providers}
        errs = {}
        with torch.no_grad():
            for p in providers:
                errs[p] = (model(x, backend=_BACKEND[p])[0].double() - y_ref).abs().max().item()
        timed = time_side_by_side(fns, device=device, warmup=args.warmup, repeat=repeat)
        t_loop = timed["loop"]["median"] if "loop" in timed else None
        serial = "numba" if "numba" in timed else None
        point = {"model": name, "T": T, "B": B, "H": H}
        for p in providers:
            t = timed[p]["median"]
            rows.append(
                {
                    **point,
                    "provider": p,
                    "ms": t * 1e3,
                    "min_ms": timed[p]["min"] * 1e3,
                    "x_loop": (t_loop / t) if t_loop else None,
                    "x_serial": (timed[serial]["median"] / t) if serial else None,
                    "max_abs_err": errs[p],
                }
            )
        for p in not_here:
            rows.append({**point, "provider": p, "skipped": f"backend {_BACKEND[p]!r} not available on {device.type}"})
        del x, gout, y_ref, model
    return {
        "config": {
            "device": str(device),
            "dtype": args.dtype,
            "hidden": H,
            "layers": prof["layers"],
            "tokens_B_times_T": tokens,
            "seq_lens": seq_lens,
            "models": args.models,
            "providers": args.providers,
            "repeat": repeat,
            "threads": torch.get_num_threads(),
            "warmup": args.warmup,
            "timed": "forward + backward (grads of x and all parameters)",
            "error": "max |y - y_float64_loop| of the forward output",
        },
        "rows": rows,
        "targets": targets(rows, device),
        "load_average": load.record(),
        "stopped_early": deadline.note(done, len(points)),
    }


def targets(rows: list[dict[str, Any]], device) -> dict[str, dict[str, Any]]:
    """Paper C's speed claim as a target, read off this run's rows where the point was measured: on CUDA, SRU at
    T = 65,536 at least 9x faster with the parallel scan than with the loop recurrence."""
    import torch

    out = {}
    if torch.device(device).type == "cuda":
        for r in rows:
            if (r["model"], r["T"], r["provider"]) == ("sru", 65536, "cupy") and "ms" in r and r["x_loop"]:
                out["sru_T65536_cupy_over_loop"] = {"value": r["x_loop"], "target": 9.0, "met": r["x_loop"] >= 9.0}
    return out


COLUMNS = ("model", "T", "B", "H", "provider", "ms", "x_loop", "x_serial", "max_abs_err")


def report(payload: dict[str, Any]) -> str:
    """The timed rows as a table, then one line per provider that did not run and why."""
    from fpcore.bench.toolkit import format_table

    lines = [format_table([r for r in payload["rows"] if "ms" in r], COLUMNS)]
    lines += [
        f"not run: {why}"
        for why in sorted({f"{r['provider']}: {r['skipped']}" for r in payload["rows"] if "skipped" in r})
    ]
    return "\n".join(lines)


def figure(payload: dict[str, Any], title: str | None = None):
    """Speed-up over the loop recurrence vs T, one line per (model, provider)."""
    import matplotlib.pyplot as plt

    if title is None:
        from fpcore.bench.toolkit import machine

        c = payload["config"]
        title = (
            f"{c['layers']} layers x {c['hidden']}, B*T = {c['tokens_B_times_T']}, {c['dtype']}, fwd+bwd, "
            f"{machine(payload)}"
        )
    rows = [r for r in payload["rows"] if "ms" in r and r["provider"] != "loop" and r.get("x_loop")]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    models = list(dict.fromkeys(r["model"] for r in rows))
    styles = {"numba": ":", "torch": "--", "cupy": "-"}
    for i, m in enumerate(models):
        for prov in dict.fromkeys(r["provider"] for r in rows):
            pts = sorted((r["T"], r["x_loop"]) for r in rows if (r["model"], r["provider"]) == (m, prov))
            if pts:
                ax.semilogx(*zip(*pts), styles.get(prov, "-"), marker="o", color=f"C{i}", label=f"{m} ({prov})")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set(xlabel="T (B = B*T / T)", ylabel="speed-up over the loop recurrence (fwd+bwd)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig


def recorded() -> list[tuple[str, dict[str, Any]]]:
    """Every recorded speed table: ``[(file name, payload)]`` from the records surrogate_speed_*.json."""
    from fpcore.results import find, load_json

    return [(p.name, load_json(p)) for p in find(f"{STEM}_*.json")]


def summary(payload: dict[str, Any]) -> str:
    """A recorded table, one line per (model, T): time per provider and the speed-up over the loop."""
    from fpcore.bench.toolkit import format_table

    timed = [r for r in payload["rows"] if "ms" in r]
    provs = list(dict.fromkeys(r["provider"] for r in timed))
    out = []
    for key in dict.fromkeys((r["model"], r["T"], r["B"]) for r in timed):
        row = {"model": key[0], "T": key[1], "B": key[2]}
        for r in timed:
            if (r["model"], r["T"], r["B"]) == key:
                row[f"{r['provider']} ms"] = r["ms"]
                if r["provider"] != "loop":
                    row[f"x_loop {r['provider']}"] = r["x_loop"]
        out.append(row)
    cols = ["model", "T", "B", *[f"{p} ms" for p in provs], *[f"x_loop {p}" for p in provs if p != "loop"]]
    return format_table(out, cols)
