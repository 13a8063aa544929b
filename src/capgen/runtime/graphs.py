"""The decoder's exported ONNX graphs behind numpy calls: init (pooled, grid -> memory, state) and
one step (tokens, state, memory -> log-probs, new state), used by the torch-free Runtime, the
Captioner's ONNX Runtime decoder (inference/onnx_step) and the check of an export against torch
(models/onnx); and the scoring graph of a decoder that only scores (models/onnx_score: the scene
scorer). The one owner of their input and output names."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from capgen.errors import ExportError
from capgen.ort import open_session

Arrays = dict[str, np.ndarray]
SCORE_INPUTS = ("pooled", "grid", "word_probs", "captions", "image_index")
SCORE_OUTPUT = "token_logp"


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

    def start(self, pooled: np.ndarray, grid: np.ndarray) -> tuple[Arrays, Arrays]:
        """Features (B, D), (B, N, D) -> the memory and the initial state, one row per image."""
        features = {"pooled": pooled, "grid": grid}
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


class ScoreGraph:
    """A scoring graph: images (pooled (I, D), grid (I, N, D), word_probs (I, W)), captions (R, T)
    (<start> words <end>, then anything) and each caption's image (R,) -> token_logp (R, T-1), the
    log-probability of each next token. ExportError naming a file that is not one."""

    def __init__(self, path: Path, threads: int = 1):
        self.session = open_session(path, threads)
        names = sorted(i.name for i in self.session.get_inputs())
        if names != sorted(SCORE_INPUTS) or [o.name for o in self.session.get_outputs()] != [SCORE_OUTPUT]:
            raise ExportError(f"{path}: not a scoring graph (inputs {', '.join(SCORE_INPUTS)} -> {SCORE_OUTPUT})")

    def token_logp(self, pooled, grid, word_probs, captions: np.ndarray, image_index: np.ndarray) -> np.ndarray:
        values = (pooled, grid, word_probs, captions, image_index)
        return self.session.run([SCORE_OUTPUT], dict(zip(SCORE_INPUTS, values)))[0]
