"""Per-epoch validation: decode the val split (batched) and score CIDEr-D and BLEU-4."""

from __future__ import annotations

from capgen.data.prepared import ImageRecord
from capgen.data.vocab import Vocabulary
from capgen.decoding import DecodeConfig
from capgen.evaluation import caption_records, score_captions


def validate(model, records: list[ImageRecord], feats, vocab: Vocabulary, cfg: DecodeConfig) -> dict:
    hyps = caption_records(model, records, feats, vocab, cfg)
    preds = {k: " ".join(vocab.decode(h[0].tokens)) for k, h in hyps.items()}
    refs = {r.image: list(r.raw) for r in records}
    scores = score_captions(preds, refs, official=False)  # fast, Java-free; `capgen evaluate` is official
    return {"CIDEr": scores["CIDEr"], "BLEU-4": scores["BLEU-4"]}
