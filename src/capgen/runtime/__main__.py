"""python -m capgen.runtime DIR IMAGES...: caption image files with an exported folder (no torch).

IMAGES: files, folders (their image files, recursively, sorted) or glob patterns, as `capgen caption`
takes them. Prints `path<TAB>caption` (or JSON lines). Bad input: one line naming the file, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from capgen.argtypes import OneLineParser
from capgen.decoding.flags import add_decode_args, add_guide_args, decode_options, guide_config
from capgen.errors import CapgenError, say
from capgen.io import echo
from capgen.tags.guide import GuideConfig


def _threads(text: str) -> int:
    """--threads: 1 to MAX_THREADS, a one-line usage error otherwise."""
    from capgen.ort import MAX_THREADS

    if not (text.strip().isdigit() and 1 <= int(text) <= MAX_THREADS):
        raise argparse.ArgumentTypeError(f"expected a number of threads from 1 to {MAX_THREADS}, got {text!r}")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m capgen.runtime",
        description="Caption images with a folder written by `capgen export`, "
        "using only onnxruntime, numpy and pillow.",
    )
    p.add_argument("folder", metavar="DIR", help="the exported folder")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, folders or glob patterns")
    add_decode_args(p, model_defaults=True)
    add_guide_args(p, GuideConfig())
    p.add_argument("--format", choices=("text", "jsonl"), default="text")
    p.add_argument("--threads", type=_threads, help="encoder threads (default: all cores)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        from capgen.images import expand_paths
        from capgen.runtime import Runtime

        found = expand_paths(args.images)
        bad = next((p for p in found if isinstance(p, CapgenError)), None)
        if bad is not None:  # a name that finds nothing, an empty folder
            raise bad
        paths = [str(p) for p in found]
        options = decode_options(args)
        rt = Runtime(args.folder, threads=args.threads)
        results = rt.caption(paths, batch_size=args.batch_size, guide=guide_config(args), **options)
        for path, res in zip(paths, results):
            if args.format == "jsonl":
                print(json.dumps({"image": path, **res.to_dict()}, ensure_ascii=False))
            else:
                print(f"{path}\t{res.caption}")
    except CapgenError as e:
        if args.debug:
            raise
        say(f"capgen.runtime: error: {echo(str(e), 2000)}")
        return e.exit_code
    except KeyboardInterrupt:
        say("capgen.runtime: interrupted")
        return 130
    except Exception as e:  # a bug or an input nothing checked: still one line, exit 2, unless --debug
        if args.debug:
            raise
        say(
            f"capgen.runtime: internal error: {type(e).__name__}: {echo(str(e), 2000)} (rerun with --debug for "
            "the traceback)"
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
