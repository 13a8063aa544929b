"""`decode`: the one entry point; picks greedy / sampling / beam search and builds Hypotheses."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from capgen.decoding.beam import beam_search
from capgen.decoding.common import repeat_rows
from capgen.decoding.config import DecodeConfig, DecodeError, Hypothesis
from capgen.decoding.sampling import sample_search
from capgen.models.base import PAD_ID, CaptionModel


def decode(model: CaptionModel, pooled: Tensor, grid: Tensor, start_id: int, end_id: int,
           config: DecodeConfig | None = None) -> list[list[Hypothesis]]:
    """Caption a batch of images: pooled (B, D), grid (B, N, D) -> per image, up to `n_best`
    hypotheses, best first.

    Runs in eval mode under inference_mode (the model's mode is restored). <pad> and <start> are
    never emitted. Beam search can return fewer than n_best hypotheses only when blocking leaves
    fewer possible captions.
    """
    config = config if config is not None else DecodeConfig()
    if not isinstance(config, DecodeConfig):
        raise DecodeError(f"decode: config must be a DecodeConfig, got {type(config).__name__}")
    config.validate()
    for name, token in (("start_id", start_id), ("end_id", end_id)):
        if not 0 <= int(token) < model.vocab_size:
            raise DecodeError(f"decode: {name} {token} is outside the vocabulary (size {model.vocab_size})")
    if start_id == end_id or PAD_ID in (start_id, end_id):
        raise DecodeError(f"decode: start_id ({start_id}), end_id ({end_id}) and <pad> ({PAD_ID}) must differ")

    param = next(model.parameters())
    pooled = torch.as_tensor(pooled).to(device=param.device, dtype=param.dtype)
    grid = torch.as_tensor(grid).to(device=param.device, dtype=param.dtype)
    if pooled.shape[0] == 0:
        return []
    banned = sorted({PAD_ID, start_id})
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            memory = model.init_memory(pooled, grid)
            state = model.init_state(memory)
            if config.method == "beam":
                words, lengths, scores, attention = beam_search(
                    model, memory, state, start_id, end_id, banned, config)
            else:
                words, lengths, scores, attention = _sample_n(model, memory, state, start_id, end_id,
                                                              banned, config)
    finally:
        model.train(was_training)
    return _hypotheses(words, lengths, scores, attention, config.n_best)


def _sample_n(model, memory, state, start_id, end_id, banned, config):
    """Greedy, or n_best independent samples per image (rows b*n .. b*n+n-1), sorted by score."""
    B, n = next(iter(memory.values())).shape[0], config.n_best
    generator = None
    if config.method == "sample" and config.seed is not None:
        device = next(iter(memory.values())).device
        generator = torch.Generator(device=device).manual_seed(config.seed)
    if n > 1:
        memory, state = repeat_rows(memory, n), repeat_rows(state, n)
    words, lengths, scores, attention = sample_search(model, memory, state, start_id, end_id, banned,
                                                      config, generator)
    scores, order = scores.view(B, n).sort(dim=1, descending=True)        # (B, n)
    rows = torch.arange(B, device=order.device).unsqueeze(1)

    def per_image(x: Tensor) -> Tensor:
        return x.view(B, n, *x.shape[1:])[rows, order]                    # (B, n, ...)

    return (per_image(words), per_image(lengths), scores,
            None if attention is None else per_image(attention))


def _hypotheses(words: Tensor, lengths: Tensor, scores: Tensor, attention: Tensor | None,
                n_best: int) -> list[list[Hypothesis]]:
    """(B, M, ...) tensors -> per image, the first n_best finite-score hypotheses."""
    words, lengths, scores = words.cpu(), lengths.cpu().tolist(), scores.cpu().tolist()
    attention = None if attention is None else attention.float().cpu().numpy()
    out = []
    for b in range(words.shape[0]):
        hyps = []
        for m in range(min(n_best, words.shape[1])):
            if not math.isfinite(scores[b][m]):
                continue
            n = lengths[b][m]
            hyps.append(Hypothesis(tokens=words[b, m, :n].tolist(), score=float(scores[b][m]),
                                   attention=None if attention is None else attention[b, m, :n].copy()))
        out.append(hyps)
    return out
