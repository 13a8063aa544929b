"""Beam search over images x beams at once (B*K rows), with per-image pools of finished captions."""

from __future__ import annotations

import torch
from torch import Tensor

from capgen.decoding.common import NEG_INF, State, block_ngrams, mask_tokens, repeat_rows, select_rows
from capgen.decoding.config import DecodeConfig
from capgen.models.base import PAD_ID, CaptionModel


class _Pool:
    """The K best finished captions of each image, best first: scores are length-normalised."""

    def __init__(self, B: int, K: int, L: int, device: torch.device):
        self.scores = torch.full((B, K), NEG_INF, device=device)          # (B, K)
        self.words = torch.full((B, K, L), PAD_ID, dtype=torch.long, device=device)  # (B, K, L)
        self.lengths = torch.zeros(B, K, dtype=torch.long, device=device)  # (B, K)
        self.attention: Tensor | None = None                              # (B, K, L, N)

    def add(self, scores: Tensor, words: Tensor, lengths: Tensor, attention: Tensor | None) -> None:
        """Merge candidates (B, C) (-inf = none) and keep the K best per image."""
        K = self.scores.shape[1]
        all_scores = torch.cat([self.scores, scores], dim=1)              # (B, K+C)
        self.scores, idx = all_scores.topk(K, dim=1)                      # (B, K)
        self.words = _gather(torch.cat([self.words, words], dim=1), idx)
        self.lengths = torch.cat([self.lengths, lengths], dim=1).gather(1, idx)
        if attention is not None:
            if self.attention is None:
                self.attention = attention.new_zeros(*self.words.shape, attention.shape[-1])
            self.attention = _gather(torch.cat([self.attention, attention], dim=1), idx)


def _gather(x: Tensor, idx: Tensor) -> Tensor:
    """x (B, C, ...), idx (B, K) -> (B, K, ...): per-image selection of entries."""
    return x[torch.arange(x.shape[0], device=x.device).unsqueeze(1), idx]


def beam_search(model: CaptionModel, memory: State, state: State, start_id: int, end_id: int,
                banned: list[int], cfg: DecodeConfig) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Returns words (B, K, L), lengths (B, K), scores (B, K) (-inf = no hypothesis), attention
    (B, K, L, N) or None; best first per image.

    Alive beams are ranked by raw log-prob sums; finished captions by the length-normalised score.
    A <end> candidate finishes a caption only if it ranks among the image's K best candidates
    (so beam_size 1 is exactly greedy). An image stops once it has K finished captions that no
    alive beam can beat; a caption still alive after max_len words is kept as is.
    """
    B, K, L = next(iter(memory.values())).shape[0], cfg.beam_size, cfg.max_len
    device = next(iter(memory.values())).device
    memory, state = repeat_rows(memory, K), repeat_rows(state, K)         # rows b*K .. b*K+K-1
    R = B * K

    def norm(score: Tensor, length: int) -> Tensor:
        return score / ((5.0 + length) / 6.0) ** cfg.length_penalty

    tokens = torch.full((R,), start_id, dtype=torch.long, device=device)
    # The K beams start identical; only the first may expand or it would be chosen K times.
    beam_scores = torch.full((B, K), NEG_INF, device=device)
    beam_scores[:, 0] = 0.0
    history = torch.full((B, K, L), PAD_ID, dtype=torch.long, device=device)  # words of each beam
    att_history: Tensor | None = None                                      # (B, K, L, N)
    pool = _Pool(B, K, L, device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    rank = torch.arange(2 * K, device=device)                               # (2K,)
    row_offset = (torch.arange(B, device=device) * K).unsqueeze(1)          # (B, 1)
    for t in range(L):
        logp, state, att = model.step(tokens, state, memory)              # (R, V), state, (R, N)
        logp = block_ngrams(mask_tokens(logp, banned), history.view(R, L), t, cfg.no_repeat_ngram)
        V = logp.shape[-1]
        if cfg.return_attention and att is not None and att_history is None:
            att_history = att.new_zeros(B, K, L, att.shape[-1])

        cand = (beam_scores.view(R, 1) + logp).view(B, K * V)             # (B, K*V)
        # 2K candidates always hold K that are not <end>: each beam has only one <end>.
        top_scores, top_idx = cand.topk(2 * K, dim=1)                     # (B, 2K)
        top_beam, top_tok = top_idx // V, top_idx % V                     # (B, 2K)
        is_end = top_tok == end_id

        # Finished now: <end> among the K best candidates, and beams with every token blocked.
        ended = is_end[:, :K] & torch.isfinite(top_scores[:, :K]) & ~done.unsqueeze(1)  # (B, K)
        stuck = (torch.isinf(logp.max(dim=-1).values).view(B, K) & torch.isfinite(beam_scores)
                 & ~done.unsqueeze(1))                                     # (B, K)
        end_beam = top_beam[:, :K]
        fin_scores = torch.cat([torch.where(ended, norm(top_scores[:, :K], t), NEG_INF),
                                torch.where(stuck, norm(beam_scores, t), NEG_INF)], dim=1)  # (B, 2K)
        fin_beams = torch.cat([end_beam, torch.arange(K, device=device).expand(B, K)], dim=1)
        pool.add(fin_scores, _gather(history, fin_beams), torch.full_like(fin_beams, t),
                 None if att_history is None else _gather(att_history, fin_beams))

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
        done = done | (pool.scores[:, -1] >= best_possible)
        if bool(done.all()):
            break
    else:
        keep = torch.isfinite(beam_scores) & ~done.unsqueeze(1)            # (B, K) cut at max_len
        pool.add(torch.where(keep, norm(beam_scores, L), NEG_INF), history,
                 torch.full_like(parent, L), att_history)
    return pool.words, pool.lengths, pool.scores, pool.attention
