"""Scoring given captions instead of searching for one: the log-probability the decoder gives each
word of a caption it is fed (teacher forcing), through the same `Step` the search runs, so the
torch decoder and the torch-free runtime score alike. Used to rerank human captions of similar
scenes against the decoder's own (capgen.tags.scenes)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from capgen.decoding.config import TokenIds
from capgen.decoding.steps import Rows, Step, expand

Captions = Sequence[Sequence[int]]  # word ids, no <start>/<end>


def caption_scores(step: Step, memory: Rows, state: Rows, ids: TokenIds, per_image: Sequence[Captions]) -> list:
    """Images' memory and state (one row per image, as the step's init gives them) and, per image,
    word-id captions -> per image, a float64 array: each caption's mean log-probability per word,
    its <end> included, so long and short captions compare. All images' captions go through the
    steps together (a batch of photos costs about one photo's steps); an image with fewer captions
    is padded with repeats, so each keeps one memory row."""
    B = len(per_image)
    k = max((len(c) for c in per_image), default=0)
    if k == 0:
        return [np.zeros(0) for _ in range(B)]
    rows = np.array([b for b in range(B) if per_image[b]], dtype=np.int64)
    if len(rows) < B:
        memory, state = step.rows(memory, rows), step.rows(state, rows)
    memory, state = expand(step, memory, state, len(rows), k)
    flat = [c for b in rows for c in [*per_image[b], *[per_image[b][-1]] * (k - len(per_image[b]))]]
    lengths = np.array([len(c) + 1 for c in flat])
    targets = np.full((len(flat), int(lengths.max())), ids.end, dtype=np.int64)  # after <end>: ignored
    for r, c in enumerate(flat):
        targets[r, : len(c)] = c
    tokens, total, index = np.full(len(flat), ids.start, dtype=np.int64), np.zeros(len(flat)), np.arange(len(flat))
    for t in range(targets.shape[1]):
        logp, state, _ = step(tokens, state, memory)
        live = t < lengths
        total[live] += logp[index[live], targets[live, t]]
        tokens = targets[:, t]
    means = (total / lengths).reshape(len(rows), k)
    out = [np.zeros(0) for _ in range(B)]
    for row, b in enumerate(rows):
        out[b] = means[row, : len(per_image[b])]
    return out
