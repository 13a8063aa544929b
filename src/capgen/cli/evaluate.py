"""capgen evaluate CHECKPOINT: decode a split and score it with the COCO caption metrics."""

from __future__ import annotations

from capgen.cli.types import finite_float, non_negative_int, out_dir, positive_int


def register(sub, parents) -> None:
    p = sub.add_parser("evaluate", parents=parents, help="decode a split and score BLEU/METEOR/ROUGE-L/CIDEr",
                       description="Decode a split with a checkpoint and score it with pycocoevalcap (PTB "
                                   "tokenizer, BLEU-1..4, METEOR, ROUGE-L, CIDEr; SPICE is skipped offline). "
                                   "Writes predictions.json (COCO results) and metrics.json.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a best.pt written by capgen train")
    p.add_argument("--data", required=True, metavar="PREPARED")
    p.add_argument("--features", required=True, metavar="FEATURES")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--out", required=True, metavar="DIR", type=out_dir, help="folder for predictions.json and metrics.json")
    add_decode_args(p)
    p.add_argument("--no-meteor", action="store_true", help="skip METEOR (its Java start-up takes ~15 s)")
    p.add_argument("--any-vocab", action="store_true", help="allow a dataset prepared with another vocabulary")
    p.set_defaults(func=run)


def add_decode_args(p) -> None:
    p.add_argument("--beam-size", type=positive_int, default=3, help="beam width (1 = greedy; default 3)")
    p.add_argument("--max-len", type=positive_int, default=20, help="maximum caption length in words")
    p.add_argument("--length-penalty", type=finite_float, default=0.0, help="GNMT length normalisation alpha")
    p.add_argument("--no-repeat-ngram", type=non_negative_int, default=0, help="block repeated n-grams of this size")


def decode_config(args):
    from capgen.decoding import DecodeConfig

    return DecodeConfig(method="greedy" if args.beam_size == 1 else "beam", beam_size=args.beam_size,
                        max_len=args.max_len, length_penalty=args.length_penalty,
                        no_repeat_ngram=args.no_repeat_ngram)


def run(args) -> int:
    from capgen.data import PreparedDataset
    from capgen.evaluation.run import evaluate_checkpoint, metrics_table
    from capgen.features import FeatureCache

    data = PreparedDataset.load(args.data)
    cache = FeatureCache.open(args.features)
    res = evaluate_checkpoint(args.checkpoint, data, cache, args.split, decode_config(args), out=args.out,
                              meteor=not args.no_meteor, any_vocab=args.any_vocab)
    m = res.metrics
    print(f"{args.split}: {m['images']} images, beam {args.beam_size}, tokenizer {m['tokenizer']}, "
          f"decoded in {res.seconds:.1f} s")
    print(metrics_table(m))
    for note in m["notes"]:
        print(f"note: {note}")
    print(f"-> {args.out}/predictions.json, {args.out}/metrics.json")
    return 0
