"""Models by name: `@register_model("name", Config)` on the class, `create_model("name", ...)`."""

from __future__ import annotations

from typing import Any, Callable

from capgen.config import config_from_dict
from capgen.models.base import CaptionModel, ModelError

_REGISTRY: dict[str, tuple[type[CaptionModel], type]] = {}

M = type[CaptionModel]


def register_model(name: str, config_cls: type) -> Callable[[M], M]:
    """Class decorator: register a CaptionModel subclass and its dataclass config under `name`.

    The class is built as `cls(config, vocab_size, feature_dim, num_regions, itos=...)`.
    """

    def decorator(cls: M) -> M:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")  # a programming error
        cls.name = name
        _REGISTRY[name] = (cls, config_cls)
        return cls

    return decorator


def list_models() -> list[str]:
    """Names accepted by `create_model`."""
    return sorted(_REGISTRY)


def model_config_class(name: str) -> type:
    """The dataclass config of model `name` (its defaults are the recommended settings)."""
    return _lookup(name)[1]


def create_model(
    name: str,
    vocab_size: int,
    feature_dim: int,
    num_regions: int,
    overrides: dict[str, Any] | None = None,
    itos: list[str] | None = None,
) -> CaptionModel:
    """Build model `name` with its default config updated by `overrides` (key -> value; strings
    from a command line are coerced). `itos` (the vocabulary's word list) is needed when the
    config sets `glove=True`, to look up each word's GloVe vector."""
    cls, config_cls = _lookup(name)
    config = config_from_dict(config_cls, overrides, error=ModelError)
    if itos is not None and len(itos) != vocab_size:
        raise ModelError(f"itos has {len(itos)} words but vocab_size is {vocab_size}")
    return cls(config, vocab_size, feature_dim, num_regions, itos=itos)


def _lookup(name: str) -> tuple[M, type]:
    if name not in _REGISTRY:
        raise ModelError(f"unknown model {name!r}; expected one of {list_models()}")
    return _REGISTRY[name]
