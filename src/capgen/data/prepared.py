"""The prepared folder: splits, normalised captions with all references per image, vocabulary.

Layout of PREPARED/:
  manifest.json          counts, source, images folder, settings (written last: marks completeness)
  vocab.json             Vocabulary.to_dict()
  {train,val,test}.jsonl one image per line: {"image", "raw": [...], "tokens": [[...], ...]}
  text.jsonl             with --text: caption text without images (data/corpus.py), one photo per line
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from capgen.data.corpus import TEXT_FILE, TextRecord, load_text_records, read_corpus, write_text_records
from capgen.data.readers import SPLITS, RawDataset, read_dataset
from capgen.data.text import normalize_caption
from capgen.data.vocab import Vocabulary
from capgen.errors import DatasetError
from capgen.io import atomic_dir, json_marker, parse_json, read_json, read_text

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ImageRecord:
    image: str  # id (path relative to the images folder); COCO results use it as image_id
    path: Path  # absolute path of the image file
    split: str
    raw: tuple[str, ...]  # reference captions as written
    tokens: tuple[tuple[str, ...], ...]  # the same, normalised


def assign_random_splits(raw: RawDataset, seed: int, val_fraction: float, test_fraction: float) -> None:
    """Give images without a split a seeded random one (custom data, Kaggle and COCO files)."""
    todo = sorted(k for k, r in raw.records.items() if r.split is None)
    if not todo:
        return
    if len(todo) != len(raw.records):
        raise DatasetError(f"{raw.source}: some images have a split and some do not; give all or none")
    random.Random(seed).shuffle(todo)
    n = len(todo)
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    if n >= 3:  # every split gets at least one image when there are enough
        n_val, n_test = max(n_val, 1), max(n_test, 1)
    for i, key in enumerate(todo):
        raw.records[key].split = "val" if i < n_val else "test" if i < n_val + n_test else "train"


def prepare_dataset(
    data: str | Path,
    out: str | Path,
    fmt: str = "auto",
    images: str | Path | None = None,
    min_count: int = 5,
    max_vocab: int | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    skip_missing: bool = False,
    allow_outside_root: bool = False,
    text: list[str | Path] | tuple = (),
) -> "PreparedDataset":
    """Read any supported dataset and write a prepared folder (atomically) at `out`.

    allow_outside_root: accept image paths that lead outside the images folder (absolute paths,
    "..", symlinks pointing elsewhere). Off by default: a caption file must not make capgen read
    (and encode, and serve captions of) arbitrary files such as /etc/passwd.
    text: caption corpora without images (data/corpus.py); their words join the vocabulary and they
    are kept in text.jsonl for text-only training batches.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DatasetError(
            f"split fractions must be in [0, 1) and sum below 1, got val={val_fraction} test={test_fraction}"
        )
    text_records, corpora = _read_corpora(text)  # first: a bad corpus fails before any image is looked at
    raw = read_dataset(data, fmt, images)
    if not allow_outside_root:
        check_inside_root(raw.records, raw.images_dir, str(raw.source))
    assign_random_splits(raw, seed, val_fraction, test_fraction)
    missing = _drop_missing(raw, skip_missing)
    by_split = _split_items(raw)
    train_tokens = [t for item in by_split["train"] for t in item["tokens"]]
    vocab = Vocabulary.build(train_tokens + [t for r in text_records for t in r.tokens], min_count, max_vocab)
    manifest = {
        "capgen_prepared": FORMAT_VERSION,
        "source": str(raw.source.resolve()),
        "format": raw.fmt,
        "images_dir": str(raw.images_dir.resolve()),
        "splits": {s: {"images": len(v), "captions": sum(len(i["raw"]) for i in v)} for s, v in by_split.items()},
        "vocab_size": len(vocab),
        "min_count": min_count,
        "max_vocab": max_vocab,
        "seed": seed,
        "allow_outside_root": allow_outside_root,
        "dropped": {"not_in_any_split": raw.not_in_split, "missing_image_files": missing},
        # Kept, not dropped: the benchmarks' reference sets hold them too (Flickr8k has 10), and
        # metrics must match the published protocol. `capgen prepare` reports the count.
        "duplicate_captions": sum(len(r.captions) - len(set(r.captions)) for r in raw.records.values()),
        "text_corpora": corpora,
        # Vocabulary words seen in the paired training captions (the rest come from the text corpora).
        "vocab_from_pairs": len(set(vocab.itos) & {w for t in train_tokens for w in t}),
    }
    _write(out, by_split, text_records, vocab, manifest)
    return PreparedDataset.load(out, allow_outside_root=allow_outside_root)


def _read_corpora(paths) -> tuple[list[TextRecord], list[dict]]:
    """The records of every caption corpus, and each corpus' manifest entry (path, sha256, counts)."""
    text_records: list[TextRecord] = []
    corpora = []
    for i, path in enumerate(paths):
        records, entry = read_corpus(path, i)
        text_records += records
        corpora.append(entry)
    return text_records, corpora


def _drop_missing(raw: RawDataset, skip_missing: bool) -> int:
    """Drop images whose file does not exist (only with skip_missing; else DatasetError); their count."""
    missing = [k for k in raw.records if not (raw.images_dir / k).is_file()]
    if missing and not skip_missing:
        raise DatasetError(
            f"{len(missing)} of {len(raw.records)} images with captions do not exist "
            f"under {raw.images_dir} (e.g. {missing[0]}); pass --skip-missing to drop them"
        )
    for k in missing:
        del raw.records[k]
    return len(missing)


def _split_items(raw: RawDataset) -> dict[str, list[dict]]:
    """Per split, the lines of its .jsonl in dataset order (Flickr: the order of the split lists);
    DatasetError for an empty split or a caption with no words."""
    by_split: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for key, rec in raw.records.items():
        by_split[rec.split].append(
            {"image": key, "raw": rec.captions, "tokens": [normalize_caption(c) for c in rec.captions]}
        )
    for s in SPLITS:
        if not by_split[s]:
            raise DatasetError(f"{raw.source}: split {s!r} is empty; every split needs images (train, val, test)")
        for item in by_split[s]:
            if any(not t for t in item["tokens"]):
                raise DatasetError(f"{raw.source}: a caption of {item['image']} has no words after normalisation")
    return by_split


def _write(
    out, by_split: dict[str, list[dict]], text_records: list[TextRecord], vocab: Vocabulary, manifest: dict
) -> None:
    """The prepared folder, atomically; the manifest last, as the mark of a complete folder."""
    with atomic_dir(
        out, replace_if=json_marker(MANIFEST, "capgen_prepared", FORMAT_VERSION), what="prepared dataset"
    ) as tmp:
        for s, items in by_split.items():
            with open(tmp / f"{s}.jsonl", "w", encoding="utf-8") as f:
                for item in items:
                    f.write(json.dumps(item, ensure_ascii=False) + "\n")
        if text_records:
            write_text_records(tmp / TEXT_FILE, text_records)
        vocab.save(tmp / "vocab.json")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")


def check_manifest(manifest: dict, where: Path) -> None:
    """The fields `load` relies on, with their types: a hand-edited manifest fails here, by name."""
    if not isinstance(manifest.get("images_dir"), str) or not manifest["images_dir"]:
        raise DatasetError(f"{where}: 'images_dir' must be the images folder's path (a string)")
    splits = manifest.get("splits")
    for s in SPLITS:
        n = splits.get(s, {}).get("images") if isinstance(splits, dict) and isinstance(splits.get(s), dict) else None
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise DatasetError(f"{where}: 'splits.{s}.images' must be a count of images (an integer >= 0)")


def check_inside_root(images, root: Path, where: str, follow_symlinks: bool = True) -> None:
    """DatasetError unless every image path stays inside `root` (after symlinks, when asked)."""
    real_root = root.resolve()
    for image in images:
        rel = Path(image)
        inside = not rel.is_absolute() and ".." not in rel.parts
        if inside and follow_symlinks:
            inside = (root / rel).resolve().is_relative_to(real_root)
        if not inside:
            raise DatasetError(
                f"{where}: image path {image!r} leads outside the images folder {root}; pass "
                f"--allow-outside-root to read files outside it"
            )


def _is_words(x) -> bool:
    return isinstance(x, list) and all(isinstance(w, str) for w in x)


def _record(d, images_dir: Path, split: str, where: str) -> ImageRecord:
    """One prepared split line, its types checked: a hand-edited line fails here, by name."""
    if not (
        isinstance(d, dict)
        and isinstance(d.get("image"), str)
        and _is_words(d.get("raw"))
        and isinstance(d.get("tokens"), list)
        and all(_is_words(t) for t in d["tokens"])
    ):
        raise DatasetError(
            f"{where}: expected an object with 'image' (a path), 'raw' (a list of captions) and "
            f"'tokens' (a list of word lists); prepare again"
        )
    return ImageRecord(
        d["image"], images_dir / d["image"], split, tuple(d["raw"]), tuple(tuple(t) for t in d["tokens"])
    )


class PreparedDataset:
    """A prepared folder, read back. Records are ordered as in the source dataset."""

    def __init__(self, root: Path, manifest: dict, vocab: Vocabulary, splits: dict[str, list[ImageRecord]]):
        self.root, self.manifest, self.vocab, self._splits = root, manifest, vocab, splits

    @classmethod
    def load(cls, root: str | Path, allow_outside_root: bool = False) -> "PreparedDataset":
        """allow_outside_root comes from the command line only: the manifest's own field is a record,
        never trusted (a hand-edited manifest must not switch the safeguard off)."""
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"{root}: prepared dataset folder does not exist (run capgen prepare first)")
        mpath = root / MANIFEST
        if not mpath.is_file():
            raise DatasetError(f"{root}: not a prepared dataset (no {MANIFEST}); run capgen prepare")
        manifest = read_json(mpath, "manifest", DatasetError)
        if not isinstance(manifest, dict) or manifest.get("capgen_prepared") != FORMAT_VERSION:
            raise DatasetError(f"{mpath}: not a capgen prepared manifest of version {FORMAT_VERSION}")
        check_manifest(manifest, mpath)
        images_dir = Path(manifest["images_dir"])
        splits: dict[str, list[ImageRecord]] = {}
        for s in SPLITS:
            path, items = root / f"{s}.jsonl", []
            for n, line in enumerate(read_text(path, "prepared split", DatasetError).splitlines(), 1):
                d = parse_json(line, f"{path} line {n}", "prepared split line", DatasetError)
                items.append(_record(d, images_dir, s, f"{path} line {n}"))
            if not allow_outside_root:  # a hand-edited split file: the cheap, lexical check
                check_inside_root((r.image for r in items), images_dir, str(path), follow_symlinks=False)
            if len(items) != manifest["splits"][s]["images"]:
                raise DatasetError(
                    f"{path}: has {len(items)} images, manifest says {manifest['splits'][s]['images']}; prepare again"
                )
            splits[s] = items
        return cls(root, manifest, Vocabulary.load(root / "vocab.json"), splits)

    def text(self) -> list[TextRecord]:
        """The caption text without images that went in with --text (empty when none)."""
        corpora = self.manifest.get("text_corpora") or []
        if not isinstance(corpora, list) or not all(
            isinstance(c, dict) and isinstance(c.get("photos"), int) for c in corpora
        ):
            raise DatasetError(f"{self.root / MANIFEST}: 'text_corpora' must list the corpora with their photo counts")
        if not corpora:
            return []
        return load_text_records(self.root / TEXT_FILE, sum(c["photos"] for c in corpora))

    def split(self, name: str) -> list[ImageRecord]:
        if name not in self._splits:
            raise DatasetError(f"unknown split {name!r}, expected one of {', '.join(SPLITS)}")
        return self._splits[name]

    def records(self, split: str | None = None) -> list[ImageRecord]:
        """One split, or all images (train, val, test order) when split is None."""
        return self.split(split) if split else [r for s in SPLITS for r in self._splits[s]]

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}={len(v)}" for s, v in self._splits.items())
        return f"PreparedDataset({self.root}, {counts}, vocab={len(self.vocab)})"
