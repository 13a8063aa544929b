"""Captions of similar scenes: human captions of other photos compete with the decoder's own.

A decoder trained on Flickr8k describes a kitchen or a herd of elephants in the words of people
and dogs. The caption text (assets/scene_captions.json, from COCO captions without their photos:
scripts/build_scene_index.py) holds five captions per scene. For a photo the person head doubts
(and not of a dog, nor of a person at a sport the decoder named, nor one like the decoder's
training photos: `SceneCaptions.reranks`), the K scenes whose named objects best match the
photo's tags (the summed tag probabilities of the tag words a scene's captions name, as a share
of its captions, plus the person head's agreement with the share of its captions naming a person)
give the candidates: their captions, less those naming a person, dog or tagged object the photo
does not support (tags/vetting.py). The SHORTLIST that agree most with the others and the caption
so far score

    agreement with the retrieved captions / the best agreement  +  WEIGHT x mean log-prob per word

where agreement is the tf-idf n-gram consensus of minimum Bayes risk reranking (capgen.data.ngrams;
document frequencies from the caption text), each retrieved caption weighted by its scene's match,
and the log-probability is the scene scorer's given the photo and its tags (capgen.runtime.scene_scorer:
a decoder trained on COCO caption text; the captioner's own decoder where the scorer does not fit
its encoder), through capgen.decoding.score. Torch-free: the Captioner and the runtime rerank alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np

from capgen.data.ngrams import NgramVector, agreements
from capgen.errors import TagsError
from capgen.io import read_json
from capgen.tags import vetting
from capgen.tags.words import WordMap, caption_groups, mention_index, phrases_in, stutters

SCENES_FILE = "assets/scene_captions.json"
FORMAT = "capgen-scene-captions/1"
# Chosen on ../shared/data/coco_dev against Flickr8k val (BENCHMARKS.md, "A scene scorer"): photos
# with a person head this probable keep the decoder's caption (Flickr8k's people photos are what the
# decoder knows best), and so do photos of dogs and of people at a sport (below).
PERSON_GATE = 0.7
DOG_GATE = 0.3  # the tag word "dog" this probable: Flickr8k's dogs, which its decoder describes best
# The caption so far names a person at a sport and the person head gives at least vetting's
# PERSON_BELOW: another scene's caption would drop the snowboarder for the ramp ("a flag is flying
# in a green grassy area"); keeping them took Flickr8k val from 49.0 to 49.2 and coco_dev 50.7 to 51.5.
ACTORS = frozenset(
    "skier skiers snowboarder snowboarders skateboarder skateboarders surfer surfers biker bikers "
    "bicyclist cyclist rider riders climber climbers swimmer swimmers runner runners motorcyclist "
    "hiker hikers wakeboarder kayaker".split()
)
# So is a person the caption puts on a bike: once "bike" named the tag "bicycle" (tags/guide.py), the
# decoder's "a man is riding a bike through the woods" shared fewer n-grams with the scenes' "a bicycle
# ..." and lost to "a bicycle stands in the middle of an empty parking lot" (6 Flickr8k photos of riders).
GEAR = frozenset("bike bikes bicycle bicycles".split())
# A photo this much like the decoder's training photos (the mean cosine of its nearest Flickr8k
# training photos, tags/neighbours.py) keeps the decoder's caption: there the decoder writes in its
# own domain, and other scenes' captions brought "a bunch of cars parked in a parking lot" to rally
# cars and "a skateboarder rides down the street with a helmet" to motocross riders (Flickr8k test
# CIDEr 55.67 -> 56.32; coco_dev, whose photos are seldom this familiar, the same: BENCHMARKS.md).
FAMILIAR_GATE = 0.6
SCENES = 15  # scenes retrieved per photo
SHORTLIST = 4  # of their captions, those the scorer scores
SHARPNESS = 3.0  # a retrieved caption weighs exp(SHARPNESS x its scene's match)
WEIGHT = 0.5  # of the scorer's mean log-probability per word against agreement (at most 1)
OWN_BONUS = 0.0  # the caption so far needs no head start against the scene scorer (0.1 cost coco_dev 1)
DOUBTED_PERSON = 0.3
NAMED_MIN_P = 0.001  # a candidate naming a tag word the tagger puts below this is another photo's
DOG_MIN_P = 0.3  # a candidate names a dog only when the tag word "dog" is at least this probable
OBJECT_MIN_P = 0.05  # a candidate must name a tag word at least this probable: the photo's object


@dataclass(frozen=True)
class Candidates:
    captions: list[tuple[str, ...]]  # retrieved captions the photo supports
    weights: np.ndarray  # (len(captions),) their scenes' match weights


class SceneCaptions:
    """The scenes of the caption text, indexed by the tag words and people their captions name."""

    def __init__(self, scenes: list[list[str]], df: dict[str, int], documents: int, words: WordMap, source: dict):
        self.source, self.words = source, list(words.words)
        self._index, self._longest = mention_index(self.words), max(len(w.split()) for w in self.words)
        self.captions = [[tuple(c.split()) for c in scene] for scene in scenes]
        # per caption the tag words it names; per scene the share of its captions naming each tag
        # word, and a person
        self._names = [[frozenset(phrases_in(c, self._index, self._longest)) for c in caps] for caps in self.captions]
        self._named = np.zeros((len(scenes), len(self.words)), dtype=np.float32)
        self._person = np.zeros(len(scenes), dtype=np.float32)
        for i, caps in enumerate(self.captions):
            for c, names in zip(caps, self._names[i]):
                for j in names:
                    self._named[i, j] += 1 / len(caps)
                self._person[i] += (not vetting.PERSON.isdisjoint(c)) / len(caps)
        self._dog = self.words.index("dog") if "dog" in self.words else None
        self._df, self._log_n = df, math.log(documents)
        self._vectors: dict[tuple[str, ...], NgramVector] = {}

    @classmethod
    def load(cls, path: str | Path | None = None, words: WordMap | None = None) -> "SceneCaptions":
        path = Path(str(resources.files("capgen").joinpath(SCENES_FILE))) if path is None else Path(path)
        data = read_json(path, "scene captions", TagsError)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise TagsError(f"{path}: not capgen scene captions ({FORMAT})")
        scenes = caption_groups(data, "scenes", path)
        df, documents = data.get("df"), data.get("documents")
        if not isinstance(df, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in df.values()
        ):
            raise TagsError(f"{path}: 'df' must map n-grams to counts >= 1")
        if not isinstance(documents, int) or isinstance(documents, bool) or documents < 1:
            raise TagsError(f"{path}: 'documents' must be a whole number >= 1")
        return cls(scenes, df, documents, words or WordMap.load(None), data.get("source", {}))

    def reranks(
        self, word_probs: np.ndarray, person_p: float, own: tuple[str, ...], familiarity: float | None = None
    ) -> bool:
        """Whether captions of similar scenes compete with `own`, the photo's caption so far: not
        for photos of people, dogs, people at a sport the decoder named, or photos like the
        decoder's training photos (the gates above; familiarity None: not known, no such gate)."""
        dog_p = 0.0 if self._dog is None else float(word_probs[self._dog])
        words = set(own)
        on_gear = not GEAR.isdisjoint(words) and not vetting.PERSON.isdisjoint(words)
        actor = person_p >= vetting.PERSON_BELOW and (on_gear or not ACTORS.isdisjoint(words))
        familiar = familiarity is not None and familiarity >= FAMILIAR_GATE
        return person_p < PERSON_GATE and dog_p < DOG_GATE and not actor and not familiar

    def person_prior(self, word_probs: np.ndarray) -> np.ndarray:
        """(B, W) tag word probabilities -> (B,) the share of captions naming a person among the
        vetting.PRIOR_SCENES scenes whose named objects best match each photo's tags: how often people
        are in such scenes, as the caption text tells it (a kitchen, a bus: seldom; skis: nearly always)."""
        match = self._named @ np.asarray(word_probs, dtype=np.float32).T  # (S, B)
        top = np.argsort(-match, axis=0, kind="stable")[: vetting.PRIOR_SCENES]
        return self._person[top].mean(axis=0).astype(np.float64)

    def candidates(self, word_probs: np.ndarray, person_p: float, lengths: tuple[int, int]) -> Candidates:
        """One photo's tag word probabilities (W,) and P(person) -> the retrieved captions it supports,
        of lengths[0] to lengths[1] words (the caption's own limits)."""
        agree = person_p * self._person + (1 - person_p) * (1 - self._person)
        match = self._named @ np.asarray(word_probs, dtype=np.float32) + agree
        top = np.argsort(-match, kind="stable")[:SCENES]
        # No person: a photo reaches here because the person head doubts one, and the captions of
        # scenes with people bring their people along ("a man sitting in front of a plate of food").
        # Only vetting's person words: leaving out "skier", "surfer", "someone" too cost Flickr8k
        # test 0.2 CIDEr (its skiers and surfers) and coco_dev 0.1 (BENCHMARKS.md).
        dog_p = 1.0 if self._dog is None else float(word_probs[self._dog])
        avoid = vetting.avoid_in_replacement(vetting.PERSON, dog_p, person_p)
        if dog_p < DOG_MIN_P:  # another scene's dog needs more evidence than the decoder's own
            avoid |= vetting.DOG
        captions, weights = [], []
        for t in top:
            for c, names in zip(self.captions[t], self._names[t]):
                if (
                    lengths[0] <= len(c) <= lengths[1]
                    and avoid.isdisjoint(c)
                    and not stutters(c)
                    and all(word_probs[j] >= NAMED_MIN_P for j in names)
                    and any(word_probs[j] >= OBJECT_MIN_P for j in names)
                ):
                    captions.append(c)
                    weights.append(math.exp(SHARPNESS * float(match[t])))
        return Candidates(captions, np.asarray(weights))

    def shortlist(self, found: Candidates, own: tuple[str, ...]) -> tuple[list[tuple[str, ...]], np.ndarray]:
        """The SHORTLIST retrieved captions that agree most with the others, then `own` (the
        caption so far), with their agreements as a share of the best. Only these are scored by
        the scorer: teacher-forcing them costs a decoder run per photo, and scoring the top 4 did
        as well as the top 8 or 16 on coco_dev and Flickr8k val (BENCHMARKS.md)."""
        vectors = [self._vector(c) for c in [*found.captions, own]]
        agree = np.asarray(agreements(vectors, [*found.weights, 0.0]))
        agree = agree / max(float(agree.max()), 1e-9)
        top = np.argsort(-agree[:-1], kind="stable")[:SHORTLIST]
        return [found.captions[k] for k in top] + [own], np.append(agree[top], agree[-1])

    def object_of(self, caption: tuple[str, ...], word_probs: np.ndarray) -> tuple[str, float]:
        """The most probable of the photo's tag words that `caption` names (every candidate names one
        of at least OBJECT_MIN_P), with its probability."""
        j = max(phrases_in(caption, self._index, self._longest), key=lambda j: (word_probs[j], -j))
        return self.words[j], float(word_probs[j])

    def _vector(self, caption: tuple[str, ...]) -> NgramVector:
        v = self._vectors.get(caption)
        if v is None:
            v = self._vectors[caption] = NgramVector(caption, self._idf)
            if len(self._vectors) > 100_000:  # a long bulk job meets every scene: keep memory bounded
                self._vectors.clear()
        return v

    def _idf(self, gram: tuple[str, ...]) -> float:
        # n-grams of one caption only, or of none (the decoder's own), are not stored: count 1
        return self._log_n - math.log(self._df.get(" ".join(gram), 1))


def best(agree: np.ndarray, scores: Sequence[float], doubted_person: bool = False) -> int:
    """Of a shortlist (own last) with its agreements, the index of the caption to take given the
    scorer's mean log-probability per word of each. doubted_person: the caption so far names a
    person the head doubts (below vetting's AVOID_PERSON_BELOW), which costs it DOUBTED_PERSON:
    with it, Flickr8k's decoder keeps fewer of the people it invents on everyday photos (coco_dev
    17.2% -> 14.6%) and Flickr8k test keeps its CIDEr (BENCHMARKS.md)."""
    total = agree + WEIGHT * np.asarray(scores)
    total[-1] += OWN_BONUS - (DOUBTED_PERSON if doubted_person else 0.0)
    return int(np.argmax(total))  # ties: the caption that agrees more
