"""Typed dataclass configs from plain dicts (YAML, `--set key=value`), with clear errors.

Shared by the model configs and the training run config, so it belongs to neither package.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, TypeVar

from capgen.errors import CapgenError

T = TypeVar("T")

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null", "~", ""}


class ConfigError(CapgenError):
    """A config file, key or value is wrong."""


def config_from_dict(cls: type[T], d: dict[str, Any] | None, error: type[CapgenError] = ConfigError) -> T:
    """Build dataclass `cls` from `d`; missing keys keep their defaults.

    Unknown keys and values of the wrong type raise `error`, naming the key. Supported field
    types: int, float, bool, str and `X | None` of those. Strings (from a command line) are
    coerced: "0.3" -> 0.3, "true"/"false" -> bool, "none" -> None; an int is accepted for a float.
    Floats must be finite: no setting of ours means anything at nan or inf.
    """
    if d is not None and not isinstance(d, dict):
        raise error(f"{cls.__name__}: expected a mapping of key -> value, got {type(d).__name__}")
    d = dict(d or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(d) - fields)
    if unknown:
        raise error(f"unknown {cls.__name__} key {unknown[0]!r}; valid keys: {', '.join(sorted(fields))}")
    values = {key: _coerce(key, value, hints[key], error) for key, value in d.items()}
    return cls(**values)


def config_to_dict(config: Any) -> dict[str, Any]:
    """The plain-dict form of a config (JSON/YAML safe); `config_from_dict` reads it back."""
    return dataclasses.asdict(config)


def _coerce(key: str, value: Any, tp: Any, error: type[CapgenError]) -> Any:
    optional, base = _unwrap_optional(tp)
    if optional and (value is None or (isinstance(value, str) and value.strip().lower() in _NONE)):
        return None
    wanted = base.__name__ + (" or None" if optional else "")
    bad = error(f"config key {key!r}: expected {wanted}, got {value!r} ({type(value).__name__})")
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise bad
    if isinstance(value, bool):  # bool is an int subclass; True for a size is always a mistake
        raise bad
    if base in (int, float):
        if isinstance(value, int) or (base is float and isinstance(value, float)):
            number = base(value)  # an int is accepted for a float field
        elif isinstance(value, str):
            try:
                number = base(value.strip())
            except ValueError:
                raise bad from None
        else:
            raise bad
        if not math.isfinite(number):
            raise error(f"config key {key!r}: expected a finite number, got {value!r}")
        return number
    if base is str:
        if isinstance(value, str):
            return value
        raise bad
    raise TypeError(f"config_from_dict: unsupported field type {tp!r} for {key!r}")  # programming error


def _unwrap_optional(tp: Any) -> tuple[bool, Any]:
    """`X | None` / Optional[X] -> (True, X); X -> (False, X)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
        raise TypeError(f"config_from_dict: unsupported union type {tp!r}")
    return False, tp
