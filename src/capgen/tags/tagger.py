"""Object tags: the encoder's classifier head -> softmax over its classes -> summed per caption word.

tagger = make_tagger(encoder)                  # TagsError when the encoder has no head
tagger(pooled, TagConfig(top_k=5))             # per image: [Tag("cat", 0.93), ...], most likely first
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from capgen.errors import TagsError
from capgen.tags.head import LinearHead, tagger_id
from capgen.tags.words import WordMap

if TYPE_CHECKING:  # tags stay importable without torch; encoders are only passed in
    from capgen.encoders.base import ImageEncoder

# A tag is shown when its word's summed probability reaches this.
DEFAULT_THRESHOLD = 0.1
DEFAULT_TOP_K = 5
# Class probabilities below this are noise and are not summed into their word. Without it the 121
# dog classes' leftovers alone reach "dog" >= 0.1 on 16% of the Flickr8k test photos nobody calls a
# dog (3% with the floor, while 90% instead of 94% of the dog photos keep "dog" >= 0.1).
DEFAULT_CLASS_FLOOR = 0.005


@dataclass(frozen=True)
class Tag:
    word: str
    p: float  # probability of the word: the summed softmax probability of the classes mapped to it

    def to_dict(self) -> dict:
        return {"word": self.word, "p": round(self.p, 4)}


@dataclass(frozen=True)
class TagConfig:
    """How many tags to keep: the `top_k` most likely words whose probability is >= `threshold`;
    a word's probability sums its classes' probabilities that are >= `class_floor`."""

    top_k: int = DEFAULT_TOP_K
    threshold: float = DEFAULT_THRESHOLD
    class_floor: float = DEFAULT_CLASS_FLOOR

    def __post_init__(self):
        if self.top_k < 1:
            raise TagsError(f"tags: expected a positive number of tags, got {self.top_k}")
        if not 0.0 <= self.threshold <= 1.0:
            raise TagsError(f"tag threshold: expected a probability in [0, 1], got {self.threshold}")
        if not 0.0 <= self.class_floor < 1.0:
            raise TagsError(f"tag class floor: expected a probability in [0, 1), got {self.class_floor}")


def softmax(logits: np.ndarray) -> np.ndarray:
    """(B, C) -> (B, C) probabilities; float64 so 1000-way sums stay exact to print precision."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def word_probabilities(class_probs: np.ndarray, words: WordMap, class_floor: float = 0.0) -> np.ndarray:
    """(B, num_classes) class probabilities -> (B, num_words): each word sums the classes mapped to it
    whose probability is >= class_floor."""
    if class_probs.shape[1] != words.num_classes:
        raise TagsError(f"{words.source}: lists {words.num_classes} classes, the classifier has {class_probs.shape[1]}")
    return _sum_per_word(class_probs, words.matrix().astype(np.float64), class_floor)


def _sum_per_word(class_probs: np.ndarray, matrix: np.ndarray, class_floor: float) -> np.ndarray:
    return np.where(class_probs >= class_floor, class_probs, 0.0) @ matrix  # (B, C) @ (C, W) -> (B, W)


def top_tags(word_probs: np.ndarray, words: WordMap, config: TagConfig) -> list[list[Tag]]:
    """Per row, the `top_k` most probable words at or above the threshold, most probable first."""
    out = []
    for row in word_probs:
        order = np.argsort(-row, kind="stable")[: config.top_k]
        out.append([Tag(words.words[j], float(row[j])) for j in order if row[j] >= config.threshold])
    return out


class Tagger:
    """Pooled encoder features -> object tags. Build with `make_tagger(encoder)`."""

    def __init__(self, head: LinearHead, words: WordMap):
        if head.num_classes != words.num_classes:
            raise TagsError(
                f"{words.source}: lists {words.num_classes} classes, the encoder's "
                f"{head.labels} head has {head.num_classes}"
            )
        self.head, self.words = head, words
        self._matrix = words.matrix().astype(np.float64)  # (C, W)
        self._ids: dict[str, str] = {}

    def tagger_id(self, encoder_name: str) -> str:
        """This tagger's name on that encoder (capgen.tags.head.tagger_id, what a tag-reading model
        records), hashed once: the head is 5 MB of weights."""
        if encoder_name not in self._ids:
            self._ids[encoder_name] = tagger_id(encoder_name, self.head.weight, self.head.bias, self.words.class_words)
        return self._ids[encoder_name]

    def word_probs(self, pooled: np.ndarray, class_floor: float = DEFAULT_CLASS_FLOOR) -> np.ndarray:
        """(B, dim) pooled features -> (B, num_words) word probabilities (rows sum to <= 1)."""
        return _sum_per_word(softmax(self.head.logits(pooled)), self._matrix, class_floor)  # (B, W)

    def __call__(self, pooled: np.ndarray, config: TagConfig | None = None) -> list[list[Tag]]:
        """Per image, the confident tag words with probabilities (what decoding can consume)."""
        config = config or TagConfig()
        return top_tags(self.word_probs(pooled, config.class_floor), self.words, config)


def make_tagger(encoder: ImageEncoder, words: str | Path | WordMap | None = None) -> Tagger:
    """The tagger for `encoder`; TagsError (one line, saying captions still work) when it has none.

    words: a mapping file (None = the bundled ImageNet-1k one) or a loaded WordMap.
    """
    head = encoder.classifier()
    if head is None:
        raise TagsError(
            f"tags unavailable: encoder {encoder.name} has no classifier head (only the "
            "efficientnet-lite encoders, or your own GridEncoder given head=, have one); "
            "captions are unaffected"
        )
    if head.weight.shape[1] != encoder.dim:
        raise TagsError(
            f"tags unavailable: encoder {encoder.name}'s head takes {head.weight.shape[1]} "
            f"features, its pooled vector has {encoder.dim}"
        )
    word_map = words if isinstance(words, WordMap) else WordMap.load(words)
    return Tagger(head, word_map)
