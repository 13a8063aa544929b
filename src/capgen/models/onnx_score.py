"""A decoder that only scores, as one ONNX graph: given captions, each word's log-probability
(teacher forcing, the model's training forward), for the scene scorer (capgen.runtime.scene_scorer).

The step graphs of capgen.models.onnx serve the search, one word per call: scoring a shortlist
through them costs a call per word (about 12 ms a photo on one core). Scoring needs no search, so
the whole caption goes through in one call (about 6 ms): the causal mask the model trains with
keeps each word from seeing the ones after it, so the log-probabilities are the steps' own.

    pooled (I, D), grid (I, N, D), word_probs (I, W)   the images and their tag word probabilities
    captions (R, T) int64                              <start> w1 .. wn <end>, then anything
    image_index (R,) int64                             each caption's image
    -> token_logp (R, T-1)                             log P(captions[:, t+1] | captions[:, :t+1])
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from capgen.errors import ExportError
from capgen.models.base import CaptionModel
from capgen.models.onnx import TOLERANCE, example_inputs, export_module
from capgen.runtime.graphs import SCORE_INPUTS as INPUTS
from capgen.runtime.graphs import SCORE_OUTPUT as OUTPUT
from capgen.runtime.graphs import ScoreGraph

# Largest |token log-prob| difference accepted for a graph whose MatMul weights are int8 (7-bit
# range): 0.04-0.07 measured on the bundled scene scorer, whose choices it changed on 1 of 2,267
# photos (BENCHMARKS.md); a graph of another model would differ by whole nats.
INT8_TOLERANCE = 0.25


class _Score(nn.Module):
    def __init__(self, model: CaptionModel):
        super().__init__()
        self.model = model

    def forward(self, pooled: Tensor, grid: Tensor, word_probs: Tensor, captions: Tensor, index: Tensor) -> Tensor:
        logits = self.model(pooled, grid, captions, image_index=index, word_probs=word_probs)["logits"]
        return torch.log_softmax(logits, -1).gather(2, captions[:, 1:].unsqueeze(-1)).squeeze(-1)


def _example_captions(model: CaptionModel, rows: int, length: int, images: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    captions = torch.randint(0, model.vocab_size, (rows, length), generator=g)
    return captions, torch.arange(rows) % images


def export_score_graph(model: CaptionModel, path: Path) -> None:
    """Write the scoring graph of a tag-reading model (its word probabilities are an input, so the
    classifier head stays out of the graph); ExportError for a model that reads no tags
    (example_inputs says so)."""
    model.eval()
    example = (*example_inputs(model, batch=2, word_probs=True), *_example_captions(model, 3, 6, 2, 0))
    axes = {
        **{name: {0: "images"} for name in INPUTS[:3]},
        "captions": {0: "rows", 1: "length"},
        "image_index": {0: "rows"},
        OUTPUT: {0: "rows", 1: "length_1"},
    }
    export_module(_Score(model), example, path, list(INPUTS), [OUTPUT], axes, model.name)


def verify_score_graph(model: CaptionModel, path: Path, tolerance: float = TOLERANCE) -> float:
    """Max |log-prob| difference ONNX Runtime vs torch on random features and captions of another
    shape than the export's (3 images, 5 captions of 9 tokens); ExportError when above `tolerance`."""
    inputs = (*example_inputs(model, batch=3, word_probs=True), *_example_captions(model, 5, 9, 3, 1))
    with torch.inference_mode():
        want = _Score(model.eval())(*inputs).numpy()
    got = ScoreGraph(path).token_logp(*(v.numpy() for v in inputs))
    worst = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
    if not worst < tolerance:
        raise ExportError(
            f"model {model.name}: the ONNX scoring graph differs from torch by {worst:.3g} "
            f"(expected < {tolerance}), so the runtime cannot express this model"
        )
    return worst
