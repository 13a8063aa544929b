"""Show, Attend and Tell (Xu et al. 2015), soft attention: an LSTM attends over grid regions per word."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from capgen.models.base import PAD_ID, CaptionModel, ModelError, State
from capgen.models.layers import FeatureProjection, OutputHead, WordEmbedding
from capgen.models.registry import register_model


@dataclass
class ShowAttendTellConfig:
    embed_dim: int = 256
    hidden_dim: int = 512
    region_dim: int = 512  # grid features are projected 1280 -> region_dim
    attention_dim: int = 256  # width of the additive attention MLP
    dropout: float = 0.3
    alpha_c: float = 1.0  # weight of the doubly stochastic attention regulariser
    tie_embeddings: bool = True  # deep output's last layer shares the word vectors
    glove: bool = False

    def __post_init__(self) -> None:
        for key in ("embed_dim", "hidden_dim", "region_dim", "attention_dim"):
            if getattr(self, key) < 1:
                raise ModelError(f"show_attend_tell: {key} must be >= 1, got {getattr(self, key)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ModelError(f"show_attend_tell: dropout must be in [0, 1), got {self.dropout}")
        if self.alpha_c < 0:
            raise ModelError(f"show_attend_tell: alpha_c must be >= 0, got {self.alpha_c}")


@register_model("show_attend_tell", ShowAttendTellConfig)
class ShowAttendTell(CaptionModel):
    """Memory: {"regions": (B, N, R), "regions_att": (B, N, A)}; state: {"h", "c": (B, H)}."""

    supports_attention = True
    config: ShowAttendTellConfig

    def __init__(
        self,
        config: ShowAttendTellConfig,
        vocab_size: int,
        feature_dim: int,
        num_regions: int,
        itos: list[str] | None = None,
    ):
        super().__init__(config, vocab_size, feature_dim, num_regions)
        c = config
        self.region_proj = FeatureProjection(feature_dim, c.region_dim, c.dropout)
        self.init_h = nn.Linear(c.region_dim, c.hidden_dim)
        self.init_c = nn.Linear(c.region_dim, c.hidden_dim)
        # Additive attention: score_i = w . tanh(W_r r_i + W_h h).
        self.att_region = nn.Linear(c.region_dim, c.attention_dim)
        self.att_hidden = nn.Linear(c.hidden_dim, c.attention_dim)
        self.att_score = nn.Linear(c.attention_dim, 1)
        self.gate = nn.Linear(c.hidden_dim, 1)  # beta: how much image the next word needs
        self.word_embedding = WordEmbedding(vocab_size, c.embed_dim, c.glove, itos)
        self.embed_drop = nn.Dropout(c.dropout)
        self.cell = nn.LSTMCell(c.embed_dim + c.region_dim, c.hidden_dim)
        # Deep output (paper eq. 7): L_o(E y_{t-1} + L_h h_t + L_z z_t).
        self.out_hidden = nn.Linear(c.hidden_dim, c.embed_dim)
        self.out_context = nn.Linear(c.region_dim, c.embed_dim, bias=False)
        self.head = OutputHead(c.embed_dim, self.word_embedding, vocab_size, c.tie_embeddings, c.dropout)

    def init_memory(self, pooled: Tensor, grid: Tensor) -> State:
        self.check_features(pooled, grid)
        regions = self.region_proj(grid)  # (B, N, R)
        return {"regions": regions, "regions_att": self.att_region(regions)}  # (B, N, A)

    def init_state(self, memory: State) -> State:
        mean = memory["regions"].mean(dim=1)  # (B, R)
        return {"h": torch.tanh(self.init_h(mean)), "c": torch.tanh(self.init_c(mean))}  # (B, H)

    def _step(self, tokens: Tensor, state: State, memory: State) -> tuple[Tensor, State, Tensor]:
        """One word: logits (B, V), new state, attention (B, N). Shared by forward and step."""
        h, c = state["h"], state["c"]  # (B, H)
        e = torch.tanh(memory["regions_att"] + self.att_hidden(h).unsqueeze(1))  # (B, N, A)
        alpha = F.softmax(self.att_score(e).squeeze(-1), dim=-1)  # (B, N)
        context = (alpha.unsqueeze(-1) * memory["regions"]).sum(dim=1)  # (B, R)
        context = torch.sigmoid(self.gate(h)) * context  # (B, R)
        word = self.embed_drop(self.word_embedding(tokens))  # (B, E)
        h, c = self.cell(torch.cat([word, context], dim=-1), (h, c))  # (B, H)
        deep = word + self.out_hidden(h) + self.out_context(context)  # (B, E)
        return self.head(deep), {"h": h, "c": c}, alpha

    def forward(
        self, pooled: Tensor, grid: Tensor, captions: Tensor, image_index: Tensor | None = None
    ) -> dict[str, Tensor | None]:
        self.check_captions(captions)
        memory = self.training_memory(pooled, grid, image_index)
        state = self.init_state(memory)
        logits, alphas = [], []
        for t in range(captions.shape[1] - 1):  # sequential by nature: attention reads h_{t-1}
            step_logits, state, alpha = self._step(captions[:, t], state, memory)
            logits.append(step_logits)
            alphas.append(alpha)
        attention = torch.stack(alphas, dim=1)  # (B, T-1, N)
        # Doubly stochastic regulariser: over the words of a caption (padding excluded) each
        # region should receive about one unit of attention in total.
        mask = (captions[:, 1:] != PAD_ID).unsqueeze(-1).to(attention.dtype)  # (B, T-1, 1)
        coverage = (attention * mask).sum(dim=1)  # (B, N)
        aux = self.config.alpha_c * ((1.0 - coverage) ** 2).mean()
        return {"logits": torch.stack(logits, dim=1), "aux_loss": aux, "attention": attention}

    def step(self, tokens: Tensor, state: State, memory: State) -> tuple[Tensor, State, Tensor]:
        logits, state, alpha = self._step(tokens, state, memory)
        return F.log_softmax(logits, dim=-1), state, alpha  # (B, V), state, (B, N)
