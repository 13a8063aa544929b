"""`EncoderSpec`: what identifies an encoder's features, and the one comparison of two of them.

Checkpoints, feature caches and exports store it as a plain dict (`ImageEncoder.spec()`, the same
keys as ever); everything that asks "are these the same features?" reads it through this class, so
the answer and its message are written once (lists and tuples compare equal, as a spec read from
JSON has lists where one built in memory has tuples).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from capgen.errors import CapgenError

# The keys that make two encoders' features the same features; split_at says which activation.
IDENTITY = ("name", "preprocess", "dim", "grid")


def _norm(value):
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    return value


@dataclass(frozen=True)
class EncoderSpec:
    fields: tuple[tuple[str, Any], ...]  # sorted (key, normalised value) of the stored dict

    @classmethod
    def of(cls, spec: dict | EncoderSpec | None) -> EncoderSpec:
        if isinstance(spec, EncoderSpec):
            return spec
        if spec is not None and not isinstance(spec, dict):
            raise CapgenError(f"an encoder spec must be an object of name, preprocess, dim and grid, got {spec!r:.60}")
        return cls(tuple(sorted((k, _norm(v)) for k, v in (spec or {}).items())))

    def get(self, key: str, default=None):
        return dict(self.fields).get(key, default)

    @property
    def name(self) -> str | None:
        return self.get("name")

    @property
    def split_at(self) -> int | None:
        return self.get("split_at") or None

    @property
    def kind(self) -> str:
        """ "grid" (the encoder's final grid) or "block_input" (the activation entering its last
        `split_at` blocks, for fine-tuning them); specs without the field are grids."""
        return "block_input" if self.split_at else "grid"

    def text(self) -> str:
        """Words for the features of this spec, for error messages."""
        n = self.split_at
        if n:
            return f"the activation entering the last {n} blocks of {self.name} (extract --split-at {n})"
        return f"final-grid features of {self.name} (extract without --split-at)"

    def diff(self, other: dict | EncoderSpec, keys: tuple[str, ...] | None = None) -> list[str]:
        """The keys (of `keys`, default every key either has) in which the two specs differ, sorted."""
        a, b = dict(self.fields), dict(EncoderSpec.of(other).fields)
        names = sorted(set(a) | set(b)) if keys is None else list(keys)
        return [k for k in names if a.get(k) != b.get(k)]

    def differences(self, other: dict | EncoderSpec, mine: str, theirs: str, keys=IDENTITY) -> str:
        """'key: MINE value, THEIRS value; ...' for the keys that differ ('' when none does)."""
        other = EncoderSpec.of(other)
        return "; ".join(f"{k}: {mine} {self.get(k)!r}, {theirs} {other.get(k)!r}" for k in self.diff(other, keys))
