import pytest

from capgen.data import Vocabulary, normalize_caption
from capgen.errors import DatasetError


def test_normalize_like_karpathy():
    assert normalize_caption('A black-and-white dog, running; "fast"! Isn\'t it?') == [
        "a",
        "black",
        "and",
        "white",
        "dog",
        "running",
        "fast",
        "isnt",
        "it",
    ]
    assert normalize_caption("  Two   dogs .  ") == ["two", "dogs"]
    # every punctuation mark goes, as in Karpathy's prepro: no "shapes:" or "cat/kitten" words
    assert normalize_caption("Shapes: a cat/kitten (small) & 2 dogs...") == [
        "shapes",
        "a",
        "cat",
        "kitten",
        "small",
        "2",
        "dogs",
    ]


def test_vocab_min_count_max_size_and_specials():
    caps = [["a", "dog"], ["a", "cat"], ["a", "dog"], ["the", "dog"]]
    v = Vocabulary.build(caps, min_count=2)
    assert v.itos[:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    assert v.pad_id == 0
    assert v.itos[4:] == ["a", "dog"]  # most frequent first; 'cat' and 'the' below min count
    small = Vocabulary.build(caps, min_count=1, max_size=5)
    assert small.itos[4:] == ["a"]


def test_vocab_round_trip_and_unknown(tmp_path):
    v = Vocabulary.build([["a", "red", "circle"]] * 3, min_count=1)
    ids = v.encode(["a", "red", "square"])
    assert ids[0] == v.start_id and ids[-1] == v.end_id
    assert v.decode(ids) == ["a", "red", "<unk>"]
    assert v.decode(v.encode(["a", "red", "circle"]) + [v.pad_id, v.pad_id]) == ["a", "red", "circle"]
    v.save(tmp_path / "v.json")
    assert Vocabulary.load(tmp_path / "v.json").itos == v.itos


def test_vocab_rejects_bad_input(tmp_path):
    with pytest.raises(DatasetError):
        Vocabulary.build([["a"]], min_count=0)
    with pytest.raises(DatasetError):
        Vocabulary(["a", "b"])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DatasetError, match="bad.json"):
        Vocabulary.load(tmp_path / "bad.json")
