"""The captioning-model interface: teacher-forced `forward` for training, one-step `step` for decoding."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from capgen.data.vocab import PAD, SPECIALS
from capgen.errors import CapgenError

# Derived from the vocabulary's invariant (<pad> is always first), never a magic number.
PAD_ID = SPECIALS.index(PAD)

State = dict[str, Tensor]


class ModelError(CapgenError):
    """A model name, config key or config value is wrong, or features do not fit the model."""


class CaptionModel(nn.Module):
    """Base class of every captioning model.

    Every tensor in `memory` and `state` dicts is batch-first, so decoding can expand, reorder and
    select rows generically (`index_select(0, ...)`) without knowing the model type.
    """

    name: ClassVar[str] = ""  # registry name, set by @register_model
    supports_attention: ClassVar[bool] = False
    # True when the model reads object tags (word_probs / has_image in init_memory and forward).
    reads_tags: bool = False
    # True when `step` accepts a memory with one row per image while the state has m rows per image
    # (rows b*m .. b*m+m-1, as decoding lays out beams): the beams then share one copy of the memory.
    shared_memory: ClassVar[bool] = False
    config: Any
    word_embedding: nn.Module  # a capgen.models.layers.WordEmbedding

    def __init__(self, config: Any, vocab_size: int, feature_dim: int, num_regions: int):
        super().__init__()
        for key, value in (("vocab_size", vocab_size), ("feature_dim", feature_dim), ("num_regions", num_regions)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ModelError(f"{key} must be a positive integer, got {value!r}")
        if vocab_size <= len(SPECIALS):
            raise ModelError(f"vocab_size must be > {len(SPECIALS)} (the special tokens), got {vocab_size}")
        self.config = config
        self.vocab_size = vocab_size
        self.feature_dim = feature_dim
        self.num_regions = num_regions

    # ---- the interface -------------------------------------------------------------------------
    def forward(
        self, pooled: Tensor, grid: Tensor, captions: Tensor, image_index: Tensor | None = None
    ) -> dict[str, Tensor | None]:
        """Teacher forcing. captions (B, T) = <start> w1 .. wn <end> <pad>...

        With `image_index` (B,), pooled/grid hold each image once (I rows) and caption b belongs to
        image image_index[b]: the per-image memory is computed once and shared by its captions.

        Returns {"logits": (B, T-1, V) predicting captions[:, 1:], "aux_loss": scalar tensor,
        "attention": (B, T-1, N) or None}.
        """
        raise NotImplementedError

    def init_memory(self, pooled: Tensor, grid: Tensor) -> State:
        """Per-image tensors computed once per caption (projected features, attention keys)."""
        raise NotImplementedError

    def init_state(self, memory: State) -> State:
        """Decoder state before the first word (<start> is fed by the first `step`)."""
        raise NotImplementedError

    def step(self, tokens: Tensor, state: State, memory: State) -> tuple[Tensor, State, Tensor | None]:
        """tokens (B,) previous word -> (log-probs (B, V), new state, attention (B, N) or None).

        Equals log_softmax of `forward`'s logits at the same position (eval mode).
        """
        raise NotImplementedError

    # ---- helpers shared by all models ------------------------------------------------------------
    def training_memory(self, pooled: Tensor, grid: Tensor, image_index: Tensor | None, **inputs) -> State:
        """init_memory once per image (with a tag-reading model's extra `inputs`), then one row per
        caption (see `forward`)."""
        memory = self.init_memory(pooled, grid, **inputs)
        if image_index is None:
            return memory
        return {k: v.index_select(0, image_index) for k, v in memory.items()}

    def spec(self) -> dict[str, Any]:
        """Everything `create_model(**spec)` needs to rebuild this model (store it in checkpoints)."""
        from capgen.config import config_to_dict

        return {
            "name": self.name,
            "vocab_size": self.vocab_size,
            "feature_dim": self.feature_dim,
            "num_regions": self.num_regions,
            "overrides": config_to_dict(self.config),
        }

    def check_features(self, pooled: Tensor, grid: Tensor) -> None:
        """Fail with one clear line when features come from another encoder than the model's."""
        if pooled.dim() != 2 or grid.dim() != 3 or pooled.shape[0] != grid.shape[0]:
            raise ModelError(
                f"expected pooled (B, D) and grid (B, N, D), got {tuple(pooled.shape)} and {tuple(grid.shape)}"
            )
        if pooled.shape[1] != self.feature_dim or grid.shape[2] != self.feature_dim:
            raise ModelError(
                f"{self.name}: model expects feature dim {self.feature_dim}, got "
                f"{pooled.shape[1]} (pooled) and {grid.shape[2]} (grid); "
                "features from a different encoder?"
            )

    def check_captions(self, captions: Tensor) -> None:
        if captions.dim() != 2 or captions.shape[1] < 2 or captions.dtype != torch.long:
            raise ModelError(f"captions must be a (B, T>=2) long tensor, got {tuple(captions.shape)} {captions.dtype}")

    def zero(self) -> Tensor:
        """A scalar zero on the model's device, for models without an auxiliary loss."""
        return next(self.parameters()).new_zeros(())
