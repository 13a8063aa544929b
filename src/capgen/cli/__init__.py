"""The `capgen` command: a thin layer of subcommands over the library.

Every subcommand module exposes `register(subparsers)` that adds its parser and sets `func`.
User errors (CapgenError) print one line and exit 2; tracebacks only with --debug.
"""

from __future__ import annotations

import argparse
import warnings
from typing import Sequence

from capgen import __version__
from capgen.argtypes import OneLineParser
from capgen.cli import alt, caption, evaluate, export, extract, info, prepare, serve, synth, train, tune
from capgen.errors import CapgenError, say
from capgen.extras import require
from capgen.io import echo
from capgen.parallel import shutdown_distributed

COMMANDS = (prepare, extract, train, tune, evaluate, caption, alt, export, serve, synth, info)
MESSAGE_LIMIT = 2000  # characters of an error line: a message echoing a hostile value stays one line


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="capgen", description="Image captioning toolkit: prepare data, extract features, train, caption."
    )
    parser.add_argument("--version", action="version", version=f"capgen {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    # --debug is accepted after the subcommand too; SUPPRESS keeps the top-level value otherwise.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for module in COMMANDS:
        module.register(sub, [common])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return _run(args)
    finally:
        shutdown_distributed()  # under torchrun: gloo's threads must not outlive the interpreter


def _run(args) -> int:
    if not args.debug:  # a warning is one line like an error, without the source line Python adds
        warnings.formatwarning = lambda message, *_, **__: f"capgen {args.command}: warning: {message}\n"
    try:
        for module in getattr(args, "needs", ()):  # a command of an optional install: say which, before any work
            require(module, "this command")
        return int(args.func(args) or 0)
    except CapgenError as e:
        if args.debug:
            raise
        say(f"capgen {args.command}: error: {echo(str(e), MESSAGE_LIMIT)}")
        return e.exit_code
    except KeyboardInterrupt:
        say(f"capgen {args.command}: interrupted; run the same command again to resume")
        return 130
    except Exception as e:  # a bug, not bad input: still one line unless --debug
        if args.debug:
            raise
        from capgen.extras import missing_extra
        from capgen.io import is_disk_full

        missing = missing_extra(e)
        if missing is not None:  # a package of an optional install: name the extra that brings it
            say(f"capgen {args.command}: error: {missing}")
            return missing.exit_code
        if is_disk_full(e):  # a write outside capgen.io's helpers (logs, figures): name the file
            say(
                f"capgen {args.command}: error: no space left on device writing "
                f"{getattr(e, 'filename', None) or 'an output file'}"
            )
            return 2
        say(
            f"capgen {args.command}: internal error: {type(e).__name__}: {echo(str(e), MESSAGE_LIMIT)} "
            f"(rerun with --debug for the "
            f"traceback)"
        )
        return 1
