"""The one image loader: extraction, training, inference and the server all read images here.

It returns an 8-bit RGB PIL image, upright according to EXIF, or raises `ImageLoadError` naming
the file. Geometry (resize to the encoder's input) lives with each encoder's preprocessing.
"""

from __future__ import annotations

import glob
import io
import os
import warnings
from pathlib import Path
from typing import Iterable, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from capgen.errors import ImageLoadError

# Larger images are refused before decoding (decompression bombs). 64 Mpx covers any camera photo.
MAX_PIXELS = 64_000_000

# The rule for folders and globs: photo formats by extension, including the newer phone formats
# (AVIF, HEIC/HEIF) exactly when this Pillow build can open them, so a folder picks up the same
# files that load one by one. A file named explicitly is always tried, whatever its extension.
_PHOTO_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
_NEWER_PHOTO_EXTENSIONS = {".avif", ".heic", ".heif"}


def _openable(extensions: set[str]) -> set[str]:
    Image.init()
    registered = Image.registered_extensions()  # extension -> format, for every plugin (HEIC: pillow-heif)
    return {e for e in extensions if registered.get(e) in Image.OPEN}


# The formats every path opens (CLI, bulk, extract, training, the server, the runtime): those a
# camera, phone or browser writes. The type is decided from the bytes, never the name; the other
# Pillow decoders (PSD, FITS, DDS, SGI, XBM, ... and EPS, which runs Ghostscript) are never reached.
# The JPEG opener also takes MPO (JPEG with extra frames, from some cameras).
PHOTO_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "PPM", "AVIF", "HEIF")


def photo_formats() -> tuple[str, ...]:
    """PHOTO_FORMATS this Pillow build can open (asked at call time: a HEIF plugin may register late)."""
    Image.init()
    return tuple(f for f in PHOTO_FORMATS if f in Image.OPEN)


IMAGE_EXTENSIONS = frozenset(_PHOTO_EXTENSIONS | _openable(_NEWER_PHOTO_EXTENSIONS))

ImageSource = Union[str, os.PathLike, bytes, Image.Image]


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether folders and globs take this file (see the rule above; asked at call time, so a HEIF
    plugin registered after import counts)."""
    suffix = Path(path).suffix.lower()
    return suffix in _PHOTO_EXTENSIONS or (suffix in _NEWER_PHOTO_EXTENSIONS and bool(_openable({suffix})))


def load_image(source: ImageSource, max_pixels: int = MAX_PIXELS, name: str | None = None) -> Image.Image:
    """Open `source` (a path, raw bytes or a PIL image) as an upright 8-bit RGB image."""
    label = name or (str(source) if isinstance(source, (str, os.PathLike)) else "<image>")
    if isinstance(source, Image.Image):
        return to_rgb(ImageOps.exif_transpose(source), label)
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageLoadError(label, "empty file (0 bytes), expected an image")
        fp: object = io.BytesIO(source)
    else:
        path = Path(source)
        if not path.exists():
            raise ImageLoadError(label, "no such file")
        if path.is_dir():
            raise ImageLoadError(label, "is a directory, expected an image file")
        if path.stat().st_size == 0:
            raise ImageLoadError(label, "empty file (0 bytes), expected an image")
        fp = path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp, formats=photo_formats()) as img:  # type: ignore[arg-type]
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageLoadError(label, f"{w}x{h} pixels exceeds the limit of {max_pixels:,}")
                img.load()
                img = ImageOps.exif_transpose(img)
                return to_rgb(img, label)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(
            label, f"not an image of a supported format (expected {', '.join(photo_formats())})"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageLoadError(label, f"refused as a decompression bomb ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        # PIL reports truncated or corrupt data as OSError ("image file is truncated", ...).
        raise ImageLoadError(label, f"corrupt or truncated image ({e})") from None


def to_rgb(img: Image.Image, name: str = "<image>") -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparency is composited onto white. ImageLoadError
    naming `name` for a float image with NaN or infinite pixels (stretched, it would be all black)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16/32-bit greyscale: stretch to 8 bits rather than clip (clipping makes 16-bit scans white).
        arr = np.asarray(img, dtype=np.float64)
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise ImageLoadError(
                name, f"{bad:,} of {arr.size:,} pixels are NaN or infinite; expected finite pixel values"
            )
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        arr8 = ((arr - lo) * scale).round().astype(np.uint8)
        return Image.fromarray(arr8).convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "PA"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


# Characters that make an input a glob pattern, not a file name.
_GLOB_CHARS = frozenset("*?[")


def _unique(found: list[Path | ImageLoadError]) -> list[Path | ImageLoadError]:
    """The first of each file (by resolved path: the same file named twice, or a folder and a file in
    it, is captioned once)."""
    seen: set[str] = set()
    out = []
    for item in found:
        if not isinstance(item, ImageLoadError):
            key = os.path.realpath(item)
            if key in seen:
                continue
            seen.add(key)
        out.append(item)
    return out


def expand_paths(inputs: Iterable[str | os.PathLike]) -> list[Path | ImageLoadError]:
    """Each input in order: a file as is; a folder -> its image files, recursively, sorted; a glob ->
    its matches, sorted. An input that names nothing becomes an ImageLoadError in its place.

    Files named explicitly are kept whatever their extension (the loader says if they are not
    images); inside folders and globs only image extensions are taken. A file found twice is kept
    where it is first found.
    """
    out: list[Path | ImageLoadError] = []
    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            found = sorted((p for p in path.rglob("*") if p.is_file() and is_image_file(p)))
            out.extend(found or [ImageLoadError(text, "folder holds no image files")])
        elif path.exists():
            out.append(path)
        elif _GLOB_CHARS & set(text):
            found = sorted((Path(p) for p in glob.glob(text, recursive=True) if os.path.isfile(p) and is_image_file(p)))
            out.extend(found or [ImageLoadError(text, "no image files match this pattern")])
        else:
            out.append(ImageLoadError(text, "no such file or directory"))
    return _unique(out)
