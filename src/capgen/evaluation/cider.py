"""CIDEr-D exactly as pycocoevalcap computes it, but with the references prepared once.

pycocoevalcap rebuilds every reference's tf-idf vector for each call and takes document frequencies
from the evaluated set. Self-critical training scores ~30k sampled captions per epoch against the
same references, with document frequencies from the training split: here they are computed once,
and each candidate costs one n-gram count and a few dict lookups (tests check equality with
pycocoevalcap to 1e-6).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Mapping, Sequence

import numpy as np

Ngram = tuple[str, ...]


def ngram_counts(words: Sequence[str], n: int = 4) -> Counter:
    """Counts of all 1..n-grams of `words` (pycocoevalcap's precook)."""
    counts: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i : i + k])] += 1
    return counts


class CiderD:
    """CIDEr-D (n=4, sigma=6, clipped, x10) of candidates against an image's references.

    cider = CiderD({"img1.jpg": [["a", "dog", "runs"], ...], ...})   # document frequencies from these
    cider.score("img1.jpg", ["a", "dog", "is", "running"])
    """

    def __init__(self, references: Mapping[str, Sequence[Sequence[str]]], n: int = 4, sigma: float = 6.0):
        if not references:
            raise ValueError("CiderD needs at least one image with references")
        self.n, self.sigma = n, sigma
        cooked = {img: [ngram_counts(r, n) for r in refs] for img, refs in references.items()}
        df: Counter = Counter()
        for refs in cooked.values():
            df.update({g for counts in refs for g in counts})
        self._log_df = {g: math.log(max(1.0, c)) for g, c in df.items()}
        self._log_docs = math.log(float(len(cooked)))
        self._refs = {img: [self._vector(c) for c in refs] for img, refs in cooked.items()}

    def __contains__(self, image: str) -> bool:
        return image in self._refs

    def _vector(self, counts: Counter) -> tuple[list[dict[Ngram, float]], list[float], int]:
        """tf-idf weights per n-gram order, their norms, and the length pycocoevalcap uses (its
        bigram count: a quirk kept so the scores match)."""
        vec: list[dict[Ngram, float]] = [{} for _ in range(self.n)]
        norm = [0.0] * self.n
        length = 0
        for gram, tf in counts.items():
            k = len(gram) - 1
            w = float(tf) * (self._log_docs - self._log_df.get(gram, 0.0))
            vec[k][gram] = w
            norm[k] += w * w
            if k == 1:
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    def score(self, image: str, words: Sequence[str]) -> float:
        """CIDEr-D of one candidate (a word list) for `image`."""
        vec, norm, length = self._vector(ngram_counts(words, self.n))
        refs = self._refs[image]
        total = np.zeros(self.n)
        for ref_vec, ref_norm, ref_length in refs:
            penalty = math.exp(-((length - ref_length) ** 2) / (2 * self.sigma**2))
            for k in range(self.n):
                ref_k = ref_vec[k]
                val = sum(min(w, ref_k[g]) * ref_k[g] for g, w in vec[k].items() if g in ref_k)
                if norm[k] != 0 and ref_norm[k] != 0:
                    val /= norm[k] * ref_norm[k]
                total[k] += val * penalty
        return float(total.mean() / len(refs) * 10.0)

    def scores(self, images: Sequence[str], candidates: Sequence[Sequence[str]]) -> np.ndarray:
        """One score per (image, candidate) pair, as a float64 array."""
        return np.array([self.score(i, c) for i, c in zip(images, candidates)], dtype=np.float64)
