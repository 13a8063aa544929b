"""capgen prepare DATA --out PREPARED: read a caption dataset, write splits + vocabulary."""

from __future__ import annotations

from capgen.argtypes import fraction, out_dir, positive_int


def register(sub, parents) -> None:
    p = sub.add_parser(
        "prepare",
        parents=parents,
        help="read a caption dataset and write a prepared folder",
        description="Read Flickr8k/30k, Karpathy JSON, COCO captions, Kaggle, CSV or JSON "
        "Lines captions; write splits, normalised captions and the vocabulary.",
    )
    p.add_argument("data", metavar="DATA", help="dataset folder or caption file")
    p.add_argument("--out", required=True, metavar="PREPARED", type=out_dir, help="output folder")
    p.add_argument("--format", default="auto", choices=["auto", "flickr", "karpathy", "coco", "kaggle", "csv", "jsonl"])
    p.add_argument("--images", metavar="DIR", help="folder of the images (default: found beside DATA)")
    p.add_argument("--min-count", type=positive_int, default=5, help="minimum word count in train (default 5)")
    p.add_argument("--max-vocab", type=positive_int, default=None, help="maximum vocabulary size")
    p.add_argument("--seed", type=int, default=0, help="seed of the random split when DATA has none")
    p.add_argument("--val-fraction", type=fraction, default=0.1, help="random split only (default 0.1)")
    p.add_argument("--test-fraction", type=fraction, default=0.1, help="random split only (default 0.1)")
    p.add_argument("--skip-missing", action="store_true", help="drop captions whose image file is missing")
    p.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="accept image paths outside the images folder (absolute, '..', symlinks leading out)",
    )
    p.add_argument(
        "--text",
        action="append",
        default=[],
        metavar="FILE.jsonl",
        help='caption text without images (one photo a line: {"id", "captions": [...]}); '
        "its words join the vocabulary and it trains the decoder on text (repeatable)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from capgen.data import prepare_dataset

    ds = prepare_dataset(
        args.data,
        args.out,
        fmt=args.format,
        images=args.images,
        min_count=args.min_count,
        max_vocab=args.max_vocab,
        seed=args.seed,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        skip_missing=args.skip_missing,
        allow_outside_root=args.allow_outside_root,
        text=args.text,
    )
    m = ds.manifest
    splits = ", ".join(f"{s} {v['images']} images / {v['captions']} captions" for s, v in m["splits"].items())
    print(f"prepared {m['format']} dataset -> {ds.root}: {splits}; vocabulary {m['vocab_size']} words")
    for c in m["text_corpora"]:
        print(f"text corpus {c['path']}: {c['photos']} photos / {c['captions']} captions (sha256 {c['sha256'][:12]})")
    if m["text_corpora"]:
        print(
            f"vocabulary: {m['vocab_from_pairs']} words seen in the paired captions, "
            f"{m['vocab_size'] - m['vocab_from_pairs']} from the text corpora alone (incl. 4 special tokens)"
        )
    if m["dropped"]["not_in_any_split"] or m["dropped"]["missing_image_files"]:
        print(
            f"dropped: {m['dropped']['not_in_any_split']} images in no split, "
            f"{m['dropped']['missing_image_files']} missing image files"
        )
    if m["duplicate_captions"]:
        print(
            f"note: {m['duplicate_captions']} captions repeat another caption of the same image word for word "
            f"(kept, as in the benchmarks' reference sets)"
        )
    return 0


def add_dataset_args(p, features: bool = True) -> None:
    """--data PREPARED (and --features FEATURES) with --allow-outside-root: how train, tune and
    evaluate name their data."""
    p.add_argument("--data", required=True, metavar="PREPARED", help="folder written by capgen prepare")
    add_outside_root_arg(p)
    if features:
        p.add_argument("--features", required=True, metavar="FEATURES", help="folder written by capgen extract")


def add_outside_root_arg(p) -> None:
    p.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="read a dataset prepared with --allow-outside-root (image paths outside its images folder)",
    )
