"""Captions from caption text for objects the decoder barely knows.

A Flickr8k decoder has seen thousands of captions of dogs and people, and almost none of zebras,
pizza or buses: tag guidance puts "zebra" into a sentence about people ("a woman is sitting on a
zebra"). When the tagger is confident about such an object, the caption comes instead from human
captions of other photos of it (the COCO caption text, `../shared/data/text`): among the most
typical captions naming the top tag, the one that also names the photo's other tags best.

The index (assets/caption_index.json, scripts/build_caption_index.py) holds, for each tag word that
the decoder's training captions name fewer than `rare_below` times, its `per_word` most typical
captions (highest mean n-gram agreement with the other captions naming it), most typical first.
Torch-free: the Captioner and the runtime share it, so both write the same captions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from capgen.errors import TagsError
from capgen.tags.words import WordMap, mention_index, mentions

INDEX_FILE = "assets/caption_index.json"
FORMAT = "capgen-caption-index/1"
# Chosen on ../shared/data/coco_dev (BENCHMARKS.md, "Captions from caption text"): a top tag this
# probable switches to the index; among its captions, typicality weighs TYPICALITY against the
# summed probabilities of the tags a caption names.
THRESHOLD = 0.2
TYPICALITY = 0.3
OTHER_TAGS = 3        # the photo's top tags a candidate caption may also name


@dataclass(frozen=True)
class Retrieved:
    caption: str
    word: str         # the tag that chose the index
    p: float

    def to_dict(self) -> dict:
        return {"tag": self.word, "p": round(self.p, 4)}


class CaptionIndex:
    def __init__(self, captions: dict[str, list[str]], words: WordMap, meta: dict):
        self.captions, self.meta = captions, meta
        self.words = list(words.words)
        self._col = {w: j for j, w in enumerate(self.words)}
        self._index = mention_index(self.words)
        self._longest = max(len(w.split()) for w in self.words)
        # per word: each caption's tokens and the tag words it names
        self._named = {w: [mentions([c.split()], self._index, self._longest) for c in caps]
                       for w, caps in captions.items()}

    @classmethod
    def load(cls, path: str | Path | None = None, words: WordMap | None = None) -> "CaptionIndex":
        path = Path(str(resources.files("capgen").joinpath(INDEX_FILE))) if path is None else Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise TagsError(f"{path}: unreadable caption index ({type(e).__name__})") from None
        caps = data.get("captions") if isinstance(data, dict) else None
        if data.get("format") != FORMAT if isinstance(data, dict) else True:
            raise TagsError(f"{path}: not a capgen caption index ({FORMAT})")
        if not isinstance(caps, dict) or not all(isinstance(k, str) and isinstance(v, list) and v and
                                                 all(isinstance(c, str) and c.strip() for c in v)
                                                 for k, v in caps.items()):
            raise TagsError(f"{path}: 'captions' must map tag words to lists of captions")
        words = words or WordMap.load(None)
        known = set(words.words)   # another class -> word file may lack some of the index's words
        return cls({k: v for k, v in caps.items() if k in known}, words,
                   {k: v for k, v in data.items() if k != "captions"})

    def choose(self, word_probs: np.ndarray) -> Retrieved | None:
        """One photo's tag word probabilities (W,) -> a caption from the index, or None (the top tag
        is not confident enough, or the decoder knows it well: no entry)."""
        order = np.argsort(-word_probs, kind="stable")[:OTHER_TAGS]
        top = self.words[int(order[0])]
        p = float(word_probs[order[0]])
        if p < THRESHOLD or top not in self.captions:
            return None
        caps = self.captions[top]
        best, best_score = 0, -1.0
        for rank, named in enumerate(self._named[top]):
            s = sum(float(word_probs[j]) for j in named) + TYPICALITY * (1 - rank / len(caps))
            if s > best_score:   # ties: the more typical caption (the earlier one)
                best, best_score = rank, s
        return Retrieved(caps[best], top, p)


class CorpusCaptions:
    """The captioners' use of the index (the Captioner's and the torch-free runtime's alike): which
    images get a corpus caption, and putting it into their results."""

    def __init__(self, tagger):
        self.tagger, self._index = tagger, None   # the index is read on first use

    def picks(self, pooled, config, guide) -> list[Retrieved | None]:
        """Per image, the caption to take, or None; all None without a tagger, for sampling, or when
        the guide (a GuideConfig, a probability or None) is off or does not ask for it."""
        from capgen.tags.guide import GuideConfig

        guide = GuideConfig.of(guide)
        if self.tagger is None or config.method == "sample" or guide is None or not guide.corpus:
            return [None] * len(pooled)
        if self._index is None:
            self._index = CaptionIndex.load(words=self.tagger.words)
        return [self._index.choose(row) for row in self.tagger.word_probs(pooled)]

    def apply(self, results: list, pooled, config, guide) -> None:
        """Replace the chosen results' captions in place; the decoder's own caption leads the alternatives."""
        for res, pick in zip(results, self.picks(pooled, config, guide)):
            if pick is None:
                continue
            res.alternatives = [(res.caption, res.score), *(res.alternatives or [])][: max(config.n_best - 1, 1)]
            res.caption, res.tokens, res.from_corpus = pick.caption, pick.caption.split(), pick
            if hasattr(res, "attention"):
                res.attention = None   # the decoder attended for its own words, not these
