"""Caption text without images: corpora that teach the decoder how people describe scenes that the
paired data barely shows (kitchens, food, street scenes, animals). They add words to the vocabulary
and text-only training batches (training/text_batches.py); they have no image features.

A corpus is JSON Lines, one photo per line, its captions describing the same photo:
  {"id": "coco-000000017379", "captions": ["a flat screen TV embedded in a restroom mirror.", ...]}
The prepared folder keeps them normalised in text.jsonl: {"id", "corpus", "tokens": [[...], ...]}.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from capgen.data.text import normalize_caption
from capgen.errors import DatasetError

TEXT_FILE = "text.jsonl"


@dataclass(frozen=True)
class TextRecord:
    id: str
    corpus: int  # index into the manifest's text_corpora
    tokens: tuple[tuple[str, ...], ...]  # normalised captions of one photo


def read_corpus(path: str | Path, corpus: int = 0) -> tuple[list[TextRecord], dict]:
    """(records, the manifest entry {"path", "sha256", "photos", "captions"}) of one corpus file.

    DatasetError naming the file and line for a missing, empty or malformed file: a corpus is data
    written by hand as often as by a script, and a bad line must not silently shrink it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read text corpus ({e.strerror or e})") from None
    records, seen = [], set()
    for n, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{path}:{n}"
        try:
            d = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise DatasetError(f"{where}: not UTF-8 text") from None
        except (json.JSONDecodeError, RecursionError):
            raise DatasetError(f'{where}: not a JSON object (expected {{"id": ..., "captions": [...]}})') from None
        caps = d.get("captions") if isinstance(d, dict) else None
        if not isinstance(caps, list) or not caps or not all(isinstance(c, str) for c in caps):
            raise DatasetError(f'{where}: expected a "captions" list of strings')
        tokens = tuple(t for t in (tuple(normalize_caption(c)) for c in caps) if t)
        if not tokens:
            raise DatasetError(f"{where}: no caption has words after normalisation")
        ident = d.get("id", f"{path.name}:{n}")
        if not isinstance(ident, (str, int)) or isinstance(ident, bool):
            raise DatasetError(f'{where}: "id" must be a string')
        ident = str(ident)
        if ident in seen:
            raise DatasetError(f"{where}: id {ident[:80]!r} appears twice")
        seen.add(ident)
        records.append(TextRecord(ident, corpus, tokens))
    if not records:
        raise DatasetError(f"{path}: text corpus is empty (expected JSON lines with captions)")
    entry = {
        "path": str(path.resolve()),
        "sha256": hashlib.sha256(data).hexdigest(),
        "photos": len(records),
        "captions": sum(len(r.tokens) for r in records),
    }
    return records, entry


def write_text_records(path: Path, records: list[TextRecord]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(
                json.dumps({"id": r.id, "corpus": r.corpus, "tokens": [list(t) for t in r.tokens]}, ensure_ascii=False)
                + "\n"
            )


def load_text_records(path: Path, expected: int) -> list[TextRecord]:
    """text.jsonl of a prepared folder; DatasetError when it is damaged or its count is not the manifest's."""
    out, n = [], 0
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):  # noqa: B007 (n names the bad line below)
                d = json.loads(line)
                tokens = tuple(tuple(str(w) for w in t) for t in d["tokens"])
                if not isinstance(d["id"], str) or not isinstance(d["corpus"], int) or not tokens:
                    raise TypeError("bad field")
                out.append(TextRecord(d["id"], d["corpus"], tokens))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError, KeyError, TypeError) as e:
        where = f" at line {n}" if n else ""
        raise DatasetError(
            f"{path}: unreadable prepared text corpus{where} ({type(e).__name__}); prepare again"
        ) from None
    if len(out) != expected:
        raise DatasetError(f"{path}: has {len(out)} photos, the manifest says {expected}; prepare again")
    return out
