"""Caption normalisation, as Karpathy's preprocessing (neuraltalk2 prepro) does it."""

from __future__ import annotations

import re

# Characters dropped outright; hyphens become spaces so "black-and-white" -> "black and white".
_DROP = re.compile(r"[.,?!;\"']")


def normalize_caption(text: str) -> list[str]:
    """Lowercase, hyphens to spaces, drop . , ? ! ; \" ' and split on whitespace."""
    return _DROP.sub("", text.lower().replace("-", " ")).split()
