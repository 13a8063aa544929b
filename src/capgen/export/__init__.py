"""`capgen export`: a checkpoint -> a folder that capgen.runtime runs with no torch (format in
capgen/runtime/folder.py).

    export_checkpoint("runs/transformer/best.pt", "exported/", DecodeConfig(beam_size=3))
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from capgen.decoding.config import DecodeConfig
from capgen.errors import EncoderError, ExportError
from capgen.io import atomic_dir, json_marker, write_json
from capgen.runtime import folder as fmt


def export_checkpoint(
    paths: str | Path | Sequence[str | Path],
    out: str | Path,
    config: DecodeConfig | None = None,
    encoder: str | None = None,
) -> dict:
    """Export checkpoint(s) (several: an ensemble) to `out`; returns what export_captioner returns."""
    from capgen.checkpoint import read_payload, weights_sha256
    from capgen.inference import Captioner

    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    try:
        # The Captioner's own way to its encoder ONNX: whatever it runs (fine-tuned blocks included)
        # is what gets exported.
        captioner = Captioner.from_pretrained(paths, encoder=encoder, backend="onnx")
    except EncoderError as e:
        raise ExportError(
            f"the encoder cannot run in ONNX Runtime, so the runtime cannot express this checkpoint: {e}"
        ) from None
    # The hash each checkpoint stores (checked as it loaded above); computed for an older file without one.
    weights = [payload.get("weights_sha256") or weights_sha256(payload) for payload in map(read_payload, paths)]
    return export_captioner(captioner, out, config, weights)


def export_captioner(
    captioner, out: str | Path, config: DecodeConfig | None = None, weights_sha256: Sequence[str] = ()
) -> dict:
    """Write the exported folder atomically (nothing half-written loads). Returns a summary:
    {"files": {name: bytes}, "step_max_diff": |log-prob| difference ONNX vs torch}.
    weights_sha256: the checkpoints' weight hashes, recorded in the manifest."""
    from capgen.models.onnx import export_decoder, set_metadata, store_compact, verify_decoder

    config = config if config is not None else DecodeConfig()
    if config.method == "sample":
        raise ExportError(
            "an export's default decoding is greedy or beam search; export without --sample "
            "(the runtime samples when asked: --sample)"
        )
    model = captioner.model
    limit = _max_len_limit(model)
    if limit is not None and config.length_limit > limit:
        flag = "--max-words" if config.max_words else "--max-len"
        raise ExportError(
            f"model {model.name} has learned positions for at most {limit} words; export with {flag} {limit} or less"
        )
    encoder_onnx = getattr(captioner.runner, "path", None)
    if encoder_onnx is None:
        raise ExportError(
            f"encoder {captioner.encoder.name}: runs with the {captioner.runner.backend} backend, "
            "not ONNX Runtime, so the runtime cannot express it"
        )
    with atomic_dir(out, replace_if=json_marker(fmt.MANIFEST, "format", fmt.FORMAT), what="capgen export") as tmp:
        shutil.copyfile(encoder_onnx, tmp / fmt.ENCODER)
        iface = export_decoder(model, tmp / fmt.INIT, tmp / fmt.STEP)
        for graph in (fmt.INIT, fmt.STEP):
            store_compact(tmp / graph)
        diff = verify_decoder(model, tmp / fmt.INIT, tmp / fmt.STEP, iface)
        write_json(tmp / fmt.VOCAB, captioner.vocab.to_dict(), indent=None)
        set_metadata(tmp / fmt.STEP, {fmt.VOCAB_HASH_KEY: fmt.sha256_file(tmp / fmt.VOCAB)})
        saved = {k: v for k, v in asdict(config).items() if k != "return_attention"}
        write_json(tmp / fmt.DECODING, saved)
        write_json(
            tmp / fmt.MODEL,
            {
                "architecture": model.name,
                "source": captioner.name,
                "encoder": captioner.encoder.spec(),
                "vocab_size": len(captioner.vocab),
                "memory": iface["memory"],
                "state": iface["state"],
                "shared_memory": iface["shared_memory"],
                "max_len_limit": limit,
                "step_max_diff": diff,
            },
        )
        if captioner.tagger is not None:
            _write_tags(tmp, captioner)
        manifest = fmt.manifest_for(tmp, weights_sha256)
        write_json(tmp / fmt.MANIFEST, manifest)  # last: it marks the folder complete
    return {"files": {k: v["bytes"] for k, v in manifest["files"].items()}, "step_max_diff": diff}


def _write_tags(folder: Path, captioner) -> None:
    """The tagger (classifier head + class words) and the guidance plans: the runtime tags and
    guides like the Captioner, without GloVe or torch."""
    import numpy as np

    from capgen.tags import Guide

    head, words = captioner.tagger.head, captioner.tagger.words
    with open(folder / fmt.TAG_HEAD, "wb") as f:
        np.savez(f, weight=head.weight.astype(np.float32), bias=head.bias.astype(np.float32))
    write_json(folder / fmt.TAG_WORDS, {"labels": head.labels, "class_words": list(words.class_words)}, indent=None)
    write_json(folder / fmt.GUIDE, Guide.build(captioner.vocab, words).to_dict(), indent=None)


def _max_len_limit(model) -> int | None:
    """Most words a model with learned positions can decode (max_len + 1 steps fit max_positions)."""
    members = getattr(model, "members", [model])
    limits = [
        m.config.max_positions - 1
        for m in members
        if getattr(getattr(m, "config", None), "positions", None) == "learned"
    ]
    return min(limits) if limits else None


__all__ = ["export_captioner", "export_checkpoint"]
