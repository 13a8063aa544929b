"""Decoding: beam 1 == greedy, beam == brute force, max_len caps, n-best, n-gram blocking,
seeded sampling, batching and attention, for every registered model."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from capgen.decoding import MAX_BEAM, DecodeConfig, DecodeError, TokenIds, decode, search
from capgen.decoding.steps import ArrayStep
from capgen.models import PAD_ID, CaptionModel, list_models
from test_models import END, IDS, START, UNK, N, build, features

MODELS = list_models()


def _numpy_step(model):
    """A torch model's step with numpy arrays in and out, as the runtime's ONNX graphs give them."""

    def step(tokens, state, memory):
        with torch.inference_mode():
            logp, new, _ = model.step(
                torch.from_numpy(tokens),
                {k: torch.from_numpy(v) for k, v in state.items()},
                {k: torch.from_numpy(v) for k, v in memory.items()},
            )
        return logp.numpy(), {k: v.numpy() for k, v in new.items()}

    return step


def numpy_decode(model, pooled, grid, ids, config=None, include=None):
    """`decode` over the numpy backend (ArrayStep: numpy memory and state, as in the runtime)."""
    with torch.inference_mode():
        memory = model.init_memory(torch.as_tensor(pooled), torch.as_tensor(grid))
        state = model.init_state(memory)
    memory, state = ({k: v.numpy() for k, v in d.items()} for d in (memory, state))
    step = ArrayStep(_numpy_step(model), model.vocab_size, model.shared_memory)
    return search(step, memory, state, ids, config, include)


# The one search, over each backend: a torch model's tensors (decode) and numpy arrays (the runtime's).
BACKENDS = {"torch": decode, "numpy": numpy_decode}


def run(model, B=3, image_seed=0, ids=IDS, backend="torch", **cfg):
    """Decode B random images; `cfg` is DecodeConfig keywords (`seed` is the sampling seed)."""
    pooled, grid = features(B, seed=image_seed)
    return BACKENDS[backend](model, pooled, grid, ids, DecodeConfig(**cfg))


def sharp(name: str, vocab_size: int) -> CaptionModel:
    """A random tiny model with confident, varied predictions, so <end> is sometimes likely."""
    model = build(name, vocab_size=vocab_size, dropout=0.0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    return model


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", MODELS)
def test_beam_size_one_equals_greedy(name, backend):
    model = sharp(name, 20)
    greedy = run(model, B=4, method="greedy", max_len=8, backend=backend)
    beam = run(model, B=4, method="beam", beam_size=1, max_len=8, backend=backend)
    for g, b in zip(greedy, beam):
        assert g[0].tokens == b[0].tokens
        assert g[0].score == pytest.approx(b[0].score, rel=1e-5)


def brute_force(model: CaptionModel, pooled, grid, words: list[int], max_len: int, alpha: float):
    """Score every caption of 1..max_len words with teacher forcing: (tokens, score) best first,
    and the largest |logit| met. Every caption pays for its <end>, also one that reaches max_len (it
    is forced to end there)."""
    scored, scale = [], 0.0
    for n in range(1, max_len + 1):
        for seq in itertools.product(words, repeat=n):
            caps = torch.tensor([[START, *seq, END]])
            with torch.no_grad():
                logits = model(pooled, grid, caps)["logits"][0]  # (n+1, V)
            logp = logits.log_softmax(-1)
            total = logp[torch.arange(n + 1), caps[0, 1:]].sum().item()
            scored.append((list(seq), total / ((5 + n) / 6) ** alpha))
            scale = max(scale, float(logits.abs().max()))
    return sorted(scored, key=lambda x: -x[1]), scale


def logp_approx(expected, scale: float, terms: int):
    """pytest.approx for sums of `terms` float32 log-probs that the search computes a step at a time
    and the reference teacher-forced: each log-softmax rounds at the scale of its logits, not of its
    result, so a near-certain caption's -0.07 carries the rounding of logits near 20 (one float32 eps
    there is 2.4e-6; a kernel's choice of blocking, which can differ from run to run, moves it)."""
    return pytest.approx(expected, rel=1e-5, abs=4 * terms * float(np.finfo(np.float32).eps) * scale)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("alpha", [0.0, 1.0])
@pytest.mark.parametrize("name", MODELS)
def test_beam_search_equals_brute_force(name, alpha, backend):
    decode = BACKENDS[backend]
    vocab_size, max_len = 6, 3  # <unk> (allowed here) and 2 words: 39 captions in all
    model = sharp(name, vocab_size).eval()
    for seed in range(3):
        pooled, grid = features(1, seed=seed)
        expected, scale = brute_force(model, pooled, grid, [3, 4, 5], max_len, alpha)
        # 32 >= the 27 candidates of the longest step: nothing is pruned, so the 5 best must match exactly.
        hyps = decode(
            model,
            pooled,
            grid,
            IDS,
            DecodeConfig(
                beam_size=32,
                n_best=5,
                max_len=max_len,
                allow_unk=True,
                length_penalty=alpha,
                no_repeat_ngram=0,
                no_repeat_words=False,
            ),
        )[0]
        assert [h.tokens for h in hyps] == [t for t, _ in expected[:5]]
        assert [h.score for h in hyps] == logp_approx([s for _, s in expected[:5]], scale, max_len + 1)
        # A small beam finds the best caption's score or a worse one, never a better one.
        small = decode(
            model,
            pooled,
            grid,
            IDS,
            DecodeConfig(
                beam_size=2,
                max_len=max_len,
                length_penalty=alpha,
                allow_unk=True,
                no_repeat_ngram=0,
                no_repeat_words=False,
            ),
        )[0][0]
        assert small.score <= expected[0][1] + 1e-4


class NeverEnds(CaptionModel):
    """Wraps a model and makes <end> impossible."""

    def __init__(self, inner: CaptionModel):
        super().__init__(inner.config, inner.vocab_size, inner.feature_dim, inner.num_regions)
        self.inner = inner

    def init_memory(self, pooled, grid):
        return self.inner.init_memory(pooled, grid)

    def init_state(self, memory):
        return self.inner.init_state(memory)

    def step(self, tokens, state, memory):
        logp, state, att = self.inner.step(tokens, state, memory)
        return logp.index_fill(1, torch.tensor([END]), float("-inf")), state, att


@pytest.mark.parametrize(
    "cfg",
    [dict(method="greedy"), dict(method="beam", beam_size=3, n_best=3), dict(method="sample", seed=0, n_best=2)],
    ids=lambda c: c["method"],
)
def test_model_that_never_ends_is_capped_at_max_len(cfg):
    model = NeverEnds(build("show_tell"))
    for hyps in run(model, max_len=5, **cfg):
        assert len(hyps) == cfg.get("n_best", 1)
        for h in hyps:
            assert len(h.tokens) == 5 and math.isfinite(h.score) and h.truncated


@pytest.mark.parametrize("name", MODELS)
def test_n_best_distinct_and_sorted(name):
    for hyps in run(sharp(name, 20), beam_size=5, n_best=4, max_len=6):
        assert len(hyps) == 4
        assert len({tuple(h.tokens) for h in hyps}) == 4
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
def test_no_repeat_ngram(method):
    model = NeverEnds(build("transformer", vocab_size=40))  # long captions: repeats are likely
    for hyps in run(model, method=method, no_repeat_ngram=1, max_len=12, seed=0):
        assert len(hyps[0].tokens) == 12 and len(set(hyps[0].tokens)) == 12
    for hyps in run(model, method=method, no_repeat_ngram=2, max_len=12, seed=0):
        bigrams = list(zip(hyps[0].tokens, hyps[0].tokens[1:]))
        assert len(set(bigrams)) == len(bigrams)


def test_no_repeat_blocking_everything_stops_the_caption():
    """<end> impossible, no word may repeat, 3 emittable words (<unk>, 4, 5): captions stop at 3 words."""
    model = NeverEnds(build("show_tell", vocab_size=6))
    for method in ("greedy", "beam"):
        for hyps in run(model, method=method, no_repeat_ngram=1, max_len=6, allow_unk=True):
            assert sorted(hyps[0].tokens) == [3, 4, 5] and hyps[0].truncated


def test_pad_start_and_unk_are_never_emitted():
    model = build("show_tell")
    with torch.no_grad():
        model.head.bias[PAD_ID] = 50.0  # make them the model's favourites
        model.head.bias[START] = 50.0
        model.head.bias[UNK] = 40.0
    for cfg in (dict(method="greedy"), dict(method="beam"), dict(method="sample", seed=0)):
        for hyps in run(model, max_len=6, **cfg):
            assert not {PAD_ID, START, UNK} & set(hyps[0].tokens)
        # research users may allow <unk>
        assert all(UNK in hyps[0].tokens for hyps in run(model, max_len=6, allow_unk=True, **cfg))


@pytest.mark.parametrize("name", MODELS)
def test_sampling_seeded_and_top_k_one_is_greedy(name):
    model = sharp(name, 20)
    a = run(model, method="sample", seed=7, n_best=3, max_len=8)
    b = run(model, method="sample", seed=7, n_best=3, max_len=8)
    assert [[h.tokens for h in x] for x in a] == [[h.tokens for h in x] for x in b]
    assert [[h.score for h in x] for x in a] == [[h.score for h in x] for x in b]
    for hyps in a:
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
    other = run(model, method="sample", seed=8, n_best=3, max_len=8)
    assert [[h.tokens for h in x] for x in a] != [[h.tokens for h in x] for x in other]
    greedy = run(model, method="greedy", max_len=8)
    top1 = run(model, method="sample", top_k=1, seed=1, max_len=8, temperature=0.7)
    assert [x[0].tokens for x in top1] == [x[0].tokens for x in greedy]
    assert [x[0].score for x in top1] == pytest.approx([x[0].score for x in greedy])
    nucleus = run(model, method="sample", top_p=1e-6, seed=2, max_len=8)  # keeps only the top token
    assert [x[0].tokens for x in nucleus] == [x[0].tokens for x in greedy]


@pytest.mark.parametrize("method", ["greedy", "beam"])
@pytest.mark.parametrize("name", MODELS)
def test_batched_equals_one_by_one(name, method):
    model = sharp(name, 20)
    pooled, grid = features(4, seed=5)
    cfg = DecodeConfig(
        method=method,
        beam_size=4,
        n_best=1 if method == "greedy" else 3,
        max_len=7,
        length_penalty=0.6,
        return_attention=True,
    )
    batched = decode(model, pooled, grid, IDS, cfg)
    for i in range(4):
        alone = decode(model, pooled[i : i + 1], grid[i : i + 1], IDS, cfg)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in batched[i]]
        # Batched matmuls round differently from single-row ones: equal up to float32 noise.
        assert [h.score for h in alone] == pytest.approx([h.score for h in batched[i]], rel=1e-5)


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
@pytest.mark.parametrize("name", MODELS)
def test_return_attention_one_row_per_word(name, method):
    model = sharp(name, 20)
    for hyps in run(
        model, method=method, return_attention=True, max_len=6, seed=0, n_best=2 if method != "greedy" else 1
    ):
        for h in hyps:
            if not model.supports_attention:
                assert h.attention is None
                continue
            assert h.attention.shape == (len(h.tokens), N)
            np.testing.assert_allclose(h.attention.sum(-1), 1.0, atol=1e-5)
    assert all(h.attention is None for hyps in run(model, max_len=4) for h in hyps)


def test_training_mode_is_restored_and_no_grad_state_leaks():
    model = build("show_attend_tell").train()
    run(model, max_len=3)
    assert model.training
    run(model.eval(), max_len=3)
    assert not model.training


@pytest.mark.parametrize(
    "cfg,match",
    [
        (dict(beam_size=0), "beam_size"),
        (dict(beam_size=2, n_best=3), "n_best"),
        (dict(method="topk"), "method"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(temperature=0), "temperature"),
        (dict(max_len=0), "max_len"),
        (dict(method="greedy", n_best=2), "n_best"),
        (dict(top_k=-1), "top_k"),
        (dict(length_penalty=-1), "length_penalty"),
        (dict(no_repeat_ngram=-2), "no_repeat_ngram"),
        (dict(beam_size=MAX_BEAM + 1), "beam_size"),
        (dict(beam_size=100000), "beam_size"),
        (dict(temperature=float("inf")), "temperature"),
    ],
)
def test_bad_config_is_a_clear_error(cfg, match):
    with pytest.raises(DecodeError, match=match):
        DecodeConfig(**cfg)


def test_bad_token_ids():
    model = build("show_tell")
    pooled, grid = features(1)
    with pytest.raises(DecodeError, match="end id 999"):
        decode(model, pooled, grid, TokenIds(PAD_ID, START, 999, UNK), DecodeConfig())
    with pytest.raises(DecodeError, match="differ"):
        decode(model, pooled, grid, TokenIds(PAD_ID, START, START, UNK), DecodeConfig())
    with pytest.raises(DecodeError, match="TokenIds"):
        decode(model, pooled, grid, START, DecodeConfig())


def test_method_rule_is_written_once():
    assert DecodeConfig(beam_size=1).method == "greedy"
    assert DecodeConfig(beam_size=3).method == "beam"
    assert DecodeConfig(beam_size=1, n_best=2, method="sample").method == "sample"
    assert DecodeConfig().no_repeat_ngram == 3 and not DecodeConfig().allow_unk


class Favours(NeverEnds):
    """Wraps a model and adds `bonus` to the log-probs of some tokens (renormalised)."""

    def __init__(self, inner, bonus: dict[int, float]):
        super().__init__(inner)
        self.bonus = torch.zeros(inner.vocab_size)
        for k, v in bonus.items():
            self.bonus[k] = v

    def step(self, tokens, state, memory):
        logp, state, att = self.inner.step(tokens, state, memory)
        return (logp + self.bonus).log_softmax(-1), state, att


@pytest.mark.parametrize(
    "cfg", [dict(method="greedy"), dict(beam_size=3, n_best=3), dict(method="sample", seed=0, n_best=3)]
)
def test_no_empty_caption_and_no_bad_ending(cfg):
    """The model loves <end> and word 4, a 'bad ending' (like "a"): captions still have words and
    never end on 4, also when cut at max_len."""
    ids = TokenIds(PAD_ID, START, END, UNK, bad_endings=(4,))
    model = Favours(build("show_tell", vocab_size=12), {END: 8.0, 4: 6.0})
    for max_len in (1, 2, 5):
        for hyps in run(model, B=4, ids=ids, max_len=max_len, **cfg):
            assert hyps
            for h in hyps:
                assert 1 <= len(h.tokens) <= max_len and h.tokens[-1] != 4


def test_cut_captions_rank_below_finished_ones():
    """A caption forced to end at max_len pays the model's log-prob of <end> there; a finished one
    is preferred. Word 4 loops forever unless <end> is taken early."""
    model = Favours(build("show_tell", vocab_size=12), {4: 5.0, END: 3.0})
    for hyps in run(model, B=3, beam_size=4, n_best=4, max_len=4, no_repeat_ngram=0):
        assert not hyps[0].truncated
        assert all(h.score <= hyps[0].score for h in hyps)
    never = run(NeverEnds(build("show_tell", vocab_size=12)), B=2, beam_size=2, max_len=3)
    assert all(h.truncated for hyps in never for h in hyps)


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
def test_no_repeat_words_blocks_repeated_content_words(method):
    ids = TokenIds(PAD_ID, START, END, UNK, function_words=(4, 5))
    model = NeverEnds(build("transformer", vocab_size=12))
    for hyps in run(model, method=method, ids=ids, no_repeat_words=True, no_repeat_ngram=0, max_len=10, seed=0):
        content = [t for t in hyps[0].tokens if t not in (4, 5)]
        assert len(content) == len(set(content))


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
def test_same_words_count_as_one_for_no_repeat_words(method):
    """ "a man is riding a bike on a bicycle": words of one SAME_WORDS group are one word."""
    ids = TokenIds(PAD_ID, START, END, UNK, function_words=(4, 5), same_words=((6, 7, 8),))
    model = NeverEnds(build("transformer", vocab_size=12))
    for hyps in run(model, method=method, ids=ids, no_repeat_words=True, no_repeat_ngram=0, max_len=10, seed=0):
        content = [6 if t in (7, 8) else t for t in hyps[0].tokens if t not in (4, 5)]
        assert len(content) == len(set(content))
    if method != "greedy":  # this model's greedy captions hold one of them anyway; its others, more
        free = run(model, method=method, ids=ids, no_repeat_words=False, no_repeat_ngram=0, max_len=10, seed=0)
        assert any(sum(t in (6, 7, 8) for t in hyps[0].tokens) > 1 for hyps in free)  # the rule blocks them
    from capgen.data.vocab import Vocabulary

    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", "a", "bike", "bicycle", "motorcycle", "man"])
    assert TokenIds.from_vocab(vocab).same_words == ((5, 6, 7),)
    with pytest.raises(DecodeError, match="outside the vocabulary"):
        TokenIds(PAD_ID, START, END, UNK, same_words=((6, 99),)).check(12)


@pytest.mark.parametrize(
    "cfg",
    [dict(method="greedy"), dict(beam_size=3, n_best=3), dict(method="sample", seed=0, n_best=3)],
    ids=["greedy", "beam", "sample"],
)
def test_min_and_max_words_are_enforced_inside_the_search(cfg):
    """A model that loves <end> still says min_words words; one that never ends stops at max_words
    (overriding max_len) on a word a caption may end on."""
    ids = TokenIds(PAD_ID, START, END, UNK, bad_endings=(4,))
    eager = Favours(build("show_tell", vocab_size=12), {END: 8.0})
    assert all(len(hyps[0].tokens) < 4 for hyps in run(eager, B=3, ids=ids, **cfg))  # so min_words has work to do
    for hyps in run(eager, B=3, ids=ids, min_words=4, no_repeat_ngram=0, **cfg):
        assert hyps and all(4 <= len(h.tokens) <= 20 and not h.truncated for h in hyps)
    looping = Favours(build("show_tell", vocab_size=12), {4: 6.0, END: -8.0})
    for hyps in run(looping, B=3, ids=ids, max_words=3, max_len=20, no_repeat_ngram=0, **cfg):
        assert hyps and all(len(h.tokens) == 3 and h.tokens[-1] != 4 for h in hyps)
    exact = run(eager, B=2, ids=ids, min_words=5, max_words=5, no_repeat_ngram=0, **cfg)
    assert all(len(h.tokens) == 5 for hyps in exact for h in hyps)


@pytest.mark.parametrize(
    "cfg,match",
    [
        (dict(min_words=0), "min_words"),
        (dict(min_words=21), "min_words"),
        (dict(max_words=3, min_words=4), "min_words"),
        (dict(max_words=0), "max_words"),
        (dict(max_words=201), "max_words"),
    ],
)
def test_bad_word_limits(cfg, match):
    with pytest.raises(DecodeError, match=match):
        DecodeConfig(**cfg)
    assert DecodeConfig(max_words=30, min_words=25).length_limit == 30


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_numpy_backend_applies_the_word_limits_like_the_torch_one(method):
    ids = TokenIds(PAD_ID, START, END, UNK, bad_endings=(4,))
    model = Favours(build("show_tell", vocab_size=12), {END: 4.0, 4: 2.0}).eval()
    pooled, grid = features(3, seed=2)
    for cfg in (
        DecodeConfig(method=method, min_words=4, max_words=6, beam_size=1 if method == "greedy" else 3),
        DecodeConfig(method=method, max_words=2, beam_size=1 if method == "greedy" else 2),
    ):
        ref = decode(model, pooled, grid, ids, cfg)
        got = numpy_decode(model, pooled, grid, ids, cfg)
        assert [[h.tokens for h in hs] for hs in got] == [[h.tokens for h in hs] for hs in ref]
        assert all(cfg.min_words <= len(h.tokens) <= cfg.length_limit for hs in got for h in hs)


def numpy_score(model, pooled, grid, ids, per_image):
    """caption_scores over the numpy backend, as the runtime runs it."""
    from capgen.decoding.score import caption_scores

    with torch.inference_mode():
        memory = model.init_memory(torch.as_tensor(pooled), torch.as_tensor(grid))
        state = model.init_state(memory)
    memory, state = ({k: v.numpy() for k, v in d.items()} for d in (memory, state))
    step = ArrayStep(_numpy_step(model), model.vocab_size, model.shared_memory)
    return caption_scores(step, memory, state, ids, per_image)


def test_sequence_scores_feed_whole_captions_in_one_call():
    """A scoring graph gets every caption once (<start> words <end>, padded with <end>) with its
    image; only the words and <end> count, so a longer neighbour's padding does not."""
    from capgen.decoding.score import sequence_scores

    calls = []

    def token_logp(captions, image_index):
        calls.append((captions.tolist(), image_index.tolist()))
        return -np.broadcast_to(np.arange(1.0, captions.shape[1]), (len(captions), captions.shape[1] - 1))

    got = sequence_scores(token_logp, IDS, [[[5, 6]], [], [[7], [8, 9, 10]]])
    S, E = IDS.start, IDS.end
    assert calls == [([[S, 5, 6, E, E], [S, 7, E, E, E], [S, 8, 9, 10, E]], [0, 2, 2])]
    # position t costs t + 1: a caption of n words sums 1..n+1 over its n words and <end>
    assert [g.tolist() for g in got] == [[-2.0], [], [-1.5, -2.5]]
    assert sequence_scores(token_logp, IDS, [[], []])[1].shape == (0,) and len(calls) == 1


@pytest.mark.parametrize("name", MODELS)
def test_caption_scores_are_the_searchs_own_log_probabilities(name):
    """Teacher-forced scoring of the greedy captions gives the search's score over the words and
    <end>, per word, on both backends; a caption scores the same alone or beside others, and images
    with more, fewer or no captions are scored in one call."""
    from capgen.decoding.torch_step import score

    model = sharp(name, 20)
    pooled, grid = features(3, seed=3)
    hyps = run(model, B=3, image_seed=3, method="greedy", max_len=8)
    greedy = [h[0].tokens for h in hyps]
    per_image = [[greedy[0], [5, 6, 7], [8]], [], [greedy[2]]]
    for fn in (score, numpy_score):
        got = fn(model, pooled, grid, IDS, per_image)
        assert [len(g) for g in got] == [3, 0, 1]
        for b, k in ((0, 0), (2, 0)):
            assert got[b][k] * (len(greedy[b]) + 1) == pytest.approx(hyps[b][0].score, rel=1e-5)
        alone = fn(model, pooled[:1], grid[:1], IDS, [[[8]]])[0][0]
        assert alone == pytest.approx(got[0][2], rel=1e-5)
    assert [len(g) for g in score(model, pooled[:2], grid[:2], IDS, [[], []])] == [0, 0]
