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

Checkpoints: every ``checkpoint_every`` windows and at each epoch end, the model, optimizer, carried
state, position (epoch, window), random-number states and history are written atomically to
``cfg.checkpoint``. ``fit`` resumes from that file when it exists, and ends exactly where an
uninterrupted run would (same batches, same dropout masks, same state).

Data parallel: under ``torchrun`` (``WORLD_SIZE`` > 1) each process takes every world-th stream and
gradients are averaged by DistributedDataParallel; rank 0 evaluates, checkpoints and writes results.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fpcore import config as _config
from fpcore.data import LMBatches, batchify
from fpcore.models.lm import METHODS, RNNLM, check_token_ids, detach_state

__all__ = ["TrainConfig", "PRESETS", "build_model", "fit", "evaluate"]

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
    clip: float = 5.0
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
    record_name: str | None = None  # results/<record_name>.json (None: no record)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        for name in ("hidden", "layers", "bptt", "batch_size", "eval_batch_size", "epochs", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def preset(cls, name: str, **overrides) -> TrainConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], "config": name, **overrides})

    def lr_at(self, epoch: int) -> float:
        """Learning rate of 1-based ``epoch``: lr, then divided by lr_decay each epoch after decay_after."""
        return self.lr / self.lr_decay ** max(0, epoch - self.decay_after)


def run_name(
    dataset: str,
    preset: str,
    cell: str = "lstm",
    method: str = "bptt",
    iters: int | None = None,
    stable: bool = False,
    profile: str | None = None,
) -> str:
    """The one name of a run, for its record (results/<name>.json) and checkpoint (checkpoints/<name>.pt),
    shared by the CLI and the notebooks' grids so that each finds the other's runs:
    ``lm_<dataset>_<preset>_<cell>_<method>[_k<iters>][_stable]_<profile>``."""
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


def load_trained(name: str, vocab: int, device=None) -> tuple[RNNLM, TrainConfig]:
    """The model a run left in checkpoints/<name>.pt (its state after the last window it trained) and
    its config. Raises FileNotFoundError when the checkpoint is not on this machine."""
    path = Path("checkpoints") / f"{name}.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint of run {name!r} on this machine (checkpoints/ is not in git)")
    saved = torch.load(path, map_location=device or "cpu", weights_only=False)
    cfg = TrainConfig(**saved["config"])
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


def _loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())  # mean over B*T tokens


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
    return math.exp(total / count)


# -- checkpoints -------------------------------------------------------------------------------------------
def _save_checkpoint(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)  # atomic: a kill never leaves a half-written checkpoint
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- distributed ---------------------------------------------------------------------------------------------
def _dist_info() -> tuple[int, int, bool]:
    """(rank, world size, whether this call started the process group)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    started = False
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
        started = True
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world, started


def fit(model: RNNLM, corpus, cfg: TrainConfig, *, max_seconds: float | None = None) -> dict[str, Any]:
    """Train ``model`` on ``corpus`` (a :class:`fpcore.data.Corpus`) as ``cfg`` says; return the run's record.

    The record has ``valid_ppl``/``test_ppl`` (final), ``history`` (per-epoch train/valid perplexity and
    lr), ``tokens_per_s`` (training throughput), ``wall_time_s`` and the config; with
    ``cfg.record_name`` it is also written to results/ (with hardware, versions, commit).

    ``max_seconds``: a budget for this call (needs ``cfg.checkpoint``). When it runs out, fit writes a
    checkpoint at the next window and returns ``{"finished": False, "epoch": e, "window": w}``; calling
    it again (with a fresh model) resumes there. Runs longer than one sitting (a GPU lease of 10-minute
    commands, say) are driven this way, and end exactly as an uninterrupted run would.
    """
    if max_seconds is not None and not cfg.checkpoint:
        raise ValueError("max_seconds needs cfg.checkpoint: the run must be resumable")
    from tqdm.auto import tqdm

    from fpcore import stability
    from fpcore.results import device_name, save_json

    rank, world, own_group = _dist_info()
    device = _config.device(cfg.device)
    model.to(device)
    train = corpus.train[: cfg.max_train_tokens] if cfg.max_train_tokens else corpus.train
    valid = corpus.valid[: cfg.max_eval_tokens] if cfg.max_eval_tokens else corpus.valid
    test = corpus.test[: cfg.max_eval_tokens] if cfg.max_eval_tokens else corpus.test
    for split, ids in (("train", train), ("valid", valid), ("test", test)):
        check_token_ids(ids, model.vocab, f"the {split} tokens")
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the {world} processes")
    streams = batchify(train, cfg.batch_size)[rank::world]  # (B / world, L): this process's streams
    batches = LMBatches.from_streams(streams.to(device), cfg.bptt)

    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr_at(1)) if cfg.optimizer == "sgd" else torch.optim.Adam(params, lr=cfg.lr)
    if cfg.stable:
        stability.project_after_step(opt, model)

    ckpt = Path(cfg.checkpoint) if cfg.checkpoint else None
    epoch, start_window, state, history, trained_tokens, train_seconds = 1, 0, None, [], 0, 0.0
    nll_sum, nll_count = 0.0, 0
    torch.manual_seed(cfg.seed + 1000 * rank)
    if ckpt is not None and ckpt.exists():
        saved = torch.load(ckpt, map_location=device, weights_only=False)
        if saved["config"] != dataclasses.asdict(cfg):
            raise ValueError(f"{ckpt} was written by another configuration; delete it or change cfg.checkpoint")
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        epoch, start_window, state = saved["epoch"], saved["window"], saved["state"]
        history, trained_tokens, train_seconds = saved["history"], saved["trained_tokens"], saved["train_seconds"]
        nll_sum, nll_count = saved["nll_sum"], saved["nll_count"]
        _set_rng_state(saved["rng"])

    def checkpoint(window: int) -> None:
        if ckpt is None or rank != 0:
            return
        _save_checkpoint(
            ckpt,
            dict(
                config=dataclasses.asdict(cfg),
                model=model.state_dict(),
                optimizer=opt.state_dict(),
                epoch=epoch,
                window=window,
                state=state,
                history=history,
                trained_tokens=trained_tokens,
                train_seconds=train_seconds,
                nll_sum=nll_sum,
                nll_count=nll_count,
                rng=_rng_state(),
            ),
        )

    started = time.perf_counter()

    def out_of_time() -> bool:
        if max_seconds is None:
            return False
        flag = torch.tensor([float(time.perf_counter() - started > max_seconds)])
        if world > 1:  # every process stops at the same window
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def pause(window: int) -> dict[str, Any]:
        _end_distributed(world, own_group)
        return {"finished": False, "epoch": epoch, "window": window, "checkpoint": str(ckpt)}

    while epoch <= cfg.epochs:
        for group in opt.param_groups:
            if cfg.optimizer == "sgd":
                group["lr"] = cfg.lr_at(epoch)
        model.train()
        bar = tqdm(
            batches.iter_from(start_window),
            total=len(batches) - start_window,
            initial=0,
            leave=False,
            desc=f"epoch {epoch}/{cfg.epochs}",
            disable=not cfg.progress or rank != 0,
        )
        tick = time.perf_counter()
        for i, (x, y) in enumerate(bar, start=start_window):
            state = detach_state(state)
            logits, state = net(x, state)
            loss = _loss(logits, y)
            opt.zero_grad(set_to_none=True)
            (loss * y.shape[1] if cfg.sum_over_time else loss).backward()
            if cfg.clip:
                nn.utils.clip_grad_norm_(params, cfg.clip)
            opt.step()
            nll_sum += float(loss.detach()) * y.numel()
            nll_count += y.numel()
            trained_tokens += y.numel() * world
            if (i + 1) % cfg.checkpoint_every == 0 and i + 1 < len(batches):
                train_seconds += time.perf_counter() - tick
                tick = time.perf_counter()
                checkpoint(i + 1)
            if rank == 0 and cfg.progress and i % 20 == 0:
                bar.set_postfix(ppl=f"{math.exp(nll_sum / max(nll_count, 1)):.1f}")
            if i + 1 < len(batches) and out_of_time():
                train_seconds += time.perf_counter() - tick
                checkpoint(i + 1)
                bar.close()
                return pause(i + 1)
        train_seconds += time.perf_counter() - tick
        entry = {"epoch": epoch, "lr": opt.param_groups[0]["lr"], "train_ppl": math.exp(nll_sum / max(nll_count, 1))}
        if rank == 0:
            entry["valid_ppl"] = evaluate(model, valid, batch_size=cfg.eval_batch_size, bptt=cfg.bptt)
        history.append(entry)
        epoch, start_window, state, nll_sum, nll_count = epoch + 1, 0, None, 0.0, 0
        checkpoint(0)
        if epoch <= cfg.epochs and out_of_time():
            return pause(0)

    record: dict[str, Any] = {}
    if rank == 0:
        record = {
            "finished": True,
            "dataset": cfg.dataset,
            "config": cfg.config,
            "method": cfg.method,
            "iters": cfg.iters,
            "order": model.order,  # the tokens each prediction reads (None: unbounded)
            "cell": cfg.cell,
            "hidden": cfg.hidden,
            "layers": cfg.layers,
            "epochs": cfg.epochs,
            "stable": cfg.stable,
            "valid_ppl": history[-1]["valid_ppl"],
            "test_ppl": evaluate(model, test, batch_size=cfg.eval_batch_size, bptt=cfg.bptt),
            "tokens_per_s": trained_tokens / max(train_seconds, 1e-9),
            "wall_time_s": time.perf_counter() - started,
            "train_seconds": train_seconds,
            "profile": _config.profile(),
            "device": device_name(device),
            "world_size": world,
            "torch_version": torch.__version__,
            "history": history,
            "train_config": dataclasses.asdict(cfg),
        }
        if cfg.dataset == "ptb-char":  # character level: bits per character, log2 of the perplexity
            record["valid_bpc"], record["test_bpc"] = math.log2(record["valid_ppl"]), math.log2(record["test_ppl"])
        if cfg.record_name:
            record["path"] = str(save_json(cfg.record_name, record, device=device))
    _end_distributed(world, own_group)
    return record


def _end_distributed(world: int, own_group: bool) -> None:
    if world > 1:
        torch.distributed.barrier()  # no process exits while another still talks to it
        if own_group:
            torch.distributed.destroy_process_group()


# -- CLI: python -m fpcore train ----------------------------------------------------------------------------
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a language model (BPTT, Jacobi-k, truncated, Newton; stable or not)",
        description="Train an RNN language model and write its record to results/.",
    )
    p.add_argument("--dataset", choices=("ptb", "ptb-char", "wikitext-2"), default="ptb")
    p.add_argument("--preset", choices=tuple(PRESETS), default="small", help="model size and schedule")
    p.add_argument("--cell", choices=("lstm", "gru", "rnn"), default="lstm")
    p.add_argument("--method", choices=METHODS, default="bptt")
    p.add_argument("--iters", type=int, default=None, help="k for jacobi, truncated and jacobi_carry")
    p.add_argument("--stable", action="store_true", help="project onto stable weights after every step")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default=None, help="checkpoint file: resumed from if it exists")
    p.add_argument("--max-train-tokens", type=int, default=None)
    p.add_argument("--name", default=None, help="results/<name>.json (default: from the settings)")
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop after this long with a checkpoint (exit 3); run the same command again to resume",
    )
    p.set_defaults(func=_cli_train)


def _cli_train(args) -> int:
    from fpcore.data import load_corpus

    overrides = {
        k: v
        for k, v in dict(epochs=args.epochs, lr=args.lr, max_train_tokens=args.max_train_tokens).items()
        if v is not None
    }
    name = args.name or run_name(args.dataset, args.preset, args.cell, args.method, args.iters, args.stable)
    cfg = TrainConfig.preset(
        args.preset,
        dataset=args.dataset,
        cell=args.cell,
        method=args.method,
        iters=args.iters,
        stable=args.stable,
        optimizer=args.optimizer,
        seed=args.seed,
        checkpoint=args.checkpoint,
        record_name=name,
        **overrides,
    )
    corpus = load_corpus(args.dataset)
    if args.max_minutes is not None and cfg.checkpoint is None:
        cfg.checkpoint = str(Path("checkpoints") / f"{name}.pt")
    max_seconds = None if args.max_minutes is None else 60 * args.max_minutes
    record = fit(build_model(cfg, corpus.vocab_size), corpus, cfg, max_seconds=max_seconds)
    if record and not record.get("finished", True):
        print(
            f"paused at epoch {record['epoch']}, window {record['window']}; checkpoint {record['checkpoint']}: "
            "run the same command again to resume"
        )
        return 3
    if record:
        print(
            json.dumps(
                {k: record[k] for k in ("valid_ppl", "test_ppl", "tokens_per_s", "wall_time_s", "path") if k in record},
                indent=2,
            )
        )
    return 0
