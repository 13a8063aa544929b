"""Reduced precision: which numeric format each part of the pipeline runs in.

    fp32  everything in float32 (the default, the reference)
    bf16  the torch parts (the decoder; the encoder only with backend torch) under bfloat16 autocast,
          where the CPU has native bf16 (AVX-512 BF16 / AMX); ONNX Runtime has no bf16 kernels on x86,
          so an ONNX encoder stays float32
    int8  the encoder in ONNX Runtime with static int8 quantization (per-channel weights, activations
          calibrated on real images), and the decoder's ONNX step with dynamic int8 quantization
          (int8 matrix weights; capgen.models.onnx.cached_int8_step); the torch decoder stays float32

A precision the machine cannot run falls back to fp32 with a warning; nothing runs in a format
that was not checked. Measured speed and quality: BENCHMARKS.md ("Reduced precision").
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from pathlib import Path

import numpy as np
import torch

from capgen.errors import EncoderError
from capgen.io import atomic_path, write_json

PRECISIONS = ("fp32", "bf16", "int8")
# Relative L2 error of the int8 grid against torch on the check batch above which the file is refused
# as broken. Measured on Flickr8k photos: ~0.18 for efficientnet-lite2 (see BENCHMARKS.md); a wrong or
# corrupted file is off by ~1.
INT8_REFUSE = 0.5


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise EncoderError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return precision


def bf16_supported() -> bool:
    """Native bf16 matmuls on this CPU (oneDNN checks for AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_bf16(precision: str) -> str:
    """'bf16' where the CPU runs it natively, else 'fp32' with a warning (emulated bf16 would be
    slower than fp32 and no more accurate)."""
    if check_precision(precision) == "bf16" and not bf16_supported():
        warnings.warn(
            "precision bf16: this CPU has no native bf16 (AVX-512 BF16 / AMX); running fp32",
            RuntimeWarning,
            stacklevel=3,
        )
        return "fp32"
    return precision


def autocast(precision: str):
    """Context for the torch parts: bf16 autocast for 'bf16', nothing otherwise."""
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def int8_path(fp32_path: Path) -> Path:
    """The quantized model lives beside the float32 export it was made from."""
    return fp32_path.with_name(fp32_path.stem + "-int8.onnx")


def quantize_int8(fp32_path: Path, calibration: np.ndarray, batch_size: int = 8) -> Path:
    """Statically quantize an exported encoder to int8, calibrated on `calibration` ((N, 3, S, S)
    preprocessed real images; a few dozen are enough). Written atomically beside the float32 file,
    with a JSON note of what it was calibrated on."""
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as e:
        raise EncoderError(f"precision int8: this onnxruntime has no quantization tools ({e})") from None
    if calibration.ndim != 4 or len(calibration) == 0:
        raise EncoderError(f"precision int8: calibration images expected as (N, 3, S, S), got {calibration.shape}")

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.it = iter({"x": calibration[i : i + batch_size]} for i in range(0, len(calibration), batch_size))

        def get_next(self):
            return next(self.it, None)

    out = int8_path(fp32_path)
    try:
        with atomic_path(out.with_suffix(".pre.onnx")) as pre, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(fp32_path), str(pre))  # shape inference + fusions, as ORT recommends
        pre = out.with_suffix(".pre.onnx")
        with atomic_path(out) as tmp:
            # QOperator with uint8 activations runs the VNNI kernels (measured ~2x fp32 here); QDQ with
            # int8 activations was no faster than fp32 and no more accurate.
            quantize_static(
                str(pre),
                str(tmp),
                Batches(),
                quant_format=QuantFormat.QOperator,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
        pre.unlink(missing_ok=True)
    except EncoderError:
        raise
    except Exception as e:  # noqa: BLE001  onnxruntime raises many types for graphs it cannot quantize
        raise EncoderError(f"{fp32_path}: int8 quantization failed ({type(e).__name__}: {e})") from None
    digest = hashlib.sha256(np.ascontiguousarray(calibration, dtype=np.float32).tobytes()).hexdigest()[:12]
    write_json(out.with_suffix(".json"), {"calibration_images": int(len(calibration)), "calibration_sha256": digest})
    return out


def relative_error(x: np.ndarray, ref: np.ndarray) -> float:
    """||x - ref|| / ||ref|| over the whole array (inf when shapes differ)."""
    if x.shape != ref.shape:
        return float("inf")
    return float(np.linalg.norm(x - ref) / max(float(np.linalg.norm(ref)), 1e-12))
