"""Write photos from outside Flickr8k into a folder: the scikit-image and matplotlib sample photos
and a few simple scenes drawn here. These are what a user tries first, so captions are checked on
them, not only on the test split.

    python benchmarks/sample_photos.py runs/photos
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# scikit-image sample name -> file name (all bundled with scikit-image; no download)
SKIMAGE = {
    "astronaut": "astronaut",
    "chelsea": "cat",
    "coffee": "coffee",
    "rocket": "rocket",
    "stereo_motorcycle": "motorcycle",
    "camera": "cameraman",
    "hubble_deep_field": "hubble",
    "clock": "clock",
    "coins": "coins",
    "horse": "horse_silhouette",
}


def _drawn() -> dict[str, Image.Image]:
    """Plain scenes: a red ball on grass, a sunset over the sea, a black dog shape on snow, a
    crossword grid and three balloons."""
    ball = Image.new("RGB", (400, 300), (70, 150, 60))
    ImageDraw.Draw(ball).rectangle([0, 0, 400, 110], fill=(140, 190, 235))
    ImageDraw.Draw(ball).ellipse([160, 150, 240, 230], fill=(210, 30, 30))
    sea = Image.new("RGB", (400, 300), (250, 170, 90))
    ImageDraw.Draw(sea).rectangle([0, 170, 400, 300], fill=(30, 70, 140))
    ImageDraw.Draw(sea).ellipse([170, 120, 230, 180], fill=(255, 230, 120))
    snow = Image.new("RGB", (400, 300), (235, 240, 245))
    d = ImageDraw.Draw(snow)
    d.ellipse([140, 140, 260, 200], fill=(20, 20, 20))  # body
    d.ellipse([240, 110, 290, 160], fill=(20, 20, 20))  # head
    for x in (150, 175, 225, 245):
        d.rectangle([x, 190, x + 10, 240], fill=(20, 20, 20))  # legs
    # Objects on a plain background that the ImageNet head names (crossword 0.70, balloon 0.37):
    # the tag-guided captions are checked on them.
    crossword = Image.new("RGB", (500, 375), (235, 235, 235))
    d, rng = ImageDraw.Draw(crossword), random.Random(0)
    for i in range(12):
        for j in range(12):
            x, y = 100 + 25 * i, 40 + 25 * j
            d.rectangle(
                [x, y, x + 24, y + 24], fill=(0, 0, 0) if rng.random() < 0.25 else (255, 255, 255), outline=(0, 0, 0)
            )
    balloons = Image.new("RGB", (500, 375), (235, 235, 235))
    d = ImageDraw.Draw(balloons)
    for x, color in ((170, (220, 30, 30)), (250, (30, 80, 220)), (330, (240, 200, 20))):
        d.ellipse([x - 40, 60, x + 40, 170], fill=color)
        d.line([x, 170, 250, 340], fill=(80, 80, 80), width=2)
    return {
        "drawn_red_ball_on_grass": ball,
        "drawn_sunset_over_sea": sea,
        "drawn_dog_shape_on_snow": snow,
        "drawn_crossword": crossword,
        "drawn_balloons": balloons,
    }


def write_sample_photos(out: Path) -> list[Path]:
    import matplotlib.cbook
    import skimage.data

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, file in SKIMAGE.items():
        arr = getattr(skimage.data, name)()
        arr = arr[0] if isinstance(arr, tuple) else arr  # stereo pairs: the left view
        img = Image.fromarray(np.asarray(arr)).convert("RGB")
        paths.append(out / f"{file}.jpg")
        img.save(paths[-1], quality=92)
    hopper = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    paths.append(out / "grace_hopper.jpg")
    Image.open(hopper).convert("RGB").save(paths[-1], quality=92)
    for name, img in _drawn().items():
        paths.append(out / f"{name}.png")
        img.save(paths[-1])
    return paths


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    for path in write_sample_photos(p.parse_args().out):
        print(path)
