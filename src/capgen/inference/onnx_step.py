"""A captioning model's decoder run in ONNX Runtime behind the model interface, so the one `decode`
drives it: the same searches, rules and tag guidance, with each word's step a single ONNX Runtime
call instead of ~100 small torch ops (a beam-3 step of the bundled transformer: ~1.4 ms against
~4.5 ms; BENCHMARKS.md). The graphs are exported once per weights into the cache and checked
against torch (capgen.models.onnx), so the captions are the torch model's, up to float rounding.
The torch model stays the reference and serves what the graphs do not carry: attention maps.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from capgen.models.base import CaptionModel, State
from capgen.models.onnx import INIT, STEP, cached_decoder_graphs, cached_int8_step


class OnnxStepModel(nn.Module):
    """`init_memory`, `init_state` and `step` of `model`, computed by ONNX Runtime on CPU tensors.

    Holds no parameters; `decode` sees `vocab_size`, `shared_memory` and the three calls. Not
    thread-safe (one ONNX Runtime session per graph, and the initial state is kept between
    `init_memory` and `init_state`), like the Captioner that owns it."""

    supports_attention = False  # the step graph returns log-probs and state only

    def __init__(self, model: CaptionModel, threads: int = 1, cache_dir=None, precision: str = "fp32"):
        """precision: "fp32", or "int8" (the step's matrix weights in int8: about 2x faster at beam 3,
        and a few captions in a hundred differ; BENCHMARKS.md). ExportError when the model's step
        cannot be expressed in ONNX."""
        super().__init__()
        from capgen.runtime.graphs import DecoderGraphs

        folder, iface = cached_decoder_graphs(model, cache_dir)
        step = cached_int8_step(model, folder, iface) if precision == "int8" else folder / STEP
        self.precision = precision
        self.graphs = DecoderGraphs(folder / INIT, step, iface["memory"], iface["state"], threads)
        self.name, self.vocab_size = model.name, model.vocab_size
        self.shared_memory = bool(iface.get("shared_memory"))
        self._initial: tuple[int, State] | None = None

    def init_memory(self, pooled: Tensor, grid: Tensor) -> State:
        memory, state = self.graphs.start(pooled.float().numpy(), grid.float().numpy())
        memory = {k: torch.from_numpy(v) for k, v in memory.items()}
        # The init graph also gives the initial state; init_state(memory) hands it out.
        self._initial = (id(memory), {k: torch.from_numpy(v) for k, v in state.items()})
        return memory

    def init_state(self, memory: State) -> State:
        if self._initial is None or self._initial[0] != id(memory):
            raise RuntimeError("OnnxStepModel.init_state: call it with the memory init_memory just returned")
        state, self._initial = self._initial[1], None
        return state

    def step(self, tokens: Tensor, state: State, memory: State) -> tuple[Tensor, State, None]:
        logp, new = self.graphs.step(
            tokens.numpy(), {k: v.numpy() for k, v in state.items()}, {k: v.numpy() for k, v in memory.items()}
        )
        return torch.from_numpy(logp), {k: torch.from_numpy(v) for k, v in new.items()}, None
