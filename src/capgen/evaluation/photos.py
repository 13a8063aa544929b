"""Scoring a folder of photos against a COCO-format reference file, through the whole captioner.

    capgen evaluate CHECKPOINT --images ../shared/data/coco_dev/images \
        --references ../shared/data/coco_dev/captions.json --out runs/coco_dev

The photos are captioned exactly as `capgen caption` captions them (its encoder, tags, guidance and
decoding defaults), so the figures are what a user gets; no prepared folder or feature cache needed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from capgen.errors import DatasetError
from capgen.evaluation.chair import invented
from capgen.evaluation.metrics import score_captions
from capgen.evaluation.results import write_results
from capgen.evaluation.stats import caption_stats


def read_coco_references(path: str | Path, images: str | Path) -> dict[str, list[str]]:
    """{file name: its captions} for every image of a COCO captions file (`images` with `id` and
    `file_name`, `annotations` with `image_id` and `caption`) that has captions. File names must stay
    inside the `images` folder."""
    path, images = Path(path), Path(images)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise DatasetError(f"{path}: unreadable reference file ({type(e).__name__})") from None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("images"), list)
        or not isinstance(data.get("annotations"), list)
    ):
        raise DatasetError(f"{path}: expected a COCO captions file with 'images' and 'annotations' lists")
    names = {}
    for im in data["images"]:
        name = im.get("file_name") if isinstance(im, dict) else None
        if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
            raise DatasetError(f"{path}: an image's 'file_name' must be a path inside {images}, got {name!r:.80}")
        names[im.get("id")] = name
    refs: dict[str, list[str]] = {}
    for a in data["annotations"]:
        if not isinstance(a, dict) or a.get("image_id") not in names or not isinstance(a.get("caption"), str):
            raise DatasetError(f"{path}: every annotation needs the 'image_id' of a listed image and a 'caption'")
        refs.setdefault(names[a["image_id"]], []).append(a["caption"])
    if not refs:
        raise DatasetError(f"{path}: no image has a caption")
    missing = [n for n in refs if not (images / n).is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} referenced images are not in {images} (e.g. {missing[0]})")
    return refs


def evaluate_photos(
    captioner,
    images: str | Path,
    references: str | Path,
    options: dict,
    out: str | Path | None = None,
    meteor: bool = True,
) -> dict:
    """Caption every referenced photo with `captioner` (options: Captioner.caption_paths's) and score."""
    images = Path(images)
    refs = read_coco_references(references, images)
    names = sorted(refs)
    start = time.perf_counter()
    predictions, failed = {}, []
    for path, res in captioner.caption_paths([images / n for n in names], **options):
        name = Path(path).relative_to(images).as_posix()
        if isinstance(res, Exception):
            failed.append(name)
        else:
            predictions[name] = res.caption
    seconds = time.perf_counter() - start
    if not predictions:
        raise DatasetError(f"{images}: no referenced photo could be captioned")
    metrics = score_captions(predictions, refs, official=True, meteor=meteor)
    metrics.update(invented(predictions, refs))
    metrics.update(caption_stats([c.split() for c in predictions.values()], [False] * len(predictions)))
    metrics.update({"images": len(predictions), "failed": failed, "references": str(references), "seconds": seconds})
    write_results(out, [{"image_id": k, "caption": v} for k, v in sorted(predictions.items())], metrics)
    return metrics
