"""Pieces shared by every search: batch-first state handling, token masks, n-gram blocking."""

from __future__ import annotations

import torch
from torch import Tensor

State = dict[str, Tensor]

NEG_INF = float("-inf")


def select_rows(d: State, index: Tensor) -> State:
    """Reorder / repeat rows of every (batch-first) tensor in a memory or state dict."""
    return {k: v.index_select(0, index) for k, v in d.items()}


def repeat_rows(d: State, times: int) -> State:
    """Each row repeated `times` times consecutively: row b -> rows b*times .. b*times+times-1."""
    return {k: v.repeat_interleave(times, dim=0) for k, v in d.items()}


def mask_tokens(logp: Tensor, banned: list[int]) -> Tensor:
    """Tokens that must never be emitted (<pad>, <start>) get -inf. logp (R, V)."""
    logp = logp.clone()
    logp[:, banned] = NEG_INF
    return logp


def block_ngrams(logp: Tensor, history: Tensor, length: int, n: int) -> Tensor:
    """Set -inf for every token that would complete an n-gram already present in the row.

    logp (R, V); history (R, >= length) emitted words, of which the first `length` are valid.
    """
    if n <= 0 or length < n:  # no complete n-gram yet
        return logp
    hist = history[:, :length]                                          # (R, L)
    grams = hist.unfold(1, n, 1)                                        # (R, L-n+1, n)
    prefix = hist[:, length - (n - 1):]                                  # (R, n-1) the current context
    match = (grams[:, :, :-1] == prefix.unsqueeze(1)).all(dim=-1)       # (R, L-n+1); n=1: all True
    R, V = logp.shape
    # Scatter into an extra dummy column for non-matching n-grams, then drop it.
    target = grams[:, :, -1].masked_fill(~match, V)                     # (R, L-n+1)
    ban = torch.zeros(R, V + 1, dtype=torch.bool, device=logp.device)
    ban.scatter_(1, target, True)
    return logp.masked_fill(ban[:, :V], NEG_INF)
