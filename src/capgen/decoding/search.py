"""`search`: the one decoding entry point over a `Step` (numpy or torch, capgen.decoding.steps). It
checks the settings, picks greedy / sampling / beam search, decodes guided images apart from the
others, and builds Hypotheses. `capgen.decoding.decode` runs it on a torch model (torch_step.py);
the torch-free runtime runs it on its ONNX Runtime graphs."""

from __future__ import annotations

import dataclasses
import math
from typing import Collection, Sequence

import numpy as np

from capgen.decoding.beam import Found, beam_search, gather
from capgen.decoding.config import DecodeConfig, DecodeError, Hypothesis, TokenIds
from capgen.decoding.consensus import Agreement, rerank, search_config
from capgen.decoding.sampling import Uniform, sample_search
from capgen.decoding.steps import Rows, Step, expand


def search(
    step: Step,
    memory: Rows,
    state: Rows,
    ids: TokenIds,
    config: DecodeConfig | None = None,
    include: Sequence[Collection[int] | None] | None = None,
    uniform: Uniform | None = None,
    references: Sequence[Agreement | None] | None = None,
) -> list[list[Hypothesis]]:
    """Caption a batch of images whose memory and state (one row per image) the step's init gave ->
    per image, up to `n_best` hypotheses, best first.

    The rules every caller gets are in `Rules`: no <pad>/<start>, no <unk> unless allowed, no empty
    caption, no caption ending on "a"/"the"/"of"..., and a cut caption ranks below finished ones.
    Beam search can return fewer than n_best hypotheses only when blocking leaves fewer possible captions.

    include: per image, word ids of which the caption must contain one (None or empty: no
    constraint), e.g. an object tag's word (capgen.tags.Guide). Greedy and beam search only; greedy
    becomes a beam of 1, which is the same search. A caption without one comes only when blocking
    makes every such word impossible.
    uniform: sampling's random source (default: numpy's, seeded by config.seed).
    references: with config.consensus, per image how its candidates agree with the captions of its
    nearest training photos (capgen.tags.neighbours), which ranks them instead of their agreement
    with each other; None for an image keeps the model's order.
    """
    config = check(config, ids, step.vocab_size)
    B = next(iter(memory.values())).shape[0]
    asked, config = config, search_config(config)
    required = _include_mask(include, B, step.vocab_size, config)
    if required is not None and config.method == "greedy":
        config = dataclasses.replace(config, method="beam", beam_size=1)
    if B == 0:
        return []
    if config.method == "beam":
        found = _beam(step, memory, state, ids, config, required)
    else:
        if uniform is None:
            uniform = np.random.default_rng(config.seed).random
        found = _sample_n(step, memory, state, ids, config, uniform)
    return rerank(hypotheses(found, config.n_best), asked, references)


def check(config: DecodeConfig | None, ids: TokenIds, vocab_size: int) -> DecodeConfig:
    config = config if config is not None else DecodeConfig()
    if not isinstance(config, DecodeConfig):
        raise DecodeError(f"decode: config must be a DecodeConfig, got {type(config).__name__}")
    if not isinstance(ids, TokenIds):
        raise DecodeError(f"decode: ids must be TokenIds (TokenIds.from_vocab(vocab)), got {type(ids).__name__}")
    config.validate()
    ids.check(vocab_size)
    return config


def _include_mask(include, B: int, V: int, config: DecodeConfig) -> np.ndarray | None:
    """Per-image required words -> (B, V) bool, or None when no image has any."""
    if include is None:
        return None
    if len(include) != B:
        raise DecodeError(f"decode: include needs one entry per image ({B}), got {len(include)}")
    mask = np.zeros((B, V), dtype=bool)
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


def _beam(step: Step, memory: Rows, state: Rows, ids: TokenIds, config: DecodeConfig, required) -> Found:
    """Beam search, with the images that must name a word decoded apart from the others: those need
    three beam groups (see beam_search), and in one batch every image would pay for them. Images
    are independent in the search, so the captions are the same either way."""
    has = None if required is None else required.any(axis=1)  # (B,)
    if has is None or has.all():
        return beam_search(step, memory, state, ids, config, required)
    guided, free = np.flatnonzero(has), np.flatnonzero(~has)
    parts = [
        (rows, beam_search(step, step.rows(memory, rows), step.rows(state, rows), ids, config, include))
        for rows, include in ((guided, required[guided]), (free, None))
    ]
    return _combine(len(has), parts)


def _combine(B: int, parts: list[tuple[np.ndarray, Found]]) -> Found:
    """Found of row subsets (their image indices, Found) -> one Found of B images."""

    def field(name: str) -> np.ndarray | None:
        xs = [getattr(f, name) for _, f in parts]
        if any(x is None for x in xs):
            return None
        out = np.empty((B, *xs[0].shape[1:]), dtype=xs[0].dtype)
        for (rows, _), x in zip(parts, xs):
            out[rows] = x
        return out

    return Found(*(field(f.name) for f in dataclasses.fields(Found)))


def _sample_n(step: Step, memory: Rows, state: Rows, ids: TokenIds, config: DecodeConfig, uniform) -> Found:
    """Greedy, or n_best independent samples per image (rows b*n .. b*n+n-1), sorted by score."""
    B, n = next(iter(memory.values())).shape[0], config.n_best
    memory, state = expand(step, memory, state, B, n)
    f = sample_search(step, memory, state, ids, config, uniform)
    scores = f.scores.reshape(B, n)
    order = np.argsort(-scores, axis=1, kind="stable")  # (B, n)

    def per_image(x: np.ndarray | None) -> np.ndarray | None:
        return None if x is None else gather(x.reshape(B, n, *x.shape[2:]), order)  # (B, n, ...)

    return Found(
        per_image(f.words), per_image(f.lengths), gather(scores, order), per_image(f.truncated), per_image(f.attention)
    )


def hypotheses(found: Found, n_best: int) -> list[list[Hypothesis]]:
    """(B, M, ...) arrays -> per image, the first n_best finite-score hypotheses."""
    out = []
    for b in range(found.words.shape[0]):
        hyps = []
        for m in range(min(n_best, found.words.shape[1])):
            score = float(found.scores[b, m])
            if not math.isfinite(score):
                continue
            n = int(found.lengths[b, m])
            hyps.append(
                Hypothesis(
                    tokens=found.words[b, m, :n].tolist(),
                    score=score,
                    attention=None if found.attention is None else found.attention[b, m, :n].copy(),
                    truncated=bool(found.truncated[b, m]),
                )
            )
        out.append(hyps)
    return out
