"""Which model a run trains, given its feature cache: an ordinary decoder on final-grid features, or
(train.finetune_blocks = N) a decoder behind the encoder's last N blocks, read from a cache of the
activation entering them (`capgen extract --split-at N`). Every mismatch between the config, the
cache and an --init checkpoint is one line naming both sides, raised before the run folder exists.
"""

from __future__ import annotations

from capgen.checkpoint import Checkpoint, CheckpointError
from capgen.encoder_spec import EncoderSpec
from capgen.encoders import create_encoder
from capgen.errors import CapgenError
from capgen.features import FeatureCache
from capgen.models import create_model
from capgen.models.base import CaptionModel
from capgen.models.finetuned import FinetunedModel, attach_top
from capgen.training.tag_model import fill_tags, resolve_tags


def build_model(
    model_name: str,
    model_config: dict,
    vocab,
    cache: FeatureCache,
    finetune_blocks: int,
    init: Checkpoint | None = None,
    init_path: str | None = None,
) -> CaptionModel:
    """The model to train (train mode), from `init` when given, checked against the cache's kind."""
    n, spec = finetune_blocks, cache.encoder_spec
    init_top = init.model.split_at if init is not None and isinstance(init.model, FinetunedModel) else None
    _check_kind(cache, n, init_top, init_path)
    if init is not None and (init_top is not None or not n):
        if EncoderSpec.of(init.encoder) != EncoderSpec.of(spec):
            raise CheckpointError(
                f"{init_path}: trained on {EncoderSpec.of(init.encoder).text()} ({_diff(init.encoder, spec)} "
                f"differ from the feature cache {cache.root})"
            )
        if init_top is not None and not n:
            init.model.freeze_top()
        return init.model.train()
    if not n:
        model_config, tagger = resolve_tags(model_config, vocab, spec)
        model = create_model(
            model_name,
            vocab_size=len(vocab),
            feature_dim=spec["dim"],
            num_regions=spec["grid"][0] * spec["grid"][1],
            overrides=model_config,
            itos=vocab.itos,
        )
        fill_tags(model, tagger)
        return model.train()
    # Fine-tuning the last n blocks: the decoder reads the full encoder's grid.
    full = create_encoder(spec["name"])  # registered names only: the name comes from a file
    if init is not None:
        if EncoderSpec.of(init.encoder) != EncoderSpec.of(full.spec()):
            raise CheckpointError(
                f"{init_path}: trained on {EncoderSpec.of(init.encoder).text()} ({_diff(init.encoder, full.spec())} "
                f"differ from {full.name}'s final grid, which the fine-tuned blocks feed)"
            )
        decoder = init.model
    else:
        decoder = create_model(
            model_name,
            vocab_size=len(vocab),
            feature_dim=full.dim,
            num_regions=full.grid_hw[0] * full.grid_hw[1],
            overrides=model_config,
            itos=vocab.itos,
        )
    model, stem_spec = attach_top(decoder, full, n)
    if EncoderSpec.of(stem_spec) != EncoderSpec.of(spec):
        raise CapgenError(
            f"{cache.root}: block input of {spec['name']} differs from the encoder's own "
            f"({_diff(stem_spec, spec)}); extract the cache again with this capgen"
        )
    return model.train()


def _check_kind(cache: FeatureCache, n: int, init_top: int | None, init_path: str | None) -> None:
    """The cache must hold what the model reads: the final grid, or the input of its last n blocks."""
    spec = cache.encoder_spec
    if init_top is not None and n not in (0, init_top):
        raise CapgenError(
            f"{init_path}: fine-tunes the last {init_top} encoder blocks, but train.finetune_blocks="
            f"{n}; set it to {init_top} (or 0 to keep those blocks frozen)"
        )
    wants = n or init_top  # the block input the model reads, None = the final grid
    if wants != spec.get("split_at"):
        need = EncoderSpec.of({"name": spec["name"], "split_at": wants}).text()
        why = (
            (f"train.finetune_blocks={n}" if n else f"--init {init_path} (fine-tuned)")
            if wants
            else "train.finetune_blocks=0 (set it to fine-tune those blocks)"
        )
        raise CapgenError(f"{cache.root}: holds {EncoderSpec.of(spec).text()}, but {why} needs {need}")


def _diff(a: dict, b: dict) -> str:
    return ", ".join(EncoderSpec.of(a).diff(b)) or "nothing"
