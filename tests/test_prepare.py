import json

import pytest

from capgen.data import PreparedDataset, prepare_dataset
from capgen.data.readers import detect_format
from capgen.data.synthetic import SYNTH_FORMATS, make_synthetic_dataset
from capgen.errors import CapgenError, DatasetError


def _refs(ds):
    return {s: {r.image.split("/")[-1]: r.raw for r in ds.split(s)} for s in ("train", "val", "test")}


def test_all_formats_prepare_to_the_same_references(tmp_path):
    results = {}
    for fmt in SYNTH_FORMATS:
        src = make_synthetic_dataset(tmp_path / fmt, n_images=20, fmt=fmt, seed=3)
        assert detect_format(src) == fmt
        results[fmt] = prepare_dataset(src, tmp_path / f"p-{fmt}", min_count=1)
    flickr = _refs(results["flickr"])
    for fmt in ("karpathy", "csv", "jsonl"):  # formats that carry the split
        assert _refs(results[fmt]) == flickr, fmt
    for fmt in ("kaggle", "coco"):  # no split in the file: seeded random split, same references
        merged = {k: v for s in _refs(results[fmt]).values() for k, v in s.items()}
        assert merged == {k: v for s in flickr.values() for k, v in s.items()}
        assert all(len(results[fmt].split(s)) > 0 for s in ("train", "val", "test"))
    assert results["karpathy"].vocab.itos == results["flickr"].vocab.itos


def test_prepared_folder_contents(prepared):
    m = prepared.manifest
    assert m["splits"]["train"]["images"] == len(prepared.split("train"))
    rec = prepared.split("train")[0]
    assert rec.path.is_file() and len(rec.raw) == len(rec.tokens) == 5
    assert all(t == tuple(t) for t in rec.tokens)
    # vocabulary comes from the training split only
    train_words = {w for r in prepared.split("train") for t in r.tokens for w in t}
    assert set(prepared.vocab.itos[4:]) <= train_words
    again = PreparedDataset.load(prepared.root)
    assert [r.image for r in again.records()] == [r.image for r in prepared.records()]


def test_random_split_is_seeded(tmp_path, synth_dir):
    a = prepare_dataset(synth_dir, tmp_path / "a", seed=7)
    b = prepare_dataset(synth_dir, tmp_path / "b", seed=7)
    c = prepare_dataset(synth_dir, tmp_path / "c", seed=8)
    ids = lambda ds: [r.image for r in ds.split("test")]  # noqa: E731
    assert ids(a) == ids(b) and ids(a) != ids(c)


def test_min_count_and_max_vocab(tmp_path, synth_dir):
    big = prepare_dataset(synth_dir, tmp_path / "a", min_count=1)
    small = prepare_dataset(synth_dir, tmp_path / "b", min_count=1, max_vocab=10)
    assert len(small.vocab) == 10 < len(big.vocab)


def test_missing_images_error_or_skip(tmp_path, synth_dir):
    (synth_dir / "Images" / "shape_00003.jpg").unlink()
    with pytest.raises(DatasetError, match="1 of 30 images.*shape_00003.jpg.*--skip-missing"):
        prepare_dataset(synth_dir, tmp_path / "p")
    assert not (tmp_path / "p").exists()
    ds = prepare_dataset(synth_dir, tmp_path / "p", skip_missing=True)
    assert len(ds.records()) == 29 and ds.manifest["dropped"]["missing_image_files"] == 1


@pytest.mark.parametrize(
    "content,words",
    [
        ("image,caption\nshape_00000.jpg,a dog\nshape_00001.jpg\n", "expected 2 columns"),
        ("picture,text\nx.jpg,a dog\n", "'image' and 'caption'"),
    ],
)
def test_malformed_csv(tmp_path, synth_dir, content, words):
    (synth_dir / "captions.txt").write_text(content)
    with pytest.raises(DatasetError, match=words):
        prepare_dataset(synth_dir, tmp_path / "p")


def test_malformed_json_and_jsonl(tmp_path):
    src = make_synthetic_dataset(tmp_path / "k", n_images=10, fmt="karpathy")
    (src / "dataset_synth.json").write_text('{"images": [')
    with pytest.raises(DatasetError, match="malformed JSON at line 1"):
        prepare_dataset(src, tmp_path / "p")
    jl = make_synthetic_dataset(tmp_path / "j", n_images=10, fmt="jsonl")
    jl.write_text(jl.read_text() + "{oops\n")
    with pytest.raises(DatasetError, match=r"captions.jsonl:11: malformed JSON"):
        prepare_dataset(jl, tmp_path / "p")
    jl.write_text('{"image": "Images/shape_00000.jpg", "caption": "x", "split": "holdout"}\n')
    with pytest.raises(DatasetError, match="unknown split 'holdout'"):
        prepare_dataset(jl, tmp_path / "p")


def test_empty_split_is_an_error(tmp_path):
    src = make_synthetic_dataset(tmp_path / "s", n_images=10, fmt="jsonl")
    lines = [json.loads(line) for line in src.read_text().splitlines()]
    src.write_text("".join(json.dumps({**d, "split": "train"}) + "\n" for d in lines))
    with pytest.raises(DatasetError, match="split 'val' is empty"):
        prepare_dataset(src, tmp_path / "p")


def test_ambiguous_and_unknown_layouts(tmp_path):
    src = make_synthetic_dataset(tmp_path / "s", n_images=10, fmt="flickr")
    make_synthetic_dataset(tmp_path / "s", n_images=10, fmt="karpathy")
    with pytest.raises(DatasetError, match="several formats.*--format"):
        prepare_dataset(src, tmp_path / "p")
    assert prepare_dataset(src, tmp_path / "p", fmt="karpathy").manifest["format"] == "karpathy"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no known caption files"):
        prepare_dataset(tmp_path / "empty", tmp_path / "q")
    with pytest.raises(DatasetError, match="no such file"):
        prepare_dataset(tmp_path / "nope", tmp_path / "q")


def test_flickr_split_lists_must_name_captioned_images(tmp_path):
    src = make_synthetic_dataset(tmp_path / "s", n_images=10, fmt="flickr")
    with open(src / "Synth_testImages.txt", "a") as f:
        f.write("ghost.jpg\n")
    with pytest.raises(DatasetError, match="ghost.jpg has no captions"):
        prepare_dataset(src, tmp_path / "p")


def test_prepare_refuses_to_clobber_foreign_folder(tmp_path, synth_dir):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(CapgenError, match="not empty"):
        prepare_dataset(synth_dir, out)
    assert (out / "notes.txt").read_text() == "keep me"
    # an earlier prepared folder is replaced
    prepare_dataset(synth_dir, tmp_path / "p", min_count=1)
    assert len(prepare_dataset(synth_dir, tmp_path / "p", min_count=1000).vocab) == 4


@pytest.mark.parametrize(
    "manifest",
    ['{"name": "pwa"}', '{"format": "capgen-export", "version": 1}', '{"capgen_prepared": true}', "\xff not json"],
)
def test_prepare_replaces_only_a_prepared_dataset(tmp_path, synth_dir, manifest):
    """Another program's manifest.json, an export's or an unreadable one: the folder is kept."""
    out = tmp_path / "app"
    out.mkdir()
    (out / "manifest.json").write_text(manifest)
    (out / "index.html").write_text("hi")
    with pytest.raises(CapgenError, match="not a prepared dataset"):
        prepare_dataset(synth_dir, out, min_count=1)
    assert (out / "index.html").read_text() == "hi"
