"""capgen caption PATHS...: caption your own photos (files, folders, globs) with a checkpoint."""

from __future__ import annotations

import csv
import os
import sys

from capgen.cli.decoding import add_decode_args, add_guide_args, decode_options, guide_config
from capgen.cli.types import out_dir, positive_int, probability, thread_count
from capgen.inference.files import display_name
from capgen.tags.guide import GuideConfig

FORMATS = ("text", "jsonl", "csv")
# More images than this get a progress bar on stderr.
_PROGRESS_MIN = 4


def register(sub, parents) -> None:
    p = sub.add_parser("caption", parents=parents, help="caption image files, folders or globs",
                       description="Caption photos with a trained checkpoint (default: the bundled model). "
                                   "Folders are searched recursively for image files; output follows the "
                                   "input order. A bad file is reported on stderr and skipped; the exit "
                                   "code is then 1.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or glob patterns")
    add_model_args(p)
    add_decode_args(p)
    p.add_argument("--tags", action="store_true",
                   help="also print object tags from the encoder's ImageNet classifier, e.g. 'cat 0.85'; "
                        "text: appended after a tab, jsonl/csv: a 'tags' field")
    p.add_argument("--n-tags", type=positive_int, default=5, metavar="K", help="at most K tags per photo (default 5)")
    p.add_argument("--tag-threshold", type=probability, default=0.1,
                   help="only tags whose probability is at least this (default 0.1)")
    add_guide_args(p, default=GuideConfig())
    p.add_argument("--format", default="text", choices=FORMATS,
                   help="text (path<TAB>caption), jsonl or csv, on stdout (default text)")
    p.add_argument("--annotate", metavar="DIR", type=out_dir, help="write each photo with its caption drawn on it into DIR")
    p.add_argument("--attention", metavar="DIR", type=out_dir,
                   help="write a per-word attention figure per photo into DIR (attention models only)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="images per batch (default 16)")
    p.add_argument("--out", metavar="FILE.jsonl|FILE.csv",
                   help="bulk mode: append to FILE as images finish, one line per image with its path (in "
                        "completion order, not input order); a rerun skips images already in FILE; bad files "
                        "go to FILE.errors; shards across ranks under torchrun")
    p.set_defaults(func=run)


def add_model_args(p) -> None:
    """--model / --encoder / --backend, shared with `capgen serve`."""
    p.add_argument("--model", metavar="CKPT", action="append",
                   help="checkpoint (a best.pt from capgen train; default: bundled); repeat it to decode with "
                        "an ensemble of models sharing vocabulary and encoder")
    p.add_argument("--encoder", metavar="NAME",
                   help="build the encoder as NAME or 'module:factory' (for your own encoders; it must "
                        "match the checkpoint's)")
    p.add_argument("--backend", default="auto", choices=["auto", "onnx", "torch"],
                   help="engine of the encoder and the decoder's steps (auto: ONNX Runtime where they export)")
    p.add_argument("--tag-words", metavar="TSV",
                   help="class -> word file for tags (default: the bundled assets/imagenet_words.tsv)")
    p.add_argument("--threads", type=thread_count, default=None,
                   help="compute threads (default: all cores; 1 on a machine busy with other jobs)")
    add_precision_args(p)


def add_precision_args(p, calibration: bool = True) -> None:
    """--precision (and --calibration), shared by caption, serve and extract."""
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "int8"],
                   help="fp32 (default); bf16: the decoder (and a --backend torch encoder) in bfloat16 where "
                        "the CPU has it, else fp32 with a warning; int8: the encoder and the decoder step "
                        "quantized in ONNX Runtime (faster, slightly different captions; see BENCHMARKS.md)")
    if calibration:
        p.add_argument("--calibration", metavar="PATH", nargs="+",
                       help="with --precision int8: photos (files, folders, globs) to calibrate the int8 encoder "
                            "on, needed once per encoder (then cached); `capgen extract --precision int8` "
                            "calibrates on the training images instead")


def load_captioner(args, **kw):
    """The Captioner the model flags ask for (caption and serve)."""
    from capgen.inference import Captioner, expand_paths

    calibration = expand_paths(args.calibration) if args.calibration else None
    return Captioner.from_pretrained(args.model, encoder=args.encoder, backend=args.backend, tag_words=args.tag_words,
                                     precision=args.precision, calibration=calibration, threads=args.threads,
                                     **kw)


def run(args) -> int:
    from tqdm.auto import tqdm

    from capgen.errors import CapgenError, DiskFullError, ImageLoadError
    from capgen.inference import UniqueNames, caption_paths, expand_paths, save_annotated, save_attention_figure

    captioner = load_captioner(args)
    tags = captioner.tag_config(args.n_tags if args.tags else 0, args.tag_threshold)
    if tags and captioner.tags_error:  # captions still come; say once why tags do not
        print(f"capgen caption: {captioner.tags_error}", file=sys.stderr)
    config = captioner.decode_config(**decode_options(args), return_attention=bool(args.attention))
    if args.out:
        return _bulk(args, captioner, config)
    paths = expand_paths(args.paths)
    write = _writer(args.format, sys.stdout, with_tags=bool(tags) and captioner.tagger is not None)
    names = UniqueNames(), UniqueNames()
    failed = 0
    bar = tqdm(total=len(paths), unit="img", desc="caption", file=sys.stderr,
               disable=len(paths) <= _PROGRESS_MIN, dynamic_ncols=True)
    guide = guide_config(args)
    for path, res in caption_paths(captioner, paths, config, batch_size=args.batch_size, tags=tags, guide=guide):
        bar.update(1)
        if isinstance(res, ImageLoadError):
            failed += 1
            tqdm.write(f"capgen caption: skipped {display_name(res.path)}: {res.reason}", file=sys.stderr)
            continue
        write(path, res)
        if args.annotate or args.attention:
            try:  # one photo's figure that cannot be written fails that photo, not the batch
                image = captioner.load(path)  # loaded again: results do not hold pixels
                if args.annotate:
                    save_annotated(image, res.caption, f"{args.annotate}/{names[0](path, '.jpg')}")
                if args.attention:
                    save_attention_figure(image, res, f"{args.attention}/{names[1](path, '.png')}")
            except DiskFullError:
                raise
            except (OSError, CapgenError) as e:
                failed += 1
                reason = e.reason if isinstance(e, ImageLoadError) else getattr(e, "strerror", None) or e
                tqdm.write(f"capgen caption: no figure for {display_name(path)}: {reason}", file=sys.stderr)
    bar.close()
    if failed:
        print(f"capgen caption: {failed} of {len(paths)} inputs failed", file=sys.stderr)
    return 1 if failed else 0


def _bulk(args, captioner, config) -> int:
    from capgen.errors import CapgenError
    from capgen.inference.bulk import caption_to_file

    if args.annotate or args.attention:
        raise CapgenError("--out writes captions only; run --annotate/--attention without --out")
    res = caption_to_file(captioner, args.paths, args.out, config, None if args.format == "text" else args.format,
                          batch_size=args.batch_size, guide=guide_config(args))
    if int(os.environ.get("RANK", "0")) == 0:
        for path, reason in list(res.failed.items())[:10]:
            print(f"capgen caption: failed {display_name(path)}: {reason}", file=sys.stderr)
        out = display_name(res.out)
        print(f"capgen caption: {res.captioned} captioned ({res.images_per_s:.1f} images/s), {res.skipped} already "
              f"in {out}, {len(res.failed)} failed" + (f" (listed in {out}.errors)" if res.failed else ""),
              file=sys.stderr)
    return 1 if res.failed else 0


def _writer(fmt: str, out, with_tags: bool = False):
    """A function (path, CaptionResult) -> None writing one record, flushed so output streams.
    Whatever the file names, a record is one line of UTF-8 text with no control characters (the
    escapes of `display_name`; JSONL as bulk mode writes it) and no CSV cell starts a formula."""
    from capgen.inference.bulk import csv_cell, json_line

    if fmt == "csv":
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["image", "caption", "score", "alternatives", *(["tags"] if with_tags else [])])

        def write(path, res):
            texts = [path, res.caption, " | ".join(c for c, _ in res.alternatives),
                     *([" | ".join(f"{t.word} {t.p:.2f}" for t in res.tags or [])] if with_tags else [])]
            cell = [csv_cell(display_name(t)) for t in texts]
            w.writerow([cell[0], cell[1], f"{res.score:.4f}", *cell[2:]])
            out.flush()
    elif fmt == "jsonl":
        def write(path, res):
            out.write(json_line({"image": path, **res.to_dict()}))
            out.flush()
    else:
        def write(path, res):
            fields = [path, res.caption, *([", ".join(f"{t.word} {t.p:.2f}" for t in res.tags or [])] if with_tags else [])]
            out.write("\t".join(display_name(f) for f in fields) + "\n")
            out.flush()
    return write
