"""The training loop, one for every objective (objectives.py: cross-entropy, self-critical CIDEr-D):
AdamW with warmup + cosine decay, gradient clipping, per-epoch validation (CIDEr-D, BLEU-4), best
checkpoint by val CIDEr, early stopping, TensorBoard, resume, and DistributedDataParallel under torchrun.

RUN/ holds config.yaml (resolved), last.pt (everything to resume), best.pt (the captioner: one file),
history.json, curves.png and tb/ (TensorBoard events).
"""

from __future__ import annotations

import math
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import yaml
from tqdm.auto import tqdm

from capgen.checkpoint import (
    CheckpointError,
    load_checkpoint,
    nonfinite_tensor,
    read_resume,
    restore_weights,
    save_checkpoint,
    training_payload,
)
from capgen.config import config_to_dict
from capgen.data.prepared import PreparedDataset
from capgen.errors import CapgenError, say_above_bar
from capgen.features import FeatureCache, Features
from capgen.models.finetuned import decoder_of
from capgen.parallel import dist_info
from capgen.training.callbacks import (
    BestCheckpoint,
    Callback,
    EarlyStopping,
    EpochHook,
    HistoryFiles,
    LastCheckpoint,
    Record,
    Report,
    TensorBoard,
    Validate,
    patience_spent,
)
from capgen.training.config import RunConfig, load_run_config
from capgen.training.data import CaptionPairs
from capgen.training.finetune import build_model
from capgen.training.lock import run_folder_locked
from capgen.training.objectives import Batch, CrossEntropy, SelfCritical
from capgen.training.tag_model import warm_start
from capgen.training.text_batches import make_mixer, uses_tags


class TrainingDiverged(CapgenError):
    """The weights stopped being finite (NaN or infinite loss or gradients): the run stops at that step."""


@dataclass
class TrainResult:
    run_dir: Path
    best_checkpoint: Path
    best_epoch: int
    best_metrics: dict
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    stopped_early: bool = False
    already_finished: bool = False  # resumed a run that had ended: nothing was trained or written


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, weight_decay: float, encoder_lr: float | None = None) -> list[dict]:
    """AdamW groups as nanoGPT's configure_optimizers: decay the matrices of linear/recurrent layers,
    never biases, norms, embeddings or position tables (decaying those only shrinks them toward 0).
    Fine-tuned encoder blocks (a FinetunedModel's `top`) get groups of their own at `encoder_lr`:
    pretrained weights move less than a decoder's."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_embedding = "embedding" in name or name.endswith("region_pos")
        groups.setdefault((name.startswith("top."), p.dim() >= 2 and not is_embedding), []).append(p)
    # Decoder groups first and always both, in the order older runs' optimizer states have.
    out = [
        {"params": groups.get((False, decay), []), "weight_decay": weight_decay if decay else 0.0}
        for decay in (True, False)
    ]
    for decay in (True, False):
        if (True, decay) in groups:
            out.append(
                {
                    "params": groups[(True, decay)],
                    "weight_decay": weight_decay if decay else 0.0,
                    **({"lr": encoder_lr} if encoder_lr is not None else {}),
                }
            )
    return out


@contextmanager
def _graceful_interrupt():
    """First Ctrl-C (or SIGTERM) asks the loop to checkpoint at the end of the current step; a second
    one interrupts at once."""
    flag = {"stop": False}

    def handler(signum, frame):
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"] = True

    try:
        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: no handlers, plain KeyboardInterrupt semantics
        old = {}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _prepare_run_dir(out: Path, cfg: RunConfig, resume: bool) -> dict | None:
    """Returns the resume state (or None) after checking RUN against the config."""
    cfg_path, last = out / "config.yaml", out / "last.pt"
    if resume:
        if not last.is_file():
            raise CapgenError(f"{out}: nothing to resume (no last.pt); start without --resume")
        # Read back through the typed config, so settings added since the run began take their
        # defaults instead of making every older run un-resumable.
        saved = load_run_config(cfg_path).to_dict() if cfg_path.is_file() else None
        if saved != cfg.to_dict():
            raise CapgenError(
                f"{out}/config.yaml differs from the requested config; resume with the run's own "
                f"config (omit --config/--set) or train into a new --out"
            )
        return read_resume(last)
    if last.is_file() or (out / "best.pt").is_file():
        raise CapgenError(f"{out}: already holds a training run; pass --resume to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    from capgen.io import atomic_path

    with atomic_path(cfg_path) as tmp:
        tmp.write_text(yaml.safe_dump(cfg.to_file_dict(), sort_keys=False))
    return None


@dataclass
class Run:
    """The loop's state, which the callbacks read and update (callbacks.py)."""

    cfg: RunConfig
    out: Path
    model: torch.nn.Module
    vocab: object
    enc: dict
    optim: torch.optim.Optimizer
    sched: object
    history: list[dict]
    best: dict
    started: float = field(default_factory=time.perf_counter)
    metrics: dict = field(default_factory=dict)  # the last validation's
    stop: bool = False  # set by EarlyStopping

    def save_last(self, epoch: int, step_in_epoch: int, loss_sum: float = 0.0, steps: int = 0) -> None:
        """last.pt: weights, optimiser, scheduler, RNG and the position in the epoch, so resume is exact."""
        resume = {
            "optimizer": self.optim.state_dict(),
            "scheduler": self.sched.state_dict(),
            "rng": torch.get_rng_state(),
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "partial_loss_sum": loss_sum,
            "partial_steps": steps,
            "history": self.history,
            "best": self.best,
        }
        extra = {"run_config": self.cfg.to_dict()}
        save_checkpoint(self.out / "last.pt", training_payload(self.model, self.vocab, self.enc, extra, resume))


@run_folder_locked
def train(
    cfg: RunConfig,
    data: PreparedDataset,
    cache: FeatureCache,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train into run folder `out` (see the module docstring).

    on_epoch: called on rank 0 with each epoch's history row ({"epoch", "train_loss", "CIDEr",
      "BLEU-4", ...}) once that epoch's checkpoints are on disk. An exception it raises (e.g. a
      tuner pruning the trial) ends training and propagates; `--resume` would continue the run.
    callbacks: more Callbacks (callbacks.py), called on rank 0 after the run's own.
    """
    tc, out = cfg.train, Path(out)
    dist = dist_info()
    if tc.threads:
        torch.set_num_threads(tc.threads)
    for split in ("train", "val"):
        cache.check(data, split)
    init = _init_checkpoint(tc.init, data.vocab) if tc.init else None
    if init is not None:  # the architecture is the init checkpoint's, whatever the config named
        arch = decoder_of(init.model)
        cfg = RunConfig(arch.name, config_to_dict(arch.config), tc)
    torch.manual_seed(tc.seed)
    # Checks the cache's kind against finetune_blocks and --init before the run folder is touched.
    model = build_model(cfg.model, cfg.model_config, data.vocab, cache, tc.finetune_blocks, init, tc.init)
    state = _prepare_run_dir(out, cfg, resume) if dist.rank == 0 else None
    state = dist.broadcast(state)
    if state is None and tc.warm_start:
        _warm_start(model, tc.warm_start, data.vocab, progress and dist.rank == 0)
    train_records = data.split("train")
    pairs = CaptionPairs(train_records, data.vocab, tc.max_caption_len)
    steps_per_epoch = len(pairs.epoch_batches(0, tc.seed, tc.batch_size, dist.rank, dist.world_size))
    optim, sched = _optimiser(model, tc, steps_per_epoch * tc.epochs)
    run = Run(cfg, out, model, data.vocab, cache.encoder_spec, optim, sched, [], {"epoch": -1, "CIDEr": -1.0})
    epoch, skip, partial = 0, 0, (0.0, 0)  # partial: loss sum and steps of an epoch interrupted part-way
    if state is not None:
        epoch, skip, partial = _restore(run, state)
        if epoch >= tc.epochs or patience_spent(epoch, run.best, tc.patience):
            # Before any file is opened: resuming a finished run changes nothing (not even tb/).
            stopped = epoch < tc.epochs
            return TrainResult(out, out / "best.pt", run.best["epoch"], run.best, run.history, 0.0, stopped, True)
    loop = _Loop(run, data, pairs, train_records, steps_per_epoch, progress)
    loop.load_features(cache)
    if dist.rank == 0:
        loop.callbacks = _callbacks(run, loop.val_features(cache), progress, on_epoch) + list(callbacks)
    stopped_early = loop.epochs(epoch, skip, partial)
    for cb in loop.callbacks:
        cb.on_end(run)
    dist.barrier()
    history, best = dist.broadcast(run.history), dist.broadcast(run.best)
    seconds = time.perf_counter() - run.started
    return TrainResult(out, out / "best.pt", best["epoch"], best, history, seconds, stopped_early)


def _warm_start(model, path: str, vocab, say: bool) -> None:
    counts = warm_start(model, path, vocab.itos)
    if say:
        say_above_bar(
            f"warm start from {path}: {counts['tensors']} weights, {counts['words']} words kept, "
            f"{counts['new_words']} new",
            sys.stdout,
        )


def _optimiser(model, tc, total_steps: int):
    """AdamW (param_groups) with linear warmup and cosine decay over the run's steps."""
    optim = torch.optim.AdamW(param_groups(model, tc.weight_decay, tc.encoder_lr), lr=tc.lr)
    decay = lambda s: lr_lambda(s, tc.warmup_steps, total_steps, tc.min_lr_ratio)  # noqa: E731
    return optim, torch.optim.lr_scheduler.LambdaLR(optim, decay)


def _restore(run: Run, state: dict) -> tuple[int, int, tuple[float, int]]:
    """A resumed run's weights, optimiser, scheduler and RNG; returns (epoch, step in it, partial sums)."""
    r = state["resume"]
    restore_weights(run.model, state)
    run.optim.load_state_dict(r["optimizer"])
    run.sched.load_state_dict(r["scheduler"])
    torch.set_rng_state(r["rng"])
    run.history, run.best = r["history"], r["best"]
    return r["epoch"], r["step_in_epoch"], (r["partial_loss_sum"], r["partial_steps"])


def _callbacks(run: Run, val, progress: bool, on_epoch) -> list[Callback]:
    """The run's own epoch-end concerns, in the order they must happen (best.pt before last.pt, the
    caller's hook once both are on disk)."""
    tc = run.cfg.train
    writer = _tensorboard(run.out / "tb")
    return [
        Validate(*val, tc.val_decode_config()),
        Record(),
        *([TensorBoard(writer)] if writer is not None else []),
        *([Report()] if progress else []),
        BestCheckpoint(),
        EarlyStopping(tc.patience),
        LastCheckpoint(),
        HistoryFiles(),
        *([EpochHook(on_epoch)] if on_epoch is not None else []),
    ]


class _Loop:
    """Epochs of optimiser steps over the training pairs (and text rows), with graceful interrupts."""

    def __init__(self, run: Run, data, pairs: CaptionPairs, records, steps_per_epoch: int, progress: bool):
        tc = run.cfg.train
        self.run, self.data, self.pairs, self.records, self.tc = run, data, pairs, records, tc
        self.steps_per_epoch, self.progress, self.dist = steps_per_epoch, progress, dist_info()
        self.callbacks: list[Callback] = []
        self.objective = (
            SelfCritical(data.vocab, records, tc.scst_samples, tc.scst_max_len)
            if tc.objective == "scst"
            else CrossEntropy(data.vocab, tc.label_smoothing)
        )
        self.ddp = torch.nn.parallel.DistributedDataParallel(run.model) if self.dist.active else run.model

    def load_features(self, cache) -> None:
        self.feats = Features.load(cache, self.records, memory_mb=self.tc.feature_memory_mb)
        model, tc = self.run.model, self.tc
        self.mixer = make_mixer(model, self.data, self.records, self.feats, tc) if uses_tags(tc) else None

    def val_features(self, cache) -> tuple[list, object]:
        records = self.data.split("val")[: self.tc.val_images or None]
        return records, Features.load(cache, records, memory_mb=self.tc.feature_memory_mb)

    def epochs(self, epoch: int, skip: int, partial: tuple[float, int]) -> bool:
        """Train from step `skip` of `epoch` to the end; True when early stopping ended it."""
        run, dist = self.run, self.dist
        with _graceful_interrupt() as interrupt:
            while epoch < self.tc.epochs:
                t0 = time.perf_counter()
                loss_sum, n_steps, n_caps, logs = self.epoch(epoch, skip, partial, interrupt)
                skip, partial = 0, (0.0, 0)
                epoch_loss = dist.all_reduce_mean(loss_sum / max(n_steps, 1))
                epoch += 1
                if dist.rank == 0:
                    row = {
                        "epoch": epoch,
                        "train_loss": epoch_loss,
                        "captions_per_s": n_caps * dist.world_size / (time.perf_counter() - t0),
                        **{f"train_{k}": v for k, v in logs.items() if k != "loss"},
                    }
                    for cb in self.callbacks:
                        cb.on_epoch_end(run, row)
                stop = dist.broadcast(run.stop)
                if interrupt["stop"]:
                    raise KeyboardInterrupt
                if stop:
                    return True
        return False

    def epoch(self, epoch: int, skip: int, partial: tuple[float, int], interrupt: dict):
        """One epoch from step `skip`: (loss sum, steps, captions, mean objective scalars)."""
        run, tc, dist = self.run, self.tc, self.dist
        batches = self.pairs.epoch_batches(epoch, tc.seed, tc.batch_size, dist.rank, dist.world_size)
        self.ddp.train()
        (loss_sum, n_steps), n_caps, t0 = partial, 0, time.perf_counter()
        logs_sum: dict[str, float] = {}  # objective-specific scalars (reward...) of this epoch's steps
        logs_n = 0
        hidden = not self.progress or dist.rank != 0
        desc = f"epoch {epoch + 1}/{tc.epochs}"
        bar = tqdm(batches[skip:], desc=desc, unit="batch", disable=hidden, dynamic_ncols=True)
        for i, idx in enumerate(bar, start=skip):
            loss, logs = self.step(self.batch(idx, epoch, i))
            _check_diverged(run.model, run.out, epoch, i, len(batches), loss, tc.lr)
            loss_sum, n_steps, n_caps = loss_sum + loss, n_steps + 1, n_caps + len(idx)
            logs_sum, logs_n = {k: logs_sum.get(k, 0.0) + v for k, v in logs.items()}, logs_n + 1
            rate = n_caps * dist.world_size / (time.perf_counter() - t0)
            extra = {"reward": f"{logs['reward']:.3f}"} if "reward" in logs else {}
            bar.set_postfix(loss=f"{loss:.3f}", caps_s=f"{rate:.0f}", **extra)
            for cb in self.callbacks:
                cb.on_step(run, epoch * self.steps_per_epoch + i, logs)
            if i + 1 == len(batches):
                break  # the epoch-end checkpoint covers an interrupt at the last step
            periodic = tc.save_every_steps and (i + 1) % tc.save_every_steps == 0
            asked = interrupt["stop"]  # read once: a signal may land between two reads
            if (asked or periodic) and dist.rank == 0:
                run.save_last(epoch, i + 1, loss_sum, n_steps)
            if asked:
                bar.close()
                raise KeyboardInterrupt
        bar.close()
        return loss_sum, n_steps, n_caps, {k: v / max(logs_n, 1) for k, v in logs_sum.items()}

    def batch(self, idx, epoch: int, i: int) -> Batch:
        rows, image_index, caps = self.pairs.batch(idx)
        pooled, grid = self.feats.batch(rows)  # (I, D), (I, R, D)
        images = [self.records[r].image for r in rows.tolist()]
        if self.mixer is None:
            return Batch(pooled, grid, image_index, caps, images)
        with torch.no_grad():  # + text-only photos; image / tag dropout (text_batches.py)
            probs = self.run.model.tags.word_probs(pooled)
        pooled, grid, image_index, caps, probs, shown = self.mixer.extend(
            pooled, grid, image_index, caps, probs, epoch, i
        )
        return Batch(pooled, grid, image_index, caps, images, probs, shown)

    def step(self, batch: Batch) -> tuple[float, dict[str, float]]:
        """One optimiser step on `batch`: (its loss, the objective's scalars)."""
        run, tc = self.run, self.tc
        total_loss, logs = self.objective(self.ddp, run.model, batch)
        run.optim.zero_grad(set_to_none=True)
        total_loss.backward()
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), tc.grad_clip)
        run.optim.step()
        run.sched.step()
        return logs["loss"], logs


def _check_diverged(model, out: Path, epoch: int, i: int, n: int, loss: float, lr: float) -> None:
    """Stop at the step whose update left a weight NaN or infinite, before anything saves or
    validates it. The weights, not the loss, decide: DDP all-reduces the gradients, so every rank
    holds the same weights and stops at the same step (a NaN loss on one rank reaches them all)."""
    bad = nonfinite_tensor(model.named_parameters())
    if bad is None:
        return
    raise TrainingDiverged(
        f"{out}: training diverged at epoch {epoch + 1}, step {i + 1} of {n} (loss {loss:.4g}; "
        f"weight {bad!r} is no longer finite): stopped there, the checkpoints from before it are "
        f"kept; lower lr (now {lr:g}) or raise warmup_steps"
    )


def _init_checkpoint(path: str, vocab):
    """Checkpoint `path`, which must fit this dataset's vocabulary (its features: build_model checks)."""
    ck = load_checkpoint(path)
    if ck.vocab.itos != vocab.itos:
        raise CheckpointError(
            f"{path}: trained on another vocabulary ({len(ck.vocab)} words) than this dataset "
            f"({len(vocab)} words); --init needs a checkpoint trained on the same prepared data"
        )
    return ck


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency; tolerate a trimmed install
        return None
    return SummaryWriter(str(path))
