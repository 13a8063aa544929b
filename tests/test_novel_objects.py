"""The DCC novel-object measurement: mention F1, and the held-out-object split of benchmarks/novel_objects.py."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from capgen.data.prepared import PreparedDataset
from capgen.evaluation.mentions import mention_f1, mentions


def test_mentions_words_plurals_and_phrases():
    assert mentions("a man rides a bike".split(), {"bicycle", "bike"})
    assert not mentions("a biker rides".split(), {"bike"})  # whole words only
    assert mentions("a child hugs a teddy bear".split(), {"teddy bear"})
    assert not mentions("a teddy and a bear".split(), {"teddy bear"})


def test_mention_f1_counts_over_all_images():
    refs = {
        "a": [["a", "cat", "sits"], ["a", "kitten"]],  # has the object
        "b": [["a", "cat"]],  # has it
        "c": [["a", "dog"]],  # does not
        "d": [["a", "dog", "runs"]],
    }  # does not
    preds = {"a": ["a", "cat"], "b": ["a", "dog"], "c": ["a", "cat"], "d": ["a", "dog"]}
    s = mention_f1(preds, refs, {"cat", "cats", "kitten"})
    assert (s.positives, s.predicted, s.true_positives) == (2, 2, 1)
    assert s.precision == s.recall == s.f1 == pytest.approx(0.5)
    never = mention_f1({}, refs, {"cat"})  # no prediction for any image
    assert never.f1 == 0.0 and never.precision == 0.0 and never.positives == 2
    assert mention_f1(preds, refs, {"zebra"}).f1 == 0.0  # no positives, no predictions


def _script():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "novel_objects.py"
    spec = importlib.util.spec_from_file_location("novel_objects", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_held_out_split_and_f1_table(prepared, tmp_path, capsys):
    script = _script()
    assert script.main(["--data", str(prepared.root), "--out", str(tmp_path / "held"), "--objects", "circle"]) == 0
    assert "| circle |" in capsys.readouterr().out
    held = PreparedDataset.load(tmp_path / "held")
    kept = {r.image for r in held.split("train")}
    removed = [r for r in prepared.split("train") if r.image not in kept]
    assert removed and all(any("circle" in t for t in r.tokens) for r in removed)
    assert not any("circle" in t for r in held.split("train") for t in r.tokens)
    assert "circle" in prepared.vocab.stoi and "circle" not in held.vocab.stoi
    for split in ("val", "test"):
        assert [r.image for r in held.split(split)] == [r.image for r in prepared.split(split)]
    assert held.manifest["held_out"]["removed_train_images"] == len(removed)
    # predictions that copy the first reference: F1 100 for an object every positive image names there
    preds = [{"image_id": r.image, "caption": " ".join(r.tokens[0])} for r in prepared.split("test")]
    (tmp_path / "predictions.json").write_text(json.dumps(preds))
    script.main(
        [
            "--data",
            str(prepared.root),
            "--predictions",
            str(tmp_path / "predictions.json"),
            "--objects",
            "circle",
            "--json",
            str(tmp_path / "f1.json"),
        ]
    )
    table = json.loads((tmp_path / "f1.json").read_text())
    assert table["objects"][0]["precision"] == 100.0 and table["mean_f1"] > 0
