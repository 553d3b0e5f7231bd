"""The language-model experiments of notebooks 06 and 07: the grid, resumable runs, and the tables.

    grid = lm_grid("ptb", "small")                 # bptt, jacobi-k, truncated-k, stable, newton
    run_grid(grid)                                 # skips runs already in results/, resumes checkpoints
    table = lm_table("ptb")                        # rows read back from results/lm_ptb_*.json
    plot_ppl_vs_k(table)

Every record is written by :func:`fpcore.train.fit` (with hardware, versions and commit); nothing here
types a figure.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fpcore import results as _results
from fpcore.checkpoint import checkpoint_path
from fpcore.models.lm import RNNLM
from fpcore.train import TrainConfig, build_model, evaluate, find_record, fit, load_trained, run_name

__all__ = [
    "KS",
    "lm_grid",
    "stability_grid",
    "run_grid",
    "lm_table",
    "format_table",
    "plot_ppl_vs_k",
    "with_method",
    "smallest_truncation",
    "lm_contraction",
    "analyse_run",
    "analyses",
    "run_experiments",
    "claims",
    "format_analyses",
]

KS = (1, 2, 4, 8, 16)


def lm_grid(dataset: str, preset: str, *, ks=KS, cell: str = "lstm", **overrides) -> list[TrainConfig]:
    """The runs of one (dataset, preset): bptt, jacobi and truncated for each k, stable bptt, newton."""
    runs = [dict(method="bptt"), dict(method="bptt", stable=True), dict(method="newton")]
    runs += [dict(method=m, iters=k) for m in ("jacobi", "truncated") for k in ks]
    grid = []
    for run in runs:
        name = run_name(dataset, preset, cell, run["method"], run.get("iters"), run.get("stable", False))
        grid.append(
            TrainConfig.preset(
                preset,
                dataset=dataset,
                cell=cell,
                record_name=name,
                checkpoint=str(checkpoint_path(name)),
                **run,
                **overrides,
            )
        )
    return grid


def stability_grid(dataset: str, preset: str = "small", **overrides) -> list[TrainConfig]:
    """Paper B's setting: stable (projected) vs unstable LSTM and tanh RNN, trained by BPTT."""
    grid = []
    for cell in ("lstm", "rnn"):
        for stable in (False, True):
            name = run_name(dataset, preset, cell, "bptt", None, stable)
            grid.append(
                TrainConfig.preset(
                    preset,
                    dataset=dataset,
                    cell=cell,
                    stable=stable,
                    record_name=name,
                    checkpoint=str(checkpoint_path(name)),
                    **overrides,
                )
            )
    return grid


def run_grid(
    grid: list[TrainConfig], corpus, *, skip_done: bool = True, max_seconds: float | None = None
) -> list[dict]:
    """Run every config without a finished record of exactly its configuration (each resumes from its
    checkpoint if one exists); a record of the same name from another configuration does not count.

    ``max_seconds``: a budget for the whole call. The run it runs out in is checkpointed and paused (its
    entry is ``{"finished": False, ...}``) and no further run starts; call again to go on. This is how the
    grid spans several short sittings (a GPU lease of 10-minute commands, say).
    """
    import time

    started = time.perf_counter()
    records = []
    for cfg in grid:
        done = find_record(cfg) if skip_done else None
        if done is not None:
            records.append(done)
            continue
        left = None if max_seconds is None else max_seconds - (time.perf_counter() - started)
        if left is not None and left <= 0:
            break
        record = fit(build_model(cfg, corpus.vocab_size), corpus, cfg, max_seconds=left)
        records.append(record)
        if not record.get("finished", True):
            break
    return records


def lm_table(dataset: str, *, profile: str = "full", directory: Path | None = None) -> list[dict]:
    """The recorded runs of ``dataset`` in results/ (full profile by default), sorted for display."""
    rows = []
    for path in _results.find(f"lm_{dataset.replace('-', '')}_*.json", directory):
        rec = _results.load_json(path)
        if rec.get("profile") == profile and "test_ppl" in rec:
            rows.append(rec)
    order = {"bptt": 0, "newton": 1, "quasi_newton": 2, "jacobi": 3, "truncated": 4}
    return sorted(rows, key=lambda r: (r["config"], order.get(r["method"], 9), r.get("iters") or 0, r["stable"]))


def format_table(rows: list[dict]) -> str:
    """A Markdown table of recorded runs (valid/test perplexity, tokens/s, hardware)."""
    lines = [
        "| config | method | k | stable | valid ppl | test ppl | tokens/s | device |",
        "|---|---|---:|---|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['method']} | {r.get('iters') or ''} | {'yes' if r['stable'] else ''} | "
            f"{r['valid_ppl']:.1f} | {r['test_ppl']:.1f} | {r['tokens_per_s']:,.0f} | {r['device']} |"
        )
    return "\n".join(lines)


def plot_ppl_vs_k(rows: list[dict], ax=None):
    """Test perplexity against k for jacobi and truncated, with the BPTT baseline as a line."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(5.5, 3.6))[1]
    for method, marker in (("jacobi", "o"), ("truncated", "s")):
        pts = sorted((r["iters"], r["test_ppl"]) for r in rows if r["method"] == method)
        if pts:
            ax.plot(*zip(*pts), marker=marker, label=method)
    for r in rows:
        if r["method"] == "bptt" and not r["stable"]:
            ax.axhline(r["test_ppl"], color="k", ls="--", label=f"BPTT {r['test_ppl']:.1f}")
    ax.set(xscale="log", xlabel="k (iterations / window)", ylabel="test perplexity")
    ax.set_xticks(KS, [str(k) for k in KS])
    ax.legend()
    return ax


def with_method(model: RNNLM, method: str, iters: int | None = None) -> RNNLM:
    """A copy of ``model`` (same weights) whose recurrent layers are evaluated by another method."""
    twin = RNNLM(
        model.vocab,
        model.hidden,
        model.layers,
        cell=model.cell_kind,
        dropout=model.drop.p,
        tie=model.decoder.weight is model.embed.weight,
        method=method,
        iters=iters,
        tol=model.tol,
    )
    twin.load_state_dict(model.state_dict())
    return twin.to(next(model.parameters()).device)


def smallest_truncation(
    model: RNNLM,
    tokens: torch.Tensor,
    *,
    rel: float = 0.01,
    ks=(1, 2, 4, 8, 16, 32, 64),
    batch_size: int = 10,
    bptt: int = 35,
) -> dict:
    """Paper B's question for a trained model: the smallest window k whose truncated model is within ``rel``.

    Evaluates the same weights recurrently and as the k-truncated feed-forward model for each k in
    ``ks`` (in order, stopping at the first within ``rel`` of the recurrent perplexity). Returns
    ``{"recurrent": ppl, "ppl": {k: ppl}, "k": smallest k or None}``.
    """
    recurrent = evaluate(with_method(model, "bptt"), tokens, batch_size=batch_size, bptt=bptt)
    out = {"recurrent": recurrent, "ppl": {}, "k": None}
    for k in ks:
        out["ppl"][k] = evaluate(with_method(model, "truncated", k), tokens, batch_size=batch_size, bptt=bptt)
        if out["ppl"][k] <= recurrent * (1 + rel):
            out["k"] = k
            break
    return out


@torch.no_grad()
def lm_contraction(model: RNNLM, tokens: torch.Tensor, *, k: int = 1, windows: int = 8, length: int = 64) -> list:
    """Data-dependent stability of each recurrent layer of a trained LM on real text (paper B).

    Runs the model recurrently over ``windows`` windows of ``length`` tokens and returns, per layer,
    :func:`fpcore.stability.local_contraction` (the norms of ds_t/ds_{t-k} along the trajectory, [B, T-k+1]).
    """
    from fpcore import cells, stability

    was_training = model.training
    model.eval()
    x = tokens[: windows * length].view(windows, length).to(next(model.parameters()).device)
    h = model.embed(x)  # (B, T, H)
    norms = []
    for rnn in model.rnns:
        cell = cells.from_torch(rnn)
        norms.append(stability.local_contraction(cell, h, k=k))
        h = rnn(h)[0]  # the next layer's input, eval mode: no dropout
    model.train(was_training)
    return norms


def analyse_run(
    name: str,
    corpus,
    *,
    eval_tokens: int = 20_000,
    ks=(1, 2, 4, 8, 16, 32, 64),
    rel: float = 0.01,
    fixed_point_tokens: int = 1_000,
    device=None,
) -> dict:
    """Paper B's questions for one finished run, from its checkpoint; written to results/analysis_<name>.json.

    ``truncation``: :func:`smallest_truncation` on the first ``eval_tokens`` validation tokens (the smallest
    window k whose truncated model is within ``rel`` of the recurrent perplexity); ``contraction``: per
    layer, quantiles of the data-dependent one-step contraction ||ds_t/ds_{t-1}|| along trajectories on real
    text (:func:`lm_contraction`), and the fraction of steps above 1; ``fixed_point``: the perplexity of the
    same weights on the first ``fixed_point_tokens`` validation tokens evaluated by the sequential layer and
    by the exact fixed point solved in parallel ("newton", "quasi_newton"), which must agree (paper A).
    """
    from fpcore.results import save_json

    model, cfg = load_trained(name, corpus.vocab_size, device)
    tokens = corpus.valid[:eval_tokens]
    trunc = smallest_truncation(model, tokens, rel=rel, ks=ks, bptt=cfg.bptt)
    layers = []
    for norms in lm_contraction(model, corpus.valid):
        v = norms.flatten().float()
        q = torch.quantile(v, torch.tensor([0.5, 0.9, 0.99]))
        layers.append(
            dict(
                median=float(q[0]),
                p90=float(q[1]),
                p99=float(q[2]),
                max=float(v.max()),
                frac_above_1=float((v > 1).float().mean()),
            )
        )
    few = corpus.valid[:fixed_point_tokens]
    fixed_point = {m: evaluate(with_method(model, m), few, bptt=cfg.bptt) for m in ("bptt", "newton", "quasi_newton")}
    record = dict(
        run=name,
        dataset=cfg.dataset,
        config=cfg.config,
        cell=cfg.cell,
        method=cfg.method,
        stable=cfg.stable,
        eval_tokens=int(tokens.numel()),
        rel=rel,
        fixed_point=dict(tokens=int(few.numel()), ppl=fixed_point),
        truncation={
            "recurrent_ppl": trunc["recurrent"],
            "ppl": {str(k): v for k, v in trunc["ppl"].items()},
            "smallest_k": trunc["k"],
        },
        contraction=layers,
    )
    record["path"] = str(save_json(f"analysis_{name}", record, device=device))
    return record


def analyses(dataset: str, directory: Path | None = None) -> list[dict]:
    """The recorded analyses (:func:`analyse_run`) of ``dataset``'s runs."""
    return [_results.load_json(p) for p in _results.find(f"analysis_lm_{dataset.replace('-', '')}_*.json", directory)]


def run_experiments(
    dataset: str, *, stability_dataset: str, presets=("small", "medium"), max_seconds: float | None = None
) -> bool:
    """Notebooks 06/07's full profile: the grids of ``dataset`` for each preset, paper B's stability grid
    on ``stability_dataset``, and :func:`analyse_run` for every finished stability run and BPTT baseline
    that has no analysis yet. Within ``max_seconds`` (None: no limit); returns whether everything is done,
    so a notebook re-run in the next sitting goes on from the checkpoints."""
    import time

    from fpcore.data import load_corpus

    started = time.perf_counter()
    main = load_corpus(dataset)
    stab = main if stability_dataset == dataset else load_corpus(stability_dataset)
    plans = [(lm_grid(dataset, p), main) for p in presets] + [(stability_grid(stability_dataset), stab)]
    for grid, corpus in plans:
        left = None if max_seconds is None else max_seconds - (time.perf_counter() - started)
        records = run_grid(grid, corpus, max_seconds=left)
        if len(records) < len(grid) or not all(r.get("finished", True) for r in records):
            return False
        for cfg in grid:
            if cfg.method == "bptt" and not (_results.results_dir() / f"analysis_{cfg.record_name}.json").exists():
                analyse_run(cfg.record_name, corpus)
    return True


def claims(rows: list[dict], *, jacobi_within: float = 0.03, stable_within: float = 0.05) -> list[str]:
    """The issue's two claims, read off recorded runs (one line per config; nothing when a run is missing).

    Paper A: the smallest k whose jacobi-k model is within ``jacobi_within`` of BPTT's test perplexity.
    Paper B: the stable (projected) model against the unstable one, relative difference in test perplexity.
    """
    lines = []
    for config in sorted({r["config"] for r in rows}):
        rs = [r for r in rows if r["config"] == config]
        base = next((r for r in rs if r["method"] == "bptt" and not r["stable"] and r["cell"] == "lstm"), None)
        if base is None:
            continue
        ks = sorted(
            r["iters"]
            for r in rs
            if r["method"] == "jacobi"
            and r["cell"] == "lstm"
            and r["test_ppl"] <= base["test_ppl"] * (1 + jacobi_within)
        )
        tried = sorted(r["iters"] for r in rs if r["method"] == "jacobi" and r["cell"] == "lstm")
        if tried:
            verdict = f"smallest k = {ks[0]}" if ks else "none"
            lines.append(
                f"{config}: paper A: jacobi-k within +{jacobi_within:.0%} of BPTT "
                f"({base['test_ppl']:.1f}): {verdict} (k tried: {tried})"
            )
        for cell in ("lstm", "rnn"):
            un = next((r for r in rs if r["method"] == "bptt" and r["cell"] == cell and not r["stable"]), None)
            st = next((r for r in rs if r["method"] == "bptt" and r["cell"] == cell and r["stable"]), None)
            if un and st:
                d = st["test_ppl"] / un["test_ppl"] - 1
                lines.append(
                    f"{config}: paper B: stable {cell} {st['test_ppl']:.2f} vs unstable {un['test_ppl']:.2f} "
                    f"({d:+.1%}; within {stable_within:.0%}: {'yes' if abs(d) <= stable_within else 'no'})"
                )
    return lines


def format_analyses(records: list[dict]) -> str:
    """A Markdown table of :func:`analyse_run` records: smallest truncation and contraction per layer."""
    lines = [
        "| run | recurrent ppl (valid tokens) | smallest k within 1% | ppl at k | contraction median / p90 / max "
        "(per layer) | steps > 1 | newton / quasi-Newton / loop ppl (valid tokens) |",
        "|---|---:|---:|---:|---|---|---|",
    ]
    for a in sorted(records, key=lambda a: a["run"]):
        t = a["truncation"]
        k = t["smallest_k"]
        con = "; ".join(f"{c['median']:.2f} / {c['p90']:.2f} / {c['max']:.2f}" for c in a["contraction"])
        above = "; ".join(f"{c['frac_above_1']:.1%}" for c in a["contraction"])
        fp = a.get("fixed_point", {}).get("ppl")
        fps = (
            (f"{fp['newton']:.3f} / {fp['quasi_newton']:.3f} / {fp['bptt']:.3f} ({a['fixed_point']['tokens']:,})")
            if fp
            else ""
        )
        n = f" ({a['eval_tokens']:,})" if "eval_tokens" in a else ""
        lines.append(
            f"| {a['run']} | {t['recurrent_ppl']:.2f}{n} | {k if k is not None else '> ' + max(t['ppl'], key=int)} | "
            f"{t['ppl'][str(k)] if k is not None else float('nan'):.2f} | {con} | {above} | {fps} |"
        )
    return "\n".join(lines)
