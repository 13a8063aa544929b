"""Checking uploads before they reach the model: every bad input gets its own 4xx and message."""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from capgen.errors import ImageLoadError
from capgen.images import load_image, photo_formats


class UploadError(Exception):
    """A request the server refuses; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def image_pixels(data: bytes, filename: str, max_pixels: int) -> int:
    """Width x height from the header alone (nothing decoded), or UploadError:
    400 empty, 415 not an allowed image type, 413 too many pixels, 422 corrupt header."""
    if not data:
        raise UploadError(400, f"{filename}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size check follows
            # Image.open only reads the header: cheap, and enough to know the type and size.
            with Image.open(io.BytesIO(data), formats=photo_formats()) as probe:
                w, h = probe.size
    except UnidentifiedImageError:
        raise UploadError(415, f"{filename}: not a supported image (expected {', '.join(photo_formats())})") from None
    except Image.DecompressionBombError:
        raise UploadError(413, f"{filename}: image has too many pixels (limit {max_pixels:,})") from None
    except Exception as e:  # noqa: BLE001  a malformed header can raise nearly anything inside PIL
        raise UploadError(422, f"{filename}: corrupt or truncated image ({str(e)[:100] or type(e).__name__})") from None
    if w * h > max_pixels:
        raise UploadError(413, f"{filename}: {w}x{h} pixels exceeds the limit of {max_pixels:,}")
    return w * h


def read_image(data: bytes, filename: str, max_pixels: int) -> Image.Image:
    """Upload bytes -> RGB image through the one loader, or UploadError (see `image_pixels`;
    422 for data that is corrupt past the header)."""
    image_pixels(data, filename, max_pixels)
    try:
        return load_image(data, max_pixels=max_pixels, name=filename)
    except ImageLoadError as e:
        raise UploadError(422, f"{filename}: {e.reason}") from None
