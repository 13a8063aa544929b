"""Captioning many files: expand files / folders / globs, caption in batches, report bad files."""

from __future__ import annotations

import os
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

from capgen.errors import ImageLoadError
from capgen.images import expand_paths  # noqa: F401 (re-exported: the inference API's)
from capgen.result import CaptionResult
from capgen.tags import GuideConfig

# Longest file name most file systems take, in bytes.
NAME_MAX = 255


def display_name(path: str | os.PathLike) -> str:
    """A path as one safe line of printable UTF-8 text: backslash, control characters (tab, newline,
    ANSI escapes, ...), line and paragraph separators, invisible format characters (bidi overrides)
    and bytes that are not UTF-8 (which Python holds as lone surrogates) become backslash escapes
    (\\, \x1b, \u2028, \xff for the byte 0xff). One name gives one text, two names never the same."""
    return "".join(_escape(c) for c in os.fspath(path))


def _escape(c: str) -> str:
    if c == "\\":
        return "\\\\"
    if "\udc80" <= c <= "\udcff":  # os.fsdecode's stand-in for an undecodable byte
        return f"\\x{ord(c) - 0xDC00:02x}"
    if unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Zl", "Zp"):
        return c
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def caption_paths(
    captioner,
    paths: Sequence[str | os.PathLike | Path | ImageLoadError],
    config=None,
    batch_size: int = 16,
    workers: int = 2,
    tags=None,
    guide=GuideConfig(),
) -> Iterator[tuple[str, CaptionResult | ImageLoadError]]:
    """Yield (path, CaptionResult or ImageLoadError) for each path, in input order.

    Bad files (missing, empty, corrupt, not an image) are yielded as their error and skipped; the
    rest are captioned `batch_size` at a time (one batched encode + decode per batch). Images of the
    next batch are decoded in `workers` threads while the model runs on this one. `paths` may hold
    ImageLoadErrors from `expand_paths`; they are passed through in place. `tags`: a TagConfig to
    also tag each image; `guide`: when tags guide the captions, or None (see Captioner.caption).
    """
    config = config if config is not None else captioner.decode_config()
    batches = [list(paths[i : i + batch_size]) for i in range(0, len(paths), batch_size)]

    def load(item):
        if isinstance(item, ImageLoadError):
            return item
        try:
            return captioner.load(item)
        except ImageLoadError as e:
            return e

    pool = ThreadPoolExecutor(max_workers=max(workers, 1))
    try:
        pending = pool.map(load, batches[0]) if batches else iter(())
        for n, batch in enumerate(batches):
            loaded = list(pending)
            if n + 1 < len(batches):
                pending = pool.map(load, batches[n + 1])  # decode ahead while this batch runs
            good = [img for img in loaded if not isinstance(img, ImageLoadError)]
            results = (
                iter(captioner.caption_loaded(good, config, batch_size, tags=tags, guide=guide)) if good else iter(())
            )
            for item, img in zip(batch, loaded):
                name = item.path if isinstance(item, ImageLoadError) else os.fspath(item)
                yield name, img if isinstance(img, ImageLoadError) else next(results)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


class UniqueNames:
    """Output file names derived from input names, never the same twice: a/x.jpg -> x.jpg,
    then b/x.jpg -> x-2.jpg (names compare case-insensitively, for case-insensitive file systems).
    A stem too long for NAME_MAX bytes with its suffix is shortened (at a character boundary)."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, source: str | os.PathLike, suffix: str) -> str:
        stem = Path(source).stem or "image"
        name, k = _fit(stem, suffix), 1
        while name.lower() in self.used:
            k += 1
            name = _fit(stem, f"-{k}{suffix}")
        self.used.add(name.lower())
        return name


def _fit(stem: str, suffix: str) -> str:
    """stem + suffix, the stem cut to fit NAME_MAX bytes (as the file system encodes the name)."""
    room = NAME_MAX - len(os.fsencode(suffix))
    while len(os.fsencode(stem)) > room:
        stem = stem[:-1]
    return stem + suffix
