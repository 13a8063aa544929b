"""Show and Tell (Vinyals et al. 2015): the pooled image vector starts an LSTM/GRU language model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from capgen.models.base import CaptionModel, ModelError, State
from capgen.models.layers import FeatureProjection, OutputHead, WordEmbedding
from capgen.models.registry import register_model


@dataclass
class ShowTellConfig:
    rnn: str = "lstm"  # "lstm" | "gru"
    num_layers: int = 1  # 1-3
    embed_dim: int = 256
    hidden_dim: int = 512
    dropout: float = 0.3  # on features, embeddings, between layers and before the output
    image_first_input: bool = False  # also feed the image as the first input (the paper's way)
    tie_embeddings: bool = True  # output layer = Linear(hidden -> embed) . word vectors
    glove: bool = False  # init word vectors from GloVe 6B 50d (needs itos)

    def __post_init__(self) -> None:
        if self.rnn not in ("lstm", "gru"):
            raise ModelError(f"show_tell: rnn must be 'lstm' or 'gru', got {self.rnn!r}")
        if not 1 <= self.num_layers <= 3:
            raise ModelError(f"show_tell: num_layers must be 1-3, got {self.num_layers}")
        _check_common(self.embed_dim, self.hidden_dim, self.dropout)


def _check_common(embed_dim: int, hidden_dim: int, dropout: float) -> None:
    if embed_dim < 1 or hidden_dim < 1:
        raise ModelError(f"embed_dim and hidden_dim must be >= 1, got {embed_dim}, {hidden_dim}")
    if not 0.0 <= dropout < 1.0:
        raise ModelError(f"dropout must be in [0, 1), got {dropout}")


@register_model("show_tell", ShowTellConfig)
class ShowTell(CaptionModel):
    """State: {"h": (B, L, H)} plus {"c": (B, L, H)} for an LSTM (layers second: batch-first)."""

    config: ShowTellConfig

    def __init__(
        self, config: ShowTellConfig, vocab_size: int, feature_dim: int, num_regions: int, itos: list[str] | None = None
    ):
        super().__init__(config, vocab_size, feature_dim, num_regions)
        c = config
        self.image_proj = FeatureProjection(feature_dim, c.embed_dim, c.dropout)
        # The image sets the initial state of every layer (h, and c for an LSTM).
        n_init = c.num_layers * c.hidden_dim * (2 if c.rnn == "lstm" else 1)
        self.init_proj = nn.Linear(c.embed_dim, n_init)
        self.word_embedding = WordEmbedding(vocab_size, c.embed_dim, c.glove, itos)
        self.embed_drop = nn.Dropout(c.dropout)
        rnn_cls = nn.LSTM if c.rnn == "lstm" else nn.GRU
        self.rnn = rnn_cls(
            c.embed_dim,
            c.hidden_dim,
            num_layers=c.num_layers,
            batch_first=True,
            dropout=c.dropout if c.num_layers > 1 else 0.0,
        )
        self.head = OutputHead(c.hidden_dim, self.word_embedding, vocab_size, c.tie_embeddings, c.dropout)

    # nn.LSTM wants (L, B, H) states; we keep them batch-first and transpose at the boundary.
    def _to_rnn(self, state: State):
        h = state["h"].transpose(0, 1).contiguous()  # (L, B, H)
        if self.config.rnn == "lstm":
            return h, state["c"].transpose(0, 1).contiguous()
        return h

    def _from_rnn(self, hidden) -> State:
        if self.config.rnn == "lstm":
            return {"h": hidden[0].transpose(0, 1), "c": hidden[1].transpose(0, 1)}  # (B, L, H) each
        return {"h": hidden.transpose(0, 1)}

    def init_memory(self, pooled: Tensor, grid: Tensor) -> State:
        self.check_features(pooled, grid)
        return {"image": self.image_proj(pooled)}  # (B, E)

    def init_state(self, memory: State) -> State:
        image = memory["image"]  # (B, E)
        B, L, H = image.shape[0], self.config.num_layers, self.config.hidden_dim
        init = torch.tanh(self.init_proj(image)).view(B, -1, L, H)  # (B, 1 or 2, L, H)
        state = {"h": init[:, 0]} if self.config.rnn == "gru" else {"h": init[:, 0], "c": init[:, 1]}
        if self.config.image_first_input:
            _, hidden = self.rnn(image.unsqueeze(1), self._to_rnn(state))  # output discarded
            state = self._from_rnn(hidden)
        return state

    def forward(
        self, pooled: Tensor, grid: Tensor, captions: Tensor, image_index: Tensor | None = None
    ) -> dict[str, Tensor | None]:
        self.check_captions(captions)
        state = self.init_state(self.training_memory(pooled, grid, image_index))
        words = self.embed_drop(self.word_embedding(captions[:, :-1]))  # (B, T-1, E)
        out, _ = self.rnn(words, self._to_rnn(state))  # (B, T-1, H)
        return {"logits": self.head(out), "aux_loss": self.zero(), "attention": None}

    def step(self, tokens: Tensor, state: State, memory: State) -> tuple[Tensor, State, None]:
        words = self.embed_drop(self.word_embedding(tokens)).unsqueeze(1)  # (B, 1, E)
        out, hidden = self.rnn(words, self._to_rnn(state))  # (B, 1, H)
        return F.log_softmax(self.head(out[:, 0]), dim=-1), self._from_rnn(hidden), None  # (B, V)
