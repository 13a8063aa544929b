"""Consensus reranking against the captions of the nearest training photos (capgen.tags.neighbours,
capgen.decoding.consensus) and the n-gram agreement behind it (capgen.data.ngram_table)."""

import json
import math
import random
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from capgen.data.ngram_table import NgramTable
from capgen.data.ngrams import NgramVector, similarity
from capgen.decoding import DecodeConfig
from capgen.decoding.consensus import rerank
from capgen.decoding.flags import add_guide_args, guide_config
from capgen.errors import TagsError
from capgen.tags import neighbours
from capgen.tags.corpus_captions import CorpusCaptions
from capgen.tags.guide import GuideConfig
from capgen.tags.neighbours import FORMAT, NeighbourCaptions, encode_array

DIM, D = 16, 4
CAPTIONS = [
    ["a dog runs on the grass", "a brown dog running on grass", "a dog plays in a field"],
    ["a man rides a bike", "a cyclist rides down a road", "a man on a bicycle"],
    ["a child swims in a pool", "a girl in the water", "a kid swimming in a pool"],
]


def _index(tmp_path, **changes):
    """An index of three photos whose projected features are three axes of D dims."""
    rng = np.random.default_rng(0)
    projection = np.linalg.qr(rng.normal(size=(DIM, D)))[0]  # orthonormal columns
    features = np.eye(D)[: len(CAPTIONS)]
    data = {
        "format": FORMAT,
        "dim": DIM,
        "projected_dim": D,
        "tagger_head": "head-sha",
        "mean": encode_array(np.zeros(DIM)),
        "projection": encode_array(projection),
        "features": encode_array(features),
        "captions": CAPTIONS,
        **changes,
    }
    path = tmp_path / "neighbours.json"
    path.write_text(json.dumps(data))
    return path, projection


def _photo(projection, axis):
    """Pooled features that project onto `axis` (the training photo of that index)."""
    return (projection[:, axis] * 3.0)[None, :]


def _hyps(*captions):
    return [SimpleNamespace(tokens=c.split(), score=-float(i)) for i, c in enumerate(captions)]


def test_the_table_agrees_as_the_weighted_mean_tf_idf_similarity():
    """NgramTable against NgramVector + similarity computed directly: repeated and unknown n-grams,
    one-word captions, candidates with words the corpus lacks."""
    rng = random.Random(1)
    words = "a dog man runs on the grass in field red ball".split()
    caps = [tuple(rng.choice(words) for _ in range(rng.randint(1, 12))) for _ in range(60)]
    docs = [i // 5 for i in range(60)]
    table = NgramTable(caps, docs)
    df = Counter(g for d in set(docs) for g in {g for c, e in zip(caps, docs) if e == d for g in _grams(c)})

    def idf(g):
        return math.log(12) - math.log(max(df.get(g, 1), 1))

    for _ in range(30):
        cands = [tuple(rng.choice(words + ["zebra"]) for _ in range(rng.randint(1, 10))) for _ in range(5)]
        rows = np.array(rng.sample(range(60), 20))
        weights = np.array([rng.uniform(0.1, 3) for _ in rows])
        for c, got in zip(cands, table.agreement(cands, rows, weights)):
            want = sum(w * similarity(NgramVector(c, idf), NgramVector(caps[r], idf)) for r, w in zip(rows, weights))
            assert got == pytest.approx(want / weights.sum(), rel=1e-9, abs=1e-12)
    assert table.agreement([("zebra", "zebra")], rows, weights) == [0.0]  # nothing in common
    assert table.agreement([("a", "dog")], rows, np.zeros(len(rows))) == [0.0]


def _grams(c):
    for n in range(1, 5):
        for i in range(len(c) - n + 1):
            yield tuple(c[i : i + n])


def test_a_photo_like_a_training_photo_gets_its_captions_and_one_unlike_them_none(tmp_path, monkeypatch):
    path, projection = _index(tmp_path)
    index = NeighbourCaptions.load(path)
    monkeypatch.setattr(neighbours, "NEIGHBOURS", 1)
    far = np.zeros((1, DIM))
    far[0] = projection[:, 3]  # the 4th axis: no training photo lies there
    near, unlike = index.references(np.concatenate([_photo(projection, 1), far]), str.split)
    assert unlike is None  # below GATE: keeps the model's order
    bike, dog, exact = near(["a man rides a bicycle", "two dogs play in the grass", CAPTIONS[1][0]])
    assert dog == 0.0 < bike < exact


def test_rerank_takes_the_candidate_the_neighbours_agree_with(tmp_path, monkeypatch):
    path, projection = _index(tmp_path)
    index = NeighbourCaptions.load(path)
    monkeypatch.setattr(neighbours, "NEIGHBOURS", 1)
    photos = np.concatenate([_photo(projection, 0), np.zeros((1, DIM)) + projection[:, 3]])
    refs = index.references(photos, list)
    hyps = [_hyps("a man is standing on the grass", "a dog runs on the grass", "a red car")] * 2
    config = DecodeConfig(consensus=3)
    first, second = rerank(hyps, config, refs)
    assert " ".join(first[0].tokens) == "a dog runs on the grass"
    assert second == [hyps[1][0]]  # no references: the model's best, cut to n_best
    with pytest.raises(ValueError, match="references for 2 images"):
        rerank(hyps[:1], config, refs)


def test_the_search_widens_only_where_the_rerank_applies(tmp_path):
    path, _ = _index(tmp_path)
    corpus = CorpusCaptions(SimpleNamespace(head=SimpleNamespace(sha256="head-sha")))
    corpus._neighbours = NeighbourCaptions.load(path)
    pooled = np.zeros((2, DIM))
    wide, refs = corpus.search(pooled, DecodeConfig(), GuideConfig(), lambda ids: ids)
    assert wide.consensus == neighbours.CANDIDATES and wide.n_best == 1 and len(refs) == 2
    assert corpus.search(pooled, DecodeConfig(beam_size=8, n_best=2), GuideConfig(), str)[0].consensus == 8
    for config, guide in [
        (DecodeConfig(), GuideConfig(neighbours=False)),
        (DecodeConfig(), None),  # --no-guide: the model alone
        (DecodeConfig(beam_size=1), GuideConfig()),  # greedy
        (DecodeConfig(method="sample"), GuideConfig()),
        (DecodeConfig(consensus=4), GuideConfig()),  # the candidates' own consensus, as asked
    ]:
        assert corpus.search(pooled, config, guide, str) == (config, None)
    other = CorpusCaptions(SimpleNamespace(head=SimpleNamespace(sha256="another encoder")))
    other._neighbours = corpus._neighbours
    assert other.search(pooled, DecodeConfig(), GuideConfig(), str) == (DecodeConfig(), None)
    assert CorpusCaptions(None).search(pooled, DecodeConfig(), GuideConfig(), str) == (DecodeConfig(), None)


def test_a_photo_whose_caption_must_name_a_tag_keeps_the_beams_order(tmp_path, monkeypatch):
    path, projection = _index(tmp_path)
    monkeypatch.setattr(neighbours, "NEIGHBOURS", 1)
    corpus = CorpusCaptions(SimpleNamespace(head=SimpleNamespace(sha256="head-sha")))
    corpus._neighbours = NeighbourCaptions.load(path)
    pooled = np.concatenate([_photo(projection, 0)] * 3)  # the dog photo's neighbourhood
    cat, dog = SimpleNamespace(include=("cat",)), SimpleNamespace(include=("dog",))  # Guidance: tag word ids
    _, refs = corpus.search(pooled, DecodeConfig(), GuideConfig(), list, [None, cat, dog])
    assert refs[0] is not None and refs[2] is not None  # unguided, or guided by a tag the neighbours name
    assert refs[1] is None  # no neighbour caption names a cat
    refs = refs[:2]
    hyps = [_hyps("a cat is sitting on a ramp", "a dog runs on the grass", "a red car")] * 2
    first, second = rerank(hyps, DecodeConfig(consensus=3), refs)
    assert " ".join(first[0].tokens) == "a dog runs on the grass"  # the neighbours' choice
    assert second == [hyps[1][0]]  # the guided photo: the model's best


def test_no_neighbour_captions_turns_only_the_rerank_off():
    import argparse

    p = argparse.ArgumentParser()
    add_guide_args(p, GuideConfig())
    assert guide_config(p.parse_args([])) == GuideConfig()
    assert guide_config(p.parse_args(["--no-neighbour-captions"])) == GuideConfig(neighbours=False)
    assert guide_config(p.parse_args(["--no-neighbour-captions"])).to_dict()["neighbours"] is False


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"format": "other/1"}, "not capgen neighbour captions"),
        ({"captions": [["a dog"], []]}, "'captions' must be"),
        ({"dim": True}, "'dim' must be"),
        ({"tagger_head": 3}, "'tagger_head' must be"),
        ({"projected_dim": 99}, "'projected_dim' must be"),
        ({"features": "not base64!"}, "'features' is not base64"),
        ({"features": encode_array(np.zeros((2, D)))}, r"'features' must hold float16 \(3, 4\)"),
        ({"mean": encode_array(np.full(DIM, np.inf))}, "'mean' holds a non-finite number"),
        ({"projection": 5}, "'projection' must be base64 text"),
    ],
)
def test_a_bad_index_is_refused_by_name(tmp_path, changes, message):
    path, _ = _index(tmp_path, **changes)
    with pytest.raises(TagsError, match=message) as e:
        NeighbourCaptions.load(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_the_bundled_index_reads_back():
    index = NeighbourCaptions.load()
    assert index.features.shape == (len(index.captions), index.projection.shape[1])
    assert np.allclose(np.linalg.norm(index.features, axis=1), 1.0, rtol=1e-2)
