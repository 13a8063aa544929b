"""Building a tag-reading decoder, and starting one from a checkpoint with another vocabulary.

- `resolve_tags`: a model config asking for `tag_tokens: K` gets the tagger's sizes and name from the
  encoder's classifier head and the bundled class -> word mapping (tags/words.py).
- `warm_start`: copy every weight a new model shares with a trained checkpoint; word-indexed rows
  (the embedding table and the output bias) are copied by word, so a vocabulary grown by text
  corpora keeps what the old decoder knew about the old words.
"""

from __future__ import annotations

import numpy as np
import torch

from capgen.checkpoint import load_checkpoint
from capgen.errors import CapgenError
from capgen.models.base import CaptionModel
from capgen.models.tag_input import tag_word_ids
from capgen.tags.head import tagger_id

# Parameters whose first dimension is the vocabulary.
WORD_ROWS = ("word_embedding.table.weight", "head.bias")


class TagModelError(CapgenError):
    """A tag-reading model cannot be built (no classifier head) or warm-started."""


def resolve_tags(model_config: dict, vocab, spec: dict):
    """(model_config with the tagger's sizes and name, the tagger's arrays or None)."""
    k = int(model_config.get("tag_tokens") or 0)
    if not k:
        return model_config, None
    from capgen.encoders import create_encoder
    from capgen.tags.words import WordMap

    encoder = create_encoder(spec["name"])  # registered names only: the name comes from a file
    head = encoder.classifier()
    if head is None:
        raise TagModelError(
            f"model.tag_tokens={k}: encoder {spec['name']} has no classifier head to tag with; "
            "use an efficientnet-lite encoder or model.tag_tokens=0"
        )
    words = WordMap.load(None)
    ids = tag_word_ids(words.words, vocab.stoi, vocab.unk_id)
    matrix = words.matrix()
    # A tag word the vocabulary lacks entirely would be an <unk> token: it never gets probability.
    matrix[:, np.all((ids == vocab.unk_id) | (ids == 0), axis=1)] = 0.0
    arrays = (head.weight, head.bias, matrix, ids)
    resolved = {
        **model_config,
        "tag_classes": head.num_classes,
        "tag_words": len(words.words),
        "tag_word_len": int(ids.shape[1]),
        "tagger": tagger_id(spec["name"], head.weight, head.bias, words.class_words),
    }
    return resolved, arrays


def tag_words(model: CaptionModel, itos: list[str]) -> list[str]:
    """The model's tag words as text (the vocabulary words of each tag's tokens)."""
    ids = model.tags.word_ids.tolist()
    return [" ".join(itos[i] for i in row if i) for row in ids]


def warm_start(model: CaptionModel, path: str, itos: list[str]) -> dict[str, int]:
    """Copy into `model` what checkpoint `path` shares with it; returns counts for the log."""
    ck = load_checkpoint(path)
    old = ck.model.state_dict()
    new = model.state_dict()
    old_row = {w: i for i, w in enumerate(ck.vocab.itos)}
    pairs = [(i, old_row[w]) for i, w in enumerate(itos) if w in old_row]
    if not pairs:
        raise TagModelError(f"{path}: shares no word with this dataset's vocabulary; nothing to warm-start from")
    dst = torch.tensor([p[0] for p in pairs])
    src = torch.tensor([p[1] for p in pairs])
    copied, skipped = 0, []
    with torch.no_grad():
        for name, value in new.items():
            if (
                name not in old
                or name.startswith("tags.")
                and name.split(".")[1] in ("head_weight", "head_bias", "class_word", "word_ids")
            ):
                continue  # the tagger's buffers come from the encoder, not from the old checkpoint
            if name in WORD_ROWS and old[name].shape[1:] == value.shape[1:]:
                value[dst] = old[name][src].to(value.dtype)
                copied += 1
            elif old[name].shape == value.shape:
                value.copy_(old[name])
                copied += 1
            else:
                skipped.append(name)
    if skipped:
        raise TagModelError(
            f"{path}: {len(skipped)} weights have other shapes than this model's "
            f"(e.g. {skipped[0]}); warm-start needs the same architecture"
        )
    return {"tensors": copied, "words": len(pairs), "new_words": len(itos) - len(pairs)}


def fill_tags(model: CaptionModel, arrays) -> None:
    if arrays is not None:
        weight, bias, matrix, ids = arrays
        model.tags.fill(np.asarray(weight), np.asarray(bias), matrix, ids)
