"""`capgen evaluate`: decode a split with a checkpoint and score it like the COCO caption toolkit."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from capgen.checkpoint import CheckpointError, load_checkpoints
from capgen.data.prepared import PreparedDataset
from capgen.decoding import DecodeConfig, Hypothesis
from capgen.evaluation.captioning import caption_records, tag_guidance
from capgen.evaluation.metrics import METRIC_ORDER, score_captions
from capgen.evaluation.results import write_results
from capgen.evaluation.stats import caption_stats
from capgen.features import FeatureCache, Features
from capgen.tags import Guide, GuideConfig


@dataclass
class EvalResult:
    metrics: dict
    predictions: list[dict]  # COCO results format: [{"image_id": file name, "caption": str}]
    seconds: float


def evaluate_checkpoint(
    checkpoint: str | Path | Sequence[str | Path],
    data: PreparedDataset,
    cache: FeatureCache,
    split: str,
    decode_config: DecodeConfig,
    out: str | Path | None = None,
    meteor: bool = True,
    any_vocab: bool = False,
    guide: GuideConfig | None = None,
) -> EvalResult:
    """Decode `split` with one checkpoint (or several, as an ensemble) and score it; metrics also hold
    caption_stats (mean length, distinct words, repetition, truncation). `guide`: tag guidance (as
    `capgen caption` applies by default); None = the model alone, as benchmarks are."""
    paths = [checkpoint] if isinstance(checkpoint, (str, Path)) else list(checkpoint)
    ckpt = load_checkpoints(paths)
    checkpoint = paths[0] if len(paths) == 1 else paths
    if not any_vocab and ckpt.vocab.itos != data.vocab.itos:
        raise CheckpointError(
            f"{checkpoint}: trained with another vocabulary ({len(ckpt.vocab)} words) than "
            f"{data.root} ({len(data.vocab)} words); pass --any-vocab to evaluate anyway"
        )
    cache.check(data, split, encoder=ckpt.encoder)
    records = data.split(split)
    start = time.perf_counter()
    guidance = (
        tag_guidance(ckpt.encoder.get("name"), ckpt.vocab, cache, records, guide)
        if guide is not None
        else [None] * len(records)
    )
    hyps = caption_records(
        ckpt.model, records, Features.load(cache, records), ckpt.vocab, decode_config, guidance=guidance
    )
    # No hypothesis is possible only when blocking leaves none (tiny vocabularies): an empty caption.
    best = [(hyps[r.image] or [Hypothesis([], float("-inf"), truncated=True)])[0] for r in records]
    words = [Guide.render(ckpt.vocab.decode(h.tokens), g)[0] for h, g in zip(best, guidance)]
    predictions = [{"image_id": r.image, "caption": " ".join(w)} for r, w in zip(records, words)]
    seconds = time.perf_counter() - start
    metrics = score_captions(
        {p["image_id"]: p["caption"] for p in predictions},
        {r.image: list(r.raw) for r in records},
        official=True,
        meteor=meteor,
    )
    metrics.update(caption_stats(words, [h.truncated for h in best]))
    if guide is not None:
        stand_ins = sum(g is not None and g.stand_in is not None for g in guidance)
        metrics["guided"] = {**guide.to_dict(), "images": sum(g is not None for g in guidance), "stand_ins": stand_ins}
    metrics.update(
        {
            "split": split,
            "images": len(records),
            "checkpoint": [str(p) for p in checkpoint] if isinstance(checkpoint, list) else str(checkpoint),
            "decode": {k: v for k, v in vars(decode_config).items()},
            "decode_seconds": seconds,
        }
    )
    write_results(out, predictions, metrics)
    return EvalResult(metrics, predictions, seconds)


def metrics_table(metrics: dict) -> str:
    names = [k for k in METRIC_ORDER if k in metrics]
    head = "| " + " | ".join(names) + " |"
    sep = "| " + " | ".join("---" for _ in names) + " |"
    row = "| " + " | ".join(f"{100 * metrics[k]:.1f}" for k in names) + " |"
    return "\n".join([head, sep, row])
