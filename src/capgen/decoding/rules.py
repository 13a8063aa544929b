"""The decoding rules, in numpy: the word lists, the length penalty and `Rules`, the one mask of
which tokens may come next. Every search applies it, and SCST's policy applies the same mask to
its (torch) logits, so the sampler and the gradient agree.

What every search enforces at step t (t words emitted so far), in this order, with
L = DecodeConfig.length_limit (max_words, else max_len):
  - at t == L only <end> may come (a caption still running is cut and pays for ending there);
  - <pad> and <start> never; <unk> only with allow_unk;
  - no <end> at t < min_words (never an empty caption), and none right after a word of BAD_ENDINGS;
  - at t == L - 1 no word of BAD_ENDINGS (<end> must be able to follow the last word);
  - no token completing an n-gram (n = no_repeat_ngram) already in the caption;
  - with no_repeat_words, no second use of a word outside FUNCTION_WORDS (SAME_WORDS count as one).
"""

from __future__ import annotations

import numpy as np

METHODS = ("greedy", "sample", "beam")
# Beam search holds beam_size rows per image for every step; past this, memory grows with no gain.
MAX_BEAM = 32

# A caption never ends on these: articles, prepositions, conjunctions, possessives, auxiliaries
# ("... standing in front of a"). <end> is not allowed after them.
BAD_ENDINGS = frozenset(
    "a an the of in on at to for from with by and or but as into onto over under near while his her "
    "their its is are was were be".split()
)
# Words that may repeat in a caption ("a dog and a cat"); with `no_repeat_words` every other word
# may appear only once ("a woman and a woman" is blocked).
FUNCTION_WORDS = BAD_ENDINGS | frozenset(
    "it they he she them there that which who one two three four other another each some up down out "
    "off through together very front back side top next".split()
)

# Words that are one word for `no_repeat_words`: once "bike" names a bicycle, "bicycle" is a second
# use ("a man is riding a bike on a bicycle": 18 of 2,267 Flickr8k val + test and coco_dev captions,
# once "bike" could name the tag "bicycle", tags/guide.py), and captions call motorbikes bikes too
# ("a man is riding a bike on a motorcycle": 9 more). One group: a token belongs to one word.
SAME_WORDS = ("bike bikes bicycle bicycles motorcycle motorcycles motorbike",)

# Tag guidance (include=) ranks a caption by its group: one without any required word pays
# DecodeConfig.guide_penalty (GUIDE_PENALTY by default), and one that names the word among its first
# EARLY_WORDS words gains EARLY_BONUS: "a cat is sitting on a ramp" (-12.3) beats "a man is sitting on
# a cat" (-11.4), while "a man is sitting on a tripod" (-8.4) still beats "a tripod is sitting on a
# camera" (-13.9). The object of a photo is usually its subject, but a model trained on Flickr8k puts a
# person first; the bonus is what being the subject is worth.
# The penalty was 1e4 (the tag word always came) until 0.9.0: a word the decoder cannot place made
# "swim trunks is playing in a pool", "a hockey player is playing in the puck". A caption without the
# word now wins when it is more than GUIDE_PENALTY likelier (log-prob): chosen on Flickr8k val and
# coco_dev (BENCHMARKS.md, "Guidance that gives way"): val CIDEr 52.5 -> 53.1, coco_dev 56.0 -> 55.5.
GUIDE_PENALTY = 4.5
MAX_GUIDE_PENALTY = 1.0e4  # the word always comes, if any caption can hold it (0.8.0's ranking)
EARLY_WORDS = 3
EARLY_BONUS = 2.0


def length_normalised(score, length, alpha: float):
    """GNMT length normalisation of a beam score: score / ((5 + length) / 6) ** alpha (alpha 0 = raw
    sum). Works on floats, numpy arrays and torch tensors alike."""
    return score / ((5.0 + length) / 6.0) ** alpha


def token_masks(ids, cfg, vocab_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(V,) bool masks for TokenIds `ids` under DecodeConfig `cfg`: the tokens never emitted
    (<pad>, <start>, <unk> unless allowed), the words <end> may not follow, the words that may repeat."""

    def mask(tokens) -> np.ndarray:
        m = np.zeros(vocab_size, dtype=bool)
        m[list(tokens)] = True
        return m

    never = mask({ids.pad, ids.start} | (set() if cfg.allow_unk else {ids.unk}))
    return never, mask(ids.bad_endings), mask(ids.function_words)


def word_of(ids, vocab_size: int) -> np.ndarray | None:
    """(V,) each token's word for `no_repeat_words`: itself, or the first of its SAME_WORDS group;
    None when the vocabulary has no such group."""
    if not ids.same_words:
        return None
    out = np.arange(vocab_size)
    for group in ids.same_words:
        out[list(group)] = group[0]
    return out


NEG_INF = -np.inf


class Rules:
    """Which token may come next, per row, at step t (t words emitted so far): the list above."""

    def __init__(self, ids, cfg, vocab_size: int):
        self.ids, self.cfg = ids, cfg
        self.never, self.bad_end, self.may_repeat = token_masks(ids, cfg, vocab_size)  # (V,) each
        self.word_of = word_of(ids, vocab_size)

    def final(self, t: int) -> bool:
        return t == self.cfg.length_limit

    def ban(self, t: int, prev: np.ndarray, history: np.ndarray) -> np.ndarray:
        """(R, V) bool, True where a token may not come. prev (R,) the token fed at step t; history
        (R, >= t) the words so far."""
        R, V, end = len(prev), len(self.never), self.ids.end
        if self.final(t):
            ban = np.ones((R, V), dtype=bool)
            ban[:, end] = False
            return ban
        ban = np.broadcast_to(self.never, (R, V)).copy()
        if t < self.cfg.min_words:
            ban[:, end] = True
        else:
            ban[:, end] |= self.bad_end[prev]
        if t == self.cfg.length_limit - 1:  # the last word the limit allows: <end> must be able to follow it
            ban |= self.bad_end
        _ban_ngrams(ban, history, t, self.cfg.no_repeat_ngram)
        if self.cfg.no_repeat_words and t > 0:  # no second use of a word outside FUNCTION_WORDS
            seen = np.zeros((R, V), dtype=bool)
            words = history[:, :t] if self.word_of is None else self.word_of[history[:, :t]]
            np.put_along_axis(seen, words, True, axis=1)
            if self.word_of is not None:  # a word seen: every token of it
                seen = seen[:, self.word_of]
            ban |= seen & ~self.may_repeat
        return ban

    def apply(self, logp: np.ndarray, t: int, prev: np.ndarray, history: np.ndarray) -> np.ndarray:
        """logp (R, V) with -inf where `ban` says no (a new array)."""
        return np.where(self.ban(t, prev, history), np.float32(NEG_INF), logp).astype(np.float32, copy=False)


def _ban_ngrams(ban: np.ndarray, history: np.ndarray, length: int, n: int) -> None:
    """In place: True for every token that would complete an n-gram already in the row."""
    if n <= 0 or length < n:  # no complete n-gram yet
        return
    starts = np.arange(length - n + 1)  # every n-gram's start
    grams = history[:, starts[:, None] + np.arange(n)]  # (R, G, n)
    prefix = history[:, length - (n - 1) : length]  # (R, n-1) the current context
    match = (grams[:, :, :-1] == prefix[:, None, :]).all(axis=-1)  # (R, G); n=1: all True
    rows, cols = np.nonzero(match)
    ban[rows, grams[rows, cols, -1]] = True
