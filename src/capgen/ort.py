"""ONNX Runtime sessions as every part of capgen opens them: the encoder runner, the decoder graphs
and the torch-free runtime (no torch here)."""

from __future__ import annotations

import logging

# More compute threads than this are refused: 100,000 ONNX Runtime threads crash the process
# (SIGSEGV), thousands of Python threads hang it, and no CPU has use for them.
MAX_THREADS = 256


def check_threads(threads, what: str = "threads") -> int:
    """`threads` if a whole number from 1 to MAX_THREADS, else CapgenError naming `what`."""
    from capgen.errors import CapgenError

    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise CapgenError(f"{what}: expected a whole number of threads from 1 to {MAX_THREADS}, got {threads!r}")
    return threads


def session_options(threads: int):
    """Options for a CPU inference session with `threads` intra-op threads."""
    import onnxruntime as ort

    check_threads(threads)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Measured on 2 cores: sequential execution beats ORT_PARALLEL / inter_op=2 (~92 vs ~45 img/s).
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ORT's idle threads spin by default and then steal the cores from the work that runs right after
    # (the torch decoder after the encoder: beam-3 captioning of one photo got slower; BENCHMARKS.md).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def open_session(path, threads: int, error: type[Exception] | None = None):
    """A CPU inference session for `path` with `session_options(threads)`; `error` (default
    ExportError) naming the file when ONNX Runtime cannot load it."""
    import onnxruntime as ort

    from capgen.errors import ExportError

    try:
        return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001  onnxruntime raises its own types for unreadable or invalid graphs
        raise (error or ExportError)(
            f"{path}: ONNX Runtime cannot load it ({type(e).__name__}: {str(e)[:120]})"
        ) from None


def quantize_dynamic_int8(src, dst, reduce_range: bool = False) -> None:
    """Write `src` with its MatMul weights in int8 (dynamic quantization: activations are quantized
    per call, so nothing to calibrate). For the decoder step, whose small matrices are read once
    per word: 4x fewer weight bytes to read, ~2x faster at beam 3 (BENCHMARKS.md). reduce_range:
    7-bit weights, so that x86 CPUs without VNNI (whose u8 x s8 kernels add pairs of products in
    16 bits) cannot saturate: for a graph shipped to every machine rather than made on it."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from capgen.errors import ExportError

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs advice ("consider pre-processing") on the root logger
    try:
        quantize_dynamic(
            str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"], reduce_range=reduce_range
        )
    except Exception as e:  # noqa: BLE001  the quantizer raises many types for graphs it cannot take
        raise ExportError(
            f"{src}: ONNX Runtime cannot quantize it to int8 ({type(e).__name__}: {str(e)[:120]})"
        ) from None
    finally:
        root.setLevel(level)
