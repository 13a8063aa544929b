"""The classifier head as numpy data (no torch), so the tagger also runs in the torch-free runtime."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

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

    @cached_property
    def sha256(self) -> str:
        """Fingerprint of the head's weights, hashed once (5 MB): what a head trained on this
        encoder's features (the person head, tags/vetting.py) records, as it means nothing on another's."""
        h = hashlib.sha256()
        for a in (self.weight, self.bias):
            a = np.ascontiguousarray(a, dtype=np.float32)
            h.update(f"{a.shape}|".encode())
            h.update(a.tobytes())
        return h.hexdigest()

    def logits(self, pooled: np.ndarray) -> np.ndarray:
        """(B, dim) -> (B, num_classes) float32."""
        return np.asarray(pooled, dtype=np.float32) @ self.weight.T + self.bias  # (B, C)


def tagger_id(encoder_name: str, weight: np.ndarray, bias: np.ndarray, class_words: tuple[str, ...]) -> str:
    """A short name of one tagger: encoder, and a hash of its head and its class -> word mapping."""
    h = hashlib.sha256(np.ascontiguousarray(weight, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(bias, dtype=np.float32).tobytes())
    h.update("\n".join(class_words).encode())
    return f"{encoder_name} head+words sha256:{h.hexdigest()[:16]}"
