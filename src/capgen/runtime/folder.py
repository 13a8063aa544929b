"""The exported folder's format, owned here (torch-free); `capgen export` writes it, `Runtime` reads it.

DIR/
  encoder.onnx        x (B, 3, S, S) -> pooled (B, D), grid (B, N, D): the Captioner's own encoder ONNX
  decoder_init.onnx   pooled, grid -> memory.*, state.*        (CaptionModel.init_memory + init_state)
  decoder_step.onnx   tokens (B,), state.*, memory.* -> logp (B, V), new_state.*  (CaptionModel.step)
  vocab.json          Vocabulary.to_dict()
  decoding.json       the DecodeConfig fields the export was made with (the runtime's defaults)
  model.json          architecture, encoder spec (preprocessing), the graphs' input/output names
  tag_head.npz        optional, with the two below (an encoder with a classifier head): weight, bias
  tag_words.json      the head's label set and each class's caption word ('' = none)
  guide.json          tag guidance plans: per tag word, the word ids a caption must contain (Guide)
  manifest.json       sha256 and size of every file above; written last, so it marks completeness;
                      also the weights_sha256 of the checkpoint(s) exported (absent in older exports)

The step graph also carries the vocabulary's sha256 in its metadata, so a vocabulary from another
export is refused even when the manifest was rewritten to match it.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Sequence

from capgen.errors import ExportError

FORMAT = "capgen-export"
VERSION = 1
ENCODER, INIT, STEP = "encoder.onnx", "decoder_init.onnx", "decoder_step.onnx"
VOCAB, DECODING, MODEL, MANIFEST = "vocab.json", "decoding.json", "model.json", "manifest.json"
FILES = (ENCODER, INIT, STEP, VOCAB, DECODING, MODEL)
TAG_HEAD, TAG_WORDS, GUIDE = "tag_head.npz", "tag_words.json", "guide.json"
TAG_FILES = (TAG_HEAD, TAG_WORDS, GUIDE)  # all or none
VOCAB_HASH_KEY = "capgen.vocab_sha256"  # metadata_props key in decoder_step.onnx
_HEX64 = re.compile("[0-9a-f]{64}")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest_for(folder: Path, weights_sha256: Sequence[str] = ()) -> dict:
    """What manifest.json holds for the files now in `folder`; weights_sha256: the hash stored in each
    checkpoint exported (capgen.checkpoint.weights_sha256), so an export names the weights it came from."""
    from capgen import __version__

    return {
        "format": FORMAT,
        "version": VERSION,
        "capgen": __version__,
        "files": {
            name: {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size}
            for name in FILES + TAG_FILES
            if name in FILES or (folder / name).is_file()
        },
        **({"weights_sha256": list(weights_sha256)} if weights_sha256 else {}),
    }


def weights_of(folder: Path) -> tuple[str, ...]:
    """The weights_sha256 of the checkpoint(s) an export came from; () for an export older than it."""
    path = folder / MANIFEST
    value = read_json(path, "a capgen export manifest").get("weights_sha256", [])
    if not (isinstance(value, list) and all(isinstance(h, str) and _HEX64.fullmatch(h) for h in value)):
        raise ExportError(f"{path}: field 'weights_sha256' must be a list of sha256 hex digests, got {brief(value)}")
    return tuple(value)


def has_tags(folder: Path) -> bool:
    """The export carries the tagger and the guidance plans (check_folder has checked them)."""
    return all((folder / name).is_file() for name in TAG_FILES)


def check_folder(folder: str | Path, verify: bool = True) -> Path:
    """Refuse, naming the file, a folder that is not a complete, unmodified export.

    verify: also hash every file against the manifest (~50 ms for a 25 MB encoder); False checks
    presence and sizes only.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportError(f"{folder}: not a folder; expected the output of `capgen export`")
    manifest = read_json(folder / MANIFEST, "a capgen export manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ExportError(f"{folder / MANIFEST}: not a capgen export manifest (format {FORMAT!r})")
    if manifest.get("version") != VERSION:
        raise ExportError(
            f"{folder / MANIFEST}: export format version {manifest.get('version')!r}, this "
            f"capgen reads version {VERSION}; export again with this capgen"
        )
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ExportError(f"{folder / MANIFEST}: field 'files' must map file names to hashes")
    tagged = [name for name in TAG_FILES if name in files]
    if tagged and len(tagged) != len(TAG_FILES):
        raise ExportError(
            f"{folder / MANIFEST}: lists {', '.join(tagged)} but not all of {', '.join(TAG_FILES)}; export again"
        )
    check_listed(folder, folder / MANIFEST, files, FILES + tuple(tagged), verify, "the export", "export again")
    return folder


def check_listed(
    folder: Path, index: Path, files: dict, names: Sequence[str], verify: bool, what: str, again: str
) -> None:
    """Refuse, naming the file, one of `names` that `index` (its `files`: name -> {"sha256", "bytes"})
    does not hash, that is a link, missing, or not as hashed (verify: by sha256 as well as by size),
    and any file in `folder` beside them and the index. what: "the export", say; again: the fix."""
    for name in names:
        path, entry = folder / name, files.get(name)
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise ExportError(f"{index}: lists no hash for {name}")
        if type(entry.get("bytes")) is not int or entry["bytes"] < 0:
            raise ExportError(
                f"{index}: the size of {name} ('bytes') must be an integer >= 0, got {brief(entry.get('bytes'))}"
            )
        if path.is_symlink():  # it may point at a copy outside, that nobody checks stays as hashed
            raise ExportError(f"{path}: a symbolic link; {what} holds its own files (copy the file in, or {again})")
        if not path.is_file():
            raise ExportError(f"{path}: missing from {what}; {again}")
        if path.stat().st_size != entry["bytes"]:
            raise ExportError(
                f"{path}: {path.stat().st_size} bytes, {index.name} says {entry['bytes']} "
                f"(truncated or changed after it was written); {again}"
            )
        if verify and sha256_file(path) != entry["sha256"]:
            raise ExportError(
                f"{path}: content differs from {index.name}'s sha256 (corrupted or changed after it was "
                f"written); {again}"
            )
    # Nothing unhashed may sit beside them: ONNX Runtime would read an external-data file a graph
    # names from this folder, unchecked.
    extra = sorted(p.name for p in folder.iterdir() if p.name not in {index.name, *names})
    if extra:
        raise ExportError(
            f"{folder / extra[0]}: not part of {what} ({index.name} does not list it): remove it, or {again}"
        )


def read_npz(path: Path, arrays: dict[str, tuple[tuple[int, ...], str]]) -> dict:
    """The arrays of an .npz archive, each of the given (shape, dtype), checked from the .npy
    headers before any data is read: a small compressed file may declare gigabytes."""
    import zipfile

    import numpy as np

    def bad(what: str) -> ExportError:
        return ExportError(f"{path}: {what}; export again")

    try:
        with zipfile.ZipFile(path) as z:
            members = {f"{name}.npy" for name in arrays}
            if set(z.namelist()) != members:
                raise bad(f"expected the arrays {', '.join(sorted(arrays))}, got {brief(sorted(z.namelist()))}")
            out = {}
            for name, (shape, dtype) in arrays.items():
                with z.open(f"{name}.npy") as f:
                    version = np.lib.format.read_magic(f)
                    if version not in ((1, 0), (2, 0)):  # what np.savez writes
                        raise bad(f"{name}: .npy format version {version} is not one numpy.savez writes")
                    read_header = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    got_shape, _, got_dtype = read_header(f)
                    if tuple(got_shape) != tuple(shape) or got_dtype != np.dtype(dtype) or got_dtype.hasobject:
                        raise bad(
                            f"{name} must be {dtype} {tuple(shape)}, the file declares {got_dtype} {tuple(got_shape)}"
                        )
                with z.open(f"{name}.npy") as f:
                    out[name] = np.lib.format.read_array(f, allow_pickle=False)
            return out
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001  zipfile and numpy raise many types for a damaged archive
        raise bad(f"not a readable array archive ({type(e).__name__})") from None


def read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise ExportError(f"{path}: missing; expected {what} (is this the output of `capgen export`?)")
    from capgen.io import read_json as read_data

    return read_data(path, what, ExportError)


def field(d: Any, key: str, kind: type | tuple, path: Path) -> Any:
    """d[key], which must be of `kind`; else one line naming the file and the field."""
    value = d.get(key) if isinstance(d, dict) else None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ExportError(
            f"{path}: field {key!r} must be {getattr(kind, '__name__', kind)}, got {type(value).__name__}"
        )
    return value


def count_field(d: dict, key: str, path: Path, optional: bool = False, length: int | None = None) -> Any:
    """d[key] as an integer >= 1 (None when optional and absent or null), or with `length` a list of
    that many such integers (an encoder's grid)."""
    value = d.get(key)
    if optional and value is None:
        return None

    def count(v: Any) -> bool:
        return type(v) is int and v >= 1

    ok = (
        isinstance(value, list) and len(value) == length and all(map(count, value))
        if length is not None
        else count(value)
    )
    if not ok:
        what = f"a list of {length} integers >= 1" if length is not None else "an integer >= 1"
        raise ExportError(f"{path}: field {key!r} must be {what}{' or null' if optional else ''}, got {brief(value)}")
    return value


def brief(value: Any) -> str:
    """A value from a file, short enough for a one-line message."""
    try:
        return json.dumps(value)[:60]
    except (TypeError, ValueError, RecursionError):
        return type(value).__name__


def names_field(d: dict, key: str, path: Path) -> list[str]:
    """d[key] as a list of distinct names (the graphs' memory or state keys)."""
    value = field(d, key, list, path)
    if not all(isinstance(v, str) and v for v in value) or len(set(value)) != len(value):
        raise ExportError(f"{path}: field {key!r} must be a list of distinct names, got {brief(value)}")
    return value
