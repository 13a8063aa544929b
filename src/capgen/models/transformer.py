"""Transformer decoder captioner: pre-LN layers with causal self-attention and cross-attention
over the projected grid plus the pooled vector as one extra memory token. Decoding uses a K/V cache."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from capgen.models.base import CaptionModel, ModelError, State
from capgen.models.layers import FeatureProjection, OutputHead, WordEmbedding, sinusoid
from capgen.models.registry import register_model
from capgen.models.tag_input import TagInput


@dataclass
class TransformerConfig:
    d_model: int = 256
    num_layers: int = 2
    num_heads: int = 8
    ff_dim: int = 1024
    dropout: float = 0.1
    positions: str = "sinusoidal"  # "sinusoidal" | "learned"
    max_positions: int = 64  # only for learned positions: longest input incl. <start>
    tie_embeddings: bool = True
    glove: bool = False
    # Object tags as input (models/tag_input.py): the top `tag_tokens` tag words join the memory.
    # 0 = no tags (every checkpoint before them). The sizes and the tagger's name are set by the
    # builder from the encoder's head (training/tag_model.py), never by hand.
    tag_tokens: int = 0
    tag_classes: int = 0
    tag_words: int = 0
    tag_word_len: int = 0
    tagger: str = ""
    # When the most probable tag reaches this, the image is hidden and the caption rests on the tags
    # (0 = never). Chosen after training, on held-out photos; it is no training setting.
    image_gate: float = 0.0

    def __post_init__(self) -> None:
        if self.d_model < 2 or self.d_model % 2 or self.d_model % max(self.num_heads, 1):
            raise ModelError(
                f"transformer: d_model ({self.d_model}) must be even and divisible by num_heads ({self.num_heads})"
            )
        if self.num_heads < 1 or self.num_layers < 1 or self.ff_dim < 1:
            raise ModelError("transformer: num_heads, num_layers and ff_dim must be >= 1")
        if not 0.0 <= self.image_gate <= 1.0:
            raise ModelError(f"transformer: image_gate must be a probability in [0, 1], got {self.image_gate}")
        if not 0.0 <= self.dropout < 1.0:
            raise ModelError(f"transformer: dropout must be in [0, 1), got {self.dropout}")
        if self.positions not in ("sinusoidal", "learned"):
            raise ModelError(f"transformer: positions must be 'sinusoidal' or 'learned', got {self.positions!r}")
        if self.max_positions < 2:
            raise ModelError(f"transformer: max_positions must be >= 2, got {self.max_positions}")


class Attention(nn.Module):
    """Multi-head attention over keys/values kept split into heads (for the cache), returning weights.

    Keys and values may have fewer rows than the queries: Bm rows for R = Bm * m query rows, query
    row r attending to key row r // m. Decoding keeps the image memory once per image this way
    instead of once per beam, and reads it without the per-step copies of a re-split layout."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.out = (nn.Linear(d, d) for _ in range(4))

    def split(self, x: Tensor) -> Tensor:
        """(B, S, d) -> (B, H, S, d/H), contiguous."""
        B, S, d = x.shape
        return x.view(B, S, self.heads, d // self.heads).transpose(1, 2).contiguous()

    def keys_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.split(self.k(x)), self.split(self.v(x))  # (B, H, S, d/H) each

    def forward(
        self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, bias: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """x (R, T, d); k, v (Bm, H, S, d/H) with R = Bm * m; bias (Bm, 1, 1, S) added to the scores
        (a large negative value hides a key). Returns (R, T, d) and weights (R, H, T, S)."""
        R, T, d = x.shape
        Bm, H, S, dh = k.shape
        if mask is not None and Bm != R:
            raise ModelError("transformer: a mask needs one key row per query row")
        q = self.q(x).view(Bm, -1, H, dh).transpose(1, 2)  # (Bm, H, m*T, dh)
        scores = q @ k.transpose(-2, -1) / math.sqrt(dh)  # (Bm, H, m*T, S)
        if mask is not None:
            scores = scores.masked_fill(mask, float("-inf"))
        if bias is not None:
            scores = scores + bias
        weights = scores.softmax(dim=-1)  # (Bm, H, m*T, S)
        out = (weights @ v).transpose(1, 2).reshape(R, T, d)  # (R, T, d)
        weights = weights.view(Bm, H, -1, T, S).transpose(1, 2).reshape(R, H, T, S)
        return self.out(out), weights


class DecoderLayer(nn.Module):
    def __init__(self, c: TransformerConfig):
        super().__init__()
        d = c.d_model
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_att = Attention(d, c.num_heads)
        self.cross_att = Attention(d, c.num_heads)
        self.ff = nn.Sequential(nn.Linear(d, c.ff_dim), nn.GELU(), nn.Dropout(c.dropout), nn.Linear(c.ff_dim, d))
        self.drop = nn.Dropout(c.dropout)

    def forward(
        self,
        x: Tensor,
        self_k: Tensor,
        self_v: Tensor,
        cross_k: Tensor,
        cross_v: Tensor,
        mask: Tensor | None,
        cross_bias: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x (B, T, d) new positions; self_k/v (B, H, t, d/H) cached earlier positions (t may be 0);
        cross_k/v (Bm, H, M, d/H), one row per image (B = Bm * m). Returns x, the grown self K/V
        (B, H, t+T, d/H), and cross-attention weights (B, H, T, M)."""
        h = self.norm1(x)
        k_new, v_new = self.self_att.keys_values(h)  # (B, H, T, d/H)
        self_k, self_v = torch.cat([self_k, k_new], 2), torch.cat([self_v, v_new], 2)  # (B, H, t+T, d/H)
        x = x + self.drop(self.self_att(h, self_k, self_v, mask)[0])
        att, weights = self.cross_att(self.norm2(x), cross_k, cross_v, bias=cross_bias)
        x = x + self.drop(att)
        x = x + self.drop(self.ff(self.norm3(x)))
        return x, self_k, self_v, weights


@register_model("transformer", TransformerConfig)
class TransformerCaptioner(CaptionModel):
    """Memory: per-layer cross-attention keys/values "cross_k{i}", "cross_v{i}" (B, H, 1+N+k, d/H):
    the pooled slot, the N grid regions, then k tag tokens when the model reads tags.
    State: per-layer self-attention cache "k{i}", "v{i}" (B, H, t, d/H) and "pos" (B,) the next position.
    The memory may keep one row per image while the state has several (see CaptionModel.shared_memory)."""

    supports_attention = True
    shared_memory = True
    config: TransformerConfig

    def __init__(
        self,
        config: TransformerConfig,
        vocab_size: int,
        feature_dim: int,
        num_regions: int,
        itos: list[str] | None = None,
    ):
        super().__init__(config, vocab_size, feature_dim, num_regions)
        c, d = config, config.d_model
        self.grid_proj = FeatureProjection(feature_dim, d, c.dropout)
        self.pooled_proj = FeatureProjection(feature_dim, d, c.dropout)
        # CNN grid features carry no position; a learned embedding per region (and the pooled slot) does.
        self.region_pos = nn.Parameter(torch.randn(1 + num_regions, d) * 0.02)
        self.memory_norm = nn.LayerNorm(d)
        self.word_embedding = WordEmbedding(vocab_size, d, c.glove, itos)
        self.pos_embedding = nn.Embedding(c.max_positions, d) if c.positions == "learned" else None
        self.embed_drop = nn.Dropout(c.dropout)
        self.layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.num_layers))
        self.final_norm = nn.LayerNorm(d)
        self.head = OutputHead(d, self.word_embedding, vocab_size, c.tie_embeddings, 0.0)
        self.tags = None
        if c.tag_tokens:
            self.tags = TagInput(c.tag_tokens, c.tag_classes, c.tag_words, c.tag_word_len, feature_dim, d)
            # Stands for the image in text-only training (and image dropout): the caption rests on the tags.
            self.no_image = nn.Parameter(torch.randn(d) * 0.02)

    @property
    def reads_tags(self) -> bool:
        return self.tags is not None

    def _embed(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """tokens, positions (B, T) -> (B, T, d)."""
        d = self.config.d_model
        if self.pos_embedding is not None:
            if int(positions.max()) >= self.config.max_positions:
                raise ModelError(
                    f"transformer: position {int(positions.max())} >= max_positions "
                    f"{self.config.max_positions}; decode fewer words or raise max_positions"
                )
            pos = self.pos_embedding(positions)
        else:
            pos = sinusoid(positions, d)
        # Word vectors are initialised at scale 1/sqrt(d) for the tied output; sqrt(d) restores unit scale.
        return self.embed_drop(self.word_embedding(tokens) * math.sqrt(d) + pos)

    def init_memory(
        self, pooled: Tensor, grid: Tensor, word_probs: Tensor | None = None, has_image: Tensor | None = None
    ) -> State:
        """word_probs (B, W): tag word probabilities to read instead of the head's (text-only training);
        has_image (B,) bool: rows whose image is replaced by the learned no-image input."""
        self.check_features(pooled, grid)
        if grid.shape[1] != self.num_regions:
            raise ModelError(
                f"transformer: model was built for {self.num_regions} grid regions, "
                f"got {grid.shape[1]}; features from a different encoder?"
            )
        tokens = torch.cat([self.pooled_proj(pooled).unsqueeze(1), self.grid_proj(grid)], 1)  # (B, 1+N, d)
        mem = self.memory_norm(tokens + self.region_pos)  # (B, 1+N, d)
        out = {}
        if self.tags is not None:
            probs = self.tags.word_probs(pooled) if word_probs is None else word_probs
            if has_image is None:  # (B,): all True unless the gate hides images with a confident tag
                gate = self.config.image_gate
                has_image = probs.max(dim=-1).values < (gate if gate > 0 else 2.0)
            # A hidden image is one no-image token in the pooled slot, its regions masked out of the
            # cross-attention (unmasked copies of it would outweigh the k tag tokens 81 to 5).
            mem = torch.cat(
                [torch.where(has_image.view(-1, 1, 1), mem[:, :1], self.no_image.expand_as(mem[:, :1])), mem[:, 1:]], 1
            )
            hide = (~has_image).view(-1, 1, 1, 1).expand(-1, 1, 1, self.num_regions)  # (B, 1, 1, N)
            visible = torch.zeros_like(hide[..., :1], dtype=mem.dtype)
            out["cross_bias"] = torch.cat(
                [visible, hide.to(mem.dtype) * -1e4, visible.expand(-1, 1, 1, self.config.tag_tokens)], -1
            )  # (B, 1, 1, 1+N+k)
            mem = torch.cat([mem, self.tags(probs, self.word_embedding)], 1)  # (B, 1+N+k, d)
        elif word_probs is not None or has_image is not None:
            raise ModelError("transformer: this model reads no tags (model.tag_tokens=0)")
        for i, layer in enumerate(self.layers):  # cross K/V are the same at every step: compute once
            out[f"cross_k{i}"], out[f"cross_v{i}"] = layer.cross_att.keys_values(mem)  # (B, H, 1+N, d/H)
        return out

    def init_state(self, memory: State) -> State:
        ref = memory["cross_k0"]
        c = self.config
        empty = ref.new_zeros(ref.shape[0], c.num_heads, 0, c.d_model // c.num_heads)  # (B, H, 0, d/H)
        state = {"pos": torch.zeros(ref.shape[0], dtype=torch.long, device=ref.device)}
        for i in range(self.config.num_layers):
            state[f"k{i}"], state[f"v{i}"] = empty, empty
        return state

    def _decode(self, x: Tensor, state: State, memory: State, mask: Tensor | None):
        new_state, weights = {}, None
        for i, layer in enumerate(self.layers):
            x, new_state[f"k{i}"], new_state[f"v{i}"], weights = layer(
                x,
                state[f"k{i}"],
                state[f"v{i}"],
                memory[f"cross_k{i}"],
                memory[f"cross_v{i}"],
                mask,
                memory.get("cross_bias"),
            )
        return self.head(self.final_norm(x)), new_state, self._grid_attention(weights)

    def _grid_attention(self, weights: Tensor) -> Tensor:
        """Last layer's cross-attention (B, H, T, 1+N+k) -> (B, T, N): head mean, pooled slot and tags dropped."""
        grid = weights.mean(dim=1)[..., 1 : 1 + self.num_regions]  # (B, T, N)
        return grid / grid.sum(dim=-1, keepdim=True).clamp_min(1e-12)

    def forward(
        self,
        pooled: Tensor,
        grid: Tensor,
        captions: Tensor,
        image_index: Tensor | None = None,
        word_probs: Tensor | None = None,
        has_image: Tensor | None = None,
    ) -> dict[str, Tensor | None]:
        """As CaptionModel.forward; word_probs and has_image (one row per image) as in init_memory."""
        self.check_captions(captions)
        memory = self.training_memory(pooled, grid, image_index, word_probs=word_probs, has_image=has_image)
        inputs = captions[:, :-1]  # (B, T-1)
        T = inputs.shape[1]
        positions = torch.arange(T, device=inputs.device).expand_as(inputs)  # (B, T-1)
        causal = torch.ones(T, T, dtype=torch.bool, device=inputs.device).triu(1)  # True = hidden
        logits, _, attention = self._decode(self._embed(inputs, positions), self.init_state(memory), memory, causal)
        return {"logits": logits, "aux_loss": self.zero(), "attention": attention}

    def step(self, tokens: Tensor, state: State, memory: State) -> tuple[Tensor, State, Tensor]:
        pos = state["pos"]  # (B,)
        x = self._embed(tokens.unsqueeze(1), pos.unsqueeze(1))  # (B, 1, d)
        logits, new_state, attention = self._decode(x, state, memory, None)  # new word sees the whole cache
        new_state["pos"] = pos + 1
        return F.log_softmax(logits[:, 0], dim=-1), new_state, attention[:, 0]  # (B, V), state, (B, N)
