"""Decoding settings, the vocabulary's token ids that decoding needs, and results (no torch: the
torch-free capgen.runtime builds the same DecodeConfig and TokenIds)."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from capgen.data.vocab import Vocabulary

# The rules live in torch-free rules.py, shared with capgen.runtime; re-exported for old imports.
from capgen.decoding.rules import (  # noqa: F401
    BAD_ENDINGS,
    FUNCTION_WORDS,
    GUIDE_PENALTY,
    MAX_BEAM,
    MAX_GUIDE_PENALTY,
    METHODS,
    SAME_WORDS,
)
from capgen.errors import CapgenError


class DecodeError(CapgenError):
    """Decoding settings or inputs are invalid."""


@dataclass(frozen=True)
class TokenIds:
    """The vocabulary ids decoding needs, as one object (never loose integers)."""

    pad: int
    start: int
    end: int
    unk: int
    bad_endings: tuple[int, ...] = ()  # <end> may not follow these words
    function_words: tuple[int, ...] = ()  # words exempt from `no_repeat_words`
    same_words: tuple[tuple[int, ...], ...] = ()  # groups one word for `no_repeat_words` (rules.SAME_WORDS)

    @classmethod
    def from_vocab(cls, vocab: Vocabulary) -> "TokenIds":
        def ids(words) -> tuple[int, ...]:
            return tuple(sorted(vocab.stoi[w] for w in words if w in vocab.stoi))

        same = tuple(g for g in (ids(group.split()) for group in SAME_WORDS) if len(g) > 1)
        return cls(
            vocab.pad_id, vocab.start_id, vocab.end_id, vocab.unk_id, ids(BAD_ENDINGS), ids(FUNCTION_WORDS), same
        )

    def check(self, vocab_size: int) -> None:
        for name in ("pad", "start", "end", "unk"):
            token = getattr(self, name)
            if not 0 <= int(token) < vocab_size:
                raise DecodeError(f"decode: {name} id {token} is outside the vocabulary (size {vocab_size})")
        if len({self.pad, self.start, self.end, self.unk}) != 4:
            raise DecodeError(
                f"decode: <pad> ({self.pad}), <start> ({self.start}), <end> ({self.end}) and "
                f"<unk> ({self.unk}) ids must differ"
            )
        if any(not 0 <= i < vocab_size for i in self.bad_endings + self.function_words + sum(self.same_words, ())):
            raise DecodeError(f"decode: a word id is outside the vocabulary (size {vocab_size})")


@dataclass
class DecodeConfig:
    """How to decode. The one place decoding options and their defaults live: `capgen caption`,
    `capgen evaluate`, validation, the Python API and the server all build this.

    method None picks the rule once for every caller: greedy when beam_size == 1 and n_best == 1,
    else beam search.
    """

    method: str | None = None  # "greedy" | "sample" | "beam" | None (from beam_size, as above)
    beam_size: int = 3
    max_len: int = 20  # max words, excluding <start>/<end>
    min_words: int = 1  # no <end> before this many words
    max_words: int | None = None  # the caption's word limit when set (then max_len is not used); see length_limit
    length_penalty: float = 0.0  # GNMT alpha: beam score = logprob / ((5 + len) / 6) ** alpha; 0 = raw sum
    no_repeat_ngram: int = 3  # block repeated n-grams of this size (0 = off)
    # Block a second use of any word outside FUNCTION_WORDS: on the Flickr8k val split (bundled model,
    # beam 3) CIDEr 48.8 -> 50.0 and captions with a repeated content word 5.5% -> 0% (BENCHMARKS.md).
    no_repeat_words: bool = True
    allow_unk: bool = False  # research use: let <unk> be emitted
    n_best: int = 1  # hypotheses per image (beam: <= beam_size; sample: independent draws)
    temperature: float = 1.0  # sampling only, as are top_k, top_p and seed
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # nucleus sampling; 1.0 = off
    seed: int | None = None  # None = torch's global generator
    return_attention: bool = False
    # Consensus reranking (decoding/consensus.py): beam search keeps this many candidates (the beam
    # widened to it) and the one the others agree with most comes first; 0 = off. Measured in
    # BENCHMARKS.md ("Consensus reranking"); off by default because it did not win on everyday photos.
    consensus: int = 0
    # Tag guidance: how much likelier (log-prob) a caption without the tag word must be to win
    # (rules.py); MAX_GUIDE_PENALTY: the word always comes, if any caption can hold it.
    guide_penalty: float = GUIDE_PENALTY

    def __post_init__(self) -> None:
        if self.method is None:
            self.method = "greedy" if self.beam_size == 1 and self.n_best == 1 and not self.consensus else "beam"
        self.validate()

    @property
    def length_limit(self) -> int:
        """The most words a caption may have: max_words, else max_len. A caption reaching it ends
        there cleanly (its last word is one <end> may follow; see rules.py)."""
        return self.max_words if self.max_words is not None else self.max_len

    def validate(self) -> None:
        """Raise DecodeError naming the first invalid setting (decode() calls this again)."""

        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise DecodeError(f"decode: {msg}")

        # Types first: a settings file (an export's decoding.json) may hold anything JSON can say.
        for name, kind, what in _TYPES:
            value = getattr(self, name)
            need(
                _is(value, kind) or (name == "seed" and value is None),
                f"{name} must be {what}, got {type(value).__name__} {value!r:.40}",
            )
        need(self.method in METHODS, f"method must be one of {list(METHODS)}, got {self.method!r}")
        need(1 <= self.beam_size <= MAX_BEAM, f"beam_size must be in [1, {MAX_BEAM}], got {self.beam_size}")
        need(1 <= self.max_len <= 200, f"max_len must be in [1, 200], got {self.max_len}")
        need(
            self.max_words is None or 1 <= self.max_words <= 200, f"max_words must be in [1, 200], got {self.max_words}"
        )
        need(
            1 <= self.min_words <= self.length_limit,
            f"min_words must be in [1, {'max_words' if self.max_words else 'max_len'} = {self.length_limit}], "
            f"got {self.min_words}",
        )
        need(0 <= self.length_penalty <= 10, f"length_penalty must be in [0, 10], got {self.length_penalty}")
        need(self.no_repeat_ngram >= 0, f"no_repeat_ngram must be >= 0, got {self.no_repeat_ngram}")
        need(1 <= self.n_best <= MAX_BEAM, f"n_best must be in [1, {MAX_BEAM}], got {self.n_best}")
        if self.method == "beam":
            need(self.n_best <= self.beam_size, f"n_best ({self.n_best}) must be <= beam_size ({self.beam_size})")
        if self.method == "greedy":
            need(
                self.n_best == 1,
                f"greedy decoding gives one caption; n_best must be 1, got {self.n_best} "
                "(use method 'beam' or 'sample')",
            )
        need(
            self.consensus == 0 or 3 <= self.consensus <= MAX_BEAM,
            f"consensus must be 0 (off) or a number of candidates in [3, {MAX_BEAM}], got {self.consensus}",
        )
        need(
            not self.consensus or self.method == "beam",
            f"consensus reranks beam search candidates; method {self.method!r} has none",
        )
        need(
            not self.consensus or self.n_best <= self.consensus,
            f"n_best ({self.n_best}) must be <= consensus ({self.consensus})",
        )
        need(
            0 <= self.guide_penalty <= MAX_GUIDE_PENALTY,
            f"guide_penalty must be in [0, {MAX_GUIDE_PENALTY:g}], got {self.guide_penalty}",
        )
        need(0 < self.temperature < float("inf"), f"temperature must be > 0 and finite, got {self.temperature}")
        need(self.top_k >= 0, f"top_k must be >= 0, got {self.top_k}")
        need(0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}")


_INT, _REAL = (numbers.Integral, "an integer"), (numbers.Real, "a number")
_TYPES = [
    ("beam_size", *_INT),
    ("max_len", *_INT),
    ("length_penalty", *_REAL),
    ("no_repeat_ngram", *_INT),
    ("no_repeat_words", bool, "true or false"),
    ("allow_unk", bool, "true or false"),
    ("n_best", *_INT),
    ("guide_penalty", *_REAL),
    ("temperature", *_REAL),
    ("top_k", *_INT),
    ("top_p", *_REAL),
    ("seed", numbers.Integral, "an integer or null"),
    ("return_attention", bool, "true or false"),
]


def _is(value, kind) -> bool:
    """isinstance, with True/False counted as booleans only (JSON's true is not the integer 1)."""
    return isinstance(value, bool) if kind is bool else isinstance(value, kind) and not isinstance(value, bool)


@dataclass
class Hypothesis:
    """One caption.

    tokens: word ids without <start>/<end>.
    score: sum of the model's log-probs of the words plus that of <end>. A caption still running
      after length_limit words gets a last step where only <end> may come, so it pays the model's
      probability of ending there and ranks below captions that ended by themselves. Beam search:
      this sum divided by the GNMT length penalty ((5 + len(tokens)) / 6) ** length_penalty.
      Sampling: the model's own log-probs, before temperature / top-k / top-p.
    truncated: the caption was cut at length_limit (the model's own choice at the forced last step was
      not <end>), or every word was blocked.
    attention: (len(tokens), N) when requested and the model attends: row i is the attention
      while predicting tokens[i] (the step that predicts <end> is not included); else None.
    """

    tokens: list[int]
    score: float
    attention: np.ndarray | None = None
    truncated: bool = False
