"""`decode`: the one entry point; picks greedy / sampling / beam search and builds Hypotheses."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Collection, Sequence

import torch
from torch import Tensor

from capgen.decoding.beam import Found, beam_search
from capgen.decoding.common import expand_rows, select_rows
from capgen.decoding.config import DecodeConfig, DecodeError, Hypothesis, TokenIds
from capgen.decoding.consensus import rerank, search_config
from capgen.decoding.sampling import sample_search

if TYPE_CHECKING:  # models sit above decoding: the search only calls their step
    from capgen.models.base import CaptionModel


def decode(
    model: CaptionModel,
    pooled: Tensor,
    grid: Tensor,
    ids: TokenIds,
    config: DecodeConfig | None = None,
    include: Sequence[Collection[int] | None] | None = None,
) -> list[list[Hypothesis]]:
    """Caption a batch of images: pooled (B, D), grid (B, N, D) -> per image, up to `n_best`
    hypotheses, best first. `ids` comes from `TokenIds.from_vocab(vocab)`.

    Runs in eval mode under inference_mode (the model's mode is restored). The rules every caller
    gets are in `Constraints`: no <pad>/<start>, no <unk> unless allowed, no empty caption, no
    caption ending on "a"/"the"/"of"..., and a cut caption ranks below finished ones. Beam search
    can return fewer than n_best hypotheses only when blocking leaves fewer possible captions.

    include: per image, word ids of which the caption must contain one (None or empty: no
    constraint), e.g. an object tag's word (capgen.tags.Guide). Greedy and beam search only; greedy
    becomes a beam of 1, which is the same search. A caption without one comes only when blocking
    makes every such word impossible.
    """
    config = config if config is not None else DecodeConfig()
    if not isinstance(config, DecodeConfig):
        raise DecodeError(f"decode: config must be a DecodeConfig, got {type(config).__name__}")
    if not isinstance(ids, TokenIds):
        raise DecodeError(f"decode: ids must be TokenIds (TokenIds.from_vocab(vocab)), got {type(ids).__name__}")
    config.validate()
    ids.check(model.vocab_size)
    asked, config = config, search_config(config)
    required = _include_mask(include, pooled.shape[0], model.vocab_size, config)
    if required is not None and config.method == "greedy":
        config = dataclasses.replace(config, method="beam", beam_size=1)

    # A model without parameters (the ONNX Runtime step, capgen.inference.onnx_step) runs on CPU float32.
    param = next(model.parameters(), None)
    device, dtype = (param.device, param.dtype) if param is not None else (torch.device("cpu"), torch.float32)
    pooled = torch.as_tensor(pooled).to(device=device, dtype=dtype)
    grid = torch.as_tensor(grid).to(device=device, dtype=dtype)
    if pooled.shape[0] == 0:
        return []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            memory = model.init_memory(pooled, grid)
            state = model.init_state(memory)
            if config.method == "beam":
                found = _beam(model, memory, state, ids, config, None if required is None else required.to(device))
            else:
                found = _sample_n(model, memory, state, ids, config)
    finally:
        model.train(was_training)
    return rerank(_hypotheses(found, config.n_best), asked)


def _include_mask(include, B: int, V: int, config: DecodeConfig) -> Tensor | None:
    """Per-image required words -> (B, V) bool, or None when no image has any."""
    if include is None:
        return None
    if len(include) != B:
        raise DecodeError(f"decode: include needs one entry per image ({B}), got {len(include)}")
    mask = torch.zeros(B, V, dtype=torch.bool)
    for b, words in enumerate(include):
        for w in words or ():
            if not 0 <= int(w) < V:
                raise DecodeError(f"decode: required word id {w} is outside the vocabulary (size {V})")
            mask[b, int(w)] = True
    if not mask.any():
        return None
    if config.method == "sample":
        raise DecodeError("decode: required words (tag guidance) work with greedy and beam search, not sampling")
    return mask


def _beam(model, memory, state, ids: TokenIds, config: DecodeConfig, required: Tensor | None) -> Found:
    """Beam search, with the images that must name a word decoded apart from the others: those need
    three beam groups (see beam_search), and in one batch every image would pay for them. Images
    are independent in the search, so the captions are the same either way."""
    has = None if required is None else required.any(dim=1)  # (B,)
    if has is None or bool(has.all()):
        return beam_search(model, memory, state, ids, config, required)
    guided, free = has.nonzero().squeeze(1), (~has).nonzero().squeeze(1)
    return _combine(
        required.shape[0],
        [
            (
                guided,
                beam_search(
                    model, select_rows(memory, guided), select_rows(state, guided), ids, config, required[guided]
                ),
            ),
            (free, beam_search(model, select_rows(memory, free), select_rows(state, free), ids, config)),
        ],
    )


def _combine(B: int, parts: list[tuple[Tensor, Found]]) -> Found:
    """Found of row subsets (their image indices, Found) -> one Found of B images."""

    def field(name: str) -> Tensor | None:
        xs = [getattr(f, name) for _, f in parts]
        if any(x is None for x in xs):
            return None
        out = xs[0].new_empty((B, *xs[0].shape[1:]))
        for (rows, _), x in zip(parts, xs):
            out[rows] = x
        return out

    return Found(*(field(f.name) for f in dataclasses.fields(Found)))


def _sample_n(model, memory, state, ids: TokenIds, config: DecodeConfig) -> Found:
    """Greedy, or n_best independent samples per image (rows b*n .. b*n+n-1), sorted by score."""
    B, n = next(iter(memory.values())).shape[0], config.n_best
    generator = None
    if config.method == "sample" and config.seed is not None:
        device = next(iter(memory.values())).device
        generator = torch.Generator(device=device).manual_seed(config.seed)
    if n > 1:
        memory, state = expand_rows(model, memory, state, n)
    f = sample_search(model, memory, state, ids, config, generator)
    scores, order = f.scores.view(B, n).sort(dim=1, descending=True)  # (B, n)
    rows = torch.arange(B, device=order.device).unsqueeze(1)

    def per_image(x: Tensor | None) -> Tensor | None:
        return None if x is None else x.view(B, n, *x.shape[2:])[rows, order]  # (B, n, ...)

    return Found(per_image(f.words), per_image(f.lengths), scores, per_image(f.truncated), per_image(f.attention))


def _hypotheses(found: Found, n_best: int) -> list[list[Hypothesis]]:
    """(B, M, ...) tensors -> per image, the first n_best finite-score hypotheses."""
    words, lengths = found.words.cpu(), found.lengths.cpu().tolist()
    scores, truncated = found.scores.cpu().tolist(), found.truncated.cpu().tolist()
    attention = None if found.attention is None else found.attention.float().cpu().numpy()
    out = []
    for b in range(words.shape[0]):
        hyps = []
        for m in range(min(n_best, words.shape[1])):
            if not math.isfinite(scores[b][m]):
                continue
            n = lengths[b][m]
            hyps.append(
                Hypothesis(
                    tokens=words[b, m, :n].tolist(),
                    score=float(scores[b][m]),
                    attention=None if attention is None else attention[b, m, :n].copy(),
                    truncated=bool(truncated[b][m]),
                )
            )
        out.append(hyps)
    return out
