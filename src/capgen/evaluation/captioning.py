"""Caption every image of a split from its cached features, in batches: for validation and evaluation."""

from __future__ import annotations

from typing import Sequence

import torch

from capgen.data.prepared import ImageRecord
from capgen.data.vocab import Vocabulary
from capgen.decoding import DecodeConfig, TokenIds, decode
from capgen.features import FeatureCache, Features
from capgen.tags import Guidance, Guide, GuideConfig, make_tagger
from capgen.tags.guide import plan_images


def tag_guidance(
    encoder_name: str, vocab: Vocabulary, cache: FeatureCache, records: list[ImageRecord], config: GuideConfig
) -> list[Guidance | None]:
    """Per record, the confident tag its caption must contain (or None), from the cached pooled
    features through the encoder's classifier head: the same guidance `capgen caption` applies."""
    from capgen.encoders import create_encoder

    tagger = make_tagger(create_encoder(encoder_name))
    guide = Guide.build(vocab, tagger.words)
    return plan_images(guide, tagger, cache.pooled([r.image for r in records]), config)


def caption_records(
    model,
    records: list[ImageRecord],
    feats: Features,
    vocab: Vocabulary,
    config: DecodeConfig,
    batch_size: int = 250,
    guidance: Sequence[Guidance | None] | None = None,
) -> dict[str, list]:
    """image id -> n-best hypotheses, decoding `batch_size` images at a time; `guidance` (one per
    record, from `tag_guidance`) makes each caption contain its tag's word."""
    ids = TokenIds.from_vocab(vocab)
    out: dict[str, list] = {}
    for start in range(0, len(records), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(records)))
        pooled, grid = feats.batch(rows)
        include = None if guidance is None else [g.include if g else None for g in guidance[start : start + len(rows)]]
        hyps = decode(model, pooled, grid, ids, config, include=include)
        for r, h in zip(rows.tolist(), hyps):
            out[records[r].image] = h
    return out
