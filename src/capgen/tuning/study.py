"""One tuning worker: open (or create) the study, then ask -> train -> tell until the budget is spent.

Each trial is an ordinary training run in DIR/trials/N (config.yaml, history.json, best.pt, last.pt),
locked while it runs. Val CIDEr-D is reported after every epoch so the pruner can stop weak trials;
a trial's value is its best val CIDEr-D. A trial that raises is recorded as FAIL and the study goes
on; a trial whose worker was killed is marked FAIL and its point queued again, resuming its run.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from capgen.io import folder_lock
from capgen.training import RunConfig, load_run_config, train
from capgen.training.callbacks import read_history
from capgen.tuning.space import Space, base_point, trial_config
from capgen.tuning.storage import (
    HOST,
    JOURNAL,
    StudyError,
    check_fingerprint,
    fail_dead_trials,
    fingerprint,
    open_storage,
    replaying,
    worker_id,
)

PRUNERS = ("median", "hyperband", "none")


@dataclass
class TuneOptions:
    trials: int = 20  # the study ends when it holds this many trials (a killed one does not count)
    timeout: float | None = None  # seconds; no trial starts after it (the running one finishes)
    storage: str | None = None  # RDB URL; default: the journal file in the study folder
    study_name: str = "capgen"
    pruner: str = "median"
    startup_trials: int = 5  # random trials before TPE models the space (and before pruning)
    seed: int = 0
    baseline: bool = False  # run the base config itself as the first trial
    threads: int | None = None  # force this many torch threads per trial
    worker_index: int = 0  # for the sampler seed of parallel workers


def open_study(study_dir: Path, space: Space, base: RunConfig, data, cache, opts: TuneOptions):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    point = base_point(space, base) if opts.baseline else None  # checked before the study is touched
    trials = study_dir / "trials"
    if trials.exists() and not trials.is_dir():
        raise StudyError(
            f"{trials}: must be the study's folder of trial runs, not a file; move it away or choose another --study"
        )
    storage = open_storage(study_dir, opts.storage)
    with replaying(study_dir / JOURNAL) if opts.storage is None else contextlib.nullcontext():
        # Load an existing study: creating appends to the journal even when the study exists.
        if opts.study_name in {s.study_name for s in storage.get_all_studies()}:
            study = optuna.load_study(study_name=opts.study_name, storage=storage, pruner=_pruner(opts))
        else:
            study = optuna.create_study(
                storage=storage,
                study_name=opts.study_name,
                direction="maximize",
                pruner=_pruner(opts),
                load_if_exists=True,
            )
        study.sampler = _sampler(opts, len(study.get_trials(deepcopy=False)))
    check_fingerprint(study, study_dir, fingerprint(data, cache, space, base))
    if opts.baseline and not any(t.user_attrs.get("baseline") for t in study.get_trials(deepcopy=False)):
        study.enqueue_trial(point, user_attrs={"baseline": True})
    return study


def _sampler(opts: TuneOptions, done: int):
    """TPE seeded by (--seed, worker, trials already in the study): reproducible for a fresh study,
    yet a continued one (a rerun, a restart after a kill) draws new points; one seeded alike replayed
    its first draws, so trial 1 of a study run as --trials 1 then --trials 2 repeated trial 0."""
    import numpy as np
    import optuna

    seed = int(np.random.SeedSequence([opts.seed, opts.worker_index, done]).generate_state(1)[0])
    # constant_liar: parallel workers do not all sample next to the same running trial
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=opts.startup_trials)


def _pruner(opts: TuneOptions):
    import optuna

    if opts.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=min(opts.startup_trials, 2), n_warmup_steps=0)
    if opts.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


def counted(study) -> int:
    """Trials that use up the budget: finished or running, but not those cut short by a dead worker."""
    from optuna.trial import TrialState

    return sum(
        1
        for t in study.get_trials(deepcopy=False)
        if t.state != TrialState.WAITING and not t.user_attrs.get("interrupted")
    )


def run_worker(
    study,
    space: Space,
    base: RunConfig,
    data,
    cache,
    study_dir: Path,
    opts: TuneOptions,
    say: Callable[[str], None] = print,
) -> None:
    start = time.monotonic()
    while True:
        for t in fail_dead_trials(study):
            _requeue(study, t)
            say(f"trial {t.number}: its worker died; marked failed, its point queued again (resuming its run)")
        if counted(study) >= opts.trials:
            return
        if opts.timeout is not None and time.monotonic() - start >= opts.timeout:
            say(f"time budget of {opts.timeout / 60:.1f} min spent; no new trial starts")
            return
        trial = study.ask()
        run_trial(study, trial, space, base, data, cache, study_dir, opts)
        say(progress_line(study, trial.number, opts.trials))


def _requeue(study, t) -> None:
    study.enqueue_trial(
        t.params,
        user_attrs={
            "retry_of": t.number,
            "resume_from": t.user_attrs["run_dir"],
            **({"baseline": True} if t.user_attrs.get("baseline") else {}),
        },
    )


def run_trial(study, trial, space: Space, base: RunConfig, data, cache, study_dir: Path, opts: TuneOptions) -> None:
    import optuna
    from optuna.trial import TrialState

    run_dir = study_dir / "trials" / str(trial.number)
    t0 = time.perf_counter()
    with folder_lock(run_dir, "tuning trial", allow_nested=True):  # `train` locks it again inside
        # After the lock: another worker seeing these attrs and a free lock knows this worker died.
        for k, v in {"host": HOST, "worker": worker_id(), "run_dir": str(run_dir)}.items():
            trial.set_user_attr(k, v)
        state, value = TrialState.FAIL, None
        try:
            cfg = trial_config(base, space.sample(trial))
            if opts.threads:
                cfg.train.threads = opts.threads
            trial.set_user_attr("config", cfg.to_dict())
            resume = _take_over(trial, run_dir, cfg)
            res = train(cfg, data, cache, run_dir, resume=resume, progress=False, on_epoch=_reporter(trial))
            state, value = TrialState.COMPLETE, res.best_metrics["CIDEr"]
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            trial.set_user_attr("seconds", time.perf_counter() - t0)
            study.tell(trial, state=TrialState.FAIL)
            _requeue(study, study.trials[trial.number])
            raise
        except Exception as e:  # a crashing trial is a result (FAIL), not the end of the study
            trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:300])
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        study.tell(trial, value, state=state)


def _take_over(trial, run_dir: Path, cfg: RunConfig) -> bool:
    """A re-queued point continues its interrupted run: move that folder here and resume it."""
    old = trial.user_attrs.get("resume_from")
    if not old or not (Path(old) / "last.pt").is_file():
        return False
    old = Path(old)
    try:
        with folder_lock(old, "tuning trial"):
            # The one reader of config.yaml (format checked, later settings at their defaults),
            # compared as the trainer's own --resume compares it.
            if load_run_config(old / "config.yaml").to_dict() != cfg.to_dict():
                return False
            # Move the contents, not the folder: our lock on run_dir/.lock must stay held.
            for p in old.iterdir():
                if p.name != ".lock":
                    os.replace(p, run_dir / p.name)
            (old / ".lock").unlink()
        old.rmdir()
    except Exception:  # the old run is unreadable or busy: start afresh
        return False
    history = read_history(run_dir / "history.json", StudyError) if (run_dir / "history.json").is_file() else []
    for row in history:  # the pruner sees the epochs already done
        trial.report(row["CIDEr"], row["epoch"])
    trial.set_user_attr("resumed_from_trial", trial.user_attrs.get("retry_of"))
    return True


def _reporter(trial) -> Callable[[dict], None]:
    import optuna

    def on_epoch(row: dict) -> None:
        trial.report(row["CIDEr"], row["epoch"])
        trial.set_user_attr("epochs", row["epoch"])
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {row['epoch']}")

    return on_epoch


def progress_line(study, number: int, total: int) -> str:
    from capgen.tuning.report import describe_trial

    t = study.trials[number]
    return f"[{counted(study)}/{total}] {describe_trial(t, study)}"
