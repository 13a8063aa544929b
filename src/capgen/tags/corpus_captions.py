"""Captions from caption text for objects the decoder barely knows.

A Flickr8k decoder has seen thousands of captions of dogs and people, and almost none of zebras,
pizza or buses: tag guidance puts "zebra" into a sentence about people ("a woman is sitting on a
zebra"). When the tagger is confident about such an object, the caption comes instead from human
captions of other photos of it (the COCO caption text, `../shared/data/text`): among the most
typical captions naming the top tag, the one that also names the photo's other tags best and that
the scene scorer (capgen.runtime.scene_scorer), reading the photo, finds likeliest. A confident tag
the decoder does know gets such a caption too when the scorer finds it likelier than the decoder's.

The same captions stand in for a decoder caption whose person or dog the photo does not support
(tags/vetting.py). For a photo the person head doubts, human captions of similar scenes compete
with the decoder's caption first (tags/scenes.py).

The index (assets/caption_index.json, scripts/build_caption_index.py) holds, for each tag word, its
`per_word` most typical captions (highest mean n-gram agreement with the other captions naming it),
most typical first, and how often the decoder's training captions name the word: only words named
fewer than `rare_below` times take over a caption outright. Format 1 held the rare words alone.
Torch-free: the Captioner and the runtime share it, so both write the same captions.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np

from capgen.errors import TagsError
from capgen.io import read_json
from capgen.tags import neighbours, scenes, vetting
from capgen.tags.neighbours import NeighbourCaptions
from capgen.tags.scenes import SceneCaptions
from capgen.tags.vetting import PersonHead
from capgen.tags.words import WordMap, mention_index, mentions, stutters

INDEX_FILE = "assets/caption_index.json"
FORMAT = "capgen-caption-index/2"
FORMATS = ("capgen-caption-index/1", FORMAT)  # 1: rare words only, no counts, no person head
# Chosen on ../shared/data/coco_dev (BENCHMARKS.md, "Captions from caption text"): a top tag this
# probable switches to the index; among its captions, typicality weighs TYPICALITY against the
# summed probabilities of the tags a caption names.
THRESHOLD = 0.2
TYPICALITY = 0.3
OTHER_TAGS = 3  # vetting: the photo's top tags tried, in order, as the replacement's subject
# The tag says what the photo shows, not how: its most typical captions were chosen without the photo
# ("a bunch of bananas on a plate on a counter" under a painting of bananas). Where a scorer is given,
# each of the tag's captions also gains SCORER_WEIGHT x the scene scorer's mean log-probability per
# word of it for the photo, which reads the image ("a picture of a bunch of bananas sitting on a
# table"). Chosen on ../shared/data/coco_dev against Flickr8k val (BENCHMARKS.md, "Corpus captions the
# photo chooses").
SCORER_WEIGHT = 0.8
# A confident tag the decoder knows (not a rare word: the decoder writes its caption) still gets its
# sentence from Flickr8k: "a tennis player is running on a racket", "a soccer ball is running on a
# field". Where the top tag is at least COMPETE_P, its caption text's best caption for the photo (as
# above) replaces the decoder's when the scorer finds it likelier per word ("a man on a tennis court
# with a tennis racket"). Chosen with the guide's threshold (tags/guide.py) on ../shared/data/coco_dev
# and Flickr8k val, read beside the photos (BENCHMARKS.md, "Corpus captions the photo chooses").
COMPETE_P = 0.5


@dataclass(frozen=True)
class Retrieved:
    caption: str
    word: str  # the tag that chose the index
    p: float
    replaced: tuple[str, ...] = ()  # vetting: the claims ("person", "dog") the photo did not support
    scenes: bool = False  # a caption of a similar scene that won against the decoder's (tags/scenes.py)
    beat_decoder: bool = False  # a confident tag's caption the scorer found likelier than the decoder's
    avoid: frozenset[str] = frozenset()  # the words its caption could not name (vetting), for choosing again

    def to_dict(self) -> dict:
        d = {"tag": self.word, "p": round(self.p, 4)}
        if self.replaced:
            d["replaced"] = list(self.replaced)
        if self.scenes:
            d["scenes"] = True
        if self.beat_decoder:
            d["beat_decoder"] = True
        return d


class CaptionIndex:
    def __init__(
        self,
        captions: dict[str, list[str]],
        words: WordMap,
        meta: dict,
        rare: set[str] | None = None,
        person: PersonHead | None = None,
    ):
        self.captions, self.meta, self.person = captions, meta, person
        self.rare = set(captions) if rare is None else rare  # the words that take over a caption
        self.words = list(words.words)
        self._col = {w: j for j, w in enumerate(self.words)}
        self._index = mention_index(self.words)
        self._longest = max(len(w.split()) for w in self.words)
        # per word: each caption's tokens and the tag words it names
        self._named = {
            w: [mentions([c.split()], self._index, self._longest) for c in caps] for w, caps in captions.items()
        }

    @classmethod
    def load(cls, path: str | Path | None = None, words: WordMap | None = None) -> "CaptionIndex":
        path = Path(str(resources.files("capgen").joinpath(INDEX_FILE))) if path is None else Path(path)
        data = read_json(path, "caption index", TagsError)
        caps = data.get("captions") if isinstance(data, dict) else None
        if data.get("format") not in FORMATS if isinstance(data, dict) else True:
            raise TagsError(f"{path}: not a capgen caption index ({' or '.join(FORMATS)})")
        if not isinstance(caps, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and v and all(isinstance(c, str) and c.strip() for c in v)
            for k, v in caps.items()
        ):
            raise TagsError(f"{path}: 'captions' must map tag words to lists of captions")
        words = words or WordMap.load(None)
        known = set(words.words)  # another class -> word file may lack some of the index's words
        person = PersonHead.from_dict(data["person_head"], str(path)) if "person_head" in data else None
        meta = {k: v for k, v in data.items() if k not in ("captions", "person_head", "paired_mentions")}
        return cls({k: v for k, v in caps.items() if k in known}, words, meta, _rare_words(data, path), person)

    def choose(
        self, word_probs: np.ndarray, need: frozenset[str] = frozenset(), avoid: frozenset[str] = frozenset()
    ) -> Retrieved | None:
        """One photo's tag word probabilities (W,) -> a caption from the index, or None (the top tag
        is not confident enough, or the decoder knows it well: no entry; or none of its captions
        names one of `need` and none of `avoid`, when given)."""
        top, p = self.top(word_probs)
        if p < THRESHOLD or top not in self.rare or top not in self.captions:
            return None
        caption = self._best(top, word_probs, avoid, need)
        return None if caption is None else Retrieved(caption, top, p, avoid=avoid)

    def top(self, word_probs: np.ndarray) -> tuple[str, float]:
        """The photo's most probable tag word and its probability (argmax: the first of equal
        maxima, as a stable sort)."""
        j = int(np.argmax(word_probs))
        return self.words[j], float(word_probs[j])

    def dog_p(self, word_probs: np.ndarray) -> float:
        """The tag word "dog"'s probability; 1.0 for a word map without one (no evidence against dogs)."""
        return float(word_probs[self._col["dog"]]) if "dog" in self._col else 1.0

    def vet(self, words: set[str], word_probs: np.ndarray, person_p: float | None) -> Retrieved | None:
        """A replacement for a caption (its word set) naming a person or dog the photo does not
        support (tags/vetting.py), about the photo's most probable object that has captions without
        the refused words (nor a person, where the caption named none); None when the caption may
        stand or nothing fits."""
        dog_p = self.dog_p(word_probs)
        claims = vetting.unsupported(words, dog_p, person_p)
        if not claims:
            return None
        avoid = vetting.avoid_in_replacement(claims, dog_p, person_p) | _people_unwritten(words)
        replaced = tuple(c for c, ws in (("person", vetting.PERSON), ("dog", vetting.DOG)) if claims & ws)
        top = [(self.words[int(j)], float(word_probs[j])) for j in np.argsort(-word_probs, kind="stable")[:OTHER_TAGS]]
        top = [(w, p) for w, p in top if p >= vetting.FALLBACK_MIN_P]
        for word, p in top:
            caption = self._best(word, word_probs, avoid) if word in self.captions else None
            if caption is not None:
                return Retrieved(caption, word, p, replaced, avoid=avoid)
        if top:  # an object no caption text describes (rocket, crossword): say only what is seen
            return Retrieved(vetting.plain_caption(top[0][0]), top[0][0], top[0][1], replaced)
        return None

    def person_probs(self, pooled: np.ndarray, tagger_head) -> np.ndarray | None:
        """(B,) P(person) for the encoder whose classifier head is `tagger_head` (a LinearHead); None
        when the index holds no person head for that encoder."""
        if self.person is None or tagger_head.sha256 != self.person.tagger_head:
            return None
        return self.person.probs(pooled)

    def choices(
        self,
        word: str,
        word_probs: np.ndarray,
        avoid: frozenset[str],
        min_named: float = 0.0,
        need: frozenset[str] = frozenset(),
    ) -> tuple[list[str], np.ndarray]:
        """`word`'s captions without `avoid` words nor a tag word below `min_named` (and with one of
        `need`, when given), most typical first, and the standing of each: the summed probabilities
        of the photo's tags it names, plus TYPICALITY x its typicality; never a caption with a typo
        (words.stutters)."""
        caps, kept, standing = self.captions[word], [], []
        for rank, named in enumerate(self._named[word]):
            tokens = caps[rank].split()
            if (avoid and not avoid.isdisjoint(tokens)) or (need and need.isdisjoint(tokens)) or stutters(tokens):
                continue
            if min_named and any(word_probs[j] < min_named for j in named):
                continue
            kept.append(caps[rank])
            standing.append(sum(float(word_probs[j]) for j in named) + TYPICALITY * (1 - rank / len(caps)))
        return kept, np.asarray(standing)

    def supported(
        self, word: str, word_probs: np.ndarray, person_p, avoid: frozenset[str], need: frozenset[str] = frozenset()
    ):
        """choices() of `word` that claim nothing the photo does not support, by the scene captions'
        rules (tags/scenes.py): no tag word below NAMED_MIN_P, no dog below a "dog" tag of DOG_MIN_P,
        no person the head puts below vetting's AVOID_PERSON_BELOW (person_p None: no head)."""
        dog_p = self.dog_p(word_probs)
        avoid = avoid | (vetting.DOG if dog_p < scenes.DOG_MIN_P else frozenset())
        if person_p is not None:
            avoid |= vetting.avoid_in_replacement(frozenset(), dog_p, float(person_p))
        return self.choices(word, word_probs, avoid, scenes.NAMED_MIN_P, need)

    def _best(
        self, word: str, word_probs: np.ndarray, avoid: frozenset[str], need: frozenset[str] = frozenset()
    ) -> str | None:
        """Among `word`'s captions without `avoid` words (and with one of `need`), the one naming the
        photo's tags best, typicality breaking near-ties (ties: the more typical, earlier one)."""
        kept, standing = self.choices(word, word_probs, avoid, need=need)
        return kept[int(np.argmax(standing))] if kept else None


def _rare_words(data: dict, path: Path) -> set[str] | None:
    """The words that take over a caption: named fewer than rare_below times by the decoder's
    training captions (format 2), or every word of a format-1 index (None)."""
    if "paired_mentions" not in data:
        return None
    counts, below = data["paired_mentions"], data.get("rare_below")
    if (
        not isinstance(counts, dict)
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts.values())
        or not isinstance(below, int)
        or isinstance(below, bool)
    ):
        raise TagsError(f"{path}: 'paired_mentions' must map words to counts >= 0, with an integer 'rare_below'")
    return {w for w in data["captions"] if counts.get(w, 0) < below}


# score(images, captions, word_probs) -> for images of the batch (indices), per image captions
# (token tuples), and those images' tag word probabilities (rows, for a scorer that reads tags):
# per image, the scorer's mean log-probability per word of each (capgen.decoding.score)
Scorer = Callable[[list[int], list[list[tuple[str, ...]]], np.ndarray], list[np.ndarray]]


class CorpusCaptions:
    """The captioners' use of the index (the Captioner's and the torch-free runtime's alike): which
    images get a corpus caption, and putting it into their results."""

    def __init__(self, tagger):
        self.tagger, self._index, self._scenes, self._neighbours = tagger, None, None, None  # read on first use

    def _active(self, config, guide) -> bool:
        from capgen.tags.guide import GuideConfig

        guide = GuideConfig.of(guide)
        return self.tagger is not None and config.method != "sample" and guide is not None and guide.corpus

    def search(self, pooled, config, guide, words_of, guidance=None) -> tuple:
        """(config, references) for the search (capgen.decoding.search): when the neighbour rerank
        applies (a beam search without consensus of its own, the guide's `neighbours` on, an index
        of this encoder), a consensus of neighbours.CANDIDATES candidates ranked against the captions
        of each photo's nearest training photos; else (config, None). words_of: token ids -> words.

        guidance: per photo, its Guidance or None (None: no photo guided); a guided photo is reranked only where its
        neighbours' captions name the tag (NeighbourCaptions.references)."""
        from capgen.tags.guide import GuideConfig

        guide = GuideConfig.of(guide)
        head = getattr(self.tagger, "head", None)
        if guide is None or not guide.neighbours or config.method != "beam" or config.consensus or head is None:
            return config, None
        index = self._neighbour_index()
        if not index.fits(head):
            return config, None
        wide = replace(config, consensus=max(neighbours.CANDIDATES, config.beam_size))
        required = None if guidance is None else [g.include if g is not None else None for g in guidance]
        return wide, index.references(pooled, words_of, required)

    def _neighbour_index(self) -> NeighbourCaptions:
        if self._neighbours is None:
            self._neighbours = NeighbourCaptions.load()
        return self._neighbours

    def _scene_index(self) -> SceneCaptions:
        if self._scenes is None:
            self._scenes = SceneCaptions.load(words=self.tagger.words)
        return self._scenes

    def _load(self) -> CaptionIndex:
        if self._index is None:
            self._index = CaptionIndex.load(words=self.tagger.words)
        return self._index

    def picks(self, pooled, config, guide, captions=None, score: Scorer | None = None) -> list[Retrieved | None]:
        """Per image, the caption to take, or None; all None without a tagger, for sampling, or when
        the guide (a GuideConfig, a probability or None) is off or does not ask for it. `captions`
        (the decoder's, one per image) are vetted for people and dogs when given; then, with `score`,
        each pick's caption is chosen for the photo among its tag's, a confident tag's caption
        competes with the decoder's, and the caption so far competes with captions of similar scenes
        when the person head doubts the photo."""
        from capgen.tags.guide import GuideConfig

        if not self._active(config, guide):
            return [None] * len(pooled)
        index = self._load()
        probs = self.tagger.word_probs(pooled)
        head = getattr(self.tagger, "head", None)
        person = index.person_probs(pooled, head) if captions is not None and head is not None else None
        scenes_on = GuideConfig.of(guide).scenes
        familiarity = None  # how much each photo looks like the decoder's training photos
        if person is not None and scenes_on and (nbrs := self._neighbour_index()).fits(head):
            # the caption text's word on people in such scenes, where the head is far from its data
            prior = self._scene_index().person_prior(probs)
            familiarity = nbrs.familiarity(pooled)
            person = vetting.with_scene_prior(person, prior, familiarity)
        own = [set(c.split()) for c in captions] if captions is not None else None  # the decoder's words
        p_person = [None] * len(probs) if person is None else [float(p) for p in person]
        keep = [frozenset() if own is None else _people_to_keep(own[i], p_person[i]) for i in range(len(probs))]
        picks = [
            index.choose(row, keep[i], frozenset() if own is None else _people_unwritten(own[i]))
            for i, row in enumerate(probs)
        ]
        for i, words in enumerate(own or ()):
            if picks[i] is None:
                picks[i] = index.vet(words, probs[i], p_person[i])
        if score is not None:
            _choose_for_photo(picks, index, probs, person, score, keep)
            if captions is not None:
                _compete(picks, captions, index, probs, person, score, keep)
        if score is not None and person is not None and scenes_on:
            self._rerank(picks, captions, probs, person, score, config, familiarity)
        return picks

    def _rerank(self, picks: list, captions, probs, person, score: Scorer, config, familiarity=None) -> None:
        """Each image the gates let through (SceneCaptions.reranks; familiarity: (B,) or None, no
        neighbour index): its caption so far (its pick's, else the decoder's) meets the captions of
        similar scenes, and a scene's caption that wins becomes its pick. The shortlists of all such
        images are scored in one call."""
        scene_index = self._scene_index()
        lists = {}
        for i, caption in enumerate(captions):
            own = tuple((caption if picks[i] is None else picks[i].caption).split())
            known = None if familiarity is None else float(familiarity[i])
            if not scene_index.reranks(probs[i], float(person[i]), own, known):
                continue
            found = scene_index.candidates(probs[i], float(person[i]), (config.min_words, config.length_limit))
            if found.captions:
                lists[i] = scene_index.shortlist(found, own)
        if not lists:
            return
        images = list(lists)
        for i, scored in zip(images, score(images, [lists[i][0] for i in images], probs[images])):
            short, agree = lists[i]
            doubted = person[i] < vetting.AVOID_PERSON_BELOW and not vetting.PERSON.isdisjoint(short[-1])
            k = scenes.best(agree, scored, doubted)
            if k < len(short) - 1:
                word, p = scene_index.object_of(short[k], probs[i])
                replaced = () if picks[i] is None else picks[i].replaced  # claims refused on the way
                picks[i] = Retrieved(" ".join(short[k]), word, p, replaced, True)

    def apply(self, results: list, pooled, config, guide, score: Scorer | None = None) -> None:
        """Replace the chosen results' captions in place; the decoder's own caption leads the alternatives."""
        for res, pick in zip(results, self.picks(pooled, config, guide, [r.caption for r in results], score)):
            if pick is None:
                continue
            res.alternatives = [(res.caption, res.score), *(res.alternatives or [])][: max(config.n_best - 1, 1)]
            res.caption, res.tokens, res.from_corpus = pick.caption, pick.caption.split(), pick
            if hasattr(res, "attention"):
                res.attention = None  # the decoder attended for its own words, not these


# The person words but "group", which names elephants as readily as people ("a group of elephants
# are standing in the trees" kept no one of two men among elephants).
_PEOPLE = vetting.PERSON - {"group"}


def _people_unwritten(words: set[str]) -> frozenset[str]:
    """The person words (but "group", _PEOPLE) where the decoder's caption (its `words`) names no one
    (no such word, no skier or rider: scenes.ACTORS), else none: a rare tag's caption, or one in place of a
    refused dog, adds no person the decoder did not write. The decoder writes people everywhere, so
    where it wrote none the caption text's "a girl is playing with a teddy bear in a bathroom" (for
    teddy bears on a bed) invents her (BENCHMARKS.md, "Read on Flickr8k test"). Not for the tag
    competition, whose caption must also be likelier than the decoder's ("a man holding an umbrella
    on a sidewalk" for "a black umbrella is standing in the street")."""
    return _PEOPLE if _PEOPLE.isdisjoint(words) and scenes.ACTORS.isdisjoint(words) else frozenset()


def _people_to_keep(words: set[str], person_p: float | None) -> frozenset[str]:
    """The words one of which caption text must name for a photo: a person, where the decoder's
    caption (its `words`) names one and the person head believes it (person_p at scenes.PERSON_GATE,
    where no scene's caption competes either; None: no head); else none. Flickr8k's people photos are
    the decoder's own, and a rare tag's caption took the people out of them: "a stuffed teddy bear
    and monkey share the picture" for a girl among leaves (BENCHMARKS.md, "Read on Flickr8k test")."""
    if person_p is None or person_p < scenes.PERSON_GATE:
        return frozenset()
    return _PEOPLE if not _PEOPLE.isdisjoint(words) else frozenset()


def _choose_for_photo(
    picks: list, index: CaptionIndex, probs: np.ndarray, person, score: Scorer, keep: list | None = None
) -> None:
    """Each pick from a tag's captions becomes the one of them with the highest standing plus
    SCORER_WEIGHT x the scorer's mean log-probability per word for the photo (SCORER_WEIGHT above),
    among those that claim nothing the photo does not support, as for captions of similar scenes
    (tags/scenes.py): the scorer reads "a cat sitting on a desk in front of a computer" well for any
    desk (tag "cat" at 0.0000) and "a man is holding a bunch of bananas" for a painting of bananas.
    person: (B,) P(person), or None (no person head: people are not refused); keep: per photo, the
    words one of which the caption must name (_people_to_keep). All images' captions are scored in
    one call."""
    lists = {}
    for i, pick in enumerate(picks):
        if pick is not None and pick.caption in index.captions.get(pick.word, ()):  # not a plain caption
            need = keep[i] if keep else frozenset()
            kept, standing = index.supported(
                pick.word, probs[i], None if person is None else person[i], pick.avoid, need
            )
            if kept:
                lists[i] = kept, standing
    if not lists:
        return
    images = list(lists)
    scored = score(images, [[tuple(c.split()) for c in lists[i][0]] for i in images], probs[images])
    for i, logp in zip(images, scored):
        kept, standing = lists[i]
        picks[i] = replace(picks[i], caption=kept[int(np.argmax(standing + SCORER_WEIGHT * np.asarray(logp)))])


def _compete(
    picks: list, captions, index: CaptionIndex, probs: np.ndarray, person, score: Scorer, keep: list | None = None
) -> None:
    """Each photo without a pick whose top tag is at least COMPETE_P and has captions in the index:
    that tag's best caption for the photo (as _choose_for_photo chooses, naming one of keep[i])
    becomes its pick if the scorer's mean log-probability per word of it beats that of the decoder's
    caption. One call."""
    lists = {}
    for i, pick in enumerate(picks):
        word, p = index.top(probs[i])
        if pick is None and p >= COMPETE_P and word in index.captions:
            need = keep[i] if keep else frozenset()
            kept, standing = index.supported(word, probs[i], None if person is None else person[i], frozenset(), need)
            if kept:
                lists[i] = word, p, kept, standing
    if not lists:
        return
    images = list(lists)
    own = [tuple(captions[i].split()) for i in images]
    scored = score(images, [[*(tuple(c.split()) for c in lists[i][2]), o] for i, o in zip(images, own)], probs[images])
    for i, logp in zip(images, scored):
        word, p, kept, standing = lists[i]
        logp = np.asarray(logp)
        k = int(np.argmax(standing + SCORER_WEIGHT * logp[:-1]))
        if logp[k] > logp[-1]:
            picks[i] = Retrieved(kept[k], word, p, beat_decoder=True)
