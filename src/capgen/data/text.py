"""Caption normalisation, as Karpathy's preprocessing (neuraltalk2 prepro) does it."""

from __future__ import annotations

import re
import string

# Hyphens and slashes separate words ("black-and-white", "cat/kitten"): they become spaces.
_SPLIT = re.compile(r"[-/\u2010-\u2015]")
# Every other punctuation mark is dropped, as Karpathy's prepro does (string.punctuation), plus the
# typographic quotes and ellipsis that Flickr captions carry: "shapes:" must not become a word.
_DROP = re.compile(
    "[" + re.escape(string.punctuation.replace("-", "").replace("/", "")) + "\u2018\u2019\u201c\u201d\u2026\u00b4`]"
)


def normalize_caption(text: str) -> list[str]:
    """Lowercase, hyphens and slashes to spaces, drop all other punctuation, split on whitespace."""
    return _DROP.sub("", _SPLIT.sub(" ", text.lower())).split()
