"""capgen evaluate CHECKPOINT: decode a split and score it with the COCO caption metrics."""

from __future__ import annotations

from capgen.argtypes import out_dir, thread_count
from capgen.cli.prepare import add_outside_root_arg
from capgen.decoding.flags import add_decode_args, add_guide_args, decode_options, guide_config, guide_settings


def register(sub, parents) -> None:
    p = sub.add_parser(
        "evaluate",
        parents=parents,
        help="decode a split and score BLEU/METEOR/ROUGE-L/CIDEr",
        description="Decode a split with a checkpoint and score it with pycocoevalcap (PTB "
        "tokenizer, BLEU-1..4, METEOR, ROUGE-L, CIDEr; SPICE is skipped offline). "
        "Writes predictions.json (COCO results) and metrics.json.",
    )
    p.add_argument(
        "checkpoints",
        nargs="+",
        metavar="CHECKPOINT",
        help="a best.pt written by capgen train; several = an ensemble (log-probs averaged per step)",
    )
    p.add_argument("--data", metavar="PREPARED", help="a prepared dataset (with --features)")
    p.add_argument("--features", metavar="FEATURES", help="its feature cache")
    p.add_argument(
        "--images",
        metavar="DIR",
        help="instead of --data/--features: a folder of photos, captioned "
        "as capgen caption does (tag guidance on unless --no-guide)",
    )
    p.add_argument("--references", metavar="CAPTIONS.json", help="with --images: COCO-format captions of the photos")
    p.add_argument(
        "--encoder",
        metavar="NAME",
        help="with --images: build this encoder (a registered name or your "
        "'package.module:factory') instead of the checkpoint's",
    )
    p.add_argument(
        "--threads",
        type=thread_count,
        default=None,
        help="with --images: compute threads (default: all cores; 1 beside other jobs)",
    )
    add_outside_root_arg(p)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument(
        "--out", required=True, metavar="DIR", type=out_dir, help="folder for predictions.json and metrics.json"
    )
    add_decode_args(p)
    add_guide_args(p, default=None)
    p.add_argument("--no-guide", action="store_true", help="with --images: captions without tag guidance")
    p.add_argument("--no-meteor", action="store_true", help="skip METEOR (its Java start-up takes ~15 s)")
    p.add_argument("--any-vocab", action="store_true", help="allow a dataset prepared with another vocabulary")
    p.set_defaults(func=run)


def run(args) -> int:
    from capgen.errors import CapgenError

    if args.images or args.references:
        if not (args.images and args.references) or args.data or args.features:
            raise CapgenError("evaluate: give --images DIR with --references FILE, or --data with --features")
        return run_photos(args)
    if not (args.data and args.features):
        raise CapgenError(
            "evaluate: --data PREPARED and --features FEATURES are required (or --images with --references)"
        )
    if args.threads is not None:  # the cached features' decoder runs in torch, with torch's threads
        raise CapgenError("evaluate: --threads goes with --images (the captioner's threads)")
    from capgen.data import PreparedDataset
    from capgen.decoding import DecodeConfig
    from capgen.evaluation.run import evaluate_checkpoint, metrics_table
    from capgen.features import FeatureCache

    data = PreparedDataset.load(args.data, allow_outside_root=args.allow_outside_root)
    cache = FeatureCache.open(args.features)
    config = DecodeConfig(**decode_options(args))
    res = evaluate_checkpoint(
        args.checkpoints,
        data,
        cache,
        args.split,
        config,
        out=args.out,
        meteor=not args.no_meteor,
        any_vocab=args.any_vocab,
        guide=guide_config(args),
    )
    m = res.metrics
    print(
        f"{args.split}: {m['images']} images, {config.method} (beam {config.beam_size}), tokenizer {m['tokenizer']}, "
        f"decoded in {res.seconds:.1f} s"
    )
    print(metrics_table(m))
    if "guided" in m:
        g = m["guided"]
        print(
            f"tag guidance (p >= {g['threshold']}, novel words {g['novel_threshold']}): "
            f"{g['images']} of {m['images']} captions, "
            f"{g['stand_ins']} through a stand-in word"
        )
    for note in m["notes"]:
        print(f"note: {note}")
    print(f"-> {args.out}/predictions.json, {args.out}/metrics.json")
    return 0


def run_photos(args) -> int:
    from capgen.evaluation.photos import evaluate_photos
    from capgen.evaluation.run import metrics_table
    from capgen.inference import Captioner

    captioner = Captioner.from_pretrained(
        args.checkpoints if len(args.checkpoints) > 1 else args.checkpoints[0],
        encoder=args.encoder,
        threads=args.threads,
    )
    # Photos go through the whole captioner, guided unless --no-guide (--guide is the cached-features
    # mode's opt-in).
    guide = None if args.no_guide else guide_settings(args)
    m = evaluate_photos(
        captioner,
        args.images,
        args.references,
        {**decode_options(args), "guide": guide},
        out=args.out,
        meteor=not args.no_meteor,
    )
    print(f"{args.images}: {m['images']} photos captioned in {m['seconds']:.1f} s, tokenizer {m['tokenizer']}")
    print(metrics_table(m))
    print(
        f"invented objects (CHAIR): {100 * m['CHAIR_s']:.1f}% of captions, {100 * m['CHAIR_i']:.1f}% of objects "
        f"named; invented person {100 * m['invented_person']:.1f}%, invented dog {100 * m['invented_dog']:.1f}%"
    )
    if m["failed"]:
        print(f"note: {len(m['failed'])} photos could not be read (e.g. {m['failed'][0]})")
    print(f"-> {args.out}/predictions.json, {args.out}/metrics.json")
    return 0
