"""Many captions' tf-idf n-gram vectors as flat numpy arrays, and candidates' weighted agreement with
any few of them.

The same arithmetic as capgen.data.ngrams (NgramVector with idf, `similarity` with the length
penalty), laid out for a corpus that is queried photo by photo: the nearest-neighbour rerank
(capgen.tags.neighbours) compares 5 candidates with the ~150 captions of a photo's 30 nearest
training photos. Built as Python objects those 150 vectors cost ~20 ms per photo, more than the
decoding they rerank; here the whole corpus is built once at load in a few hundred ms, and a query
is a handful of numpy calls (well under a millisecond).

n-grams are numbered order by order: an n-gram is the pair (its first n-1 words' (n-1)-gram id,
its last word's id), so ids stay small for any vocabulary, and a candidate's n-grams are found by
binary search in the sorted pairs.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import numpy as np

from capgen.data.ngrams import ORDERS, SIGMA


class NgramTable:
    """captions: token tuples; documents: per caption, the document (photo) it belongs to, for the
    document frequencies (idf = log(documents) - log(df), as NgramVector's idf)."""

    def __init__(self, captions: Sequence[Sequence[str]], documents: Sequence[int]):
        self._words = {w: i for i, w in enumerate(sorted({w for c in captions for w in c}))}
        n_docs = int(max(documents)) + 1 if len(documents) else 1
        self.log_n = math.log(n_docs)
        lengths = np.array([len(c) for c in captions], dtype=np.int64)
        self.lengths = lengths
        flat = np.array([self._words[w] for c in captions for w in c], dtype=np.int64)
        caption_of = np.repeat(np.arange(len(captions)), lengths)
        end = np.repeat(np.cumsum(lengths), lengths)  # where each position's caption ends
        V = max(len(self._words), 1)
        self._keys: list[np.ndarray] = []  # per order: the sorted (prefix id, word) pairs as ints
        ids, cap, offset = [], [], 0
        prev = flat.copy()  # unigram "pair" = the word itself
        pos = np.arange(len(flat))
        for n in range(1, ORDERS + 1):
            if n > 1:
                ok = pos + n - 1 < end[pos]  # an n-gram starting here fits in its caption
                pos, prev = pos[ok], prev[ok] * V + flat[pos[ok] + n - 1]
            keys, gram = np.unique(prev, return_inverse=True)
            self._keys.append(keys)
            ids.append(gram + offset)
            cap.append(caption_of[pos])
            offset += len(keys)
            prev = gram  # the next order's prefix: this n-gram's id within its order
        self._offsets = np.cumsum([0] + [len(k) for k in self._keys])
        gram, cap = np.concatenate(ids), np.concatenate(cap)
        docs = np.asarray(documents, dtype=np.int64)[cap]
        df = np.bincount(_distinct(docs * offset + gram) % offset, minlength=offset)
        self.idf = self.log_n - np.log(np.maximum(df, 1))
        # one entry per (caption, n-gram): its count x idf, divided by its order's norm in the caption
        pair, count = np.unique(cap * offset + gram, return_counts=True)
        self._gram, row = pair % offset, pair // offset
        order = np.searchsorted(self._offsets, self._gram, side="right") - 1
        weight = count * self.idf[self._gram]
        squares = np.bincount(row * ORDERS + order, weight * weight, minlength=len(captions) * ORDERS)
        norm = np.sqrt(squares[row * ORDERS + order])
        self._value = np.divide(weight, norm, out=np.zeros_like(weight), where=norm > 0)
        self._start = np.searchsorted(row, np.arange(len(captions) + 1))

    def agreement(self, candidates: Sequence[Sequence[str]], rows: np.ndarray, weights: np.ndarray) -> list[float]:
        """For each candidate, the weighted mean over the captions `rows` of its `similarity` (with
        the length penalty) to them, as capgen.data.ngrams computes it."""
        rows, weights = np.asarray(rows, dtype=np.int64), np.asarray(weights, dtype=np.float64)
        total = float(weights.sum())
        if not len(candidates) or total <= 0:
            return [0.0] * len(candidates)
        counts = self._start[rows + 1] - self._start[rows]
        entry = ranges(self._start[rows], counts)
        ref_gram, ref_value, ref_row = self._gram[entry], self._value[entry], np.repeat(np.arange(len(rows)), counts)
        out = []
        for words in candidates:
            gram, value = self._vector(words)
            if not len(gram):
                out.append(0.0)
                continue
            at = np.minimum(np.searchsorted(gram, ref_gram), len(gram) - 1)
            hit = gram[at] == ref_gram
            dot = np.bincount(ref_row[hit], ref_value[hit] * value[at[hit]], minlength=len(rows))
            penalty = np.exp(-((len(words) - self.lengths[rows]) ** 2) / (2 * SIGMA**2))
            out.append(float((weights * penalty * dot).sum()) / ORDERS / total)
        return out

    def _vector(self, words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """A candidate's known n-grams (sorted ids) and their normalised tf-idf weights. n-grams the
        corpus lacks match nothing but weigh log(documents) each in the norm, as NgramVector's idf
        gives them."""
        V = max(len(self._words), 1)
        word = np.array([self._words.get(w, -1) for w in words], dtype=np.int64)  # -1: not in the corpus
        prefix, grams, values = word, [], []
        for n in range(1, min(ORDERS, len(words)) + 1):
            if n > 1:  # an n-gram = (its first n-1 words' id, its last word)
                last = word[n - 1 :]
                prefix = np.where((prefix[:-1] >= 0) & (last >= 0), prefix[:-1] * V + last, -1)
            keys = self._keys[n - 1]
            at = np.minimum(np.searchsorted(keys, prefix), max(len(keys) - 1, 0))
            known = (prefix >= 0) & (keys[at] == prefix) if len(keys) else np.zeros(len(prefix), bool)
            prefix = np.where(known, at, -1)  # the next order's prefixes: ids within this order
            gram, count = np.unique(at[known] + self._offsets[n - 1], return_counts=True)
            weight = count * self.idf[gram]
            unknown = Counter(tuple(words[i : i + n]) for i in np.flatnonzero(~known))
            norm = math.sqrt(float((weight * weight).sum()) + sum((c * self.log_n) ** 2 for c in unknown.values()))
            if norm > 0 and len(gram):
                grams.append(gram)
                values.append(weight / norm)
        if not grams:
            return np.zeros(0, np.int64), np.zeros(0)
        return np.concatenate(grams), np.concatenate(values)  # orders in turn: sorted ids


def ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The concatenation of arange(s, s + c) for each (s, c): the flat rows of some groups of rows."""
    return np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())


def _distinct(x: np.ndarray) -> np.ndarray:
    """np.unique(x) by sorting: numpy 2's hash-based unique is several times slower on a million ints."""
    x = np.sort(x)
    return x[np.concatenate([[True], x[1:] != x[:-1]])] if len(x) else x
