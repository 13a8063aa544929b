"""FLOPs per image, for throughput benchmarks."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from capgen.encoders.base import ImageEncoder


def count_flops(encoder: ImageEncoder) -> float:
    """FLOPs of one image through the feature forward (FLOPs = 2 x multiply-accumulates)."""
    s = encoder.preprocess.size
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            encoder.features_module()(torch.zeros(1, 3, s, s))
    finally:
        encoder.train(was_training)
    return float(counter.get_total_flops())
