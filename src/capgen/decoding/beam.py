"""Beam search over images x beams at once (B*K rows), with per-image pools of finished captions."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from capgen.decoding.common import NEG_INF, Constraints, State, repeat_rows, select_rows
from capgen.decoding.config import DecodeConfig, TokenIds
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
    """The K best finished captions of each image, best first: scores are length-normalised."""

    def __init__(self, B: int, K: int, L: int, pad: int, device: torch.device):
        self.found = Found(torch.full((B, K, L), pad, dtype=torch.long, device=device),
                           torch.zeros(B, K, dtype=torch.long, device=device),
                           torch.full((B, K), NEG_INF, device=device),
                           torch.zeros(B, K, dtype=torch.bool, device=device), None)

    @property
    def worst_score(self) -> Tensor:
        return self.found.scores[:, -1]                                   # (B,)

    def add(self, scores: Tensor, words: Tensor, lengths: Tensor, truncated: Tensor,
            attention: Tensor | None) -> None:
        """Merge candidates (B, C) (-inf = none) and keep the K best per image."""
        f = self.found
        K = f.scores.shape[1]
        f.scores, idx = torch.cat([f.scores, scores], dim=1).topk(K, dim=1)  # (B, K)
        f.words = _gather(torch.cat([f.words, words], dim=1), idx)
        f.lengths = torch.cat([f.lengths, lengths], dim=1).gather(1, idx)
        f.truncated = torch.cat([f.truncated, truncated], dim=1).gather(1, idx)
        if attention is not None:
            if f.attention is None:
                f.attention = attention.new_zeros(*f.words.shape, attention.shape[-1])
            f.attention = _gather(torch.cat([f.attention, attention], dim=1), idx)


def _gather(x: Tensor, idx: Tensor) -> Tensor:
    """x (B, C, ...), idx (B, K) -> (B, K, ...): per-image selection of entries."""
    return x[torch.arange(x.shape[0], device=x.device).unsqueeze(1), idx]


def beam_search(model: CaptionModel, memory: State, state: State, ids: TokenIds, cfg: DecodeConfig) -> Found:
    """K = beam_size captions per image, best first.

    Alive beams are ranked by raw log-prob sums; finished captions by the length-normalised score.
    A <end> candidate finishes a caption only if it ranks among the image's K best candidates
    (so beam_size 1 is exactly greedy). An image stops once it has K finished captions that no
    alive beam can beat. Beams still alive after max_len words get one last step where only <end>
    may come (Constraints), so every caption ends and a cut one pays for it.
    """
    B, K, L = next(iter(memory.values())).shape[0], cfg.beam_size, cfg.max_len
    device = next(iter(memory.values())).device
    memory, state = repeat_rows(memory, K), repeat_rows(state, K)         # rows b*K .. b*K+K-1
    R = B * K
    rules = Constraints(ids, cfg, model.vocab_size, device)

    def norm(score: Tensor, length: int) -> Tensor:
        return score / ((5.0 + length) / 6.0) ** cfg.length_penalty

    tokens = torch.full((R,), ids.start, dtype=torch.long, device=device)
    # The K beams start identical; only the first may expand or it would be chosen K times.
    beam_scores = torch.full((B, K), NEG_INF, device=device)
    beam_scores[:, 0] = 0.0
    history = torch.full((B, K, L), ids.pad, dtype=torch.long, device=device)  # words of each beam
    att_history: Tensor | None = None                                      # (B, K, L, N)
    pool = _Pool(B, K, L, ids.pad, device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    rank = torch.arange(2 * K, device=device)                               # (2K,)
    row_offset = (torch.arange(B, device=device) * K).unsqueeze(1)          # (B, 1)
    no = torch.zeros(B, K, dtype=torch.bool, device=device)
    for t in range(L + 1):
        raw, state, att = model.step(tokens, state, memory)               # (R, V), state, (R, N)
        logp = rules.apply(raw, t, tokens, history.view(R, L))
        V = logp.shape[-1]
        if cfg.return_attention and att is not None and att_history is None:
            att_history = att.new_zeros(B, K, L, att.shape[-1])

        cand = (beam_scores.view(R, 1) + logp).view(B, K * V)             # (B, K*V)
        # 2K candidates always hold K that are not <end>: each beam has only one <end>.
        top_scores, top_idx = cand.topk(2 * K, dim=1)                     # (B, 2K)
        top_beam, top_tok = top_idx // V, top_idx % V                     # (B, 2K)
        is_end = top_tok == ids.end

        # Finished now: <end> among the K best candidates, and beams with every token blocked.
        ended = is_end[:, :K] & torch.isfinite(top_scores[:, :K]) & ~done.unsqueeze(1)  # (B, K)
        stuck = (torch.isinf(logp.max(dim=-1).values).view(B, K) & torch.isfinite(beam_scores)
                 & ~done.unsqueeze(1))                                     # (B, K)
        end_beam = top_beam[:, :K]
        # At the forced last step a caption is cut when the model itself would have gone on.
        cut = (raw.argmax(dim=-1) != ids.end).view(B, K).gather(1, end_beam) if rules.final(t) else no
        fin_scores = torch.cat([torch.where(ended, norm(top_scores[:, :K], t), NEG_INF),
                                torch.where(stuck, norm(beam_scores, t), NEG_INF)], dim=1)  # (B, 2K)
        fin_beams = torch.cat([end_beam, torch.arange(K, device=device).expand(B, K)], dim=1)
        pool.add(fin_scores, _gather(history, fin_beams), torch.full_like(fin_beams, t),
                 torch.cat([cut, ~no], dim=1), None if att_history is None else _gather(att_history, fin_beams))
        if rules.final(t):
            break

        # Alive: the K best candidates that are not <end> (stable order by rank).
        order = (rank + 2 * K * is_end.long()).argsort(dim=1)[:, :K]      # (B, K)
        parent = top_beam.gather(1, order)                                 # (B, K)
        beam_scores = top_scores.gather(1, order)                          # (B, K)
        word = top_tok.gather(1, order)                                    # (B, K)
        rows = (row_offset + parent).view(R)                               # (R,) flat parent rows
        state = select_rows(state, rows)
        history = _gather(history, parent)
        history[:, :, t] = word
        if att_history is not None:
            att_history = _gather(att_history, parent)
            att_history[:, :, t] = att.index_select(0, rows).view(B, K, -1)
        tokens = word.view(R)

        # Future scores only fall, and the length penalty is largest at max_len: an upper bound.
        best_possible = norm(beam_scores.max(dim=1).values, L)             # (B,)
        done = done | (pool.worst_score >= best_possible)
        if bool(done.all()):
            break
    return pool.found
