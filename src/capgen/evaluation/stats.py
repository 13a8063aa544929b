"""What a reader of captions notices before any metric: length, vocabulary, repetition, cut-offs."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from capgen.decoding.config import FUNCTION_WORDS


def repeats_content_word(words: Sequence[str]) -> bool:
    """'a woman and a woman': some word outside FUNCTION_WORDS appears twice."""
    counts = Counter(w for w in words if w not in FUNCTION_WORDS)
    return any(c > 1 for c in counts.values())


def repeats_bigram(words: Sequence[str]) -> bool:
    bigrams = list(zip(words, words[1:]))
    return len(set(bigrams)) < len(bigrams)


def caption_stats(captions: Sequence[Sequence[str]], truncated: Sequence[bool] | None = None) -> dict:
    """Captions as word lists -> mean length, distinct words, and the shares (0-1) of captions with a
    repeated content word, a repeated bigram, <unk>, or (when given) a cut at max_len."""
    n = max(len(captions), 1)
    stats = {
        "captions": len(captions),
        "mean_length": sum(len(c) for c in captions) / n,
        "distinct_words": len({w for c in captions for w in c}),
        "repeated_content_word": sum(repeats_content_word(c) for c in captions) / n,
        "repeated_bigram": sum(repeats_bigram(c) for c in captions) / n,
        "unk": sum("<unk>" in c for c in captions) / n,
    }
    if truncated is not None:
        stats["truncated"] = sum(bool(t) for t in truncated) / n
    return stats
