"""Word vocabulary built from training captions; saved as JSON inside every artifact that needs it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from capgen.errors import DatasetError

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)  # <pad> must be 0: losses and masks rely on it


@dataclass
class Vocabulary:
    itos: list[str]
    min_count: int = 1
    max_size: int | None = None
    stoi: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if tuple(self.itos[: len(SPECIALS)]) != SPECIALS:
            raise DatasetError(f"vocabulary must start with {list(SPECIALS)}, got {self.itos[:4]}")
        if len(set(self.itos)) != len(self.itos):
            raise DatasetError("vocabulary has duplicate words")
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    # Token ids are properties, never hard-coded numbers elsewhere.
    pad_id = property(lambda self: self.stoi[PAD])
    start_id = property(lambda self: self.stoi[START])
    end_id = property(lambda self: self.stoi[END])
    unk_id = property(lambda self: self.stoi[UNK])

    def __len__(self) -> int:
        return len(self.itos)

    @classmethod
    def build(cls, captions: Iterable[Sequence[str]], min_count: int = 5, max_size: int | None = None) -> "Vocabulary":
        """Words seen at least `min_count` times, most frequent first (ties alphabetical),
        at most `max_size` entries including the 4 special tokens."""
        if min_count < 1:
            raise DatasetError(f"min count must be >= 1, got {min_count}")
        if max_size is not None and max_size <= len(SPECIALS):
            raise DatasetError(f"max vocabulary size must be > {len(SPECIALS)}, got {max_size}")
        counts = Counter(w for tokens in captions for w in tokens)
        words = sorted(
            (w for w, c in counts.items() if c >= min_count and w not in SPECIALS), key=lambda w: (-counts[w], w)
        )
        if max_size is not None:
            words = words[: max_size - len(SPECIALS)]
        return cls(list(SPECIALS) + words, min_count=min_count, max_size=max_size)

    def encode(self, tokens: Sequence[str], add_special: bool = True) -> list[int]:
        ids = [self.stoi.get(w, self.unk_id) for w in tokens]
        return [self.start_id, *ids, self.end_id] if add_special else ids

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Ids -> words: stops at <end>, drops <start> and <pad>; <unk> is kept visible."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i in (self.start_id, self.pad_id):
                continue
            words.append(self.itos[i] if 0 <= i < len(self.itos) else UNK)
        return words

    def to_dict(self) -> dict:
        return {"itos": self.itos, "min_count": self.min_count, "max_size": self.max_size}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocabulary":
        if (
            not isinstance(d, dict)
            or not isinstance(d.get("itos"), list)
            or not all(isinstance(w, str) for w in d["itos"])
        ):
            raise DatasetError("vocabulary: expected a JSON object with an 'itos' list of words (strings)")
        min_count, max_size = d.get("min_count", 1), d.get("max_size")
        if not isinstance(min_count, int) or not (max_size is None or isinstance(max_size, int)):
            raise DatasetError(
                f"vocabulary: 'min_count' and 'max_size' must be integers, got {min_count!r} and {max_size!r}"
            )
        return cls(list(d["itos"]), min_count=min_count, max_size=max_size)

    def save(self, path: str | Path) -> None:
        from capgen.io import write_json

        write_json(path, self.to_dict(), indent=None)

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        from capgen.io import read_json

        return cls.from_dict(read_json(path, "vocabulary JSON", DatasetError))
