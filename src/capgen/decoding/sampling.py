"""Greedy decoding and sampling (temperature, top-k, top-p): one token per row per step."""

from __future__ import annotations

from typing import Callable

import numpy as np

from capgen.decoding.beam import Found
from capgen.decoding.config import DecodeConfig, TokenIds
from capgen.decoding.rules import NEG_INF, Rules
from capgen.decoding.steps import Rows, Step

# n -> n uniform draws in [0, 1): numpy's Generator for the runtime, torch's generator for a torch
# model (so a training run's sampling follows torch's seeded, checkpointed random state).
Uniform = Callable[[int], np.ndarray]


def sample_search(
    step: Step, memory: Rows, state: Rows, ids: TokenIds, cfg: DecodeConfig, uniform: Uniform | None = None
) -> Found:
    """Decode every row of `state` once (M = 1 caption per row). Greedy when cfg.method == "greedy".

    Rows still running after length_limit words take <end> at a last step (Rules), and pay its
    log-prob like any other word.
    """
    R, L = next(iter(state.values())).shape[0], cfg.length_limit  # the memory may be one row per image
    rules = Rules(ids, cfg, step.vocab_size)
    tokens = np.full(R, ids.start, dtype=np.int64)
    words = np.full((R, L), ids.pad, dtype=np.int64)
    lengths = np.zeros(R, dtype=np.int64)
    scores = np.zeros(R, dtype=np.float32)
    truncated = np.zeros(R, dtype=bool)
    done = np.zeros(R, dtype=bool)
    attention = None
    rows = np.arange(R)
    for t in range(L + 1):
        raw, state, att = step(tokens, state, memory)  # (R, V), state, (R, N) or None
        logp = rules.apply(raw, t, tokens, words)
        choice = logp.argmax(axis=-1) if cfg.method == "greedy" else _sample(logp, cfg, uniform(R))  # (R,)
        chosen = logp[rows, choice]  # (R,)
        stuck = np.isinf(chosen)  # every token blocked: the caption ends here, no <end> term
        ended = (choice == ids.end) | stuck
        live = ~done
        if rules.final(t):
            truncated |= live & (raw.argmax(axis=-1) != ids.end)
        truncated |= live & stuck
        scores = scores + np.where(live & ~stuck, chosen, 0.0).astype(np.float32)
        done = done | ended
        if rules.final(t) or done.all():
            break
        emit = live & ~ended
        words[:, t] = np.where(emit, choice, ids.pad)
        if cfg.return_attention and att is not None:
            if attention is None:
                attention = np.zeros((R, L, att.shape[-1]), dtype=np.float32)  # (R, L, N)
            attention[:, t] = att * emit[:, None]
        lengths += emit
        tokens = choice.astype(np.int64)

    def one(x):  # (R, ...) -> (R, 1, ...)
        return None if x is None else x[:, None]

    return Found(one(words), one(lengths), one(scores), one(truncated), one(attention))


def _sample(logp: np.ndarray, cfg: DecodeConfig, u: np.ndarray) -> np.ndarray:
    """One token per row from temperature-scaled, top-k / top-p filtered log-probs (R, V), by inverting
    each row's distribution at the uniform draw u (R,)."""
    logits = logp.astype(np.float64) / cfg.temperature  # (R, V)
    if cfg.top_k > 0 and cfg.top_k < logits.shape[-1]:
        kth = -np.partition(-logits, cfg.top_k - 1, axis=-1)[:, cfg.top_k - 1 : cfg.top_k]  # (R, 1)
        logits = np.where(logits < kth, NEG_INF, logits)
    dead = np.isinf(logits).all(axis=-1, keepdims=True)  # all blocked: any pick is "stuck"
    logits = np.where(dead, 0.0, logits)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    if cfg.top_p < 1.0:
        order = np.argsort(-probs, axis=-1, kind="stable")
        sorted_p = np.take_along_axis(probs, order, axis=-1)
        # Drop a token once the tokens before it already cover top_p (the first always stays).
        drop = np.cumsum(sorted_p, axis=-1) - sorted_p >= cfg.top_p
        np.put_along_axis(probs, order, np.where(drop, 0.0, sorted_p), axis=-1)
    cdf = np.cumsum(probs, axis=-1)  # (R, V)
    # The first token whose cumulative probability passes the draw; a token of probability 0 never is.
    choice = (cdf <= (u * cdf[:, -1])[:, None]).sum(axis=-1)
    last = probs.shape[-1] - 1 - np.argmax(probs[:, ::-1] > 0, axis=-1)  # rounding at the top end
    return np.minimum(choice, last).astype(np.int64)
