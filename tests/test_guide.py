"""Tag-guided captions: constrained beam search in the one decoder, stand-ins for words the model
lacks, rendering, and the Captioner / CLI / evaluate plumbing."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace

import numpy as np
import pytest

from capgen import Captioner
from capgen.cli import main
from capgen.data.vocab import Vocabulary
from capgen.decoding import DecodeConfig, DecodeError, beam, decode
from capgen.decoding.config import MAX_GUIDE_PENALTY as HARD
from capgen.errors import TagsError
from capgen.tags import Guidance, Guide, GuideConfig, Tag, WordMap
from conftest import one_line_error
from test_decoding import MODELS, brute_force, logp_approx, sharp
from test_models import IDS, features
from test_tags import headed, photo  # noqa: F401 (headed is a fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- constrained beam search ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_required_words_appear_and_other_images_are_untouched(name):
    model = sharp(name, 20)
    pooled, grid = features(3, seed=4)
    cfg = DecodeConfig(beam_size=3, max_len=8, guide_penalty=HARD)  # the word comes, whatever it costs
    free = decode(model, pooled, grid, IDS, cfg)
    guided = decode(model, pooled, grid, IDS, cfg, include=[{7}, None, {9, 10}])
    assert 7 in guided[0][0].tokens and {9, 10} & set(guided[2][0].tokens)
    # the unconstrained image of the batch gets exactly its own caption (decoded apart from the guided
    # ones, so only the float rounding of another batch size may differ)
    assert guided[1][0].tokens == free[1][0].tokens and guided[1][0].score == pytest.approx(free[1][0].score, rel=1e-6)
    # greedy becomes a beam of one, which also satisfies the constraint
    greedy = decode(
        model, pooled, grid, IDS, DecodeConfig(beam_size=1, max_len=8, guide_penalty=HARD), include=[{7}, {8}, {9}]
    )
    assert [7 in greedy[0][0].tokens, 8 in greedy[1][0].tokens, 9 in greedy[2][0].tokens] == [True, True, True]


@pytest.mark.parametrize("early_words", [1, 3])
@pytest.mark.parametrize("name", MODELS)
def test_wide_constrained_beam_finds_the_best_caption_with_the_word(name, early_words, monkeypatch):
    """Exhaustive search (beam 32 >= every candidate) returns the caption with word 5 that is best by
    its score plus EARLY_BONUS when 5 is among its first `early_words` words, with its own score."""
    monkeypatch.setattr(beam, "EARLY_WORDS", early_words)
    model = sharp(name, 6).eval()
    for seed in range(3):
        pooled, grid = features(1, seed=seed)
        every, scale = brute_force(model, pooled, grid, [3, 4, 5], 3, 0.0)
        with_5 = [(t, s) for t, s in every if 5 in t]
        tokens, score = max(with_5, key=lambda x: x[1] + beam.EARLY_BONUS * (x[0].index(5) < early_words))
        hyp = decode(
            model,
            pooled,
            grid,
            IDS,
            DecodeConfig(
                beam_size=32, max_len=3, allow_unk=True, no_repeat_ngram=0, no_repeat_words=False, guide_penalty=HARD
            ),
            include=[{5}],
        )[0][0]
        assert hyp.tokens == tokens and hyp.score == logp_approx(score, scale, 4)


@pytest.mark.parametrize("name", MODELS)
def test_a_caption_without_the_word_wins_when_it_is_likelier_by_more_than_the_penalty(name):
    """Soft guidance: exhaustive search returns the caption best by its score, plus EARLY_BONUS with
    word 5 among its first EARLY_WORDS words, minus the penalty without word 5; with its own score."""
    model = sharp(name, 6).eval()
    cfg = DecodeConfig(beam_size=32, max_len=3, allow_unk=True, no_repeat_ngram=0, no_repeat_words=False)
    named = {}
    for penalty in (0.0, 1.0, 3.0, HARD):
        for seed in range(4):
            pooled, grid = features(1, seed=seed)
            every, scale = brute_force(model, pooled, grid, [3, 4, 5], 3, 0.0)

            def ranked(ts, penalty=penalty):
                t, s = ts
                return s + (beam.EARLY_BONUS * (t.index(5) < beam.EARLY_WORDS) if 5 in t else -penalty)

            tokens, score = max(every, key=ranked)
            hyp = decode(model, pooled, grid, IDS, replace(cfg, guide_penalty=penalty), include=[{5}])[0][0]
            assert hyp.tokens == tokens and hyp.score == logp_approx(score, scale, 4)
            named.setdefault(penalty, []).append(5 in tokens)
    assert not all(named[0.0]) and all(named[HARD])  # the penalty decides some captions


def test_an_impossible_word_still_gives_a_caption_with_its_own_score():
    model = sharp("show_tell", 20)
    pooled, grid = features(1, seed=1)
    cfg = DecodeConfig(beam_size=3, max_len=8)
    free = decode(model, pooled, grid, IDS, cfg)[0][0]
    hyp = decode(model, pooled, grid, IDS, cfg, include=[{IDS.unk}])[0][0]  # <unk> is never emitted
    assert IDS.unk not in hyp.tokens and hyp.tokens == free.tokens and hyp.score == pytest.approx(free.score, rel=1e-5)


@pytest.mark.parametrize(
    "include, message",
    [
        ([{7}], "one entry per image (2), got 1"),
        ([{7}, {99}], "required word id 99 is outside the vocabulary"),
    ],
)
def test_bad_required_words(include, message):
    pooled, grid = features(2)
    with pytest.raises(DecodeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        decode(sharp("show_tell", 20), pooled, grid, IDS, DecodeConfig(), include=include)
    with pytest.raises(DecodeError, match="not sampling"):
        decode(sharp("show_tell", 20), pooled, grid, IDS, DecodeConfig(method="sample"), include=[{7}, None])


# ---- Guide: plans, stand-ins, rendering ----------------------------------------------------------------------

VOCAB = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", "a", "red", "circle", "square", "circles", "on"])


def words(*rows: str) -> WordMap:
    return WordMap.from_lines([f"{i}\tclass {i}\t{w}" for i, w in enumerate(rows)], "toy.tsv")


def test_known_words_are_required_as_they_are_and_new_ones_get_the_nearest_known_one():
    with pytest.warns(RuntimeWarning, match=r"toy.tsv: tag words 'qzxvw' have no GloVe vector"):
        guide = Guide.build(VOCAB, words("circle", "square", "ball", "qzxvw"))
    assert guide.plans["circle"].include == (6, 8) and guide.plans["circle"].stand_in is None  # with its plural
    ball = guide.plans["ball"]
    assert ball.stand_in in ("circle", "square") and ball.include == (VOCAB.stoi[ball.stand_in],)
    assert guide.unplaceable == ("qzxvw",)
    g = guide.plan([Tag("ball", 0.8), Tag("circle", 0.1)], 0.5)
    assert g == Guidance(Tag("ball", 0.8), ball.include, ball.stand_in)
    assert g.to_dict() == {"word": "ball", "p": 0.8, "stand_in": ball.stand_in}
    assert guide.plan([Tag("ball", 0.4)], 0.5) is None  # not confident
    assert guide.plan([Tag("qzxvw", 0.9), Tag("square", 0.6)], 0.5).tag.word == "square"
    # a word the model lacks can have its own, lower bar; a known word keeps the higher one
    low = GuideConfig(threshold=0.5, novel_threshold=0.2)
    assert guide.plan([Tag("square", 0.35), Tag("ball", 0.3)], low).tag.word == "ball"
    assert guide.plan([Tag("square", 0.35), Tag("ball", 0.1)], low) is None
    assert guide.plan([Tag("square", 0.35)], GuideConfig(threshold=0.3, novel_threshold=0.9)).tag.word == "square"
    with pytest.raises(TagsError, match="guide novel threshold: expected a probability in \\(0, 1\\], got 0"):
        GuideConfig(0.5, 0)


def test_words_that_name_a_tag_satisfy_it():
    """ "bike" names a bicycle and "skier" the skis: requiring the tag word itself wrote "a man is riding a
    bicycle on a dirt bike" and "a skier is skis down a snowy hill"."""
    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", "a", "bicycle", "bike", "bikers", "skier", "skiing"])
    guide = Guide.build(vocab, words("bicycle", "skis"))
    assert guide.plans["bicycle"].include == (5, 6, 7)  # the word, then the others the vocabulary has
    assert guide.plans["bicycle"].stand_in is None
    # a tag word the model lacks still gets a stand-in, not the words naming it
    assert guide.plans["skis"].stand_in is not None and guide.plans["skis"].include == (
        vocab.stoi[guide.plans["skis"].stand_in],
    )


def test_no_known_word_to_stand_in_says_so():
    with pytest.warns(RuntimeWarning, match="nothing to stand in for them"):
        guide = Guide.build(VOCAB, words("ball", "apple"))
    assert guide.plans == {} and guide.unplaceable == ("ball", "apple")


@pytest.mark.parametrize(
    "decoded, tag, stand_in, expected, source",
    [
        ("a red circle on a square", "ball", "circle", "a red ball on a square", [0, 1, 2, 3, 4, 5]),
        ("a circle on a square", "apple", "circle", "an apple on a square", [0, 1, 2, 3, 4]),
        ("an circle", "ball", "circle", "a ball", [0, 1]),
        ("a circle on a square", "skis", "circle", "skis on a square", [1, 2, 3, 4]),
        ("a circle on a square", "soccer ball", "circle", "a soccer ball on a square", [0, 1, 1, 2, 3, 4]),
        ("a square", "square", None, "a square", [0, 1]),
        ("a apple", "apple", None, "an apple", [0, 1]),
        # a count before the tag word: the decoder's plural sentence, the tag's singular word
        ("two circle are on a square", "gondola", "circle", "two gondolas are on a square", [0, 1, 2, 3, 4, 5]),
        ("two bus are here", "bus", None, "two buses are here", [0, 1, 2, 3]),
        ("three circle", "strawberry", "circle", "three strawberries", [0, 1]),
        ("two circle", "soccer ball", "circle", "two soccer balls", [0, 1, 1]),
        ("two circle", "sheep", "circle", "two sheep", [0, 1]),
        ("two circle", "knife", "circle", "two knives", [0, 1]),
        ("two circle", "skis", "circle", "two skis", [0, 1]),
        ("the circle", "gondola", "circle", "the gondola", [0, 1]),
        ("two circle dogs are here", "sled", "circle", "two sled dogs are here", [0, 1, 2, 3, 4]),
        ("two circle is here", "boa", "circle", "two boas is here", [0, 1, 2, 3]),
        ("a circle dogs are here", "sled", "circle", "sled dogs are here", [1, 2, 3, 4]),
        ("a soccer circle on a square", "soccer ball", "circle", "a soccer ball on a square", [0, 1, 2, 3, 4, 5]),
        ("a race circle", "race car", "circle", "a race car", [0, 1, 2]),
        ("a circle is here", "sled", "circle", "a sled is here", [0, 1, 2, 3]),
    ],
)
def test_render(decoded, tag, stand_in, expected, source):
    out, src = Guide.render(decoded.split(), Guidance(Tag(tag, 0.9), (6,), stand_in))
    assert " ".join(out) == expected and src == source
    assert Guide.render(decoded.split(), None) == (decoded.split(), list(range(len(decoded.split()))))


# ---- Captioner, CLI, evaluate ------------------------------------------------------------------------------

# The headed tiny encoder's probabilities are softmax(BIAS): the first two classes sum to 0.73.
SQUARE_TSV = "0\tbox\tsquare\n1\tcrate\tsquare\n2\tbeagle\tdog\n3\tvelvet\t\n"


@pytest.fixture(scope="module")
def square_words(headed):  # noqa: F811 (the imported fixture)
    """The headed tiny encoder (test_tags) with a word file whose likeliest word the model knows."""
    path = headed / "square.tsv"
    path.write_text(SQUARE_TSV)
    return path


@pytest.fixture(scope="module")
def guided_captioner(tiny_run, square_words):
    return Captioner.from_pretrained(
        tiny_run.checkpoints["show_attend_tell"],
        encoder="capgen_tiny_headed_encoder:build_headed",
        tag_words=square_words,
    )


def test_captioner_guides_by_default_when_confident(guided_captioner, tiny_run):
    images = [photo(tiny_run), tiny_run.prepared.split("test")[1].path]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "dog" has no stand-in in the synthetic vocabulary
        guided = guided_captioner.caption(images, return_attention=True, guide_penalty=HARD)
        plain = guided_captioner.caption(images, guide=None, return_attention=True)
        strict = guided_captioner.caption(images, guide=0.9, guide_penalty=HARD)
    for g, p, s in zip(guided, plain, strict):
        assert "square" in g.tokens and g.guided.tag.word == "square" and g.to_dict()["guided"]["word"] == "square"
        assert g.attention.shape[0] == len(g.tokens)
        assert p.guided is None and "guided" not in p.to_dict() and s.guided is None
        assert s.caption == p.caption
    with pytest.raises(Exception, match="guide threshold"):
        guided_captioner.caption(images[0], guide=1.5)


def test_captioner_without_a_head_is_never_guided(tiny_captioner, tiny_run):
    res = tiny_captioner.caption(photo(tiny_run))
    assert res.guided is None and res.caption


def test_cli_guide_options(tiny_run, square_words, capsys):
    base = [
        "caption",
        str(photo(tiny_run)),
        "--model",
        str(tiny_run.checkpoints["show_attend_tell"]),
        "--encoder",
        "capgen_tiny_headed_encoder:build_headed",
        "--tag-words",
        str(square_words),
        "--format",
        "jsonl",
        "--guide-penalty",
        str(HARD),
    ]
    assert main(base) == 0
    line = json.loads(capsys.readouterr().out)
    assert "square" in line["caption"].split() and line["guided"]["word"] == "square"
    assert main(base + ["--no-guide"]) == 0
    assert "guided" not in json.loads(capsys.readouterr().out)
    assert main(base + ["--guide-threshold", "0.95"]) == 0
    assert "guided" not in json.loads(capsys.readouterr().out)
    err = one_line_error(capsys, base + ["--guide-threshold", "7"], "--guide-threshold")
    assert "probability" in err
    one_line_error(capsys, base + ["--guide-penalty", "-1"], "--guide-penalty", "a number >= 0")
    one_line_error(capsys, base + ["--guide-penalty", "1e9"], "guide_penalty must be in [0, 10000]")


def test_evaluate_guide_needs_a_classifier_head(tiny_run, tmp_path, capsys):
    argv = [
        "evaluate",
        str(tiny_run.checkpoints["show_tell"]),
        "--data",
        str(tiny_run.prepared.root),
        "--features",
        str(tiny_run.cache.root),
        "--out",
        str(tmp_path / "ev"),
        "--no-meteor",
        "--guide",
    ]
    one_line_error(capsys, argv, "tiny")
    assert not (tmp_path / "ev" / "predictions.json").exists()


def test_server_guides_by_default(guided_captioner, tiny_run, monkeypatch):
    testclient = pytest.importorskip("fastapi.testclient")
    from pathlib import Path

    from capgen.serve import create_app

    # the tiny model may find a caption without the word likelier than the default penalty allows
    build = guided_captioner.decode_config
    monkeypatch.setattr(guided_captioner, "decode_config", lambda **o: build(**{"guide_penalty": HARD, **o}))

    files = {"files": ("a.png", Path(photo(tiny_run)).read_bytes(), "image/png")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with testclient.TestClient(create_app(guided_captioner), base_url="http://localhost") as c:
            res = c.post("/caption", files=files).json()["results"][0]
            assert "square" in res["caption"].split() and res["guided"]["word"] == "square"
            assert "guided" not in c.post("/caption?guide=false", files=files).json()["results"][0]
            assert "guided" not in c.post("/caption?guide_threshold=0.95", files=files).json()["results"][0]
            for bad in ("guide=maybe", "guide_threshold=0", "novel_guide_threshold=2"):
                r = c.post(f"/caption?{bad}", files=files)
                assert r.status_code == 422 and r.json()["error"].split(":")[0] in bad, bad


# ---- the torch-free runtime guides like the Captioner --------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_numpy_constrained_search_equals_the_torch_one(name):

    from test_decoding import numpy_decode

    model = sharp(name, 20).eval()
    pooled, grid = features(3, seed=6)
    include = [{7}, {9, 10}, {12}]
    for cfg in (DecodeConfig(beam_size=3, max_len=8), DecodeConfig(beam_size=2, n_best=2, max_len=6)):
        ref = decode(model, pooled, grid, IDS, cfg, include=include)
        got = numpy_decode(model, pooled, grid, IDS, cfg, include=include)
        assert [[h.tokens for h in hs] for hs in got] == [[h.tokens for h in hs] for hs in ref]
        assert [h.score for hs in got for h in hs] == pytest.approx([h.score for hs in ref for h in hs], rel=1e-5)


def test_the_runtime_tags_and_guides_like_the_captioner(tiny_run, square_words, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from capgen.export import export_captioner
    from capgen.runtime import Runtime

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "dog" has no stand-in in the synthetic vocabulary
        guided_captioner = Captioner.from_pretrained(
            tiny_run.checkpoints["show_attend_tell"],
            backend="onnx",
            encoder="capgen_tiny_headed_encoder:build_headed",
            tag_words=square_words,
        )
        # the export's decoding settings carry the penalty to the runtime
        export_captioner(guided_captioner, tmp_path / "exported", DecodeConfig(guide_penalty=HARD))
        images = [str(r.path) for r in tiny_run.prepared.split("test")[:4]]
        ref = guided_captioner.caption(images, guide_penalty=HARD)
        plain = guided_captioner.caption(images, guide=None)
    rt = Runtime(tmp_path / "exported", threads=1)
    got = rt.caption(images)
    assert [r.caption for r in got] == [r.caption for r in ref]
    assert [r.guided for r in got] == [r.guided for r in ref] and any(r.guided for r in got)
    assert [r.caption for r in rt.caption(images, guide=None)] == [r.caption for r in plain]
    # ... and with no torch at all
    code = (
        "import sys, json; sys.modules['torch'] = None\n"
        "from capgen.runtime import Runtime\n"
        "print(json.dumps([r.to_dict() for r in Runtime(sys.argv[1]).caption(sys.argv[2:])]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "exported"), *images],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert [d["caption"] for d in json.loads(done.stdout)] == [r.caption for r in ref]
    assert [d["guided"]["word"] if d["guided"] else None for d in json.loads(done.stdout)] == [
        r.guided.tag.word if r.guided else None for r in ref
    ]
    # damaged guidance files are refused by name, even with a manifest rewritten to match them
    from capgen.errors import ExportError
    from capgen.io import write_json
    from capgen.runtime import folder as fmt

    bad = tmp_path / "exported"
    write_json(bad / fmt.GUIDE, {"plans": {"square": {"include": [10**6], "stand_in": None}}})
    write_json(bad / fmt.MANIFEST, fmt.manifest_for(bad))
    with pytest.raises(ExportError, match="guide.json.*word ids"):
        Runtime(bad)
    manifest = fmt.manifest_for(bad)
    del manifest["files"][fmt.TAG_HEAD]
    write_json(bad / fmt.MANIFEST, manifest)
    with pytest.raises(ExportError, match="not all of"):
        Runtime(bad)


def _npy(shape, data: bytes = b"") -> bytes:
    """An .npy member declaring float32 `shape`, followed by `data` (a header may promise anything)."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


@pytest.fixture(scope="module")
def tagged_export(tiny_run, square_words, tmp_path_factory):
    from capgen.export import export_captioner

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "dog" has no stand-in in the synthetic vocabulary
        captioner = Captioner.from_pretrained(
            tiny_run.checkpoints["show_attend_tell"],
            backend="onnx",
            encoder="capgen_tiny_headed_encoder:build_headed",
            tag_words=square_words,
        )
    out = tmp_path_factory.mktemp("tagged") / "exported"
    export_captioner(captioner, out)
    return out


def _rehashed_copy(src, dst, edit):
    import shutil

    from capgen.io import write_json
    from capgen.runtime import folder as fmt

    shutil.copytree(src, dst)
    edit(dst)
    write_json(dst / fmt.MANIFEST, fmt.manifest_for(dst))
    return dst


def test_a_head_archive_declaring_huge_arrays_is_refused_before_reading(tagged_export, tmp_path, monkeypatch):
    """A 5 MB tag_head.npz declaring (1000, 1280000) used 5.1 GB and 12 s before it was refused."""
    import zipfile

    from capgen.errors import ExportError
    from capgen.runtime import Runtime
    from capgen.runtime import folder as fmt

    def bomb(folder):
        with zipfile.ZipFile(folder / fmt.TAG_HEAD, "w") as z:
            z.writestr("weight.npy", _npy((1000, 1280000), b"\0" * 64))
            z.writestr("bias.npy", _npy((1000,), b"\0" * 4000))

    folder = _rehashed_copy(tagged_export, tmp_path / "bomb", bomb)
    monkeypatch.setattr(np.lib.format, "read_array", lambda *a, **kw: pytest.fail("read the data"))
    with pytest.raises(
        ExportError,
        match=r"tag_head.npz: weight must be float32 \(\d+, \d+\), the file declares "
        r"float32 \(1000, 1280000\)",
    ):
        Runtime(folder)
