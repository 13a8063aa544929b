"""capgen tune: hyperparameter search with Optuna; every trial is a capgen train run in STUDY/trials/N."""

from __future__ import annotations

import argparse
import subprocess
import sys

from capgen.argtypes import positive_float, positive_int
from capgen.cli.prepare import add_dataset_args
from capgen.errors import say


def register(sub, parents) -> None:
    p = sub.add_parser(
        "tune",
        parents=parents,
        help="search hyperparameters with Optuna (TPE + pruning)",
        description="Searches the space file's ranges and choices with Optuna's TPE sampler, "
        "pruning weak trials on val CIDEr-D after every epoch. Each trial is a "
        "training run in STUDY/trials/N. Run the same command again to continue a "
        "killed study. Writes trials.csv, best_config.yaml and PNG plots to STUDY.",
    )
    add_dataset_args(p)
    p.add_argument("--space", required=True, metavar="YAML", help="search space (see configs/tune_*.yaml)")
    p.add_argument("--study", required=True, metavar="DIR", help="study folder (journal, trials, results)")
    p.add_argument("--config", metavar="YAML", help="base run config the space's values override")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a base setting")
    p.add_argument("--model", help="base model when neither the space nor --config names one")
    p.add_argument("--trials", type=positive_int, default=20, help="trials in the study in all (default 20)")
    p.add_argument(
        "--timeout",
        type=positive_float,
        metavar="MINUTES",
        help="start no trial after this many minutes (the running ones finish)",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="local worker processes sharing the study, 1 torch thread each (default 1)",
    )
    p.add_argument(
        "--storage",
        metavar="URL",
        help="database URL shared by workers on several machines, "
        "e.g. postgresql://user:pass@host/db (default: STUDY/journal.log)",
    )
    p.add_argument("--study-name", default="capgen", help="study name within --storage (default capgen)")
    p.add_argument("--pruner", choices=["median", "hyperband", "none"], default="median")
    p.add_argument(
        "--startup-trials", type=positive_int, default=5, help="random trials before TPE takes over (default 5)"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="sampler seed; each worker and each continuation of a study draws its own stream from it",
    )
    p.add_argument(
        "--baseline",
        action="store_true",
        help="run the base config (--config/--set with the space's fixed values) as the first trial",
    )
    p.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    p.set_defaults(func=run, needs=("torch", "optuna"))


def run(args) -> int:
    from pathlib import Path

    from capgen.data import PreparedDataset
    from capgen.features import FeatureCache
    from capgen.training import load_run_config
    from capgen.tuning import TuneOptions, load_space, open_study, run_worker
    from capgen.tuning.report import write_report
    from capgen.tuning.space import fixed_model

    # The base model: --model, else the config file's, else the one the space fixes.
    base = load_run_config(args.config, args.set, args.model or (None if args.config else fixed_model(args.space)))
    space = load_space(args.space, base.model)
    data, cache = (
        PreparedDataset.load(args.data, allow_outside_root=args.allow_outside_root),
        FeatureCache.open(args.features),
    )
    for split in ("train", "val"):
        cache.check(data, split)
    opts = TuneOptions(
        trials=args.trials,
        timeout=args.timeout * 60 if args.timeout else None,
        storage=args.storage,
        study_name=args.study_name,
        pruner=args.pruner,
        startup_trials=args.startup_trials,
        seed=args.seed,
        baseline=args.baseline,
        threads=1 if args.workers > 1 or args.worker_index else None,
        worker_index=args.worker_index,
    )
    study_dir = Path(args.study)
    study = open_study(study_dir, space, base, data, cache, opts)
    if args.worker_index:  # a child of `--workers W`: search only, the parent reports
        run_worker(
            study,
            space,
            base,
            data,
            cache,
            study_dir,
            opts,
            say=lambda s: print(f"[worker {args.worker_index}] {s}", flush=True),
        )
        return 0
    if args.workers > 1:
        _run_workers(args)
    else:
        run_worker(study, space, base, data, cache, study_dir, opts, say=lambda s: print(s, flush=True))
    print("\n".join(write_report(study, study_dir)))
    return 0


def _run_workers(args) -> None:
    """W processes of this same command (`--worker-index i`, 1 torch thread each) share the study."""
    argv = [
        "tune",
        "--data",
        args.data,
        "--features",
        args.features,
        "--space",
        args.space,
        "--study",
        args.study,
        "--trials",
        str(args.trials),
        "--study-name",
        args.study_name,
        "--pruner",
        args.pruner,
        "--startup-trials",
        str(args.startup_trials),
        "--seed",
        str(args.seed),
    ]
    for flag, value in (
        ("--config", args.config),
        ("--model", args.model),
        ("--storage", args.storage),
        ("--timeout", args.timeout),
    ):
        argv += [flag, str(value)] if value is not None else []
    for item in args.set:
        argv += ["--set", item]
    argv += ["--debug"] if args.debug else []
    procs = [
        subprocess.Popen([sys.executable, "-m", "capgen", *argv, "--worker-index", str(i)])
        for i in range(1, args.workers + 1)
    ]
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:  # the children got the same Ctrl-C: they checkpoint and stop
        for p in procs:
            p.wait()
        raise
    if any(codes):
        say(f"capgen tune: {sum(1 for c in codes if c)} of {args.workers} workers exited with an error")
