"""Greedy decoding and sampling (temperature, top-k, top-p): one token per row per step."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from capgen.decoding.beam import Found
from capgen.decoding.common import NEG_INF, Constraints, State
from capgen.decoding.config import DecodeConfig, TokenIds

if TYPE_CHECKING:  # models sit above decoding: the search only calls their step
    from capgen.models.base import CaptionModel


def sample_search(
    model: CaptionModel,
    memory: State,
    state: State,
    ids: TokenIds,
    cfg: DecodeConfig,
    generator: torch.Generator | None,
) -> Found:
    """Decode every row of `state` once (M = 1 caption per row). Greedy when cfg.method == "greedy".

    Rows still running after length_limit words take <end> at a last step (Constraints), and pay its
    log-prob like any other word.
    """
    R, L = next(iter(state.values())).shape[0], cfg.length_limit  # the memory may be one row per image
    device = next(iter(state.values())).device
    rules = Constraints(ids, cfg, model.vocab_size, device)
    tokens = torch.full((R,), ids.start, dtype=torch.long, device=device)
    words = torch.full((R, L), ids.pad, dtype=torch.long, device=device)
    lengths = torch.zeros(R, dtype=torch.long, device=device)
    scores = torch.zeros(R, device=device)
    truncated = torch.zeros(R, dtype=torch.bool, device=device)
    done = torch.zeros(R, dtype=torch.bool, device=device)
    attention = None
    for t in range(L + 1):
        raw, state, att = model.step(tokens, state, memory)  # (R, V), state, (R, N)
        logp = rules.apply(raw, t, tokens, words)
        choice = logp.argmax(dim=-1) if cfg.method == "greedy" else _sample(logp, cfg, generator)  # (R,)
        chosen = logp.gather(1, choice.unsqueeze(1)).squeeze(1)  # (R,)
        stuck = torch.isinf(chosen)  # every token blocked: the caption ends here, no <end> term
        ended = (choice == ids.end) | stuck
        live = ~done
        if rules.final(t):
            truncated = truncated | (live & (raw.argmax(dim=-1) != ids.end))
        truncated = truncated | (live & stuck)
        scores = scores + torch.where(live & ~stuck, chosen, torch.zeros_like(chosen))
        done = done | ended
        if rules.final(t) or bool(done.all()):
            break
        emit = live & ~ended
        words[:, t] = torch.where(emit, choice, torch.full_like(choice, ids.pad))
        if cfg.return_attention and att is not None:
            if attention is None:
                attention = att.new_zeros(R, L, att.shape[-1])  # (R, L, N)
            attention[:, t] = att * emit.unsqueeze(1)
        lengths = lengths + emit.long()
        tokens = choice
    one = lambda x: None if x is None else x.unsqueeze(1)  # noqa: E731  (R, ...) -> (R, 1, ...)
    return Found(one(words), one(lengths), one(scores), one(truncated), one(attention))


def _sample(logp: Tensor, cfg: DecodeConfig, generator: torch.Generator | None) -> Tensor:
    """Draw one token per row from temperature-scaled, top-k / top-p filtered log-probs (R, V)."""
    logits = logp / cfg.temperature  # (R, V)
    if cfg.top_k > 0:
        kth = logits.topk(min(cfg.top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (R, 1)
        logits = logits.masked_fill(logits < kth, NEG_INF)
    if cfg.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (R, V)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token once the tokens before it already cover top_p (the first always stays).
        drop = probs.cumsum(dim=-1) - probs >= cfg.top_p
        logits = logits.scatter(1, order, sorted_logits.masked_fill(drop, NEG_INF))
    dead = torch.isinf(logits).all(dim=-1, keepdim=True)  # all blocked: any pick is "stuck"
    logits = logits.masked_fill(dead, 0.0)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(1)  # (R,)
