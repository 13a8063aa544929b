"""Does a caption name an object? The DCC novel-object F1 (Hendricks et al. 2016), on tokenised captions.

For an object X (a set of surface forms: "bicycle", "bicycles", "bike", ...), over all images of a
split: an image *has* X when any of its references mentions X; a generated caption *predicts* X
when it mentions X. F1 is the harmonic mean of precision (images with X / captions mentioning X)
and recall (captions mentioning X / images with X), as in DCC and NOC.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Mapping, Sequence


def mentions(tokens: Sequence[str], forms: Collection[str]) -> bool:
    """True when the caption's tokens contain any form; a form may be a phrase ("teddy bear")."""
    text = f" {' '.join(tokens)} "
    return any(f" {form} " in text for form in forms)


@dataclass(frozen=True)
class MentionScore:
    positives: int  # images whose references mention the object
    predicted: int  # generated captions that mention it
    true_positives: int  # both

    @property
    def precision(self) -> float:
        return self.true_positives / self.predicted if self.predicted else 0.0

    @property
    def recall(self) -> float:
        return self.true_positives / self.positives if self.positives else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def mention_f1(
    predictions: Mapping[str, Sequence[str]], references: Mapping[str, Sequence[Sequence[str]]], forms: Collection[str]
) -> MentionScore:
    """predictions: image -> generated caption tokens; references: image -> reference token lists.
    Scored over the images of `references`; an image without a prediction predicts nothing."""
    positives = predicted = both = 0
    for image, refs in references.items():
        has = any(mentions(r, forms) for r in refs)
        says = mentions(predictions.get(image, ()), forms)
        positives += has
        predicted += says
        both += has and says
    return MentionScore(positives, predicted, both)
