"""Caption decoding written once against `CaptionModel.step`, batched over images (and beams).

    hyps = decode(model, pooled, grid, TokenIds.from_vocab(vocab), DecodeConfig(beam_size=3))
    words = vocab.decode(hyps[0][0].tokens)
"""

from capgen.decoding.config import MAX_BEAM, DecodeConfig, DecodeError, Hypothesis, TokenIds
from capgen.decoding.search import decode

__all__ = ["MAX_BEAM", "DecodeConfig", "DecodeError", "Hypothesis", "TokenIds", "decode"]
