"""Caption metrics the way the COCO caption toolkit computes them."""

from capgen.evaluation.captioning import caption_records
from capgen.evaluation.metrics import java_available, score_captions

__all__ = ["caption_records", "java_available", "score_captions"]
