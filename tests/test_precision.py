"""--precision fp32|bf16|int8: plumbing, int8 calibration and caching, and the fallbacks (tiny encoders)."""

import json
import warnings

import numpy as np
import pytest

from capgen import Captioner
from capgen.encoders import create_encoder, make_runner
from capgen.encoders import precision as precision_module
from capgen.encoders.precision import relative_error
from capgen.errors import EncoderError
from conftest import one_line_error

pytestmark = pytest.mark.usefixtures("one_torch_thread")
pytest.importorskip("onnxruntime.quantization")


def _images(n: int = 8, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)  # (n, 3, S, S) in the normalised range, like preprocessed photos
    return rng.random((n, 3, size, size), dtype=np.float32) * 2 - 1


def test_unknown_precision_is_refused(tiny_encoder):
    with pytest.raises(EncoderError, match="precision 'fp8'"):
        make_runner(create_encoder(tiny_encoder, allow_import=True), precision="fp8")


def test_int8_is_calibrated_once_then_cached_and_checked(tiny_encoder, tmp_path):
    enc = create_encoder(tiny_encoder, allow_import=True)
    with pytest.raises(EncoderError, match="no int8 model.*calibrat"):
        make_runner(enc, precision="int8", cache_dir=tmp_path)
    with pytest.raises(EncoderError, match="ONNX Runtime"):
        make_runner(enc, backend="torch", precision="int8", cache_dir=tmp_path, calibration=_images())
    runner = make_runner(enc, precision="int8", cache_dir=tmp_path, calibration=_images())
    assert runner.precision == "int8" and runner.path.name.endswith("-int8.onnx")
    note = json.loads(runner.path.with_suffix(".json").read_text())
    assert note["calibration_images"] == 8
    x = _images(4)
    ref = make_runner(enc, backend="torch")(x)[1]
    assert relative_error(runner(x)[1], ref) < 0.1  # a one-conv encoder quantizes well
    again = make_runner(enc, precision="int8", cache_dir=tmp_path)  # no calibration: the cached file
    np.testing.assert_array_equal(again(x)[1], runner(x)[1])
    runner.path.write_bytes(b"not an onnx model")
    with pytest.raises(EncoderError, match=str(runner.path.name)):
        make_runner(enc, precision="int8", cache_dir=tmp_path)


def test_bf16_without_native_support_falls_back_to_fp32_with_a_warning(tiny_run, monkeypatch):
    monkeypatch.setattr(precision_module, "bf16_supported", lambda: False)
    with pytest.warns(RuntimeWarning, match="no native bf16"):
        cap = Captioner.from_pretrained(
            tiny_run.checkpoints["show_tell"], encoder=tiny_run.encoder, precision="bf16", threads=1
        )
    assert cap.precision == "fp32" and cap.info()["precision"] == {"encoder": "fp32", "decoder": "fp32"}


def test_bf16_captions_and_features_stay_close_to_fp32(tiny_run, monkeypatch):
    monkeypatch.setattr(precision_module, "bf16_supported", lambda: True)  # autocast also runs emulated
    ckpt = tiny_run.checkpoints["show_attend_tell"]
    fp32 = Captioner.from_pretrained(ckpt, encoder=tiny_run.encoder, backend="torch")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bf16 = Captioner.from_pretrained(ckpt, encoder=tiny_run.encoder, backend="torch", precision="bf16")
    assert bf16.info()["precision"] == {"encoder": "bf16", "decoder": "bf16"}
    x = _images(4)
    pooled, grid = bf16.runner(x)
    assert grid.dtype == np.float32 and relative_error(grid, fp32.runner(x)[1]) < 0.02
    images = [r.path for r in tiny_run.prepared.records("test")[:3]]
    results = bf16.caption(images, beam_size=3)
    assert all(r.caption and np.isfinite(r.score) for r in results)


def test_cli_int8_without_a_calibrated_model_is_one_clear_line(tiny_run, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("CAPGEN_CACHE", str(tmp_path / "cache"))
    image = tiny_run.prepared.records("test")[0].path
    one_line_error(
        capsys,
        [
            "caption",
            image,
            "--model",
            tiny_run.checkpoints["show_tell"],
            "--encoder",
            tiny_run.encoder,
            "--precision",
            "int8",
        ],
        "no int8 model",
        "--calibration",
    )


def test_extract_int8_calibrates_on_training_images_and_marks_the_cache(prepared, tiny_encoder, tmp_path, monkeypatch):
    from capgen.features import extract_features

    monkeypatch.setenv("CAPGEN_CACHE", str(tmp_path / "cache"))
    extract_features(prepared, tmp_path / "f8", encoder=tiny_encoder, precision="int8", progress=False)
    job = json.loads((tmp_path / "f8" / "meta.json").read_text())
    assert job["precision"] == "int8"
    assert list((tmp_path / "cache").rglob("*-int8.onnx"))
    fp32 = extract_features(prepared, tmp_path / "f32", encoder=tiny_encoder, progress=False)
    assert "precision" not in json.loads((fp32.out / "meta.json").read_text())
