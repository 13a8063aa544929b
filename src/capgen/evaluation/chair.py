"""Invented objects: how often a caption names an object that none of its references name.

CHAIR (Rohrbach et al. 2018, "Object Hallucination in Image Captioning"), sentence level: the share
of captions naming at least one object of the table below that no reference of that image names;
instance level: the share of named objects that are invented. The table holds the 80 COCO object
categories with their usual synonyms; plurals are matched too. People and dogs, the two things a
Flickr8k decoder invents most, are also reported alone.

The person and dog word lists are those of the team's out-of-domain check (shared/hooks), so its
figures and `capgen evaluate`'s agree; captioning vets the same words (tags/vetting.py).
"""

from __future__ import annotations

from typing import Mapping, Sequence

from capgen.tags.vetting import DOG, PERSON
from capgen.tags.words import phrases_in

# category: synonyms (singular; plurals are derived). Multi-word forms are matched as phrases.
OBJECTS: dict[str, tuple[str, ...]] = {
    # "a group of zebras", "a crowd of sheep": no person in CHAIR's table (the shares below keep them)
    "person": tuple(sorted(PERSON - {"crowd", "group"})),
    "bicycle": ("bicycle", "bike", "cycle"),
    "car": ("car", "taxi", "suv", "sedan", "jeep"),
    "motorcycle": ("motorcycle", "motorbike", "scooter", "moped"),
    "airplane": ("airplane", "plane", "jet", "aircraft", "airliner"),
    "bus": ("bus",),
    "train": ("train", "locomotive", "tram", "subway"),
    "truck": ("truck", "pickup", "lorry"),
    "boat": ("boat", "ship", "canoe", "kayak", "sailboat", "yacht", "ferry"),
    "traffic light": ("traffic light", "stoplight"),
    "fire hydrant": ("fire hydrant", "hydrant"),
    "stop sign": ("stop sign",),
    "parking meter": ("parking meter",),
    "bench": ("bench",),
    "bird": ("bird", "pigeon", "duck", "seagull", "gull", "parrot", "goose", "swan", "owl", "eagle"),
    "cat": ("cat", "kitten", "kitty"),
    "dog": tuple(sorted(DOG)),
    "horse": ("horse", "pony", "foal"),
    "sheep": ("sheep", "lamb", "ram"),
    "cow": ("cow", "cattle", "bull", "calf", "ox"),
    "elephant": ("elephant",),
    "bear": ("bear",),
    "zebra": ("zebra",),
    "giraffe": ("giraffe",),
    "backpack": ("backpack",),
    "umbrella": ("umbrella", "parasol"),
    "handbag": ("handbag", "purse"),
    "tie": ("tie", "necktie"),
    "suitcase": ("suitcase", "luggage"),
    "frisbee": ("frisbee",),
    "skis": ("ski", "skis"),
    "snowboard": ("snowboard",),
    "sports ball": ("ball", "football", "soccer ball", "baseball", "basketball", "tennis ball"),
    "kite": ("kite",),
    "baseball bat": ("baseball bat", "bat"),
    "baseball glove": ("baseball glove", "mitt"),
    "skateboard": ("skateboard",),
    "surfboard": ("surfboard", "surf board"),
    "tennis racket": ("tennis racket", "racket", "racquet"),
    "bottle": ("bottle",),
    "wine glass": ("wine glass",),
    "cup": ("cup", "mug"),
    "fork": ("fork",),
    "knife": ("knife",),
    "spoon": ("spoon",),
    "bowl": ("bowl",),
    "banana": ("banana",),
    "apple": ("apple",),
    "sandwich": ("sandwich", "burger", "hamburger", "sub"),
    "orange": ("oranges",),  # "orange" alone is mostly the colour
    "broccoli": ("broccoli",),
    "carrot": ("carrot",),
    "hot dog": ("hot dog", "hotdog"),
    "pizza": ("pizza",),
    "donut": ("donut", "doughnut"),
    "cake": ("cake", "cupcake"),
    "chair": ("chair", "stool"),
    "couch": ("couch", "sofa"),
    "potted plant": ("potted plant", "houseplant"),
    "bed": ("bed",),
    "dining table": ("table", "dining table", "desk"),
    "toilet": ("toilet",),
    "tv": ("tv", "television", "monitor", "screen"),
    "laptop": ("laptop", "computer", "notebook"),
    "mouse": ("mouse",),
    "remote": ("remote", "controller"),
    "keyboard": ("keyboard",),
    "cell phone": ("cell phone", "phone", "cellphone", "smartphone"),
    "microwave": ("microwave",),
    "oven": ("oven", "stove"),
    "toaster": ("toaster",),
    "sink": ("sink",),
    "refrigerator": ("refrigerator", "fridge"),
    "book": ("book",),
    "clock": ("clock",),
    "vase": ("vase",),
    "scissors": ("scissors",),
    "teddy bear": ("teddy bear", "teddy"),
    "hair drier": ("hair drier", "hair dryer", "hairdryer"),
    "toothbrush": ("toothbrush",),
}


def _plurals(form: str) -> set[str]:
    *head, last = form.split()
    out = {last, last + "s", last + "es"}
    if last.endswith("y"):
        out.add(last[:-1] + "ies")
    if last.endswith("f"):
        out.add(last[:-1] + "ves")
    if last.endswith("fe"):
        out.add(last[:-2] + "ves")
    if last in ("man", "woman"):
        out.add(last[:-2] + "en")
    return {" ".join([*head, x]) for x in out}


def _form_table() -> dict[tuple[str, ...], str]:
    table: dict[tuple[str, ...], str] = {}
    for cat, forms in OBJECTS.items():
        for f in forms:
            for p in _plurals(f) | {f}:
                table.setdefault(tuple(p.split()), cat)
    return table


FORMS = _form_table()
LONGEST = max(len(f) for f in FORMS)
# "hot dog" is food, "teddy bear" a toy: the longest phrase wins over the word inside it.


def objects_named(tokens: Sequence[str]) -> set[str]:
    """The object categories a tokenised caption names (longest phrase first at each position)."""
    return phrases_in(tokens, FORMS, LONGEST)


def _words(text: str) -> list[str]:
    from capgen.data.text import normalize_caption

    return normalize_caption(text)


def invented(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """CHAIR_s, CHAIR_i and the invented-person / invented-dog shares (each 0..1) over the images
    in `predictions` (image -> caption) with references (image -> captions)."""
    n = s_bad = named = bad = person = dog = 0
    for image, caption in predictions.items():
        refs = references.get(image)
        if not refs:
            continue
        words = _words(caption)
        ref_words = [_words(r) for r in refs]
        in_refs = set().union(*(objects_named(r) for r in ref_words))
        cats = objects_named(words)
        wrong = cats - in_refs
        n, named, bad, s_bad = n + 1, named + len(cats), bad + len(wrong), s_bad + bool(wrong)
        all_ref = {w for r in ref_words for w in r}
        person += bool(PERSON & set(words) and not PERSON & all_ref)
        dog += bool(DOG & set(words) and not DOG & all_ref)
    if not n:
        return {}
    return {
        "CHAIR_s": s_bad / n,
        "CHAIR_i": bad / max(named, 1),
        "invented_person": person / n,
        "invented_dog": dog / n,
    }
