"""Readers for the caption formats people have. Each returns `RawRecord`s: image, captions, split.

Formats: flickr (Flickr8k/30k token file + split lists), karpathy (dataset_*.json), coco
(captions_*.json), kaggle (Images/ + captions.txt), csv and jsonl (custom data).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from capgen.errors import DatasetError

FORMATS = ("flickr", "karpathy", "coco", "kaggle", "csv", "jsonl")
SPLITS = ("train", "val", "test")
# Other split names in the wild, mapped onto ours (Karpathy's COCO "restval" is training data).
SPLIT_ALIASES = {
    "train": "train",
    "restval": "train",
    "val": "val",
    "dev": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}


@dataclass
class RawRecord:
    image: str  # id: path relative to the images folder, e.g. "123.jpg"
    captions: list[str] = field(default_factory=list)
    split: str | None = None


@dataclass
class RawDataset:
    records: dict[str, RawRecord]  # insertion order = dataset order
    images_dir: Path
    fmt: str
    source: Path
    not_in_split: int = 0  # images with captions that no split lists (dropped)


def canonical_split(name: str, where: str) -> str:
    key = name.strip().lower()
    if key not in SPLIT_ALIASES:
        raise DatasetError(
            f"{where}: unknown split {name!r}, expected one of train, val, test (or dev, restval, validation)"
        )
    return SPLIT_ALIASES[key]


def _add(records: dict[str, RawRecord], image: str, caption: str, where: str, split: str | None = None) -> None:
    image, caption = image.strip(), caption.strip()
    if not image:
        raise DatasetError(f"{where}: empty image name")
    if not caption:
        raise DatasetError(f"{where}: empty caption for {image}")
    rec = records.setdefault(image, RawRecord(image, split=split))
    if split is not None and rec.split not in (None, split):
        raise DatasetError(f"{where}: image {image} is in split {split!r} here but {rec.split!r} elsewhere")
    rec.captions.append(caption)


def _load_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: malformed JSON at line {e.lineno} column {e.colno} ({e.msg})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read ({e})") from None


def _read_text_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read as UTF-8 text ({e})") from None


def _pick_images_dir(candidates: list[Path], records: dict[str, RawRecord], what: Path) -> Path:
    """The first candidate folder in which the dataset's first images exist."""
    if not records:  # e.g. a CSV with only its header line
        raise DatasetError(f"{what}: no captions found")
    sample = list(records)[:5]
    seen = []
    for d in candidates:
        if d in seen:
            continue
        seen.append(d)
        if d.is_dir() and sample and any((d / name).is_file() for name in sample):
            return d
    looked = ", ".join(str(d) for d in seen)
    raise DatasetError(f"{what}: cannot find its images (e.g. {sample[0]}); looked in {looked}; pass --images DIR")


# ---------------------------------------------------------------- flickr


def _find_one(folder: Path, patterns: tuple[str, ...], what: str, required: bool = True) -> Path | None:
    found = sorted({p for pat in patterns for p in folder.glob(pat) if p.is_file()})
    if len(found) > 1:
        raise DatasetError(
            f"{folder}: several {what} files ({', '.join(p.name for p in found)}); pass the one to use as DATA"
        )
    if not found and required:
        raise DatasetError(f"{folder}: no {what} file found (expected {' or '.join(patterns)})")
    return found[0] if found else None


def read_flickr(data: Path, images: Path | None) -> RawDataset:
    """Flickr8k/30k: `name.jpg#k<TAB>caption` lines plus optional train/dev/test image lists."""
    token = data if data.is_file() else _find_one(data, ("*.token.txt", "*.token"), "caption token")
    folder = token.parent
    records: dict[str, RawRecord] = {}
    for n, line in enumerate(_read_text_lines(token), 1):
        if not line.strip():
            continue
        key, tab, caption = line.partition("\t")
        if not tab or "#" not in key:
            raise DatasetError(f"{token}:{n}: expected 'image.jpg#k<TAB>caption', got {line[:60]!r}")
        _add(records, key.rsplit("#", 1)[0], caption, f"{token}:{n}")
    split_files = {
        s: _find_one(folder, (f"*{s}Images.txt",), f"{s} split", required=False) for s in ("train", "dev", "test")
    }
    not_in_split, listed = 0, []
    if any(split_files.values()):
        for name, path in split_files.items():
            if path is None:
                raise DatasetError(f"{folder}: has split lists but no *{name}Images.txt")
            split = canonical_split(name, str(path))
            for n, line in enumerate(_read_text_lines(path), 1):
                image = line.strip()
                if not image:
                    continue
                if image not in records:
                    raise DatasetError(f"{path}:{n}: image {image} has no captions in {token.name}")
                if records[image].split is not None:
                    raise DatasetError(f"{path}:{n}: image {image} is already in split {records[image].split!r}")
                records[image].split = split
                listed.append(image)
        # Images no split lists are not part of the official benchmark (Flickr8k has 91).
        not_in_split = sum(r.split is None for r in records.values())
        # Keep the split lists' order: it is the official (and Karpathy's) image order.
        records = {k: records[k] for k in listed}
    cands = (
        [images]
        if images
        else [folder / d for d in ("Images", "images", "Flicker8k_Dataset", "Flickr8k_Dataset", "flickr30k-images")]
        + [folder]
    )
    return RawDataset(records, _pick_images_dir(cands, records, token), "flickr", token, not_in_split)


# ---------------------------------------------------------------- karpathy


def read_karpathy(data: Path, images: Path | None) -> RawDataset:
    """Karpathy's split JSON: images[].{filename, filepath?, split, sentences[].raw}."""
    path = data if data.is_file() else _find_one(data, ("dataset_*.json",), "Karpathy dataset_*.json")
    obj = _load_json(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("images"), list):
        raise DatasetError(f"{path}: expected a Karpathy split JSON object with an 'images' list")
    records: dict[str, RawRecord] = {}
    for i, img in enumerate(obj["images"]):
        where = f"{path}: images[{i}]"
        if (
            not isinstance(img, dict)
            or not isinstance(img.get("filename"), str)
            or not isinstance(img.get("sentences"), list)
            or not isinstance(img.get("split"), str)
            or not isinstance(img.get("filepath", ""), (str, type(None)))
        ):
            raise DatasetError(f"{where}: expected 'filename' and 'split' strings and a 'sentences' list")
        name = f"{img['filepath']}/{img['filename']}" if img.get("filepath") else str(img["filename"])
        split = canonical_split(str(img["split"]), where)
        for j, sent in enumerate(img["sentences"]):
            if not isinstance(sent, dict) or not isinstance(sent.get("raw"), str):
                raise DatasetError(f"{where}.sentences[{j}]: expected an object with a 'raw' caption")
            _add(records, name, sent["raw"], where, split)
    folder = path.parent
    cands = [images] if images else [folder / "Images", folder / "images", folder]
    return RawDataset(records, _pick_images_dir(cands, records, path), "karpathy", path)


# ---------------------------------------------------------------- coco


def _is_id(value: object) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def read_coco(data: Path, images: Path | None) -> RawDataset:
    """COCO captions JSON (captions_train2014.json style): images[] + annotations[]."""
    path = data if data.is_file() else _find_one(data, ("captions_*.json",), "COCO captions_*.json")
    obj = _load_json(path)
    if (
        not isinstance(obj, dict)
        or not isinstance(obj.get("images"), list)
        or not isinstance(obj.get("annotations"), list)
    ):
        raise DatasetError(f"{path}: expected a COCO captions JSON object with 'images' and 'annotations'")
    names: dict[object, str] = {}
    for i, img in enumerate(obj["images"]):
        if not isinstance(img, dict) or not _is_id(img.get("id")) or not isinstance(img.get("file_name"), str):
            raise DatasetError(f"{path}: images[{i}]: expected an 'id' (integer or string) and a 'file_name' string")
        names[img["id"]] = str(img["file_name"])
    records: dict[str, RawRecord] = {}
    for i, ann in enumerate(obj["annotations"]):
        where = f"{path}: annotations[{i}]"
        if not isinstance(ann, dict) or not _is_id(ann.get("image_id")) or not isinstance(ann.get("caption"), str):
            raise DatasetError(f"{where}: expected an 'image_id' (integer or string) and a 'caption' string")
        if ann["image_id"] not in names:
            raise DatasetError(f"{where}: image_id {ann['image_id']} is not in 'images'")
        _add(records, names[ann["image_id"]], ann["caption"], where)
    folder = path.parent
    stem = path.stem.replace("captions_", "")  # captions_train2014 -> train2014
    cands = [images] if images else [folder / stem, folder.parent / stem, folder / "images", folder / "Images", folder]
    return RawDataset(records, _pick_images_dir(cands, records, path), "coco", path)


# ---------------------------------------------------------------- kaggle / csv / jsonl


def _read_csv_rows(path: Path, where_split: bool) -> dict[str, RawRecord]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read as UTF-8 text ({e})") from None
    reader = csv.DictReader(text.splitlines())
    cols = [c.strip().lower() for c in (reader.fieldnames or [])]
    if "image" not in cols or "caption" not in cols:
        raise DatasetError(f"{path}: expected a CSV header with 'image' and 'caption' columns, got {cols}")
    reader.fieldnames = cols
    has_split = where_split and "split" in cols
    records: dict[str, RawRecord] = {}
    try:
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if None in row or row.get("caption") is None:
                raise DatasetError(f"{where}: expected {len(cols)} columns ({', '.join(cols)})")
            split = canonical_split(row["split"] or "", where) if has_split else None
            _add(records, row["image"], row["caption"], where, split)
    except csv.Error as e:
        raise DatasetError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
    return records


def read_kaggle(data: Path, images: Path | None) -> RawDataset:
    """Kaggle's Flickr layout: an image folder plus captions.txt (CSV `image,caption`)."""
    path = data if data.is_file() else data / "captions.txt"
    if not path.is_file():
        raise DatasetError(f"{data}: no captions.txt (CSV 'image,caption') found")
    records = _read_csv_rows(path, where_split=False)
    cands = [images] if images else [path.parent / "Images", path.parent / "images", path.parent]
    return RawDataset(records, _pick_images_dir(cands, records, path), "kaggle", path)


def read_csv(data: Path, images: Path | None) -> RawDataset:
    """Custom CSV: columns image, caption[, split]; image paths relative to the CSV's folder."""
    path = data if data.is_file() else _find_one(data, ("*.csv",), "CSV")
    records = _read_csv_rows(path, where_split=True)
    return RawDataset(records, _pick_images_dir([images or path.parent], records, path), "csv", path)


def read_jsonl(data: Path, images: Path | None) -> RawDataset:
    """Custom JSON Lines: {"image", "caption" | "captions", "split"?} per line."""
    path = data if data.is_file() else _find_one(data, ("*.jsonl",), "JSON Lines")
    records: dict[str, RawRecord] = {}
    for n, line in enumerate(_read_text_lines(path), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{where}: malformed JSON ({e.msg})") from None
        caps = obj.get("captions", [obj["caption"]] if "caption" in obj else None) if isinstance(obj, dict) else None
        if (
            not isinstance(obj, dict)
            or not isinstance(obj.get("image"), str)
            or not isinstance(caps, list)
            or not all(isinstance(c, str) for c in caps)
        ):
            raise DatasetError(f"{where}: expected an object with 'image' and 'caption' (or 'captions' list)")
        split = canonical_split(str(obj["split"]), where) if obj.get("split") is not None else None
        for c in caps:
            _add(records, obj["image"], c, where, split)
    return RawDataset(records, _pick_images_dir([images or path.parent], records, path), "jsonl", path)


READERS: dict[str, Callable[[Path, Path | None], RawDataset]] = {
    "flickr": read_flickr,
    "karpathy": read_karpathy,
    "coco": read_coco,
    "kaggle": read_kaggle,
    "csv": read_csv,
    "jsonl": read_jsonl,
}


def detect_format(data: Path) -> str:
    """Guess the format of a file or folder; refuse to guess when it is ambiguous."""
    if data.is_file():
        suffix, name = data.suffix.lower(), data.name.lower()
        if name == "captions.txt":
            return "kaggle"
        if suffix in (".csv", ".jsonl"):
            return suffix[1:]
        if suffix == ".json":
            obj = _load_json(data)
            if isinstance(obj, dict) and isinstance(obj.get("images"), list):
                if "annotations" in obj:
                    return "coco"
                if obj["images"] and isinstance(obj["images"][0], dict) and "sentences" in obj["images"][0]:
                    return "karpathy"
            raise DatasetError(
                f"{data}: JSON is neither Karpathy split (images[].sentences) nor COCO captions (images + annotations)"
            )
        if name.endswith((".token.txt", ".token")):
            return "flickr"
        raise DatasetError(f"{data}: cannot tell its format from the name; pass --format ({'|'.join(FORMATS)})")
    found = []
    if any(data.glob("*.token.txt")) or any(data.glob("*.token")):
        found.append("flickr")
    if any(data.glob("dataset_*.json")):
        found.append("karpathy")
    if any(data.glob("captions_*.json")):
        found.append("coco")
    if (data / "captions.txt").is_file():
        found.append("kaggle")
    for ext in ("csv", "jsonl"):
        if any(data.glob(f"*.{ext}")):
            found.append(ext)
    if not found:
        raise DatasetError(
            f"{data}: no known caption files (Flickr *.token.txt, Karpathy dataset_*.json, "
            f"COCO captions_*.json, Kaggle captions.txt, *.csv, *.jsonl)"
        )
    if len(found) > 1:
        raise DatasetError(f"{data}: matches several formats ({', '.join(found)}); pass --format to choose")
    return found[0]


def read_dataset(data: str | Path, fmt: str = "auto", images: str | Path | None = None) -> RawDataset:
    data = Path(data)
    if not data.exists():
        raise DatasetError(f"{data}: no such file or directory")
    if images is not None and not Path(images).is_dir():
        raise DatasetError(f"{images}: images folder does not exist")
    if fmt == "auto":
        fmt = detect_format(data)
    if fmt not in READERS:
        raise DatasetError(f"unknown format {fmt!r}, expected auto or one of {', '.join(FORMATS)}")
    raw = READERS[fmt](data, Path(images) if images else None)
    if not raw.records:
        raise DatasetError(f"{raw.source}: no captions found")
    return raw
