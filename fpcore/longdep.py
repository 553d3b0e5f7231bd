"""Training on the million-step dependency task (paper C's synthetic experiment): ``train_longdep(cfg)`` and its CLI.

A model reads a problem-2b sequence (:mod:`fpcore.tasks`: the sign of x_0, then T - 1 random
one-hots over p = 128) and predicts the sign from its last output. Two models:

- ``gilr-lstm``: :class:`fpcore.models.SurrogateStack` of GILR-LSTM layers (two scans per layer);
- ``lstm``: ``torch.nn.LSTM`` (cuDNN on a GPU), the sequential baseline.

Both start with the same lookup input map (:class:`fpcore.tasks.SignedOneHot`, p+1 -> ``embed``) and
end with a linear read-out of the last step; the loss is binary cross-entropy. Training stops at
paper C's criterion, ``streak`` (5) consecutive minibatches at 100% accuracy, or when the budget
(``max_iters``, ``max_time_s``) runs out. Batch ``i`` is drawn from seed (cfg.seed, i), so a run
resumed from a checkpoint (model, optimiser, step, streak, history, elapsed time) continues exactly
as if it had never stopped.

The loop has fpcore's one training shape (:mod:`fpcore.checkpoint`): ``LongDepConfig.identity()`` defines
the run, a :class:`fpcore.checkpoint.Checkpointer` holds its resumable state (atomic, checksummed, written
for this identity whatever the path's spelling), a NaN or inf loss or gradient stops the run before the
step with the last finite checkpoint named, Ctrl-C checkpoints at the end of the step, and the record's
name and folder are checked before training.

Every finished run writes one record, ``longdep_<model>_T<seq_len>_h<hidden>x<layers>_s<seed>.json`` (plus
``_<fingerprint>`` when other settings differ from :class:`LongDepConfig`'s defaults; or ``cfg.name``) in the
results folder (:mod:`fpcore.results`: ``build/results/`` unless recording), with the configuration's
fingerprint. The command line checkpoints every run (``<name>.pt`` in :func:`fpcore.checkpoint.checkpoint_dir`)
and resumes it when the same command is run again.

CPU (notebook 02's quick run: about 130 iterations; 15-35 s measured on a busy 2-core machine,
Numba's first compile included)::

    python -m fpcore longdep --seq-len 4096 --hidden 8 --layers 1 --batch 8 --embed 8 --lr 0.03 --threads 1

GPU (paper scale; see :func:`paper_configs`)::

    python -m fpcore longdep --model gilr-lstm --seq-len 8192 --hidden 512 --layers 2 --batch 32
    python -m fpcore longdep --model lstm --seq-len 8192 --hidden 512 --layers 2 --batch 32
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fpcore import checkpoint as _ckpt
from fpcore import results as _results
from fpcore.tasks import MAX_T, P, SignedOneHot, sign_batch

__all__ = [
    "MODELS",
    "LongDepConfig",
    "LongDepNet",
    "LongDepResult",
    "train_longdep",
    "paper_configs",
    "run_profile",
    "plot_history",
    "targets",
    "load_records",
    "records_table",
    "register",
]

MODELS = ("gilr-lstm", "lstm")


@dataclass
class LongDepConfig:
    """Everything a run depends on. Fields marked (run) may change on resume; the rest may not."""

    model: str = "gilr-lstm"  # "gilr-lstm" | "lstm" (torch.nn.LSTM: cuDNN on GPU)
    seq_len: int = 1024  # T, 2..2^20
    hidden: int = 512
    layers: int = 2
    batch: int = 32
    embed: int = 64  # width of the lookup input map (p+1 -> embed)
    p: int = P
    lr: float = 1e-3  # Adam
    init: str = "chrono"  # gate biases: "chrono" (Tallec & Ollivier 2018, t_max = seq_len) or "constant"
    forget_bias: float = 1.0  # init="constant": the forget-gate bias (both models; GILR-LSTM's surrogate too)
    clip: float = 1.0  # gradient-norm clip (0: off)
    seed: int = 0  # model init and data stream
    dtype: str = "float32"
    max_iters: int = 20_000  # (run) budget in minibatches
    max_time_s: float | None = None  # (run) budget in wall-clock seconds, across resumes
    streak: int = 5  # (run) convergence: this many consecutive minibatches at 100% accuracy
    device: str = "auto"  # (run)
    backend: str = "auto"  # (run) linear_scan backend for gilr-lstm
    checkpoint: str | None = None  # (run) path; written every checkpoint_every steps and at the end
    checkpoint_every: int = 100  # (run)
    resume: bool = False  # (run) continue from ``checkpoint`` if it exists
    save: bool = True  # (run) write the JSON record
    results_dir: str | None = None  # (run) default: fpcore.results.results_dir()
    name: str | None = None  # (run) record file stem
    progress: bool = True  # (run) tqdm bar
    threads: int | None = None  # (run) torch CPU threads during the run (restored after); None: leave as is

    RUN_FIELDS = (
        "max_iters",
        "max_time_s",
        "streak",
        "device",
        "backend",
        "checkpoint",
        "checkpoint_every",
        "resume",
        "save",
        "results_dir",
        "name",
        "progress",
        "threads",
    )

    def validate(self) -> LongDepConfig:
        """Check every field (a ValueError naming the first bad one); return self."""
        from fpcore import config
        from fpcore.scan import BACKENDS

        if self.model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if not isinstance(self.seq_len, int) or not 2 <= self.seq_len <= MAX_T:
            raise ValueError(f"seq_len must be in [2, 2^20 = {MAX_T}], got {self.seq_len}")
        for key in ("hidden", "layers", "batch", "embed", "p", "max_iters", "streak", "checkpoint_every"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive int, got {value!r}")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**31:
            raise ValueError(f"seed must be an int in [0, 2^31), got {self.seed!r}")
        for key, ok, rule in (
            ("lr", lambda v: v > 0, "> 0"),
            ("clip", lambda v: v >= 0, ">= 0 (0: off)"),
            ("forget_bias", lambda v: True, ""),
            ("max_time_s", lambda v: v > 0, "> 0 (or None)"),
        ):
            value = getattr(self, key)
            if key == "max_time_s" and value is None:
                continue
            if not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
                raise ValueError(f"{key} must be a finite number {rule}, got {value!r}")
        if self.backend != "auto" and self.backend not in BACKENDS:
            raise ValueError(f"backend must be auto or one of {', '.join(BACKENDS)}, got {self.backend!r}")
        config.device(None if self.device == "auto" else self.device)  # a ValueError for a device not here
        if self.name is not None:
            _results.check_name(self.name)
        if self.init not in ("chrono", "constant"):
            raise ValueError(f"init must be 'chrono' or 'constant', got {self.init!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be None or a positive int, got {self.threads!r}")
        if self.resume and not self.checkpoint:
            raise ValueError("resume needs a checkpoint path")
        return self

    def run_name(self) -> str:
        """``cfg.name``, else ``longdep_<model>_T<seq_len>_h<hidden>x<layers>_s<seed>``, plus the first 8 hex
        digits of :meth:`fingerprint` when another field of the experiment differs from the defaults, so
        that two different runs never share a default name."""
        if self.name:
            return self.name
        base = f"longdep_{self.model}_T{self.seq_len}_h{self.hidden}x{self.layers}_s{self.seed}"
        plain = LongDepConfig(model=self.model, seq_len=self.seq_len, hidden=self.hidden, layers=self.layers)
        plain.seed = self.seed
        return base if plain.identity() == self.identity() else f"{base}_{self.fingerprint()[:8]}"

    def identity(self) -> dict[str, Any]:
        """The fields that define the experiment (a checkpoint must match them to be resumed)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in self.RUN_FIELDS}

    def fingerprint(self) -> str:
        """:func:`fpcore.results.fingerprint` of :meth:`identity`."""
        return _results.fingerprint(self.identity())


class LongDepNet(nn.Module):
    """symbols [B, T] -> logit [B]: lookup input map, a recurrent stack, a read-out of the last step."""

    def __init__(self, cfg: LongDepConfig):
        super().__init__()
        from fpcore.models import SurrogateStack

        self.kind, self.backend = cfg.model, cfg.backend
        self.inp = SignedOneHot(cfg.p, cfg.embed)
        self.rnn: nn.Module
        if cfg.model == "gilr-lstm":
            stack = SurrogateStack("gilr-lstm", cfg.embed, cfg.hidden, cfg.layers, forget_bias=cfg.forget_bias)
            if cfg.init == "chrono":
                for layer in stack.layers:
                    layer.chrono_init_(cfg.seq_len)  # type: ignore[operator]
            self.rnn = stack
        else:
            self.rnn = nn.LSTM(cfg.embed, cfg.hidden, cfg.layers, batch_first=True)
            H = cfg.hidden
            with torch.no_grad():  # torch's gate order is (i, f, g, o); the same inits as GILR-LSTM
                for k in range(cfg.layers):
                    b_ih, b_hh = getattr(self.rnn, f"bias_ih_l{k}"), getattr(self.rnn, f"bias_hh_l{k}")
                    b_hh[: 2 * H].zero_()
                    if cfg.init == "chrono":
                        b_f = torch.log(torch.empty(H).uniform_(1.0, cfg.seq_len - 1.0))
                        b_ih[H : 2 * H], b_ih[:H] = b_f, -b_f
                    else:
                        b_ih[H : 2 * H].fill_(cfg.forget_bias)
        self.head = nn.Linear(cfg.hidden, 1)

    def forward(self, symbols: torch.Tensor) -> torch.Tensor:
        x = self.inp(symbols).to(self.head.weight.dtype)  # (B, T, E)
        if self.kind == "gilr-lstm":
            y, _ = self.rnn(x, backend=self.backend)  # (B, T, H)
        else:
            y, _ = self.rnn(x)  # (B, T, H)
        return self.head(y[:, -1]).squeeze(-1)  # (B,)


@dataclass
class LongDepResult:
    """What a run returns: the record written to results/ (``record``), its path, and the history."""

    record: dict[str, Any]
    path: Path | None
    losses: list[float] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)

    @property
    def converged(self) -> bool:
        return bool(self.record["converged"])

    @property
    def iterations(self) -> int:
        return int(self.record["iterations"])


def _peak_mem(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "torch.cuda.max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return int(rss if sys.platform == "darwin" else rss * 1024), "process max RSS (ru_maxrss)"


def train_longdep(cfg: LongDepConfig) -> LongDepResult:
    """Train ``cfg.model`` on problem 2b until ``cfg.streak`` perfect minibatches in a row or the budget.

    Returns a :class:`LongDepResult`; writes ``<results>/<cfg.run_name()>.json`` when ``cfg.save``.
    Raises, each with a one-line message: ValueError for a bad config, a record name or folder that cannot be
    written or a record of that name from another configuration (all before training);
    :class:`fpcore.checkpoint.CheckpointError` for a checkpoint that cannot be resumed (damaged, or of a
    different experiment), :class:`fpcore.checkpoint.CheckpointBusy` when another process trains from it
    now; :class:`fpcore.checkpoint.TrainingDiverged` for a NaN or inf loss;
    :class:`fpcore.files.WriteError` when the finished run's record cannot be written (the checkpoint, if
    any, keeps the finished state).
    """
    cfg.validate()
    if cfg.save:  # before training: a bad name or folder costs nothing
        _results.check_target(cfg.run_name(), fingerprint=cfg.fingerprint(), directory=cfg.results_dir)
    with _ckpt.RunLock(cfg.checkpoint):  # one process at a time writes a checkpoint
        if cfg.threads is None:
            return _train(cfg)
        before = torch.get_num_threads()
        torch.set_num_threads(cfg.threads)  # tiny models on a busy CPU: one thread avoids barrier stalls
        try:
            return _train(cfg)
        finally:
            torch.set_num_threads(before)


def _train(cfg: LongDepConfig) -> LongDepResult:
    from tqdm.auto import tqdm

    from fpcore import config as fpconfig
    from fpcore.files import WriteError
    from fpcore.results import device_name, git_commit, save_json

    device = fpconfig.device(None if cfg.device == "auto" else cfg.device)
    dtype = getattr(torch, cfg.dtype)
    torch.manual_seed(cfg.seed)
    model = LongDepNet(cfg).to(device=device, dtype=dtype)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    step, streak, elapsed, losses, accs = 0, 0, 0.0, [], []
    ckpt = _ckpt.Checkpointer(
        cfg.checkpoint,
        cfg.identity(),
        required=("model", "optimizer", "step", "streak", "elapsed_s", "losses", "accuracies"),
        legacy_identity=lambda saved: saved["identity"],
    )
    state = ckpt.load() if cfg.resume else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, streak, elapsed = state["step"], state["streak"], state["elapsed_s"]
        losses, accs = state["losses"], state["accuracies"]
        ckpt.last = f"step {step}"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def checkpoint_now():
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "streak": streak}
        state.update(elapsed_s=elapsed, losses=losses, accuracies=accs)
        ckpt.save(state, label=f"step {step}")

    bar = tqdm(
        total=cfg.max_iters,
        initial=min(step, cfg.max_iters),
        disable=not cfg.progress,
        desc=f"{cfg.model} T={cfg.seq_len}",
        leave=False,
        dynamic_ncols=True,
    )
    model.train()
    t0 = time.perf_counter() - elapsed
    with _ckpt.GracefulInterrupt(enabled=cfg.checkpoint is not None) as stop:  # Ctrl-C: checkpoint, then stop
        while streak < cfg.streak and step < cfg.max_iters and (cfg.max_time_s is None or elapsed < cfg.max_time_s):
            if cfg.threads is not None and torch.get_num_threads() != cfg.threads:
                torch.set_num_threads(cfg.threads)  # Numba's OpenMP start-up (first scan) resets torch's count
            symbols, labels = sign_batch(cfg.batch, cfg.seq_len, p=cfg.p, seed=cfg.seed, step=step, device=device)
            logits = model(symbols)
            loss = F.binary_cross_entropy_with_logits(logits, labels.to(dtype))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip > 0:
                norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            else:
                norm = nn.utils.get_total_norm([q.grad for q in model.parameters() if q.grad is not None])
            loss_value = loss.item()  # syncs the device
            where = f"step {step}"
            _ckpt.check_finite(loss_value, what="the training loss", where=where, checkpointer=ckpt)
            _ckpt.check_finite(float(norm), what="the gradient norm", where=where, checkpointer=ckpt)
            opt.step()  # only after the checks: the weights stay finite
            acc = ((logits.detach() > 0).to(labels.dtype) == labels).float().mean().item()
            losses.append(loss_value)
            accs.append(acc)
            streak = streak + 1 if acc == 1.0 else 0
            step += 1
            elapsed = time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}", acc=f"{acc:.2f}", streak=streak)
            if step % cfg.checkpoint_every == 0:
                checkpoint_now()
            if stop.requested:
                checkpoint_now()
                bar.close()
                raise KeyboardInterrupt(f"{ckpt.describe()}: run the same command again to resume")
    bar.close()
    checkpoint_now()

    converged = streak >= cfg.streak
    peak, peak_kind = _peak_mem(device)
    record = {
        "model": cfg.model,
        "seq_len": cfg.seq_len,
        "hidden": cfg.hidden,
        "layers": cfg.layers,
        "batch": cfg.batch,
        "iterations": step,
        "wall_time_s": elapsed,
        "converged": converged,
        "device": device_name(device),
        "peak_mem_bytes": peak,
        "peak_mem_kind": peak_kind,
        "torch_version": torch.__version__,
        "commit": git_commit(),
        "seconds_per_iteration": elapsed / max(step, 1),
        "final_loss": losses[-1] if losses else None,
        "final_streak": streak,
        "criterion": f"{cfg.streak} consecutive minibatches at 100% accuracy",
        "config": dataclasses.asdict(cfg),
        "history": {"loss": losses, "accuracy": accs},
    }
    path = None
    if cfg.save:
        directory = Path(cfg.results_dir) if cfg.results_dir else None
        try:
            path = save_json(cfg.run_name(), record, device=device, directory=directory, fingerprint=cfg.fingerprint())
        except (OSError, ValueError) as err:
            keep = f"the finished run is in {ckpt.describe()}" if cfg.checkpoint else "the run kept no checkpoint"
            raise WriteError(f"{err}; {keep}: fix that and run it again (resuming) to write the record") from err
    return LongDepResult(record, path, list(losses), list(accs))


# --------------------------------------------------------------------------------------------------
def paper_configs(*, quick: bool) -> list[LongDepConfig]:
    """The runs notebook 02 makes. Full: paper C's lengths (GPU); quick: one CPU-sized GILR-LSTM run.

    Quick: GILR-LSTM 1 x 8 at T = 4,096, batch 8, Adam 3e-2, one torch thread (tens of seconds on a
    laptop core). Full: paper C's 2 x 512 at T = 1,024 and 8,192 for GILR-LSTM and cuDNN LSTM
    (batch 32, Adam 1e-3), and GILR-LSTM at T = 2^20; there, like the paper, a narrower model
    (2 x 64, batch 2), which keeps a step's activations to a few GiB.
    """
    if quick:
        return [
            LongDepConfig(
                model="gilr-lstm",
                seq_len=4096,
                hidden=8,
                layers=1,
                batch=8,
                embed=8,
                lr=3e-2,
                max_iters=600,
                progress=False,
                threads=1,
            )
        ]
    runs = []
    for T in (1024, 8192):
        for model in ("gilr-lstm", "lstm"):
            runs.append(
                LongDepConfig(
                    model=model,
                    seq_len=T,
                    hidden=512,
                    layers=2,
                    batch=32,
                    embed=64,
                    lr=1e-3,
                    max_iters=5000,
                    max_time_s=3 * 3600,
                )
            )
    runs.append(
        LongDepConfig(
            model="gilr-lstm",
            seq_len=MAX_T,
            hidden=64,
            layers=2,
            batch=2,
            embed=64,
            lr=1e-3,
            max_iters=20_000,
            max_time_s=3600,
        )
    )
    return runs


def run_profile(*, quick: bool, results_dir: str | None = None) -> list[LongDepResult]:
    """Train every run of :func:`paper_configs`; records go to ``results_dir`` (None: the results folder)."""
    out = []
    for cfg in paper_configs(quick=quick):
        cfg.results_dir = results_dir
        out.append(train_longdep(cfg))
    return out


def plot_history(results: list[LongDepResult], window: int = 10):
    """Loss (moving average) and minibatch accuracy per iteration, one line per run."""
    import matplotlib.pyplot as plt

    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(10, 3.2))
    for k, res in enumerate(results):
        r = res.record
        label = f"{r['model']} T={r['seq_len']} {r['layers']}x{r['hidden']}"
        loss = torch.tensor(res.losses)
        smooth = loss.unfold(0, window, 1).mean(1) if len(loss) >= window else loss
        ax_l.plot(range(len(loss) - len(smooth) + 1, len(loss) + 1), smooth, color=f"C{k}", label=label)
        ax_a.plot(range(1, len(res.accuracies) + 1), res.accuracies, ".", ms=2, color=f"C{k}", label=label)
    ax_l.axhline(math.log(2), color="gray", ls=":", lw=1)  # chance: log 2
    ax_l.set(xlabel="iteration", ylabel=f"BCE loss ({window}-step mean)", title="loss (dotted: chance)")
    ax_a.set(xlabel="iteration", ylabel="minibatch accuracy", title="accuracy; stop at 5 perfect in a row")
    ax_l.legend(fontsize=7)
    fig.tight_layout()
    return fig


def targets(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The long-dependency task's training targets, read off recorded runs (a target without its runs is absent)."""

    def best(model, T):
        runs = [r for r in records if r["model"] == model and r["seq_len"] == T and r["converged"]]
        return min(runs, key=lambda r: r["wall_time_s"]) if runs else None

    out = {}
    g, c = best("gilr-lstm", 8192), [r for r in records if r["model"] == "lstm" and r["seq_len"] == 8192]
    if g and c:
        lstm = min(c, key=lambda r: r["wall_time_s"])  # an unconverged LSTM counts with its (budget) time
        ratio = lstm["wall_time_s"] / g["wall_time_s"]
        out["T8192_lstm_over_gilr_lstm_wall_time"] = {
            "value": ratio,
            "target": 6.0,
            "met": ratio >= 6.0,
            "lstm_converged": lstm["converged"],
        }
    m = best("gilr-lstm", MAX_T)
    if m:
        out["T1048576_gilr_lstm_wall_time_s"] = {
            "value": m["wall_time_s"],
            "target": 600.0,
            "met": m["wall_time_s"] <= 600.0,
        }
    return out


def load_records(directory: Path | None = None) -> list[dict[str, Any]]:
    """Every recorded run (results/longdep_*.json), newest format, sorted by (seq_len, model)."""
    from fpcore.results import find, load_json

    recs = [load_json(p) for p in find("longdep_*.json", directory)]
    return sorted(recs, key=lambda r: (r.get("seq_len", 0), r.get("model", ""), r.get("hidden", 0)))


def records_table(records: list[dict[str, Any]]) -> str:
    """The recorded runs as a plain-text table (paper C, Table 3 layout)."""
    from fpcore.bench import format_table

    rows = [
        {
            "profile": r.get("meta", {}).get("profile", "-"),
            "model": r["model"],
            "T": r["seq_len"],
            "size": f"{r['layers']}x{r['hidden']}",
            "batch": r["batch"],
            "iterations": r["iterations"],
            "hours": r["wall_time_s"] / 3600,
            "converged": r["converged"],
            "GiB": r["peak_mem_bytes"] / 2**30,
            "device": r["device"],
            "commit": (r.get("commit") or "-")[:10],
        }
        for r in records
    ]
    return format_table(
        rows, ("profile", "model", "T", "size", "batch", "iterations", "hours", "converged", "GiB", "device", "commit")
    )


# --------------------------------------------------------------------------------------------------
def _seq_len(text: str) -> int:
    from fpcore import cli

    value = cli.positive(int)(text)
    if not 2 <= value <= MAX_T:
        raise argparse.ArgumentTypeError(f"must be in [2, {MAX_T}] (2^20), got {value}")
    return value


def _seed(text: str) -> int:
    from fpcore import cli

    value = cli.non_negative(int)(text)
    if value >= 2**31:
        raise argparse.ArgumentTypeError(f"must be < 2^31, got {value}")
    return value


def register(subparsers) -> None:
    """``python -m fpcore longdep``: train on the long-dependency task and record the run."""
    from fpcore import cli
    from fpcore.scan import BACKENDS

    d = LongDepConfig()
    positive_int, positive_float = cli.positive(int), cli.positive(float)
    p = subparsers.add_parser(
        "longdep",
        help="train GILR-LSTM or cuDNN LSTM on the sign-of-x0 task (paper C's synthetic experiment)",
        description="Train on Hochreiter & Schmidhuber problem 2b (sign of x_0 after T-1 random one-hots) until "
        f"{d.streak} consecutive minibatches are 100% correct or the budget ends (exit 0; exit 3 if "
        "the budget ends first); writes the record longdep_<model>_T<T>_h<H>x<L>_s<seed>[_<fingerprint>].json "
        "(see --record). The run checkpoints as it goes and resumes when the same command is run again.",
    )
    p.add_argument("--model", choices=MODELS, default=d.model, help=f"default {d.model}")
    p.add_argument("--seq-len", type=_seq_len, default=d.seq_len, help=f"T (default {d.seq_len}; up to 1048576)")
    p.add_argument("--hidden", type=positive_int, default=d.hidden, help=f"units per layer (default {d.hidden})")
    p.add_argument("--layers", type=positive_int, default=d.layers, help=f"default {d.layers}")
    p.add_argument("--batch", type=positive_int, default=d.batch, help=f"default {d.batch}")
    p.add_argument("--embed", type=positive_int, default=d.embed, help=f"input lookup width (default {d.embed})")
    p.add_argument("--lr", type=positive_float, default=d.lr, help=f"Adam learning rate (default {d.lr})")
    p.add_argument(
        "--init",
        choices=("chrono", "constant"),
        default=d.init,
        help="gate-bias init: chrono (Tallec & Ollivier 2018; default) or constant --forget-bias",
    )
    p.add_argument(
        "--forget-bias",
        type=cli.finite,
        default=d.forget_bias,
        help=f"forget-gate bias with --init constant (default {d.forget_bias})",
    )
    p.add_argument(
        "--clip", type=cli.non_negative(float), default=d.clip, help=f"gradient-norm clip, 0 = off (default {d.clip})"
    )
    p.add_argument("--seed", type=_seed, default=d.seed, help=f"model init and data stream (default {d.seed})")
    p.add_argument("--max-iters", type=positive_int, default=d.max_iters, help=f"default {d.max_iters}")
    p.add_argument("--max-time", type=positive_float, default=None, help="budget in seconds (default none)")
    p.add_argument("--device", type=cli.device, default="auto", help="cpu, cuda, cuda:N or auto (default auto)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads for the run (default: torch's)")
    p.add_argument(
        "--backend",
        choices=("auto", *BACKENDS),
        default="auto",
        help="linear_scan backend for gilr-lstm (default auto)",
    )
    p.add_argument(
        "--checkpoint",
        help="checkpoint file, written every --checkpoint-every steps and at the end, and resumed from if it "
        "exists (default <name>.pt in $FPCORE_CHECKPOINT_DIR or checkpoints/)",
    )
    p.add_argument(
        "--checkpoint-every", type=positive_int, default=d.checkpoint_every, help=f"default {d.checkpoint_every}"
    )
    p.add_argument("--fresh", action="store_true", help="start afresh, replacing the checkpoint, instead of resuming")
    p.add_argument(
        "--name",
        type=cli.record_name,
        help="record file stem (default longdep_<model>_T<T>_h<H>x<L>_s<seed>, plus a fingerprint of the other "
        "settings when they differ from the defaults)",
    )
    p.add_argument("--results-dir", help="where the record goes (default build/results/, or results/ with --record)")
    p.add_argument("--no-save", action="store_true", help="do not write a record")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_main, _parser=p)


def _main(args) -> int:
    if args.record and args.results_dir:
        args._parser.error("--record writes into results/; it does not go with --results-dir")
    cfg = LongDepConfig(
        model=args.model,
        seq_len=args.seq_len,
        hidden=args.hidden,
        layers=args.layers,
        batch=args.batch,
        embed=args.embed,
        lr=args.lr,
        init=args.init,
        forget_bias=args.forget_bias,
        clip=args.clip,
        seed=args.seed,
        max_iters=args.max_iters,
        max_time_s=args.max_time,
        device=args.device,
        backend=args.backend,
        checkpoint_every=args.checkpoint_every,
        resume=not args.fresh,
        save=not args.no_save,
        results_dir=args.results_dir,
        name=args.name,
        progress=not args.no_progress,
        threads=args.threads,
    )
    cfg.checkpoint = args.checkpoint or str(_ckpt.checkpoint_path(cfg.run_name()))  # finished work stays resumable
    res = train_longdep(cfg)
    r = res.record
    print(
        f"{r['model']} T={r['seq_len']} {r['layers']}x{r['hidden']} batch {r['batch']}: "
        f"{'converged' if r['converged'] else 'NOT converged'} after {r['iterations']} iterations, "
        f"{r['wall_time_s']:.1f} s, peak memory {r['peak_mem_bytes'] / 2**20:.0f} MiB on {r['device']}"
    )
    if res.path is not None:
        print(f"wrote {res.path}")
    return 0 if r["converged"] else 3
