"""Caption decoding written once against `CaptionModel.step`, batched over images (and beams).

    hyps = decode(model, pooled, grid, TokenIds.from_vocab(vocab), DecodeConfig(beam_size=3))
    words = vocab.decode(hyps[0][0].tokens)

`decode` (torch) is imported lazily, so `capgen.decoding.config` and `capgen.decoding.rules` stay
usable without torch (capgen.runtime uses them).
"""

from capgen.decoding.config import MAX_BEAM, DecodeConfig, DecodeError, Hypothesis, TokenIds

__all__ = ["MAX_BEAM", "DecodeConfig", "DecodeError", "Hypothesis", "TokenIds", "decode"]


def __getattr__(name: str):
    if name == "decode":
        from capgen.decoding.search import decode

        return decode
    raise AttributeError(f"module 'capgen.decoding' has no attribute {name!r}")
