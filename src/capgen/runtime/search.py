"""Greedy and beam search in numpy, over a decoder step that runs in ONNX Runtime.

The same searches as capgen.decoding (sampling.py greedy, beam.py) array for array, with the rules
and length penalty taken from capgen.decoding.rules, so both paths give the same captions. Keep
them in step: tests/test_runtime.py compares the two on every model type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from capgen.decoding.config import DecodeConfig, Hypothesis, TokenIds
from capgen.decoding.rules import length_normalised, token_masks

Arrays = dict[str, np.ndarray]
# (tokens (R,), state, memory) -> (log-probs (R, V), new state)
Step = Callable[[np.ndarray, Arrays, Arrays], tuple[np.ndarray, Arrays]]
NEG_INF = -np.inf


class Rules:
    """Which token may come next (capgen.decoding.common.Constraints, in numpy)."""

    def __init__(self, ids: TokenIds, cfg: DecodeConfig, vocab_size: int):
        self.ids, self.cfg = ids, cfg
        self.never, self.bad_end, self.may_repeat = token_masks(ids, cfg, vocab_size)   # (V,) each

    def final(self, t: int) -> bool:
        return t == self.cfg.max_len

    def apply(self, logp: np.ndarray, t: int, prev: np.ndarray, history: np.ndarray) -> np.ndarray:
        """logp (R, V); prev (R,) the token fed at step t; history (R, >= t) words. Returns a copy."""
        end = self.ids.end
        if self.final(t):
            forced = np.full_like(logp, NEG_INF)
            forced[:, end] = logp[:, end]
            return forced
        logp = np.where(self.never, NEG_INF, logp).astype(logp.dtype, copy=False)  # (R, V)
        if t == 0:
            logp[:, end] = NEG_INF
        else:
            logp[self.bad_end[prev], end] = NEG_INF
        if t == self.cfg.max_len - 1:  # the last word max_len allows: <end> must be able to follow it
            logp[:, self.bad_end] = NEG_INF
        _block_ngrams(logp, history, t, self.cfg.no_repeat_ngram)
        if self.cfg.no_repeat_words and t > 0:
            seen = np.zeros(logp.shape, dtype=bool)
            np.put_along_axis(seen, history[:, :t], True, axis=1)
            logp[seen & ~self.may_repeat] = NEG_INF
        return logp


def _block_ngrams(logp: np.ndarray, history: np.ndarray, length: int, n: int) -> None:
    """In place: -inf for every token that would complete an n-gram already in the row."""
    if n <= 0 or length < n:
        return
    starts = np.arange(length - n + 1)                                     # (G,) every n-gram's start
    grams = history[:, starts[:, None] + np.arange(n)]                     # (R, G, n)
    prefix = history[:, length - (n - 1):length]                           # (R, n-1) the current context
    match = (grams[:, :, :-1] == prefix[:, None, :]).all(axis=-1)          # (R, G)
    rows, cols = np.nonzero(match)
    logp[rows, grams[rows, cols, -1]] = NEG_INF


@dataclass
class Found:
    """Per image, M captions best first: words (B, M, L), lengths (B, M), scores (B, M), truncated (B, M)."""

    words: np.ndarray
    lengths: np.ndarray
    scores: np.ndarray
    truncated: np.ndarray


def greedy_search(step: Step, memory: Arrays, state: Arrays, ids: TokenIds, cfg: DecodeConfig,
                  vocab_size: int) -> Found:
    R, L = next(iter(memory.values())).shape[0], cfg.max_len
    rules = Rules(ids, cfg, vocab_size)
    tokens = np.full(R, ids.start, dtype=np.int64)
    words = np.full((R, L), ids.pad, dtype=np.int64)
    lengths = np.zeros(R, dtype=np.int64)
    scores = np.zeros(R, dtype=np.float32)
    truncated = np.zeros(R, dtype=bool)
    done = np.zeros(R, dtype=bool)
    rows = np.arange(R)
    for t in range(L + 1):
        raw, state = step(tokens, state, memory)                          # (R, V), state
        logp = rules.apply(raw, t, tokens, words)
        choice = logp.argmax(axis=-1)                                     # (R,)
        chosen = logp[rows, choice]                                       # (R,)
        stuck = np.isinf(chosen)   # every token blocked: the caption ends here, no <end> term
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
        lengths += emit
        tokens = choice.astype(np.int64)
    return Found(words[:, None], lengths[:, None], scores[:, None], truncated[:, None])


def _topk(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k largest values, best first (ties: lower index first), and their indices."""
    idx = np.argpartition(-x, k - 1, axis=1)[:, :k] if k < x.shape[1] else np.tile(np.arange(x.shape[1]), (len(x), 1))
    vals = np.take_along_axis(x, idx, axis=1)
    order = np.lexsort((idx, -vals), axis=1)
    idx = np.take_along_axis(idx, order, axis=1)
    return np.take_along_axis(x, idx, axis=1), idx


def _gather(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """x (B, C, ...), idx (B, K) -> (B, K, ...)."""
    return x[np.arange(x.shape[0])[:, None], idx]


class _Pool:
    """The K best finished captions of each image, best first (scores are length-normalised)."""

    def __init__(self, B: int, K: int, L: int, pad: int):
        self.found = Found(np.full((B, K, L), pad, dtype=np.int64), np.zeros((B, K), dtype=np.int64),
                           np.full((B, K), NEG_INF, dtype=np.float32), np.zeros((B, K), dtype=bool))

    def add(self, scores, words, lengths, truncated) -> None:
        f = self.found
        K = f.scores.shape[1]
        f.scores, idx = _topk(np.concatenate([f.scores, scores], axis=1), K)
        f.words = _gather(np.concatenate([f.words, words], axis=1), idx)
        f.lengths = np.take_along_axis(np.concatenate([f.lengths, lengths], axis=1), idx, axis=1)
        f.truncated = np.take_along_axis(np.concatenate([f.truncated, truncated], axis=1), idx, axis=1)


def beam_search(step: Step, memory: Arrays, state: Arrays, ids: TokenIds, cfg: DecodeConfig,
                vocab_size: int, shared_memory: bool = False) -> Found:
    """K = beam_size captions per image, best first (capgen.decoding.beam.beam_search, in numpy).
    shared_memory: the step reads one memory row per image (CaptionModel.shared_memory)."""
    B, K, L = next(iter(memory.values())).shape[0], cfg.beam_size, cfg.max_len
    if not shared_memory:
        memory = {k: np.repeat(v, K, axis=0) for k, v in memory.items()}  # rows b*K .. b*K+K-1
    state = {k: np.repeat(v, K, axis=0) for k, v in state.items()}
    R = B * K
    rules = Rules(ids, cfg, vocab_size)

    def norm(score, length: int):
        return length_normalised(score, length, cfg.length_penalty).astype(np.float32)

    tokens = np.full(R, ids.start, dtype=np.int64)
    beam_scores = np.full((B, K), NEG_INF, dtype=np.float32)
    beam_scores[:, 0] = 0.0            # the K beams start identical; only the first may expand
    history = np.full((B, K, L), ids.pad, dtype=np.int64)
    pool = _Pool(B, K, L, ids.pad)
    done = np.zeros(B, dtype=bool)
    rank = np.arange(2 * K)
    row_offset = (np.arange(B) * K)[:, None]                             # (B, 1)
    no = np.zeros((B, K), dtype=bool)
    own = np.broadcast_to(np.arange(K), (B, K))
    for t in range(L + 1):
        raw, state = step(tokens, state, memory)                          # (R, V), state
        logp = rules.apply(raw, t, tokens, history.reshape(R, L))
        V = logp.shape[-1]
        cand = (beam_scores.reshape(R, 1) + logp).reshape(B, K * V)       # (B, K*V)
        top_scores, top_idx = _topk(cand, 2 * K)                          # (B, 2K)
        top_beam, top_tok = top_idx // V, top_idx % V
        is_end = top_tok == ids.end

        ended = is_end[:, :K] & np.isfinite(top_scores[:, :K]) & ~done[:, None]      # (B, K)
        stuck = np.isinf(logp.max(axis=-1)).reshape(B, K) & np.isfinite(beam_scores) & ~done[:, None]
        end_beam = top_beam[:, :K]
        cut = np.take_along_axis((raw.argmax(axis=-1) != ids.end).reshape(B, K), end_beam, axis=1) \
            if rules.final(t) else no
        fin_scores = np.concatenate([np.where(ended, norm(top_scores[:, :K], t), NEG_INF),
                                     np.where(stuck, norm(beam_scores, t), NEG_INF)], axis=1).astype(np.float32)
        fin_beams = np.concatenate([end_beam, own], axis=1)
        pool.add(fin_scores, _gather(history, fin_beams), np.full_like(fin_beams, t),
                 np.concatenate([cut, ~no], axis=1))
        if rules.final(t):
            break

        order = np.argsort(rank + 2 * K * is_end, axis=1, kind="stable")[:, :K]   # alive: not <end>
        parent = np.take_along_axis(top_beam, order, axis=1)             # (B, K)
        beam_scores = np.take_along_axis(top_scores, order, axis=1)
        word = np.take_along_axis(top_tok, order, axis=1)
        rows = (row_offset + parent).reshape(R)
        state = {k: v[rows] for k, v in state.items()}
        history = _gather(history, parent)
        history[:, :, t] = word
        tokens = word.reshape(R).astype(np.int64)

        best_possible = norm(beam_scores.max(axis=1), L)                 # (B,)
        done = done | (pool.found.scores[:, -1] >= best_possible)
        if done.all():
            break
    return pool.found


def hypotheses(found: Found, n_best: int) -> list[list[Hypothesis]]:
    """(B, M, ...) arrays -> per image, the first n_best finite-score hypotheses."""
    out = []
    for b in range(found.words.shape[0]):
        hyps = []
        for m in range(min(n_best, found.words.shape[1])):
            score = float(found.scores[b, m])
            if not np.isfinite(score):
                continue
            n = int(found.lengths[b, m])
            hyps.append(Hypothesis(tokens=found.words[b, m, :n].tolist(), score=score,
                                   truncated=bool(found.truncated[b, m])))
        out.append(hyps)
    return out
