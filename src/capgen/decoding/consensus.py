"""Consensus reranking: of several candidate captions, keep the one the others agree with most.

Minimum Bayes risk decoding (Kumar and Byrne 2004) with a CIDEr-D-like utility, as in the caption
reranking of Devlin et al. 2015 and Mao et al. 2015: candidate c scores
    sum over candidates c' != c of p(c') * u(c, c')
where p is the model's probability renormalised over the candidates and u averages, for n = 1..4,
the cosine similarity of the two captions' n-gram counts, times CIDEr-D's Gaussian length penalty
(capgen.data.ngrams).
A beam's best caption is often an outlier ("a man is standing on a zebra" above nine zebra
captions without a man); the consensus caption is the one most of the probability mass supports.

Works on token id lists only (no torch), so the torch decoder and the torch-free runtime share it.
"""

from __future__ import annotations

import math
from typing import Sequence, TypeVar

from capgen.data.ngrams import NgramVector, similarity

H = TypeVar("H")  # anything with .tokens (list of ids) and .score (a log-probability)


def consensus_order(hyps: Sequence[H]) -> list[H]:
    """The hypotheses sorted by expected agreement with the others (ties: the model's order)."""
    if len(hyps) < 3:  # with two, each agrees with the other equally: keep the model's choice
        return list(hyps)
    top = max(h.score for h in hyps)
    weight = [math.exp(h.score - top) for h in hyps]
    grams = [NgramVector(h.tokens) for h in hyps]
    gain = []
    for i in range(len(hyps)):
        g = sum(weight[j] * similarity(grams[i], grams[j]) for j in range(len(hyps)) if j != i)
        gain.append(g / (sum(weight) - weight[i]))
    order = sorted(range(len(hyps)), key=lambda i: (-gain[i], i))
    return [hyps[i] for i in order]


def search_config(config):
    """The DecodeConfig the search runs with when `config` asks for consensus: a beam at least as
    wide as the candidates, returning all of them."""
    if not config.consensus:
        return config
    import dataclasses

    return dataclasses.replace(
        config, beam_size=max(config.beam_size, config.consensus), n_best=config.consensus, consensus=0
    )


def rerank(hyps: list[list[H]], config) -> list[list[H]]:
    """Per image, the candidates in consensus order, cut to `config.n_best` (unchanged without consensus)."""
    if not config.consensus:
        return hyps
    return [consensus_order(h)[: config.n_best] for h in hyps]
