"""Several trained captioners decoded as one model, through the same one-step interface.

At every step each member predicts from its own state; the ensemble's log-probs are the members'
log-probs averaged (renormalised), so the one batched beam search needs no ensemble code.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from capgen.models.base import CaptionModel, ModelError, State


class EnsembleModel(CaptionModel):
    """Memory and state keys are prefixed by the member index ("0.cross_k0", "1.h", ...), so every
    tensor stays batch-first and decoding can reorder rows without knowing it is an ensemble."""

    name = "ensemble"

    def __init__(self, members: list[CaptionModel]):
        if len(members) < 2:
            raise ModelError(f"an ensemble needs at least 2 models, got {len(members)}")
        first = members[0]
        for m in members[1:]:
            if (m.vocab_size, m.feature_dim) != (first.vocab_size, first.feature_dim):
                raise ModelError(
                    f"ensemble members disagree: vocabulary {m.vocab_size} vs {first.vocab_size} "
                    f"words, features {m.feature_dim} vs {first.feature_dim}"
                )
        super().__init__(None, first.vocab_size, first.feature_dim, first.num_regions)
        self.members = nn.ModuleList(members)
        # Attention maps are offered only when every member has them (their mean is shown).
        self.supports_attention = all(m.supports_attention for m in members)
        self.shared_memory = all(m.shared_memory for m in members)

    @staticmethod
    def _part(d: State, i: int) -> State:
        prefix = f"{i}."
        return {k[len(prefix) :]: v for k, v in d.items() if k.startswith(prefix)}

    @staticmethod
    def _join(parts: list[State]) -> State:
        return {f"{i}.{k}": v for i, part in enumerate(parts) for k, v in part.items()}

    def init_memory(self, pooled: Tensor, grid: Tensor) -> State:
        return self._join([m.init_memory(pooled, grid) for m in self.members])

    def init_state(self, memory: State) -> State:
        return self._join([m.init_state(self._part(memory, i)) for i, m in enumerate(self.members)])

    def step(self, tokens: Tensor, state: State, memory: State) -> tuple[Tensor, State, Tensor | None]:
        logps, states, atts = [], [], []
        for i, m in enumerate(self.members):
            logp, s, att = m.step(tokens, self._part(state, i), self._part(memory, i))  # (B, V), state, (B, N)
            logps.append(logp)
            states.append(s)
            atts.append(att)
        logp = torch.stack(logps).mean(dim=0).log_softmax(dim=-1)  # (B, V)
        att = torch.stack(atts).mean(dim=0) if all(a is not None for a in atts) else None
        return logp, self._join(states), att

    def forward(self, *args, **kwargs):
        raise ModelError("an ensemble is for decoding only; train its members one by one")
