"""Object tags: the word file, class -> word aggregation, encoders with and without a head, CLI, server."""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from capgen import Captioner
from capgen.cli import main
from capgen.encoders import GridEncoder, LinearHead, Preprocess
from capgen.encoders.base import linear_head
from capgen.errors import TagsError
from capgen.tags import Tag, TagConfig, Tagger, WordMap, make_tagger, softmax, top_tags, word_probabilities
from conftest import TINY_ENCODER_MODULE

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The headed tiny encoder's head ignores the image (zero weights): class probabilities are softmax(BIAS).
BIAS = [2.0, 2.0, 1.5, 0.0]
P = np.exp(BIAS) / np.exp(BIAS).sum()
WORDS_TSV = "# a toy label set\n0\ttabby, tabby cat\tcat\n1\ttiger cat\tCat\n\n2\tbeagle\tdog\n3\tvelvet\t\n"
HEADED = (
    TINY_ENCODER_MODULE
    + f"""

def build_headed():
    head = torch.nn.Linear(8, 4)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor({BIAS}))
    return GridEncoder(_Tiny(), Preprocess(size=32), name="tiny-test", dim=8, grid_hw=(4, 4), head=head,
                       labels="toy-4")
"""
)


def toy_words() -> WordMap:
    return WordMap.from_lines(WORDS_TSV.splitlines(), "toy.tsv")


# ---- the word file ------------------------------------------------------------------------------------


def test_word_file_parses_comments_case_and_empty_words():
    wm = toy_words()
    assert wm.class_words == ("cat", "cat", "dog", "") and wm.words == ("cat", "dog")
    np.testing.assert_array_equal(wm.matrix(), [[1, 0], [1, 0], [0, 1], [0, 0]])
    # an editor that strips the trailing tab of an empty word leaves 2 fields: still "no tag"
    assert WordMap.from_lines(["0\tx\tcat", "1\tvelvet"]).class_words == ("cat", "")


@pytest.mark.parametrize(
    "lines, message",
    [
        (["0\ttabby\tcat", "1 tiger cat cat"], "toy.tsv, line 2: expected 'index<TAB>class name<TAB>word', got 1"),
        (["0\ttabby\tcat\textra"], "line 1: expected .* got 4"),
        (["# c", "x\ttabby\tcat"], "line 2: class index must be a non-negative integer, got 'x'"),
        (["0\ttabby\tcat", "0\ttiger\tcat"], "line 2: class 0 is listed twice"),
        (["0\ttabby\tcat!"], "line 1: word 'cat!' must be letters and spaces only"),
        (["0\ttabby\tcat", "2\tbeagle\tdog"], "toy.tsv: classes must be numbered 0..2 without gaps; missing 1"),
        (["# nothing"], "toy.tsv: no classes listed"),
        (["0\ttabby\t", "1\tbeagle\t"], "every word is empty"),
    ],
)
def test_malformed_word_file_names_file_and_line(lines, message):
    with pytest.raises(TagsError, match=message):
        WordMap.from_lines(lines, "toy.tsv")


def test_word_file_on_disk(tmp_path):
    path = tmp_path / "words.tsv"
    path.write_text(WORDS_TSV)
    assert WordMap.load(path).words == ("cat", "dog")
    with pytest.raises(TagsError, match="absent.tsv: tag word file does not exist"):
        WordMap.load(tmp_path / "absent.tsv")
    path.write_bytes(b"0\t\xff\xfe\tcat\n")
    with pytest.raises(TagsError, match="words.tsv: cannot read"):
        WordMap.load(path)


def test_bundled_imagenet_words():
    wm = WordMap.load()
    assert wm.num_classes == 1000
    assert {wm.class_words[i] for i in range(151, 269)} == {"dog"}  # every breed
    assert {wm.class_words[i] for i in range(281, 286)} == {"cat"}
    assert wm.class_words[963] == "pizza" and wm.class_words[671] == "bicycle" and wm.class_words[21] == "bird"
    assert sum(1 for w in wm.class_words if not w) < 20


# ---- probabilities -> words -----------------------------------------------------------------------------


def test_class_probabilities_are_summed_per_word_then_thresholded():
    wm = toy_words()
    probs = np.array(
        [
            [0.3, 0.3, 0.35, 0.05],  # cat 0.6 beats dog 0.35, though dog is the top class
            [0.01, 0.01, 0.02, 0.96],
        ]
    )  # the top class has no word: only weak tags
    wp = word_probabilities(probs, wm)
    np.testing.assert_allclose(wp, [[0.6, 0.35], [0.02, 0.02]])
    tags = top_tags(wp, wm, TagConfig(top_k=5, threshold=0.1))
    assert tags[0] == [Tag("cat", pytest.approx(0.6)), Tag("dog", pytest.approx(0.35))] and tags[1] == []
    assert [t.word for t in top_tags(wp, wm, TagConfig(top_k=1, threshold=0.0))[0]] == ["cat"]
    with pytest.raises(TagsError, match="lists 4 classes, the classifier has 3"):
        word_probabilities(probs[:, :3], wm)
    with pytest.raises(TagsError, match="positive number of tags"):
        TagConfig(top_k=0)
    with pytest.raises(TagsError, match="threshold"):
        TagConfig(threshold=1.5)


def test_tiny_class_probabilities_do_not_add_up_to_a_tag():
    wm = WordMap.from_lines([f"{i}\tbreed {i}\tdog" for i in range(100)] + ["100\tplate\tplate"])
    probs = np.full((1, 101), 0.002)
    probs[0, 100] = 0.8  # 100 dog classes at 0.002 each: 0.2 of noise
    assert word_probabilities(probs, wm)[0].tolist() == pytest.approx([0.2, 0.8])
    assert word_probabilities(probs, wm, class_floor=0.005)[0].tolist() == pytest.approx([0.0, 0.8])
    logits = np.log(probs)
    tagger = Tagger(LinearHead(np.zeros((101, 2), np.float32), logits[0].astype(np.float32), "toy"), wm)
    assert [t.word for t in tagger(np.zeros((1, 2), np.float32))[0]] == ["plate"]
    assert [t.word for t in tagger(np.zeros((1, 2), np.float32), TagConfig(class_floor=0.0))[0]] == ["plate", "dog"]


def test_softmax_is_stable_and_sums_to_one():
    p = softmax(np.array([[1000.0, 1000.0, -1000.0], [0.0, 0.0, 0.0]]))
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(p[0], [0.5, 0.5, 0.0])


def test_tagger_from_a_linear_head():
    fc = torch.nn.Linear(3, 4)
    with torch.no_grad():
        fc.weight.copy_(torch.randn(4, 3, generator=torch.Generator().manual_seed(0)))
    head = linear_head(fc, "toy-4")
    pooled = np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(head.logits(pooled), fc(torch.from_numpy(pooled)).numpy(), atol=1e-5)
    tagger = Tagger(head, toy_words())
    wp = tagger.word_probs(pooled)
    assert wp.shape == (2, 2) and np.all(wp.sum(axis=1) <= 1 + 1e-9)
    tags = tagger(pooled, TagConfig(top_k=2, threshold=0.0))
    assert [sorted(t.word for t in row) for row in tags] == [["cat", "dog"], ["cat", "dog"]]
    with pytest.raises(TagsError, match="lists 4 classes, the encoder's toy-3 head has 3"):
        Tagger(linear_head(torch.nn.Linear(3, 3), "toy-3"), toy_words())


def test_an_encoder_without_a_head_says_so():
    enc = GridEncoder(torch.nn.Conv2d(3, 8, 8, 8), Preprocess(size=32), name="my-backbone")
    assert enc.classifier() is None
    with pytest.raises(TagsError, match="tags unavailable: encoder my-backbone has no classifier head"):
        make_tagger(enc)
    with pytest.raises(Exception, match="head takes 5 features, the grid has 8"):
        GridEncoder(torch.nn.Conv2d(3, 8, 8, 8), Preprocess(size=32), name="x", head=torch.nn.Linear(5, 4))


# ---- the Captioner, the CLI and the server ----------------------------------------------------------------


@pytest.fixture(scope="module")
def headed(tiny_run, tmp_path_factory):
    """The tiny run's checkpoint with the same tiny encoder plus a toy 4-class head and word file."""
    root = tmp_path_factory.mktemp("headed")
    (root / "capgen_tiny_headed_encoder.py").write_text(HEADED)
    (root / "words.tsv").write_text(WORDS_TSV)
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(root))
    yield root
    mp.undo()


@pytest.fixture(scope="module")
def tagged_captioner(tiny_run, headed):
    return Captioner.from_pretrained(
        tiny_run.checkpoints["show_attend_tell"],
        encoder="capgen_tiny_headed_encoder:build_headed",
        tag_words=headed / "words.tsv",
    )


def photo(tiny_run) -> Path:
    return tiny_run.prepared.split("test")[0].path


def test_captioner_tags(tagged_captioner, tiny_captioner, tiny_run):
    assert tagged_captioner.tags_error is None and tagged_captioner.info()["tags"] is True
    res = tagged_captioner.caption(photo(tiny_run), tags=5)
    assert [t.word for t in res.tags] == ["cat", "dog"]
    assert res.tags[0].p == pytest.approx(P[0] + P[1]) and res.tags[1].p == pytest.approx(P[2])
    assert res.to_dict()["tags"] == [{"word": "cat", "p": round(P[0] + P[1], 4)}, {"word": "dog", "p": round(P[2], 4)}]
    # same caption with and without tags; no tags asked -> no field
    plain = tagged_captioner.caption(photo(tiny_run))
    assert plain.caption == res.caption and plain.tags is None and "tags" not in plain.to_dict()
    assert [t.word for t in tagged_captioner.caption(photo(tiny_run), tags=5, tag_threshold=0.5).tags] == ["cat"]
    assert [[t.word for t in row] for row in tagged_captioner.tag([photo(tiny_run)] * 2)] == [["cat", "dog"]] * 2


def test_no_head_warns_and_still_captions(tiny_captioner, tiny_run):
    assert tiny_captioner.tagger is None and "no classifier head" in tiny_captioner.tags_error
    with pytest.warns(RuntimeWarning, match="tags unavailable: encoder tiny-test has no classifier head"):
        res = tiny_captioner.caption(photo(tiny_run), tags=3)
    assert res.caption and res.tags is None
    with pytest.raises(TagsError, match="no classifier head"):
        tiny_captioner.tag([photo(tiny_run)])


def test_malformed_word_file_still_captions(tiny_run, headed, tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("0\ttabby\tcat\n1 tiger cat\n")
    cap = Captioner.from_pretrained(
        tiny_run.checkpoints["show_attend_tell"], encoder="capgen_tiny_headed_encoder:build_headed", tag_words=bad
    )
    assert cap.tagger is None and f"{bad}, line 2" in cap.tags_error
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = cap.caption(photo(tiny_run), tags=2)
    assert res.caption and res.tags is None
    assert len(caught) == 1 and "line 2" in str(caught[0].message)


def _cli(tiny_run, headed, *args, encoder="capgen_tiny_headed_encoder:build_headed"):
    return main(
        [
            "caption",
            str(photo(tiny_run)),
            "--model",
            str(tiny_run.checkpoints["show_attend_tell"]),
            "--encoder",
            encoder,
            "--tag-words",
            str(headed / "words.tsv"),
            *args,
        ]
    )


def test_cli_tags_in_every_format(tiny_run, headed, capsys):
    assert _cli(tiny_run, headed, "--tags") == 0
    out = capsys.readouterr().out
    path, caption, tags = out.rstrip("\n").split("\t")
    assert caption and tags == f"cat {P[0] + P[1]:.2f}, dog {P[2]:.2f}"
    assert _cli(tiny_run, headed, "--tags", "--n-tags", "1", "--format", "jsonl") == 0
    line = json.loads(capsys.readouterr().out)
    assert line["tags"] == [{"word": "cat", "p": round(P[0] + P[1], 4)}]
    assert _cli(tiny_run, headed, "--tags", "--tag-threshold", "0.5", "--format", "csv") == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows[0]["tags"] == f"cat {P[0] + P[1]:.2f}"
    assert _cli(tiny_run, headed) == 0  # without --tags: the plain two-column output
    assert capsys.readouterr().out.count("\t") == 1
    with pytest.raises(SystemExit) as e:
        _cli(tiny_run, headed, "--tags", "--tag-threshold", "2")
    assert e.value.code == 2 and "expected a probability in [0, 1]" in capsys.readouterr().err


def test_cli_tags_without_a_head(tiny_run, headed, capsys):
    assert _cli(tiny_run, headed, "--tags", encoder=tiny_run.encoder) == 0
    out, err = capsys.readouterr()
    assert out.count("\t") == 1 and out.split("\t")[1].strip()  # the caption, no tag column
    assert err.strip() == (
        "capgen caption: tags unavailable: encoder tiny-test has no classifier head (only the "
        "efficientnet-lite encoders, or your own GridEncoder given head=, have one); "
        "captions are unaffected"
    )


def test_server_tags_field(tagged_captioner, tiny_captioner, tiny_run):
    testclient = pytest.importorskip("fastapi.testclient")
    from capgen.serve import create_app

    files = {"files": ("a.png", Path(photo(tiny_run)).read_bytes(), "image/png")}
    with testclient.TestClient(create_app(tagged_captioner), base_url="http://localhost") as c:
        assert c.get("/health").json()["tags"] is True
        res = c.post("/caption?tags=5", files=files).json()["results"][0]
        assert res["caption"] and [t["word"] for t in res["tags"]] == ["cat", "dog"]
        assert math.isclose(res["tags"][0]["p"], P[0] + P[1], abs_tol=1e-4)  # the server rounds p to 4 decimals
        assert "tags" not in c.post("/caption", files=files).json()["results"][0]
        assert len(c.post("/caption?tags=5&tag_threshold=0.5", files=files).json()["results"][0]["tags"]) == 1
        for bad in ("tags=-1", "tags=x", "tags=2&tag_threshold=nan"):
            r = c.post(f"/caption?{bad}", files=files)
            assert r.status_code == 422 and r.json()["error"].startswith("tag"), bad
    with testclient.TestClient(create_app(tiny_captioner), base_url="http://localhost") as c:
        health = c.get("/health").json()
        assert health["tags"] is False and "no classifier head" in health["tags_error"]
        body = c.post("/caption?tags=5", files=files).json()
        assert body["results"][0]["caption"] and "tags" not in body["results"][0]
        assert "no classifier head" in body["warnings"][0]


# ---- the real encoder ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_efficientnet_head_gives_cat_and_coffee():
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    from capgen.encoders import create_encoder

    enc = create_encoder("efficientnet-lite2")
    x = torch.stack([enc.preprocess(Image.fromarray(a)) for a in (skdata.chelsea(), skdata.coffee())])
    with torch.no_grad():
        pooled, _ = enc(x)
        reference = enc.logits(x).numpy()  # the model's own forward: features -> pool -> dropout -> _fc
    head = enc.classifier()
    assert head.num_classes == 1000 and head.labels == "imagenet-1k"
    np.testing.assert_allclose(head.logits(pooled.numpy()), reference, atol=1e-4)
    cat, coffee = make_tagger(enc)(pooled.numpy(), TagConfig(top_k=3, threshold=0.05))
    assert cat[0].word == "cat" and cat[0].p > 0.5
    assert coffee[0].word in {"coffee", "cup", "espresso"}
