"""Run an exported captioner (`capgen export`) with only onnxruntime, numpy and pillow: no torch.

    from capgen.runtime import Runtime
    rt = Runtime("exported/")
    print(rt.caption("photo.jpg").caption)

Command line: `python -m capgen.runtime DIR IMAGES... [--greedy | --beam-size K]`.
"""

from capgen.runtime.runtime import Caption, Runtime

__all__ = ["Caption", "Runtime"]
