"""Object tags as decoder input: the encoder's classifier head, inside the model.

The head (logits = pooled @ W.T + b), the class -> tag word sum and the tag words' token ids are
buffers of the model, so a tag-reading model computes its own tags from the pooled vector in
`init_memory`: decoding, the ONNX init graph and the torch-free runtime need nothing new, and a
checkpoint cannot run with another tagger than the one it was trained with (`tagger` names it).

Each of the top `k` tag words becomes one memory token: the mean of its words' embeddings (so
"teddy bear" is one token) plus an embedding of its probability. Text-only training feeds simulated
word probabilities instead (training/text_batches.py).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from capgen.models.base import PAD_ID, ModelError

# Class probabilities below this are not summed into their word (as tags/tagger.DEFAULT_CLASS_FLOOR:
# the 121 dog breeds' leftovers would otherwise add up to a confident "dog" on any photo).
CLASS_FLOOR = 0.005


class TagInput(nn.Module):
    """pooled (B, D) -> word probabilities (B, W) -> k memory tokens (B, k, d)."""

    def __init__(self, k: int, num_classes: int, num_words: int, word_len: int, feature_dim: int, d: int):
        super().__init__()
        if min(k, num_classes, num_words, word_len) < 1 or k > num_words:
            raise ModelError(
                f"tag input: expected 1 <= tag_tokens <= tag_words and positive sizes, got "
                f"tag_tokens={k}, tag_classes={num_classes}, tag_words={num_words}, "
                f"tag_word_len={word_len}"
            )
        self.k, self.d = k, d
        self.register_buffer("head_weight", torch.zeros(num_classes, feature_dim))
        self.register_buffer("head_bias", torch.zeros(num_classes))
        self.register_buffer("class_word", torch.zeros(num_classes, num_words))  # 0/1
        self.register_buffer("word_ids", torch.zeros(num_words, word_len, dtype=torch.long))  # PAD-padded
        self.prob = nn.Sequential(nn.Linear(2, d), nn.GELU(), nn.Linear(d, d))
        self.norm = nn.LayerNorm(d)

    @property
    def num_words(self) -> int:
        return int(self.word_ids.shape[0])

    @torch.no_grad()
    def fill(self, weight: np.ndarray, bias: np.ndarray, class_word: np.ndarray, word_ids: np.ndarray) -> None:
        """Set the tagger (at model build time; checkpoints restore the buffers)."""
        for name, value in (
            ("head_weight", weight),
            ("head_bias", bias),
            ("class_word", class_word),
            ("word_ids", word_ids),
        ):
            buf = getattr(self, name)
            if tuple(value.shape) != tuple(buf.shape):
                raise ModelError(f"tag input: {name} has shape {tuple(value.shape)}, expected {tuple(buf.shape)}")
            buf.copy_(torch.as_tensor(value, dtype=buf.dtype))

    def word_probs(self, pooled: Tensor) -> Tensor:
        """(B, D) pooled features -> (B, W) tag word probabilities (as tags.Tagger.word_probs)."""
        p = torch.softmax(pooled.float() @ self.head_weight.t() + self.head_bias, dim=-1)  # (B, C)
        p = torch.where(p >= CLASS_FLOOR, p, torch.zeros_like(p))
        return p @ self.class_word  # (B, W)

    def forward(self, word_probs: Tensor, embed: nn.Module) -> Tensor:
        """(B, W) word probabilities -> (B, k, d) tokens of the k most probable words."""
        p, idx = word_probs.topk(self.k, dim=-1)  # (B, k)
        ids = self.word_ids[idx]  # (B, k, L)
        mask = (ids != PAD_ID).unsqueeze(-1).float()  # (B, k, L, 1)
        words = (embed(ids) * mask).sum(2) / mask.sum(2).clamp_min(1.0)  # (B, k, d)
        feats = torch.stack([p, torch.log(p.clamp_min(1e-4)) / math.log(1e4)], -1)  # (B, k, 2) in ~[-1, 1]
        return self.norm(words * math.sqrt(self.d) + self.prob(feats))  # (B, k, d)


def tag_word_ids(words: tuple[str, ...], stoi: dict[str, int], unk_id: int) -> np.ndarray:
    """(W, L) vocabulary ids of each tag word's tokens ("teddy bear" -> 2 ids), PAD-padded."""
    split = [w.split() for w in words]
    out = np.full((len(words), max(len(s) for s in split)), PAD_ID, dtype=np.int64)
    for i, parts in enumerate(split):
        out[i, : len(parts)] = [stoi.get(p, unk_id) for p in parts]
    return out
