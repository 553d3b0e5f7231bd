r"""Notebook 08's experiment: synthetic PTB lattices rescored by a finite-order model and by a BPTT LSTM.

    plan = LatticePlan.for_profile()                  # quick: a few lattices, tiny models; full: see below
    models = train_models(plan, corpus)              # resumable; a finished run is loaded from its checkpoint
    lattices, refs = lattice_set(plan, corpus)       # seeded SLF files under build/lattices/, read back
    result = evaluate(lattices, refs, exact=..., recurrent=..., nbest_n=100)
    record(plan, result, models)                     # results/lattice_<name>.json (+ PNG)

Methods compared on the same lattices (word error rate against the reference sentence):

- ``lattice 1-best``: the lattice's own scores (its first-pass bigram);
- ``oracle``: the lattice path closest to the reference (the floor any rescoring can reach);
- ``finite-order exact``: :func:`fpcore.lattice.rescore_exact` with the finite-order model;
- ``finite-order N-best``: the same model on the N-best list only (its misses against ``exact`` are N-best
  search errors, measurable only because the exact answer is known);
- ``BPTT N-best``: the LSTM on the N-best list (N = 100 by default);
- ``BPTT merged``: the LSTM on the lattice with n-gram history merging (:func:`fpcore.lattice.rescore_merged`).

For the lattice methods the lattice-vs-sentence LM score discrepancy is measured on the ``check_paths`` best
paths of each rescored lattice.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fpcore import config as _config
from fpcore import results as _results
from fpcore.lattice.core import Lattice, edit_distance, nbest, oracle, word_errors
from fpcore.lattice.rescore import discrepancy, hypothesis, rescore_exact, rescore_merged, rescore_nbest
from fpcore.lattice.scorers import FiniteOrderLM, NGramLM, RecurrentLM, Vocabulary
from fpcore.lattice.slf import read_slf
from fpcore.lattice.synth import NoiseModel, iter_pairs, sentences, write_lattice_set

__all__ = [
    "LatticePlan",
    "train_models",
    "lattice_set",
    "method_names",
    "evaluate_one",
    "evaluate",
    "record",
    "summary_rows",
    "paired_bootstrap",
    "describe",
    "growth",
    "figure",
    "run",
]


@dataclass
class LatticePlan:
    """What one run of the experiment uses. ``models``: which -> TrainConfig overrides (on the "small" preset)
    for the finite-order model (``"finite"``) and the recurrent one (``"bptt"``). ``recorded``: the models'
    runs are checkpointed and recorded in results/ and the evaluation is cached under build/ (the full
    profile); otherwise the models are trained afresh in memory and nothing is written outside build/."""

    name: str
    sentences: int | None  # None: the whole test set
    models: dict[str, dict[str, Any]]
    nbest_n: int = 100
    merge_history: int = 2
    check_paths: int = 10
    noise: NoiseModel = field(default_factory=NoiseModel)
    seed: int = 0
    first_pass_tokens: int | None = None  # train tokens the first-pass bigram is counted on (None: all)
    recorded: bool = False
    # the scorers' arithmetic: float64 where exactness is checked to 1e-5 (float32 sums over long sentences come
    # close to that), float32 for the LSTM, whose gap is orders of magnitude larger anyway
    exact_dtype: str = "float64"
    recurrent_dtype: str = "float32"

    @classmethod
    def for_profile(cls, profile: str | None = None, *, sentences: int | None = None) -> LatticePlan:
        """quick: 12 lattices, two 1x64 LSTMs trained one epoch on 60k tokens (about a minute on 2 cores);
        full: the PTB test set (all 3,761 sentences, or the first ``sentences``), two 1x200 LSTMs trained 2
        epochs on all of PTB (lr 1 then 0.5): truncated-4 (order 4) and BPTT."""
        profile = profile or _config.profile()
        if profile == "quick":
            tiny = dict(hidden=64, layers=1, epochs=1, max_train_tokens=60_000, max_eval_tokens=10_000, batch_size=16)
            return cls(
                name="quick",
                sentences=sentences or 12,
                models={"finite": dict(tiny, method="truncated", iters=3), "bptt": dict(tiny, method="bptt")},
                first_pass_tokens=60_000,  # the text the models are trained on
            )
        small = dict(hidden=200, layers=1, epochs=2, decay_after=1)
        return cls(
            name="ptb_test" if sentences is None else f"ptb_test_first{sentences}",
            sentences=sentences,
            models={"finite": dict(small, method="truncated", iters=4), "bptt": dict(small, method="bptt")},
            recorded=True,
        )

    def run_name(self, which: str) -> str:
        """The model's run (results/<run>.json, checkpoints/<run>.pt); the same for every test-set size."""
        m = self.models[which]
        k = f"_k{m['iters']}" if m.get("iters") else ""
        tag = "ptb_test" if self.recorded else self.name
        return f"lattice_lm_ptb_{m['layers']}x{m['hidden']}_{m['method']}{k}_e{m['epochs']}_{tag}"


def _checkpoint_path(name: str) -> Path:
    from fpcore.checkpoint import checkpoint_path

    return checkpoint_path(name)


def train_models(
    plan: LatticePlan, corpus, *, max_seconds: float | None = None, progress: bool = True
) -> dict[str, tuple[Any, dict]] | None:
    """Train (or resume, or load) the plan's models; returns {which: (model, record)}, or None when
    ``max_seconds`` ran out first (recorded plans checkpoint: call again to go on).

    Recorded plans: each run is :func:`fpcore.train.fit` with a checkpoint under checkpoints/ and a record
    results/<run name>.json, and a run whose record exists is loaded from its checkpoint instead of retrained.
    Otherwise both models are trained in memory (quick profile).
    """
    from fpcore.experiments import run_grid
    from fpcore.train import TrainConfig, build_model, fit, load_trained

    cfgs = []
    for which in ("finite", "bptt"):
        name = plan.run_name(which)
        cfgs.append(
            TrainConfig.preset(
                "small",
                dataset="ptb",
                record_name=name if plan.recorded else None,
                checkpoint=str(_checkpoint_path(name)) if plan.recorded else None,
                progress=progress,
                **plan.models[which],
            )
        )
    if not plan.recorded:
        out = {}
        for which, cfg in zip(("finite", "bptt"), cfgs):
            model = build_model(cfg, corpus.vocab_size)
            out[which] = (model.eval(), fit(model, corpus, cfg))
        return out
    records = run_grid(cfgs, corpus, max_seconds=max_seconds)
    if len(records) < len(cfgs) or not all(r.get("finished", True) for r in records):
        return None
    out = {}
    for which, cfg, rec in zip(("finite", "bptt"), cfgs, records):
        assert cfg.record_name  # (recorded plans name every run)
        try:
            model, _ = load_trained(cfg.record_name, corpus.vocab_size)
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"{err}; its record {cfg.record_name}.json exists: delete the record to retrain"
            ) from None
        out[which] = (model, rec)
    return out


def lattice_set(
    plan: LatticePlan, corpus, *, directory: str | os.PathLike | None = None, progress: bool = False
) -> tuple[list[Lattice], list[list[str]], Path]:
    """Write the plan's synthetic test-set lattices as SLF (if not there yet) and read them back, as a real
    lattice set would be read. Returns (lattices, reference word lists, directory)."""
    vocab = Vocabulary(corpus.vocab)
    if directory is None:
        # the lattice of test sentence i depends on (seed, i) only: every test-set size shares one directory
        tag = "ptb_test" if plan.recorded else plan.name
        directory = _results.REPO_ROOT / "build" / "lattices" / f"{tag}_seed{plan.seed}"
    directory = Path(directory)
    refs = sentences(corpus.test.tolist(), vocab.eos)
    refs = refs[: plan.sentences] if plan.sentences else refs
    words = [[vocab.words[t] for t in s] for s in refs]
    if not (directory / "references.txt").exists() or len(
        (directory / "references.txt").read_text().splitlines()
    ) != len(words):
        train = corpus.train[: plan.first_pass_tokens] if plan.first_pass_tokens else corpus.train
        train_list = train.tolist()
        first_pass = NGramLM(vocab, [train_list], n=plan.noise.first_pass_n)
        write_lattice_set(
            words,
            directory,
            first_pass=first_pass,
            train_counts=Counter(train_list),
            noise=plan.noise,
            seed=plan.seed,
            progress=progress,
        )
    lattices, references = [], []
    for _, path, ref in iter_pairs(directory):
        lattices.append(read_slf(path))
        references.append(ref)
    return lattices, references, directory


def _stats(values: Sequence[float]) -> dict[str, float]:
    a = torch.tensor(values, dtype=torch.float64).abs()
    if not a.numel():
        return {"max_abs": 0.0, "mean_abs": 0.0, "paths": 0, "share_above_1e-5": 0.0}
    return {
        "max_abs": float(a.max()),
        "mean_abs": float(a.mean()),
        "paths": int(a.numel()),
        "share_above_1e-5": float((a > 1e-5).double().mean()),
    }


def method_names(nbest_n: int, merge_history: int, recurrent: bool = True) -> list[str]:
    names = ["lattice 1-best", "oracle", "finite-order exact", f"finite-order N-best (N={nbest_n})"]
    return names + (
        [f"BPTT N-best (N={nbest_n})", f"BPTT merged ({merge_history}-token histories)"] if recurrent else []
    )


def evaluate_one(
    lat: Lattice,
    ref: Sequence[str],
    *,
    exact: FiniteOrderLM,
    recurrent: RecurrentLM | None = None,
    nbest_n: int = 100,
    merge_history: int = 2,
    check_paths: int = 10,
) -> dict[str, Any]:
    """Every method on one lattice: {"hyp": {method: words}, "gap": {method: [lattice - sentence LM score of
    the check_paths best paths]}, "seconds": {method: s}, "sizes": {...}, "search_error": bool}."""
    vocab = exact.vocab
    names = method_names(nbest_n, merge_history, recurrent is not None)
    row: dict[str, Any] = {"hyp": {}, "gap": {}, "seconds": dict.fromkeys(names, 0.0)}

    def timed(name: str, fn):
        tick = time.perf_counter()
        out = fn()
        row["seconds"][name] += time.perf_counter() - tick
        return out

    row["hyp"][names[0]] = hypothesis(timed(names[0], lat.best_path), vocab)
    row["hyp"][names[1]] = hypothesis(timed(names[1], lambda: oracle(lat, ref, skip=vocab.is_marker))[1], vocab)
    res = timed(names[2], lambda: rescore_exact(lat, exact))
    best = res.best()
    row["hyp"][names[2]] = hypothesis(best, vocab)
    row["gap"][names[2]] = discrepancy(res.lattice, exact, nbest(res.lattice, check_paths)).tolist()
    listed = timed(names[3], lambda: rescore_nbest(lat, exact, nbest_n))
    row["hyp"][names[3]] = hypothesis(listed[0].path, vocab)
    # the same model's best total over the whole lattice vs over the N-best list: a lower N-best winner is an
    # N-best search error (rounding aside), measurable only because the exact answer is known
    row["search_error"] = best.total - listed[0].total > 1e-6 * max(1.0, abs(best.total))
    row["totals"] = {"exact": best.total, "nbest": listed[0].total}
    row["sizes"] = {
        "nodes": len(lat.nodes),
        "arcs": len(lat.arcs),
        "exact_nodes": len(res.lattice.nodes),
        "exact_arcs": len(res.lattice.arcs),
    }
    if recurrent is not None:
        listed = timed(names[4], lambda: rescore_nbest(lat, recurrent, nbest_n))
        row["hyp"][names[4]] = hypothesis(listed[0].path, vocab)
        merged = timed(names[5], lambda: rescore_merged(lat, recurrent, history=merge_history))
        row["hyp"][names[5]] = hypothesis(merged.best(), vocab)
        row["gap"][names[5]] = discrepancy(merged.lattice, recurrent, nbest(merged.lattice, check_paths)).tolist()
        row["sizes"].update(merged_nodes=len(merged.lattice.nodes), merged_arcs=len(merged.lattice.arcs))
    return row


def evaluate(
    lattices: Sequence[Lattice],
    refs: Sequence[Sequence[str]],
    *,
    exact: FiniteOrderLM,
    recurrent: RecurrentLM | None = None,
    nbest_n: int = 100,
    merge_history: int = 2,
    check_paths: int = 10,
    cache: str | os.PathLike | None = None,
    fingerprint: str = "",
    max_seconds: float | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """:func:`evaluate_one` on every lattice, summed: {"methods": {name: {"errors", "words", "wer", "seconds",
    "discrepancy"?}}, "sizes", "nbest_search_errors", "lattices", "reference_words", "complete"}.

    ``cache``: a JSON-lines file of finished lattices (one row each, keyed by utterance); a rerun with the same
    ``fingerprint`` skips them, so a long evaluation interrupted (or stopped by ``max_seconds``) loses nothing.
    """
    from tqdm.auto import tqdm

    rows: dict[str, dict[str, Any]] = {}
    path = Path(cache) if cache is not None else None
    if path is not None and path.exists():
        lines = path.read_text().splitlines()
        if lines and json.loads(lines[0]).get("fingerprint") == fingerprint:
            for line in lines[1:]:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by an interruption
                    continue
                rows[row["utt"]] = row
    if path is not None and not rows:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"fingerprint": fingerprint}) + "\n")
    started = time.perf_counter()
    complete = True
    todo = [(i, lat, ref) for i, (lat, ref) in enumerate(zip(lattices, refs)) if _utt(lat, i) not in rows]
    for i, lat, ref in tqdm(todo, desc="rescoring", disable=not progress):
        if max_seconds is not None and time.perf_counter() - started > max_seconds:
            complete = False
            break
        row = evaluate_one(
            lat,
            ref,
            exact=exact,
            recurrent=recurrent,
            nbest_n=nbest_n,
            merge_history=merge_history,
            check_paths=check_paths,
        )
        row["utt"] = _utt(lat, i)
        rows[row["utt"]] = row
        if path is not None:
            with path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
    done = [(rows[_utt(lat, i)], ref) for i, (lat, ref) in enumerate(zip(lattices, refs)) if _utt(lat, i) in rows]
    names = method_names(nbest_n, merge_history, recurrent is not None)
    methods: dict[str, dict[str, Any]] = {}
    for name in names:
        errors, words = word_errors([r for _, r in done], [row["hyp"][name] for row, _ in done])
        methods[name] = {
            "errors": errors,
            "words": words,
            "wer": errors / max(words, 1),
            "seconds": sum(row["seconds"][name] for row, _ in done),
        }
        if any(name in row["gap"] for row, _ in done):
            methods[name]["discrepancy"] = _stats([g for row, _ in done for g in row["gap"].get(name, [])])
    sizes: Counter = Counter()
    for row, _ in done:
        sizes.update(row["sizes"])
    # per lattice, what the WER intervals resample (paired_bootstrap)
    per_lattice = {
        "words": [len(r) for _, r in done],
        "errors": {name: [edit_distance(r, row["hyp"][name]) for row, r in done] for name in names},
    }
    return {
        "lattices": len(done),
        "complete": complete and len(done) == len(lattices),
        "reference_words": sum(len(r) for _, r in done),
        "methods": methods,
        "sizes": dict(sizes),
        "nbest_search_errors": sum(row["search_error"] for row, _ in done),
        "per_lattice": per_lattice,
        # per lattice: the finite-order model's best total over the whole lattice and over its N-best list
        "best_totals": {
            "exact": [row["totals"]["exact"] for row, _ in done],
            "nbest": [row["totals"]["nbest"] for row, _ in done],
        },
    }


def _utt(lat: Lattice, i: int) -> str:
    return lat.utterance or f"#{i}"


def paired_bootstrap(
    result: dict[str, Any], method: str, baseline: str, *, samples: int = 2000, level: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """WER(method) - WER(baseline) on the same lattices, with a percentile interval from resampling whole
    lattices with replacement (the paired bootstrap of Koehn, EMNLP 2004; Bisani & Ney, ICASSP 2004):
    {"diff", "low", "high"} in WER points (fractions), and ``p_not_better``: the share of resamples in which
    ``method`` is not better than ``baseline``. Needs ``result["per_lattice"]`` (:func:`evaluate` keeps it)."""
    per = result.get("per_lattice")
    if not per:
        raise ValueError("the result has no per-lattice errors (records written before they were kept)")
    words = torch.tensor(per["words"], dtype=torch.float64)
    delta = torch.tensor(per["errors"][method], dtype=torch.float64) - torch.tensor(
        per["errors"][baseline], dtype=torch.float64
    )
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randint(len(words), (samples, len(words)), generator=gen)
    diffs = delta[pick].sum(1) / words[pick].sum(1).clamp(min=1)
    tail = (1 - level) / 2
    return {
        "diff": float(delta.sum() / words.sum().clamp(min=1)),
        "low": float(diffs.quantile(tail)),
        "high": float(diffs.quantile(1 - tail)),
        "p_not_better": float((diffs >= 0).double().mean()),
    }


def summary_rows(result: dict[str, Any], *, baseline: str = "finite-order exact") -> list[dict[str, Any]]:
    """One row per method: WER (%), errors / words, seconds, max abs(lattice - sentence LM score) where measured,
    and, when the result keeps per-lattice errors, the WER difference from ``baseline`` with its 95% paired
    bootstrap interval (percentage points)."""
    rows = []
    for name, m in result["methods"].items():
        d = m.get("discrepancy")
        row = {
            "method": name,
            "WER %": round(100 * m["wer"], 2),
            "errors / words": f"{m['errors']} / {m['words']}",
            "seconds": round(m["seconds"], 2),
            "max gap (lattice - sentence)": "" if d is None else f"{d['max_abs']:.2e}",
        }
        if result.get("per_lattice") and baseline in result["methods"]:
            b = paired_bootstrap(result, name, baseline)
            row[f"WER - {baseline} (95% interval)"] = (
                "" if name == baseline else f"{100 * b['diff']:+.2f} [{100 * b['low']:+.2f}, {100 * b['high']:+.2f}]"
            )
        rows.append(row)
    return rows


def record(
    plan: LatticePlan, result: dict[str, Any], models: dict[str, tuple[Any, dict]] | None = None, **extra: Any
) -> Path:
    """Write results/lattice_<plan.name>.json: the plan, the models' records, the per-method figures and the
    targets (exact discrepancy <= 1e-5; the WERs reported side by side)."""
    methods = result["methods"]
    exact = methods["finite-order exact"]
    bptt_nbest = f"BPTT N-best (N={plan.nbest_n})"
    targets: dict[str, dict[str, Any]] = {
        "lattice_exact_finite_order_max_abs_discrepancy": {
            "value": exact["discrepancy"]["max_abs"],
            "target": "<= 1e-5",
            "met": exact["discrepancy"]["max_abs"] <= 1e-5,
            "paths": exact["discrepancy"]["paths"],
        }
    }
    if bptt_nbest in methods:
        wers = {k: methods[k]["wer"] for k in ("finite-order exact", bptt_nbest, "lattice 1-best", "oracle")}
        targets["lattice_wer_exact_finite_order"] = {
            "value": exact["wer"],
            "target": "reported beside BPTT N-best, lattice 1-best and oracle",
            "met": bool(result.get("complete")) and all(math.isfinite(v) for v in wers.values()),
            "wer": wers,
            "lattices": result["lattices"],
        }
        if result.get("per_lattice"):  # each method against the exact rescoring, with its 95% interval
            targets["lattice_wer_exact_finite_order"]["against_exact"] = {
                k: paired_bootstrap(result, k, "finite-order exact") for k in methods if k != "finite-order exact"
            }
    payload = {
        "plan": {**dataclasses.asdict(plan), "noise": dataclasses.asdict(plan.noise)},
        "models": {
            k: {kk: v[1].get(kk) for kk in ("path", "valid_ppl", "test_ppl", "method", "iters")}
            for k, v in (models or {}).items()
        },
        **result,
        "targets": targets,
        **extra,
    }
    path = _results.save_json(f"lattice_{plan.name}", payload)
    fig = figure(payload, title=f"{describe(plan, models)}; {result['lattices']:,} lattices; {_results.device_name()}")
    fig.savefig(path.with_suffix(".png"), dpi=120, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def describe(plan: LatticePlan, models: dict[str, tuple[Any, dict]] | None = None) -> str:
    """One line naming the two models (and their test perplexity when known)."""
    parts = []
    for which in ("finite", "bptt"):
        m = plan.models[which]
        k = f"-{m['iters']}" if m.get("iters") else ""
        ppl = (models or {}).get(which, (None, {}))[1].get("test_ppl")
        parts.append(f"{m['method']}{k} {m['layers']}x{m['hidden']}" + (f" (test ppl {ppl:.0f})" if ppl else ""))
    return " vs ".join(parts)


def growth(lattices: Sequence[Lattice], vocab: Vocabulary, orders: Sequence[int] = (1, 2, 3, 4, 5)) -> dict[str, Any]:
    """Total nodes and arcs of ``lattices`` expanded to each order (histories of LM tokens, as rescoring does)."""
    from fpcore.lattice.core import expand
    from fpcore.lattice.rescore import with_sentence_end

    nodes, arcs = [], []
    for order in orders:
        sized = [expand(with_sentence_end(lat, vocab), order, token=vocab.token).lattice for lat in lattices]
        nodes.append(sum(len(x.nodes) for x in sized))
        arcs.append(sum(len(x.arcs) for x in sized))
    return {"orders": list(orders), "nodes": nodes, "arcs": arcs, "lattices": len(lattices)}


def figure(payload: dict[str, Any], *, title: str = ""):
    """WER by method (left) and lattice size against expansion order (right, when recorded)."""
    import matplotlib.pyplot as plt

    from fpcore.lattice.plot import plot_growth

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    names = list(payload["methods"])
    wers = [100 * payload["methods"][n]["wer"] for n in names]
    ax.barh(
        names[::-1], wers[::-1], color=["C0" if "BPTT" in n else "C2" if "finite" in n else "0.6" for n in names][::-1]
    )
    for y, w in enumerate(wers[::-1]):
        ax.text(w, y, f" {w:.2f}", va="center", fontsize=8)
    ax.set_xlabel("word error rate (%)")
    g = payload.get("growth")
    if g:
        plot_growth(g["orders"], g["nodes"], g["arcs"], bx, title=f"expansion of {g['lattices']} lattices")
    else:
        bx.set_axis_off()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def run(
    plan: LatticePlan,
    *,
    max_seconds: float | None = None,
    progress: bool = True,
    growth_lattices: int = 100,
) -> dict[str, Any] | None:
    """The whole experiment for a recorded plan: train or load the models, write and read the lattices,
    evaluate (cached per lattice), record results/lattice_<name>.json and its PNG. Within ``max_seconds``
    (None: no limit); returns the record's payload, or None when the budget ran out first (call again: it
    goes on from the checkpoints and the evaluation cache)."""
    from fpcore.data import load_corpus
    from fpcore.lattice.scorers import TorchLM

    started = time.perf_counter()

    def left() -> float | None:
        return None if max_seconds is None else max_seconds - (time.perf_counter() - started)

    corpus = load_corpus("ptb")
    models = train_models(plan, corpus, max_seconds=left(), progress=progress)
    if models is None:
        return None
    vocab = Vocabulary(corpus.vocab)
    lattices, refs, directory = lattice_set(plan, corpus, progress=progress)
    exact = TorchLM(models["finite"][0], vocab, dtype=getattr(torch, plan.exact_dtype))
    recurrent = TorchLM(models["bptt"][0], vocab, dtype=getattr(torch, plan.recurrent_dtype))
    # what a lattice's outcome depends on (not the test-set size: a larger run reuses a smaller one's lattices)
    same = {k: v for k, v in dataclasses.asdict(plan).items() if k not in ("name", "sentences")}
    fingerprint = json.dumps({"models": [plan.run_name(w) for w in ("finite", "bptt")], "plan": same}, default=str)
    result = evaluate(
        lattices,
        refs,
        exact=exact,
        recurrent=recurrent,
        nbest_n=plan.nbest_n,
        merge_history=plan.merge_history,
        check_paths=plan.check_paths,
        cache=directory / "evaluation.jsonl",
        fingerprint=fingerprint,
        max_seconds=left(),
        progress=progress,
    )
    if not result["complete"]:
        return None
    sized = growth(lattices[:growth_lattices], vocab, orders=(1, 2, 3, 4, 5, 6))
    path = record(plan, result, models, growth=sized, lattice_directory=str(directory))
    return _results.load_json(path)
