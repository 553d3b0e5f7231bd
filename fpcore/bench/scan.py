"""Benchmark the linear scan h_t = a_t * h_{t-1} + b_t: providers x T x (B, D) x forward/backward.

For every point it reports the median time, effective GB/s (forward moves 3 N elements: read a, b, write
h; backward 5 N: read a, h, dL/dh, write dL/da, dL/db; forward+backward 8 N), the ratio to a memory-bound
operation over the same bytes timed in the same rounds, and the max-abs-error against a float64
computation beside every timing. The memory-bound operation allocates its output the way the scan does:
on CPU ``torch.addcmul(b, a, b, out=...)`` into a fresh tensor from the CPU scan's own allocator
(:func:`fpcore.scan.numba_backend.empty`); on CUDA a device-to-device copy of 1.5 N elements into a fresh
tensor. Providers that cannot run say why in the table.

Quick (default): a CPU-sized sweep, a couple of minutes. ``--full``: the GPU sweep (T = 2^10..2^20 at
(8, 256), (1, 1536), (8, 1536), (16, 64)). Writes the record scan_<device>.json and .png.
"""

from __future__ import annotations

import argparse
from typing import Any

from fpcore.bench.toolkit import comma_list, positive
from fpcore.cli import non_negative

STEM = "scan"
HELP = "linear scan: providers x T x (B, D), fwd/bwd, GB/s, ratio to a memory-bound op, error vs float64"

PROVIDERS = ("loop", "torch", "numba", "cupy", "accelerated_scan_warp", "accelerated_scan_scalar", "assoc_scan")
MODES = ("fwd", "bwd", "fwdbwd")
LOOP_MAX_ELEMENTS = 1 << 20  # the Python loop's backward is thousands of small ops: keep it to small points
BYTES_PER_ELEMENT = {"fwd": 3, "bwd": 5, "fwdbwd": 8}  # tensors of N elements read or written, at minimum
QUICK: dict[str, Any] = {
    "shapes": [(8, 256), (1, 16)],
    "log2_t": (10, 20),
    "max_elements": 1 << 24,
    "repeat": 5,
    "max_seconds": 1.0,
    "loop_max_t": 1024,
}
FULL: dict[str, Any] = {
    "shapes": [(8, 256), (1, 1536), (8, 1536), (16, 64)],
    "log2_t": (10, 20),
    "max_elements": 1 << 30,
    "repeat": 10,
    "max_seconds": 2.0,
    "loop_max_t": 4096,
}
# the targets: (B, T, D) and the ratio each must stay within
CPU_TARGET = ((8, 4096, 256), 1.2)  # linear_scan's CPU path (numba) over one elementwise pass
GPU_TARGET = ((8, 65536, 1536), 1.25)  # the CUDA scan (cupy) over a device-to-device copy
GPU_BACKWARD_OVER_FORWARD = 1.5


def _shapes(text: str) -> list[tuple[int, int]]:
    try:
        out = [tuple(int(v) for v in part.lower().split("x")) for part in text.split(",") if part]
    except ValueError:
        out = []
    if not out or any(len(s) != 2 or min(s) < 1 for s in out):
        raise argparse.ArgumentTypeError(f"shapes must look like 8x256,1x16 (B x D), got {text!r}")
    return out  # type: ignore[return-value]


def _log2_range(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--log2-t must look like 10:20, got {text!r}") from None
    if not 0 <= lo <= hi <= 26:
        raise argparse.ArgumentTypeError(f"--log2-t needs 0 <= lo <= hi <= 26, got {text!r}")
    return lo, hi


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--full", action="store_true", help="the full GPU sweep (bigger shapes, T up to 2^20)")
    p.add_argument("--shapes", type=_shapes, help="(B, D) pairs, e.g. 8x256,1x16 (default: by profile)")
    p.add_argument("--log2-t", type=_log2_range, help="T range as log2 exponents, e.g. 10:20")
    p.add_argument("--max-elements", type=positive(int), help="skip points with B*T*D above this (default: by profile)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"])
    p.add_argument(
        "--providers",
        type=comma_list(PROVIDERS),
        default=list(PROVIDERS),
        help=f"comma list from {', '.join(PROVIDERS)} (default: all that run)",
    )
    p.add_argument("--modes", type=comma_list(MODES), default=list(MODES), help="comma list of fwd,bwd,fwdbwd")
    p.add_argument(
        "--loop-max-t", type=positive(int), help="run the Python loop only up to this T (default: by profile)"
    )
    p.add_argument(
        "--max-seconds",
        type=positive(float),
        help="drop a provider for larger T of a shape once one call takes longer (default: by profile)",
    )
    p.add_argument("--repeat", type=positive(int), help="timed rounds per point (default: by profile)")
    p.add_argument("--warmup", type=non_negative(int), default=1, help="untimed calls per provider first")


# --- providers: each returns fwd(a, b) -> h on batch-first [B, T, D] tensors, or raises _Skip(reason)


class _Skip(Exception):
    pass


def _provider(name: str, device, T: int, args):
    import torch

    from fpcore.scan import available_backends, linear_scan, ref

    cuda = torch.device(device).type == "cuda"
    if name == "loop":
        if T > args.loop_max_t or T * args.loop_width > LOOP_MAX_ELEMENTS:
            raise _Skip(f"loop only up to T={args.loop_max_t} and B*T*D <= {LOOP_MAX_ELEMENTS}")
        return lambda a, b: ref.loop(a, b)
    if name in ("torch", "numba", "cupy"):
        if name not in available_backends(device):
            raise _Skip(f"backend {name!r} not available on {torch.device(device).type}")
        return lambda a, b: linear_scan(a, b, backend=name)
    if name.startswith("accelerated_scan"):
        kind = name.rsplit("_", 1)[1]
        if not cuda:
            raise _Skip("accelerated-scan runs on CUDA only")
        try:
            mod = __import__(f"accelerated_scan.{kind}", fromlist=["scan"])
        except Exception as err:  # not installed, or Triton/CUDA missing
            raise _Skip(f"accelerated_scan.{kind} unavailable: {type(err).__name__}") from None
        if kind == "warp" and (T & (T - 1) or not 32 <= T <= 65536):
            raise _Skip("its CUDA kernel needs power-of-two T in [32, 65536]")

        def acc_scan(a, b):  # its layout is (B, C, T): the one transpose, outside the kernel's own work
            return mod.scan(a.transpose(1, 2).contiguous(), b.transpose(1, 2).contiguous()).transpose(1, 2)  # (B, T, D)

        return acc_scan
    if name == "assoc_scan":
        try:
            from torch._higher_order_ops.associative_scan import associative_scan
        except ImportError:
            raise _Skip("torch has no associative_scan") from None

        def op(x, y):
            return ref.combine(x, y)

        def assoc(a, b):
            return associative_scan(op, (a, b), dim=1, combine_mode="generic")[1]

        return assoc
    raise _Skip(f"unknown provider {name}")


def _membound(a, b, device):
    """The memory-bound baseline over the forward's bytes (3 N elements moved), allocating its output the
    way the scan of that device does."""
    import torch

    if torch.device(device).type == "cuda":
        n = a.numel() * 3 // 2
        src = torch.empty(n, dtype=a.dtype, device=a.device)
        return "copy", lambda: src.clone()
    try:
        from fpcore.scan.numba_backend import empty
    except ImportError:  # no Numba: the scan falls back to torch ops, which allocate with torch.empty
        empty = lambda *shape, dtype: torch.empty(*shape, dtype=dtype)  # noqa: E731
    return "addcmul", lambda: torch.addcmul(b, a, b, out=empty(*a.shape, dtype=a.dtype))


def _err(x, ref) -> float:
    return (x.double() - ref).abs().max().item()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run the sweep described by ``args`` (points in the order of --shapes, then T) and return the payload
    (config, rows, targets, load_average, stopped_early)."""
    import torch
    from tqdm.auto import tqdm

    from fpcore import config
    from fpcore.bench.toolkit import Deadline, LoadWatch, time_side_by_side
    from fpcore.scan import linear_scan

    device = config.device(None if args.device == "auto" else args.device)
    prof = FULL if (args.full or config.is_full()) else QUICK
    shapes = args.shapes or prof["shapes"]
    lo, hi = args.log2_t or prof["log2_t"]
    max_el = args.max_elements or prof["max_elements"]
    repeat = args.repeat or prof["repeat"]
    args.loop_max_t = args.loop_max_t or prof["loop_max_t"]
    args.max_seconds = args.max_seconds or prof["max_seconds"]
    dtype = getattr(torch, args.dtype)
    points = [(B, 1 << k, D) for (B, D) in shapes for k in range(lo, hi + 1) if B * (1 << k) * D <= max_el]
    if not points:
        raise ValueError(f"no (B, T, D) point has B*T*D <= {max_el}; raise --max-elements")
    rows: list[dict[str, Any]] = []
    dropped: dict[tuple, dict[str, str]] = {}
    load, deadline, done = LoadWatch(), Deadline(args.max_minutes), 0
    gen = torch.Generator(device="cpu").manual_seed(0)
    bar = tqdm(points, desc="bench scan", disable=args.no_progress, leave=False)
    for B, T, D in bar:
        if deadline.passed():
            break
        done += 1
        bar.set_postfix_str(f"B={B} T={T} D={D}")
        # gates in (0.9, 1): long memory, where rounding error has room to grow
        a64 = (0.9 + 0.1 * torch.rand(B, T, D, generator=gen, dtype=torch.float64)).to(device)
        b64 = torch.randn(B, T, D, generator=gen, dtype=torch.float64).to(device)
        g64 = torch.randn(B, T, D, generator=gen, dtype=torch.float64).to(device)
        a, b, gout = a64.to(dtype), b64.to(dtype), g64.to(dtype)
        # float64 reference on the inputs as rounded to dtype
        ra, rb = a.double().requires_grad_(), b.double().requires_grad_()
        href = linear_scan(ra, rb)
        da_ref, db_ref = torch.autograd.grad(href, (ra, rb), g64)
        href = href.detach()
        del a64, b64, g64, ra, rb
        base_name, base_fn = _membound(a, b, device)
        N = B * T * D
        esize = a.element_size()
        for mode in args.modes:
            fns, errs, skips = {}, {}, {}
            args.loop_width = B * D
            for name in args.providers:
                if name in dropped.get((B, D, mode), {}):
                    skips[name] = dropped[(B, D, mode)][name]
                    continue
                try:
                    fwd = _provider(name, device, T, args)
                    fns[name], errs[name] = _mode_fn(fwd, mode, a, b, gout, href, da_ref, db_ref)
                except _Skip as why:
                    skips[name] = str(why)
                except Exception as err:  # a provider that breaks on this input: say so, keep going
                    skips[name] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:80]}"
            timed = time_side_by_side({base_name: base_fn, **fns}, device=device, warmup=args.warmup, repeat=repeat)
            scale = BYTES_PER_ELEMENT[mode] / 3  # the baseline moves the forward's 3 N elements
            t_base, t_base_min = timed[base_name]["median"] * scale, timed[base_name]["min"] * scale
            point = {"B": B, "T": T, "D": D, "mode": mode}
            rows.append(_row(point, f"membound:{base_name}", t_base, t_base_min, None, N * esize * 3 * scale, 1.0, 1.0))
            for name in fns:
                t, t_min = timed[name]["median"], timed[name]["min"]
                nbytes = N * esize * BYTES_PER_ELEMENT[mode]
                rows.append(_row(point, name, t, t_min, errs[name], nbytes, t / t_base, t_min / t_base_min))
                if t > args.max_seconds:
                    dropped.setdefault((B, D, mode), {})[name] = f"{mode} dropped after {t:.1f} s at T={T}"
            for name, reason in skips.items():
                rows.append({**point, "provider": name, "skipped": reason})
        del href, da_ref, db_ref, a, b, gout
    threads = torch.get_num_threads()
    return {
        "config": {
            "dtype": args.dtype,
            "device": str(device),
            "shapes": shapes,
            "log2_t": [lo, hi],
            "max_elements": max_el,
            "repeat": repeat,
            "warmup": args.warmup,
            "providers": args.providers,
            "modes": args.modes,
            "gates": "U(0.9, 1)",
            "inputs": "N(0, 1)",
            "bytes_per_element": BYTES_PER_ELEMENT,
            "baseline": "CPU: addcmul into a fresh output from the CPU scan's allocator; CUDA: a fresh copy",
            "threads": threads,
        },
        "rows": rows,
        "targets": targets(rows, device, threads),
        "load_average": load.record(),
        "stopped_early": deadline.note(done, len(points)),
    }


def _mode_fn(fwd, mode, a, b, gout, href, da_ref, db_ref):
    """(callable to time, max-abs-error vs float64) for one provider and mode."""
    import torch

    if mode == "fwd":
        with torch.no_grad():
            err = _err(fwd(a, b), href)
        return (lambda: fwd(a, b)), err
    a_, b_ = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    h = fwd(a_, b_)
    da, db = torch.autograd.grad(h, (a_, b_), gout, retain_graph=True)
    err = max(_err(da, da_ref), _err(db, db_ref))
    if mode == "bwd":
        return (lambda: torch.autograd.grad(h, (a_, b_), gout, retain_graph=True)), err
    return (lambda: torch.autograd.grad(fwd(a_, b_), (a_, b_), gout)), err


def _row(point, provider, seconds, min_seconds, err, nbytes, ratio, ratio_min) -> dict[str, Any]:
    from fpcore.bench.toolkit import gbps

    return {
        **point,
        "provider": provider,
        "ms": seconds * 1e3,
        "min_ms": min_seconds * 1e3,
        "GB/s": gbps(nbytes, seconds),
        "x_membound": ratio,
        "x_membound_min": ratio_min,
        "max_abs_err": err,
    }


def targets(rows: list[dict[str, Any]], device, threads: int = 1) -> dict[str, dict[str, Any]]:
    """The targets, read off the rows measured in this run (absent points stay absent).

    CPU: ``linear_scan``'s CPU path (numba) forward at (8, 4096, 256) within 1.2x one elementwise pass over the
    same bytes, both allocating their outputs the same way (keyed by the thread count). CUDA: the CUDA scan's
    forward at (8, 65536, 1536) within 1.25x a device-to-device copy, faster than accelerated-scan in the same
    run, and its backward within 1.5x its forward.
    """
    import torch

    def find(point, mode, provider):
        for r in rows:
            if (r["B"], r["T"], r["D"], r["mode"], r["provider"]) == (*point, mode, provider) and "ms" in r:
                return r
        return None

    out = {}
    if torch.device(device).type == "cpu":
        (B, T, D), goal = CPU_TARGET
        r = find((B, T, D), "fwd", "numba")
        if r:
            out[f"cpu_{threads}thread_fwd_{B}x{T}x{D}_linear_scan_over_addcmul"] = {
                "value": r["x_membound"],
                "target": goal,
                "met": r["x_membound"] <= goal,
                "value_from_min_times": r["x_membound_min"],
            }
        return out
    (B, T, D), goal = GPU_TARGET
    r = find((B, T, D), "fwd", "cupy")
    if r is None:
        return out
    out[f"gpu_fwd_{B}x{T}x{D}_cupy_over_copy"] = {
        "value": r["x_membound"],
        "target": goal,
        "met": r["x_membound"] <= goal,
    }
    rb = find((B, T, D), "bwd", "cupy")
    if rb:
        ratio = rb["ms"] / r["ms"]
        out[f"gpu_bwd_over_fwd_{B}x{T}x{D}_cupy"] = {
            "value": ratio,
            "target": GPU_BACKWARD_OVER_FORWARD,
            "met": ratio <= GPU_BACKWARD_OVER_FORWARD,
        }
    for acc in ("accelerated_scan_warp", "accelerated_scan_scalar"):
        ra = find((B, T, D), "fwd", acc)
        if ra:
            out[f"gpu_fwd_cupy_over_{acc}"] = {"value": r["ms"] / ra["ms"], "target": "< 1", "met": r["ms"] < ra["ms"]}
    return out


COLUMNS = ("B", "T", "D", "mode", "provider", "ms", "GB/s", "x_membound", "x_membound_min", "max_abs_err")


def report(payload: dict[str, Any]) -> str:
    """The timed rows as a table, then one line per provider that did not run and why."""
    from fpcore.bench.toolkit import format_table

    lines = [format_table([r for r in payload["rows"] if "ms" in r], COLUMNS)]
    skipped: dict[tuple[str, str], list[int]] = {}
    for r in payload["rows"]:
        if "skipped" in r:
            skipped.setdefault((r["provider"], r["skipped"]), []).append(r["T"])
    lines += [f"not run: {prov} ({why}) at T = {min(Ts)}..{max(Ts)}" for (prov, why), Ts in skipped.items()]
    return "\n".join(lines)


def figure(payload: dict[str, Any], title: str | None = None):
    """Log-log time vs T, one panel per (B, D); solid forward, dashed forward+backward, black the baseline."""
    import matplotlib.pyplot as plt

    from fpcore.bench.toolkit import machine

    c = payload["config"]
    if title is None:
        title = (
            f"linear scan, {c['dtype']} | {machine(payload)}\n(solid: forward, dashed: forward+backward, black: "
            f"memory-bound op; median of {c['repeat']} interleaved rounds)"
        )
    rows = [r for r in payload["rows"] if "ms" in r]
    shapes = sorted({(r["B"], r["D"]) for r in rows})
    fig, axes = plt.subplots(1, max(1, len(shapes)), figsize=(5.2 * max(1, len(shapes)), 4.2), squeeze=False)
    providers = sorted({r["provider"] for r in rows if not r["provider"].startswith("membound")})
    colors = {p: f"C{i}" for i, p in enumerate(providers)}
    for ax, (B, D) in zip(axes[0], shapes):
        for mode, style in (("fwd", "-"), ("fwdbwd", "--")):
            sel = [r for r in rows if (r["B"], r["D"], r["mode"]) == (B, D, mode)]
            for prov in providers + ["membound"]:
                pts = sorted((r["T"], r["ms"]) for r in sel if r["provider"].split(":")[0] == prov)
                if pts:
                    ax.loglog(*zip(*pts), style, marker=".", color=colors.get(prov, "black"), label=f"{prov} {mode}")
        ax.set(title=f"B={B}, D={D}", xlabel="T", ylabel="time (ms)")
        ax.grid(True, which="both", alpha=0.3)
    seen: dict[str, Any] = {}
    for ax in axes[0]:  # one legend for all panels (a provider may run in one panel only)
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    axes[0][-1].legend(seen.values(), seen.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
