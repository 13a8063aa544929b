"""Tag-guided captions: a confident object tag becomes a word the caption must contain.

    guide = Guide.build(vocab, tagger.words)          # once per model: a plan for every tag word
    g = guide.plan(tags, GuideConfig())               # per image: Guidance, or None (no confident tag)
    hyps = decode(model, pooled, grid, ids, config, include=[g.include if g else None, ...])
    words, source = Guide.render(vocab.decode(hyps[0][0].tokens), g)

A tag word the model knows is required as it is. A word it never saw in training ("bicycle" when
no training caption had one) gets a stand-in: the in-vocabulary object word nearest to it in GloVe
space ("cart"), which the decoder knows how to place in a sentence; the stand-in is then written as
the tag word ("a man pushes a cart" -> "a man pushes a bicycle"). This is the constrained beam search
of Anderson et al. (2017) with the new word's embedding replaced by its nearest known neighbour's,
so it works with any trained model and needs no retraining.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from capgen.data.glove import load_glove
from capgen.data.vocab import Vocabulary
from capgen.errors import TagsError
from capgen.tags.tagger import Tag
from capgen.tags.words import WordMap

# A tag guides the caption when its probability reaches this; picked on the Flickr8k val split
# (BENCHMARKS.md, "Tag-guided captions"). For a word the model knows: high enough that in-domain
# captions keep their CIDEr. For a word it never learned, lower: on the held-out-object split it
# names the novel objects (val F1 57.3 against 56.1 at 0.5) for -0.3 val CIDEr on the full data.
DEFAULT_GUIDE_THRESHOLD = 0.5
DEFAULT_NOVEL_GUIDE_THRESHOLD = 0.35
# Stand-ins come from the vocabulary's most frequent words (ids are frequency ranks): a word the
# model rarely emitted is one it does not know how to place.
STAND_IN_RANK = 1500
_VOWELS = "aeiou"
# A tag word after one of these is written as a plural: the decoder's "two" came from its own
# sentence ("two dogs are playing"), the singular from the tag ("two bear are playing").
_COUNTS = frozenset("two three four five six several many".split())
_VERBS_S = frozenset("is was has does".split())  # words ending in s that are no plural nouns
_IRREGULAR = {
    **{w: w for w in "sheep fish deer bison moose elk salmon trout aircraft cattle swine".split()},
    **dict(
        pair.split(":")
        for pair in "knife:knives wolf:wolves shelf:shelves leaf:leaves loaf:loaves mouse:mice goose:geese "
        "ox:oxen man:men woman:women child:children foot:feet tooth:teeth tomato:tomatoes potato:potatoes".split()
    ),
}
_SINGULAR_S = frozenset("tennis canvas gas lens chassis iris atlas axis mantis".split())
# Words that name a tagged object as captions say it: a caption that must contain "bicycle" had the
# decoder's "a man is riding a bike on a dirt track" turned into "a man is riding a bicycle on a dirt
# bike", and "skis" gave "a skier is skis down a snowy hill" (Flickr8k val + test and coco_dev: 45 and
# 15 captions). Any of these words in the caption names the tag, as its plural does.
_NAMED_AS = {
    "bicycle": "bike bikes biker bikers bicyclist bicyclists cyclist cyclists",
    "skis": "ski skier skiers skiing",
    "kayak": "kayaker kayakers kayaking",
    "sled": "sledding",
}


@dataclass(frozen=True)
class GuideConfig:
    """When a tag guides the caption: its probability reaches `threshold` for a word the model knows
    (the model's own choice already weighs the image), or `novel_threshold` for a word it never
    learned (the tag is then the only evidence; a lower bar names more novel objects).
    corpus: for an object the decoder barely knows, take the caption from human captions of it
    (capgen.tags.corpus_captions) when the top tag is confident enough.
    scenes: for a photo the person head doubts, let human captions of similar scenes compete with
    the decoder's caption (capgen.tags.scenes); with corpus only.
    neighbours: draw several beam candidates and keep the one that agrees most with the captions of
    the nearest training photos (capgen.tags.neighbours), for a photo like them."""

    threshold: float = DEFAULT_GUIDE_THRESHOLD
    novel_threshold: float = DEFAULT_NOVEL_GUIDE_THRESHOLD
    corpus: bool = True
    scenes: bool = True
    neighbours: bool = True

    def __post_init__(self) -> None:
        for name in ("threshold", "novel_threshold"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise TagsError(f"guide {name.replace('_', ' ')}: expected a probability in (0, 1], got {value}")

    @classmethod
    def of(cls, guide: "GuideConfig | float | None") -> "GuideConfig | None":
        """None (no guidance), a GuideConfig, or one probability for both kinds of word."""
        if guide is None or isinstance(guide, GuideConfig):
            return guide
        return cls(float(guide), float(guide))

    @property
    def lowest(self) -> float:
        return min(self.threshold, self.novel_threshold)

    def to_dict(self) -> dict:
        return {
            "threshold": self.threshold,
            "novel_threshold": self.novel_threshold,
            "corpus": self.corpus,
            "scenes": self.scenes,
            "neighbours": self.neighbours,
        }


@dataclass(frozen=True)
class Guidance:
    """One image: the word ids of which the caption must contain one, and how to write them back."""

    tag: Tag
    include: tuple[int, ...]
    stand_in: str | None = None  # the in-vocabulary word decoded in place of tag.word, if any

    def to_dict(self) -> dict:
        return {
            "word": self.tag.word,
            "p": round(self.tag.p, 4),
            **({"stand_in": self.stand_in} if self.stand_in else {}),
        }


@dataclass(frozen=True)
class _Plan:
    include: tuple[int, ...]
    stand_in: str | None


class Guide:
    """Tag words -> decoding constraints for one vocabulary. Build with `Guide.build`."""

    def __init__(self, plans: dict[str, _Plan], unplaceable: Sequence[str] = ()):
        self.plans, self.unplaceable = plans, tuple(unplaceable)

    @classmethod
    def build(cls, vocab: Vocabulary, words: WordMap) -> "Guide":
        """A plan for every word of `words`. Words that are neither in the vocabulary nor in GloVe
        (e.g. a typo in an edited mapping file) cannot guide: one warning names them, and their tags
        are still shown."""
        plans: dict[str, _Plan] = {}
        novel = []
        for word in words.words:
            if word in vocab.stoi:
                plans[word] = _Plan(_naming_forms(word, vocab), None)
            else:
                novel.append(word)
        stand_ins = [w for w in words.words if w in vocab.stoi and vocab.stoi[w] < STAND_IN_RANK]
        if novel and stand_ins:
            known, found = load_glove(stand_ins)
            stand_ins, known = [w for w, f in zip(stand_ins, found) if f], _unit(known[found])  # (S, 50)
        no_vector = []
        for word in novel:
            vectors, ok = load_glove(word.split())
            if not ok.all():
                no_vector.append(word)
            elif stand_ins:
                best = stand_ins[int(np.argmax(known @ _unit(vectors.mean(axis=0, keepdims=True))[0]))]
                plans[word] = _Plan((vocab.stoi[best],), best)
        if no_vector:
            warnings.warn(
                f"{words.source}: tag words {_listed(no_vector)} have no GloVe vector and are not in the "
                "model's vocabulary, so they cannot guide captions; their tags are still shown",
                RuntimeWarning,
                stacklevel=2,
            )
        unplaceable = [w for w in novel if w not in plans]
        if novel and not stand_ins:
            warnings.warn(
                f"{words.source}: no word of it is both in the model's vocabulary and in GloVe, so the words "
                f"the model lacks ({_listed(novel)}) have nothing to stand in for them and cannot "
                "guide captions; their tags are still shown",
                RuntimeWarning,
                stacklevel=2,
            )
        return cls(plans, unplaceable)

    def to_dict(self) -> dict:
        """The plans as JSON data (an exported folder carries them: the runtime has no GloVe)."""
        return {
            "plans": {w: {"include": list(p.include), "stand_in": p.stand_in} for w, p in self.plans.items()},
            "unplaceable": list(self.unplaceable),
        }

    @classmethod
    def from_dict(cls, data, vocab_size: int, source: str) -> "Guide":
        """`to_dict`'s data back; TagsError naming `source` for anything else (ids outside the vocabulary)."""

        def bad(what: str) -> TagsError:
            return TagsError(f"{source}: {what}; expected the tag guidance plans capgen export writes")

        if not isinstance(data, dict) or not isinstance(data.get("plans"), dict):
            raise bad("no 'plans' object")
        plans = {}
        for word, p in data["plans"].items():
            include, stand_in = (p.get("include"), p.get("stand_in")) if isinstance(p, dict) else (None, None)
            if not (
                isinstance(include, list)
                and include
                and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab_size for i in include)
            ):
                raise bad(f"plan of {word!r} has word ids {include!r} (vocabulary of {vocab_size})")
            if stand_in is not None and not isinstance(stand_in, str):
                raise bad(f"plan of {word!r} has stand-in {stand_in!r}")
            plans[word] = _Plan(tuple(include), stand_in)
        unplaceable = data.get("unplaceable", [])
        if not isinstance(unplaceable, list) or not all(isinstance(w, str) for w in unplaceable):
            raise bad("'unplaceable' is not a list of words")
        return cls(plans, unplaceable)

    def plan(self, tags: Sequence[Tag], config: GuideConfig | float | None = None) -> Guidance | None:
        """The most probable of `tags` (most probable first) that has a plan and reaches its
        threshold under `config` (default GuideConfig()), as a Guidance."""
        config = GuideConfig.of(config) or GuideConfig()
        for tag in tags:
            if tag.p < config.lowest:
                return None
            plan = self.plans.get(tag.word)
            if plan is not None and tag.p >= (config.novel_threshold if plan.stand_in else config.threshold):
                return Guidance(tag, plan.include, plan.stand_in)
        return None

    @staticmethod
    def render(words: Sequence[str], guidance: Guidance | None) -> tuple[list[str], list[int]]:
        """Decoded words with the stand-in written as the tag word and "a"/"an" fixed before it; also,
        for each output word, the index of the decoded word it comes from (to keep attention rows)."""
        out, source = list(words), list(range(len(words)))
        if guidance is None:
            return out, source
        old, new = guidance.stand_in or guidance.tag.word, guidance.tag.word
        out, source = [], []
        for i, w in enumerate(words):
            if w != old:
                out.append(w)
                source.append(i)
                continue
            # "two gondola are" -> "two gondolas are"; not "two sled dogs", where the tag word names a kind
            after = words[i + 1] if i + 1 < len(words) else ""
            kind = bool(after) and _is_plural(after) and after not in _VERBS_S
            if out and out[-1] in ("a", "an"):
                if _is_plural(new) or kind:  # "a skis" -> "skis", "a sled dogs are" -> "sled dogs are"
                    out.pop()
                    source.pop()
                else:
                    out[-1] = "an" if new[0] in _VOWELS else "a"
            parts = new.split()  # "ball" -> "soccer ball"
            # the decoder's own first words of the tag: "a soccer ball" -> "a soccer ball", not "soccer soccer"
            for k in range(len(parts) - 1, 0, -1):
                if out[-k:] == parts[:k]:
                    parts = parts[k:]
                    break
            if out and out[-1] in _COUNTS and not _is_plural(new) and not kind:
                parts[-1] = _plural(parts[-1])
            for part in parts:
                out.append(part)
                source.append(i)
        return out, source


def _listed(words: Sequence[str], most: int = 5) -> str:
    return ", ".join(repr(w) for w in words[:most]) + (f" and {len(words) - most} more" if len(words) > most else "")


def _naming_forms(word: str, vocab: Vocabulary) -> tuple[int, ...]:
    """The word's id, and those of its plural and of the words that name it (_NAMED_AS) that the
    vocabulary has ("dog" or "dogs" both name a dog; "bike" names a bicycle)."""
    forms = [word, f"{word}s", f"{word}es"] if " " not in word else [word]
    forms += _NAMED_AS.get(word, "").split()
    return tuple(vocab.stoi[f] for f in forms if f in vocab.stoi)


def _is_plural(word: str) -> bool:
    """English plural by its ending ("skis", "bubbles", "maracas"; not "bus", "glass", "canvas", "tennis")."""
    last = word.split()[-1]
    return last.endswith("s") and not last.endswith(("ss", "us")) and last not in _SINGULAR_S


def _plural(word: str) -> str:
    """English plural: "gondola" -> "gondolas", "bus" -> "buses", "strawberry" -> "strawberries",
    "knife" -> "knives", "sheep" -> "sheep"."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and len(word) > 1 and word[-2] not in _VOWELS:
        return word[:-1] + "ies"
    return word + "s"


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# Tags each image's plan looks at, most probable first: the plan takes the first with a plan that
# reaches its threshold, and a sixth tag above the lowest threshold is rare (probabilities sum to 1).
CANDIDATES = 5


def plan_images(
    plans: Guide | Callable[[], Guide] | None,
    tagger,
    pooled: np.ndarray,
    guide: GuideConfig | float | None,
    method: str | None = None,
) -> list:
    """Per image, the Guidance its caption must follow, or None: the one planner of capgen caption,
    the runtime and evaluation. None for every image without plans or a tagger, with guide None, or
    when the decoding `method` is "sample" (guidance constrains a search; a sample is the model's draw).
    `plans` may be a function that builds them, called only when some image may be guided."""
    guide = GuideConfig.of(guide)
    if guide is None or tagger is None or plans is None or method == "sample":
        return [None] * len(pooled)
    from capgen.tags.tagger import TagConfig

    plans = plans() if callable(plans) else plans
    return [plans.plan(t, guide) for t in tagger(pooled, TagConfig(top_k=CANDIDATES, threshold=guide.lowest))]
