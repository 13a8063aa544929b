"""Beam search over images x beams at once (B*K rows), with per-image pools of finished captions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from capgen.decoding.common import NEG_INF, Constraints, State, expand_rows, select_rows
from capgen.decoding.config import DecodeConfig, TokenIds
from capgen.decoding.rules import EARLY_BONUS, EARLY_WORDS, UNMET_PENALTY, length_normalised

if TYPE_CHECKING:  # models sit above decoding: the search only calls their step
    from capgen.models.base import CaptionModel


@dataclass
class Found:
    """Per image, M captions best first: words (B, M, L) padded, lengths (B, M), scores (B, M)
    (-inf = none), truncated (B, M) and attention (B, M, L, N) or None. Every search returns this."""

    words: Tensor
    lengths: Tensor
    scores: Tensor
    truncated: Tensor
    attention: Tensor | None


class _Pool:
    """The K best finished captions of each image, best first: scores are length-normalised and
    ranked by score + offset (the offset of a caption's beam group; 0 without constraints)."""

    def __init__(self, B: int, K: int, L: int, pad: int, device: torch.device):
        self.found = Found(
            torch.full((B, K, L), pad, dtype=torch.long, device=device),
            torch.zeros(B, K, dtype=torch.long, device=device),
            torch.full((B, K), NEG_INF, device=device),
            torch.zeros(B, K, dtype=torch.bool, device=device),
            None,
        )
        self.keys = torch.full((B, K), NEG_INF, device=device)

    def worst_score(self, images: Tensor | None) -> Tensor:
        return self.keys[:, -1] if images is None else self.keys[images, -1]  # (b,)

    def add(
        self,
        images: Tensor | None,
        scores: Tensor,
        offsets: Tensor,
        words: Tensor,
        lengths: Tensor,
        truncated: Tensor,
        attention: Tensor | None,
    ) -> None:
        """Merge candidates (b, C) (-inf = none) of the images `images` (b,; None = all) and keep the
        K best of each."""
        f = self.found
        K = f.scores.shape[1]
        if attention is not None and f.attention is None:
            f.attention = attention.new_zeros(*f.words.shape, attention.shape[-1])
        fields = [("scores", scores), ("words", words), ("lengths", lengths), ("truncated", truncated)]
        fields += [("attention", attention)] if attention is not None else []
        pick = (lambda x: x) if images is None else (lambda x: x[images])
        keys, idx = torch.cat([pick(self.keys), scores + offsets], dim=1).topk(K, dim=1)  # (b, K)
        merged = {name: _gather(torch.cat([pick(getattr(f, name)), new], dim=1), idx) for name, new in fields}
        if images is None:
            self.keys = keys
            for name, value in merged.items():
                setattr(f, name, value)
        else:
            self.keys[images] = keys
            for name, value in merged.items():
                getattr(f, name)[images] = value


def _gather(x: Tensor, idx: Tensor) -> Tensor:
    """x (B, C, ...), idx (B, K) -> (B, K, ...): per-image selection of entries."""
    return x.gather(1, idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand(*idx.shape, *x.shape[2:]))


def _top(cand: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """cand (B, C, V) -> the n best per image: scores, beam and token indices, each (B, n)."""
    B, C, V = cand.shape
    scores, idx = cand.view(B, C * V).topk(n, dim=1)
    return scores, idx // V, idx % V


@dataclass
class _Required:
    """Each image's required words, padded to I per image: ids (B, I), valid (B, I)."""

    ids: Tensor
    valid: Tensor

    @staticmethod
    def of(include: Tensor) -> "_Required":
        I = max(1, int(include.sum(dim=1).max()))
        valid, ids = include.to(torch.int8).topk(I, dim=1)  # required ones first
        return _Required(ids, valid.bool())


def _top_in_group(
    cand: Tensor, g: int, K: int, lift: int, required: _Required, n: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The n best candidates landing in group g of cand (B, G*K, V): its own K beams' words that do not
    lift them higher, and lower groups' beams with a required word of level `lift` == g. Only these
    few words can move a beam, so they are gathered instead of masking every group's full grid."""
    B, _, V = cand.shape
    own = cand[:, g * K : (g + 1) * K]  # (B, K, V)
    if lift > g:  # its required words would lift these beams out of the group
        ids = required.ids.unsqueeze(1).expand(B, K, -1)  # (B, K, I)
        own = own.scatter(2, ids, own.gather(2, ids).masked_fill(required.valid.unsqueeze(1), NEG_INF))
    if g == 0 or lift != g:
        scores, beam, tok = _top(own, n)
        return scores, beam + g * K, tok
    below = cand[:, : g * K].gather(2, required.ids.unsqueeze(1).expand(B, g * K, -1))  # (B, gK, I)
    below = below.masked_fill(~required.valid.unsqueeze(1), NEG_INF)
    I = below.shape[2]
    scores, idx = torch.cat([own.reshape(B, K * V), below.reshape(B, g * K * I)], dim=1).topk(n, dim=1)
    lower = idx >= K * V
    j = (idx - K * V).clamp_min(0)  # index into `below`
    beam = torch.where(lower, j // I, g * K + idx // V)
    tok = torch.where(lower, required.ids.gather(1, j % I), idx % V)
    return scores, beam, tok


def beam_search(
    model: CaptionModel, memory: State, state: State, ids: TokenIds, cfg: DecodeConfig, include: Tensor | None = None
) -> Found:
    """K = beam_size captions per image, best first.

    Alive beams are ranked by raw log-prob sums; finished captions by the length-normalised score.
    A <end> candidate finishes a caption only if it ranks among the image's K best candidates
    (so beam_size 1 is exactly greedy). An image stops once it has K finished captions that no
    alive beam can beat. Beams still alive after length_limit words get one last step where only <end>
    may come (Constraints), so every caption ends and a cut one pays for it.

    include (B, V) bool: constrained beam search (Anderson et al. 2017) with one disjunctive
    constraint per image, "the caption contains one of these words". Each such image keeps three
    groups of K beams: without a required word yet, with one named late, with one named among the
    first EARLY_WORDS words. A candidate moves up a group when it adds a required word; finished
    captions are ranked with their group's offset (UNMET_PENALTY, 0, EARLY_BONUS) and keep their
    own scores. An image whose row is all False is unconstrained: it only uses the middle group.
    """
    B, K, L = next(iter(memory.values())).shape[0], cfg.beam_size, cfg.length_limit
    device = next(iter(memory.values())).device
    G = 1 if include is None else 3  # beam groups per image
    GK = G * K
    memory, state = expand_rows(model, memory, state, GK)  # rows b*GK .. b*GK+GK-1
    per_image_memory = model.shared_memory
    R = B * GK
    rules = Constraints(ids, cfg, model.vocab_size, device)

    def norm(score: Tensor, length: int) -> Tensor:
        return length_normalised(score, length, cfg.length_penalty)

    tokens = torch.full((R,), ids.start, dtype=torch.long, device=device)
    # The K beams of a group start identical; only the first may expand or it would be chosen K times.
    # Constrained images start in group 0 (no required word yet), the others in group 1 (nothing required).
    beam_scores = torch.full((B, G, K), NEG_INF, device=device)
    start_group = 0 if include is None else 1 - include.any(dim=1).long()  # (B,) or 0
    beam_scores[torch.arange(B, device=device), start_group, 0] = 0.0
    beam_scores = beam_scores.view(B, GK)
    group_of = torch.arange(G, device=device).repeat_interleave(K).unsqueeze(0)  # (1, GK)
    offset = torch.tensor([0.0] if G == 1 else [-UNMET_PENALTY, 0.0, EARLY_BONUS], device=device)  # (G,)
    history = torch.full((B, GK, L), ids.pad, dtype=torch.long, device=device)  # words of each beam
    att_history: Tensor | None = None  # (B, GK, L, N)
    pool = _Pool(B, K, L, ids.pad, device)
    # The images still searching: their index into the pool, and a per-step flag. An image that is
    # done leaves every tensor at the end of the step, so later steps do not compute its rows.
    images: Tensor | None = None  # None: every image
    beam_index = torch.arange(GK, device=device)  # (GK,)
    row_base = torch.arange(B, device=device).unsqueeze(1) * GK  # (B, 1) first row of each image
    done = torch.zeros(B, dtype=torch.bool, device=device)
    rank = torch.arange(2 * K, device=device)  # (2K,)
    required = None if include is None else _Required.of(include)
    for t in range(L + 1):
        beam_group = group_of.expand(B, GK)  # (B, GK)
        raw, state, att = model.step(tokens, state, memory)  # (R, V), state, (R, N)
        logp = rules.apply(raw, t, tokens, history.view(R, L))
        V = logp.shape[-1]
        if cfg.return_attention and att is not None and att_history is None:
            att_history = att.new_zeros(B, GK, L, att.shape[-1])
        cand = (beam_scores.view(R, 1) + logp).view(B, GK, V)  # (B, GK, V)
        # A candidate lands in its beam's group, or higher with a required word: the word's level.
        lift = (2 if t < EARLY_WORDS else 1) if G > 1 else 0

        # Finished now: per group, <end> among its K best candidates; and beams with every token blocked.
        fin_scores, fin_offsets, fin_beams, fin_cut, parents, words, scores = [], [], [], [], [], [], []
        cut_all = (raw.argmax(dim=-1) != ids.end).view(B, GK) if rules.final(t) else None
        for g in range(G):
            # 2K candidates always hold K that are not <end>: only the group's K beams can end in it.
            top_scores, top_beam, top_tok = (
                _top(cand, 2 * K) if G == 1 else _top_in_group(cand, g, K, lift, required, 2 * K)
            )  # (B, 2K) each
            is_end = top_tok == ids.end
            ended = is_end[:, :K] & torch.isfinite(top_scores[:, :K])  # (B, K)
            end_beam = top_beam[:, :K]
            fin_scores.append(norm(top_scores[:, :K], t).masked_fill(~ended, NEG_INF))
            fin_offsets.append(offset[g].expand(B, K))
            fin_beams.append(end_beam)
            # At the forced last step a caption is cut when the model itself would have gone on.
            fin_cut.append(cut_all.gather(1, end_beam) if cut_all is not None else torch.zeros_like(ended))
            # Alive: the group's K best candidates that are not <end> (stable order by rank).
            order = (rank + 2 * K * is_end.long()).argsort(dim=1)[:, :K]  # (B, K)
            parents.append(top_beam.gather(1, order))
            scores.append(top_scores.gather(1, order))
            words.append(top_tok.gather(1, order))
        stuck = torch.isinf(logp.max(dim=-1).values).view(B, GK) & torch.isfinite(beam_scores)  # (B, GK)
        fin_scores.append(norm(beam_scores, t).masked_fill(~stuck, NEG_INF))
        fin_offsets.append(offset[beam_group])
        fin_beams.append(beam_index.expand(B, GK))
        fin_cut.append(torch.ones_like(stuck))
        fin_beam = torch.cat(fin_beams, dim=1)
        pool.add(
            images,
            torch.cat(fin_scores, dim=1),
            torch.cat(fin_offsets, dim=1),
            _gather(history, fin_beam),
            torch.full_like(fin_beam, t),
            torch.cat(fin_cut, dim=1),
            None if att_history is None else _gather(att_history, fin_beam),
        )
        if rules.final(t):
            break

        parent, beam_scores, word = torch.cat(parents, 1), torch.cat(scores, 1), torch.cat(words, 1)  # (B, GK)
        rows = (row_base + parent).view(R)  # (R,) flat parent rows
        state = select_rows(state, rows)
        history = _gather(history, parent)
        history[:, :, t] = word
        if att_history is not None:
            att_history = _gather(att_history, parent)
            att_history[:, :, t] = att.index_select(0, rows).view(B, GK, -1)
        tokens = word.view(R)

        # Future scores only fall, and the length penalty is largest at the length limit: an upper bound
        # (plus the best offset a beam can still reach: the early group's once in it, or while a
        # required word can still come among the first EARLY_WORDS; else the middle group's).
        reach = norm(beam_scores, L)
        if G > 1:
            rise = include.any(dim=1, keepdim=True) & (t + 1 < EARLY_WORDS)  # (B, 1)
            reach = reach + torch.where((beam_group == G - 1) | rise, offset[-1], offset[1])
        done = pool.worst_score(images) >= reach.max(dim=1).values  # (B,)
        if bool(done.all()):
            break
        if bool(done.any()):  # drop the finished images' rows from every tensor
            keep = (~done).nonzero().squeeze(1)  # (B',)
            keep_rows = (keep.unsqueeze(1) * GK + beam_index).view(-1)  # (B'*GK,)
            images = keep if images is None else images[keep]
            beam_scores, history = beam_scores[keep], history[keep]
            att_history = None if att_history is None else att_history[keep]
            if G > 1:
                include, required = include[keep], _Required(required.ids[keep], required.valid[keep])
            tokens, state = tokens[keep_rows], select_rows(state, keep_rows)
            memory = select_rows(memory, keep if per_image_memory else keep_rows)
            B, R = keep.numel(), keep.numel() * GK
            row_base = torch.arange(B, device=device).unsqueeze(1) * GK
    return pool.found
