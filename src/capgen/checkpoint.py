"""One checkpoint file rebuilds the whole captioner: weights, model config, vocabulary and the encoder
spec (name + preprocessing). Saved with torch.save of plain data; loaded with weights_only=True, so
no pickled code ever runs. Written atomically.

A model trained with the last encoder blocks (models/finetuned.py) stores the decoder as any
checkpoint does, plus `encoder_top` = {"split_at": N, "state_dict": those blocks' weights}; its
`encoder` spec is then that of the block input it reads ("split_at": N), so it only pairs with a
feature cache of that kind. The Captioner loads the blocks into the full encoder for photos.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from capgen.data.vocab import Vocabulary
from capgen.encoder_spec import EncoderSpec
from capgen.errors import CapgenError
from capgen.io import atomic_path

FORMAT_VERSION = 1


class CheckpointError(CapgenError):
    """A checkpoint is missing, corrupt, truncated, or not a capgen checkpoint."""


@dataclass
class Checkpoint:
    model: Any  # CaptionModel
    vocab: Vocabulary
    encoder: dict  # ImageEncoder.spec(): name, preprocess, dim, grid
    meta: dict = field(default_factory=dict)  # metrics, train config, epoch...


def _float_state(state: dict) -> dict:
    """A stored state dict with its float tensors back in float32 (checkpoints may hold float16)."""
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _plain_state(module, half: bool) -> dict:
    return {
        k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
        for k, v in module.state_dict().items()
    }


def weights_sha256(payload: dict) -> str:
    """A hash of every stored weight (names, dtypes, shapes and bytes), decoder and encoder blocks."""
    h = hashlib.sha256()
    for part in (payload.get("state_dict") or {}, (payload.get("encoder_top") or {}).get("state_dict") or {}):
        for name in sorted(part):
            t = part[name]
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(
                t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
            )
    return h.hexdigest()


def model_payload(model, vocab: Vocabulary, encoder: dict, meta: dict | None = None, half: bool = False) -> dict:
    from capgen.models import config_to_dict
    from capgen.models.finetuned import FinetunedModel, decoder_of

    decoder = decoder_of(model)
    payload = {
        "capgen_checkpoint": FORMAT_VERSION,
        "model_name": decoder.name,
        "model_config": config_to_dict(decoder.config),
        "vocab_size": decoder.vocab_size,
        "feature_dim": decoder.feature_dim,
        "num_regions": decoder.num_regions,
        "vocab": vocab.to_dict(),
        "encoder": encoder,
        "meta": meta or {},
        "state_dict": _plain_state(decoder, half),
    }
    if isinstance(model, FinetunedModel):
        payload["encoder_top"] = {"split_at": model.split_at, "state_dict": _plain_state(model.top, half)}
    payload["weights_sha256"] = weights_sha256(payload)  # a bit flip in the weights is refused on load
    return payload


def restore_weights(model, payload: dict) -> None:
    """Load a payload's weights (decoder, and fine-tuned encoder blocks if any) into `model` built
    for it, e.g. when resuming a run."""
    from capgen.models.finetuned import FinetunedModel, decoder_of

    decoder_of(model).load_state_dict(payload["state_dict"])
    if isinstance(model, FinetunedModel):
        model.top.load_state_dict(payload["encoder_top"]["state_dict"])


def training_payload(model, vocab: Vocabulary, encoder: dict, meta: dict, resume: dict) -> dict:
    """A run's last.pt: the captioner (it loads like any checkpoint) plus `resume`, everything training
    needs to continue exactly (optimizer, scheduler, RNG, position in the epoch, history, best)."""
    payload = model_payload(model, vocab, encoder, meta)
    payload["resume"] = resume
    return payload


def read_resume(path: str | Path) -> dict:
    """A last.pt's payload; CheckpointError if it holds no resume state."""
    payload = read_payload(path)
    if not isinstance(payload.get("resume"), dict):
        raise CheckpointError(f"{path}: not a resumable training checkpoint")
    # Adam's moments are weights too: a NaN there makes the next step's weights NaN.
    _check_finite(_tensors(payload["resume"].get("optimizer")), path, "optimizer state")
    return payload


def save_checkpoint(path: str | Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_payload(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file does not exist")
    try:
        with open(path, "rb") as f:  # open first: an unreadable file is not a corrupt one
            payload = torch.load(f, map_location="cpu", weights_only=True)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({e.strerror or e})") from None
    except Exception as e:  # torch raises many types (EOFError, KeyError, UnpicklingError...) for bad files
        first = (str(e).splitlines() or [type(e).__name__])[0][:120]
        if "weights only load failed" in str(e).lower():  # the file holds pickled code or objects
            raise CheckpointError(
                f"{path}: refused: it holds pickled objects or code beyond weights and plain "
                f"data, which capgen never loads (weights_only=True)"
            ) from None
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt or truncated: {first})") from None
    if not isinstance(payload, dict) or payload.get("capgen_checkpoint") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not a capgen checkpoint (version {FORMAT_VERSION})")
    _check_types(payload, path)
    _check_finite(payload.get("state_dict", {}), path, "weight")
    _check_finite((payload.get("encoder_top") or {}).get("state_dict", {}), path, "encoder weight")
    stored = payload.get("weights_sha256")  # absent in checkpoints written before it: they load as ever
    if stored is not None and stored != weights_sha256(payload):
        raise CheckpointError(
            f"{path}: its weights do not match the hash stored with them (the file is damaged); "
            "use another copy or train again"
        )
    return payload


def nonfinite_tensor(named) -> str | None:
    """The name of the first floating-point tensor in `named` (a mapping or (name, tensor) pairs)
    holding a NaN or an infinity; None if all are finite."""
    for name, t in named.items() if isinstance(named, dict) else named:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def _check_finite(state: dict, path: Path, what: str) -> None:
    """NaN or infinite weights decode to nothing ("" captions) or garbage without any error: refuse
    them by name (a bit flip in an exponent, or a run saved after it diverged)."""
    bad = nonfinite_tensor(state)
    if bad is not None:
        raise CheckpointError(
            f"{path}: {what} {bad!r} holds NaN or infinite values (the file is damaged, or "
            f"its training diverged); it cannot be used"
        )


def _tensors(obj, prefix: str = "") -> dict:
    """The tensors inside nested dicts/lists (an optimizer state), by their dotted path."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    return {k: v for key, value in items for k, v in _tensors(value, f"{prefix}.{key}" if prefix else str(key)).items()}


# Field -> (type, what it should be); checked on read so a forged or damaged file fails by name.
_FIELDS = {
    "model_name": (str, "a model name"),
    "model_config": (dict, "a mapping"),
    "vocab_size": (int, "an integer"),
    "feature_dim": (int, "an integer"),
    "num_regions": (int, "an integer"),
    "vocab": (dict, "a vocabulary mapping"),
    "encoder": (dict, "an encoder spec mapping"),
    "meta": (dict, "a mapping"),
    "state_dict": (dict, "a mapping of name -> tensor"),
}


def _check_types(payload: dict, path: Path) -> None:
    for key, (kind, what) in _FIELDS.items():
        if key not in payload:
            continue  # a missing field is reported where it is needed ("checkpoint lacks ...")
        value = payload[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CheckpointError(f"{path}: field {key!r} must be {what}, got {type(value).__name__}")
    state = payload.get("state_dict", {})
    bad = next((k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise CheckpointError(f"{path}: field 'state_dict' must map names to tensors ({bad!r} does not)")
    if "encoder" in payload and not isinstance(payload["encoder"].get("name"), str):
        raise CheckpointError(f"{path}: field 'encoder' must name its encoder (a string 'name')")
    top = payload.get("encoder_top")
    if top is not None:
        n, state = (top.get("split_at"), top.get("state_dict")) if isinstance(top, dict) else (None, None)
        if (
            type(n) is not int
            or n < 1
            or not isinstance(state, dict)
            or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
            or payload.get("encoder", {}).get("split_at") != n
        ):
            raise CheckpointError(
                f"{path}: field 'encoder_top' must hold 'split_at' (an integer >= 1, the same as "
                f"the encoder spec's) and 'state_dict' (names -> tensors)"
            )


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Rebuild model (eval mode, float32), vocabulary and encoder spec from one file."""
    from capgen.models import create_model

    payload = read_payload(path)
    try:
        vocab = Vocabulary.from_dict(payload["vocab"])
        if len(vocab) != payload["vocab_size"]:
            raise CheckpointError(
                f"{path}: vocabulary has {len(vocab)} words but the model expects {payload['vocab_size']}"
            )
        model = create_model(
            payload["model_name"],
            vocab_size=payload["vocab_size"],
            feature_dim=payload["feature_dim"],
            num_regions=payload["num_regions"],
            overrides=payload["model_config"],
            itos=vocab.itos,
        )
        model.load_state_dict(_float_state(payload["state_dict"]))
        if "encoder_top" in payload:
            model = _with_encoder_top(model, payload)
    except KeyError as e:
        raise CheckpointError(f"{path}: checkpoint lacks {e.args[0]!r}") from None
    except CapgenError as e:  # the vocabulary or model config inside is malformed
        raise CheckpointError(f"{path}: {e}") from None
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: malformed checkpoint ({type(e).__name__}: {str(e)[:160]})") from None
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model ({str(e).splitlines()[0][:160]})") from None
    return Checkpoint(model.eval(), vocab, payload["encoder"], payload.get("meta", {}))


def _with_encoder_top(decoder, payload: dict):
    """The decoder behind its fine-tuned encoder blocks (a FinetunedModel); errors are prefixed with
    the checkpoint's path by the caller."""
    from capgen.models.finetuned import attach_top

    spec, top = payload["encoder"], payload["encoder_top"]
    model, stem_spec = attach_top(decoder, spec["name"], top["split_at"])
    if EncoderSpec.of(stem_spec) != EncoderSpec.of(spec):
        raise CheckpointError(
            f"its encoder blocks do not fit {spec['name']} split at {top['split_at']} "
            f"blocks ({', '.join(EncoderSpec.of(spec).diff(stem_spec))} differ)"
        )
    model.top.load_state_dict(_float_state(top["state_dict"]))
    return model


def load_checkpoints(paths: Sequence[str | Path]) -> Checkpoint:
    """One checkpoint, or several decoded as an ensemble (they must share vocabulary and encoder)."""
    from capgen.models.ensemble import EnsembleModel

    paths = list(paths)
    if not paths:
        raise CheckpointError("no checkpoint given")
    cks = [load_checkpoint(p) for p in paths]
    if len(cks) == 1:
        return cks[0]
    first = cks[0]
    for path, ck in zip(paths[1:], cks[1:]):
        if ck.vocab.itos != first.vocab.itos:
            raise CheckpointError(
                f"{path}: ensemble members must share the vocabulary; it has {len(ck.vocab)} "
                f"words, {paths[0]} has {len(first.vocab)}"
                + (" (same size, other words)" if len(ck.vocab) == len(first.vocab) else "")
            )
        if EncoderSpec.of(ck.encoder) != EncoderSpec.of(first.encoder):
            raise CheckpointError(
                f"{path}: ensemble members must share the encoder input; "
                f"{', '.join(EncoderSpec.of(ck.encoder).diff(first.encoder))} "
                f"differ from {paths[0]} ({ck.encoder.get('name')} vs {first.encoder.get('name')})"
            )
    model = EnsembleModel([c.model for c in cks]).eval()
    return Checkpoint(model, first.vocab, first.encoder, {"members": [str(p) for p in paths]})
