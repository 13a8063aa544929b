"""Captioning models behind one interface (`CaptionModel`), built by name.

model = create_model("show_attend_tell", len(vocab), feature_dim=1280, num_regions=81,
                     overrides={"dropout": 0.5}, itos=vocab.itos)
out = model(pooled, grid, captions)          # teacher forcing: logits (B, T-1, V), aux_loss
logp, state, att = model.step(tokens, state, memory)   # one word, used by capgen.decoding
"""

from capgen.config import config_from_dict, config_to_dict
from capgen.models.base import PAD_ID, CaptionModel, ModelError
from capgen.models.registry import create_model, list_models, model_config_class, register_model

# Imported for their @register_model side effect; keep after the registry import.
from capgen.models import show_tell, show_attend_tell, transformer  # noqa: E402,F401  isort: skip
from capgen.models.show_attend_tell import ShowAttendTellConfig  # noqa: E402
from capgen.models.show_tell import ShowTellConfig  # noqa: E402
from capgen.models.transformer import TransformerConfig  # noqa: E402

__all__ = [
    "PAD_ID",
    "CaptionModel",
    "ModelError",
    "ShowAttendTellConfig",
    "ShowTellConfig",
    "TransformerConfig",
    "config_from_dict",
    "config_to_dict",
    "create_model",
    "list_models",
    "model_config_class",
    "register_model",
]
