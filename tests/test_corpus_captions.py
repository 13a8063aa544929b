"""Captions from caption text for objects the decoder barely knows (capgen.tags.corpus_captions)."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from capgen.decoding import DecodeConfig
from capgen.errors import TagsError
from capgen.tags.corpus_captions import FORMAT, THRESHOLD, CaptionIndex, CorpusCaptions
from capgen.tags.guide import GuideConfig
from capgen.tags.words import WordMap

WORDS = WordMap.from_lines(["0\tzebra\tzebra", "1\tgiraffe\tgiraffe", "2\ttree\ttree", "3\tdog\tdog"])


def _index(tmp_path, captions):
    path = tmp_path / "index.json"
    path.write_text(json.dumps({"format": FORMAT, "captions": captions}))
    return CaptionIndex.load(path, WORDS)


def test_choose_the_caption_naming_the_photos_tags(tmp_path):
    index = _index(tmp_path, {"zebra": ["a zebra in a field", "a zebra and a giraffe near a tree"]})
    probs = np.array([0.6, 0.3, 0.05, 0.0])
    assert index.choose(probs).caption == "a zebra and a giraffe near a tree"   # names both tags
    assert index.choose(np.array([0.6, 0.0, 0.0, 0.0])).caption == "a zebra in a field"  # the typical one
    assert index.choose(np.array([THRESHOLD / 2, 0, 0, 0])) is None            # not confident enough
    assert index.choose(np.array([0.0, 0.0, 0.0, 0.9])) is None                # a word the decoder knows


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
    results = [SimpleNamespace(caption="a man on a zebra", score=-3.0, tokens=[], alternatives=[], attention=1,
                               from_corpus=None),
               SimpleNamespace(caption="a dog runs", score=-2.0, tokens=[], alternatives=[], attention=1,
                               from_corpus=None)]
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
    assert "zebra" in index.captions and "dog" not in index.captions
