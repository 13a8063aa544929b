"""capgen synth OUT: write a small synthetic captioning dataset (coloured shapes)."""

from __future__ import annotations

from capgen.argtypes import out_dir, positive_int


def register(sub, parents) -> None:
    p = sub.add_parser(
        "synth",
        parents=parents,
        help="write a small synthetic dataset (coloured shapes) to try the pipeline",
        description="Generate images of coloured shapes with captions such as 'a red circle "
        "above a blue square', in any supported dataset format.",
    )
    p.add_argument("out", metavar="OUT", type=out_dir, help="output folder")
    p.add_argument("--images", type=positive_int, default=100, help="number of images (default 100)")
    p.add_argument("--format", default="kaggle", choices=["kaggle", "flickr", "karpathy", "coco", "csv", "jsonl"])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args) -> int:
    from capgen.data.synthetic import make_synthetic_dataset

    path = make_synthetic_dataset(args.out, n_images=args.images, fmt=args.format, seed=args.seed)
    print(f"wrote {args.images} synthetic images ({args.format}) -> {path}")
    return 0
