"""The training loop, one for every objective (objectives.py: cross-entropy, self-critical CIDEr-D):
AdamW with warmup + cosine decay, gradient clipping, per-epoch validation (CIDEr-D, BLEU-4), best
checkpoint by val CIDEr, early stopping, TensorBoard, resume, and DistributedDataParallel under torchrun.

RUN/ holds config.yaml (resolved), last.pt (everything to resume), best.pt (the captioner: one file),
history.json, curves.png and tb/ (TensorBoard events).
"""

from __future__ import annotations

import math
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import yaml
from tqdm.auto import tqdm

from capgen.checkpoint import (
    CheckpointError,
    load_checkpoint,
    model_payload,
    nonfinite_tensor,
    read_resume,
    restore_weights,
    save_checkpoint,
    training_payload,
)
from capgen.config import config_to_dict
from capgen.data.prepared import PreparedDataset
from capgen.errors import CapgenError
from capgen.features import FeatureCache, Features
from capgen.io import write_json
from capgen.models.finetuned import decoder_of
from capgen.parallel import dist_info
from capgen.training.config import RunConfig, load_run_config
from capgen.training.data import CaptionPairs
from capgen.training.finetune import build_model
from capgen.training.lock import run_folder_locked
from capgen.training.objectives import Batch, CrossEntropy, SelfCritical
from capgen.training.tag_model import warm_start
from capgen.training.text_batches import make_mixer, uses_tags
from capgen.training.validate import validate


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
        tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return None


@run_folder_locked
def train(
    cfg: RunConfig,
    data: PreparedDataset,
    cache: FeatureCache,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train into run folder `out` (see the module docstring).

    on_epoch: called on rank 0 with each epoch's history row ({"epoch", "train_loss", "CIDEr",
      "BLEU-4", ...}) once that epoch's checkpoints are on disk. An exception it raises (e.g. a
      tuner pruning the trial) ends training and propagates; `--resume` would continue the run.
    """
    tc, out = cfg.train, Path(out)
    dist = dist_info()
    if tc.threads:
        torch.set_num_threads(tc.threads)
    for split in ("train", "val"):
        cache.check(data, split)
    vocab, enc = data.vocab, cache.encoder_spec
    init = _init_checkpoint(tc.init, vocab) if tc.init else None
    if init is not None:  # the architecture is the init checkpoint's, whatever the config named
        arch = decoder_of(init.model)
        cfg = RunConfig(arch.name, config_to_dict(arch.config), tc)
    torch.manual_seed(tc.seed)
    # Checks the cache's kind against finetune_blocks and --init before the run folder is touched.
    model = build_model(cfg.model, cfg.model_config, vocab, cache, tc.finetune_blocks, init, tc.init)
    state = _prepare_run_dir(out, cfg, resume) if dist.rank == 0 else None
    state = dist.broadcast(state)
    if state is None and tc.warm_start:
        counts = warm_start(model, tc.warm_start, vocab.itos)
        if progress and dist.rank == 0:
            tqdm.write(
                f"warm start from {tc.warm_start}: {counts['tensors']} weights, {counts['words']} words "
                f"kept, {counts['new_words']} new"
            )
    train_records = data.split("train")
    pairs = CaptionPairs(train_records, vocab, tc.max_caption_len)
    objective = (
        SelfCritical(vocab, train_records, tc.scst_samples, tc.scst_max_len)
        if tc.objective == "scst"
        else CrossEntropy(vocab, tc.label_smoothing)
    )
    steps_per_epoch = len(pairs.epoch_batches(0, tc.seed, tc.batch_size, dist.rank, dist.world_size))
    total = steps_per_epoch * tc.epochs
    optim = torch.optim.AdamW(param_groups(model, tc.weight_decay, tc.encoder_lr), lr=tc.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: lr_lambda(s, tc.warmup_steps, total, tc.min_lr_ratio))
    epoch, skip, history, best = 0, 0, [], {"epoch": -1, "CIDEr": -1.0}
    partial = (0.0, 0)  # loss sum and steps of an epoch interrupted part-way
    if state is not None:
        r = state["resume"]
        restore_weights(model, state)
        optim.load_state_dict(r["optimizer"])
        sched.load_state_dict(r["scheduler"])
        torch.set_rng_state(r["rng"])
        epoch, skip, history, best = r["epoch"], r["step_in_epoch"], r["history"], r["best"]
        partial = (r["partial_loss_sum"], r["partial_steps"])
        if epoch >= tc.epochs or _patience_spent(epoch, best, tc.patience):
            # Before any file is opened: resuming a finished run changes nothing (not even tb/).
            return TrainResult(
                out,
                out / "best.pt",
                best["epoch"],
                best,
                history,
                0.0,
                stopped_early=epoch < tc.epochs,
                already_finished=True,
            )
    ddp = torch.nn.parallel.DistributedDataParallel(model) if dist.active else model

    train_feats = Features.load(cache, train_records, memory_mb=tc.feature_memory_mb)
    mixer = make_mixer(model, data, train_records, train_feats, tc) if uses_tags(tc) else None
    val_records = data.split("val")[: tc.val_images or None]
    val_feats = Features.load(cache, val_records, memory_mb=tc.feature_memory_mb) if dist.rank == 0 else None
    writer = _tensorboard(out / "tb") if dist.rank == 0 else None

    def save_last(ep: int, step_in_epoch: int, loss_sum: float = 0.0, steps: int = 0) -> None:
        save_checkpoint(
            out / "last.pt",
            training_payload(
                model,
                vocab,
                enc,
                {"run_config": cfg.to_dict()},
                {
                    "optimizer": optim.state_dict(),
                    "scheduler": sched.state_dict(),
                    "rng": torch.get_rng_state(),
                    "epoch": ep,
                    "step_in_epoch": step_in_epoch,
                    "partial_loss_sum": loss_sum,
                    "partial_steps": steps,
                    "history": history,
                    "best": best,
                },
            ),
        )

    start, stopped_early = time.perf_counter(), False
    with _graceful_interrupt() as interrupt:
        while epoch < tc.epochs:
            batches = pairs.epoch_batches(epoch, tc.seed, tc.batch_size, dist.rank, dist.world_size)
            ddp.train()
            (loss_sum, n_steps), n_caps, t0 = partial, 0, time.perf_counter()
            partial = (0.0, 0)
            bar = tqdm(
                batches[skip:],
                desc=f"epoch {epoch + 1}/{tc.epochs}",
                unit="batch",
                disable=not progress or dist.rank != 0,
                dynamic_ncols=True,
            )
            logs_sum: dict[str, float] = {}  # objective-specific scalars (reward...) of this epoch's steps
            logs_n = 0
            for i, idx in enumerate(bar, start=skip):
                rows, image_index, caps = pairs.batch(idx)
                pooled, grid = train_feats.batch(rows)  # (I, D), (I, R, D)
                images = [train_records[r].image for r in rows.tolist()]
                if mixer is not None:  # + text-only photos; image / tag dropout (text_batches.py)
                    with torch.no_grad():
                        probs = model.tags.word_probs(pooled)
                    pooled, grid, image_index, caps, probs, shown = mixer.extend(
                        pooled, grid, image_index, caps, probs, epoch, i
                    )
                    batch = Batch(pooled, grid, image_index, caps, images, probs, shown)
                else:
                    batch = Batch(pooled, grid, image_index, caps, images)
                total_loss, logs = objective(ddp, model, batch)
                loss = logs["loss"]
                optim.zero_grad(set_to_none=True)
                total_loss.backward()
                if tc.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                optim.step()
                sched.step()
                _check_diverged(model, out, epoch, i, len(batches), loss, tc.lr)
                loss_sum, n_steps, n_caps = loss_sum + loss, n_steps + 1, n_caps + len(idx)
                logs_sum, logs_n = {k: logs_sum.get(k, 0.0) + v for k, v in logs.items()}, logs_n + 1
                rate = n_caps * dist.world_size / (time.perf_counter() - t0)
                extra = {"reward": f"{logs['reward']:.3f}"} if "reward" in logs else {}
                bar.set_postfix(loss=f"{loss:.3f}", caps_s=f"{rate:.0f}", **extra)
                if writer:
                    for k, v in logs.items():
                        writer.add_scalar(f"train/{k}", v, epoch * steps_per_epoch + i)
                    writer.add_scalar("train/lr", sched.get_last_lr()[0], epoch * steps_per_epoch + i)
                if i + 1 == len(batches):
                    break  # the epoch-end checkpoint below covers an interrupt at the last step
                periodic = tc.save_every_steps and (i + 1) % tc.save_every_steps == 0
                asked = interrupt["stop"]  # read once: a signal may land between two reads
                if (asked or periodic) and dist.rank == 0:
                    save_last(epoch, i + 1, loss_sum, n_steps)
                if asked:
                    bar.close()
                    raise KeyboardInterrupt
            bar.close()
            skip = 0
            epoch_loss = dist.all_reduce_mean(loss_sum / max(n_steps, 1))
            epoch += 1
            stop = False
            if dist.rank == 0:
                metrics = validate(model, val_records, val_feats, vocab, tc.val_beam_size, tc.val_max_len)
                row = {
                    "epoch": epoch,
                    "train_loss": epoch_loss,
                    "captions_per_s": n_caps * dist.world_size / (time.perf_counter() - t0),
                    **metrics,
                    "elapsed_s": time.perf_counter() - start,
                    **{f"train_{k}": v / max(logs_n, 1) for k, v in logs_sum.items() if k != "loss"},
                }
                history.append(row)
                if writer:
                    for k in ("CIDEr", "BLEU-4"):
                        writer.add_scalar(f"val/{k}", metrics[k], epoch)
                    writer.flush()
                tqdm.write(
                    f"epoch {epoch}: loss {epoch_loss:.3f}, val CIDEr-D {metrics['CIDEr']:.3f}, "
                    f"BLEU-4 {metrics['BLEU-4']:.3f}"
                ) if progress else None
                if metrics["CIDEr"] > best["CIDEr"]:
                    best = {"epoch": epoch, **metrics}
                    save_checkpoint(
                        out / "best.pt",
                        model_payload(model, vocab, enc, {"run_config": cfg.to_dict(), "epoch": epoch, "val": metrics}),
                    )
                stop = _patience_spent(epoch, best, tc.patience)
                save_last(epoch, 0)
                write_json(out / "history.json", history)
                _plot(history, out / "curves.png")
                if on_epoch is not None:
                    on_epoch(dict(row))
            stop = dist.broadcast(stop)
            if interrupt["stop"]:
                raise KeyboardInterrupt
            if stop:
                stopped_early = True
                break
    if writer:
        writer.close()
    dist.barrier()
    history = dist.broadcast(history)
    best = dist.broadcast(best)
    return TrainResult(out, out / "best.pt", best["epoch"], best, history, time.perf_counter() - start, stopped_early)


def _patience_spent(epoch: int, best: dict, patience: int) -> bool:
    """Early stopping: `patience` epochs (0 = never) have passed without a better val CIDEr-D."""
    return bool(patience) and epoch - best["epoch"] >= patience


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


def _plot(history: list[dict], path: Path) -> None:
    from capgen.training.plots import plot_curves

    plot_curves(history, path)
