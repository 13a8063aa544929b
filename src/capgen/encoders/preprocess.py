"""The transform lives in torch-free capgen/preprocess.py (shared with capgen.runtime)."""

from capgen.preprocess import Preprocess

__all__ = ["Preprocess"]
