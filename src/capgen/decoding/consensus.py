"""Consensus reranking: of several candidate captions, keep the one the others agree with most.

Minimum Bayes risk decoding (Kumar and Byrne 2004) with a CIDEr-D-like utility, as in the caption
reranking of Devlin et al. 2015 and Mao et al. 2015: candidate c scores
    sum over candidates c' != c of p(c') * u(c, c')
where p is the model's probability renormalised over the candidates and u averages, for n = 1..4,
the cosine similarity of the two captions' n-gram counts, times CIDEr-D's Gaussian length penalty
(capgen.data.ngrams).
A beam's best caption is often an outlier ("a man is standing on a zebra" above nine zebra
captions without a man); the consensus caption is the one most of the probability mass supports.

With references (per image, a function giving the candidates' agreement with the captions of the
photo's nearest training images, tags/neighbours.py) each candidate scores that instead: Devlin et
al. 2015's nearest-neighbour consensus, which on Flickr8k beats agreement among the candidates
(BENCHMARKS.md, "Captions of the nearest training photos").

Works on token id lists only (no torch), so the torch decoder and the torch-free runtime share it.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence, TypeVar

from capgen.data.ngrams import NgramVector, similarity

H = TypeVar("H")  # anything with .tokens (list of ids) and .score (a log-probability)
# candidates' token id lists -> their agreement with an image's references (higher is better)
Agreement = Callable[[list[Sequence[int]]], list[float]]


def consensus_order(hyps: Sequence[H], agreement: Agreement | None = None) -> list[H]:
    """The hypotheses sorted by expected agreement with the others (ties: the model's order), or,
    given `agreement`, by their agreement with the image's references."""
    if agreement is not None:
        gain = agreement([h.tokens for h in hyps])
        return [hyps[i] for i in sorted(range(len(hyps)), key=lambda i: (-gain[i], i))]
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


def rerank(hyps: list[list[H]], config, references: Sequence[Agreement | None] | None = None) -> list[list[H]]:
    """Per image, the candidates in consensus order, cut to `config.n_best` (unchanged without
    consensus). With `references` (per image, tags/neighbours.py), an image that has an Agreement is
    ranked by it, and one with None (unlike every training photo) keeps the model's order."""
    if not config.consensus:
        return hyps
    if references is None:
        return [consensus_order(h)[: config.n_best] for h in hyps]
    if len(references) != len(hyps):
        raise ValueError(f"references for {len(references)} images, candidates for {len(hyps)}")
    return [(list(h) if r is None else consensus_order(h, r))[: config.n_best] for h, r in zip(hyps, references)]
