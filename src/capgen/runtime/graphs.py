"""The decoder's two exported ONNX graphs behind numpy calls: init (pooled, grid -> memory, state) and
one step (tokens, state, memory -> log-probs, new state). The one owner of their input and output
names, used by the torch-free Runtime, the Captioner's ONNX Runtime decoder (inference/onnx_step)
and the check of an export against torch (models/onnx)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from capgen.ort import open_session

Arrays = dict[str, np.ndarray]


class DecoderGraphs:
    """Sessions of an init and a step graph whose memory and state travel under `memory.KEY` and
    `state.KEY` (`new_state.KEY` out of the step). ExportError naming a file ONNX Runtime cannot load."""

    def __init__(
        self, init_path: Path, step_path: Path, memory_keys: Sequence[str], state_keys: Sequence[str], threads: int = 1
    ):
        self.init_session, self.step_session = open_session(init_path, threads), open_session(step_path, threads)
        self.memory_keys, self.state_keys = list(memory_keys), list(state_keys)
        # The exporter drops inputs a graph never reads (show_tell's step ignores its memory).
        self.init_inputs = [i.name for i in self.init_session.get_inputs()]
        self.step_inputs = {i.name for i in self.step_session.get_inputs()}
        self.init_outputs = [o.name for o in self.init_session.get_outputs()]
        self._step_outputs = ["logp"] + [f"new_state.{k}" for k in self.state_keys]

    def start(
        self, pooled: np.ndarray, grid: np.ndarray, word_probs: np.ndarray | None = None
    ) -> tuple[Arrays, Arrays]:
        """Features (B, D), (B, N, D) -> the memory and the initial state, one row per image;
        word_probs (B, W): the tag word probabilities of an init graph that takes them."""
        features = {"pooled": pooled, "grid": grid, "word_probs": word_probs}
        values = dict(zip(self.init_outputs, self.init_session.run(None, {k: features[k] for k in self.init_inputs})))
        return (
            {k: values[f"memory.{k}"] for k in self.memory_keys},
            {k: values[f"state.{k}"] for k in self.state_keys},
        )

    def step(self, tokens: np.ndarray, state: Arrays, memory: Arrays) -> tuple[np.ndarray, Arrays]:
        """One word for every row: log-probs (R, V) and the new state."""
        feed = {
            "tokens": tokens,
            **{f"state.{k}": v for k, v in state.items()},
            **{f"memory.{k}": v for k, v in memory.items()},
        }
        logp, *new = self.step_session.run(self._step_outputs, {k: v for k, v in feed.items() if k in self.step_inputs})
        return logp, dict(zip(self.state_keys, new))
