"""Captions from caption text for objects the decoder barely knows (capgen.tags.corpus_captions)."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from capgen.decoding import DecodeConfig
from capgen.errors import TagsError
from capgen.tags.corpus_captions import FORMAT, THRESHOLD, CaptionIndex, CorpusCaptions
from capgen.tags.guide import GuideConfig
from capgen.tags.head import LinearHead
from capgen.tags.words import WordMap

WORDS = WordMap.from_lines(["0\tzebra\tzebra", "1\tgiraffe\tgiraffe", "2\ttree\ttree", "3\tdog\tdog"])


def _index(tmp_path, captions):
    path = tmp_path / "index.json"
    path.write_text(json.dumps({"format": FORMAT, "captions": captions}))
    return CaptionIndex.load(path, WORDS)


def test_choose_the_caption_naming_the_photos_tags(tmp_path):
    index = _index(tmp_path, {"zebra": ["a zebra in a field", "a zebra and a giraffe near a tree"]})
    probs = np.array([0.6, 0.3, 0.05, 0.0])
    assert index.choose(probs).caption == "a zebra and a giraffe near a tree"  # names both tags
    assert index.choose(np.array([0.6, 0.0, 0.0, 0.0])).caption == "a zebra in a field"  # the typical one
    assert index.choose(np.array([THRESHOLD / 2, 0, 0, 0])) is None  # not confident enough
    assert index.choose(np.array([0.0, 0.0, 0.0, 0.9])) is None  # a word the decoder knows


def test_bad_index_files(tmp_path):
    for content in ("[]", '{"format": "x", "captions": {}}', json.dumps({"format": FORMAT, "captions": {"zebra": []}})):
        (tmp_path / "i.json").write_text(content)
        with pytest.raises(TagsError, match="i.json"):
            CaptionIndex.load(tmp_path / "i.json", WORDS)


def test_apply_replaces_only_chosen_results_and_keeps_the_decoders_caption(tmp_path):
    index = _index(tmp_path, {"zebra": ["a zebra in a field"]})
    tagger = SimpleNamespace(words=WORDS, word_probs=lambda pooled: np.asarray(pooled))
    corpus = CorpusCaptions(tagger)
    corpus._index = index
    results = [
        SimpleNamespace(
            caption="a man on a zebra", score=-3.0, tokens=[], alternatives=[], attention=1, from_corpus=None
        ),
        SimpleNamespace(caption="a dog runs", score=-2.0, tokens=[], alternatives=[], attention=1, from_corpus=None),
    ]
    pooled = np.array([[0.9, 0, 0, 0], [0, 0, 0, 0.9]])
    corpus.apply(results, pooled, DecodeConfig(), GuideConfig())
    assert results[0].caption == "a zebra in a field" and results[0].from_corpus.word == "zebra"
    assert results[0].alternatives == [("a man on a zebra", -3.0)] and results[0].attention is None
    assert results[1].caption == "a dog runs" and results[1].from_corpus is None
    for off in (None, GuideConfig(corpus=False)):
        assert corpus.picks(pooled, DecodeConfig(), off) == [None, None]
    assert corpus.picks(pooled, DecodeConfig(method="sample"), GuideConfig()) == [None, None]


def test_the_bundled_index_loads_with_the_bundled_words():
    index = CaptionIndex.load()
    assert "zebra" in index.rare and "dog" not in index.rare and index.person is not None


def _vetting_index(tmp_path, head_hash, captions=None, weight=(1.0, 0, 0, 0), bias=0.0):
    """An index whose person head says sigmoid(pooled @ weight + bias) (default: sigmoid(x0))."""
    from capgen.tags.vetting import PersonHead

    person = PersonHead(np.array(weight, np.float32), bias, head_hash).to_dict()
    if captions is None:
        captions = {"zebra": ["a zebra in a field"], "tree": ["a man under a tree", "a tree in a park"]}
    path = tmp_path / "index.json"
    path.write_text(
        json.dumps(
            {
                "format": FORMAT,
                "rare_below": 20,
                "paired_mentions": {"zebra": 0, "tree": 500},
                "captions": captions,
                "person_head": person,
            }
        )
    )
    return CaptionIndex.load(path, WORDS)


def test_vetting_replaces_people_and_dogs_the_photo_does_not_support(tmp_path):
    from capgen.tags.vetting import DOG_BELOW, PERSON_BELOW

    head = LinearHead(np.ones((4, 4), np.float32), np.zeros(4, np.float32), "test")
    index = _vetting_index(tmp_path, head.sha256)
    tree = np.array([0.0, 0.0, 0.5, 0.0])
    assert index.choose(tree) is None  # "tree" is a word the decoder knows
    low, high = PERSON_BELOW / 2, 0.99
    pick = index.vet({"a", "man", "on", "bench"}, tree, low)
    assert pick.caption == "a tree in a park" and pick.replaced == ("person",)  # no person in the stand-in
    assert index.vet({"a", "man", "on", "bench"}, tree, high) is None  # the head sees a person
    assert index.vet({"a", "man"}, tree, None) is None  # no head for this encoder
    dog = index.vet({"a", "man", "and", "his", "dog", "run"}, tree, high)
    assert dog.replaced == ("dog",) and dog.caption == "a man under a tree"  # people are fine here
    alone = index.vet({"a", "dog", "runs"}, tree, high)  # ... but none the decoder did not write
    assert alone.replaced == ("dog",) and alone.caption == "a tree in a park"
    with_dog = tree.copy()
    with_dog[3] = DOG_BELOW * 4
    assert index.vet({"a", "dog", "runs"}, with_dog, high) is None  # the tagger sees a dog
    assert index.vet({"a", "man"}, np.array([0.0, 0.0, 0.01, 0.0]), low) is None  # nothing confident to say
    plain = index.vet({"a", "dog", "runs"}, np.array([0.0, 0.5, 0.0, 0.0]), high)  # giraffe: no captions of it
    assert plain.caption == "a photo of a giraffe" and plain.replaced == ("dog",)
    # the person head applies only to the encoder it was trained on
    pooled = np.array([[-5.0, 0, 0, 0]])
    assert index.person_probs(pooled, head)[0] < 0.01
    other = LinearHead(np.zeros((4, 4), np.float32), np.zeros(4, np.float32), "test")
    assert index.person_probs(pooled, other) is None


def test_apply_vets_the_decoders_captions(tmp_path):
    head = LinearHead(np.ones((4, 4), np.float32), np.zeros(4, np.float32), "test")
    # pooled doubles as the word probabilities here; column 0 drives the person head
    tagger = SimpleNamespace(words=WORDS, head=head, word_probs=lambda pooled: np.clip(np.asarray(pooled), 0, 1))
    corpus = CorpusCaptions(tagger)
    corpus._index = _vetting_index(tmp_path, head.sha256)
    results = [SimpleNamespace(caption="a man on a bench", score=-3.0, tokens=[], alternatives=[], from_corpus=None)]
    corpus.apply(results, np.array([[-5.0, 0.0, 0.5, 0.0]]), DecodeConfig(), GuideConfig())
    assert results[0].caption == "a tree in a park" and results[0].from_corpus.to_dict()["replaced"] == ["person"]
    kept = [SimpleNamespace(caption="a man on a bench", score=-3.0, tokens=[], alternatives=[], from_corpus=None)]
    corpus.apply(kept, np.array([[-5.0, 0.0, 0.5, 0.0]]), DecodeConfig(), GuideConfig(corpus=False))
    assert kept[0].caption == "a man on a bench"


def test_bad_person_head_and_counts(tmp_path):
    for extra in (
        {"person_head": {"weight": ["x"], "bias": 0, "tagger_head": "h"}},
        {"person_head": {"weight": [float("nan")], "bias": 0, "tagger_head": "h"}},
        {"paired_mentions": {"zebra": -1}, "rare_below": 20},
        {"paired_mentions": {"zebra": 1}, "rare_below": "20"},
    ):
        (tmp_path / "i.json").write_text(json.dumps({"format": FORMAT, "captions": {"zebra": ["a zebra"]}, **extra}))
        with pytest.raises(TagsError, match="i.json"):
            CaptionIndex.load(tmp_path / "i.json", WORDS)


def test_format_1_indexes_still_load_with_every_word_rare(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"format": "capgen-caption-index/1", "captions": {"tree": ["a tree in a park"]}}))
    index = CaptionIndex.load(path, WORDS)
    assert index.person is None and index.choose(np.array([0.0, 0.0, 0.9, 0.0])).caption == "a tree in a park"


@pytest.mark.slow
def test_the_bundled_person_head_fits_the_bundled_encoder():
    from capgen.encoders import create_encoder
    from capgen.tags.tagger import make_tagger

    assert CaptionIndex.load().person.tagger_head == make_tagger(create_encoder("efficientnet-lite2")).head.sha256


def test_the_scorer_chooses_among_the_tags_captions_what_the_photo_supports(tmp_path):
    """With a scorer (it reads the photo), a tag's captions rank by it too, never for a caption that
    names a tag the photo shows no sign of, nor a person the person head doubts, nor a typo."""
    from capgen.tags import corpus_captions, vetting

    zebras = ["a zebra in a field", "a man with a zebra", "a zebra near a tree", "a zebra and a giraffe", "a a zebra"]
    index = _index(tmp_path, {"zebra": zebras})
    tagger = SimpleNamespace(words=WORDS, word_probs=lambda pooled: np.asarray(pooled))
    corpus = CorpusCaptions(tagger)
    corpus._index = index
    liked = {"a a zebra": -0.5, "a zebra and a giraffe": -1.0, "a man with a zebra": -1.5, "a zebra near a tree": -2.0}
    calls = []

    def score(images, captions, word_probs):
        calls.append(images)
        return [np.array([liked.get(" ".join(c), -8.0) for c in caps]) for caps in captions]

    pooled = np.array([[0.6, 0.0, 0.01, 0.0], [0.0, 0.0, 0.0, 0.9]])  # giraffe 0.0: unseen; tree 0.01
    picks = corpus.picks(pooled, DecodeConfig(), GuideConfig(), ["a man on a zebra", "a dog runs"], score)
    assert corpus.picks(pooled, DecodeConfig(), GuideConfig(), ["a man on a zebra", "a dog runs"])[0].caption == (
        "a zebra in a field"  # without a scorer: the typical one
    )
    assert picks[0].caption == "a man with a zebra" and picks[1] is None  # no head here: people are not refused
    assert calls == [[0]]  # one call, for the photos that took a tag's caption
    for person_p, expected in ((vetting.AVOID_PERSON_BELOW / 2, "a zebra near a tree"), (0.99, "a man with a zebra")):
        again = [index.choose(pooled[0])]
        corpus_captions._choose_for_photo(again, index, pooled[:1], np.array([person_p]), score)
        assert again[0].caption == expected and again[0].word == "zebra"


def test_a_confident_tags_caption_replaces_the_decoders_only_when_the_scorer_finds_it_likelier(tmp_path):
    """A tag the decoder knows (not rare) keeps the decoder's caption unless the scorer, reading the
    photo, gives the tag's best caption a higher mean log-probability per word."""
    from capgen.tags.corpus_captions import COMPETE_P

    path = tmp_path / "index.json"
    captions = {"tree": ["a tree in a park", "a tall tree next to a road"]}
    path.write_text(
        json.dumps({"format": FORMAT, "rare_below": 20, "paired_mentions": {"tree": 500}, "captions": captions})
    )
    index = CaptionIndex.load(path, WORDS)
    tagger = SimpleNamespace(words=WORDS, word_probs=lambda pooled: np.asarray(pooled))
    corpus = CorpusCaptions(tagger)
    corpus._index = index

    def scorer(decoder_logp):
        def score(images, captions, word_probs):
            return [
                np.array(
                    [-3.0 if c == ("a", "tall", "tree", "next", "to", "a", "road") else -5.0 for c in caps[:-1]]
                    + [decoder_logp]
                )
                for caps in captions
            ]

        return score

    tree = np.array([[0.0, 0.0, COMPETE_P + 0.1, 0.0]])
    own = ["a man is running on a tree"]
    assert index.choose(tree[0]) is None  # not rare: no takeover
    won = corpus.picks(tree, DecodeConfig(), GuideConfig(), own, scorer(-4.0))[0]
    assert won.caption == "a tall tree next to a road" and won.to_dict()["beat_decoder"] is True
    assert corpus.picks(tree, DecodeConfig(), GuideConfig(), own, scorer(-2.0)) == [None]  # the decoder's is likelier
    unsure = np.array([[0.0, 0.0, COMPETE_P - 0.1, 0.0]])
    assert corpus.picks(unsure, DecodeConfig(), GuideConfig(), own, scorer(-4.0)) == [None]  # the tag is not confident


def test_caption_text_keeps_the_people_the_person_head_believes(tmp_path):
    """Where the decoder's caption names a person and the person head believes it (at the scene
    gate), a caption from caption text must name a person too: a rare tag's caption without people
    yields to the decoder's, and the choice for the photo is made among those with people. Where the
    decoder names no one, a rare tag's caption names no one either."""
    from capgen.tags.scenes import PERSON_GATE

    head = LinearHead(np.ones((4, 4), np.float32), np.zeros(4, np.float32), "test")

    def corpus_with(zebra_captions):
        tagger = SimpleNamespace(words=WORDS, head=head, word_probs=lambda pooled: np.asarray(pooled))
        corpus = CorpusCaptions(tagger)
        # P(person) = sigmoid(200 x (giraffe column) - 10): giraffe 0.0 -> doubted, 0.1 -> believed
        corpus._index = _vetting_index(tmp_path, head.sha256, {"zebra": zebra_captions}, (0.0, 200.0, 0.0, 0.0), -10.0)
        return corpus

    believed, doubted = np.array([[0.6, 0.1, 0.0, 0.0]]), np.array([[0.6, 0.0, 0.0, 0.0]])
    rider, grazer = ["a man is riding a zebra"], ["a zebra is grazing"]
    alone = corpus_with(["a zebra in a field"])
    assert alone._index.person_probs(believed, head)[0] >= PERSON_GATE > alone._index.person_probs(doubted, head)[0]
    assert alone.picks(believed, DecodeConfig(), GuideConfig(), rider) == [None]  # the decoder's man stays
    assert alone.picks(doubted, DecodeConfig(), GuideConfig(), rider)[0].caption == "a zebra in a field"
    assert alone.picks(believed, DecodeConfig(), GuideConfig(), grazer)[0].caption == "a zebra in a field"

    def score(images, captions, word_probs):  # likes the caption without people best
        return [np.array([-1.0 if "man" not in c else -4.0 for c in caps]) for caps in captions]

    # nor does it add a person the decoder did not write, however typical the caption with one
    typical_man = corpus_with(["a man with a zebra", "a zebra in a field"])
    assert typical_man.picks(believed, DecodeConfig(), GuideConfig(), grazer)[0].caption == "a zebra in a field"
    assert typical_man.picks(believed, DecodeConfig(), GuideConfig(), rider)[0].caption == "a man with a zebra"
    herd = corpus_with(["a group of zebras in a field", "a zebra in a field"])  # a group of zebras is no one
    assert herd.picks(believed, DecodeConfig(), GuideConfig(), grazer)[0].caption == "a group of zebras in a field"
    both, no_scenes = corpus_with(["a zebra in a field", "a man with a zebra"]), GuideConfig(scenes=False)
    assert both.picks(believed, DecodeConfig(), no_scenes, rider, score)[0].caption == "a man with a zebra"
    assert both.picks(doubted, DecodeConfig(), no_scenes, rider, score)[0].caption == "a zebra in a field"
