"""The classifier head as numpy data (no torch), so the tagger also runs in the torch-free runtime."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LinearHead:
    """A classification head on the pooled vector: logits = pooled @ weight.T + bias.

    Kept as numpy so logits cost one small matmul on the pooled features every runner (torch or
    ONNX) already returns; no second network pass and no change to exported graphs.
    """

    weight: np.ndarray  # (num_classes, dim) float32
    bias: np.ndarray  # (num_classes,) float32
    labels: str  # which label set the classes index, e.g. "imagenet-1k"

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    def logits(self, pooled: np.ndarray) -> np.ndarray:
        """(B, dim) -> (B, num_classes) float32."""
        return np.asarray(pooled, dtype=np.float32) @ self.weight.T + self.bias  # (B, C)
