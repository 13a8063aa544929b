"""The step protocol every search runs over, and its numpy backend.

A search sees a decoder only through a `Step`: one call per word for every row (log-probs as a
numpy array), and a way to pick rows of its memory and state (beams reordered, images dropped).
The state and memory themselves are the backend's own (numpy arrays for ONNX Runtime, torch tensors
for a torch model, capgen.decoding.torch_step), so they never cross between libraries.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import numpy as np

Rows = dict[str, Any]  # a memory or state: name -> batch-first array of the backend


class Step(Protocol):
    vocab_size: int
    # The step reads one memory row per image however many rows of state it has (beams).
    shared_memory: bool

    def __call__(self, tokens: np.ndarray, state: Rows, memory: Rows) -> tuple[np.ndarray, Rows, np.ndarray | None]:
        """tokens (R,) int64 -> log-probs (R, V) float32, the new state, attention (R, N) or None."""

    def rows(self, d: Rows, index: np.ndarray) -> Rows:
        """The rows `index` (int64, repeats allowed) of every array in `d`."""


class ArrayStep:
    """A numpy step: `fn(tokens, state, memory) -> (log-probs, new state)` over dicts of arrays
    (capgen.runtime.graphs.DecoderGraphs.step)."""

    def __init__(
        self, fn: Callable[[np.ndarray, Rows, Rows], tuple[np.ndarray, Rows]], vocab_size: int, shared_memory: bool
    ):
        self.fn, self.vocab_size, self.shared_memory = fn, vocab_size, shared_memory

    def __call__(self, tokens: np.ndarray, state: Rows, memory: Rows) -> tuple[np.ndarray, Rows, None]:
        logp, state = self.fn(tokens, state, memory)
        return logp, state, None

    def rows(self, d: Rows, index: np.ndarray) -> Rows:
        return {k: v[index] for k, v in d.items()}


def repeated(B: int, times: int) -> np.ndarray:
    """Row index that repeats each of B rows `times` times consecutively (b -> b*times .. b*times+times-1)."""
    return np.repeat(np.arange(B), times)


def expand(step: Step, memory: Rows, state: Rows, B: int, times: int) -> tuple[Rows, Rows]:
    """Memory and state for `times` rows per image. The memory stays one row per image when the step
    reads it that way: copying an image's grid memory for every beam made the step read it `times`
    times over."""
    if times == 1:
        return memory, state
    index = repeated(B, times)
    return (memory if step.shared_memory else step.rows(memory, index)), step.rows(state, index)
