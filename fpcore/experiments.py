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
from fpcore.models.lm import RNNLM
from fpcore.train import TrainConfig, build_model, evaluate, fit

__all__ = ["KS", "lm_grid", "stability_grid", "run_grid", "lm_table", "format_table", "plot_ppl_vs_k", "with_method",
           "smallest_truncation", "lm_contraction"]

KS = (1, 2, 4, 8, 16)


def lm_grid(dataset: str, preset: str, *, ks=KS, cell: str = "lstm", **overrides) -> list[TrainConfig]:
    """The runs of one (dataset, preset): bptt, jacobi and truncated for each k, stable bptt, newton."""
    runs = [dict(method="bptt"), dict(method="bptt", stable=True), dict(method="newton")]
    runs += [dict(method=m, iters=k) for m in ("jacobi", "truncated") for k in ks]
    grid = []
    for run in runs:
        name = "_".join(filter(None, ["lm", dataset.replace("-", ""), preset, cell, run["method"],
                                      f"k{run['iters']}" if "iters" in run else "",
                                      "stable" if run.get("stable") else ""]))
        grid.append(TrainConfig.preset(preset, dataset=dataset, cell=cell, record_name=name,
                                       checkpoint=str(Path("checkpoints") / f"{name}.pt"), **run, **overrides))
    return grid


def stability_grid(dataset: str, preset: str = "small", **overrides) -> list[TrainConfig]:
    """Paper B's setting: stable (projected) vs unstable LSTM and tanh RNN, trained by BPTT."""
    grid = []
    for cell in ("lstm", "rnn"):
        for stable in (False, True):
            name = "_".join(filter(None, ["lm", dataset.replace("-", ""), preset, cell, "bptt",
                                          "stable" if stable else ""]))
            grid.append(TrainConfig.preset(preset, dataset=dataset, cell=cell, stable=stable, record_name=name,
                                           checkpoint=str(Path("checkpoints") / f"{name}.pt"), **overrides))
    return grid


def run_grid(grid: list[TrainConfig], corpus, *, skip_done: bool = True) -> list[dict]:
    """Run every config not yet in results/ (each resumes from its checkpoint if one exists)."""
    records = []
    for cfg in grid:
        done = _results.results_dir() / f"{cfg.record_name}.json"
        if skip_done and done.exists():
            records.append(_results.load_json(done))
            continue
        records.append(fit(build_model(cfg, corpus.vocab_size), corpus, cfg))
    return records


def lm_table(dataset: str, *, profile: str = "full", directory: Path | None = None) -> list[dict]:
    """The recorded runs of ``dataset`` in results/ (full profile by default), sorted for display."""
    rows = []
    for path in _results.find(f"lm_{dataset.replace('-', '')}_*.json", directory):
        rec = _results.load_json(path)
        if rec.get("profile") == profile:
            rows.append(rec)
    order = {"bptt": 0, "newton": 1, "quasi_newton": 2, "jacobi": 3, "truncated": 4}
    return sorted(rows, key=lambda r: (r["config"], order.get(r["method"], 9), r.get("iters") or 0, r["stable"]))


def format_table(rows: list[dict]) -> str:
    """A Markdown table of recorded runs (valid/test perplexity, tokens/s, hardware)."""
    lines = ["| config | method | k | stable | valid ppl | test ppl | tokens/s | device |",
             "|---|---|---:|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['method']} | {r.get('iters') or ''} | {'yes' if r['stable'] else ''} | "
                     f"{r['valid_ppl']:.1f} | {r['test_ppl']:.1f} | {r['tokens_per_s']:,.0f} | {r['device']} |")
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
    twin = RNNLM(model.vocab, model.hidden, model.layers, cell=model.cell_kind, dropout=model.drop.p,
                 tie=model.decoder.weight is model.embed.weight, method=method, iters=iters, tol=model.tol)
    twin.load_state_dict(model.state_dict())
    return twin.to(next(model.parameters()).device)


def smallest_truncation(model: RNNLM, tokens: torch.Tensor, *, rel: float = 0.01, ks=(1, 2, 4, 8, 16, 32, 64),
                        batch_size: int = 10, bptt: int = 35) -> dict:
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
