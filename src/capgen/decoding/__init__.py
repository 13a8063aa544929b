"""Caption decoding written once against `CaptionModel.step`, batched over images (and beams).

    hyps = decode(model, pooled, grid, vocab.start_id, vocab.end_id, DecodeConfig(method="beam"))
    words = vocab.decode(hyps[0][0].tokens)
"""

from capgen.decoding.config import DecodeConfig, DecodeError, Hypothesis
from capgen.decoding.search import decode

__all__ = ["DecodeConfig", "DecodeError", "Hypothesis", "decode"]
