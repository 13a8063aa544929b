"""capgen train: train a captioning model on cached features."""

from __future__ import annotations

import os

from capgen.argtypes import out_dir
from capgen.cli.prepare import add_dataset_args


def register(sub, parents) -> None:
    p = sub.add_parser(
        "train",
        parents=parents,
        help="train a captioning model on cached features",
        description="Teacher-forced training with per-epoch validation (CIDEr-D, BLEU-4); "
        "keeps the best checkpoint by val CIDEr. Ctrl-C checkpoints; --resume "
        "continues. Under torchrun it uses DistributedDataParallel (gloo).",
    )
    add_dataset_args(p)
    p.add_argument("--model", help="show_tell, show_attend_tell or transformer (default: the config's)")
    p.add_argument("--out", required=True, metavar="RUN", type=out_dir, help="run folder (checkpoints, logs, curves)")
    p.add_argument("--config", metavar="YAML", help="run config file (see configs/)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting: model.hidden_dim=512, epochs=10 (repeatable)",
    )
    p.add_argument(
        "--init",
        metavar="CKPT",
        help="start from this checkpoint's weights and architecture (e.g. a cross-entropy best.pt "
        "for --set objective=scst); its vocabulary and encoder must match --data/--features",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in RUN from its last checkpoint")
    p.set_defaults(func=run, needs=("torch",))


def run(args) -> int:
    from pathlib import Path

    from capgen.data import PreparedDataset
    from capgen.features import FeatureCache
    from capgen.training import load_run_config, train
    from capgen.training.config import ConfigError

    if args.init:  # recorded as an absolute path in RUN/config.yaml, so --resume works from anywhere
        args.set = [*args.set, f"init={Path(args.init).resolve()}"]
    if args.resume and not (args.config or args.set or args.model):
        cfg_path = Path(args.out) / "config.yaml"  # resume with the run's own resolved config
        if not cfg_path.is_file():
            raise ConfigError(f"{args.out}: nothing to resume (no config.yaml); start without --resume")
        cfg = load_run_config(cfg_path)
    else:
        cfg = load_run_config(args.config, args.set, args.model)
    data = PreparedDataset.load(args.data, allow_outside_root=args.allow_outside_root)
    cache = FeatureCache.open(args.features)
    res = train(cfg, data, cache, args.out, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        b = res.best_metrics
        if res.already_finished:
            done = (
                f"stopped early after {len(res.history)} of {cfg.train.epochs} epochs"
                if res.stopped_early
                else f"all {cfg.train.epochs} epochs done"
            )
            print(
                f"{args.out}: already finished ({done}); nothing to resume. Best epoch {res.best_epoch}: val CIDEr-D "
                f"{b.get('CIDEr', 0):.3f}, BLEU-4 {b.get('BLEU-4', 0):.3f} -> {res.best_checkpoint}"
            )
            return 0
        print(
            f"trained {cfg.model} in {res.seconds / 60:.1f} min; best epoch {res.best_epoch}: val CIDEr-D "
            f"{b.get('CIDEr', 0):.3f}, BLEU-4 {b.get('BLEU-4', 0):.3f} -> {res.best_checkpoint}"
            + (" (stopped early)" if res.stopped_early else "")
        )
    return 0
