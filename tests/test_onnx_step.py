"""The Captioner's fast path: each model's decoder steps in ONNX Runtime behind the model interface,
driven by the one `decode`. Same captions as torch for every model, search and tag guidance; the
graphs are cached per weights; attention maps still come from torch."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from capgen import Captioner
from capgen.decoding import DecodeConfig, decode
from capgen.decoding.config import MAX_GUIDE_PENALTY
from capgen.inference.onnx_step import OnnxStepModel
from capgen.models import onnx as graphs
from capgen.models.ensemble import EnsembleModel
from test_decoding import MODELS, sharp
from test_models import IDS, features

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIGS = [
    DecodeConfig(beam_size=3, max_len=8),
    DecodeConfig(method="greedy", max_len=8),
    DecodeConfig(method="sample", seed=3, top_k=1, max_len=8),
    DecodeConfig(beam_size=2, n_best=2, max_len=8),
]


def same(a, b) -> None:
    """Same captions; scores within what the export check allows per step (graphs.TOLERANCE): ONNX
    Runtime's kernels are not torch's, and on an AMD EPYC a one-word caption's score differed by
    1.5e-5 relative (1e-4 over its two steps), past float32 rounding but well inside the check."""
    assert [[h.tokens for h in hyps] for hyps in a] == [[h.tokens for h in hyps] for hyps in b]
    for ha, hb in zip(a, b):
        for x, y in zip(ha, hb):
            assert x.score == pytest.approx(y.score, abs=graphs.TOLERANCE * (len(y.tokens) + 1))


@pytest.mark.parametrize("name", MODELS)
def test_onnx_steps_give_the_torch_captions(name, tmp_path):
    model = sharp(name, 20).eval()
    fast = OnnxStepModel(model, cache_dir=tmp_path)
    pooled, grid = features(4, seed=5)
    for cfg in CONFIGS:
        same(decode(fast, pooled, grid, IDS, cfg), decode(model, pooled, grid, IDS, cfg))
    # tag guidance: the constrained search is the same code over other steps
    include = [{7}, None, {9, 10}, None]
    cfg = replace(CONFIGS[0], guide_penalty=MAX_GUIDE_PENALTY)  # the words come, whatever they cost
    guided = decode(fast, pooled, grid, IDS, cfg, include=include)
    same(guided, decode(model, pooled, grid, IDS, cfg, include=include))
    assert 7 in guided[0][0].tokens and {9, 10} & set(guided[2][0].tokens)


def test_an_ensemble_runs_as_one_graph(tmp_path):
    ensemble = EnsembleModel([sharp("transformer", 20), sharp("show_attend_tell", 20)]).eval()
    fast = OnnxStepModel(ensemble, cache_dir=tmp_path)
    assert not fast.shared_memory  # one member reads one memory row per beam, so every row is copied
    pooled, grid = features(3, seed=2)
    same(decode(fast, pooled, grid, IDS, CONFIGS[0]), decode(ensemble, pooled, grid, IDS, CONFIGS[0]))


def test_the_transformer_reads_one_memory_row_per_image_or_one_per_beam():
    """Beams share their image's memory; a memory copied per beam (older exports) gives the same step."""
    model = sharp("transformer", 20).eval()
    pooled, grid = features(2, seed=1)
    with torch.inference_mode():
        memory = model.init_memory(pooled, grid)
        state = {k: v.repeat_interleave(3, 0) for k, v in model.init_state(memory).items()}
        tokens = torch.tensor([3, 4, 5, 6, 7, 8])
        shared, _, att = model.step(tokens, state, memory)
        copied, _, att_copied = model.step(tokens, state, {k: v.repeat_interleave(3, 0) for k, v in memory.items()})
    torch.testing.assert_close(shared, copied)
    torch.testing.assert_close(att, att_copied)
    assert shared.shape == (6, 20) and att.shape == (6, model.num_regions)


def test_graphs_are_exported_once_per_weights(tmp_path, monkeypatch):
    model = sharp("show_tell", 20).eval()
    first, _ = graphs.cached_decoder_graphs(model, tmp_path)
    monkeypatch.setattr(graphs, "export_decoder", lambda *a: pytest.fail("exported again"))
    assert graphs.cached_decoder_graphs(model, tmp_path)[0] == first
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    monkeypatch.undo()
    assert graphs.cached_decoder_graphs(model, tmp_path)[0] != first  # other weights, other graphs


def test_a_damaged_cache_entry_is_exported_again(tmp_path):
    model = sharp("transformer", 20).eval()
    folder, _ = graphs.cached_decoder_graphs(model, tmp_path)
    (folder / graphs.STEP).write_bytes(b"not an onnx graph")
    fast = OnnxStepModel(model, cache_dir=tmp_path)
    pooled, grid = features(2)
    same(decode(fast, pooled, grid, IDS, CONFIGS[0]), decode(model, pooled, grid, IDS, CONFIGS[0]))


def test_the_captioner_decodes_in_onnx_and_draws_attention_with_torch(tiny_run):
    path = tiny_run.checkpoints["show_attend_tell"]
    onnx = Captioner.from_pretrained(path, encoder=tiny_run.encoder, backend="onnx")
    ref = Captioner.from_pretrained(path, encoder=tiny_run.encoder, backend="torch")
    assert (onnx.info()["decoder"], ref.info()["decoder"]) == ("onnx", "torch")
    images = [r.path for r in tiny_run.prepared.split("test")[:4]]
    assert [r.caption for r in onnx.caption(images)] == [r.caption for r in ref.caption(images)]
    drawn = onnx.caption(images[0], return_attention=True)
    assert drawn.attention is not None and drawn.caption == ref.caption(images[0]).caption


def test_bf16_decodes_with_torch(tiny_run):
    cap = Captioner.from_pretrained(tiny_run.checkpoints["show_tell"], encoder=tiny_run.encoder, precision="bf16")
    assert cap.info()["decoder"] == "torch"


def test_a_tampered_cache_entry_is_exported_again(tmp_path):
    """Graphs that load but compute something else (another model's) are caught by the re-check."""
    model, other = sharp("transformer", 20).eval(), sharp("show_attend_tell", 20).eval()
    folder, _ = graphs.cached_decoder_graphs(model, tmp_path)
    elsewhere, _ = graphs.cached_decoder_graphs(other, tmp_path)
    (folder / graphs.STEP).write_bytes((elsewhere / graphs.STEP).read_bytes())
    pooled, grid = features(2)
    fast = OnnxStepModel(model, cache_dir=tmp_path)
    same(decode(fast, pooled, grid, IDS, CONFIGS[0]), decode(model, pooled, grid, IDS, CONFIGS[0]))


def test_an_unwritable_cache_falls_back_to_torch_with_a_warning(tiny_run, monkeypatch):
    from capgen.errors import ExportError
    from capgen.inference import onnx_step

    def unwritable(*a, **kw):
        raise PermissionError("[Errno 13] Permission denied: '/cache/decoder'")

    from capgen.encoders.base import ImageEncoder

    monkeypatch.setattr(onnx_step, "cached_decoder_graphs", unwritable)
    monkeypatch.setattr(ImageEncoder, "onnx_exportable", True)  # "auto" picks ONNX Runtime for the tiny encoder
    path = tiny_run.checkpoints["show_tell"]
    with pytest.warns(RuntimeWarning, match="Permission denied.*decoding with torch"):
        cap = Captioner.from_pretrained(path, encoder=tiny_run.encoder)
    assert cap.info()["decoder"] == "torch" and cap.caption(tiny_run.prepared.split("test")[0].path).caption
    with pytest.raises(ExportError, match="decoder of show_tell in ONNX Runtime: .*Permission denied"):
        Captioner.from_pretrained(path, encoder=tiny_run.encoder, backend="onnx")


@pytest.mark.parametrize("name", ["show_attend_tell", "transformer"])
def test_the_int8_step_stays_close_and_is_made_once(name, tmp_path, monkeypatch):
    from capgen import ort as ort_settings
    from test_models import build

    model = build(name, 20).eval()  # not `sharp`: its tripled weights are far from a trained model's
    fast = OnnxStepModel(model, cache_dir=tmp_path, precision="int8")
    folder, iface = graphs.cached_decoder_graphs(model, tmp_path)
    assert fast.precision == "int8" and (folder / graphs.STEP_INT8).is_file()
    assert (
        graphs.verify_decoder(
            model,
            folder / graphs.INIT,
            folder / graphs.STEP_INT8,
            iface,
            relative=True,
            tolerance=graphs.INT8_TOLERANCE,
        )
        < graphs.INT8_TOLERANCE
    )
    pooled, grid = features(4, seed=3)
    got = decode(fast, pooled, grid, IDS, CONFIGS[0])
    assert all(h and h[0].tokens for h in got)
    monkeypatch.setattr(ort_settings, "quantize_dynamic_int8", lambda *a: pytest.fail("quantized again"))
    OnnxStepModel(model, cache_dir=tmp_path, precision="int8")
    monkeypatch.undo()
    (folder / graphs.STEP_INT8).write_bytes(b"damaged")  # a damaged int8 file is made again
    assert decode(OnnxStepModel(model, cache_dir=tmp_path, precision="int8"), pooled, grid, IDS, CONFIGS[0])


def test_the_captioner_at_int8_runs_the_int8_step(tiny_run):
    photos = [r.path for r in tiny_run.prepared.split("train")[:8]]
    cap = Captioner.from_pretrained(
        tiny_run.checkpoints["show_attend_tell"],
        encoder=tiny_run.encoder,
        backend="onnx",
        precision="int8",
        calibration=photos,
    )
    assert cap.info()["precision"] == {"encoder": "int8", "decoder": "int8"}
    assert cap.fast_decoder.precision == "int8" and cap.caption(photos[0]).caption
