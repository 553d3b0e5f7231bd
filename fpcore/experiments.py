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

from fpcore import results as _results
from fpcore.train import TrainConfig, build_model, fit

__all__ = ["KS", "lm_grid", "run_grid", "lm_table", "format_table", "plot_ppl_vs_k"]

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
