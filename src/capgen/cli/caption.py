"""capgen caption PATHS...: caption your own photos (files, folders, globs) with a checkpoint."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

from capgen.argtypes import out_dir, positive_int, probability, thread_count
from capgen.decoding.flags import add_decode_args, add_guide_args, decode_options, guide_config
from capgen.errors import CapgenError, say, say_above_bar
from capgen.inference.files import display_name
from capgen.tags.guide import GuideConfig

FORMATS = ("text", "jsonl", "csv")
# More images than this get a progress bar on stderr.
_PROGRESS_MIN = 4


def register(sub, parents) -> None:
    p = sub.add_parser(
        "caption",
        parents=parents,
        help="caption image files, folders or globs",
        description="Caption photos with a trained checkpoint (default: the bundled model). "
        "Folders are searched recursively for image files; output follows the "
        "input order. A bad file is reported on stderr and skipped; the exit "
        "code is then 1.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or glob patterns")
    add_model_args(p)
    add_decode_args(p)
    _add_tag_args(p)
    p.add_argument(
        "--tag-threshold",
        type=probability,
        default=0.1,
        help="only tags whose probability is at least this (default 0.1)",
    )
    add_guide_args(p, default=GuideConfig())
    p.add_argument(
        "--format",
        default="text",
        choices=FORMATS,
        help="text (path<TAB>caption), jsonl or csv, on stdout (default text)",
    )
    p.add_argument(
        "--annotate", metavar="DIR", type=out_dir, help="write each photo with its caption drawn on it into DIR"
    )
    p.add_argument(
        "--attention",
        metavar="DIR",
        type=out_dir,
        help="write a per-word attention figure per photo into DIR (attention models only)",
    )
    p.add_argument("--batch-size", type=positive_int, default=16, help="images per batch (default 16)")
    p.add_argument(
        "--out",
        metavar="FILE.jsonl|FILE.csv",
        help="bulk mode: append to FILE as images finish, one line per image with its path (in "
        "completion order, not input order); a rerun skips images already in FILE; bad files "
        "go to FILE.errors; shards across ranks under torchrun",
    )
    p.add_argument(
        "--engine",
        choices=["file", "ray"],
        default="file",
        help="with --out: 'file' (default) appends to FILE; 'ray' captions on Ray Data (capgen[ray]) into "
        "--out DIR as Parquet parts, resumable",
    )
    p.add_argument("--ray-address", metavar="ADDR", help="with --engine ray: the cluster to join (default: local Ray)")
    p.add_argument("--actors", type=int, metavar="N", help="with --engine ray: captioning actors (default: CPUs - 1)")
    add_file_args(p)
    p.set_defaults(func=run)


def add_file_args(p) -> None:
    """--sidecar and --write-metadata: captions kept beside the photos or inside them."""
    from capgen.inference.sidecar import EXISTING, KINDS

    g = p.add_argument_group("captions beside or inside the photos (a rerun resumes: done photos are skipped)")
    g.add_argument(
        "--sidecar",
        nargs="?",
        const="txt",
        choices=KINDS,
        help="write photo.txt (or .caption, .json) beside each photo, atomically; text: the prefix, "
        "the --tags words, the caption and the suffix, comma-separated",
    )
    g.add_argument(
        "--sidecar-dir",
        metavar="DIR",
        type=out_dir,
        help="with --sidecar: write the sidecars under DIR, mirroring the folders below each PATH",
    )
    g.add_argument(
        "--existing",
        choices=EXISTING,
        default="skip",
        help="with --sidecar, a photo that has one already: skip it (default), overwrite it, or "
        "append / prepend the new text (never twice the same)",
    )
    g.add_argument(
        "--prefix", default="", metavar="TEXT", help="with --sidecar: text before the caption (trigger words)"
    )
    g.add_argument("--suffix", default="", metavar="TEXT", help="with --sidecar: text after the caption")
    g.add_argument(
        "--write-metadata",
        action="store_true",
        help="put the caption into each photo's XMP dc:description, IPTC Caption-Abstract and EXIF "
        "ImageDescription (JPEG, PNG, TIFF, WebP; needs ExifTool), checked on a copy first; "
        "photos with a description are kept",
    )
    g.add_argument("--overwrite", action="store_true", help="with --write-metadata: replace existing descriptions")


def _add_tag_args(p) -> None:
    p.add_argument(
        "--tags",
        action="store_true",
        help="also print object tags from the encoder's ImageNet classifier, e.g. 'cat 0.85'; "
        "text: appended after a tab, jsonl/csv: a 'tags' field",
    )
    p.add_argument("--n-tags", type=positive_int, default=5, metavar="K", help="at most K tags per photo (default 5)")


def add_model_args(p) -> None:
    """--model / --encoder / --backend, shared with `capgen serve`."""
    p.add_argument(
        "--model",
        metavar="CKPT",
        action="append",
        help="checkpoint (a best.pt from capgen train; default: bundled); repeat it to decode with "
        "an ensemble of models sharing vocabulary and encoder",
    )
    p.add_argument(
        "--encoder",
        metavar="NAME",
        help="build the encoder as NAME or 'module:factory' (for your own encoders; it must match the checkpoint's)",
    )
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "onnx", "torch"],
        help="engine of the encoder and the decoder's steps (auto: ONNX Runtime where they export)",
    )
    p.add_argument(
        "--tag-words",
        metavar="TSV",
        help="class -> word file for tags (default: the bundled assets/imagenet_words.tsv)",
    )
    p.add_argument(
        "--threads",
        type=thread_count,
        default=None,
        help="compute threads (default: all cores; 1 on a machine busy with other jobs)",
    )
    add_precision_args(p)


def add_precision_args(p, calibration: bool = True) -> None:
    """--precision (and --calibration), shared by caption, serve and extract."""
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "int8"],
        help="fp32 (default); bf16: the decoder (and a --backend torch encoder) in bfloat16 where "
        "the CPU has it, else fp32 with a warning; int8: the encoder and the decoder step "
        "quantized in ONNX Runtime (faster, slightly different captions; see BENCHMARKS.md)",
    )
    if calibration:
        p.add_argument(
            "--calibration",
            metavar="PATH",
            nargs="+",
            help="with --precision int8: photos (files, folders, globs) to calibrate the int8 encoder "
            "on, needed once per encoder (then cached); `capgen extract --precision int8` "
            "calibrates on the training images instead",
        )


def load_captioner(args, **kw):
    """The Captioner the model flags ask for (caption and serve)."""
    from capgen.inference import Captioner, expand_paths

    calibration = expand_paths(args.calibration) if args.calibration else None
    return Captioner.from_pretrained(
        args.model,
        encoder=args.encoder,
        backend=args.backend,
        tag_words=args.tag_words,
        precision=args.precision,
        calibration=calibration,
        threads=args.threads,
        **kw,
    )


def run(args) -> int:
    from tqdm.auto import tqdm

    from capgen.errors import CapgenError, DiskFullError, ImageLoadError
    from capgen.inference import UniqueNames, caption_paths, expand_paths, save_annotated, save_attention_figure

    destination = _destination(args)  # checked before the model loads: a bad flag costs nothing
    captioner = load_captioner(args)
    tags = captioner.tag_config(args.n_tags if args.tags else 0, args.tag_threshold)
    if tags and captioner.tags_error:  # captions still come; say once why tags do not
        say(f"capgen caption: {captioner.tags_error}")
    config = captioner.decode_config(**decode_options(args), return_attention=bool(args.attention))
    if args.out:
        return _bulk(args, captioner, config)
    if destination is not None:
        return _to_files(args, captioner, config, tags, destination)
    paths = expand_paths(args.paths)
    write = _writer(args.format, sys.stdout, with_tags=bool(tags) and captioner.tagger is not None)
    names = UniqueNames(), UniqueNames()
    failed = 0
    bar = tqdm(
        total=len(paths),
        unit="img",
        desc="caption",
        file=sys.stderr,
        disable=len(paths) <= _PROGRESS_MIN,
        dynamic_ncols=True,
    )
    guide = guide_config(args)
    for path, res in caption_paths(captioner, paths, config, batch_size=args.batch_size, tags=tags, guide=guide):
        bar.update(1)
        if isinstance(res, ImageLoadError):
            failed += 1
            say_above_bar(f"capgen caption: skipped {display_name(res.path)}: {res.reason}")
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
                say_above_bar(f"capgen caption: no figure for {display_name(path)}: {reason}")
    bar.close()
    if failed:
        say(f"capgen caption: {failed} of {len(paths)} inputs failed")
    return 1 if failed else 0


def _ray(args, captioner, config) -> int:
    from capgen.inference.bulk import _decode_dict
    from capgen.inference.ray_engine import caption_with_ray

    if args.actors is not None and args.actors < 1:
        raise CapgenError(f"--actors must be >= 1, got {args.actors}")
    model = [os.path.abspath(m) for m in args.model] if args.model else None  # actors work elsewhere
    load = {"path": model, "encoder": args.encoder, "backend": args.backend, "tag_words": args.tag_words}
    load.update(precision=args.precision, threads=args.threads)
    guide = guide_config(args)
    res = caption_with_ray(
        args.paths,
        args.out,
        load,
        _decode_dict(config),
        guide=guide,
        batch_size=args.batch_size,
        address=args.ray_address,
        actors=args.actors,
        model_name=captioner.name,
    )
    for path, reason in list(res.failed.items())[:10]:
        say(f"capgen caption: failed {display_name(path)}: {reason}")
    say(
        f"capgen caption: {res.captioned} captioned on Ray ({res.actors} actors, {res.images_per_s:.1f} images/s"
        + (f", {res.steady_images_per_s:.1f} after start-up" if res.steady_images_per_s else "")
        + "), "
        f"{res.skipped} already in {display_name(res.out)}, {len(res.failed)} failed"
    )
    return 1 if res.failed else 0


def _destination(args):
    """A SidecarSettings, "metadata" or None (stdout), with the flags that need one checked."""
    if args.sidecar and args.write_metadata:
        raise CapgenError("--sidecar and --write-metadata: choose one per run")
    if args.engine != "file" and not args.out:
        raise CapgenError("--engine ray writes --out DIR; give --out")
    if args.out and (args.sidecar or args.write_metadata):
        raise CapgenError("--out writes one file for all photos; run --sidecar/--write-metadata without --out")
    for flag, used in (
        ("--sidecar-dir", args.sidecar_dir),
        ("--prefix", args.prefix),
        ("--suffix", args.suffix),
        ("--existing", args.existing != "skip"),
    ):
        if used and not args.sidecar:
            raise CapgenError(f"{flag} is for --sidecar files")
    if (args.sidecar or args.write_metadata) and (args.annotate or args.attention):
        raise CapgenError("--sidecar/--write-metadata write captions only; run --annotate/--attention apart")
    if args.overwrite and not args.write_metadata:
        raise CapgenError("--overwrite is for --write-metadata (sidecars: --existing overwrite)")
    if args.write_metadata:
        from capgen.inference.metadata import find_exiftool

        find_exiftool()
        return "metadata"
    if args.sidecar:
        from capgen.inference.sidecar import SidecarSettings

        return SidecarSettings(
            args.sidecar, args.existing, args.prefix, args.suffix, Path(args.sidecar_dir) if args.sidecar_dir else None
        )
    return None


def _to_files(args, captioner, config, tags, destination) -> int:
    """Caption the photos that still need it and write each one's sidecar or metadata as it comes."""
    from tqdm.auto import tqdm

    from capgen.errors import DiskFullError, ImageLoadError
    from capgen.inference import caption_paths

    planned, todo, done_note, write = _file_plan(args, destination)
    failed = dict(planned.failed)
    for path, reason in failed.items():
        say(f"capgen caption: skipped {path}: {reason}")
    targets = dict(todo)
    out = _writer(args.format, sys.stdout, with_tags=bool(tags) and captioner.tagger is not None)
    bar = tqdm(
        total=len(todo),
        unit="img",
        desc="caption",
        file=sys.stderr,
        disable=len(todo) <= _PROGRESS_MIN,
        dynamic_ncols=True,
    )
    written = unchanged = 0
    for path, res in caption_paths(
        captioner, list(targets), config, batch_size=args.batch_size, tags=tags, guide=guide_config(args)
    ):
        bar.update(1)
        try:
            if isinstance(res, ImageLoadError):
                raise res
            changed = write(Path(path), targets[Path(path)], res)
        except DiskFullError:
            raise  # every later photo would fail the same way
        except (CapgenError, OSError) as e:
            failed[path] = str(e)
            say_above_bar(f"capgen caption: skipped {e if isinstance(e, CapgenError) else f'{path}: {e}'}")
            continue
        written += changed
        unchanged += not changed
        out(path, res)
    bar.close()
    say(
        f"capgen caption: {written} written, {done_note}"
        + (f", {unchanged} unchanged" if unchanged else "")
        + f", {len(failed)} failed"
    )
    return 1 if failed else 0


def _file_plan(args, destination):
    """(the plan, (photo, target) pairs to do, what the plan kept, the writer of one photo's caption)."""
    from capgen.inference import metadata, sidecar

    if destination == "metadata":
        planned = metadata.plan(args.paths, overwrite=args.overwrite)

        def write(photo, target, res) -> bool:
            metadata.write_description(photo, res.caption)
            return True

        return planned, [(p, p) for p in planned.todo], f"{planned.kept} kept their description", write
    planned = sidecar.plan(args.paths, destination)
    sidecar.remove_temporaries(t for _, t in planned.todo)

    def write(photo, target, res) -> bool:
        return sidecar.write_sidecar(photo, target, res, destination)

    return planned, planned.todo, f"{planned.done} already had a sidecar", write


def _bulk(args, captioner, config) -> int:
    from capgen.inference.bulk import caption_to_file

    if args.annotate or args.attention:
        raise CapgenError("--out writes captions only; run --annotate/--attention without --out")
    if args.engine == "ray":
        return _ray(args, captioner, config)
    res = caption_to_file(
        captioner,
        args.paths,
        args.out,
        config,
        None if args.format == "text" else args.format,
        batch_size=args.batch_size,
        guide=guide_config(args),
    )
    if int(os.environ.get("RANK", "0")) == 0:
        for path, reason in list(res.failed.items())[:10]:
            say(f"capgen caption: failed {display_name(path)}: {reason}")
        out = display_name(res.out)
        say(
            f"capgen caption: {res.captioned} captioned ({res.images_per_s:.1f} images/s), {res.skipped} already "
            f"in {out}, {len(res.failed)} failed" + (f" (listed in {out}.errors)" if res.failed else "")
        )
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
            texts = [
                path,
                res.caption,
                " | ".join(c for c, _ in res.alternatives),
                *([" | ".join(f"{t.word} {t.p:.2f}" for t in res.tags or [])] if with_tags else []),
            ]
            cell = [csv_cell(display_name(t)) for t in texts]
            w.writerow([cell[0], cell[1], f"{res.score:.4f}", *cell[2:]])
            out.flush()
    elif fmt == "jsonl":

        def write(path, res):
            out.write(json_line({"image": path, **res.to_dict()}))
            out.flush()
    else:

        def write(path, res):
            fields = [
                path,
                res.caption,
                *([", ".join(f"{t.word} {t.p:.2f}" for t in res.tags or [])] if with_tags else []),
            ]
            out.write("\t".join(display_name(f) for f in fields) + "\n")
            out.flush()

    return write
