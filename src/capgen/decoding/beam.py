"""Beam search over images x beams at once (B*K rows), with per-image pools of finished captions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from capgen.decoding.config import DecodeConfig, TokenIds
from capgen.decoding.rules import EARLY_BONUS, EARLY_WORDS, NEG_INF, Rules, length_normalised
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
    captions are ranked with their group's offset (-cfg.guide_penalty, 0, EARLY_BONUS) and keep their
    own scores. An image whose row is all False is unconstrained: it only uses the middle group.
    """
    beams = _Beams(step, memory, state, ids, cfg, include)
    rules = Rules(ids, cfg, step.vocab_size)
    for t in range(cfg.length_limit + 1):
        raw, beams.state, att = step(beams.tokens, beams.state, beams.memory)  # (R, V), state, (R, N) or None
        logp = rules.apply(raw, t, beams.tokens, beams.history.reshape(beams.R, -1))
        if cfg.return_attention and att is not None and beams.att_history is None:
            beams.att_history = np.zeros((*beams.history.shape, att.shape[-1]), dtype=np.float32)
        cut_all = (raw.argmax(axis=-1) != ids.end).reshape(beams.B, -1) if rules.final(t) else None
        alive = beams.finish(logp, t, cut_all)
        if rules.final(t):
            break
        beams.advance(*alive, t, att)
        done = beams.pool.keys[beams.images, -1] >= beams.reach(t)  # (B,)
        if done.all():
            break
        if done.any():
            beams.drop(np.flatnonzero(~done))
    return beams.pool.found


class _Beams:
    """The state of one beam search: B images still searching (`images`: their rows in the pool),
    G groups of K beams each (rows b*GK .. b*GK+GK-1), their scores, words and the step's state."""

    def __init__(self, step: Step, memory: Rows, state: Rows, ids: TokenIds, cfg: DecodeConfig, include):
        B, K, L = _rows(memory), cfg.beam_size, cfg.length_limit
        G = 1 if include is None else 3  # beam groups per image
        self.step, self.ids, self.cfg, self.include = step, ids, cfg, include
        self.B, self.K, self.G, self.GK = B, K, G, G * K
        self.memory, self.state = expand(step, memory, state, B, self.GK)
        self.tokens = np.full(B * self.GK, ids.start, dtype=np.int64)
        # The K beams of a group start identical; only the first may expand or it would be chosen K times.
        # Constrained images start in group 0 (no required word yet), the others in group 1 (nothing required).
        scores = np.full((B, G, K), NEG_INF, dtype=np.float32)
        start_group = 0 if include is None else 1 - include.any(axis=1).astype(np.int64)
        scores[np.arange(B), start_group, 0] = 0.0
        self.scores = scores.reshape(B, self.GK)
        self.group_of = np.repeat(np.arange(G), K)[None]  # (1, GK)
        self.offset = np.array([0.0] if G == 1 else [-cfg.guide_penalty, 0.0, EARLY_BONUS], dtype=np.float32)
        self.history = np.full((B, self.GK, L), ids.pad, dtype=np.int64)  # words of each beam
        self.att_history: np.ndarray | None = None  # (B, GK, L, N)
        self.pool = _Pool(B, K, L, ids.pad)
        self.images = np.arange(B)
        self.required = None if include is None else _Required.of(include)

    @property
    def R(self) -> int:
        return self.B * self.GK

    def norm(self, score, length: int) -> np.ndarray:
        return length_normalised(score, length, self.cfg.length_penalty).astype(np.float32)

    def finish(self, logp: np.ndarray, t: int, cut_all: np.ndarray | None):
        """Pool the captions that end at step t: per group, <end> among its K best candidates; and the
        beams with every token blocked. Returns the alive candidates (parents, scores, words), (B, GK) each."""
        B, K, GK = self.B, self.K, self.GK
        cand = (self.scores.reshape(-1, 1) + logp).reshape(B, GK, -1)  # (B, GK, V)
        # A candidate lands in its beam's group, or higher with a required word: the word's level.
        lift = (2 if t < EARLY_WORDS else 1) if self.G > 1 else 0
        rank = np.arange(2 * K)
        fin, parents, scores, words = [], [], [], []
        for g in range(self.G):
            # 2K candidates always hold K that are not <end>: only the group's K beams can end in it.
            top_scores, top_beam, top_tok = (
                _top(cand, 2 * K) if self.G == 1 else _top_in_group(cand, g, K, lift, self.required, 2 * K)
            )  # (B, 2K) each
            is_end = top_tok == self.ids.end
            ended = is_end[:, :K] & np.isfinite(top_scores[:, :K])  # (B, K)
            end_beam = top_beam[:, :K]
            # At the forced last step a caption is cut when the model itself would have gone on.
            cut = np.zeros_like(ended) if cut_all is None else np.take_along_axis(cut_all, end_beam, axis=1)
            offset = np.full((B, K), self.offset[g], dtype=np.float32)
            fin.append((np.where(ended, self.norm(top_scores[:, :K], t), NEG_INF), offset, end_beam, cut))
            # Alive: the group's K best candidates that are not <end> (stable order by rank).
            order = np.argsort(rank + 2 * K * is_end, axis=1, kind="stable")[:, :K]  # (B, K)
            parents.append(np.take_along_axis(top_beam, order, axis=1))
            scores.append(np.take_along_axis(top_scores, order, axis=1))
            words.append(np.take_along_axis(top_tok, order, axis=1))
        stuck = np.isinf(logp.max(axis=-1)).reshape(B, GK) & np.isfinite(self.scores)  # (B, GK)
        every = np.broadcast_to(np.arange(GK), (B, GK))
        group_offset = np.broadcast_to(self.offset[self.group_of], (B, GK))
        fin.append((np.where(stuck, self.norm(self.scores, t), NEG_INF), group_offset, every, np.ones_like(stuck)))
        fin_scores, fin_offsets, fin_beam, fin_cut = (np.concatenate(x, axis=1) for x in zip(*fin))
        att = None if self.att_history is None else gather(self.att_history, fin_beam)
        words_so_far, lengths = gather(self.history, fin_beam), np.full_like(fin_beam, t)
        self.pool.add(self.images, fin_scores.astype(np.float32), fin_offsets, words_so_far, lengths, fin_cut, att)
        return tuple(np.concatenate(x, axis=1) for x in (parents, scores, words))

    def advance(self, parent: np.ndarray, scores: np.ndarray, word: np.ndarray, t: int, att) -> None:
        """The alive candidates become the beams: their parents' state and words, plus word t."""
        B, GK = self.B, self.GK
        rows = (np.arange(B)[:, None] * GK + parent).reshape(-1)  # flat parent rows
        self.scores = scores
        self.state = self.step.rows(self.state, rows)
        self.history = gather(self.history, parent)
        self.history[:, :, t] = word
        if self.att_history is not None:
            self.att_history = gather(self.att_history, parent)
            self.att_history[:, :, t] = att[rows].reshape(B, GK, -1)
        self.tokens = word.reshape(-1).astype(np.int64)

    def reach(self, t: int) -> np.ndarray:
        """Per image, the best score an alive beam can still reach. Future scores only fall, and the
        length penalty is largest at the length limit: an upper bound (plus the best offset a beam can
        still reach: the early group's once in it, or while a required word can still come among the
        first EARLY_WORDS; else the middle group's)."""
        reach = self.norm(self.scores, self.cfg.length_limit)
        if self.G > 1:
            rise = self.include.any(axis=1, keepdims=True) & (t + 1 < EARLY_WORDS)  # (B, 1)
            group = np.broadcast_to(self.group_of, reach.shape)
            reach = reach + np.where((group == self.G - 1) | rise, self.offset[-1], self.offset[1])
        return reach.max(axis=1)

    def drop(self, keep: np.ndarray) -> None:
        """Only the images `keep` search on: the finished ones leave every array, so later steps do
        not compute their rows."""
        keep_rows = (keep[:, None] * self.GK + np.arange(self.GK)).reshape(-1)
        self.images, self.scores, self.history = self.images[keep], self.scores[keep], self.history[keep]
        self.att_history = None if self.att_history is None else self.att_history[keep]
        if self.G > 1:
            self.include, self.required = self.include[keep], self.required[keep]
        self.tokens, self.state = self.tokens[keep_rows], self.step.rows(self.state, keep_rows)
        self.memory = self.step.rows(self.memory, keep if self.step.shared_memory else keep_rows)
        self.B = len(keep)


def _rows(d: Rows) -> int:
    return next(iter(d.values())).shape[0]
