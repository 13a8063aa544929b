"""Captions of similar scenes competing with the decoder's (capgen.tags.scenes), and the n-gram
agreement they are ranked by (capgen.data.ngrams)."""

import json
import random
from types import SimpleNamespace

import numpy as np
import pytest

from capgen.data.ngrams import NgramVector, agreements, similarity
from capgen.decoding import DecodeConfig
from capgen.errors import TagsError
from capgen.tags import vetting
from capgen.tags.corpus_captions import FORMAT as INDEX_FORMAT
from capgen.tags.corpus_captions import CaptionIndex, CorpusCaptions
from capgen.tags.guide import GuideConfig
from capgen.tags.neighbours import NeighbourCaptions
from capgen.tags.scenes import (
    DOG_GATE,
    DOG_MIN_P,
    DOUBTED_PERSON,
    FAMILIAR_GATE,
    FORMAT,
    OWN_BONUS,
    PERSON_GATE,
    SHORTLIST,
    WEIGHT,
    Candidates,
    SceneCaptions,
    best,
)
from capgen.tags.vetting import PERSON_BELOW, PersonHead
from capgen.tags.words import WordMap

WORDS = WordMap.from_lines(["0\tzebra\tzebra", "1\tgiraffe\tgiraffe", "2\ttree\ttree", "3\tdog\tdog"])
ANY_LENGTH = (1, 100)  # words: a caption of any length in these scenes
SCENES = [
    [
        "a zebra standing in a field",
        "a zebra grazing in a field",
        "two zebras in a grassy field",
        "an animal in the sun",
    ],
    ["a zebra and a giraffe near a tree", "a giraffe standing next to a zebra"],
    ["a man feeding a zebra at the zoo", "a man and a zebra"],
    ["a dog running in a field", "a dog in the grass"],
    ["a tree in a park", "a large tree next to a road"],
]


def _scenes(tmp_path, scenes=SCENES, **fields) -> SceneCaptions:
    path = tmp_path / "scenes.json"
    path.write_text(json.dumps({"format": FORMAT, "documents": len(scenes), "scenes": scenes, "df": {}, **fields}))
    return SceneCaptions.load(path, WORDS)


def test_agreements_are_the_weighted_pairwise_similarities():
    rng = random.Random(0)
    captions = [
        [rng.choice("a the zebra dog field runs in on".split()) for _ in range(rng.randint(1, 9))] for _ in range(12)
    ]
    vectors = [NgramVector(c, lambda g: 1.0 + len(g) / 3) for c in captions]
    weights = [rng.random() + 0.1 for _ in captions]
    want = [
        sum(w * similarity(v, o, length_penalty=False) for o, w in zip(vectors, weights) if o is not v)
        / (sum(weights) - weights[i])
        for i, v in enumerate(vectors)
    ]
    assert agreements(vectors, weights) == pytest.approx(want, rel=1e-9)
    assert similarity(vectors[0], vectors[0], length_penalty=False) == pytest.approx(1.0)


def test_candidates_come_from_the_matching_scenes_less_unsupported_claims(tmp_path):
    scenes = _scenes(tmp_path)
    zebra = np.array([0.8, 0.0, 0.0, 0.0])  # no giraffe, no dog, no tree: those captions are other photos'
    found = scenes.candidates(zebra, 0.05, ANY_LENGTH)
    got = {" ".join(c) for c in found.captions}
    assert "a zebra standing in a field" in got and "two zebras in a grassy field" in got
    assert not any("giraffe" in c or "man" in c or "dog" in c for c in got)
    assert "an animal in the sun" not in got  # names none of the photo's objects
    assert scenes.object_of(found.captions[0], zebra) == ("zebra", pytest.approx(0.8))
    assert len(found.weights) == len(found.captions) and np.all(found.weights > 0)
    # a dog the tagger half sees (above vetting's bar, below DOG_MIN_P) is not named from another scene
    some_dog = np.array([0.8, 0.0, 0.0, DOG_MIN_P / 2])
    assert not any("dog" in c for c in scenes.candidates(some_dog, 0.05, ANY_LENGTH).captions)
    # never a person, even one the head half believes: another scene's people are not this photo's
    assert not any("man" in c for c in scenes.candidates(zebra, 0.65, ANY_LENGTH).captions)


def test_a_caption_with_a_word_twice_in_a_row_is_never_a_candidate(tmp_path):
    scenes = _scenes(tmp_path, [["a zebra zebra in a field", "a zebra in a field"]])
    found = scenes.candidates(np.array([0.8, 0.0, 0.0, 0.0]), 0.05, ANY_LENGTH)
    assert [" ".join(c) for c in found.captions] == ["a zebra in a field"]  # the caption text's typo is left out


def test_photos_of_people_dogs_and_people_at_a_sport_keep_the_decoders_caption(tmp_path):
    """The gates: what the Flickr8k decoder describes best is not reranked."""
    scenes = _scenes(tmp_path)
    zebra, dog = np.array([0.8, 0.0, 0.0, 0.0]), np.array([0.1, 0.0, 0.0, DOG_GATE])
    own = tuple("a man is standing on a zebra".split())
    assert scenes.reranks(zebra, 0.1, own)
    assert not scenes.reranks(zebra, PERSON_GATE, own)
    assert not scenes.reranks(dog, 0.1, own)  # the photo's dog
    skier = tuple("a skier is jumping over a ramp".split())
    assert not scenes.reranks(zebra, PERSON_BELOW, skier)  # a person at a sport the head allows
    assert scenes.reranks(zebra, PERSON_BELOW / 2, skier)  # ... and one it doubts
    rider = tuple("a man is riding a bike through the woods".split())  # a person on a bike is at a sport too
    assert not scenes.reranks(zebra, PERSON_BELOW, rider) and scenes.reranks(zebra, PERSON_BELOW / 2, rider)
    assert scenes.reranks(zebra, PERSON_BELOW, tuple("a bike parked on a street".split()))  # a bike alone is not


def test_photos_like_the_decoders_training_photos_keep_its_caption(tmp_path):
    """Familiarity (the mean cosine of the nearest training photos) at FAMILIAR_GATE or more: the
    decoder is in its own domain and no other scene's caption competes; unknown familiarity: no gate."""
    scenes = _scenes(tmp_path)
    zebra, own = np.array([0.8, 0.0, 0.0, 0.0]), tuple("a man is standing on a zebra".split())
    assert scenes.reranks(zebra, 0.1, own) and scenes.reranks(zebra, 0.1, own, None)
    assert scenes.reranks(zebra, 0.1, own, FAMILIAR_GATE - 0.01)
    assert not scenes.reranks(zebra, 0.1, own, FAMILIAR_GATE)

    def flat(images, captions, word_probs):
        return [np.full(len(c), -2.0) for c in captions]

    pooled, caption = np.array([[0.8, 0.0, 0.0, 0.01]]), ["a dog is sitting on a zebra"]
    unlike = _corpus(tmp_path, 0.1)
    unlike._neighbours = _neighbours_at([[0, 1, 0, 0], [0, 0, 1, 0]])  # familiarity 0
    assert unlike.picks(pooled, DecodeConfig(), GuideConfig(), caption, flat)[0].scenes
    like = _corpus(tmp_path, 0.1)
    like._neighbours = _neighbours_at([[1, 0, 0, 0], [1, 0, 0, 0]])  # familiarity 1: a training photo's twin
    assert like.picks(pooled, DecodeConfig(), GuideConfig(), caption, flat) == [None]


def test_the_consensus_wins_unless_the_own_caption_is_far_more_likely(tmp_path):
    scenes = _scenes(tmp_path)
    found = Candidates(
        [tuple(c.split()) for c in ("a red car", "a zebra standing in a field", "a zebra grazing in a field")],
        np.ones(3),
    )
    own = tuple("a man is sitting on a zebra".split())
    short, agree = scenes.shortlist(found, own)
    assert short[-1] == own and len(short) == 4 and agree.max() == pytest.approx(1.0)
    assert {" ".join(c) for c in short[:2]} == {"a zebra standing in a field", "a zebra grazing in a field"}
    assert best(agree, [-2.0] * 4) in (0, 1)  # the two that agree
    assert best(agree, [-2.0, -2.0, -2.0, -0.1]) == 3  # the decoder's own, by its likelihood
    # unless it names a person the head doubts: then it needs DOUBTED_PERSON more. Own's agreement
    # puts it half that ahead of the first candidate's total.
    ahead = 1.0 - 2.0 * WEIGHT + 0.5 * WEIGHT - OWN_BONUS + DOUBTED_PERSON / 2
    assert best(np.array([1.0, 0.5, ahead]), [-2.0, -2.0, -0.5]) == 2
    assert best(np.array([1.0, 0.5, ahead]), [-2.0, -2.0, -0.5], doubted_person=True) == 0
    many = Candidates([("a", "zebra", str(k)) for k in range(20)], np.ones(20))
    assert len(scenes.shortlist(many, own)[0]) == SHORTLIST + 1


def test_bad_scene_files_are_refused_by_name(tmp_path):
    bad = [
        "[]",
        json.dumps({"format": "x"}),
        json.dumps({"format": FORMAT, "documents": 1, "scenes": [[]], "df": {}}),
        json.dumps({"format": FORMAT, "documents": 1, "scenes": [["a zebra"]], "df": {"a": 0}}),
        json.dumps({"format": FORMAT, "documents": 0, "scenes": [["a zebra"]], "df": {}}),
    ]
    for content in bad:
        (tmp_path / "s.json").write_text(content)
        with pytest.raises(TagsError, match="s.json"):
            SceneCaptions.load(tmp_path / "s.json", WORDS)


def test_the_bundled_scene_captions_load_with_the_bundled_words():
    scenes = SceneCaptions.load()
    assert len(scenes.captions) > 4000 and scenes.source["path"] == "coco_val2017.jsonl"


def _corpus(tmp_path, person_p: float) -> CorpusCaptions:
    """CorpusCaptions over WORDS whose person head says `person_p` for every photo."""
    head = PersonHead(np.zeros(4, np.float32), float(np.log(person_p / (1 - person_p))), "h")
    tagger = SimpleNamespace(
        words=WORDS, word_probs=lambda pooled: np.asarray(pooled), head=SimpleNamespace(sha256="h")
    )
    corpus = CorpusCaptions(tagger)
    corpus._index = CaptionIndex({}, WORDS, {"format": INDEX_FORMAT}, set(), head)
    corpus._scenes = _scenes(tmp_path)
    return corpus


def test_a_photo_the_person_head_doubts_gets_a_scene_caption_that_wins(tmp_path):
    pooled = np.array([[0.8, 0.0, 0.0, 0.01]])  # a zebra, a trace of dog (not vetted)

    def flat(images, captions, word_probs):  # the decoder likes none more than another
        return [np.full(len(c), -2.0) for c in captions]

    caption = ["a dog is sitting on a zebra"]
    pick = _corpus(tmp_path, 0.1).picks(pooled, DecodeConfig(), GuideConfig(), caption, flat)[0]
    assert pick.scenes and "zebra" in pick.caption.split() and pick.word == "zebra"
    assert pick.to_dict() == {"tag": "zebra", "p": 0.8, "scenes": True}
    # a person the head believes: the decoder's caption stands (Flickr8k's people are its own)
    assert _corpus(tmp_path, 0.9).picks(pooled, DecodeConfig(), GuideConfig(), caption, flat) == [None]
    # switched off, or nothing to score with
    corpus = _corpus(tmp_path, 0.1)
    assert corpus.picks(pooled, DecodeConfig(), GuideConfig(scenes=False), caption, flat) == [None]
    assert corpus.picks(pooled, DecodeConfig(), GuideConfig(), caption) == [None]
    # candidates longer or shorter than the caption may be are left out
    assert corpus.picks(pooled, DecodeConfig(max_len=2), GuideConfig(), caption, flat) == [None]
    assert corpus.picks(pooled, DecodeConfig(min_words=12, max_len=20), GuideConfig(), caption, flat) == [None]


def test_the_caption_texts_share_of_people_moves_the_heads_odds_only_for_unfamiliar_photos():
    head = np.array([0.75, 0.75, 0.75, 0.75, 0.2])
    prior = np.array([vetting.PRIOR_NEUTRAL, 0.0, 0.0, 0.95, 0.0])
    familiarity = np.array([0.0, 0.0, vetting.FAMILIAR, 0.0, 0.0])
    got = vetting.with_scene_prior(head, prior, familiarity)
    assert got[0] == pytest.approx(0.75, rel=1e-6)  # a neutral prior says nothing
    assert got[2] == pytest.approx(0.75, rel=1e-6)  # a photo like the training photos: the head alone
    assert got[3] > 0.75  # scenes like it nearly always hold people
    # no people in such scenes: the odds fall, by no more than the floor's share allows
    floor = (vetting.PRIOR_FLOOR / (1 - vetting.PRIOR_FLOOR)) / (vetting.PRIOR_NEUTRAL / (1 - vetting.PRIOR_NEUTRAL))
    assert got[1] == pytest.approx(1 / (1 + 1 / (3.0 * floor)), rel=1e-6) and got[1] < 0.75
    assert got[4] < 0.2


def test_the_person_prior_is_the_share_of_people_in_the_best_matching_scenes(tmp_path, monkeypatch):
    scenes = _scenes(tmp_path, [["a man with a dog", "a woman walks a dog"], ["a tree in a park", "a tree by a road"]])
    dog, tree = [0.0, 0.0, 0.0, 0.9], [0.0, 0.0, 0.7, 0.0]
    monkeypatch.setattr(vetting, "PRIOR_SCENES", 1)
    assert scenes.person_prior(np.array([dog, tree])).tolist() == [1.0, 0.0]
    monkeypatch.setattr(vetting, "PRIOR_SCENES", 2)
    assert scenes.person_prior(np.array([dog, tree])).tolist() == [0.5, 0.5]


def _neighbours_at(feature_rows) -> NeighbourCaptions:
    """A neighbour index over the 4 pooled dims of _corpus's photos, for its head "h"."""
    rows = np.asarray(feature_rows, dtype=np.float32)
    return NeighbourCaptions(np.zeros(4, np.float32), np.eye(4, dtype=np.float32), rows, [["a photo"]] * len(rows), "h")


def test_a_confident_head_on_a_photo_unlike_its_data_yields_to_the_caption_text(tmp_path):
    """0.75 keeps the decoder's caption (PERSON_GATE), unless the photo is unlike every training photo
    and scenes with its tags seldom hold people (one of SCENES' five)."""
    pooled = np.array([[0.8, 0.0, 0.0, 0.01]])
    caption = ["a man is sitting on a zebra"]

    def flat(images, captions, word_probs):
        return [np.full(len(c), -2.0) for c in captions]

    unlike = _corpus(tmp_path, 0.75)
    unlike._neighbours = _neighbours_at([[0, 1, 0, 0], [0, 0, 1, 0]])
    pick = unlike.picks(pooled, DecodeConfig(), GuideConfig(), caption, flat)[0]
    assert pick.scenes and "zebra" in pick.caption.split() and vetting.PERSON.isdisjoint(pick.caption.split())
    like = _corpus(tmp_path, 0.75)
    like._neighbours = _neighbours_at([[1, 0, 0, 0], [1, 0, 0, 0]])
    assert like.picks(pooled, DecodeConfig(), GuideConfig(), caption, flat) == [None]
    # the prior is part of the scene captions: off with them
    assert unlike.picks(pooled, DecodeConfig(), GuideConfig(scenes=False), caption, flat) == [None]
