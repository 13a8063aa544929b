"""Sidecar files: one caption file beside each photo (`capgen caption PHOTOS --sidecar txt`).

photo.jpg -> photo.txt (or .caption, .json), the convention of diffusion-training tools (kohya-ss,
taggui, ...), or mirrored under a folder (`--sidecar-dir`): PHOTOS/sub/photo.jpg -> DIR/sub/photo.txt,
relative to the PATH argument that named the photo.

Each file is written atomically (capgen.io.atomic_path), so a kill -9 leaves a sidecar either absent
or complete; a temporary left by a kill is removed by the next run. With existing="skip" (the
default) photos that already have a sidecar are not captioned again, so a rerun resumes the job;
"append" / "prepend" never add the same text twice, so a rerun after a kill does not double it.

Text sidecars hold comma-separated parts: prefix, tags (words), caption, suffix
("sks dog, dog, grass, a dog runs on the grass").
"""

from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from capgen.errors import CapgenError, ImageLoadError
from capgen.inference.files import expand_paths
from capgen.io import atomic_path, remove_leftovers
from capgen.result import CaptionResult

KINDS = ("txt", "caption", "json")
EXISTING = ("skip", "overwrite", "append", "prepend")
SEPARATOR = ", "
# atomic_path's temporaries: ".<name>.<8 mkstemp characters>.tmp"
_TEMPORARY = re.compile(r"^\..+\.(txt|caption|json)\.[a-z0-9_]{8}\.tmp$")


@dataclass(frozen=True)
class SidecarSettings:
    kind: str = "txt"
    existing: str = "skip"
    prefix: str = ""
    suffix: str = ""
    folder: Path | None = None  # mirror the photos' folders under this one instead of writing beside them

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise CapgenError(f"--sidecar: expected one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.existing not in EXISTING:
            raise CapgenError(f"--existing: expected one of {', '.join(EXISTING)}, got {self.existing!r}")
        if self.kind == "json" and self.existing in ("append", "prepend"):
            raise CapgenError(
                f"--existing {self.existing} joins text; a json sidecar can only be skipped or overwritten"
            )
        if self.folder is not None and Path(self.folder).exists() and not Path(self.folder).is_dir():
            raise CapgenError(f"--sidecar-dir: expected a folder, got {self.folder}, which is a file")


@dataclass
class Planned:
    """The photos to caption and where their sidecars go; what is skipped and why."""

    todo: list[tuple[Path, Path]]  # (photo, sidecar)
    done: int  # photos whose sidecar exists (existing="skip")
    failed: dict[str, str]  # input or photo -> reason


def _root(item: str) -> Path:
    """The folder an input's photos are mirrored from: the folder itself, a file's folder, or a
    glob's folder before its first wildcard."""
    path = Path(item)
    if path.is_dir():
        return path
    if path.exists() or not glob.has_magic(item):
        return path.parent
    parts = []
    for part in path.parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def sidecar_path(photo: Path, root: Path, settings: SidecarSettings) -> Path:
    name = f"{photo.stem}.{settings.kind}"
    if settings.folder is None:
        return photo.with_name(name)
    return Path(settings.folder) / photo.relative_to(root).with_name(name)


def plan(inputs: Iterable[str], settings: SidecarSettings) -> Planned:
    """Expand the inputs (files, folders, globs) and pair each photo with its sidecar. Two photos
    that would share one sidecar (a.jpg and a.png) are a failure of the second; with
    existing="skip", photos that already have their sidecar are left out."""
    todo, failed, done, owner = [], {}, 0, {}
    for item in inputs:
        root = _root(os.fspath(item))
        for photo in expand_paths([item]):
            if isinstance(photo, ImageLoadError):
                failed[photo.path] = photo.reason
                continue
            target = sidecar_path(photo, root, settings)
            key = os.path.normcase(os.path.abspath(target))
            if key in owner:
                if owner[key] != os.path.abspath(photo):
                    failed[os.fspath(photo)] = f"its sidecar {target} is also {owner[key]}'s; rename one of them"
                continue
            owner[key] = os.path.abspath(photo)
            if settings.existing == "skip" and target.exists():
                done += 1
            else:
                todo.append((photo, target))
    return Planned(todo, done, failed)


def remove_temporaries(targets: Iterable[Path]) -> int:
    """Delete sidecar temporaries a killed run left in the folders of `targets` (each folder once)."""
    return remove_leftovers(targets, _TEMPORARY)


def compose(res: CaptionResult, settings: SidecarSettings) -> str:
    """The sidecar text: prefix, tag words, caption, suffix, comma-separated, skipping empty parts."""
    tags = [t.word for t in res.tags or []]
    return SEPARATOR.join(p for p in (settings.prefix.strip(), *tags, res.caption, settings.suffix.strip()) if p)


def _joined(old: str, new: str, existing: str) -> str | None:
    """Existing text with `new` appended / prepended, or None when it is already there (a rerun)."""
    old = old.strip()
    if not old:
        return new
    if existing == "append":
        return None if old == new or old.endswith(SEPARATOR + new) else old + SEPARATOR + new
    return None if old == new or old.startswith(new + SEPARATOR) else new + SEPARATOR + old


def write_sidecar(photo: Path, target: Path, res: CaptionResult, settings: SidecarSettings) -> bool:
    """Write (or update) one sidecar atomically. False when there was nothing to change."""
    text = compose(res, settings)
    if settings.kind == "json":
        body = json.dumps({"image": photo.name, "text": text, **res.to_dict()}, ensure_ascii=False, indent=1) + "\n"
    else:
        if settings.existing in ("append", "prepend") and target.exists():
            try:
                old = target.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise CapgenError(f"{target}: the existing sidecar is not UTF-8 text; not changed") from None
            joined = _joined(old, text, settings.existing)
            if joined is None:
                return False
            text = joined
        body = text + "\n"
    with atomic_path(target) as tmp:
        tmp.write_text(body, encoding="utf-8")
    return True
