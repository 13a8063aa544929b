"""Run an exported captioner (`capgen export`) with only onnxruntime, numpy and pillow: no torch.

    from capgen.runtime import Runtime
    rt = Runtime("exported/")
    print(rt.caption("photo.jpg").caption)

Command line: `python -m capgen.runtime DIR IMAGES... [--greedy | --beam-size K]`.
"""

from capgen.result import CaptionResult
from capgen.runtime.runtime import Runtime

__all__ = ["CaptionResult", "Runtime"]
