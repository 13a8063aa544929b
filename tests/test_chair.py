"""Invented objects (CHAIR), consensus reranking and scoring a photo folder against COCO references."""

import json
from dataclasses import dataclass

import pytest
from PIL import Image
from tests.conftest import _one_torch_thread

from capgen.cli import main
from capgen.decoding.consensus import consensus_order
from capgen.evaluation.chair import invented, objects_named
from capgen.evaluation.photos import read_coco_references


def test_objects_named_longest_phrase_and_plurals():
    assert objects_named("a hot dog next to two dogs and a teddy bear".split()) == {"hot dog", "dog", "teddy bear"}
    assert objects_named("three men ride buses past a refrigerator".split()) == {"person", "bus", "refrigerator"}
    assert objects_named("an orange cat".split()) == {"cat"}  # the colour is no fruit
    assert objects_named("oranges and broccoli on a plate".split()) == {"orange", "broccoli"}


def test_invented_counts_objects_no_reference_names():
    refs = {
        "a": ["A zebra grazing in a field.", "zebras on grass"],
        "b": ["a man walks his dog"],
        "c": ["a group of sheep in a meadow"],
    }
    preds = {"a": "a man standing on a zebra", "b": "a man walking a dog", "c": "a group of sheep"}
    m = invented(preds, refs)
    assert m["CHAIR_s"] == pytest.approx(1 / 3)  # only "a" invents (a man)
    assert m["CHAIR_i"] == pytest.approx(1 / 5)  # zebra, person | person, dog | sheep
    assert m["invented_person"] == pytest.approx(1 / 3) and m["invented_dog"] == 0.0


@dataclass
class _H:
    tokens: list
    score: float


def test_consensus_prefers_the_caption_the_others_support():
    outlier = _H([1, 2, 3, 4], -1.0)  # the beam's best, unlike the rest
    similar = [_H([5, 6, 7, 8], -1.5), _H([5, 6, 7, 9], -1.6), _H([5, 6, 7, 8, 9], -1.7)]
    order = consensus_order([outlier, *similar])
    assert order[0] in similar and order[-1] is outlier
    assert consensus_order([outlier, similar[0]]) == [outlier, similar[0]]  # two: the model's choice


def _coco(tmp_path, names, caps):
    images = [{"id": i, "file_name": n} for i, n in enumerate(names)]
    ann = [{"image_id": i, "caption": c} for i, n in enumerate(names) for c in caps]
    path = tmp_path / "captions.json"
    path.write_text(json.dumps({"images": images, "annotations": ann}))
    return path


def test_evaluate_a_photo_folder_against_coco_references(tiny_run, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    names = []
    for i, colour in enumerate(("red", "blue", "green")):
        Image.new("RGB", (40, 40), colour).save(photos / f"{i}.jpg")
        names.append(f"{i}.jpg")
    refs = _coco(tmp_path, names, ["a red circle above a blue square", "a green square"])
    ck = tiny_run.checkpoints["show_attend_tell"]
    with _one_torch_thread():  # --threads 1 sets torch's threads for the process: restored after
        code = main(
            [
                "evaluate",
                str(ck),
                "--images",
                str(photos),
                "--references",
                str(refs),
                "--out",
                str(tmp_path / "ev"),
                "--no-meteor",
                "--encoder",
                tiny_run.encoder,
                "--threads",
                "1",
            ]
        )
    assert code == 0
    out = capsys.readouterr().out
    assert "CIDEr" in out and "invented person" in out
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["images"] == 3 and 0 <= metrics["CHAIR_s"] <= 1
    preds = json.loads((tmp_path / "ev" / "predictions.json").read_text())
    assert [p["image_id"] for p in preds] == names


def test_bad_reference_files(tmp_path):
    from capgen.errors import DatasetError

    (tmp_path / "a.jpg").write_bytes(b"x")
    bad = tmp_path / "r.json"
    for content, match in [
        ("[]", "COCO captions file"),
        ('{"images": [{"id": 1, "file_name": "../x.jpg"}], "annotations": []}', "inside"),
        ('{"images": [{"id": 1, "file_name": "b.jpg"}], "annotations": [{"image_id": 1, "caption": "a"}]}', "not in"),
    ]:
        bad.write_text(content)
        with pytest.raises(DatasetError, match=match):
            read_coco_references(bad, tmp_path)
