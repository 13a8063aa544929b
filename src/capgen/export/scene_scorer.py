"""Write a scene scorer folder (format in capgen/runtime/scene_scorer.py) from a checkpoint:

python scripts/build_scene_scorer.py runs/tags-coco/best.pt --out src/capgen/assets/scene_scorer
"""

from __future__ import annotations

from pathlib import Path

import torch

from capgen.errors import ExportError
from capgen.io import atomic_dir, json_marker, write_json
from capgen.runtime import folder as fmt
from capgen.runtime import scene_scorer as sc


def write_scene_scorer(
    checkpoint: str | Path, out: str | Path, half: bool = True, int8: bool = True, encoder: str | None = None
) -> dict:
    """The checkpoint's decoder as a scoring graph with its vocabulary, checked against torch; half:
    round its weights to float16 first (the bundled checkpoint's precision), so they are stored in
    half the bytes (capgen.models.onnx.store_compact); int8: its MatMul weights in int8 (7-bit range,
    capgen.ort.quantize_dynamic_int8), which scores a shortlist 2.3x faster with the same choices on
    all but 1 of 2,267 photos (BENCHMARKS.md); encoder: build this one ('package.module:factory'
    allowed) instead of the checkpoint's. Returns {"files": {name: bytes}, "max_diff"}. The model
    reads tags (model.tag_tokens): its graph takes the tagger's word probabilities."""
    from capgen.checkpoint import load_checkpoints
    from capgen.encoders import create_encoder
    from capgen.inference.captioner import check_encoder_spec
    from capgen.models.onnx import store_compact
    from capgen.models.onnx_score import INT8_TOLERANCE, TOLERANCE, export_score_graph, verify_score_graph
    from capgen.ort import quantize_dynamic_int8

    path = Path(checkpoint)
    ck = load_checkpoints([path])
    model = ck.model.eval()
    if hasattr(model, "split_at"):
        raise ExportError(f"{path}: fine-tuned encoder blocks; a scene scorer reads the plain encoder's features")
    enc = create_encoder(encoder, allow_import=True) if encoder else create_encoder(ck.encoder.get("name"))
    check_encoder_spec(enc.spec(), ck.encoder, path)
    if half:
        with torch.no_grad():
            for t in [*model.parameters(), *model.buffers()]:
                if t.is_floating_point():
                    t.copy_(t.half().float())
    with atomic_dir(out, replace_if=json_marker(sc.INDEX, "format", sc.FORMAT), what="scene scorer") as tmp:
        graph = tmp / sc.GRAPH
        if int8:
            export_score_graph(model, tmp / "fp32.onnx")
            quantize_dynamic_int8(tmp / "fp32.onnx", graph, reduce_range=True)
            (tmp / "fp32.onnx").unlink()
        else:
            export_score_graph(model, graph)
        store_compact(graph)  # after quantizing: the quantizer looks for MatMul weights as initializers
        diff = verify_score_graph(model, graph, INT8_TOLERANCE if int8 else TOLERANCE)
        write_json(tmp / fmt.VOCAB, ck.vocab.to_dict(), indent=None)
        files = {
            name: {"sha256": fmt.sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size} for name in sc.FILES
        }
        index = {
            "format": sc.FORMAT,
            "version": sc.VERSION,
            "source": f"{model.name} ({Path(checkpoint).name})",
            "encoder": enc.spec(),
            "tagger": model.config.tagger,
            "int8": int8,
            "max_diff": diff,
            "files": files,
        }
        write_json(tmp / sc.INDEX, index)  # last: it marks the folder complete
    return {"files": {k: v["bytes"] for k, v in files.items()}, "max_diff": diff}
