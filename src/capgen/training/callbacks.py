"""What happens around the training loop, one concern per callback (minGPT's Trainer callbacks, Keras'
order): validation, the history, TensorBoard, the best and last checkpoints, curves, early stopping,
and the caller's own hook (the tuner's Optuna pruning). The loop (trainer.py) only trains and calls
them in list order, on rank 0 at each epoch's end, so adding a concern never touches the loop.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from capgen.checkpoint import model_payload, save_checkpoint
from capgen.errors import CapgenError, say_above_bar
from capgen.io import read_json, write_json
from capgen.training.validate import validate

if TYPE_CHECKING:  # the loop's state, handed to every call
    from capgen.training.trainer import Run


class Callback:
    def on_step(self, run: Run, step: int, logs: dict[str, float]) -> None:
        """After each optimiser step (global step index), with the objective's scalars."""

    def on_epoch_end(self, run: Run, row: dict) -> None:
        """Rank 0, after each epoch; `row` becomes the epoch's history entry."""

    def on_end(self, run: Run) -> None:
        """Rank 0, once training stops (finished, early-stopped or interrupted)."""


class Validate(Callback):
    """Val CIDEr-D and BLEU-4 into the row, decoded with `config` (TrainConfig.val_decode_config())."""

    def __init__(self, records, features, config):
        self.records, self.features, self.config = records, features, config

    def on_epoch_end(self, run: Run, row: dict) -> None:
        run.metrics = validate(run.model, self.records, self.features, run.vocab, self.config)
        row.update(run.metrics)


class Record(Callback):
    """The row, with the run's time so far (validation included), into the history."""

    def on_epoch_end(self, run: Run, row: dict) -> None:
        row["elapsed_s"] = time.perf_counter() - run.started
        run.history.append(row)


class TensorBoard(Callback):
    def __init__(self, writer):
        self.writer = writer

    def on_step(self, run: Run, step: int, logs: dict[str, float]) -> None:
        for k, v in logs.items():
            self.writer.add_scalar(f"train/{k}", v, step)
        self.writer.add_scalar("train/lr", run.sched.get_last_lr()[0], step)

    def on_epoch_end(self, run: Run, row: dict) -> None:
        for k in ("CIDEr", "BLEU-4"):
            self.writer.add_scalar(f"val/{k}", row[k], row["epoch"])
        self.writer.flush()

    def on_end(self, run: Run) -> None:
        self.writer.close()


class Report(Callback):
    def on_epoch_end(self, run: Run, row: dict) -> None:
        say_above_bar(
            f"epoch {row['epoch']}: loss {row['train_loss']:.3f}, val CIDEr-D {row['CIDEr']:.3f}, "
            f"BLEU-4 {row['BLEU-4']:.3f}",
            sys.stdout,
        )


class BestCheckpoint(Callback):
    """best.pt (the captioner: one file) whenever val CIDEr-D improves."""

    def on_epoch_end(self, run: Run, row: dict) -> None:
        metrics = run.metrics
        if metrics["CIDEr"] > run.best["CIDEr"]:
            run.best = {"epoch": row["epoch"], **metrics}
            extra = {"run_config": run.cfg.to_dict(), "epoch": row["epoch"], "val": metrics}
            save_checkpoint(run.out / "best.pt", model_payload(run.model, run.vocab, run.enc, extra))


class EarlyStopping(Callback):
    """Stop once `patience` epochs (0 = never) have passed without a better val CIDEr-D."""

    def __init__(self, patience: int):
        self.patience = patience

    def on_epoch_end(self, run: Run, row: dict) -> None:
        run.stop = patience_spent(row["epoch"], run.best, self.patience)


def patience_spent(epoch: int, best: dict, patience: int) -> bool:
    return bool(patience) and epoch - best["epoch"] >= patience


class LastCheckpoint(Callback):
    """last.pt: everything to resume from the next epoch's first step."""

    def on_epoch_end(self, run: Run, row: dict) -> None:
        run.save_last(row["epoch"], 0)


# history.json: {"capgen_history": 1, "epochs": [row, ...]}; capgen 0.1 wrote the bare list.
HISTORY_KEY, HISTORY_VERSION = "capgen_history", 1


def read_history(path: Path, error: type[CapgenError] = CapgenError) -> list[dict]:
    """A run's epoch rows from its history.json (either format); `error` names the file otherwise."""
    data = read_json(path, "training history", error)
    if isinstance(data, list):
        return data
    if (
        not isinstance(data, dict)
        or data.get(HISTORY_KEY) != HISTORY_VERSION
        or not isinstance(data.get("epochs"), list)
    ):
        found = data.get(HISTORY_KEY) if isinstance(data, dict) else type(data).__name__
        raise error(f"{path}: not a capgen training history of format {HISTORY_VERSION} (found {found!r})")
    return data["epochs"]


class HistoryFiles(Callback):
    """history.json and curves.png."""

    def on_epoch_end(self, run: Run, row: dict) -> None:
        from capgen.training.plots import plot_curves

        write_json(run.out / "history.json", {HISTORY_KEY: HISTORY_VERSION, "epochs": run.history})
        plot_curves(run.history, run.out / "curves.png")


class EpochHook(Callback):
    """The caller's function of each finished epoch's row, once its checkpoints are on disk. An
    exception it raises (a tuner pruning the trial) ends training and propagates."""

    def __init__(self, fn: Callable[[dict], None]):
        self.fn = fn

    def on_epoch_end(self, run: Run, row: dict) -> None:
        self.fn(dict(row))
