"""The decoder as two ONNX graphs, written once against the CaptionModel interface (every model,
ensembles included): init (pooled, grid -> memory, state) and one step
(tokens, state, memory -> log-probs, state). The K/V cache (transformer) or RNN state travels as
graph inputs and outputs; dimensions that grow per word (the cache length) stay dynamic.

Each export is checked against torch over a few steps, so a model whose step does not trace
faithfully (Python control flow on tensor values) is refused instead of giving other captions.
`capgen export` writes them into its folder; `cached_decoder_graphs` keeps them in the cache for
the Captioner, which runs its decoder steps in ONNX Runtime (capgen.inference.onnx_step).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from capgen.errors import ExportError
from capgen.io import atomic_dir, atomic_path, cache_root, write_json
from capgen.models.base import CaptionModel, State

OPSET = 17
# Bump when the exported graphs change, so old cache entries are not reused.
GRAPHS_VERSION = 2
INIT, STEP, IFACE = "decoder_init.onnx", "decoder_step.onnx", "interface.json"
# The step with its matrix weights in int8 (ONNX Runtime dynamic quantization: activations are
# quantized per call, so no calibration). Its log-probs differ from torch's by ~0.5% of their spread
# over the vocabulary (0.11 nats on the bundled model), a graph of another model by tens of percent:
# its check is relative to the spread, and this loose.
STEP_INT8, INT8_TOLERANCE = "decoder_step.int8.onnx", 0.1
# Largest |log-prob| difference ONNX Runtime vs torch accepted at export (measured ~1e-5).
TOLERANCE = 1e-3


class _Init(nn.Module):
    def __init__(self, model: CaptionModel, memory_keys: list[str], state_keys: list[str]):
        super().__init__()
        self.model, self.memory_keys, self.state_keys = model, memory_keys, state_keys

    def forward(self, pooled: Tensor, grid: Tensor) -> tuple[Tensor, ...]:
        memory = self.model.init_memory(pooled, grid)
        state = self.model.init_state(memory)
        return tuple(memory[k] for k in self.memory_keys) + tuple(state[k] for k in self.state_keys)


class _Step(nn.Module):
    def __init__(self, model: CaptionModel, memory_keys: list[str], state_keys: list[str]):
        super().__init__()
        self.model, self.memory_keys, self.state_keys = model, memory_keys, state_keys

    def forward(self, tokens: Tensor, *flat: Tensor) -> tuple[Tensor, ...]:
        n = len(self.state_keys)
        state = dict(zip(self.state_keys, flat[:n]))
        memory = dict(zip(self.memory_keys, flat[n:]))
        logp, new_state, _ = self.model.step(tokens, state, memory)  # attention is not exported
        return (logp,) + tuple(new_state[k] for k in self.state_keys)


def example_inputs(model: CaptionModel, batch: int = 2, word_probs: bool = False) -> tuple[Tensor, ...]:
    """Random features (pooled (B, D), grid (B, N, D)), and with word_probs the tag word
    probabilities (B, W) of a tag-reading model (the scene scorer's graph takes them as an input:
    capgen.models.onnx_score)."""
    g = torch.Generator().manual_seed(0)
    pooled = torch.randn(batch, model.feature_dim, generator=g)  # (B, D)
    grid = torch.randn(batch, model.num_regions, model.feature_dim, generator=g)  # (B, N, D)
    if not word_probs:
        return pooled, grid
    if not getattr(model, "reads_tags", False):
        raise ExportError(f"model {model.name}: reads no tags, so no graph of it takes tag word probabilities")
    return pooled, grid, torch.softmax(4 * torch.randn(batch, model.tags.num_words, generator=g), -1)


def export_decoder(model: CaptionModel, init_path: Path, step_path: Path) -> dict:
    """Write both graphs; returns their interface: memory and state key lists (in graph order)."""
    model.eval()
    pooled, grid = example_inputs(model)
    with torch.no_grad():  # not inference_mode: its tensors cannot be traced into a graph
        memory = model.init_memory(pooled, grid)
        state0 = model.init_state(memory)
        tokens = torch.full((pooled.shape[0],), 1, dtype=torch.long)
        _, state1, _ = model.step(tokens, state0, memory)
        _, state2, _ = model.step(tokens, state1, memory)
    memory_keys, state_keys = sorted(memory), sorted(state0)
    if sorted(state1) != state_keys:
        raise ExportError(f"{model.name}: step returns state keys {sorted(state1)}, init_state {state_keys}")
    # A state dimension that changes from one word to the next (the K/V cache length) stays dynamic.
    growing = {
        k: [i for i in range(1, state1[k].dim()) if state1[k].shape[i] != state2[k].shape[i]] for k in state_keys
    }

    def axes(prefix: str, key: str, dims: list[int]) -> dict:
        return {0: "batch", **{i: f"{key}_len{i}{prefix}" for i in dims}}

    init_out = [f"memory.{k}" for k in memory_keys] + [f"state.{k}" for k in state_keys]
    init_axes = {
        "pooled": {0: "batch"},
        "grid": {0: "batch"},
        **{name: {0: "batch"} for name in init_out[: len(memory_keys)]},
        **{f"state.{k}": axes("", k, growing[k]) for k in state_keys},
    }
    export_module(
        _Init(model, memory_keys, state_keys),
        (pooled, grid),
        init_path,
        ["pooled", "grid"],
        init_out,
        init_axes,
        model.name,
    )

    step_in = ["tokens"] + [f"state.{k}" for k in state_keys] + [f"memory.{k}" for k in memory_keys]
    step_out = ["logp"] + [f"new_state.{k}" for k in state_keys]  # ONNX names are unique: "new_"
    step_axes = {
        "tokens": {0: "batch"},
        "logp": {0: "batch"},
        **{f"state.{k}": axes("", k, growing[k]) for k in state_keys},
        **{f"new_state.{k}": axes("_next", k, growing[k]) for k in state_keys},
        # One memory row per image may serve several state rows (CaptionModel.shared_memory).
        **{f"memory.{k}": {0: "images"} for k in memory_keys},
    }
    example = (tokens, *[state1[k] for k in state_keys], *[memory[k] for k in memory_keys])
    export_module(_Step(model, memory_keys, state_keys), example, step_path, step_in, step_out, step_axes, model.name)
    return {"memory": memory_keys, "state": state_keys, "shared_memory": bool(model.shared_memory)}


def export_module(
    module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], dynamic_axes: dict, name: str
) -> None:
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The legacy exporter warns about its deprecation and about traced shape checks; not actionable.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module.eval(),
                args,
                str(path),
                opset_version=OPSET,
                dynamo=False,
                input_names=inputs,
                output_names=outputs,
                dynamic_axes=dynamic_axes,
            )
    except Exception as e:
        raise ExportError(
            f"model {name}: the decoder cannot be exported to ONNX, so the runtime cannot "
            f"express it ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
        ) from None


# Weights with fewer values than this stay as they are: a Cast node would cost more than it saves.
_COMPACT_MIN = 1024


def store_compact(path: Path) -> dict[str, int]:
    """Rewrite the graph at `path` holding the same values in fewer bytes, for the exported folder
    (the package carries one, and every byte of it is compressed into and out of the wheel):
    - a float32 weight whose every value is a float16 (a checkpoint saved in half precision, as the
      bundled one is) is stored in float16 behind a Cast to float32;
    - a weight that is another's transpose (tied embeddings: the exporter writes the table and its
      transpose for the output layer) becomes a Transpose of it.
    Both are exact and ONNX Runtime folds them into constants when it loads the graph, so the
    log-probs are bit-identical and a step costs the same. Not for the cached graphs: the int8
    quantizer looks for MatMul weights as initializers. Returns {"float16": n, "transposed": n}."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inputs = {i.name for i in graph.input}
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name not in inputs}
    matrices = {}
    for name, a in arrays.items():
        if a.ndim == 2 and a.size >= _COMPACT_MIN:
            matrices.setdefault((a.dtype.str, a.shape, a.tobytes()), name)
    transposed = {}
    for name, a in arrays.items():
        if a.ndim == 2 and a.size >= _COMPACT_MIN and name not in transposed.values():
            source = matrices.get((a.dtype.str, a.shape[::-1], np.ascontiguousarray(a.T).tobytes()))
            if source is not None and source != name and source not in transposed:
                transposed[name] = source
    kept, casts = [], []
    for t in graph.initializer:
        a = arrays.get(t.name)
        if t.name in transposed:
            continue
        if a is not None and a.dtype == np.float32 and a.size >= _COMPACT_MIN:
            half = a.astype(np.float16)
            if np.array_equal(half.astype(np.float32), a):
                kept.append(numpy_helper.from_array(half, f"{t.name}.float16"))
                casts.append(helper.make_node("Cast", [f"{t.name}.float16"], [t.name], to=TensorProto.FLOAT))
                continue
        kept.append(t)
    # Graph nodes are in topological order: Casts first, then the Transposes that may read them.
    nodes = casts + [helper.make_node("Transpose", [s], [n], perm=[1, 0]) for n, s in transposed.items()]
    nodes += list(graph.node)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(path))
    return {"float16": len(casts), "transposed": len(transposed)}


def set_metadata(path: Path, values: dict[str, str]) -> None:
    import onnx

    m = onnx.load(str(path))
    for key, value in values.items():
        entry = m.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(m, str(path))


def verify_decoder(
    model: CaptionModel,
    init_path: Path,
    step_path: Path,
    iface: dict,
    steps: int = 6,
    tolerance: float = TOLERANCE,
    relative: bool = False,
) -> float:
    """Max |log-prob| difference ONNX Runtime vs torch over `steps` steps (random words) on random
    features: 3 images, then (a model with shared memory) 1 image decoded in 3 rows; relative: as a
    share of the log-probs' spread over the vocabulary. ExportError when above `tolerance`."""
    from capgen.runtime.graphs import DecoderGraphs

    graphs = DecoderGraphs(init_path, step_path, iface["memory"], iface["state"])
    worst = max(
        _difference(model, graphs, images, rows, steps, relative)
        for images, rows in ((3, 1), (1, 3))
        if rows == 1 or iface.get("shared_memory")
    )
    if not worst < tolerance:
        raise ExportError(
            f"model {model.name}: the ONNX decoder step differs from torch by {worst:.3g} "
            f"(expected < {tolerance}), so the runtime cannot express this model"
        )
    return worst


def _difference(model: CaptionModel, graphs, images: int, rows: int, steps: int, relative: bool = False) -> float:
    """One verify run: `images` images, each decoded in `rows` rows of state over one memory row."""
    pooled, grid = example_inputs(model, batch=images)
    g = torch.Generator().manual_seed(1)
    memory_o, state_o = graphs.start(pooled.numpy(), grid.numpy())
    state_o = {k: np.repeat(v, rows, axis=0) for k, v in state_o.items()}
    R, worst = images * rows, 0.0
    with torch.inference_mode():
        memory: State = model.init_memory(pooled, grid)
        state: State = {k: v.repeat_interleave(rows, dim=0) for k, v in model.init_state(memory).items()}
        tokens = torch.full((R,), 1, dtype=torch.long)
        for _ in range(steps):
            ref, state, _ = model.step(tokens, state, memory)
            logp, state_o = graphs.step(tokens.numpy(), state_o, memory_o)
            diff = float(np.abs(logp - ref.numpy()).max()) if logp.shape == tuple(ref.shape) else float("inf")
            if relative:
                diff /= max(float((ref.max(dim=-1).values - ref.min(dim=-1).values).mean()), 1e-6)
            worst = max(worst, diff)
            tokens = torch.randint(0, model.vocab_size, (R,), generator=g)  # varied words, not just argmax
    return worst


def cached_decoder_graphs(model: CaptionModel, cache_dir: str | Path | None = None) -> tuple[Path, dict]:
    """Export and verify `model`'s decoder graphs once per weights into the cache
    (<cache>/decoder/<name>-<hash>/); returns the folder (INIT and STEP inside) and the interface.
    A cached entry is verified against torch again on every load (a few tiny steps), so a damaged
    or tampered one is exported anew instead of giving other captions. ExportError when the model
    cannot be expressed."""
    folder = cache_root(cache_dir) / "decoder" / f"{model.name}-{_weights_hash(model)}"
    if (folder / IFACE).is_file():
        try:
            iface = json.loads((folder / IFACE).read_text())
            verify_decoder(model, folder / INIT, folder / STEP, iface)
            return folder, iface
        except Exception:  # noqa: BLE001  unreadable, not a graph, wrong inputs, other log-probs: export again
            pass
    with atomic_dir(folder, replace_if=lambda f: (f / IFACE).is_file(), what="decoder graph cache") as tmp:
        iface = export_decoder(model, tmp / INIT, tmp / STEP)
        verify_decoder(model, tmp / INIT, tmp / STEP, iface)
        write_json(tmp / IFACE, iface)  # last: it marks the folder complete
    return folder, iface


def cached_int8_step(model: CaptionModel, folder: Path, iface: dict) -> Path:
    """The int8 step beside the verified fp32 graphs in `folder` (made once, re-checked on every
    load against torch with INT8_TOLERANCE); ExportError when it cannot be made or is off."""
    from capgen.ort import quantize_dynamic_int8

    path = folder / STEP_INT8
    if path.is_file():
        try:
            verify_decoder(model, folder / INIT, path, iface, tolerance=INT8_TOLERANCE, relative=True)
            return path
        except Exception:  # noqa: BLE001  damaged or stale: make it again
            pass
    with atomic_path(path) as tmp:
        quantize_dynamic_int8(folder / STEP, tmp)
        verify_decoder(model, folder / INIT, tmp, iface, tolerance=INT8_TOLERANCE, relative=True)
    return path


def _weights_hash(model: CaptionModel) -> str:
    from capgen.encoders.onnx import weights_hash

    return weights_hash(model, json.dumps({"model": _describe(model), "graphs": GRAPHS_VERSION}), 16)


def _describe(model: CaptionModel) -> dict:
    """What shapes a model's graphs besides its weights (heads, position kind): class and config."""
    return {
        "class": type(model).__name__,
        "config": repr(getattr(model, "config", None)),
        "members": [_describe(m) for m in getattr(model, "members", [])],
    }
