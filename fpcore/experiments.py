r"""The language-model experiments of notebooks 06 and 07: the grids, resumable runs, and the tables.

    grid = lm_grid("ptb")                          # bptt, jacobi-k, truncated-k, stable: one schedule
    run_grid(grid, corpus)                         # skips runs already in results/, resumes checkpoints
    mismatch("lm_ptb_small_e4_lstm_bptt_full", corpus)   # the BPTT model evaluated as jacobi-k / truncated-k
    rows = lm_table("ptb")                         # rows read back from results/lm_ptb_*.json
    report("ptb")                                  # tables, claims and plots for a notebook

or, from a shell, the whole plan of a corpus in priority order, resumable (exit 3 when a budget runs out):

    python -m fpcore.experiments ptb --max-minutes 60
    python -m fpcore.experiments wikitext-2 --jobs 8 --max-minutes 9     # eight runs at once, on a GPU

**One schedule per comparison.** Every method of a corpus is trained with the same schedule, and the tables
compare runs of one schedule only. :data:`SHORT` (4 epochs, lr 1 for 3 epochs then halved) is the schedule of
the CPU grid; paper B's tanh-RNN pair, which diverges at lr 1, shares it at lr 0.1 (:data:`SHORT_RNN`);
Zaremba et al.'s 13 epochs (arXiv 1409.2329) is the preset's own. Records of another schedule
(and records of the carried-state model written before it had its own name) are shown apart and labelled.

**Why "newton" is evaluated, not trained.** The exact fixed point is the recurrent network itself: for the
same weights, Newton's trajectory equals the sequential layer's up to the solver's tolerance, and its
implicit gradient is the exact gradient of the same function. Training by "newton" is training the BPTT model
(by a different, slower route); so the BPTT-trained weights are evaluated by Newton's method, which must give
the same perplexity (paper A's fixed-point view, arXiv 2106.02417; DEER, arXiv 2309.12252).

Every record is written by :func:`fpcore.train.fit` or by the evaluations here (with hardware, versions and
commit); nothing here types a figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from fpcore import results as _results
from fpcore.checkpoint import checkpoint_path
from fpcore.models.lm import RNNLM, model_order
from fpcore.train import TrainConfig, build_model, evaluate, find_record, fit, load_trained, run_name

__all__ = [
    "KS",
    "SHORT",
    "SHORT_RNN",
    "schedule_tag",
    "lm_grid",
    "stability_grid",
    "plan",
    "run_grid",
    "run_plan",
    "run_parallel",
    "step_name",
    "mismatch",
    "lm_table",
    "mismatches",
    "format_table",
    "format_mismatch",
    "plot_ppl_vs_k",
    "with_method",
    "token_dependency",
    "smallest_truncation",
    "lm_contraction",
    "analyse_run",
    "analyses",
    "claims",
    "stable_pairs",
    "format_analyses",
    "report",
    "main",
]

KS = (1, 2, 4, 8, 16)
# The one shortened schedule of the CPU grid, for every method of every corpus: lr 1 for 3 epochs, then halved
# (Zaremba's lr and decay factor, the decay three epochs after the start instead of four, four epochs in all).
SHORT: dict[str, Any] = dict(epochs=4, decay_after=3, lr_decay=2.0)
# Paper B's tanh-RNN pair on the same schedule at lr 0.1, for both members: the unprojected tanh RNN diverges
# at lr 1. One epoch over the first 1M PTB-char characters: at lr 1 validation perplexity 1e8 on 50 characters;
# at lr 0.03 / 0.1 / 0.3, 2.60 / 2.24 / 2.50 test bits per character, so 0.1 is the best of the three (measured
# on the 2-core EPYC; our own tuning, not the paper's). tests/test_experiments.py checks the divergence at lr 1
# and the learning at this lr over the first 100,000 characters.
SHORT_RNN: dict[str, Any] = dict(SHORT, lr=0.1)


def schedule_tag(cfg: TrainConfig | dict) -> str:
    """The schedule's part of a run's name: "" for the preset's own schedule, else ``e<epochs>d<decay_after>``
    (plus ``lr<lr>`` and ``t<tokens>`` for another lr or a slice of the training tokens)."""
    from fpcore.train import PRESETS

    c = cfg if isinstance(cfg, dict) else dataclasses.asdict(cfg)
    ref = {f.name: f.default for f in dataclasses.fields(TrainConfig)} | PRESETS.get(c.get("config", ""), {})
    keys = ("epochs", "decay_after", "lr_decay", "lr", "max_train_tokens")
    if all(c.get(key) == ref.get(key) for key in keys):
        return ""
    tag = f"e{c['epochs']}d{c['decay_after']}"
    if c.get("lr_decay") != ref.get("lr_decay"):
        tag += f"x{c['lr_decay']:g}"
    if c.get("lr") != ref.get("lr"):
        tag += f"lr{c['lr']:g}".replace(".", "p")  # no dot in a file name: lr 0.1 is "lr0p1"
    if c.get("max_train_tokens"):
        tag += f"t{c['max_train_tokens']}"
    return tag


def _config(dataset: str, preset: str, schedule: dict, **run) -> TrainConfig:
    cfg = TrainConfig.preset(preset, dataset=dataset, **schedule, **run)
    tag = schedule_tag(cfg)
    name = run_name(
        dataset, f"{preset}_{tag}" if tag else preset, cfg.cell, cfg.method, cfg.iters, cfg.stable
    )  # lm_<dataset>_<preset>[_<schedule>]_<cell>_<method>[_k<k>][_stable]_<profile>
    cfg.record_name, cfg.checkpoint = name, str(checkpoint_path(name))
    return cfg


def lm_grid(
    dataset: str, preset: str = "small", *, ks=KS, schedule: dict | None = None, cell: str = "lstm", **overrides
) -> list[TrainConfig]:
    """The runs of paper A's comparison on one corpus, in the order they should run.

    BPTT (the baseline), jacobi-k and truncated-k for k in ``ks`` (truncated-1 is jacobi-1: with k = 1 both
    read only the current token, so it is trained once), and the stable (projected) BPTT model. The order puts
    the most informative, cheapest runs first: BPTT; jacobi-k for k <= 4 (paper A's question at small and
    moderate k); truncated-k for k <= 4; jacobi-8 and truncated-8; the stable model; then larger k (the most
    costly: a window of T tokens costs about (T + L(k-1)) k steps per layer). ``schedule``: epochs and lr
    decay for every run (default :data:`SHORT`).
    """
    schedule = SHORT if schedule is None else schedule
    ks = sorted(set(ks))
    runs: list[dict[str, Any]] = [dict(method="bptt")]
    runs += [dict(method="jacobi", iters=k) for k in ks if k <= 4]
    runs += [dict(method="truncated", iters=k) for k in ks if 1 < k <= 4]
    runs += [dict(method=m, iters=k) for k in ks if 4 < k <= 8 for m in ("jacobi", "truncated")]
    runs.append(dict(method="bptt", stable=True))
    runs += [dict(method=m, iters=k) for k in ks if k > 8 for m in ("jacobi", "truncated")]
    return [_config(dataset, preset, schedule, cell=cell, **run, **overrides) for run in runs]


def stability_grid(
    dataset: str,
    preset: str = "small",
    *,
    schedule: dict | None = None,
    rnn_schedule: dict | None = None,
    **overrides,
) -> list[TrainConfig]:
    """Paper B's setting (arXiv 1805.10369): stable (projected) vs unstable LSTM and tanh RNN, trained by BPTT.

    Each pair shares one schedule: the LSTMs ``schedule`` (default :data:`SHORT`), the tanh RNNs
    ``rnn_schedule`` (default :data:`SHORT_RNN`, the same at lr 0.1, under which the unprojected one trains).
    """
    schedules = {
        "lstm": SHORT if schedule is None else schedule,
        "rnn": SHORT_RNN if rnn_schedule is None else rnn_schedule,
    }
    return [
        _config(dataset, preset, schedules[cell], cell=cell, stable=stable, **overrides)
        for cell in ("lstm", "rnn")
        for stable in (False, True)
    ]


def plan(dataset: str, grid: str = "lm", preset: str = "small", **kw) -> list[TrainConfig | str]:
    """Everything the full experiments of one corpus run, in order: the training runs of ``grid`` ("lm":
    :func:`lm_grid`; "stability": :func:`stability_grid`), with the evaluation of the BPTT model as every
    jacobi-k / truncated-k and by Newton's method (:func:`mismatch`, an entry ``"mismatch:<run>"``) right after
    the BPTT run: it is evaluation only, a fraction of one training run, and answers paper A's consistency
    question for every k at once."""
    if grid == "stability":
        return list(stability_grid(dataset, preset, **kw))
    if grid != "lm":
        raise ValueError(f"grid must be 'lm' or 'stability', got {grid!r}")
    runs = lm_grid(dataset, preset, **kw)
    return [runs[0], f"mismatch:{runs[0].record_name}", *runs[1:]]


def run_grid(
    grid: list[TrainConfig], corpus, *, skip_done: bool = True, max_seconds: float | None = None
) -> list[dict]:
    """Run every config without a finished record of exactly its configuration (each resumes from its
    checkpoint if one exists); a record of the same name from another configuration does not count.

    ``max_seconds``: a budget for the whole call. The run it runs out in is checkpointed and paused (its
    entry is ``{"finished": False, ...}``) and no further run starts; call again to go on. This is how the
    grid spans several short sittings (a GPU lease of 10-minute commands, say).
    """
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


def _step_done(step: TrainConfig | str) -> bool:
    if isinstance(step, str):
        return bool(_results.find(f"analysis_mismatch_{step.split(':', 1)[1]}.json"))
    return find_record(step) is not None


def run_plan(steps: list[TrainConfig | str], corpus, *, max_seconds: float | None = None, log=print) -> bool:
    """Run the steps of :func:`plan` not done yet, in order, within ``max_seconds`` (None: no limit).

    Returns True when every step is done. A training run the budget runs out in is checkpointed and paused;
    calling again resumes it. An evaluation step runs when its trained model is there (else it waits). A run
    another process is training now (two terminals on one plan, say) is left to it: the plan goes on with the
    next step and, after them, returns False.
    """
    from fpcore.checkpoint import CheckpointBusy

    started = time.perf_counter()
    for step in steps:
        left = None if max_seconds is None else max_seconds - (time.perf_counter() - started)
        if _step_done(step):
            continue
        if isinstance(step, str):
            name = step.split(":", 1)[1]
            if not _results.find(f"{name}.json"):
                log(f"{step}: waiting for {name} to finish")
                continue
            if left is not None and left <= 0:
                return False
            log(f"{step}: evaluating")
            mismatch(name, corpus)
            continue
        if left is not None and left <= 0:
            return False
        log(f"{step.record_name}: training ({step.epochs} epochs)")
        try:
            record = run_grid([step], corpus, max_seconds=left)[-1]
        except CheckpointBusy as busy:
            log(f"{step.record_name}: skipped, left to the process training it ({busy})")
            continue
        if not record.get("finished", True):
            log(f"{step.record_name}: paused at epoch {record['epoch']}, window {record['window']}")
            return False
        log(f"{step.record_name}: valid {record['valid_ppl']:.2f}, test {record['test_ppl']:.2f}")
    return all(_step_done(s) for s in steps)


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


def _identity(name: str, cfg: TrainConfig) -> dict[str, Any]:
    """The fields that say which run an evaluation record is about."""
    return dict(run=name, dataset=cfg.dataset, config=cfg.config, cell=cfg.cell, method=cfg.method, stable=cfg.stable)


def mismatch(
    name: str, corpus, *, ks=KS, split: str = "test", newton_tokens: int = 2_000, device=None
) -> dict[str, Any]:
    """Paper A's consistency point, measured: a trained model evaluated by other methods than it was trained by.

    From run ``name``'s checkpoint: the perplexity on ``split`` evaluated as trained, and as jacobi-k and as
    truncated-k for every k in ``ks`` (same windows and batch as training's evaluation); and on the first
    ``newton_tokens`` tokens, as trained and by the exact fixed point ("newton", "quasi_newton"), which for
    a recurrent model must agree. Written to results/analysis_mismatch_<name>.json.
    """
    from fpcore.results import save_json

    model, cfg = load_trained(name, corpus.vocab_size, device)
    tokens = getattr(corpus, split)

    def ppl(m: RNNLM, toks: torch.Tensor) -> float:
        return evaluate(m, toks, batch_size=cfg.eval_batch_size, bptt=cfg.bptt)

    started = time.perf_counter()
    as_k: dict[str, dict[str, float]] = {"jacobi": {}, "truncated": {}}
    for k in ks:
        for method in as_k:
            as_k[method][str(k)] = ppl(with_method(model, method, k), tokens)
    few = tokens[:newton_tokens]
    fixed_point: dict[str, Any] = {
        "tokens": int(few.numel()),
        "ppl": {"newton": ppl(with_method(model, "newton"), few)},
    }
    fixed_point["ppl"][cfg.method] = ppl(model, few)
    record = dict(
        **_identity(name, cfg),
        iters=cfg.iters,
        layers=cfg.layers,
        schedule=schedule_tag(cfg),
        split=split,
        tokens=int(tokens.numel()),
        as_trained=ppl(model, tokens),
        as_k=as_k,
        fixed_point=fixed_point,
        wall_time_s=time.perf_counter() - started,
    )
    record["path"] = str(save_json(f"analysis_mismatch_{name}", record, device=device))
    return record


# -- reading the records back -----------------------------------------------------------------------------
def _describe_schedule(tc: dict) -> str:
    """ "4 ep: lr 1 x3, then /2" from a record's train_config."""
    e = int(tc.get("epochs") or 0)
    if tc.get("decay_after") is None:  # a record that did not store its schedule
        return f"{e} ep" if e else "?"
    d = int(tc["decay_after"])
    s = f"{e} ep: lr {tc.get('lr', 1):g} x{min(d, e)}" + (f", then /{tc.get('lr_decay', 2):g}" if d < e else "")
    if tc.get("max_train_tokens"):
        s += f", first {tc['max_train_tokens']:,} train tokens"
    return s


def lm_table(dataset: str, *, profile: str = "full", directory: Path | None = None) -> list[dict]:
    """The recorded runs of ``dataset`` in results/ (full profile by default), sorted for display.

    Each row is the record plus ``schedule`` (a description of its epochs and lr decay) and ``order``. A
    "jacobi" record without an ``order`` was written before the finite-order model existed, by the model now
    called "jacobi_carry": it is shown under that name.
    """
    rows = []
    for path in _results.find(f"lm_{dataset.replace('-', '')}_*.json", directory):
        rec = _results.load_json(path)
        if rec.get("profile") != profile or "test_ppl" not in rec:
            continue
        rec = dict(rec, file=path.name)
        if rec["method"] == "jacobi" and "order" not in rec:
            rec["method"] = "jacobi_carry"
        layers = rec.get("layers")  # (every record fit writes has it)
        rec.setdefault("order", model_order(rec["method"], rec.get("iters"), layers) if layers else None)
        rec["schedule"] = _describe_schedule(rec.get("train_config") or {"epochs": rec.get("epochs")})
        rows.append(rec)
    order = {"bptt": 0, "newton": 1, "quasi_newton": 2, "jacobi": 3, "truncated": 4, "jacobi_carry": 5}
    return sorted(
        rows,
        key=lambda r: (
            r["config"],
            r["schedule"],
            r["cell"],
            r["stable"],
            order.get(r["method"], 9),
            r.get("iters") or 0,
        ),
    )


def mismatches(dataset: str, directory: Path | None = None) -> list[dict]:
    """The recorded :func:`mismatch` evaluations of ``dataset``'s runs."""
    pattern = f"analysis_mismatch_lm_{dataset.replace('-', '')}_*.json"
    return [_results.load_json(p) for p in _results.find(pattern, directory)]


def _cell(value: float | None, fmt: str = ".1f") -> str:
    return "" if value is None else format(value, fmt)


def format_table(rows: list[dict]) -> str:
    """A Markdown table of recorded runs (order, schedule, valid/test perplexity, tokens/s, hardware)."""
    char = any(r["dataset"] == "ptb-char" for r in rows)
    lines = [
        "| config | schedule | cell | method | k | order | stable | valid ppl | test ppl | "
        + ("test bpc | " if char else "")
        + "tokens/s | device |",
        "|---|---|---|---|---:|---:|---|---:|---:|" + ("---:|" if char else "") + "---:|---|",
    ]
    for r in rows:
        order = r.get("order")
        lines.append(
            f"| {r['config']} | {r['schedule']} | {r['cell']} | {r['method']} | {r.get('iters') or ''} | "
            f"{order if order else '∞'} | {'yes' if r['stable'] else ''} | {r['valid_ppl']:.1f} | "
            f"{r['test_ppl']:.1f} | " + (f"{_cell(r.get('test_bpc'), '.3f')} | " if char else "") + ""
            f"{r['tokens_per_s']:,.0f} | {r['device']} |"
        )
    return "\n".join(lines)


def format_mismatch(records: list[dict], rows: list[dict] | None = None) -> str:
    """A Markdown table: for each k, the model trained as jacobi-k / truncated-k (from ``rows``, same schedule)
    beside the BPTT-trained model evaluated as jacobi-k / truncated-k (:func:`mismatch`), test perplexity."""
    lines = []
    for m in records:
        trained = {
            (r["method"], r.get("iters")): r["test_ppl"]
            for r in rows or []
            if r["config"] == m["config"]
            and "train_config" in r
            and schedule_tag(r["train_config"]) == m["schedule"]
            and r["cell"] == m["cell"]
            and not r["stable"]
        }
        lines += [
            f"{m['run']} ({m['split']}, {m['tokens']:,} tokens; as trained: {m['as_trained']:.1f})",
            "",
            "| k | trained as jacobi-k | BPTT model as jacobi-k | trained as truncated-k | BPTT model as truncated-k |",
            "|---:|---:|---:|---:|---:|",
        ]
        for k in sorted(m["as_k"]["jacobi"], key=int):
            t_jac = trained.get(("jacobi", int(k)))
            t_tru = trained.get(("truncated", int(k))) or (t_jac if k == "1" else None)
            lines.append(
                f"| {k} | {_cell(t_jac)} | {m['as_k']['jacobi'][k]:.1f} | {_cell(t_tru)} | "
                f"{m['as_k']['truncated'][k]:.1f} |"
            )
        lines.append("")
    return "\n".join(lines).rstrip()


def plot_ppl_vs_k(rows: list[dict], mismatch_record: dict | None = None, ax=None):
    """Test perplexity against k: trained as jacobi-k and truncated-k (solid), the BPTT model evaluated as
    each (dashed, from a :func:`mismatch` record), and the BPTT model as a line. One schedule's rows."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(6.4, 4.0))[1]
    jac = {r["iters"]: r["test_ppl"] for r in rows if r["method"] == "jacobi" and not r["stable"]}
    tru = {r["iters"]: r["test_ppl"] for r in rows if r["method"] == "truncated" and not r["stable"]}
    if 1 in jac:
        tru.setdefault(1, jac[1])  # the same model
    for pts, label, style in ((jac, "trained as jacobi-k", "o-C0"), (tru, "trained as truncated-k", "s-C1")):
        if pts:
            ks = sorted(pts)
            ax.plot(ks, [pts[k] for k in ks], style, label=label)
    if mismatch_record is not None:
        for method, style in (("jacobi", "o--C0"), ("truncated", "s--C1")):
            d = mismatch_record["as_k"][method]
            ks = sorted(map(int, d))
            ax.plot(ks, [d[str(k)] for k in ks], style, mfc="none", label=f"BPTT model evaluated as {method}-k")
    for r in rows:
        if r["method"] == "bptt" and not r["stable"] and r["cell"] == "lstm":
            ax.axhline(r["test_ppl"], color="k", ls=":", label=f"BPTT {r['test_ppl']:.1f}")
    ax.set(xscale="log", yscale="log", xlabel="k (Jacobi iterations per layer / truncation window)")
    ax.set_ylabel("test perplexity")
    shown = set(jac) | set(tru)
    if mismatch_record is not None:
        shown |= set(map(int, mismatch_record["as_k"]["jacobi"]))
    ticks = sorted(shown)
    if ticks:
        ax.set_xticks(ticks, [str(k) for k in ticks])
    ax.legend(fontsize=8)
    return ax


def token_dependency(model: RNNLM, tokens: torch.Tensor) -> torch.Tensor:
    """D [T, T]: D[t, s] = ||d logits_t / d embedding(x_s)|| for one stream ``tokens`` [T] fed as one window
    from the stream start (autograd; eval mode). A model of order n has D[t, s] != 0 exactly for
    t - n < s <= t (fewer at the start); the recurrent network for every s <= t."""
    was_training = model.training
    model.eval()
    captured: list[torch.Tensor] = []

    def keep(module, inputs, out):
        out.retain_grad()
        captured.append(out)

    hook = model.embed.register_forward_hook(keep)
    try:
        logits, _ = model(tokens[None])  # (1, T, V)
    finally:
        hook.remove()
        model.train(was_training)
    rows: list[torch.Tensor] = []
    for t in range(tokens.numel()):
        captured[0].grad = None
        logits[0, t].sum().backward(retain_graph=True)
        grad = captured[0].grad
        assert grad is not None  # the embedding is in the graph of every logit
        rows.append(grad[0].norm(dim=-1))  # (T,)
    return torch.stack(rows)


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
    out: dict[str, Any] = {"recurrent": recurrent, "ppl": {}, "k": None}
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
        **_identity(name, cfg),
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


def claims(rows: list[dict], *, jacobi_within: float = 0.03, stable_within: float = 0.05) -> list[str]:
    """The papers' claims read off recorded runs, one line per (config, schedule); nothing when a run is missing.

    Paper A (arXiv 2106.02417): the smallest k whose model trained as jacobi-k is within ``jacobi_within`` of
    BPTT's test perplexity (and the same for truncated-k), else "none" with the gap at the largest k.
    Paper B (arXiv 1805.10369): the stable (projected) model against the unstable one, relative difference
    in test perplexity (ptb-char: in bits per character).
    """
    lines = []
    for config, schedule in sorted({(r["config"], r.get("schedule", "")) for r in rows}):
        rs = [r for r in rows if r["config"] == config and r.get("schedule", "") == schedule]
        where = f"{config}, {schedule}" if schedule else config
        base = next((r for r in rs if r["method"] == "bptt" and not r["stable"] and r["cell"] == "lstm"), None)
        if base is not None:
            for method in ("jacobi", "truncated"):
                got = {r["iters"]: r["test_ppl"] for r in rs if r["method"] == method and r["cell"] == "lstm"}
                if method == "truncated" and 1 in {r["iters"] for r in rs if r["method"] == "jacobi"}:
                    got.setdefault(1, next(r["test_ppl"] for r in rs if r["method"] == "jacobi" and r["iters"] == 1))
                if not got or (method == "truncated" and set(got) == {1}):
                    continue
                within = sorted(k for k, v in got.items() if v <= base["test_ppl"] * (1 + jacobi_within))
                top = max(got)
                verdict = (
                    f"smallest k = {within[0]}"
                    if within
                    else f"none up to k = {top} (k = {top}: {got[top] / base['test_ppl'] - 1:+.1%})"
                )
                lines.append(
                    f"{where}: paper A: {method}-k within +{jacobi_within:.0%} of BPTT ({base['test_ppl']:.1f}): "
                    f"{verdict} (k tried: {sorted(got)})"
                )
        for pair in stable_pairs(rs):
            f, d = (".3f" if pair["unit"] == "bpc" else ".2f"), pair["gap"]
            verdict = "yes" if abs(d) <= stable_within else "no"
            lines.append(
                f"{where}: paper B: stable {pair['cell']} {pair['stable']:{f}} vs unstable {pair['unstable']:{f}} "
                f"test {pair['unit']} ({d:+.1%}; within {stable_within:.0%}: {verdict})"
            )
    return lines


def stable_pairs(rows: list[dict]) -> list[dict]:
    """Paper B's pairs among recorded runs: each stable (projected) BPTT model beside its unprojected twin of the
    same config, schedule and cell, LSTMs first. ``gap``: the stable model's relative excess in test perplexity,
    or in bits per character where both have them (``unit``: "ppl" or "bpc")."""
    pairs = []
    for st in (r for r in rows if r["method"] == "bptt" and r["stable"]):
        twin = (r for r in rows if r["method"] == "bptt" and not r["stable"])
        un = next((r for r in twin if all(r.get(f) == st.get(f) for f in ("config", "schedule", "cell"))), None)
        if un is None:
            continue
        key, unit = ("test_bpc", "bpc") if "test_bpc" in un and "test_bpc" in st else ("test_ppl", "ppl")
        pairs.append(
            dict(config=st["config"], schedule=st.get("schedule", ""), cell=st["cell"], unit=unit)
            | dict(stable=st[key], unstable=un[key], gap=st[key] / un[key] - 1)
        )
    return sorted(pairs, key=lambda p: (p["cell"] != "lstm", p["cell"]))


def format_analyses(records: list[dict]) -> str:
    """A Markdown table of :func:`analyse_run` records: smallest truncation and contraction per layer."""
    lines = [
        "| run | recurrent ppl (valid tokens) | smallest k within 1% | ppl at that k (or the largest) | "
        "contraction median / p90 / max "
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
        largest = max(t["ppl"], key=int)  # none within 1%: how close the largest window came
        at_k = f"{t['ppl'][str(k)]:.2f}" if k is not None else f"{t['ppl'][largest]:.2f} at k = {largest}"
        lines.append(
            f"| {a['run']} | {t['recurrent_ppl']:.2f}{n} | {k if k is not None else '> ' + largest} | "
            f"{at_k} | {con} | {above} | {fps} |"
        )
    return "\n".join(lines)


# -- notebooks ---------------------------------------------------------------------------------------------
def report(dataset: str, *, directory: Path | None = None, show: bool = True) -> dict[str, Any]:
    """What results/ records for ``dataset``, for notebooks 06 and 07: tables (rendered as tables in Jupyter),
    the papers' claims beside what was measured, and perplexity against k (trained as jacobi-k / truncated-k
    and the BPTT model evaluated as each). Returns the pieces for the notebook's own asserts:
    ``{"rows", "groups": {schedule: rows}, "mismatch": [records], "claims": [lines], "figures": [fig]}``."""
    rows = lm_table(dataset, directory=directory)
    found = mismatches(dataset, directory)
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["schedule"], []).append(r)
    lines = claims(rows)
    figures: list[Any] = []
    out: dict[str, Any] = dict(rows=rows, groups=groups, mismatch=found, claims=lines, figures=figures)
    if not show:
        return out
    from IPython.display import Markdown, display

    if not rows:
        display(Markdown(f"No full-profile **{dataset}** run is recorded in results/ yet."))
        return out
    for schedule, rs in groups.items():
        runs = "1 run" if len(rs) == 1 else f"{len(rs)} runs"
        display(Markdown(f"**{dataset}, schedule {schedule}** ({runs})\n\n" + format_table(rs)))
    if lines:
        display(Markdown("\n".join(f"- {line}" for line in lines)))
    if found:
        display(Markdown(format_mismatch(found, rows)))
    import matplotlib.pyplot as plt

    for schedule, rs in groups.items():
        ks = {r["iters"] for r in rs if r["method"] in ("jacobi", "truncated")}
        if len(ks) < 2:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        m = next((x for x in found if x["run"] in {r["file"][:-5] for r in rs}), None)
        plot_ppl_vs_k(rs, m, ax=ax)
        ax.set_title(f"{dataset} {rs[0]['config']}, {schedule}\n{rs[0]['device']}", fontsize=9)
        figures.append(fig)
        plt.show()
    return out


# -- several runs at once ------------------------------------------------------------------------------------
CHILD_GRACE_SECONDS = 20.0  # a child's start-up (torch, the corpus) and record writing beyond its own budget
MIN_CHILD_SECONDS = 30.0  # no step starts with less than this left


def step_name(step: TrainConfig | str) -> str:
    """A step's name in :func:`plan` (``--list`` and ``--only``): the run's record name, or ``mismatch:<run>``."""
    return step if isinstance(step, str) else str(step.record_name)  # every step of a plan is named


def _ready(step: TrainConfig | str) -> bool:
    """A training run can always start; an evaluation once its model's record is there."""
    return not isinstance(step, str) or bool(_results.find(f"{step.split(':', 1)[1]}.json"))


def _progress(log: Path) -> str:
    """The last progress bar a child printed (``epoch 2/4: 13%``), or ``""``."""
    try:
        with open(log, "rb") as fh:
            fh.seek(max(0, log.stat().st_size - 4096))
            tail = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    bars = [seg.split("|")[0].strip() for seg in tail.replace("\r", "\n").splitlines() if "%|" in seg]
    return bars[-1] if bars else ""


def _outcome(step: TrainConfig | str) -> str:
    if isinstance(step, str):
        return "evaluated"
    record = find_record(step)
    return f"valid {record['valid_ppl']:.2f}, test {record['test_ppl']:.2f}" if record else "finished"


def run_parallel(
    steps: list[TrainConfig | str],
    command: list[str],
    *,
    jobs: int,
    max_seconds: float | None = None,
    log=print,
    poll: float = 0.5,
    heartbeat: float = 60.0,
) -> int:
    """Run the steps of :func:`plan` not done yet, up to ``jobs`` at once, each in its own process
    (``[*command, "--only", name, "--max-minutes", m]``: this module's command line), within ``max_seconds``.

    A small language model is bound by the launch of its many small kernels rather than by the GPU's arithmetic, so
    several can share one GPU (how much sooner a grid ends so is not timed yet). An evaluation step starts once its
    model is trained. Each child checkpoints and pauses itself when its share of the budget runs out
    (``--max-minutes``), so nothing is lost; a Ctrl-C reaches the children too and each checkpoints at its next
    window. The output of each child goes to ``<checkpoint folder>/<step>.log``; every ``heartbeat`` seconds one
    line says where each running step is. Returns 0 when every step is done, 3 when some are left for another
    sitting, 1 when one failed (its log says why; the others go on).
    """
    import os
    import subprocess

    from fpcore.checkpoint import checkpoint_dir
    from fpcore.files import REPO_ROOT

    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    folder = checkpoint_dir()
    folder.mkdir(parents=True, exist_ok=True)
    # this checkout first on the children's path: they run this fpcore, installed or not
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=path)
    env.setdefault("FPCORE_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))  # the cores, shared out
    env.setdefault("TQDM_MININTERVAL", "5")  # a progress line every few seconds in each log, enough to read
    todo = [s for s in steps if not _step_done(s)]
    running: dict[str, tuple[subprocess.Popen, Any, TrainConfig | str]] = {}
    failed: list[str] = []
    started = last_beat = time.monotonic()

    def logfile(name: str) -> Path:
        return folder / f"{name.replace(':', '_')}.log"

    def reap() -> None:
        for name, (proc, fh, step) in list(running.items()):
            if proc.poll() is None:
                continue
            fh.close()
            del running[name]
            if proc.returncode == 0:
                log(f"{name}: {_outcome(step)}")
            elif proc.returncode == 3:
                log(f"{name}: paused (checkpointed; run the same command again to resume)")
            else:
                failed.append(name)
                log(f"{name}: failed (exit {proc.returncode}); its output is in {logfile(name)}")

    try:
        while True:
            reap()
            left = None if max_seconds is None else max_seconds - (time.monotonic() - started)
            while len(running) < jobs and (left is None or left > MIN_CHILD_SECONDS):
                step = next((s for s in todo if _ready(s)), None)
                if step is None:
                    break
                todo.remove(step)
                name = step_name(step)
                argv = [*command, "--only", name]
                if left is not None:
                    argv += ["--max-minutes", f"{max(left - CHILD_GRACE_SECONDS, 1.0) / 60:.3f}"]
                fh = open(logfile(name), "a")
                fh.write(f"$ {' '.join(argv)}\n")
                fh.flush()
                proc = subprocess.Popen(argv, env=env, stdout=fh, stderr=subprocess.STDOUT)
                running[name] = (proc, fh, step)
                log(f"{name}: started ({len(running)} running)")
            if not running:
                break  # all done, out of time, or the rest waits on a model that failed or paused
            if time.monotonic() - last_beat >= heartbeat:
                last_beat = time.monotonic()
                minutes = (last_beat - started) / 60
                log(f"[{minutes:.0f} min] " + "; ".join(f"{n} {_progress(logfile(n))}".strip() for n in running))
            time.sleep(poll)
    except KeyboardInterrupt:  # Ctrl-C reached the children too: each checkpoints at its next window
        for proc, fh, _ in running.values():
            try:
                proc.wait(timeout=120)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                proc.kill()
            fh.close()
        raise KeyboardInterrupt("each running step checkpointed: run the same command again to resume") from None
    if failed:
        return 1
    return 0 if all(_step_done(s) for s in steps) else 3


# -- python -m fpcore.experiments ---------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Run (or resume) the full experiments of one corpus in priority order; exit 3 when the budget runs out."""
    from fpcore import cli

    p = argparse.ArgumentParser(
        prog="python -m fpcore.experiments",
        description="Run the language-model experiments of one corpus (resumable: run the same command again).",
        allow_abbrev=False,  # the children's command line is this one less --jobs, --max-minutes and --only
    )
    p.add_argument("dataset", choices=("ptb", "ptb-char", "wikitext-2"))
    p.add_argument("--grid", choices=("lm", "stability"), default="lm", help="paper A's k grid or paper B's")
    p.add_argument("--ks", default=",".join(map(str, KS)), help="the k of the lm grid, comma-separated")
    p.add_argument("--preset", choices=("small", "medium", "tiny"), default="small", help="model size (default small)")
    p.add_argument(
        "--schedule",
        choices=("short", "preset"),
        default="short",
        help="short (default): SHORT, the CPU grid's 4 epochs, for every run; preset: the preset's own "
        "(Zaremba's 13 epochs for small, 39 for medium); paper B's tanh RNNs at lr 0.1 either way",
    )
    p.add_argument(
        "--max-train-tokens",
        type=cli.positive(int),
        default=None,
        help="train every run on the first N tokens only (a trial of the plan; named into each run)",
    )
    p.add_argument("--jobs", type=cli.positive(int), default=1, help="steps run at once, each in its own process")
    p.add_argument("--only", default=None, help="run this one step of the plan (a name from --list)")
    p.add_argument("--max-minutes", type=float, default=None, help="pause (exit 3) after this long")
    p.add_argument("--list", action="store_true", help="print the plan and what is done, run nothing")
    args = p.parse_args(argv)
    try:
        ks = tuple(sorted({int(k) for k in args.ks.split(",")}))
        if not ks or min(ks) < 1:
            raise ValueError
    except ValueError:
        p.error(f"--ks must be positive integers separated by commas, got {args.ks!r}")
    if args.max_minutes is not None and not (math.isfinite(args.max_minutes) and args.max_minutes > 0):
        p.error(f"--max-minutes must be a positive number, got {args.max_minutes}")
    if args.only is not None and args.jobs > 1:
        p.error("--only runs one step: it takes no --jobs")
    steps = _cli_plan(args, ks)
    if args.only is not None:
        names = [step_name(s) for s in steps]
        if args.only not in names:
            p.error(f"--only {args.only!r} is not a step of this plan; --list shows them")
        steps = [steps[names.index(args.only)]]
    cli.check_environment(p)  # a bad FPCORE_DEVICE or FPCORE_PROFILE: one line, exit 2
    return cli.run_command(p.prog, lambda: _run_main(args, steps, argv))


def _cli_plan(args: argparse.Namespace, ks: tuple[int, ...]) -> list[TrainConfig | str]:
    """The plan the command line asks for: its grid, preset and schedule."""
    if args.schedule == "short":
        schedule, rnn_schedule = SHORT, SHORT_RNN
    else:
        schedule, rnn_schedule = {}, dict(lr=SHORT_RNN["lr"])
    trial = {} if args.max_train_tokens is None else dict(max_train_tokens=args.max_train_tokens)
    if args.grid == "stability":
        return plan(args.dataset, "stability", args.preset, schedule=schedule, rnn_schedule=rnn_schedule, **trial)
    return plan(args.dataset, "lm", args.preset, ks=ks, schedule=schedule, **trial)


def _run_main(args: argparse.Namespace, steps: list[TrainConfig | str], argv: list[str] | None) -> int:
    from fpcore import config

    if config.profile() != "full":
        print("note: FPCORE_PROFILE is not 'full': these runs are named and recorded as quick-profile runs")
    if args.list:
        for s in steps:
            print(f"{'done ' if _step_done(s) else 'to do'}  {step_name(s)}")
        return 0
    budget = None if args.max_minutes is None else 60 * args.max_minutes
    if args.jobs > 1:
        given = sys.argv[1:] if argv is None else list(argv)
        keep = _without(given, ("--jobs", "--max-minutes", "--only"))
        code = run_parallel(
            steps, [sys.executable, "-m", "fpcore.experiments", *keep], jobs=args.jobs, max_seconds=budget
        )
        print({0: "all done", 3: "paused: run the same command again to resume"}.get(code, "a step failed"))
        return code
    if args.only is not None and not _ready(steps[0]):
        raise ValueError(f"{args.only} evaluates a model that is not trained yet: train it first")
    from fpcore.data import load_corpus

    corpus = load_corpus(args.dataset)
    done = run_plan(steps, corpus, max_seconds=budget, log=lambda s: print(s, flush=True))
    print("all done" if done else "paused: run the same command again to resume")
    return 0 if done else 3


def _without(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """``argv`` less each of ``options`` and its value (``--jobs 4`` or ``--jobs=4``)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in options:
            skip = True
        elif not a.startswith(tuple(f"{o}=" for o in options)):
            out.append(a)
    return out


if __name__ == "__main__":
    sys.exit(main())
