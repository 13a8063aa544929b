"""Caption every image of a split from its cached features, in batches: for validation and evaluation."""

from __future__ import annotations

import torch

from capgen.data.prepared import ImageRecord
from capgen.data.vocab import Vocabulary
from capgen.decoding import DecodeConfig, TokenIds, decode
from capgen.features import Features


def caption_records(model, records: list[ImageRecord], feats: Features, vocab: Vocabulary, config: DecodeConfig,
                    batch_size: int = 250) -> dict[str, list]:
    """image id -> n-best hypotheses, decoding `batch_size` images at a time."""
    ids = TokenIds.from_vocab(vocab)
    out: dict[str, list] = {}
    for start in range(0, len(records), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(records)))
        pooled, grid = feats.batch(rows)
        hyps = decode(model, pooled, grid, ids, config)
        for r, h in zip(rows.tolist(), hyps):
            out[records[r].image] = h
    return out
