"""argparse value types with one-line errors, and the parser class whose errors are one line."""

from __future__ import annotations

import argparse
import math
from typing import Callable

from capgen.ort import MAX_THREADS


def _checked(cast: Callable[[str], float], ok: Callable[[float], bool], expected: str) -> Callable[[str], float]:
    """An argparse type: `cast` the text, then require `ok(value)`; otherwise 'expected ..., got ...'."""

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            value = None
        # nan and inf are never a meaningful size, time or fraction here
        if value is None or not math.isfinite(value) or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    parse.__name__ = expected  # argparse names the type in some messages
    return parse


positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
thread_count = _checked(int, lambda v: 1 <= v <= MAX_THREADS, f"a number of threads from 1 to {MAX_THREADS}")
non_negative_int = _checked(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _checked(float, lambda v: v > 0, "a positive number")
non_negative_float = _checked(float, lambda v: v >= 0, "a number >= 0")
fraction = _checked(float, lambda v: 0 <= v < 1, "a number in [0, 1)")
unit_interval = _checked(float, lambda v: 0 < v <= 1, "a number in (0, 1]")
finite_float = _checked(float, lambda v: True, "a finite number")
port = _checked(int, lambda v: 1 <= v <= 65535, "a port number in [1, 65535]")


def out_dir(text: str) -> str:
    """An output folder: missing (it is created) or a folder, never an existing file."""
    from pathlib import Path

    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"expected a folder, got {text!r}, which is a file")
    return text


out_dir.__name__ = "an output folder"
probability = _checked(float, lambda v: 0 <= v <= 1, "a probability in [0, 1]")


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line and exit 2 (argparse prints the usage too)."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message}\n")
