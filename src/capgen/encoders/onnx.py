"""Inference runners for feature extraction: plain torch, or ONNX Runtime (~6x faster on CPU here).

The ONNX model is exported once per encoder weights into a cache folder and checked against torch
every time a runner is made, so a stale, corrupt or mis-exported file can never produce features.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from capgen.encoders.base import ImageEncoder, pool_grid
from capgen.encoders.flops import count_flops  # noqa: F401  re-exported for benchmark code
from capgen.encoders.precision import (
    INT8_REFUSE,
    autocast,
    check_precision,
    int8_path,
    quantize_int8,
    relative_error,
    resolve_bf16,
)
from capgen.errors import EncoderError
from capgen.io import atomic_path, cache_root

BACKENDS = ("auto", "torch", "onnx")
# Bump when the exported graph changes, so old cache files are not reused.
_EXPORT_VERSION = 1
# Grid max abs difference tolerated between ONNX Runtime and torch (measured: ~4e-5).
_TOLERANCE = 1e-3


class EncoderRunner(Protocol):
    """What feature extraction calls: (B, 3, S, S) float32 -> pooled (B, dim), grid (B, H*W, dim)."""

    spec: dict
    backend: str
    precision: str  # what the encoder actually runs in: fp32, bf16 or int8

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class TorchRunner:
    """Runs the encoder itself under torch.inference_mode."""

    backend = "torch"

    def __init__(self, encoder: ImageEncoder, precision: str = "fp32"):
        self.encoder = encoder.eval()
        self.spec = encoder.spec()
        self.precision = precision  # fp32 or bf16 (autocast)

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode(), autocast(self.precision):
            pooled, grid = self.encoder(torch.from_numpy(_as_input(x)))  # (B, dim), (B, H*W, dim)
        return pooled.float().numpy(), grid.float().numpy()


class OnnxRunner:
    """Runs an exported encoder with ONNX Runtime."""

    backend = "onnx"

    def __init__(self, session, spec: dict, path: Path, precision: str = "fp32"):
        self.session = session
        self.spec = spec
        self.path = path
        self.precision = precision

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pooled, grid = self.session.run(["pooled", "grid"], {"x": _as_input(x)})
        return pooled, grid  # (B, dim), (B, H*W, dim)


def make_runner(
    encoder: ImageEncoder,
    backend: str = "auto",
    threads: int | None = None,
    cache_dir: str | Path | None = None,
    precision: str = "fp32",
    calibration: np.ndarray | None = None,
) -> EncoderRunner:
    """Inference runner for `encoder` (put in eval mode).

    backend "torch"; "onnx" (export to the cache, verify, else EncoderError); "auto" (ONNX for
    encoders known to export when onnxruntime is installed, torch otherwise or if ONNX fails).
    precision (capgen.encoders.precision): "fp32"; "bf16" (torch backend only; the ONNX encoder stays
    fp32, and a CPU without native bf16 falls back to fp32 with a warning); "int8" (ONNX Runtime
    only). int8 uses the quantized model cached beside the fp32 export; `calibration`, preprocessed
    real images (N, 3, S, S), (re)makes it. Without either, EncoderError says how to make one.
    """
    if backend not in BACKENDS:
        raise EncoderError(f"backend {backend!r}: expected one of {list(BACKENDS)}")
    if threads is not None and threads < 1:
        raise EncoderError(f"threads: expected a positive integer, got {threads}")
    precision = resolve_bf16(check_precision(precision))
    encoder.eval()
    if threads:
        torch.set_num_threads(threads)  # also speeds up the torch check of the ONNX export
    if precision == "int8":
        if backend == "torch":
            raise EncoderError("precision int8 runs the encoder in ONNX Runtime; use --backend onnx or auto")
        return _int8_runner(encoder, threads, cache_root(cache_dir), calibration)
    if backend == "torch" or (backend == "auto" and not (encoder.onnx_exportable and _has_onnxruntime())):
        return TorchRunner(encoder, precision)
    try:
        return _onnx_runner(encoder, threads, cache_root(cache_dir))
    except EncoderError as e:
        if backend == "onnx":
            raise
        warnings.warn(f"{e}; falling back to the torch backend", RuntimeWarning, stacklevel=2)
        return TorchRunner(encoder, precision)


def onnx_path(encoder: ImageEncoder, cache_dir: str | Path | None = None) -> Path:
    """Cache file for `encoder`: onnx/<name>-<hash of spec and weights>.onnx."""
    safe_name = re.sub(r"[^A-Za-z0-9._-]+", "_", encoder.name)
    return cache_root(cache_dir) / "onnx" / f"{safe_name}-{_weights_hash(encoder)}.onnx"


def _onnx_runner(encoder: ImageEncoder, threads: int | None, cache_root: Path) -> OnnxRunner:
    if not _has_onnxruntime():
        raise EncoderError("backend onnx: onnxruntime is not installed; run `pip install onnxruntime`")
    path = onnx_path(encoder, cache_root)
    if path.exists():
        try:
            return _load_verified(encoder, path, threads)
        except EncoderError:
            pass  # corrupt, truncated or stale: export again below
    _export(encoder, path)
    return _load_verified(encoder, path, threads)


def _export(encoder: ImageEncoder, path: Path) -> None:
    """Export to `path` atomically: a killed export never leaves a file that loads."""
    s = encoder.preprocess.size
    wrapper = _PooledGrid(encoder).eval()
    try:
        with atomic_path(path) as tmp, warnings.catch_warnings():
            # The legacy exporter warns about its own deprecation and constant folding; not actionable.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                (torch.zeros(2, 3, s, s),),  # batch 2 so the trace does not specialise on 1
                str(tmp),
                opset_version=17,
                dynamo=False,
                input_names=["x"],
                output_names=["pooled", "grid"],
                dynamic_axes={"x": {0: "batch"}, "pooled": {0: "batch"}, "grid": {0: "batch"}},
            )
    except Exception as e:
        raise EncoderError(f"encoder {encoder.name}: ONNX export failed ({type(e).__name__}: {e})") from None
    finally:
        # Export restores the wrapper's mode, and a wrapper's mode propagates to the encoder.
        encoder.eval()


def _int8_runner(
    encoder: ImageEncoder, threads: int | None, cache_root: Path, calibration: np.ndarray | None
) -> OnnxRunner:
    fp32 = _onnx_runner(encoder, threads, cache_root)  # the verified float32 export it is made from
    path = int8_path(fp32.path)
    if calibration is not None:
        quantize_int8(fp32.path, np.ascontiguousarray(calibration, dtype=np.float32))
    elif not path.is_file():
        raise EncoderError(
            f"precision int8: no int8 model of {encoder.name} in {path.parent} yet; make it once "
            "with `capgen extract PREPARED --precision int8` (calibrates on the training "
            "images) or pass --calibration with a folder of typical photos"
        )
    runner = OnnxRunner(_session(path, threads), encoder.spec(), path, precision="int8")
    x = _check_batch(encoder)
    try:
        _, grid = runner(x)
    except Exception as e:  # noqa: BLE001
        raise EncoderError(
            f"{path}: int8 ONNX model fails to run ({type(e).__name__}); delete it to remake it"
        ) from None
    err = relative_error(grid, TorchRunner(encoder)(x)[1])
    if not err < INT8_REFUSE:
        raise EncoderError(
            f"{path}: int8 grid is off by {err:.2f} relative to torch (expected < {INT8_REFUSE}); "
            "delete it and calibrate again"
        )
    return runner


def _session(path: Path, threads: int | None):
    from capgen.ort import open_session

    return open_session(path, threads or os.cpu_count() or 1, EncoderError)


def _check_batch(encoder: ImageEncoder) -> np.ndarray:
    s = encoder.preprocess.size
    g = torch.Generator().manual_seed(0)
    return (torch.rand(2, 3, s, s, generator=g) * 2 - 1).numpy()  # (2, 3, S, S) in the normalised range


def _load_verified(encoder: ImageEncoder, path: Path, threads: int | None) -> OnnxRunner:
    """Open `path` and check it against torch on a small deterministic batch."""
    runner = OnnxRunner(_session(path, threads), encoder.spec(), path)
    x = _check_batch(encoder)
    try:
        _, grid = runner(x)
    except Exception as e:
        raise EncoderError(f"{path}: ONNX model fails to run ({type(e).__name__})") from None
    _, ref = TorchRunner(encoder)(x)
    diff = float(np.abs(grid - ref).max()) if grid.shape == ref.shape else float("inf")
    if not diff < _TOLERANCE:
        raise EncoderError(f"{path}: ONNX grid differs from torch by {diff:.3g}, expected < {_TOLERANCE}")
    return runner


class _PooledGrid(nn.Module):
    """Export wrapper: the graph outputs both pooled and grid, already in the runner's layout."""

    def __init__(self, encoder: ImageEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return pool_grid(self.encoder.forward_grid(x))  # (B, dim), (B, H*W, dim)


def _weights_hash(encoder: ImageEncoder) -> str:
    return weights_hash(encoder, json.dumps({"spec": encoder.spec(), "export": _EXPORT_VERSION}, sort_keys=True), 12)


def weights_hash(module: nn.Module, header: str, length: int) -> str:
    """Hex digest of `header` and every tensor of `module`'s state dict (names, dtypes, shapes, bytes):
    the key of an exported graph in the cache (the encoder's here, the decoder's in models/onnx)."""
    h = hashlib.sha256(header.encode())
    for key, value in module.state_dict().items():
        t = value.detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:length]


def _has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _as_input(x: np.ndarray) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[1] != 3:
        got = x.shape if isinstance(x, np.ndarray) else type(x).__name__
        raise EncoderError(f"encoder input: expected a float32 array (B, 3, S, S), got {got}")
    return np.ascontiguousarray(x, dtype=np.float32)
