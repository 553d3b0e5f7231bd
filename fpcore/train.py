"""Training and evaluating language models: ``fit(model, corpus, cfg)`` and ``evaluate(model, tokens)``.

    cfg = TrainConfig.preset("small", dataset="ptb", method="jacobi", iters=5)
    model = build_model(cfg, corpus.vocab_size)
    record = fit(model, corpus, cfg)          # per-epoch valid perplexity, test perplexity, tokens/s
    record["test_ppl"]

Truncated BPTT over B parallel streams (:class:`fpcore.data.LMBatches`) with the state carried between
windows, SGD with the classic schedule (lr divided by ``lr_decay`` each epoch after ``decay_after``) and
gradient-norm clipping, or Adam. ``stable=True`` projects the recurrent weights after every step (paper B).
The loss is summed over each window's time steps and averaged over the batch, as in Zaremba et al.'s code, so
their lr = 1 and clip = 5 mean the same here (``sum_over_time=False``: the per-token mean).

The loop has fpcore's one training shape (:mod:`fpcore.checkpoint`): ``TrainConfig.identity()`` is what
defines the run, a :class:`fpcore.checkpoint.Checkpointer` holds its resumable state, and nothing is lost:

- Checkpoints: every ``checkpoint_every`` windows and at each epoch end, the model, optimizer, position
  (epoch, window), history and each process's carried state and random-number state are written
  atomically, with a checksum, to ``cfg.checkpoint``. ``fit`` resumes from that file when it exists (and
  was written for the same configuration, however its path is spelled), and ends exactly where an
  uninterrupted run would (same batches, same dropout masks, same state).
- Records: with ``cfg.record_name``, the record goes to ``<results>/<record_name>.json`` (see
  :mod:`fpcore.results`) with the configuration's fingerprint. The name, the folder and a clash with a
  record of another configuration are checked before training starts; if the write still fails (a full
  disk), the error says so in one line and the finished state stays in the checkpoint: the same call again
  writes the record without training.
- Divergence: a NaN or inf loss or gradient stops training before the step is applied, with a message
  naming the window and the checkpoint holding the last finite state; a finite loss that exploded stops the
  run at the end of the epoch (validation perplexity above ten times the vocabulary size).
- Ctrl-C: the run checkpoints at the end of the window it is in and stops, saying where to resume from.

Data parallel: under ``torchrun``, or ``python -m fpcore train --nproc-per-node N`` (which returns exit 3 for
a paused run as one process does), each process takes every world-th stream and gradients are averaged by
DistributedDataParallel; rank 0 evaluates, checkpoints and writes results. Collectives time out after
``$FPCORE_DIST_TIMEOUT`` seconds (600 by default), so a stopped process cannot hang the others for ever.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fpcore import checkpoint as _ckpt
from fpcore import config as _config
from fpcore import results as _results
from fpcore.data import LMBatches, batchify
from fpcore.models.lm import ITERATED, METHODS, RNNLM, check_token_ids, detach_state

__all__ = [
    "TrainConfig",
    "PRESETS",
    "RUN_FIELDS",
    "RecordNotWritten",
    "PeersLost",
    "dist_timeout",
    "build_model",
    "fit",
    "evaluate",
    "run_name",
    "default_name",
    "record_target",
    "find_record",
    "record_fingerprint",
    "load_trained",
    "launch",
]

# Zaremba et al. (2014): "small" and "medium" PTB models.
PRESETS: dict[str, dict[str, Any]] = {
    "small": dict(
        hidden=200,
        layers=2,
        dropout=0.0,
        bptt=20,
        epochs=13,
        lr=1.0,
        decay_after=4,
        lr_decay=2.0,
        batch_size=20,
        clip=5.0,
        init_range=0.1,
    ),
    "medium": dict(
        hidden=650,
        layers=2,
        dropout=0.5,
        bptt=35,
        epochs=39,
        lr=1.0,
        decay_after=6,
        lr_decay=1.2,
        batch_size=20,
        clip=5.0,
        init_range=0.05,
    ),
    # a few minutes on a laptop CPU: for the quick profile and tests
    "tiny": dict(
        hidden=64,
        layers=1,
        dropout=0.0,
        bptt=20,
        epochs=2,
        lr=1.0,
        decay_after=1,
        lr_decay=2.0,
        batch_size=16,
        clip=5.0,
        init_range=0.1,
        max_train_tokens=60_000,
        max_eval_tokens=10_000,
    ),
}

# Fields of TrainConfig that do not change what a run computes: a resumed run may differ in them, and they
# are left out of its identity (so a checkpoint path spelled ``ck.pt`` or ``./ck.pt`` is the same run).
RUN_FIELDS = ("checkpoint", "checkpoint_every", "device", "progress", "record_name")


@dataclass
class TrainConfig:
    """Everything a run depends on; ``TrainConfig.preset(name, **overrides)`` starts from a preset."""

    dataset: str = "ptb"
    config: str = "small"
    cell: str = "lstm"
    hidden: int = 200
    layers: int = 2
    dropout: float = 0.0
    tie: bool = False
    method: str = "bptt"
    iters: int | None = None
    stable: bool = False
    bptt: int = 20
    batch_size: int = 20
    eval_batch_size: int = 10
    epochs: int = 13
    optimizer: str = "sgd"
    lr: float = 1.0
    lr_decay: float = 2.0  # lr is divided by this each epoch after decay_after
    decay_after: int = 4
    clip: float = 5.0  # gradient-norm clip; 0: none
    init_range: float = 0.1
    # the training loss: summed over the window's time steps and averaged over the batch, as Zaremba et al.'s
    # code does (lr = 1 and clip = 5 are on that scale); False: the mean per token, which needs lr ~ bptt
    sum_over_time: bool = True
    seed: int = 0
    max_train_tokens: int | None = None  # slices for quick runs
    max_eval_tokens: int | None = None
    checkpoint: str | None = None
    checkpoint_every: int = 200  # windows
    device: str | None = None
    progress: bool = True
    record_name: str | None = None  # <results>/<record_name>.json (None: no record)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        for name in ("hidden", "layers", "bptt", "batch_size", "eval_batch_size", "epochs", "checkpoint_every"):
            _check_int(name, getattr(self, name), low=1)
        _check_int("decay_after", self.decay_after, low=0)
        _check_int("seed", self.seed, low=0)
        for name in ("max_train_tokens", "max_eval_tokens"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), low=2)
        if self.method in ("jacobi", "truncated"):
            _check_int("iters", self.iters, low=1, why=f" (method {self.method!r} needs iters = k >= 1)")
        elif self.iters is not None:
            raise ValueError(f"iters is for methods 'jacobi' and 'truncated', not {self.method!r}")
        for name, ok, rule in (
            ("lr", lambda v: v > 0, "> 0"),
            ("lr_decay", lambda v: v > 0, "> 0"),
            ("clip", lambda v: v >= 0, ">= 0 (0: no clipping)"),
            ("init_range", lambda v: v > 0, "> 0"),
            ("dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
                raise ValueError(f"{name} must be a finite number {rule}, got {value!r}")

    @classmethod
    def preset(cls, name: str, **overrides) -> TrainConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], "config": name, **overrides})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """The config saved in a record or checkpoint (fields added since then take their defaults)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def identity(self) -> dict[str, Any]:
        """The fields that define the run (everything but :data:`RUN_FIELDS`)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in RUN_FIELDS}

    def fingerprint(self) -> str:
        """:func:`fpcore.results.fingerprint` of :meth:`identity`: equal exactly when two runs compute the same."""
        return _results.fingerprint(self.identity())

    def lr_at(self, epoch: int) -> float:
        """Learning rate of 1-based ``epoch``: lr, then divided by lr_decay each epoch after decay_after."""
        return self.lr / self.lr_decay ** max(0, epoch - self.decay_after)


def _check_int(name: str, value: Any, *, low: int, why: str = "") -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}{why}, got {value!r}")


# -- names, records and checkpoints of runs ----------------------------------------------------------------------
def run_name(
    dataset: str,
    preset: str,
    cell: str = "lstm",
    method: str = "bptt",
    iters: int | None = None,
    stable: bool = False,
    profile: str | None = None,
) -> str:
    """The name of a preset's run, for its record (<results>/<name>.json) and checkpoint (<name>.pt in
    :func:`fpcore.checkpoint.checkpoint_dir`), shared by the CLI and the notebooks' grids so that each
    finds the other's runs: ``lm_<dataset>_<preset>_<cell>_<method>[_k<iters>][_stable]_<profile>``."""
    return "_".join(
        filter(
            None,
            [
                "lm",
                dataset.replace("-", ""),
                preset,
                cell,
                method,
                f"k{iters}" if iters else "",
                "stable" if stable else "",
                profile or _config.profile(),
            ],
        )
    )


def default_name(cfg: TrainConfig) -> str:
    """:func:`run_name` of ``cfg``, plus ``_<8 hex digits of its fingerprint>`` when ``cfg`` differs from its
    preset in anything that name leaves out (seed, lr, epochs, optimizer, slices, ...), so that two
    different runs never share a default name."""
    base = run_name(cfg.dataset, cfg.config, cfg.cell, cfg.method, cfg.iters, cfg.stable)
    if cfg.config in PRESETS:
        plain = TrainConfig.preset(
            cfg.config, dataset=cfg.dataset, cell=cfg.cell, method=cfg.method, iters=cfg.iters, stable=cfg.stable
        )
        if plain.identity() == cfg.identity():
            return base
    return f"{base}_{cfg.fingerprint()[:8]}"


def record_fingerprint(record: dict[str, Any]) -> str | None:
    """The configuration fingerprint of an LM record: stored in it, or, for records written before records
    carried one, computed from its ``train_config`` (None when it has neither)."""
    if isinstance(record.get("fingerprint"), str):
        return record["fingerprint"]
    saved = record.get("train_config")
    if not isinstance(saved, dict):
        return None
    try:
        return TrainConfig.from_dict(saved).fingerprint()
    except (TypeError, ValueError):
        return None


def record_target(cfg: TrainConfig) -> Path | None:
    """Where :func:`fit` will write ``cfg``'s record, checked now: a plain name, a writable folder, and no
    record of that name from another configuration there. None when ``cfg.record_name`` is None."""
    if not cfg.record_name:
        return None
    return _results.check_target(cfg.record_name, fingerprint=cfg.fingerprint(), fingerprint_of=record_fingerprint)


def find_record(cfg: TrainConfig) -> dict[str, Any] | None:
    """The finished record of exactly ``cfg`` under ``cfg.record_name`` (your records first, then the tracked
    results/); None if there is none. A record of that name written for another configuration does not count.
    Records written before records carried a fingerprint count when their ``train_config`` matches ``cfg``."""
    if not cfg.record_name:
        return None
    for folder in _results.search_dirs():
        path = folder / f"{cfg.record_name}.json"
        if path.is_file():
            record = _results.load_json(path)
            if record.get("finished", True) and record_fingerprint(record) == cfg.fingerprint():
                return record
    return None


def _legacy_identity(saved: dict[str, Any]) -> dict[str, Any]:
    """The identity of a checkpoint written before checkpoints had a format version."""
    return TrainConfig.from_dict(saved["config"]).identity()


def load_trained(name: str, vocab: int, device=None) -> tuple[RNNLM, TrainConfig]:
    """The model run ``name`` left in its checkpoint (its state after the last window it trained) and its
    config. The checkpoint is ``<checkpoint_dir()>/<name>.pt``, or the one the run's record names.
    Raises FileNotFoundError when it is not on this machine, CheckpointError when it is damaged."""
    path = _ckpt.checkpoint_path(name)
    if not path.exists():
        found = _results.find(f"{name}.json")
        if found:
            saved_path = (_results.load_json(found[0]).get("train_config") or {}).get("checkpoint")
            path = Path(saved_path) if saved_path else path
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint of run {name!r} on this machine (checkpoints are not in git)")
    saved = _ckpt.load(path, identity=None, required=("model", "config"), legacy_identity=_legacy_identity)
    cfg = TrainConfig.from_dict(saved["config"])
    model = build_model(cfg, vocab)
    model.load_state_dict(saved["model"])
    return model.to(device or "cpu").eval(), cfg


def build_model(cfg: TrainConfig, vocab: int) -> RNNLM:
    torch.manual_seed(cfg.seed)
    return RNNLM(
        vocab,
        cfg.hidden,
        cfg.layers,
        cell=cfg.cell,
        dropout=cfg.dropout,
        tie=cfg.tie,
        method=cfg.method,
        iters=cfg.iters,
        init_range=cfg.init_range,
    )


# -- evaluation ----------------------------------------------------------------------------------------------
def _loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())  # mean over B*T tokens


def _ppl(mean_nll: float) -> float:
    """exp(mean NLL), inf rather than an OverflowError for a model that has diverged."""
    return math.exp(mean_nll) if mean_nll < 709.0 else math.inf


@torch.no_grad()
def evaluate(
    model: RNNLM,
    tokens: torch.Tensor,
    *,
    batch_size: int = 10,
    bptt: int = 35,
    device: torch.device | str | None = None,
) -> float:
    """Perplexity exp(mean NLL) of ``model`` on a 1-D token stream, state carried across windows."""
    check_token_ids(tokens, model.vocab)
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    batches = LMBatches(tokens, batch_size, bptt, device=device)
    total, count, state = 0.0, 0, None
    for x, y in batches:
        logits, state = model(x, state)
        total += float(nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum"))
        count += y.numel()
    model.train(was_training)
    return _ppl(total / count)


# -- distributed ---------------------------------------------------------------------------------------------
class PeersLost(TimeoutError):
    """Another process of a data-parallel run stopped answering (or died); the message says what to do."""


def dist_timeout() -> datetime.timedelta:
    """How long a process waits for the others (start-up and every collective): ``$FPCORE_DIST_TIMEOUT``
    seconds, 600 by default. Longer than rank 0's evaluation and checkpoint writes, which the others wait for."""
    text = os.environ.get("FPCORE_DIST_TIMEOUT", "600")
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"FPCORE_DIST_TIMEOUT={text!r}: expected a number of seconds > 0")
    return datetime.timedelta(seconds=seconds)


def _dist_info() -> tuple[int, int, bool]:
    """(rank, world size, whether this call started the process group)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    started = False
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend, timeout=dist_timeout())
        started = True
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world, started


def _end_distributed(world: int, own_group: bool) -> None:
    if world > 1:
        torch.distributed.barrier()  # no process exits while another still talks to it
        if own_group:
            torch.distributed.destroy_process_group()


def _all(flag: bool, world: int) -> bool:
    """Whether ``flag`` holds in every process (one small all-reduce when data-parallel)."""
    if world == 1:
        return flag
    t = torch.tensor([float(flag)])
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
    return bool(t.item())


def _to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(o, device) for o in obj)
    return obj


# -- one run ---------------------------------------------------------------------------------------------------
@dataclass
class _Progress:
    """Where a run is, besides its weights: what a checkpoint must hold for an exact resume."""

    epoch: int = 1  # the epoch being trained (cfg.epochs + 1: all done)
    window: int = 0  # the next window of that epoch
    history: list[dict[str, Any]] = field(default_factory=list)
    trained_tokens: int = 0
    train_seconds: float = 0.0
    wall_seconds: float = 0.0
    # this process's own part (each data-parallel process has its streams' state and its random stream)
    state: Any = None  # the recurrent state carried into the next window
    nll_sum: float = 0.0
    nll_count: int = 0

    SHARED = ("epoch", "window", "history", "trained_tokens", "train_seconds", "wall_seconds")


class RecordNotWritten(OSError):
    """The run finished but its record could not be written; ``.record`` holds it, the message says how to go on."""

    def __init__(self, message: str, record: dict[str, Any]):
        super().__init__(message)
        self.record = record

    def __str__(self) -> str:
        return str(self.args[0])


class _Run:
    """One call of :func:`fit`: the data, the optimizer, the checkpoint and the progress of one process."""

    def __init__(self, model: RNNLM, corpus, cfg: TrainConfig, rank: int, world: int):
        from fpcore import stability

        self.model, self.cfg, self.rank, self.world = model, cfg, rank, world
        self.device = _config.device(cfg.device)
        model.to(self.device)
        train = corpus.train[: cfg.max_train_tokens] if cfg.max_train_tokens else corpus.train
        self.valid = corpus.valid[: cfg.max_eval_tokens] if cfg.max_eval_tokens else corpus.valid
        self.test = corpus.test[: cfg.max_eval_tokens] if cfg.max_eval_tokens else corpus.test
        for split, ids in (("train", train), ("valid", self.valid), ("test", self.test)):
            check_token_ids(ids, model.vocab, f"the {split} tokens")
        if cfg.batch_size % world:
            raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the {world} processes")
        streams = batchify(train, cfg.batch_size)[rank::world]  # (B / world, L): this process's streams
        self.batches = LMBatches.from_streams(streams.to(self.device), cfg.bptt)
        self.net: nn.Module = nn.parallel.DistributedDataParallel(model) if world > 1 else model
        self.params = [p for p in model.parameters() if p.requires_grad]
        sgd = cfg.optimizer == "sgd"
        self.opt = torch.optim.SGD(self.params, lr=cfg.lr_at(1)) if sgd else torch.optim.Adam(self.params, lr=cfg.lr)
        if cfg.stable:
            stability.project_after_step(self.opt, model)
        self.ckpt = _ckpt.Checkpointer(
            cfg.checkpoint,
            cfg.identity(),
            required=("model", "optimizer", *_Progress.SHARED),
            legacy_identity=_legacy_identity,
        )
        self.progress = _Progress()
        self.since = time.perf_counter()  # wall time not yet added to progress.wall_seconds
        torch.manual_seed(cfg.seed + 1000 * rank)
        self.resumed = self._resume()

    # -- checkpoints
    def _resume(self) -> bool:
        saved = self.ckpt.load()
        if saved is None:
            return False
        written_by = len(saved["ranks"]) if "ranks" in saved else 1
        if written_by != self.world:  # each process's streams carry their own state: it cannot be re-dealt
            raise _ckpt.CheckpointError(
                f"checkpoint {self.cfg.checkpoint} was written by {written_by} process(es), this run has "
                f"{self.world}: resume it with --nproc-per-node {written_by}, or delete it to start afresh"
            )
        self.model.load_state_dict(saved["model"])
        self.opt.load_state_dict(saved["optimizer"])
        p = self.progress
        for key in _Progress.SHARED:
            setattr(p, key, saved[key])
        if "ranks" in saved:
            mine = saved["ranks"][self.rank]
        else:  # written before each process's part was kept
            mine = {k: saved[k] for k in ("state", "rng", "nll_sum", "nll_count")}
        p.state, p.nll_sum, p.nll_count = _to(mine["state"], self.device), mine["nll_sum"], mine["nll_count"]
        _ckpt.set_rng_state(mine["rng"])
        self.ckpt.last = f"epoch {p.epoch}, window {p.window}"
        return True

    def save(self) -> None:
        """Checkpoint where the run is now (rank 0 writes what every process hands it)."""
        if self.ckpt.path is None:
            return
        p = self.progress
        now = time.perf_counter()
        p.wall_seconds, self.since = p.wall_seconds + now - self.since, now
        own = {"state": _to(p.state, torch.device("cpu")), "rng": _ckpt.rng_state(), "nll_sum": p.nll_sum}
        own["nll_count"] = p.nll_count
        ranks: list[Any] = [own]
        if self.world > 1:
            ranks = [None] * self.world
            torch.distributed.all_gather_object(ranks, own)
        if self.rank == 0:
            state = {key: getattr(p, key) for key in _Progress.SHARED}
            state.update(config=dataclasses.asdict(self.cfg), model=self.model.state_dict(), ranks=ranks)
            state["optimizer"] = self.opt.state_dict()
            self.ckpt.save(state, label=f"epoch {p.epoch}, window {p.window}")

    # -- training
    def _step(self, x: torch.Tensor, y: torch.Tensor, where: str) -> None:
        """One window: forward, backward, clip, check, step."""
        cfg, p = self.cfg, self.progress
        p.state = detach_state(p.state)
        logits, p.state = self.net(x, p.state)
        loss = _loss(logits, y)
        self.opt.zero_grad(set_to_none=True)
        (loss * y.shape[1] if cfg.sum_over_time else loss).backward()
        if cfg.clip:
            norm = nn.utils.clip_grad_norm_(self.params, cfg.clip)
        else:
            norm = nn.utils.get_total_norm([q.grad for q in self.params if q.grad is not None])
        value, grad = float(loss.detach()), float(norm)
        if not _all(math.isfinite(value) and math.isfinite(grad), self.world):  # checked before the step is taken
            if not math.isfinite(value):
                what, bad = "the training loss", value
            elif not math.isfinite(grad):
                what, bad = "the gradient norm", grad
            else:
                what, bad = "another process's loss or gradient", math.nan
            _ckpt.check_finite(bad, what=what, where=f"{where} (the step was not taken)", checkpointer=self.ckpt)
        self.opt.step()
        p.nll_sum += value * y.numel()
        p.nll_count += y.numel()
        p.trained_tokens += y.numel() * self.world

    def train(self, budget: _Budget) -> bool:
        """Train to the end (True), or until ``budget`` runs out (False, with a checkpoint to resume from)."""
        cfg, p = self.cfg, self.progress
        while p.epoch <= cfg.epochs:
            if cfg.optimizer == "sgd":
                for group in self.opt.param_groups:
                    group["lr"] = cfg.lr_at(p.epoch)
            if not self._train_epoch(budget):
                return False
            self._end_epoch()
            if p.epoch <= cfg.epochs and budget.spent():
                return False
        return True

    def _train_epoch(self, budget: _Budget) -> bool:
        from tqdm.auto import tqdm

        cfg, p, n = self.cfg, self.progress, len(self.batches)
        self.model.train()
        bar = tqdm(
            self.batches.iter_from(p.window),
            total=n - p.window,
            leave=False,
            desc=f"epoch {p.epoch}/{cfg.epochs}",
            disable=not cfg.progress or self.rank != 0,
        )
        tick = time.perf_counter()
        with bar:
            for i, (x, y) in enumerate(bar, start=p.window):
                self._step(x, y, where=f"epoch {p.epoch}, window {i}")
                p.window = i + 1
                if p.window < n:
                    out_of_time = budget.spent()
                    if out_of_time or p.window % cfg.checkpoint_every == 0:
                        p.train_seconds, tick = p.train_seconds + time.perf_counter() - tick, time.perf_counter()
                        self.save()
                    if out_of_time:
                        return False
                if self.rank == 0 and cfg.progress and i % 20 == 0:
                    bar.set_postfix(ppl=f"{_ppl(p.nll_sum / max(p.nll_count, 1)):.1f}")
        p.train_seconds += time.perf_counter() - tick
        return True

    def _end_epoch(self) -> None:
        cfg, p = self.cfg, self.progress
        train_ppl = _ppl(p.nll_sum / max(p.nll_count, 1))
        entry = {"epoch": p.epoch, "lr": self.opt.param_groups[0]["lr"], "train_ppl": train_ppl}
        if self.rank == 0:
            valid = evaluate(self.model, self.valid, batch_size=cfg.eval_batch_size, bptt=cfg.bptt)
            where = f"the end of epoch {p.epoch}"
            _ckpt.check_finite(valid, what="the validation perplexity", where=where, checkpointer=self.ckpt)
            _ckpt.check_not_diverged(valid, self.model.vocab, where=where, checkpointer=self.ckpt)
            entry["valid_ppl"] = valid
        p.history.append(entry)
        p.epoch, p.window, p.state, p.nll_sum, p.nll_count = p.epoch + 1, 0, None, 0.0, 0
        self.save()

    def record(self) -> dict[str, Any]:
        """The finished run's record (rank 0): final perplexities, throughput, history, config."""
        cfg, p = self.cfg, self.progress
        test_ppl = evaluate(self.model, self.test, batch_size=cfg.eval_batch_size, bptt=cfg.bptt)
        _ckpt.check_finite(test_ppl, what="the test perplexity", where="the end", checkpointer=self.ckpt)
        record: dict[str, Any] = {
            "finished": True,
            "dataset": cfg.dataset,
            "config": cfg.config,
            "method": cfg.method,
            "iters": cfg.iters,
            "order": self.model.order,  # the tokens each prediction reads (None: unbounded)
            "cell": cfg.cell,
            "hidden": cfg.hidden,
            "layers": cfg.layers,
            "epochs": cfg.epochs,
            "stable": cfg.stable,
            "valid_ppl": p.history[-1]["valid_ppl"],
            "test_ppl": test_ppl,
            "tokens_per_s": p.trained_tokens / max(p.train_seconds, 1e-9),
            "wall_time_s": p.wall_seconds + time.perf_counter() - self.since,
            "train_seconds": p.train_seconds,
            "profile": _config.profile(),
            "device": _results.device_name(self.device),
            "world_size": self.world,
            "torch_version": torch.__version__,
            "history": p.history,
            "train_config": dataclasses.asdict(cfg),
        }
        if cfg.dataset == "ptb-char":  # character level: bits per character, log2 of the perplexity
            record["valid_bpc"], record["test_bpc"] = math.log2(record["valid_ppl"]), math.log2(record["test_ppl"])
        return record


class _Budget:
    """When to stop early, with the same verdict in every process: a time budget for one call of fit, or
    a Ctrl-C (``stop``)."""

    def __init__(self, seconds: float | None, world: int, stop: _ckpt.GracefulInterrupt):
        self.seconds, self.world, self.stop, self.started = seconds, world, stop, time.perf_counter()

    def spent(self) -> bool:
        if self.seconds is None and self.world == 1:
            return self.stop.requested
        in_time = self.seconds is None or time.perf_counter() - self.started <= self.seconds
        return not _all(in_time and not self.stop.requested, self.world)


def fit(model: RNNLM, corpus, cfg: TrainConfig, *, max_seconds: float | None = None) -> dict[str, Any]:
    """Train ``model`` on ``corpus`` (a :class:`fpcore.data.Corpus`) as ``cfg`` says; return the run's record.

    The record has ``valid_ppl``/``test_ppl`` (final), ``history`` (per-epoch train/valid perplexity and
    lr), ``tokens_per_s`` (training throughput), ``wall_time_s`` and the config; with
    ``cfg.record_name`` it is also written to the results folder (with hardware, versions, commit and the
    configuration's fingerprint), and ``record["path"]`` says where.

    ``max_seconds``: a budget for this call (needs ``cfg.checkpoint``). When it runs out, fit writes a
    checkpoint at the next window and returns ``{"finished": False, "epoch": e, "window": w}``; calling
    it again (with a fresh model) resumes there. Runs longer than one sitting (a GPU lease of 10-minute
    commands, say) are driven this way, and end exactly as an uninterrupted run would.

    Raises, each with a one-line message: ValueError for a bad config, a record name or folder that cannot
    be written to, or a record of that name from another configuration (all before training);
    :class:`fpcore.checkpoint.CheckpointError` for a checkpoint that cannot be resumed;
    :class:`fpcore.checkpoint.TrainingDiverged` when the loss becomes NaN or inf; :class:`RecordNotWritten`
    when the finished run's record cannot be written (the checkpoint keeps the finished state);
    :class:`PeersLost` when another process of a data-parallel run stops answering;
    :class:`fpcore.checkpoint.CheckpointBusy` when another process is training the same checkpoint now.
    """
    if max_seconds is not None and not cfg.checkpoint:
        raise ValueError("max_seconds needs cfg.checkpoint: the run must be resumable")
    if max_seconds is not None and not (math.isfinite(max_seconds) and max_seconds >= 0):
        raise ValueError(f"max_seconds must be a finite number >= 0, got {max_seconds!r}")
    target = record_target(cfg)  # before any training: a bad name or folder costs nothing
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return _fit(model, corpus, cfg, max_seconds, target)
    try:
        return _fit(model, corpus, cfg, max_seconds, target)
    except RuntimeError as err:
        if not _lost_peers(err):
            raise
        where = f"the last checkpoint is {cfg.checkpoint}" if cfg.checkpoint else "this run keeps no checkpoint"
        raise PeersLost(
            f"process {os.environ.get('RANK', '?')}: another process stopped answering for "
            f"{dist_timeout().total_seconds():g} s (FPCORE_DIST_TIMEOUT) or died; {where}: "
            "run the same command again to resume"
        ) from err


def _lost_peers(err: RuntimeError) -> bool:
    """Whether ``err`` is a collective that timed out or lost its connection (not a bug in the model)."""
    text = str(err)
    return isinstance(err, torch.distributed.DistError) or any(
        s in text for s in ("Timed out", "timed out", "Connection closed", "Connection reset", "Broken pipe")
    )


def _fit(model: RNNLM, corpus, cfg: TrainConfig, max_seconds: float | None, target: Path | None) -> dict[str, Any]:
    rank, world, own_group = _dist_info()
    lock = _ckpt.RunLock(cfg.checkpoint if rank == 0 else None)  # process 0 writes the checkpoint
    if not _all(lock.acquire(), world):
        _end_distributed(world, own_group)
        raise lock.busy() if rank == 0 else _ckpt.CheckpointBusy(f"{cfg.checkpoint} is in use (process 0 says why)")
    try:
        return _fit_locked(model, corpus, cfg, max_seconds, target, rank, world, own_group)
    finally:
        lock.release()


def _fit_locked(
    model: RNNLM,
    corpus,
    cfg: TrainConfig,
    max_seconds: float | None,
    target: Path | None,
    rank: int,
    world: int,
    own_group: bool,
) -> dict[str, Any]:
    run = _Run(model, corpus, cfg, rank, world)
    if run.resumed and cfg.progress and rank == 0:
        print(f"resuming from {run.ckpt.describe()}", file=sys.stderr)
    with _ckpt.GracefulInterrupt(enabled=run.ckpt.path is not None) as stop:
        finished = run.train(_Budget(max_seconds, world, stop))
    if not finished:
        _end_distributed(world, own_group)
        p = run.progress
        if stop.requested:
            raise KeyboardInterrupt(
                f"checkpoint {run.ckpt.path} holds epoch {p.epoch}, window {p.window}: run the same training "
                "again to resume"
            )
        return {"finished": False, "epoch": p.epoch, "window": p.window, "checkpoint": str(run.ckpt.path)}
    record = run.record() if rank == 0 else {}
    _end_distributed(world, own_group)
    if target is not None and rank == 0:
        record["path"] = str(_write_record(cfg, record, run))
    return record


def _write_record(cfg: TrainConfig, record: dict[str, Any], run: _Run) -> Path:
    assert cfg.record_name is not None
    try:
        return _results.save_json(
            cfg.record_name,
            record,
            device=run.device,
            fingerprint=cfg.fingerprint(),
            fingerprint_of=record_fingerprint,
        )
    except (OSError, ValueError) as err:
        if run.ckpt.path is not None:
            keep = f"the trained model is safe in {run.ckpt.path}: fix that and run the same training again to write it"
        else:
            keep = "this run kept no checkpoint; the record is in this error's .record"
        raise RecordNotWritten(f"{err}; {keep}", record) from err


# -- data parallel on one machine, with exit codes ----------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(command: list[str], nproc: int, *, grace_s: float = 10.0) -> int:
    """Run ``command`` (``[sys.executable, "-m", "fpcore", "train", ...]``) in ``nproc`` processes on this
    machine, as torchrun would, and return one exit status: 0 when all finished, 3 when all paused (a time
    budget), else 1 (or 130 after Ctrl-C).

    torchrun reports any non-zero exit, a pause included, as a failure (exit 1 and a traceback); this
    launcher keeps the distinction a driver needs. When one process fails, the others get ``grace_s``
    seconds to notice and are then stopped.
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    port = _free_port()
    procs = []
    for rank in range(nproc):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "WORLD_SIZE": str(nproc),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(nproc),
        }
        procs.append(subprocess.Popen(command, env=env))
    codes: dict[int, int] = {}
    failed_at = None
    try:
        while len(codes) < nproc:
            for rank, proc in enumerate(procs):
                if rank not in codes and proc.poll() is not None:
                    codes[rank] = proc.returncode
            if failed_at is None and any(c not in (0, 3) for c in codes.values()):
                failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > grace_s:
                for rank, proc in enumerate(procs):
                    if rank not in codes:
                        proc.kill()
            time.sleep(0.05)
    except KeyboardInterrupt:  # Ctrl-C reached the processes too: each checkpoints at its next window
        try:
            for proc in procs:
                proc.wait(timeout=grace_s * 6)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            for proc in procs:
                proc.kill()
        return 130
    if all(c == 0 for c in codes.values()):
        return 0
    if all(c == 3 for c in codes.values()):
        return 3
    rank, code = next((r, c) for r, c in sorted(codes.items()) if c not in (0, 3))
    how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
    print(f"error: process {rank} of {nproc} {how}", file=sys.stderr)
    return 1


# -- CLI: python -m fpcore train ----------------------------------------------------------------------------
def _per_preset(key: str) -> str:
    return ", ".join(f"{name} {values.get(key, 'all')}" for name, values in PRESETS.items())


def register(sub: argparse._SubParsersAction) -> None:
    from fpcore import cli

    p = sub.add_parser(
        "train",
        help="train a language model (BPTT, Jacobi-k, truncated, Newton; stable or not)",
        description="Train an RNN language model and write its record (see --record). The run checkpoints as it "
        "goes and resumes when the same command is run again; --max-minutes pauses it with exit 3.",
    )
    p.add_argument("--dataset", choices=("ptb", "ptb-char", "wikitext-2"), default="ptb", help="corpus (default ptb)")
    p.add_argument("--preset", choices=tuple(PRESETS), default="small", help="model size and schedule (default small)")
    p.add_argument("--cell", choices=("lstm", "gru", "rnn"), default="lstm", help="recurrent cell (default lstm)")
    p.add_argument("--method", choices=METHODS, default="bptt", help="how the recurrence is evaluated (default bptt)")
    p.add_argument(
        "--iters",
        type=cli.positive(int),
        default=None,
        help="k for jacobi, truncated and jacobi_carry (needed by them; no default)",
    )
    p.add_argument("--stable", action="store_true", help="project onto stable weights after every step (paper B)")
    p.add_argument(
        "--epochs", type=cli.positive(int), default=None, help=f"default: the preset's ({_per_preset('epochs')})"
    )
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd", help="default sgd (with the lr schedule)")
    p.add_argument("--lr", type=cli.positive(float), default=None, help=f"default: the preset's ({_per_preset('lr')})")
    p.add_argument("--seed", type=cli.non_negative(int), default=0, help="model init and dropout (default 0)")
    p.add_argument(
        "--max-train-tokens",
        type=cli.positive(int),
        default=None,
        help=f"train on the first N tokens only (default: the preset's: {_per_preset('max_train_tokens')})",
    )
    p.add_argument(
        "--name",
        type=cli.record_name,
        default=None,
        help="record file stem (default: lm_<dataset>_<preset>_<cell>_<method>[_k<k>][_stable]_<profile>, "
        "plus a fingerprint of the settings when they differ from the preset's)",
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint file, resumed from if it exists (default <name>.pt in $FPCORE_CHECKPOINT_DIR or checkpoints/)",
    )
    p.add_argument(
        "--max-minutes",
        type=cli.positive(float),
        default=None,
        help="stop after this long with a checkpoint (exit 3); run the same command again to resume (default: none)",
    )
    p.add_argument("--device", type=cli.device, default=None, help="cpu, cuda, cuda:N or auto (default auto)")
    p.add_argument(
        "--nproc-per-node",
        type=cli.positive(int),
        default=1,
        help="data-parallel processes on this machine, like torchrun, but a pause is exit 3 (default 1)",
    )
    p.set_defaults(func=_cli_train, _parser=p)


def _cli_train(args) -> int:
    from fpcore import cli
    from fpcore.data import load_corpus

    if args.method in ITERATED and args.iters is None:
        args._parser.error(f"--method {args.method} needs --iters k")
    if args.method not in ITERATED and args.iters is not None:
        args._parser.error(f"--iters is for --method {', '.join(ITERATED)}, not {args.method}")
    if args.nproc_per_node > 1 and "WORLD_SIZE" not in os.environ:
        command = [sys.executable, "-m", "fpcore", *cli.without_option(args.argv, "--nproc-per-node")]
        return launch(command, args.nproc_per_node)
    overrides = {
        k: v
        for k, v in dict(epochs=args.epochs, lr=args.lr, max_train_tokens=args.max_train_tokens).items()
        if v is not None
    }
    cfg = TrainConfig.preset(
        args.preset,
        dataset=args.dataset,
        cell=args.cell,
        method=args.method,
        iters=args.iters,
        stable=args.stable,
        optimizer=args.optimizer,
        seed=args.seed,
        device=args.device,
        **overrides,
    )
    cfg.record_name = args.name or default_name(cfg)
    cfg.checkpoint = args.checkpoint or str(_ckpt.checkpoint_path(cfg.record_name))  # finished work stays resumable
    record_target(cfg)  # before loading the corpus: a bad name or folder fails at once
    corpus = load_corpus(args.dataset)
    max_seconds = None if args.max_minutes is None else 60 * args.max_minutes
    record = fit(build_model(cfg, corpus.vocab_size), corpus, cfg, max_seconds=max_seconds)
    if not record.get("finished", True):
        if int(os.environ.get("RANK", "0")) == 0:
            print(
                f"paused at epoch {record['epoch']}, window {record['window']}; checkpoint {record['checkpoint']}: "
                "run the same command again to resume"
            )
            if "TORCHELASTIC_RUN_ID" in os.environ:
                print("(torchrun reports this pause as a failure; --nproc-per-node N reports it as exit 3)")
        return 3
    if record:
        keys = ("valid_ppl", "test_ppl", "tokens_per_s", "wall_time_s", "path")
        print(json.dumps({k: record[k] for k in keys if k in record}, indent=2))
    return 0
