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
from capgen.decoding.rules import EARLY_BONUS, EARLY_WORDS, UNMET_PENALTY, length_normalised, token_masks

Arrays = dict[str, np.ndarray]
# (tokens (R,), state, memory) -> (log-probs (R, V), new state)
Step = Callable[[np.ndarray, Arrays, Arrays], tuple[np.ndarray, Arrays]]
NEG_INF = -np.inf


class Rules:
    """Which token may come next (capgen.decoding.common.Constraints, in numpy)."""

    def __init__(self, ids: TokenIds, cfg: DecodeConfig, vocab_size: int):
        self.ids, self.cfg = ids, cfg
        self.never, self.bad_end, self.may_repeat = token_masks(ids, cfg, vocab_size)  # (V,) each

    def final(self, t: int) -> bool:
        return t == self.cfg.length_limit

    def apply(self, logp: np.ndarray, t: int, prev: np.ndarray, history: np.ndarray) -> np.ndarray:
        """logp (R, V); prev (R,) the token fed at step t; history (R, >= t) words. Returns a copy."""
        end = self.ids.end
        if self.final(t):
            forced = np.full_like(logp, NEG_INF)
            forced[:, end] = logp[:, end]
            return forced
        logp = np.where(self.never, NEG_INF, logp).astype(logp.dtype, copy=False)  # (R, V)
        if t < self.cfg.min_words:
            logp[:, end] = NEG_INF
        else:
            logp[self.bad_end[prev], end] = NEG_INF
        if t == self.cfg.length_limit - 1:  # the last word the limit allows: <end> must be able to follow it
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
    starts = np.arange(length - n + 1)  # (G,) every n-gram's start
    grams = history[:, starts[:, None] + np.arange(n)]  # (R, G, n)
    prefix = history[:, length - (n - 1) : length]  # (R, n-1) the current context
    match = (grams[:, :, :-1] == prefix[:, None, :]).all(axis=-1)  # (R, G)
    rows, cols = np.nonzero(match)
    logp[rows, grams[rows, cols, -1]] = NEG_INF


@dataclass
class Found:
    """Per image, M captions best first: words (B, M, L), lengths (B, M), scores (B, M), truncated (B, M)."""

    words: np.ndarray
    lengths: np.ndarray
    scores: np.ndarray
    truncated: np.ndarray


def greedy_search(
    step: Step, memory: Arrays, state: Arrays, ids: TokenIds, cfg: DecodeConfig, vocab_size: int
) -> Found:
    R, L = next(iter(memory.values())).shape[0], cfg.length_limit
    rules = Rules(ids, cfg, vocab_size)
    tokens = np.full(R, ids.start, dtype=np.int64)
    words = np.full((R, L), ids.pad, dtype=np.int64)
    lengths = np.zeros(R, dtype=np.int64)
    scores = np.zeros(R, dtype=np.float32)
    truncated = np.zeros(R, dtype=bool)
    done = np.zeros(R, dtype=bool)
    rows = np.arange(R)
    for t in range(L + 1):
        raw, state = step(tokens, state, memory)  # (R, V), state
        logp = rules.apply(raw, t, tokens, words)
        choice = logp.argmax(axis=-1)  # (R,)
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
    """The K best finished captions of each image, best first: scores are length-normalised and
    ranked by score + offset (the offset of a caption's beam group; 0 without constraints)."""

    def __init__(self, B: int, K: int, L: int, pad: int):
        self.found = Found(
            np.full((B, K, L), pad, dtype=np.int64),
            np.zeros((B, K), dtype=np.int64),
            np.full((B, K), NEG_INF, dtype=np.float32),
            np.zeros((B, K), dtype=bool),
        )
        self.keys = np.full((B, K), NEG_INF, dtype=np.float32)

    def add(self, images, scores, offsets, words, lengths, truncated) -> None:
        """Merge candidates (b, C) of the images `images` (b,) and keep the K best of each."""
        f = self.found
        K = f.scores.shape[1]
        keys, idx = _topk(np.concatenate([self.keys[images], (scores + offsets).astype(np.float32)], axis=1), K)
        self.keys[images] = keys
        f.scores[images] = np.take_along_axis(np.concatenate([f.scores[images], scores], axis=1), idx, axis=1)
        f.words[images] = _gather(np.concatenate([f.words[images], words], axis=1), idx)
        f.lengths[images] = np.take_along_axis(np.concatenate([f.lengths[images], lengths], axis=1), idx, axis=1)
        f.truncated[images] = np.take_along_axis(np.concatenate([f.truncated[images], truncated], axis=1), idx, axis=1)


def _top(cand: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cand (B, C, V) -> the n best per image: scores, beam and token indices, each (B, n)."""
    B, C, V = cand.shape
    scores, idx = _topk(cand.reshape(B, C * V), n)
    return scores, idx // V, idx % V


def _required(include: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, V) bool -> each image's required word ids (B, I), padded, and which are real (B, I)."""
    I = max(1, int(include.sum(axis=1).max()))
    ids = np.argsort(~include, axis=1, kind="stable")[:, :I]  # required ones first
    return ids, np.take_along_axis(include, ids, axis=1)


def _top_in_group(
    cand: np.ndarray, g: int, K: int, lift: int, req_ids: np.ndarray, req_valid: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """capgen.decoding.beam._top_in_group: group g's own beams' words that keep them in it, and
    lower groups' beams with a required word of level `lift` == g."""
    B, _, V = cand.shape
    own = cand[:, g * K : (g + 1) * K]  # (B, K, V)
    if lift > g:  # its required words would lift these beams out of the group
        own = own.copy()
        rows, cols = np.nonzero(req_valid)
        own[rows, :, req_ids[rows, cols]] = NEG_INF
    if g == 0 or lift != g:
        scores, beam, tok = _top(own, n)
        return scores, beam + g * K, tok
    below = np.take_along_axis(cand[:, : g * K], req_ids[:, None, :], axis=2)  # (B, gK, I)
    below = np.where(req_valid[:, None, :], below, NEG_INF)
    I = below.shape[2]
    scores, idx = _topk(np.concatenate([own.reshape(B, K * V), below.reshape(B, g * K * I)], axis=1), n)
    lower = idx >= K * V
    j = np.maximum(idx - K * V, 0)
    beam = np.where(lower, j // I, g * K + idx // V)
    tok = np.where(lower, np.take_along_axis(req_ids, j % I, axis=1), idx % V)
    return scores, beam, tok


def beam_search(
    step: Step,
    memory: Arrays,
    state: Arrays,
    ids: TokenIds,
    cfg: DecodeConfig,
    vocab_size: int,
    shared_memory: bool = False,
    include: np.ndarray | None = None,
) -> Found:
    """K = beam_size captions per image, best first (capgen.decoding.beam.beam_search, in numpy,
    tag guidance included). shared_memory: the step reads one memory row per image
    (CaptionModel.shared_memory). include (B, V) bool: the words of which each caption must contain one."""
    B, K, L = next(iter(memory.values())).shape[0], cfg.beam_size, cfg.length_limit
    G = 1 if include is None else 3  # beam groups per image
    GK = G * K
    if not shared_memory:
        memory = {k: np.repeat(v, GK, axis=0) for k, v in memory.items()}  # rows b*GK .. b*GK+GK-1
    state = {k: np.repeat(v, GK, axis=0) for k, v in state.items()}
    R = B * GK
    rules = Rules(ids, cfg, vocab_size)

    def norm(score, length: int):
        return length_normalised(score, length, cfg.length_penalty).astype(np.float32)

    tokens = np.full(R, ids.start, dtype=np.int64)
    # The K beams of a group start identical; only the first may expand. Constrained images start in
    # group 0 (no required word yet), the others in group 1 (nothing required).
    beam_scores = np.full((B, G, K), NEG_INF, dtype=np.float32)
    start_group = 0 if include is None else 1 - include.any(axis=1).astype(np.int64)
    beam_scores[np.arange(B), start_group, 0] = 0.0
    beam_scores = beam_scores.reshape(B, GK)
    group_of = np.repeat(np.arange(G), K)[None]  # (1, GK)
    offset = np.array([0.0] if G == 1 else [-UNMET_PENALTY, 0.0, EARLY_BONUS], dtype=np.float32)
    history = np.full((B, GK, L), ids.pad, dtype=np.int64)
    pool = _Pool(B, K, L, ids.pad)
    images = np.arange(B)  # the images still searching (finished ones leave every array)
    rank = np.arange(2 * K)
    req_ids, req_valid = _required(include) if include is not None else (None, None)
    for t in range(L + 1):
        beam_group = np.broadcast_to(group_of, (B, GK))
        no = np.zeros((B, K), dtype=bool)
        raw, state = step(tokens, state, memory)  # (R, V), state
        logp = rules.apply(raw, t, tokens, history.reshape(R, L))
        V = logp.shape[-1]
        cand = (beam_scores.reshape(R, 1) + logp).reshape(B, GK, V)  # (B, GK, V)
        lift = (2 if t < EARLY_WORDS else 1) if G > 1 else 0
        fin_scores, fin_offsets, fin_beams, fin_cut, parents, words, scores = [], [], [], [], [], [], []
        cut_all = (raw.argmax(axis=-1) != ids.end).reshape(B, GK) if rules.final(t) else None
        for g in range(G):
            top_scores, top_beam, top_tok = (
                _top(cand, 2 * K) if G == 1 else _top_in_group(cand, g, K, lift, req_ids, req_valid, 2 * K)
            )
            is_end = top_tok == ids.end
            ended = is_end[:, :K] & np.isfinite(top_scores[:, :K])  # (B, K)
            end_beam = top_beam[:, :K]
            fin_scores.append(np.where(ended, norm(top_scores[:, :K], t), NEG_INF))
            fin_offsets.append(np.full((B, K), offset[g], dtype=np.float32))
            fin_beams.append(end_beam)
            fin_cut.append(np.take_along_axis(cut_all, end_beam, axis=1) if cut_all is not None else no)
            order = np.argsort(rank + 2 * K * is_end, axis=1, kind="stable")[:, :K]  # alive: not <end>
            parents.append(np.take_along_axis(top_beam, order, axis=1))
            scores.append(np.take_along_axis(top_scores, order, axis=1))
            words.append(np.take_along_axis(top_tok, order, axis=1))
        stuck = np.isinf(logp.max(axis=-1)).reshape(B, GK) & np.isfinite(beam_scores)
        fin_scores.append(np.where(stuck, norm(beam_scores, t), NEG_INF))
        fin_offsets.append(offset[beam_group])
        fin_beams.append(np.broadcast_to(np.arange(GK), (B, GK)))
        fin_cut.append(np.ones_like(stuck))
        fin_beam = np.concatenate(fin_beams, axis=1)
        pool.add(
            images,
            np.concatenate(fin_scores, axis=1).astype(np.float32),
            np.concatenate(fin_offsets, axis=1),
            _gather(history, fin_beam),
            np.full_like(fin_beam, t),
            np.concatenate(fin_cut, axis=1),
        )
        if rules.final(t):
            break

        parent = np.concatenate(parents, axis=1)  # (B, GK)
        beam_scores, word = np.concatenate(scores, axis=1), np.concatenate(words, axis=1)
        rows = (np.arange(B)[:, None] * GK + parent).reshape(R)
        state = {k: v[rows] for k, v in state.items()}
        history = _gather(history, parent)
        history[:, :, t] = word
        tokens = word.reshape(R).astype(np.int64)

        reach = norm(beam_scores, L)  # an upper bound, as in beam.py
        if G > 1:
            rise = include.any(axis=1, keepdims=True) & (t + 1 < EARLY_WORDS)
            reach = reach + np.where((beam_group == G - 1) | rise, offset[-1], offset[1])
        done = pool.keys[images, -1] >= reach.max(axis=1)  # (B,)
        if done.all():
            break
        if done.any():  # drop the finished images' rows, as beam.py does
            keep = np.flatnonzero(~done)
            keep_rows = (keep[:, None] * GK + np.arange(GK)).reshape(-1)
            images, beam_scores, history = images[keep], beam_scores[keep], history[keep]
            if G > 1:
                include, req_ids, req_valid = include[keep], req_ids[keep], req_valid[keep]
            tokens, state = tokens[keep_rows], {k: v[keep_rows] for k, v in state.items()}
            memory = {k: v[keep if shared_memory else keep_rows] for k, v in memory.items()}
            B, R = len(keep), len(keep) * GK
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
            hyps.append(
                Hypothesis(tokens=found.words[b, m, :n].tolist(), score=score, truncated=bool(found.truncated[b, m]))
            )
        out.append(hyps)
    return out
