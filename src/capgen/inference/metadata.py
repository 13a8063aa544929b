"""Captions into the photo's own metadata (`capgen caption PHOTOS --write-metadata`), where photo
managers (Lightroom, digiKam, darktable, PhotoPrism) and file browsers read them.

The writer is ExifTool (Debian: libimage-exiftool-perl), run as a subprocess with argument lists
(never a shell): it is the reference implementation those programs are tested against, writes
XMP, IPTC and EXIF in place without recompressing pixels, keeps every other tag (maker notes
included), and needs no compiled Python binding (pyexiv2 ships wheels for few platforms).

Tags written, where the format has them:
  XMP  dc:description        JPEG, PNG, TIFF, WebP
  IPTC Caption-Abstract      JPEG, TIFF (in PNG and WebP it is non-standard; readers skip it)
  EXIF ImageDescription      JPEG, PNG, TIFF, WebP

A photo is never damaged: the caption goes into a temporary copy beside it, which must decode to
the same pixels (Pillow), read back the caption, and keep every tag the original had (camera data,
GPS, ICC profile, orientation, ...); only then does it replace the photo (os.replace, atomic). A
kill -9 leaves the photo as it was, or fully captioned, and at most a temporary that the next run
removes. Photos that already have a description are left alone unless overwrite=True (so a rerun
resumes); read-only files, unsupported formats and files ExifTool cannot write are reported.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from capgen.errors import CapgenError, ImageLoadError
from capgen.inference.files import expand_paths
from capgen.io import remove_leftovers

EXIFTOOL = "exiftool"
XMP, IPTC, EXIF = "XMP-dc:Description", "IPTC:Caption-Abstract", "IFD0:ImageDescription"
# What each format can hold (ExifTool's FileType names).
TAGS = {"JPEG": (XMP, IPTC, EXIF), "TIFF": (XMP, IPTC, EXIF), "PNG": (XMP, EXIF), "WEBP": (XMP, EXIF)}
_WRITE_NAMES = {XMP: "XMP-dc:Description", IPTC: "IPTC:Caption-Abstract", EXIF: "EXIF:ImageDescription"}
# Tags that legitimately change when a description is added: the file itself, ExifTool's own
# marks, IPTC's character set, and positions of blocks inside the file.
_VOLATILE_GROUPS = {"ExifTool", "System", "File", "Composite"}
_VOLATILE_TAGS = {
    "IPTC:CodedCharacterSet",
    "IPTC:EnvelopeRecordVersion",
    "IPTC:ApplicationRecordVersion",
    "XMP-x:XMPToolkit",
    "Photoshop:CurrentIPTCDigest",
    "Photoshop:IPTCDigest",
    "RIFF:WebP_Flags",
}  # WebP: which chunks the file holds
_VOLATILE_NAME = re.compile(r"Offset|MPImageStart|DataOffset")
_TEMPORARY = re.compile(r"^\..+\.capgen-[a-z0-9_]{8}\.tmp(_exiftool_tmp)?$")
_CHUNK = 200  # files per ExifTool read call (argument lists stay far below the OS limit)


class MetadataError(CapgenError):
    """ExifTool is missing, or one photo's metadata cannot be written (the message names it)."""


def find_exiftool() -> str:
    path = shutil.which(EXIFTOOL)
    if path is None:
        raise MetadataError(
            "--write-metadata needs ExifTool, which is not installed (Debian/Ubuntu: "
            "apt-get install libimage-exiftool-perl; macOS: brew install exiftool)"
        )
    return path


def _run(exiftool: str, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [exiftool, *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        stdin=subprocess.DEVNULL,
        check=False,
    )


def read_tags(exiftool: str, paths: list[Path], tags: Iterable[str] | None = None) -> list[dict]:
    """ExifTool's tags of each file (group:name -> value), in order; every tag when `tags` is None.
    Paths are absolute, so a file named like an option ("-x.jpg") is never read as one."""
    out = []
    for i in range(0, len(paths), _CHUNK):
        chunk = [str(Path(p).absolute()) for p in paths[i : i + _CHUNK]]
        wanted = [f"-{t}" for t in tags] + ["-File:FileType"] if tags is not None else []
        res = _run(exiftool, ["-json", "-G1", "-charset", "iptc=UTF8", *wanted, *chunk])
        try:
            found = {d.get("SourceFile"): d for d in json.loads(res.stdout or "[]")}
        except json.JSONDecodeError:
            found = {}
        out.extend(
            found.get(p, {"ExifTool:Error": (res.stderr.strip().splitlines() or ["cannot read"])[0]}) for p in chunk
        )
    return out


def _text(value) -> str:
    # ExifTool's JSON turns "123" into a number and may give a lang-alt as a dict
    if isinstance(value, dict):
        value = value.get("x-default", next(iter(value.values()), ""))
    return "" if value is None else str(value)


def descriptions(tags: dict) -> dict[str, str]:
    """The non-empty descriptions a file already has."""
    return {t: _text(tags[t]) for t in (XMP, IPTC, EXIF) if t in tags and _text(tags[t]).strip()}


@dataclass
class Planned:
    todo: list[Path]  # photos to caption
    kept: int  # photos that already have a description (overwrite=False)
    failed: dict[str, str]  # input or photo -> reason


def _read_only(path: Path) -> bool:
    # os.access says yes to root for any file; a file without write bits is read-only by intent
    mode = path.stat().st_mode
    return not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) or not os.access(path, os.W_OK)


def plan(inputs: Iterable[str], overwrite: bool = False, exiftool: str | None = None) -> Planned:
    """Expand the inputs; sort the photos into to-do, already described, and cannot be written."""
    exiftool = exiftool or find_exiftool()
    failed, photos = {}, []
    for p in expand_paths(inputs):
        if isinstance(p, ImageLoadError):
            failed[p.path] = p.reason
        else:
            photos.append(p)
    remove_temporaries(photos)
    todo, kept = [], 0
    for photo, tags in zip(photos, read_tags(exiftool, photos, (XMP, IPTC, EXIF))):
        reason = _unwritable(photo, tags)
        if reason:
            failed[os.fspath(photo)] = reason
        elif descriptions(tags) and not overwrite:
            kept += 1
        else:
            todo.append(photo)
    return Planned(todo, kept, failed)


def _kind(tags: dict) -> str | None:
    """ExifTool's file type as a TAGS key ("Extended WEBP" is a WebP with a VP8X header)."""
    kind = tags.get("File:FileType")
    return kind.split()[-1] if isinstance(kind, str) and kind.strip() else None


def _unwritable(photo: Path, tags: dict) -> str | None:
    kind = _kind(tags)
    if "ExifTool:Error" in tags or not kind:
        return f"metadata not written: {tags.get('ExifTool:Error', 'not an image ExifTool can read')}"
    if kind not in TAGS:
        return f"metadata not written: {kind} files are not supported (JPEG, PNG, TIFF, WebP)"
    if _read_only(photo):
        return "metadata not written: the file is read-only"
    return None


def remove_temporaries(photos: Iterable[Path]) -> int:
    """Delete temporaries a killed run left beside the photos (each folder read once)."""
    return remove_leftovers(photos, _TEMPORARY)


def write_description(photo: Path, caption: str, exiftool: str | None = None) -> None:
    """Put `caption` into the photo's description tags, checked on a copy first (see the module
    docstring). MetadataError naming the photo when it cannot be done; the photo is then unchanged."""
    exiftool = exiftool or find_exiftool()
    photo = Path(photo)
    fd, name = tempfile.mkstemp(prefix=f".{photo.name}.capgen-", suffix=".tmp", dir=photo.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        shutil.copy2(photo, tmp)  # mode and times as the photo's
        kind = _pillow_format(tmp)
        if kind not in TAGS:
            raise MetadataError(f"{photo}: metadata not written: {kind or 'unknown'} files are not supported")
        sets = [f"-{_WRITE_NAMES[t]}={caption}" for t in TAGS[kind]]
        charset = ["-charset", "iptc=UTF8", "-IPTC:CodedCharacterSet=UTF8"] if IPTC in TAGS[kind] else []
        res = _run(exiftool, ["-q", "-q", "-overwrite_original", "-P", *charset, *sets, str(tmp.absolute())])
        if res.returncode != 0:
            why = (res.stderr.strip().splitlines() or [f"exiftool exit code {res.returncode}"])[0]
            raise MetadataError(f"{photo}: metadata not written: {why}")
        _check(photo, tmp, caption, TAGS[kind], exiftool)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, photo)
    finally:
        tmp.unlink(missing_ok=True)
        Path(f"{tmp}_exiftool_tmp").unlink(missing_ok=True)


def _check(photo: Path, tmp: Path, caption: str, written: tuple[str, ...], exiftool: str) -> None:
    """The copy decodes to the photo's pixels, holds the caption and keeps every other tag."""
    if not same_pixels(photo, tmp):
        raise MetadataError(f"{photo}: metadata not written: the pixels would change")
    before, after = read_tags(exiftool, [photo, tmp])
    for t in written:
        if _text(after.get(t)) != caption:
            raise MetadataError(f"{photo}: metadata not written: {t} does not read back the caption")
    for key, value in before.items():
        group, _, tag = key.partition(":")
        volatile = group in _VOLATILE_GROUPS or key in _VOLATILE_TAGS or _VOLATILE_NAME.search(tag)
        if not tag or key in written or volatile:
            continue
        if after.get(key) != value:
            raise MetadataError(f"{photo}: metadata not written: it would change {key}")


def _pillow_format(path: Path) -> str | None:
    """JPEG, PNG, TIFF, WEBP, ... (the names TAGS uses), or None for a file Pillow cannot open."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.format
    except Exception:  # noqa: BLE001  anything unreadable is simply not a supported photo
        return None


def same_pixels(a: Path, b: Path) -> bool:
    """Every frame of the two files decodes to the same mode, size and bytes."""
    from PIL import Image, ImageSequence

    with Image.open(a) as x, Image.open(b) as y:
        if (x.format, getattr(x, "n_frames", 1)) != (y.format, getattr(y, "n_frames", 1)):
            return False
        for fx, fy in zip(ImageSequence.Iterator(x), ImageSequence.Iterator(y)):
            if fx.mode != fy.mode or fx.size != fy.size or fx.tobytes() != fy.tobytes():
                return False
    return True
