"""A small synthetic captioning dataset: coloured shapes, captions that describe them.

Used by the tests and the quickstart so prepare -> extract (-> train -> evaluate) runs in seconds
without real data. Every image has two shapes one above the other, with several phrasings.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 220), "yellow": (240, 220, 20)}
SHAPES = ("circle", "square", "triangle")
TEMPLATES = (
    "a {c1} {s1} above a {c2} {s2}",
    "a {c2} {s2} below a {c1} {s1}",
    "there is a {c1} {s1} over a {c2} {s2}",
    "a {c1} {s1} sits on top of a {c2} {s2}",
    "two shapes: a {c1} {s1} and a {c2} {s2} under it",
)
SYNTH_FORMATS = ("kaggle", "flickr", "karpathy", "coco", "csv", "jsonl")


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], color: tuple) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=color)
    elif shape == "square":
        draw.rectangle(box, fill=color)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=color)


def make_image(rng: random.Random, size: int = 96) -> tuple[Image.Image, list[str]]:
    """One image and its captions."""
    c1, c2 = rng.sample(list(COLORS), 2)
    s1, s2 = rng.choice(SHAPES), rng.choice(SHAPES)
    img = Image.new("RGB", (size, size), (245, 245, 240))
    draw = ImageDraw.Draw(img)
    r = size // 5
    cx = rng.randint(r, size - r)
    _draw(draw, s1, (cx - r, size // 4 - r + 4, cx + r, size // 4 + r - 4), COLORS[c1])
    cx = rng.randint(r, size - r)
    _draw(draw, s2, (cx - r, 3 * size // 4 - r + 4, cx + r, 3 * size // 4 + r - 4), COLORS[c2])
    captions = [t.format(c1=c1, s1=s1, c2=c2, s2=s2) for t in TEMPLATES]
    rng.shuffle(captions)
    return img, captions


def make_synthetic_dataset(
    out: str | Path, n_images: int = 40, fmt: str = "kaggle", seed: int = 0, captions_per_image: int = 5, size: int = 96
) -> Path:
    """Write `n_images` images and their captions in format `fmt`; returns the path to prepare."""
    if fmt not in SYNTH_FORMATS:
        raise ValueError(f"unknown synthetic format {fmt!r}, expected one of {SYNTH_FORMATS}")
    out = Path(out)
    img_dir = out / "Images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    items = []
    for i in range(n_images):
        img, caps = make_image(rng, size)
        name = f"shape_{i:05d}.jpg"
        img.save(img_dir / name, quality=92)
        split = "train" if i % 10 < 8 else ("val" if i % 10 == 8 else "test")
        items.append((name, caps[:captions_per_image], split))

    if fmt == "kaggle":
        with open(out / "captions.txt", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["image", "caption"])
            w.writerows((n, c) for n, caps, _ in items for c in caps)
        return out
    if fmt == "csv":
        with open(out / "captions.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["image", "caption", "split"])
            w.writerows((f"Images/{n}", c, s) for n, caps, s in items for c in caps)
        return out / "captions.csv"
    if fmt == "jsonl":
        with open(out / "captions.jsonl", "w", encoding="utf-8") as f:
            for n, caps, s in items:
                f.write(json.dumps({"image": f"Images/{n}", "captions": caps, "split": s}) + "\n")
        return out / "captions.jsonl"
    if fmt == "flickr":
        with open(out / "Synth.token.txt", "w", encoding="utf-8") as f:
            for n, caps, _ in items:
                f.writelines(f"{n}#{k}\t{c}\n" for k, c in enumerate(caps))
        for split, fname in (("train", "train"), ("val", "dev"), ("test", "test")):
            (out / f"Synth_{fname}Images.txt").write_text(
                "".join(f"{n}\n" for n, _, s in items if s == split), encoding="utf-8"
            )
        return out
    if fmt == "karpathy":
        images = [{"filename": n, "split": s, "sentences": [{"raw": c} for c in caps]} for n, caps, s in items]
        (out / "dataset_synth.json").write_text(json.dumps({"images": images}), encoding="utf-8")
        return out
    # coco: no split in the file; prepare assigns a seeded random one
    coco = {
        "images": [{"id": i, "file_name": n} for i, (n, _, _) in enumerate(items)],
        "annotations": [
            {"id": k, "image_id": i, "caption": c} for i, (_, caps, _) in enumerate(items) for k, c in enumerate(caps)
        ],
    }
    (out / "captions_synth.json").write_text(json.dumps(coco), encoding="utf-8")
    return out
