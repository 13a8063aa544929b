"""Beam search over images x beams at once (B*K rows), with per-image pools of finished captions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from capgen.decoding.config import DecodeConfig, TokenIds
from capgen.decoding.rules import EARLY_BONUS, EARLY_WORDS, NEG_INF, UNMET_PENALTY, Rules, length_normalised
from capgen.decoding.steps import Rows, Step, expand


@dataclass
class Found:
    """Per image, M captions best first: words (B, M, L) padded, lengths (B, M), scores (B, M)
    (-inf = none), truncated (B, M) and attention (B, M, L, N) or None. Every search returns this."""

    words: np.ndarray
    lengths: np.ndarray
    scores: np.ndarray
    truncated: np.ndarray
    attention: np.ndarray | None = None


def topk(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k largest values, best first (ties: lower index first), and their indices."""
    if k < x.shape[1]:
        idx = np.argpartition(-x, k - 1, axis=1)[:, :k]
    else:
        idx = np.tile(np.arange(x.shape[1]), (len(x), 1))
    vals = np.take_along_axis(x, idx, axis=1)
    idx = np.take_along_axis(idx, np.lexsort((idx, -vals), axis=1), axis=1)
    return np.take_along_axis(x, idx, axis=1), idx


def gather(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """x (B, C, ...), idx (B, K) -> (B, K, ...): per-image selection of entries."""
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

    def add(self, images, scores, offsets, words, lengths, truncated, attention) -> None:
        """Merge candidates (b, C) (-inf = none) of the images `images` (b,) and keep the K best of each."""
        f = self.found
        if attention is not None and f.attention is None:
            f.attention = np.zeros((*f.words.shape, attention.shape[-1]), dtype=np.float32)
        K = self.keys.shape[1]
        keys, idx = topk(np.concatenate([self.keys[images], (scores + offsets).astype(np.float32)], axis=1), K)
        self.keys[images] = keys
        fields = {"scores": scores, "words": words, "lengths": lengths, "truncated": truncated, "attention": attention}
        for name, new in fields.items():
            if new is not None:
                old = getattr(f, name)
                old[images] = gather(np.concatenate([old[images], new], axis=1), idx)


def _top(cand: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cand (B, C, V) -> the n best per image: scores, beam and token indices, each (B, n)."""
    B, C, V = cand.shape
    scores, idx = topk(cand.reshape(B, C * V), n)
    return scores, idx // V, idx % V


@dataclass
class _Required:
    """Each image's required words, padded to I per image: ids (B, I), valid (B, I)."""

    ids: np.ndarray
    valid: np.ndarray

    @staticmethod
    def of(include: np.ndarray) -> "_Required":
        I = max(1, int(include.sum(axis=1).max()))
        ids = np.argsort(~include, axis=1, kind="stable")[:, :I]  # required ones first
        return _Required(ids, np.take_along_axis(include, ids, axis=1))

    def __getitem__(self, keep) -> "_Required":
        return _Required(self.ids[keep], self.valid[keep])


def _top_in_group(cand: np.ndarray, g: int, K: int, lift: int, req: _Required, n: int):
    """The n best candidates landing in group g of cand (B, G*K, V): its own K beams' words that do not
    lift them higher, and lower groups' beams with a required word of level `lift` == g. Only these
    few words can move a beam, so they are gathered instead of masking every group's full grid."""
    B, _, V = cand.shape
    own = cand[:, g * K : (g + 1) * K]  # (B, K, V)
    if lift > g:  # its required words would lift these beams out of the group
        own = own.copy()
        rows, cols = np.nonzero(req.valid)
        own[rows, :, req.ids[rows, cols]] = NEG_INF
    if g == 0 or lift != g:
        scores, beam, tok = _top(own, n)
        return scores, beam + g * K, tok
    below = np.take_along_axis(cand[:, : g * K], req.ids[:, None, :], axis=2)  # (B, gK, I)
    below = np.where(req.valid[:, None, :], below, NEG_INF)
    I = below.shape[2]
    scores, idx = topk(np.concatenate([own.reshape(B, K * V), below.reshape(B, g * K * I)], axis=1), n)
    lower = idx >= K * V
    j = np.maximum(idx - K * V, 0)  # index into `below`
    beam = np.where(lower, j // I, g * K + idx // V)
    tok = np.where(lower, np.take_along_axis(req.ids, j % I, axis=1), idx % V)
    return scores, beam, tok


def beam_search(
    step: Step, memory: Rows, state: Rows, ids: TokenIds, cfg: DecodeConfig, include: np.ndarray | None = None
) -> Found:
    """K = beam_size captions per image (memory and state: one row per image), best first.

    Alive beams are ranked by raw log-prob sums; finished captions by the length-normalised score.
    A <end> candidate finishes a caption only if it ranks among the image's K best candidates
    (so beam_size 1 is exactly greedy). An image stops once it has K finished captions that no
    alive beam can beat. Beams still alive after length_limit words get one last step where only <end>
    may come (Rules), so every caption ends and a cut one pays for it.

    include (B, V) bool: constrained beam search (Anderson et al. 2017) with one disjunctive
    constraint per image, "the caption contains one of these words". Each such image keeps three
    groups of K beams: without a required word yet, with one named late, with one named among the
    first EARLY_WORDS words. A candidate moves up a group when it adds a required word; finished
    captions are ranked with their group's offset (UNMET_PENALTY, 0, EARLY_BONUS) and keep their
    own scores. An image whose row is all False is unconstrained: it only uses the middle group.
    """
    B, K, L = _rows(memory), cfg.beam_size, cfg.length_limit
    G = 1 if include is None else 3  # beam groups per image
    GK = G * K
    memory, state = expand(step, memory, state, B, GK)  # rows b*GK .. b*GK+GK-1
    R = B * GK
    rules = Rules(ids, cfg, step.vocab_size)

    def norm(score, length: int) -> np.ndarray:
        return length_normalised(score, length, cfg.length_penalty).astype(np.float32)

    tokens = np.full(R, ids.start, dtype=np.int64)
    # The K beams of a group start identical; only the first may expand or it would be chosen K times.
    # Constrained images start in group 0 (no required word yet), the others in group 1 (nothing required).
    beam_scores = np.full((B, G, K), NEG_INF, dtype=np.float32)
    start_group = 0 if include is None else 1 - include.any(axis=1).astype(np.int64)
    beam_scores[np.arange(B), start_group, 0] = 0.0
    beam_scores = beam_scores.reshape(B, GK)
    group_of = np.repeat(np.arange(G), K)[None]  # (1, GK)
    offset = np.array([0.0] if G == 1 else [-UNMET_PENALTY, 0.0, EARLY_BONUS], dtype=np.float32)
    history = np.full((B, GK, L), ids.pad, dtype=np.int64)  # words of each beam
    att_history: np.ndarray | None = None  # (B, GK, L, N)
    pool = _Pool(B, K, L, ids.pad)
    # The images still searching: their index into the pool. An image that is done leaves every
    # array at the end of the step, so later steps do not compute its rows.
    images = np.arange(B)
    rank = np.arange(2 * K)
    required = None if include is None else _Required.of(include)
    for t in range(L + 1):
        beam_group = np.broadcast_to(group_of, (B, GK))
        raw, state, att = step(tokens, state, memory)  # (R, V), state, (R, N) or None
        logp = rules.apply(raw, t, tokens, history.reshape(R, L))
        V = logp.shape[-1]
        if cfg.return_attention and att is not None and att_history is None:
            att_history = np.zeros((B, GK, L, att.shape[-1]), dtype=np.float32)
        cand = (beam_scores.reshape(R, 1) + logp).reshape(B, GK, V)  # (B, GK, V)
        # A candidate lands in its beam's group, or higher with a required word: the word's level.
        lift = (2 if t < EARLY_WORDS else 1) if G > 1 else 0

        # Finished now: per group, <end> among its K best candidates; and beams with every token blocked.
        fin_scores, fin_offsets, fin_beams, fin_cut, parents, words, scores = [], [], [], [], [], [], []
        cut_all = (raw.argmax(axis=-1) != ids.end).reshape(B, GK) if rules.final(t) else None
        for g in range(G):
            # 2K candidates always hold K that are not <end>: only the group's K beams can end in it.
            top_scores, top_beam, top_tok = (
                _top(cand, 2 * K) if G == 1 else _top_in_group(cand, g, K, lift, required, 2 * K)
            )  # (B, 2K) each
            is_end = top_tok == ids.end
            ended = is_end[:, :K] & np.isfinite(top_scores[:, :K])  # (B, K)
            end_beam = top_beam[:, :K]
            fin_scores.append(np.where(ended, norm(top_scores[:, :K], t), NEG_INF))
            fin_offsets.append(np.full((B, K), offset[g], dtype=np.float32))
            fin_beams.append(end_beam)
            # At the forced last step a caption is cut when the model itself would have gone on.
            fin_cut.append(
                np.take_along_axis(cut_all, end_beam, axis=1) if cut_all is not None else np.zeros_like(ended)
            )
            # Alive: the group's K best candidates that are not <end> (stable order by rank).
            order = np.argsort(rank + 2 * K * is_end, axis=1, kind="stable")[:, :K]  # (B, K)
            parents.append(np.take_along_axis(top_beam, order, axis=1))
            scores.append(np.take_along_axis(top_scores, order, axis=1))
            words.append(np.take_along_axis(top_tok, order, axis=1))
        stuck = np.isinf(logp.max(axis=-1)).reshape(B, GK) & np.isfinite(beam_scores)  # (B, GK)
        fin_scores.append(np.where(stuck, norm(beam_scores, t), NEG_INF))
        fin_offsets.append(offset[beam_group])
        fin_beams.append(np.broadcast_to(np.arange(GK), (B, GK)))
        fin_cut.append(np.ones_like(stuck))
        fin_beam = np.concatenate(fin_beams, axis=1)
        pool.add(
            images,
            np.concatenate(fin_scores, axis=1).astype(np.float32),
            np.concatenate(fin_offsets, axis=1),
            gather(history, fin_beam),
            np.full_like(fin_beam, t),
            np.concatenate(fin_cut, axis=1),
            None if att_history is None else gather(att_history, fin_beam),
        )
        if rules.final(t):
            break

        parent = np.concatenate(parents, axis=1)  # (B, GK)
        beam_scores, word = np.concatenate(scores, axis=1), np.concatenate(words, axis=1)
        rows = (np.arange(B)[:, None] * GK + parent).reshape(R)  # flat parent rows
        state = step.rows(state, rows)
        history = gather(history, parent)
        history[:, :, t] = word
        if att_history is not None:
            att_history = gather(att_history, parent)
            att_history[:, :, t] = att[rows].reshape(B, GK, -1)
        tokens = word.reshape(R).astype(np.int64)

        # Future scores only fall, and the length penalty is largest at the length limit: an upper bound
        # (plus the best offset a beam can still reach: the early group's once in it, or while a
        # required word can still come among the first EARLY_WORDS; else the middle group's).
        reach = norm(beam_scores, L)
        if G > 1:
            rise = include.any(axis=1, keepdims=True) & (t + 1 < EARLY_WORDS)  # (B, 1)
            reach = reach + np.where((beam_group == G - 1) | rise, offset[-1], offset[1])
        done = pool.keys[images, -1] >= reach.max(axis=1)  # (B,)
        if done.all():
            break
        if done.any():  # drop the finished images' rows from every array
            keep = np.flatnonzero(~done)
            keep_rows = (keep[:, None] * GK + np.arange(GK)).reshape(-1)
            images, beam_scores, history = images[keep], beam_scores[keep], history[keep]
            att_history = None if att_history is None else att_history[keep]
            if G > 1:
                include, required = include[keep], required[keep]
            tokens, state = tokens[keep_rows], step.rows(state, keep_rows)
            memory = step.rows(memory, keep if step.shared_memory else keep_rows)
            B, R = len(keep), len(keep) * GK
    return pool.found


def _rows(d: Rows) -> int:
    return next(iter(d.values())).shape[0]
