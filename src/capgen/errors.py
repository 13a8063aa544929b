"""Errors a user can act on. The CLI prints them as one line and exits 2."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, NoReturn, TextIO


class CapgenError(Exception):
    """Base class for errors caused by the user's input (files, options, data)."""

    exit_code = 2


class DatasetError(CapgenError):
    """A dataset or prepared folder is missing, malformed or inconsistent."""


class ImageLoadError(CapgenError):
    """An image file is missing, empty, truncated, not an image, or too large."""

    def __init__(self, path: object, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class EncoderError(CapgenError):
    """An encoder is unknown, cannot be built offline, or is misconfigured."""


class FeatureCacheError(CapgenError):
    """A feature cache is missing, incomplete, or does not match the dataset or model."""


class DiskFullError(CapgenError):
    """The disk filled up while writing an output; the output is left absent or at its last valid version."""


class TagsError(CapgenError):
    """Object tags cannot be computed: no classifier head, or a malformed tag word file."""


class ExportError(CapgenError):
    """A checkpoint cannot be exported for capgen.runtime, or an exported folder is incomplete,
    damaged or mismatched (the message names the file)."""


def say(line: str) -> None:
    """Write one message line to stderr in a single write. print() writes the text and its newline
    separately when Python runs unbuffered (PYTHONUNBUFFERED=1), so the lines of torchrun ranks
    sharing one stderr ran together; one write of a line under PIPE_BUF bytes stays whole."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def say_above_bar(line: str, file: TextIO | None = None) -> None:
    """say() for a line written while a tqdm bar runs: tqdm.write clears the bar, writes, and
    redraws it, but writes its `end` apart, so the line and its newline go together here.
    `file` is stderr unless given (training's epoch summaries are results: stdout)."""
    from tqdm.auto import tqdm  # the bars' own class; only the commands that draw one pay for it

    tqdm.write(line + "\n", file=file or sys.stderr, end="")


def run_script(main: Callable[[], int | None]) -> NoReturn:
    """A maintainer script's entry (scripts/): its bad input (a CapgenError) is one line naming the
    script, exit 2, as the CLI's; CAPGEN_DEBUG=1 shows the traceback instead."""
    name = Path(sys.argv[0]).name
    try:
        code = main()
    except CapgenError as e:
        if os.environ.get("CAPGEN_DEBUG"):
            raise
        say(f"{name}: error: {e}")
        code = e.exit_code
    raise SystemExit(code or 0)
