"""Scoring given captions instead of searching for one: the log-probability the decoder gives each
word of a caption it is fed (teacher forcing), as a mean per word. Used to rerank human captions of
similar scenes against the decoder's own (capgen.tags.scenes), two ways with one result:
  - caption_scores: through the same `Step` the search runs (a call per word), so the captioner's
    own decoder scores in torch and in the torch-free runtime alike;
  - sequence_scores: through a graph that scores whole captions in one call (the scene scorer,
    capgen.models.onnx_score), the same captions laid out once."""

from __future__ import annotations

from typing import Callable, Sequence

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


def sequence_scores(
    token_logp: Callable[[np.ndarray, np.ndarray], np.ndarray], ids: TokenIds, per_image: Sequence[Captions]
) -> list:
    """As caption_scores, through token_logp(captions (R, T): <start> words <end> padded with <end>,
    image_index (R,)) -> (R, T-1) each next token's log-probability: one call for all images."""
    flat = [(b, c) for b, caps in enumerate(per_image) for c in caps]
    if not flat:
        return [np.zeros(0) for _ in per_image]
    lengths = np.array([len(c) + 1 for _, c in flat])  # the words and <end>
    captions = np.full((len(flat), int(lengths.max()) + 1), ids.end, dtype=np.int64)
    captions[:, 0] = ids.start
    for r, (_, c) in enumerate(flat):
        captions[r, 1 : len(c) + 1] = c
    logp = token_logp(captions, np.array([b for b, _ in flat], dtype=np.int64))
    live = np.arange(logp.shape[1]) < lengths[:, None]  # after <end>: ignored
    means = np.where(live, logp, 0.0).sum(axis=1, dtype=np.float64) / lengths
    bounds = np.cumsum([0, *(len(caps) for caps in per_image)])
    return [means[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
