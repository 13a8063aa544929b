"""Caption metrics the way the COCO caption toolkit computes them."""

from capgen.evaluation.metrics import java_available, score_captions

__all__ = ["java_available", "score_captions"]
