"""Pieces shared by every search: batch-first state handling and the rules for which word may come next."""

from __future__ import annotations

import torch
from torch import Tensor

from capgen.decoding.config import DecodeConfig, TokenIds
from capgen.decoding.rules import token_masks

State = dict[str, Tensor]

NEG_INF = float("-inf")


def select_rows(d: State, index: Tensor) -> State:
    """Reorder / repeat rows of every (batch-first) tensor in a memory or state dict."""
    return {k: v.index_select(0, index) for k, v in d.items()}


def repeat_rows(d: State, times: int) -> State:
    """Each row repeated `times` times consecutively: row b -> rows b*times .. b*times+times-1."""
    return {k: v.repeat_interleave(times, dim=0) for k, v in d.items()}


def expand_rows(model, memory: State, state: State, times: int) -> tuple[State, State]:
    """Memory and state for `times` rows per image (rows b*times .. b*times+times-1). The memory stays
    one row per image when the model reads it that way (CaptionModel.shared_memory): copying an
    image's grid memory for every beam made the step read it `times` times over."""
    return (memory if model.shared_memory else repeat_rows(memory, times)), repeat_rows(state, times)


def _ban_ngrams(ban: Tensor, history: Tensor, length: int, n: int) -> None:
    """In place: True in ban (R, V+1) for every token completing an n-gram already in the row
    (column V is a dummy that absorbs the rows' non-matching n-grams)."""
    if n <= 0 or length < n:  # no complete n-gram yet
        return
    hist = history[:, :length]  # (R, L)
    grams = hist.unfold(1, n, 1)  # (R, L-n+1, n)
    prefix = hist[:, length - (n - 1) :]  # (R, n-1) the current context
    match = (grams[:, :, :-1] == prefix.unsqueeze(1)).all(dim=-1)  # (R, L-n+1); n=1: all True
    ban.scatter_(1, grams[:, :, -1].masked_fill(~match, ban.shape[1] - 1), True)


class Constraints:
    """Which token may come next, per row, at step t (t words emitted so far). Shared by every search.

    - <pad> and <start> never; <unk> only with allow_unk.
    - No caption shorter than min_words (never an empty one): no <end> at t < min_words.
    - No caption ends on a word of TokenIds.bad_endings: no <end> right after one, and none as the
      last word that length_limit allows.
    - At t == length_limit only <end> may come (`final`), so a cut caption pays for ending there.
    - n-gram blocking and, with no_repeat_words, no second use of a content word.
    """

    def __init__(self, ids: TokenIds, cfg: DecodeConfig, vocab_size: int, device: torch.device):
        self.ids, self.cfg = ids, cfg
        self.never, self.bad_end, self.may_repeat = (
            torch.from_numpy(m).to(device)  # (V,) each
            for m in token_masks(ids, cfg, vocab_size)
        )

    def final(self, t: int) -> bool:
        return t == self.cfg.length_limit

    def apply(self, logp: Tensor, t: int, prev: Tensor, history: Tensor) -> Tensor:
        """logp (R, V) model log-probs; prev (R,) the token fed at step t; history (R, >= t) words."""
        end = self.ids.end
        if self.final(t):
            forced = torch.full_like(logp, NEG_INF)
            forced[:, end] = logp[:, end]
            return forced
        # Every rule adds to one mask (column V absorbs what bans nothing): one pass over logp.
        R, V = logp.shape
        ban = torch.zeros(R, V + 1, dtype=torch.bool, device=logp.device)
        _ban_ngrams(ban, history, t, self.cfg.no_repeat_ngram)
        if self.cfg.no_repeat_words and t > 0:  # no second use of a word outside FUNCTION_WORDS
            words = history[:, :t]
            ban.scatter_(1, words.masked_fill(self.may_repeat[words], V), True)
        ban = ban[:, :V] | self.never
        if t < self.cfg.min_words:
            ban[:, end] = True
        else:
            ban[:, end] |= self.bad_end[prev]
        if t == self.cfg.length_limit - 1:  # the last word the limit allows: <end> must be able to follow it
            ban |= self.bad_end
        return logp.masked_fill(ban, NEG_INF)  # (R, V)
