"""`decode`: the one search (search.py) on a torch captioning model. The model's memory and state stay
torch tensors on its device; each step hands the search its log-probs as a numpy array."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Collection, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from capgen.decoding.config import DecodeConfig, Hypothesis, TokenIds
from capgen.decoding.score import caption_scores
from capgen.decoding.search import check, search
from capgen.decoding.steps import Rows

if TYPE_CHECKING:  # models sit above decoding: the search only calls their step
    from capgen.models.base import CaptionModel


class TorchStep:
    """A CaptionModel's `step` behind the step protocol (capgen.decoding.steps.Step)."""

    def __init__(self, model: CaptionModel, device: torch.device, want_attention: bool):
        self.model, self.device, self.want_attention = model, device, want_attention
        self.vocab_size, self.shared_memory = model.vocab_size, bool(model.shared_memory)

    def __call__(self, tokens: np.ndarray, state: Rows, memory: Rows) -> tuple[np.ndarray, Rows, np.ndarray | None]:
        logp, state, att = self.model.step(torch.from_numpy(tokens).to(self.device), state, memory)
        att = att.float().cpu().numpy() if self.want_attention and att is not None else None
        return logp.float().cpu().numpy(), state, att

    def rows(self, d: Rows, index: np.ndarray) -> Rows:
        index = torch.from_numpy(np.ascontiguousarray(index, dtype=np.int64)).to(self.device)
        return {k: v.index_select(0, index) for k, v in d.items()}


def decode(
    model: CaptionModel,
    pooled: Tensor,
    grid: Tensor,
    ids: TokenIds,
    config: DecodeConfig | None = None,
    include: Sequence[Collection[int] | None] | None = None,
    references=None,
) -> list[list[Hypothesis]]:
    """Caption a batch of images: pooled (B, D), grid (B, N, D) -> per image, up to `n_best`
    hypotheses, best first (capgen.decoding.search.search says what every caption obeys, and what
    `include` and `references` do). `ids` comes from `TokenIds.from_vocab(vocab)`.

    Runs in eval mode under inference_mode (the model's mode is restored). Sampling draws from
    torch's generator: seeded by config.seed, else the global one, so a training run's samples
    follow its checkpointed random state.
    """
    config = check(config, ids, model.vocab_size)
    device, pooled, grid = _on_device(model, pooled, grid)
    generator = torch.Generator(device=device).manual_seed(config.seed) if config.seed is not None else None

    def uniform(n: int) -> np.ndarray:
        return torch.rand(n, generator=generator, device=device, dtype=torch.float64).cpu().numpy()

    with _started(model, pooled, grid) as (memory, state):
        step = TorchStep(model, device, config.return_attention)
        return search(step, memory, state, ids, config, include, uniform, references)


def score(model: CaptionModel, pooled: Tensor, grid: Tensor, ids: TokenIds, per_image) -> list:
    """Images' features (B, D), (B, N, D) and per image word-id captions -> per image, each caption's
    mean log-probability per word under `model` (capgen.decoding.score.caption_scores), in eval mode."""
    device, pooled, grid = _on_device(model, pooled, grid)
    with _started(model, pooled, grid) as (memory, state):
        return caption_scores(TorchStep(model, device, False), memory, state, ids, per_image)


@contextmanager
def _started(model: CaptionModel, pooled: Tensor, grid: Tensor) -> Iterator[tuple[Rows, Rows]]:
    """The model's memory and initial state for the features, in eval mode under inference_mode
    (the model's mode is restored after)."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            memory = model.init_memory(pooled, grid)
            yield memory, model.init_state(memory)
    finally:
        model.train(was_training)


def _on_device(model: CaptionModel, pooled, grid) -> tuple[torch.device, Tensor, Tensor]:
    # A model without parameters (the ONNX Runtime step, capgen.inference.onnx_step) runs on CPU float32.
    param = next(model.parameters(), None)
    device, dtype = (param.device, param.dtype) if param is not None else (torch.device("cpu"), torch.float32)
    return (
        device,
        torch.as_tensor(pooled).to(device=device, dtype=dtype),
        torch.as_tensor(grid).to(device=device, dtype=dtype),
    )
