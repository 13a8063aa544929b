"""Caption text without images: prepare --text, the tag-reading decoder, text-only batches, warm start."""

import json

import numpy as np
import pytest
import torch

import capgen.encoders.registry as encoder_registry
import capgen.training.trainer as trainer_mod
from capgen.checkpoint import load_checkpoint
from capgen.data import PreparedDataset, prepare_dataset
from capgen.decoding import DecodeConfig, TokenIds, decode
from capgen.features import FeatureCache, extract_features
from capgen.tags.head import LinearHead
from capgen.tags.words import WordMap, mention_index, mentions
from capgen.training import load_run_config, train
from conftest import one_line_error

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CORPUS = [
    {"id": "z1", "captions": ["A zebra standing in a field.", "two zebras eat grass"]},
    {"id": "p1", "captions": ["a pizza on a plate", "A cheese pizza sits on a table"]},
    {"id": "b1", "captions": ["a red bus drives down the street", "a bus parked by a building"]},
]
TAGS = ["model.d_model=32", "model.num_layers=1", "model.num_heads=2", "model.ff_dim=64", "model.tag_tokens=2"]


def _corpus(tmp_path, rows=CORPUS, name="text.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def tagging_encoder(tiny_encoder, monkeypatch):
    """A registered tiny encoder with a 1000-class head (the bundled ImageNet word map's size)."""
    import importlib

    tiny = importlib.import_module(tiny_encoder.split(":")[0])

    def build():
        enc = tiny.build()
        g = np.random.default_rng(0)
        head = LinearHead(g.normal(size=(1000, 8)).astype(np.float32) * 3, np.zeros(1000, np.float32), "imagenet-1k")
        return type(enc)(enc.module, enc.preprocess, name="tiny-tags", dim=8, grid_hw=(4, 4), head=head)

    monkeypatch.setitem(encoder_registry._REGISTRY, "tiny-tags", build)
    return "tiny-tags"


@pytest.fixture
def text_data(tmp_path, synth_dir, tagging_encoder):
    data = prepare_dataset(synth_dir, tmp_path / "prep", min_count=1, text=[_corpus(tmp_path)])
    extract_features(data, tmp_path / "feats", encoder=tagging_encoder, progress=False)
    return data, FeatureCache.open(tmp_path / "feats")


def test_prepare_with_text_adds_words_and_records_corpora(tmp_path, synth_dir):
    corpus = _corpus(tmp_path)
    data = prepare_dataset(synth_dir, tmp_path / "prep", min_count=1, text=[corpus])
    assert {"zebra", "pizza", "bus"} <= set(data.vocab.itos)
    (entry,) = data.manifest["text_corpora"]
    assert entry["photos"] == 3 and entry["captions"] == 6 and len(entry["sha256"]) == 64
    assert data.manifest["vocab_from_pairs"] < data.manifest["vocab_size"]
    text = PreparedDataset.load(tmp_path / "prep").text()
    assert [r.id for r in text] == ["z1", "p1", "b1"]
    assert text[0].tokens[0] == ("a", "zebra", "standing", "in", "a", "field")
    # without --text: no corpus, and the vocabulary is the paired captions' alone
    plain = prepare_dataset(synth_dir, tmp_path / "plain", min_count=1)
    assert plain.text() == [] and "zebra" not in plain.vocab.itos


@pytest.mark.parametrize(
    "content, where",
    [
        (None, "cannot read"),
        ("", "is empty"),
        ('{"id": "a", "captions": ["a cat"]}\nnot json\n', ":2: not a JSON object"),
        ('{"id": "a", "captions": ["a cat"]}\n{"id": "b"}\n', ':2: expected a "captions" list'),
        ('{"id": "a", "captions": ["..."]}\n', ":1: no caption has words"),
        ('{"id": "a", "captions": ["a cat"]}\n{"id": "a", "captions": ["a dog"]}\n', ":2: id 'a' appears twice"),
        (b'{"id": "a", "captions": ["caf\xe9"]}\n', ":1: not UTF-8"),
    ],
)
def test_bad_text_corpus_is_one_line_naming_file_and_line(tmp_path, synth_dir, capsys, content, where):
    path = tmp_path / "bad.jsonl"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    line = one_line_error(capsys, ["prepare", synth_dir, "--out", tmp_path / "out", "--text", path], "bad.jsonl")
    assert where in line
    assert not (tmp_path / "out").exists()


def test_mentions_find_plurals_and_phrases():
    words = ["zebra", "bus", "teddy bear", "dog"]
    index = mention_index(words)
    caps = [("two", "zebras", "and", "a", "teddy", "bear"), ("buses", "on", "a", "road")]
    assert mentions(caps, index, 2) == [0, 1, 2]


def _tags_only(model, word, itos):
    """A word_probs row naming one tag word with p 0.9."""
    from capgen.training.tag_model import tag_words

    probs = torch.zeros(1, model.tags.num_words)
    probs[0, tag_words(model, itos).index(word)] = 0.9
    return probs


def test_decoder_learns_to_caption_from_tags_alone(text_data):
    """Text-only rows (no image, simulated tags) teach the caption of each tag: the tag pathway works."""
    data, cache = text_data
    cfg = load_run_config(None, TAGS, "transformer")
    from capgen.training.finetune import build_model

    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.model_config, data.vocab, cache, 0)
    vocab = data.vocab
    rows = {"zebra": "a zebra standing in a field", "pizza": "a pizza on a plate", "bus": "a red bus on the street"}
    probs = torch.cat([_tags_only(model, w, vocab.itos) for w in rows])
    caps = [vocab.encode(c.split()) for c in rows.values()]
    T = max(map(len, caps))
    captions = torch.tensor([c + [0] * (T - len(c)) for c in caps])
    zeros = torch.zeros(3, 8), torch.zeros(3, 16, 8)
    hidden = torch.zeros(3, dtype=torch.bool)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        logits = model(*zeros, captions, word_probs=probs, has_image=hidden)["logits"]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), captions[:, 1:].reshape(-1), ignore_index=0
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        memory = model.init_memory(*zeros, word_probs=probs, has_image=hidden)
    from capgen.decoding import search
    from capgen.decoding.torch_step import TorchStep

    with torch.no_grad():
        hyps = search(
            TorchStep(model, torch.device("cpu"), False),
            memory,
            model.init_state(memory),
            TokenIds.from_vocab(vocab),
            DecodeConfig(beam_size=2),
        )
    got = [" ".join(vocab.decode(h[0].tokens)) for h in hyps]
    assert got == list(rows.values())


def test_hidden_image_masks_its_regions(text_data):
    data, cache = text_data
    from capgen.training.finetune import build_model

    model = build_model("transformer", load_run_config(None, TAGS, "transformer").model_config, data.vocab, cache, 0)
    model.eval()
    pooled, grid = torch.randn(2, 8), torch.randn(2, 16, 8)
    with torch.no_grad():
        shown = model.init_memory(pooled, grid)
        mixed = model.init_memory(pooled, grid, has_image=torch.tensor([True, False]))
        other = model.init_memory(pooled, torch.randn(2, 16, 8), has_image=torch.tensor([True, False]))
    assert torch.equal(shown["cross_k0"][0], mixed["cross_k0"][0])
    assert torch.all(mixed["cross_bias"][1, ..., 1:17] < -1e3) and torch.all(mixed["cross_bias"][0] == 0)
    # a hidden image's regions cannot change what the decoder reads
    state = model.init_state(mixed)
    tokens = torch.full((2,), TokenIds.from_vocab(data.vocab).start)
    a = model.step(tokens, state, mixed)[0][1]
    b = model.step(tokens, model.init_state(other), other)[0][1]
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6 * float(a.abs().max()))


def test_training_with_text_resumes_exactly_and_checkpoint_reads_tags(text_data, tmp_path, monkeypatch):
    data, cache = text_data
    sets = TAGS + ["epochs=2", "batch_size=4", "warmup_steps=2", "text_batch=2", "image_dropout=0.5", "tag_dropout=0.2"]
    cfg = load_run_config(None, sets, "transformer")
    full = train(cfg, data, cache, tmp_path / "full", progress=False)
    import contextlib

    from test_training import _StopAfter

    with monkeypatch.context() as mp, pytest.raises(KeyboardInterrupt):
        mp.setattr(trainer_mod, "_graceful_interrupt", lambda: contextlib.nullcontext(_StopAfter(5)))
        train(cfg, data, cache, tmp_path / "cut", progress=False)
    resumed = train(cfg, data, cache, tmp_path / "cut", resume=True, progress=False)
    for a, b in zip(full.history, resumed.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    ck = load_checkpoint(full.best_checkpoint)
    assert ck.model.reads_tags and ck.model.config.tagger.startswith("tiny-tags head+words sha256:")
    words = WordMap.load(None)
    assert ck.model.tags.word_ids.shape[0] == len(words.words)
    hyps = decode(ck.model, torch.randn(2, 8), torch.randn(2, 16, 8), TokenIds.from_vocab(ck.vocab))
    assert all(h and h[0].tokens for h in hyps)


def test_text_settings_need_a_tag_model_and_a_corpus(text_data, tmp_path, synth_dir, tagging_encoder):
    data, cache = text_data
    from capgen.errors import CapgenError

    cfg = load_run_config(None, TAGS[:-1] + ["epochs=1", "text_batch=2"], "transformer")
    with pytest.raises(CapgenError, match="model that reads tags"):
        train(cfg, data, cache, tmp_path / "a", progress=False)
    plain = prepare_dataset(synth_dir, tmp_path / "plain", min_count=1)
    cfg = load_run_config(None, TAGS + ["epochs=1", "text_batch=2"], "transformer")
    with pytest.raises(CapgenError, match="prepare it with --text"):
        train(cfg, plain, cache, tmp_path / "b", progress=False)


def test_warm_start_copies_rows_by_word(prepared, text_data, tmp_path, tiny_encoder):
    """A checkpoint on the paired vocabulary starts a model on a grown one: shared words keep their rows."""
    data, cache = text_data
    small = prepare_dataset(data.manifest["source"], tmp_path / "small", min_count=1)
    cfg = load_run_config(None, TAGS[:-1] + ["epochs=1", "batch_size=4", "warmup_steps=2"], "transformer")
    first = train(cfg, small, cache, tmp_path / "first", progress=False)
    cfg2 = load_run_config(
        None,
        TAGS + ["epochs=1", "batch_size=4", f"warm_start={first.best_checkpoint}", "lr=1e-12", "warmup_steps=1"],
        "transformer",
    )
    second = train(cfg2, data, cache, tmp_path / "second", progress=False)
    a, b = load_checkpoint(first.best_checkpoint), load_checkpoint(second.best_checkpoint)
    ta, tb = a.model.word_embedding.table.weight, b.model.word_embedding.table.weight
    for word in ("red", "circle"):
        assert torch.allclose(ta[a.vocab.stoi[word]], tb[b.vocab.stoi[word]], rtol=1e-4, atol=1e-6)
    assert len(b.vocab) > len(a.vocab)
