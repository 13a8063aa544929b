"""Encoders: registry, shapes, pretrained weights, preprocessing, ONNX runner, custom and timm encoders."""

from __future__ import annotations

import functools
import importlib.util
import textwrap

import numpy as np
import pytest
import torch

from capgen.encoders import (
    GridEncoder,
    ImageEncoder,
    Preprocess,
    count_flops,
    create_encoder,
    list_encoders,
    make_runner,
)
from capgen.encoders.onnx import onnx_path
from capgen.errors import EncoderError
from capgen.images import load_image

skdata = pytest.importorskip("skimage.data")

GRID = {"efficientnet-lite0": (7, 7), "efficientnet-lite2": (9, 9)}
CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


@functools.lru_cache(maxsize=None)
def encoder(name: str) -> ImageEncoder:
    """Build each pretrained encoder once per session (loading takes a moment)."""
    return create_encoder(name)


def batch(enc: ImageEncoder, *photos: np.ndarray) -> torch.Tensor:
    return torch.stack([enc.preprocess(load_image(_pil(p))) for p in photos])  # (B, 3, S, S)


def _pil(arr: np.ndarray):
    from PIL import Image

    return Image.fromarray(arr)


def top5(enc, x: torch.Tensor) -> list[list[int]]:
    with torch.no_grad():
        return enc.logits(x).topk(5, dim=1).indices.tolist()  # (B, 5)


# --- registry ---------------------------------------------------------------------------------


def test_registry_lists_both_encoders():
    assert {"efficientnet-lite0", "efficientnet-lite2"} <= set(list_encoders())


def test_unknown_encoder_names_the_choices():
    with pytest.raises(EncoderError, match="efficientnet-lite2") as e:
        create_encoder("no-such-encoder")
    assert "efficientnet-lite0" in str(e.value)


@pytest.mark.parametrize("name", sorted(GRID))
def test_shapes_and_pooled_is_grid_mean(name):
    enc = encoder(name)
    assert not enc.training
    assert all(p.requires_grad for p in enc.parameters())  # later work fine-tunes through it
    s = enc.preprocess.size
    x = torch.rand(2, 3, s, s) * 2 - 1  # (2, 3, S, S)
    with torch.no_grad():
        pooled, grid = enc(x)
    h, w = GRID[name]
    assert pooled.shape == (2, 1280) and grid.shape == (2, h * w, 1280)
    assert enc.dim == 1280 and enc.grid_hw == (h, w)
    torch.testing.assert_close(pooled, grid.mean(dim=1))
    assert torch.isfinite(grid).all()
    assert enc.spec() == {"name": name, "preprocess": enc.preprocess.to_dict(), "dim": 1280, "grid": [h, w]}


def test_wrong_input_size_is_an_encoder_error():
    with pytest.raises(EncoderError, match=r"\(B, 3, 224, 224\)"):
        encoder("efficientnet-lite0")(torch.zeros(1, 3, 100, 100))


# --- pretrained weights ------------------------------------------------------------------------


def test_lite0_weights_classify_cat_and_espresso():
    enc = encoder("efficientnet-lite0")
    cat, coffee = top5(enc, batch(enc, skdata.chelsea(), skdata.coffee()))
    assert CAT_CLASSES & set(cat), cat
    assert ESPRESSO in coffee, coffee


def test_lite2_weights_classify_cat():
    enc = encoder("efficientnet-lite2")
    (cat,) = top5(enc, batch(enc, skdata.chelsea()))
    assert CAT_CLASSES & set(cat[:3]), cat


@pytest.mark.parametrize("name", sorted(GRID))
def test_activations_are_still_relu6(name):
    # set_swish() would swap ReLU6 for Swish and silently ruin the pretrained features.
    model = encoder(name).model
    assert isinstance(model._swish, torch.nn.ReLU6)
    assert all(isinstance(b._swish, torch.nn.ReLU6) for b in model._blocks)


def test_loading_prints_nothing(capsys):
    create_encoder("efficientnet-lite0")
    assert capsys.readouterr().out == ""


def test_flop_counts_match_measured():
    assert count_flops(encoder("efficientnet-lite0")) / 1e9 == pytest.approx(0.77, abs=0.01)
    assert count_flops(encoder("efficientnet-lite2")) / 1e9 == pytest.approx(1.72, abs=0.01)


# --- ONNX runner -------------------------------------------------------------------------------


def test_onnx_runner_matches_torch_and_reuses_cache(tmp_path):
    pytest.importorskip("onnxruntime")
    enc = encoder("efficientnet-lite0")
    x = batch(enc, skdata.chelsea(), skdata.coffee(), skdata.astronaut()).numpy()
    ref_pooled, ref_grid = make_runner(enc, backend="torch")(x)

    runner = make_runner(enc, backend="onnx", cache_dir=tmp_path)
    assert runner.backend == "onnx" and runner.spec == enc.spec()
    assert not enc.training  # export must not leave the encoder in training mode
    pooled, grid = runner(x)
    assert pooled.dtype == grid.dtype == np.float32
    assert pooled.shape == (3, 1280) and grid.shape == (3, 49, 1280)
    assert np.abs(grid - ref_grid).max() < 1e-3
    assert np.abs(pooled - ref_pooled).max() < 1e-3

    path = onnx_path(enc, tmp_path)
    assert [p.name for p in (tmp_path / "onnx").iterdir()] == [path.name]  # no temp files left
    mtime = path.stat().st_mtime_ns
    assert make_runner(enc, backend="auto", cache_dir=tmp_path).backend == "onnx"
    assert path.stat().st_mtime_ns == mtime  # reused, not exported again


def test_corrupt_onnx_cache_is_reexported(tmp_path):
    pytest.importorskip("onnxruntime")
    enc = encoder("efficientnet-lite0")
    path = onnx_path(enc, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00garbage, not an onnx model" * 10)
    runner = make_runner(enc, backend="onnx", cache_dir=tmp_path)
    assert runner.backend == "onnx"
    assert path.stat().st_size > 1_000_000
    s = enc.preprocess.size
    pooled, grid = runner(np.zeros((1, 3, s, s), np.float32))
    assert grid.shape == (1, 49, 1280)


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPGEN_CACHE", str(tmp_path))
    assert onnx_path(encoder("efficientnet-lite0")).parent == tmp_path / "onnx"


def test_bad_backend_is_an_encoder_error():
    with pytest.raises(EncoderError, match="backend"):
        make_runner(encoder("efficientnet-lite0"), backend="tensorrt")


# --- preprocessing -----------------------------------------------------------------------------


def test_preprocess_shape_dtype_range():
    p = Preprocess(64)
    x = p(load_image(_pil(skdata.chelsea())))  # whole 451x300 image squeezed to 64x64
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert -1.0 <= x.min() < -0.5 and 0.5 < x.max() <= 1.0


def test_preprocess_normalisation_is_exact():
    from PIL import Image

    img = Image.new("RGB", (10, 20), (0, 128, 255))
    x = Preprocess(4, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 2.0), resample="nearest")(img)
    expected = torch.tensor([(0 / 255 - 0.1) / 0.5, (128 / 255 - 0.2) / 0.25, (255 / 255 - 0.3) / 2.0])
    torch.testing.assert_close(x[:, 0, 0], expected)


def test_preprocess_dict_round_trip():
    p = Preprocess(260, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), resample="bilinear")
    d = p.to_dict()
    assert d == {"size": 260, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "resample": "bilinear"}
    assert Preprocess.from_dict(d) == p
    assert Preprocess.from_dict({"size": 224}) == Preprocess(224)


@pytest.mark.parametrize(
    "d",
    [
        {"size": 224, "crop": 200},
        {"mean": [0.5, 0.5, 0.5]},
        {"size": "big"},
        {"size": 224, "mean": [0.5, 0.5]},
        {"size": 224, "std": [0.5, 0.0, 0.5]},
        {"size": 224, "resample": "sinc"},
        ["size", 224],
    ],
)
def test_preprocess_from_bad_dict_is_an_encoder_error(d):
    with pytest.raises(EncoderError):
        Preprocess.from_dict(d)


# --- custom and timm encoders ------------------------------------------------------------------

CUSTOM_MODULE = """
    import torch
    from capgen.encoders import GridEncoder, Preprocess

    def factory():
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=4, padding=1), torch.nn.ReLU())
        return GridEncoder(net, Preprocess(32), name="tiny")

    def not_an_encoder():
        return torch.nn.Conv2d(3, 8, 3)
"""


def test_custom_encoder_by_import_path_runs_on_torch(tmp_path, monkeypatch):
    (tmp_path / "my_tiny_encoder.py").write_text(textwrap.dedent(CUSTOM_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    enc = create_encoder("my_tiny_encoder:factory", allow_import=True)
    assert isinstance(enc, GridEncoder) and not enc.training
    assert enc.dim == 8 and enc.grid_hw == (8, 8)
    runner = make_runner(enc, backend="auto", cache_dir=tmp_path)
    assert runner.backend == "torch"
    pooled, grid = runner(np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32))
    assert pooled.shape == (2, 8) and grid.shape == (2, 64, 8)
    # a mean near 0 keeps the rounding of its terms: tolerate float32 precision of the grid's scale
    np.testing.assert_allclose(pooled, grid.mean(axis=1), rtol=1e-5, atol=1e-5 * float(np.abs(grid).max()))

    with pytest.raises(EncoderError, match="ImageEncoder"):
        create_encoder("my_tiny_encoder:not_an_encoder", allow_import=True)
    with pytest.raises(EncoderError, match="no callable"):
        create_encoder("my_tiny_encoder:missing", allow_import=True)
    with pytest.raises(EncoderError, match="cannot import"):
        create_encoder("no_such_module_xyz:factory", allow_import=True)


def test_grid_encoder_probe_keeps_batchnorm_stats():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.BatchNorm2d(4))
    before = net[1].running_mean.clone()
    enc = GridEncoder(net, Preprocess(17), name="bn")
    assert enc.grid_hw == (8, 8) and enc.dim == 4
    assert net.training  # mode restored
    torch.testing.assert_close(net[1].running_mean, before)


def test_grid_encoder_rejects_non_grid_output():
    with pytest.raises(EncoderError, match=r"\(B, C, H, W\)"):
        GridEncoder(torch.nn.Flatten(), Preprocess(8), name="flat")


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is installed")
def test_timm_without_timm_says_how_to_install():
    with pytest.raises(EncoderError, match=r"capgen\[timm\]"):
        create_encoder("timm:resnet18")


def test_failed_onnx_check_falls_back_on_auto_and_raises_on_onnx(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    import capgen.encoders.onnx as onnx_backend

    monkeypatch.setattr(onnx_backend, "_TOLERANCE", -1.0)  # every verification now fails
    enc = encoder("efficientnet-lite0")
    with pytest.warns(RuntimeWarning, match="falling back to the torch backend"):
        assert make_runner(enc, backend="auto", cache_dir=tmp_path).backend == "torch"
    with pytest.raises(EncoderError, match="differs from torch"):
        make_runner(enc, backend="onnx", cache_dir=tmp_path)


def test_encoder_spec_is_the_one_comparison_of_two_encoders():
    from capgen.encoder_spec import EncoderSpec
    from capgen.errors import CapgenError

    stored = {"name": "lite2", "preprocess": {"size": 260, "mean": [0.5, 0.5, 0.5]}, "dim": 1280, "grid": [9, 9]}
    built = {**stored, "preprocess": {"size": 260, "mean": (0.5, 0.5, 0.5)}, "grid": (9, 9)}  # tuples, as built
    assert EncoderSpec.of(stored) == EncoderSpec.of(built) and EncoderSpec.of(stored).diff(built) == []
    other = {**built, "dim": 1024, "split_at": 2}
    assert EncoderSpec.of(stored).diff(other) == ["dim", "split_at"]
    assert EncoderSpec.of(stored).diff(other, ("name", "dim")) == ["dim"]
    assert EncoderSpec.of(stored).differences(other, "checkpoint", "encoder") == "dim: checkpoint 1280, encoder 1024"
    assert (EncoderSpec.of(stored).kind, EncoderSpec.of(other).kind) == ("grid", "block_input")
    assert "last 2 blocks of lite2" in EncoderSpec.of(other).text()
    with pytest.raises(CapgenError, match="encoder spec must be an object"):
        EncoderSpec.of(["lite2"])
