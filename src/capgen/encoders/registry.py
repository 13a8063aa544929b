"""Encoders by name: registered factories, "package.module:factory" and "timm:MODEL".

"module:factory" imports a module and calls a function, so it is only honoured when the caller says
the name is trusted (`allow_import=True`: the user's own --encoder flag). Names read from files
(checkpoints, caches, configs) are never trusted: a checkpoint naming "os:abort" must not run it.
"""

from __future__ import annotations

import importlib
from typing import Callable

from capgen.encoders.base import ImageEncoder
from capgen.errors import EncoderError

EncoderFactory = Callable[[], ImageEncoder]

_REGISTRY: dict[str, EncoderFactory] = {}


def register_encoder(name: str) -> Callable[[EncoderFactory], EncoderFactory]:
    """Decorator: register a factory `() -> ImageEncoder` under `name`."""

    def decorator(factory: EncoderFactory) -> EncoderFactory:
        if name in _REGISTRY:
            raise ValueError(f"encoder {name!r} is already registered")  # a programming error, not a user's
        _REGISTRY[name] = factory
        return factory

    return decorator


def list_encoders() -> list[str]:
    """Names accepted by `create_encoder` (besides "module:factory" and "timm:MODEL")."""
    return sorted(_REGISTRY)


def create_encoder(name: str, allow_import: bool = False) -> ImageEncoder:
    """Build an encoder by name, in eval mode with gradients enabled (fine-tuning may follow).

    allow_import: accept "package.module:factory" (imports and calls user code). Pass True only for
    a name the user typed (e.g. --encoder), never for one read from a file.
    """
    if not isinstance(name, str):
        raise EncoderError(f"encoder name: expected a string, got {type(name).__name__}")
    if name.startswith("timm:"):
        from capgen.encoders.timm_encoder import create_timm_encoder

        encoder = create_timm_encoder(name[len("timm:") :])
    elif name in _REGISTRY:
        encoder = _REGISTRY[name]()
    elif ":" in name and allow_import:
        encoder = _from_import_path(name)
    elif ":" in name:
        raise EncoderError(
            f"encoder {name!r} is not registered ({', '.join(list_encoders())}); 'module:factory' "
            "encoders are only built from your own --encoder flag, never from a name stored in a file"
        )
    else:
        raise EncoderError(
            f"unknown encoder {name!r}; expected one of {list_encoders()}, 'package.module:factory' or 'timm:MODEL'"
        )
    return encoder.eval()


def _from_import_path(target: str) -> ImageEncoder:
    """Call the factory named by "package.module:factory"; it must return an ImageEncoder."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise EncoderError(f"encoder {target!r}: expected 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise EncoderError(f"encoder {target!r}: cannot import module {module_name!r} ({e})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise EncoderError(f"encoder {target!r}: module {module_name!r} has no callable {attr!r}")
    encoder = factory()
    if not isinstance(encoder, ImageEncoder):
        raise EncoderError(
            f"encoder {target!r}: factory returned {type(encoder).__name__}, expected an ImageEncoder "
            "(wrap a plain module with capgen.encoders.GridEncoder)"
        )
    return encoder
