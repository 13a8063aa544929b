"""Object tags from the encoder's classification head, as plain caption words with probabilities.

    from capgen.tags import TagConfig, make_tagger
    tagger = make_tagger(encoder)                    # TagsError when the encoder has no head
    tagger(pooled, TagConfig(top_k=5, threshold=0.1))  # [[Tag("cat", 0.93), Tag("dog", 0.02)], ...]

Classes map to words through a data file (assets/imagenet_words.tsv, editable; see words.py), so
the 121 dog classes are one "dog" whose probability is the sum of theirs (classes below a small
floor, DEFAULT_CLASS_FLOOR, are left out of the sums: their leftovers add up to false tags).
A confident tag can also guide the caption (guide.py): the caption must then contain its word.
"""

from capgen.tags.guide import DEFAULT_GUIDE_THRESHOLD, Guidance, Guide, GuideConfig
from capgen.tags.tagger import (
    DEFAULT_CLASS_FLOOR,
    DEFAULT_THRESHOLD,
    DEFAULT_TOP_K,
    Tag,
    TagConfig,
    Tagger,
    make_tagger,
    softmax,
    top_tags,
    word_probabilities,
)
from capgen.tags.words import WordMap

__all__ = [
    "DEFAULT_GUIDE_THRESHOLD",
    "Guidance",
    "Guide",
    "GuideConfig",
    "DEFAULT_CLASS_FLOOR",
    "DEFAULT_THRESHOLD",
    "DEFAULT_TOP_K",
    "Tag",
    "TagConfig",
    "Tagger",
    "WordMap",
    "make_tagger",
    "softmax",
    "top_tags",
    "word_probabilities",
]
