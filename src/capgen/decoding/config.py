"""Decoding settings and results."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from capgen.errors import CapgenError

METHODS = ("greedy", "sample", "beam")


class DecodeError(CapgenError):
    """Decoding settings or inputs are invalid."""


@dataclass
class DecodeConfig:
    method: str = "beam"          # "greedy" | "sample" | "beam"
    beam_size: int = 3
    max_len: int = 20             # max words, excluding <start>/<end>
    length_penalty: float = 0.0   # GNMT alpha: beam score = logprob / ((5 + len) / 6) ** alpha; 0 = raw sum
    no_repeat_ngram: int = 0      # block repeated n-grams of this size (0 = off)
    n_best: int = 1               # hypotheses per image (beam: <= beam_size; sample: independent draws)
    temperature: float = 1.0      # sampling only, as are top_k, top_p and seed
    top_k: int = 0                # 0 = off
    top_p: float = 1.0            # nucleus sampling; 1.0 = off
    seed: int | None = None       # None = torch's global generator
    return_attention: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise DecodeError naming the first invalid setting (decode() calls this again)."""

        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise DecodeError(f"decode: {msg}")

        need(self.method in METHODS, f"method must be one of {list(METHODS)}, got {self.method!r}")
        need(self.beam_size >= 1, f"beam_size must be >= 1, got {self.beam_size}")
        need(self.max_len >= 1, f"max_len must be >= 1, got {self.max_len}")
        need(self.length_penalty >= 0, f"length_penalty must be >= 0, got {self.length_penalty}")
        need(self.no_repeat_ngram >= 0, f"no_repeat_ngram must be >= 0, got {self.no_repeat_ngram}")
        need(self.n_best >= 1, f"n_best must be >= 1, got {self.n_best}")
        if self.method == "beam":
            need(self.n_best <= self.beam_size,
                 f"n_best ({self.n_best}) must be <= beam_size ({self.beam_size})")
        if self.method == "greedy":
            need(self.n_best == 1, f"greedy decoding gives one caption; n_best must be 1, got {self.n_best} "
                                   "(use method 'beam' or 'sample')")
        need(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        need(self.top_k >= 0, f"top_k must be >= 0, got {self.top_k}")
        need(0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class Hypothesis:
    """One caption.

    tokens: word ids without <start>/<end>.
    score: sum of the model's log-probs of the words, plus that of <end> when the caption ended
      (a caption cut at max_len has no <end> term). Beam search: this sum divided by the GNMT
      length penalty ((5 + len(tokens)) / 6) ** length_penalty, the score used for ranking.
      Sampling: the model's own log-probs, before temperature / top-k / top-p.
    attention: (len(tokens), N) when requested and the model attends: row i is the attention
      while predicting tokens[i] (the step that predicts <end> is not included); else None.
    """

    tokens: list[int]
    score: float
    attention: np.ndarray | None = None
