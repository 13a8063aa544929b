"""Our CIDEr-D equals pycocoevalcap's, per image, when both take document frequencies from the same
references."""

import contextlib
import io
import random

import numpy as np
import pytest

from capgen.evaluation.cider import CiderD

WORDS = "a an the dog dogs cat man woman runs jumps on in grass water red blue ball street".split()


def _caption(rng: random.Random) -> list[str]:
    return [rng.choice(WORDS) for _ in range(rng.randint(1, 12))]


def test_matches_pycocoevalcap_per_image():
    from pycocoevalcap.cider.cider import Cider

    rng = random.Random(0)
    refs = {f"img{i}": [_caption(rng) for _ in range(rng.randint(1, 5))] for i in range(60)}
    cands = {k: _caption(rng) for k in refs}
    cands["img0"] = list(refs["img0"][0])  # an exact match scores high
    with contextlib.redirect_stdout(io.StringIO()):
        mean, per_image = Cider().compute_score(
            {k: [" ".join(r) for r in v] for k, v in refs.items()}, {k: [" ".join(c)] for k, c in cands.items()}
        )
    keys = list(refs)  # pycocoevalcap scores the images in the order of its dict keys
    ours = CiderD(refs).scores(keys, [cands[k] for k in keys])
    np.testing.assert_allclose(ours, per_image, rtol=1e-6)
    assert ours.mean() == pytest.approx(mean, rel=1e-6)
    assert ours[keys.index("img0")] == ours.max()


def test_document_frequencies_come_from_the_given_corpus_once():
    refs = {"a": [["a", "dog"]], "b": [["a", "cat"]]}
    cider = CiderD(refs)
    assert "a" in cider and "z" not in cider
    # "a" occurs in every document: idf 0, so only "dog"/"cat" carry weight
    assert cider.score("a", ["a", "dog"]) > cider.score("a", ["a", "cat"]) == 0.0
    with pytest.raises(ValueError):
        CiderD({})
