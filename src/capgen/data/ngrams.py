"""N-gram vectors of captions and their agreement, CIDEr-D's way: for n = 1..4 the cosine of two
captions' n-gram weights (counts, or counts x idf), averaged over n, times a Gaussian penalty on
their length difference. The one implementation behind consensus reranking of beam candidates
(decoding/consensus.py), the typicality of caption-index captions (scripts/build_caption_index.py)
and the agreement of retrieved scene captions (tags/scenes.py). Works on any hashable tokens
(word ids or words); `capgen.evaluation.cider` keeps the toolkit's exact CIDEr-D formula apart.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Callable, Hashable, Sequence

ORDERS = 4
SIGMA = 6.0  # CIDEr-D's length penalty width


class NgramVector:
    """Per order n = 1..ORDERS, the weight of each n-gram and the sum of the squared weights."""

    __slots__ = ("weights", "squares", "length")

    def __init__(self, tokens: Sequence[Hashable], idf: Callable[[tuple], float] | None = None):
        self.length = len(tokens)
        counts = [Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)) for n in range(1, ORDERS + 1)]
        self.weights = counts if idf is None else [{g: c * idf(g) for g, c in x.items()} for x in counts]
        self.squares = [sum(v * v for v in x.values()) for x in self.weights]


def similarity(a: NgramVector, b: NgramVector, length_penalty: bool = True) -> float:
    """Mean over n of the cosine of a's and b's n-gram weights (an order either lacks counts 0),
    times exp(-(len a - len b)^2 / (2 SIGMA^2)) unless length_penalty is False."""
    total = 0.0
    for x, y, sx, sy in zip(a.weights, b.weights, a.squares, b.squares):
        if not sx or not sy:
            continue
        dot = sum(v * y[k] for k, v in x.items() if k in y)
        total += dot / math.sqrt(sx * sy)
    penalty = math.exp(-((a.length - b.length) ** 2) / (2 * SIGMA**2)) if length_penalty else 1.0
    return total / ORDERS * penalty


def agreements(vectors: Sequence[NgramVector], weights: Sequence[float]) -> list[float]:
    """For each vector, the weighted sum of its similarity (no length penalty) with every other one,
    over the other vectors' total weight: one pass through a weighted centroid of unit vectors, so
    a hundred candidates cost a hundred dict walks instead of ten thousand pairs."""
    centroid: list[dict] = [{} for _ in range(ORDERS)]
    for v, w in zip(vectors, weights):
        for c, x, s in zip(centroid, v.weights, v.squares):
            if s:
                scale = w / math.sqrt(s)
                for g, value in x.items():
                    c[g] = c.get(g, 0.0) + scale * value
    total = float(sum(weights))
    out = []
    for v, w in zip(vectors, weights):
        agree = 0.0
        for c, x, s in zip(centroid, v.weights, v.squares):
            if s:  # the centroid holds this vector itself with weight w: cosine 1, taken out
                agree += sum(value * c[g] for g, value in x.items()) / math.sqrt(s) - w
        others = total - w
        out.append(agree / ORDERS / others if others > 0 else 0.0)
    return out
