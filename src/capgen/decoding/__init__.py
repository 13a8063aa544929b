"""Caption decoding, written once: greedy, sampling, beam search, n-best, tag guidance and consensus
over a step protocol (steps.py), in numpy.

    hyps = decode(model, pooled, grid, TokenIds.from_vocab(vocab), DecodeConfig(beam_size=3))  # a torch model
    hyps = search(step, memory, state, ids, DecodeConfig(beam_size=3))  # any Step (the runtime's ONNX graphs)
    words = vocab.decode(hyps[0][0].tokens)

`decode` (torch_step.py, the torch backend) is imported lazily: everything else here is torch-free.
"""

from capgen.decoding.config import MAX_BEAM, DecodeConfig, DecodeError, Hypothesis, TokenIds
from capgen.decoding.search import search

__all__ = ["MAX_BEAM", "DecodeConfig", "DecodeError", "Hypothesis", "TokenIds", "decode", "search"]


def __getattr__(name: str):
    if name == "decode":
        from capgen.decoding.torch_step import decode

        return decode
    raise AttributeError(f"module 'capgen.decoding' has no attribute {name!r}")
