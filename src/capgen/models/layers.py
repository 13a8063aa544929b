"""Building blocks shared by the models: feature projection, word embedding (GloVe), output head."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from capgen.data.glove import GLOVE_DIM, load_glove
from capgen.models.base import PAD_ID, ModelError


class FeatureProjection(nn.Module):
    """LayerNorm then Linear then dropout: CNN features (any scale) -> model width."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.proj = nn.Linear(in_dim, out_dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:  # (..., in_dim) -> (..., out_dim)
        return self.drop(self.proj(self.norm(x)))


class WordEmbedding(nn.Module):
    """Word vectors of width `dim`, optionally initialised from GloVe 6B 50d.

    With `glove=True` the table is 50-d (GloVe rows for words GloVe knows, random rows with the
    same spread for the others) followed by a learned Linear 50 -> dim when dim != 50; so any
    embedding width works and `table.weight[i]` is exactly the GloVe vector of word i.
    """

    def __init__(self, vocab_size: int, dim: int, glove: bool = False, itos: list[str] | None = None):
        super().__init__()
        self.dim = dim
        base = GLOVE_DIM if glove else dim
        self.table = nn.Embedding(vocab_size, base, padding_idx=PAD_ID)
        # 1/sqrt(dim) keeps tied output logits near unit scale at initialisation.
        nn.init.normal_(self.table.weight, std=base**-0.5)
        self.proj = nn.Linear(base, dim, bias=False) if base != dim else None
        self.glove_found = 0
        if glove:
            if itos is None:
                raise ModelError("glove=True needs the vocabulary word list: create_model(..., itos=vocab.itos)")
            self._load_glove(itos)
        with torch.no_grad():
            self.table.weight[PAD_ID].zero_()

    def _load_glove(self, itos: list[str]) -> None:
        vectors, found = load_glove(itos)
        vectors = torch.from_numpy(vectors)  # (V, 50)
        mask = torch.from_numpy(found)  # (V,)
        with torch.no_grad():
            if mask.any():
                # Unknown words get random rows of GloVe's own spread, so they are not outliers.
                std = vectors[mask].std().item()
                self.table.weight.normal_(std=std)
                self.table.weight[mask] = vectors[mask]
        self.glove_found = int(mask.sum())

    def forward(self, tokens: Tensor) -> Tensor:  # (...) long -> (..., dim)
        x = self.table(tokens)
        return self.proj(x) if self.proj is not None else x

    def output_weight(self) -> Tensor:
        """(V, dim) matrix for tying the output layer to the input embedding."""
        w = self.table.weight
        return self.proj(w) if self.proj is not None else w


class OutputHead(nn.Module):
    """Hidden (..., in_dim) -> vocabulary logits (..., V), optionally tied to the word embedding.

    Tied: Linear in_dim -> embed_dim (skipped when equal), then dot with every word vector.
    """

    def __init__(self, in_dim: int, embedding: WordEmbedding, vocab_size: int, tie: bool, dropout: float):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.tie = tie
        # A plain attribute would register the embedding twice in state_dict; keep it in a list.
        self._embedding = [embedding]
        if tie:
            self.pre = nn.Linear(in_dim, embedding.dim) if in_dim != embedding.dim else nn.Identity()
            self.bias = nn.Parameter(torch.zeros(vocab_size))
        else:
            self.out = nn.Linear(in_dim, vocab_size)

    def forward(self, h: Tensor) -> Tensor:
        h = self.drop(h)
        if self.tie:
            return self.pre(h) @ self._embedding[0].output_weight().t() + self.bias  # (..., V)
        return self.out(h)  # (..., V)


def sinusoid(positions: Tensor, dim: int) -> Tensor:
    """Sinusoidal position encodings (Vaswani et al. 2017) for integer positions (...,) -> (..., dim)."""
    half = torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32)
    freq = torch.exp(half * (-math.log(10000.0) / dim))  # (dim/2,)
    angle = positions.float().unsqueeze(-1) * freq  # (..., dim/2)
    return torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(-2)[..., :dim]  # (..., dim)
