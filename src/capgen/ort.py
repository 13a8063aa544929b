"""ONNX Runtime session settings shared by the encoder runner and the torch-free runtime (no torch here)."""

from __future__ import annotations


def session_options(threads: int):
    """Options for a CPU inference session with `threads` intra-op threads."""
    import onnxruntime as ort

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
