"""Scoring given captions instead of searching for one: the log-probability the decoder gives each
word of a caption it is fed (teacher forcing), through the same `Step` the search runs, so the
torch decoder and the torch-free runtime score alike. Used to rerank human captions of similar
scenes against the decoder's own (capgen.tags.scenes)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from capgen.decoding.config import TokenIds
from capgen.decoding.steps import Rows, Step, expand


def caption_scores(
    step: Step, memory: Rows, state: Rows, ids: TokenIds, captions: Sequence[Sequence[int]]
) -> np.ndarray:
    """One image's memory and state (one row each, as the step's init gives them) and word-id
    captions (no <start>/<end>) -> (len(captions),) float64: each caption's mean log-probability per
    word, its <end> included, so long and short captions compare."""
    n = len(captions)
    if n == 0:
        return np.zeros(0)
    lengths = np.array([len(c) + 1 for c in captions])
    targets = np.full((n, int(lengths.max())), ids.end, dtype=np.int64)  # after <end>: ignored
    for r, c in enumerate(captions):
        targets[r, : len(c)] = c
    memory, state = expand(step, memory, state, 1, n)
    tokens, total, rows = np.full(n, ids.start, dtype=np.int64), np.zeros(n), np.arange(n)
    for t in range(targets.shape[1]):
        logp, state, _ = step(tokens, state, memory)
        live = t < lengths
        total[live] += logp[rows[live], targets[live, t]]
        tokens = targets[:, t]
    return total / lengths
