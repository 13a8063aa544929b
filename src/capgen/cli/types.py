"""argparse value types with one-line errors."""

from __future__ import annotations

import argparse
from typing import Callable


def _checked(cast: Callable[[str], float], ok: Callable[[float], bool], expected: str) -> Callable[[str], float]:
    """An argparse type: `cast` the text, then require `ok(value)`; otherwise 'expected ..., got ...'."""

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    parse.__name__ = expected  # argparse names the type in some messages
    return parse


positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
non_negative_int = _checked(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _checked(float, lambda v: v > 0, "a positive number")
fraction = _checked(float, lambda v: 0 <= v < 1, "a number in [0, 1)")
probability = _checked(float, lambda v: 0 <= v <= 1, "a probability in [0, 1]")
