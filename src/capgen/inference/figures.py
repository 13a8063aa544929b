"""Pictures of a caption: the caption drawn on the photo, and per-word attention heatmaps."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from capgen.errors import CapgenError
from capgen.io import atomic_path
from capgen.result import CaptionResult

# Figures show the photo at most this many pixels on its long side: enough to read, small to write.
_PANEL_PX = 320


def save_annotated(image: Image.Image, caption: str, path: str | Path) -> Path:
    """Write `image` with `caption` in a dark band along the bottom (wrapped to the image width)."""
    img = image.convert("RGB")
    w, h = img.size
    font = ImageFont.load_default(size=max(12, min(96, round(min(w, h) / 18))))
    draw = ImageDraw.Draw(img)
    lines = _wrap(caption or "(no caption)", font, draw, w - 16)
    line_h = font.getbbox("Ag")[3] + 4
    band = line_h * len(lines) + 12
    # The band is blended over the photo, so the text is readable on any background.
    overlay = Image.new("RGBA", (w, band), (0, 0, 0, 170))
    img.paste(overlay, (0, h - band), overlay)
    for i, line in enumerate(lines):
        draw.text((8, h - band + 6 + i * line_h), line, fill=(255, 255, 255), font=font)
    path = Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format=_format(path), quality=92)
    return path


def _wrap(text: str, font, draw: ImageDraw.ImageDraw, width: int) -> list[str]:
    """Greedy word wrap by measured width (a single over-long word is split by characters)."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
            continue
        chars_per_line = max(1, int(len(word) * width / max(draw.textlength(word, font=font), 1)))
        lines.extend(textwrap.wrap(word, chars_per_line) or [word])
    return lines or [""]


def save_attention_figure(image: Image.Image, result: CaptionResult, path: str | Path, columns: int = 5) -> Path:
    """Write a figure: the photo, then one panel per word with its attention map over the photo."""
    if result.attention is None:
        raise CapgenError("no attention in this result; caption with return_attention=True and an attention model")
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    img = _thumbnail(image)
    w, h = img.size
    photo = np.asarray(img)
    panels = 1 + len(result.tokens)
    cols = min(columns, panels)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows * h / w + 0.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(photo)
    axes.flat[0].set_title(textwrap.shorten(result.caption, 40), fontsize=8)
    for i, (word, att) in enumerate(zip(result.tokens, result.attention), start=1):
        ax = axes.flat[i]
        ax.imshow(photo)
        # The coarse grid stretched over the photo; bicubic interpolation gives a smooth map.
        ax.imshow(att, cmap="jet", alpha=0.5, extent=(0, w, h, 0), interpolation="bicubic")
        ax.set_title(word, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=_format(path).lower(), dpi=100)
    plt.close(fig)
    return path


def _thumbnail(image: Image.Image) -> Image.Image:
    img = image.convert("RGB")
    img.thumbnail((_PANEL_PX, _PANEL_PX))
    return img


def _format(path: Path) -> str:
    return "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
