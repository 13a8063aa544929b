"""capgen extract PREPARED --encoder NAME --out FEATURES: encode every image once."""

from __future__ import annotations

import os

from capgen.argtypes import non_negative_int, out_dir, positive_int, thread_count
from capgen.cli.caption import add_precision_args
from capgen.cli.prepare import add_outside_root_arg
from capgen.errors import say


def register(sub, parents) -> None:
    p = sub.add_parser(
        "extract",
        parents=parents,
        help="encode the images of a prepared dataset into a feature cache",
        description="Encode each image once with a pretrained encoder and store pooled and "
        "grid features. Interrupted runs resume where they stopped. Under "
        "torchrun --nproc_per_node N the images are sharded across ranks.",
    )
    p.add_argument("prepared", metavar="PREPARED", help="folder written by capgen prepare")
    add_outside_root_arg(p)
    p.add_argument("--out", required=True, metavar="FEATURES", type=out_dir, help="feature cache folder")
    p.add_argument(
        "--encoder",
        default="efficientnet-lite2",
        help="encoder name (efficientnet-lite2, efficientnet-lite0), 'module:factory' for your "
        "own, or 'timm:MODEL' with capgen[timm] (default efficientnet-lite2)",
    )
    p.add_argument(
        "--split-at",
        type=positive_int,
        default=None,
        metavar="N",
        help="store the activation entering the encoder's last N blocks instead of its final grid "
        "(for train.finetune_blocks=N; efficientnet-lite2: 208x9x9 for N <= 5)",
    )
    p.add_argument("--split", choices=["train", "val", "test"], help="only this split (default: all)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--workers", type=non_negative_int, default=2, help="image decoding threads (default 2)")
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "onnx", "torch"],
        help="inference engine: onnx (ONNX Runtime, fastest on CPU), torch, or auto",
    )
    p.add_argument("--threads", type=thread_count, default=None, help="compute threads (default: all cores)")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="storage precision")
    add_precision_args(p, calibration=False)
    p.add_argument("--strict", action="store_true", help="stop at the first bad image instead of skipping it")
    p.add_argument("--overwrite", action="store_true", help="replace an existing cache at --out")
    p.set_defaults(func=run, needs=("torch",))


def run(args) -> int:
    from capgen.data import PreparedDataset
    from capgen.features import extract_features

    ds = PreparedDataset.load(args.prepared, allow_outside_root=args.allow_outside_root)
    res = extract_features(
        ds,
        args.out,
        encoder=args.encoder,
        split=args.split,
        batch_size=args.batch_size,
        workers=args.workers,
        backend=args.backend,
        dtype=args.dtype,
        strict=args.strict,
        overwrite=args.overwrite,
        threads=args.threads,
        precision=args.precision,
        split_at=args.split_at,
    )
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports for all
        return 0
    if res.extracted == 0 and not res.failed:
        print(f"{res.out}: already complete ({res.images} images); nothing to do")
        return 0
    print(
        f"extracted {res.extracted} images in {res.seconds:.1f} s ({res.images_per_s:.1f} images/s, "
        f"{res.backend}) -> {res.out} ({res.images} images)"
    )
    if res.failed:
        say(f"skipped {len(res.failed)} bad images:")
        for name, why in res.failed.items():
            say(f"  {name}: {why}")
    return 0
