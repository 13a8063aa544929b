"""What captioning returns, one `CaptionResult` per image, and its one JSON schema (`to_dict`).

The torch Captioner, the torch-free Runtime and the server all build results with `from_hypotheses`
and write them with `to_dict`, so every path writes the same JSON for the same photo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from capgen.tags.guide import Guide


@dataclass
class CaptionResult:
    """One image's caption.

    score: the decoder's score of the caption (sum of word log-probs, length-normalised for beam
      search with a length penalty); higher is better, 0 is the maximum.
    tokens: the caption's words (so `caption == " ".join(tokens)`).
    alternatives: the next best (caption, score) pairs when n_best > 1, best first.
    attention: (len(tokens), H, W) attention over the encoder grid while predicting each word, or
      None when not requested or the model does not attend.
    image_size: (width, height) of the loaded, upright image.
    truncated: the caption was cut at the length limit (the model would have gone on).
    tags: object words from the encoder's classifier with probabilities (capgen.tags.Tag), most
      likely first, when asked for and available; None otherwise.
    guided: the confident tag the caption was made to contain (capgen.tags.Guidance), or None.
    from_corpus: the caption is a human caption of another photo of this object, from caption text
      (capgen.tags.corpus_captions.Retrieved: which tag chose it), not the decoder's; its score and
      attention are then the decoder's own caption's, which `alternatives` keeps first.
    """

    caption: str
    score: float
    tokens: list[str]
    alternatives: list[tuple[str, float]] = field(default_factory=list)
    attention: np.ndarray | None = None
    image_size: tuple[int, int] = (0, 0)
    truncated: bool = False
    tags: list | None = None
    guided: object | None = None
    from_corpus: object | None = None

    def to_dict(self, attention: bool = False) -> dict:
        """JSON-ready dict: caption, score, alternatives (if any), attention payload (if asked and present)."""
        d: dict = {"caption": self.caption, "score": _score(self.score), "truncated": self.truncated}
        if self.tags is not None:
            d["tags"] = [t.to_dict() for t in self.tags]
        if self.guided is not None:
            d["guided"] = self.guided.to_dict()
        if self.from_corpus is not None:
            d["from_corpus"] = self.from_corpus.to_dict()
        if self.alternatives:
            d["alternatives"] = [{"caption": c, "score": _score(s)} for c, s in self.alternatives]
        if attention and self.attention is not None:
            # per word, the H*W weights row-major (top-left first); float64 so rounding prints short
            weights = self.attention.reshape(len(self.tokens), -1).astype(np.float64)
            d["attention"] = {
                "words": list(self.tokens),
                "grid": list(self.attention.shape[1:]),
                "weights": np.round(weights, 5).tolist(),
            }
        return d


def from_hypotheses(
    hyps: Sequence, words_of, guided=None, image_size: tuple[int, int] = (0, 0), grid_hw: tuple[int, int] | None = None
) -> CaptionResult:
    """One image's hypotheses (capgen.decoding.Hypothesis, best first) -> its CaptionResult.

    words_of: token ids -> words (Vocabulary.decode). guided: the image's capgen.tags.Guidance or
    None; its stand-in word is written as the tag word. grid_hw: the encoder grid, to shape the best
    hypothesis's attention (len(words), H, W) when it has some.
    """
    if not hyps:  # only possible when n-gram blocking leaves nothing; keep the output shape
        return CaptionResult("", float("-inf"), [], image_size=image_size)
    best = hyps[0]
    words, source = Guide.render(words_of(best.tokens), guided)
    attention = None
    if best.attention is not None and grid_hw is not None:
        attention = np.asarray(best.attention, dtype=np.float32)[source].reshape(len(words), *grid_hw)
    # Guided only when the word made it in (blocking can make it impossible).
    used = guided if guided is not None and any(t in guided.include for t in best.tokens) else None
    return CaptionResult(
        caption=" ".join(words),
        score=float(best.score),
        tokens=words,
        alternatives=[(" ".join(Guide.render(words_of(h.tokens), guided)[0]), float(h.score)) for h in hyps[1:]],
        attention=attention,
        image_size=image_size,
        truncated=bool(best.truncated),
        guided=used,
    )


def _score(x: float) -> float | None:
    # JSON has no -inf (an empty caption's score); None reads as null everywhere.
    return round(x, 4) if math.isfinite(x) else None
