"""Novel-object captioning on Flickr8k, the DCC way: a held-out-object split and per-object F1.

    # 1. count object mentions and write the held-out split (training images that mention any
    #    held-out object removed; val and test unchanged; vocabulary rebuilt from what is left)
    python benchmarks/novel_objects.py --data runs/flickr8k --out runs/flickr8k-heldout [--json counts.json]
    # 2. train on runs/flickr8k-heldout with the flickr8k feature cache (same images), then
    capgen evaluate RUN/best.pt --data runs/flickr8k-heldout --features runs/flickr8k-lite2 --split test --out EVAL
    # 3. per-object F1 of the generated test captions
    python benchmarks/novel_objects.py --data runs/flickr8k --predictions EVAL/predictions.json

How the objects were chosen (the counts table shows the numbers): the bundled ImageNet head has a
class for each (assets/imagenet_words.tsv); at least ~15 test images mention each, so F1 means
something; the word names a visible thing when Flickr8k uses it (not "camera", which is mostly
"smiles for the camera", nor "watch" or "orange", mostly a verb and a colour); and together they
remove a modest share of the training images. "dog" (1,527 training images) would gut the training
set; "cat" and "horse" are mentioned by too few test images (2 and 6).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from capgen.data.prepared import MANIFEST, PreparedDataset
from capgen.data.text import normalize_caption
from capgen.data.vocab import Vocabulary
from capgen.evaluation.mentions import mention_f1, mentions
from capgen.io import atomic_dir, write_json
from capgen.tags import WordMap

# object -> the words that mention it in a caption (the held-out objects of the split)
HELD_OUT = {
    "bicycle": ("bicycle", "bicycles", "bike", "bikes"),
    "car": ("car", "cars"),
    "sunglasses": ("sunglasses",),
    "helmet": ("helmet", "helmets"),
    "bench": ("bench", "benches"),
    "boat": ("boat", "boats"),
    "basketball": ("basketball", "basketballs"),
    "sweater": ("sweater", "sweaters"),
}


def forms_of(word: str) -> tuple[str, ...]:
    """A mapped word's surface forms for counting: the word and its regular plurals."""
    if word in HELD_OUT:
        return HELD_OUT[word]
    return (word, f"{word}s", f"{word}es") if not word.endswith("s") else (word,)


def count_mentions(data: PreparedDataset, objects: dict[str, tuple[str, ...]]) -> list[dict]:
    """Per object: how many images of each split have a reference that mentions it."""
    rows = []
    for obj, forms in objects.items():
        row = {"object": obj, "forms": list(forms)}
        for split in ("train", "val", "test"):
            row[split] = sum(any(mentions(t, forms) for t in r.tokens) for r in data.split(split))
        rows.append(row)
    return sorted(rows, key=lambda r: (-r["test"], -r["train"], r["object"]))


def write_held_out(data: PreparedDataset, out: Path, objects: dict[str, tuple[str, ...]]) -> dict:
    """The prepared dataset without the training images whose references mention any held-out object."""
    forms = {f for fs in objects.values() for f in fs}
    keep = [r for r in data.split("train") if not any(mentions(t, forms) for t in r.tokens)]
    vocab = Vocabulary.build((t for r in keep for t in r.tokens), data.manifest["min_count"],
                             data.manifest.get("max_vocab"))
    leaked = sorted(forms & set(vocab.stoi))
    if leaked:  # cannot happen: every caption that has them was removed
        raise SystemExit(f"held-out words still in the vocabulary: {leaked}")
    manifest = json.loads(json.dumps(data.manifest))
    manifest["splits"]["train"] = {"images": len(keep), "captions": sum(len(r.raw) for r in keep)}
    manifest["vocab_size"] = len(vocab)
    manifest["held_out"] = {"from": str(data.root.resolve()), "objects": {k: list(v) for k, v in objects.items()},
                            "removed_train_images": len(data.split("train")) - len(keep)}
    with atomic_dir(out, replace_if=MANIFEST) as tmp:
        with open(tmp / "train.jsonl", "w", encoding="utf-8") as f:
            for r in keep:
                f.write(json.dumps({"image": r.image, "raw": list(r.raw), "tokens": [list(t) for t in r.tokens]},
                                   ensure_ascii=False) + "\n")
        for split in ("val", "test"):
            (tmp / f"{split}.jsonl").write_bytes((data.root / f"{split}.jsonl").read_bytes())
        vocab.save(tmp / "vocab.json")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    PreparedDataset.load(out)  # reads back as a valid prepared folder
    return manifest["held_out"]


def f1_table(data: PreparedDataset, predictions_path: Path, objects: dict[str, tuple[str, ...]],
             split: str = "test") -> tuple[list[dict], float]:
    """Per-object DCC F1 (%) of a `capgen evaluate` predictions.json over `split`, and the mean."""
    predictions = {p["image_id"]: normalize_caption(p["caption"])
                   for p in json.loads(predictions_path.read_text(encoding="utf-8"))}
    references = {r.image: r.tokens for r in data.split(split)}
    missing = len(set(references) - set(predictions))
    if missing:
        print(f"warning: {missing} {split} images have no prediction (counted as not mentioning)", file=sys.stderr)
    rows = []
    for obj, forms in objects.items():
        s = mention_f1(predictions, references, forms)
        rows.append({"object": obj, "images": s.positives, "predicted": s.predicted, "correct": s.true_positives,
                     "precision": 100 * s.precision, "recall": 100 * s.recall, "f1": 100 * s.f1})
    return rows, sum(r["f1"] for r in rows) / len(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="the full prepared dataset (e.g. runs/flickr8k)")
    ap.add_argument("--out", help="write the held-out prepared dataset here")
    ap.add_argument("--predictions", help="a capgen evaluate predictions.json: print the per-object F1 table")
    ap.add_argument("--objects", help=f"comma-separated held-out objects (default: {','.join(HELD_OUT)})")
    ap.add_argument("--top", type=int, default=40, help="rows of the mention-count table (default 40)")
    ap.add_argument("--json", help="also write the counts (or F1 table) as JSON here")
    args = ap.parse_args(argv)
    data = PreparedDataset.load(args.data)
    objects = ({o: forms_of(o) for o in args.objects.split(",")} if args.objects else dict(HELD_OUT))

    if args.predictions:
        rows, mean = f1_table(data, Path(args.predictions), objects)
        print("| object | test images | captions naming it | correct | precision | recall | F1 |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for r in rows:
            print(f"| {r['object']} | {r['images']} | {r['predicted']} | {r['correct']} | {r['precision']:.1f} "
                  f"| {r['recall']:.1f} | {r['f1']:.1f} |")
        print(f"| **mean** | | | | | | **{mean:.1f}** |")
        if args.json:
            write_json(args.json, {"objects": rows, "mean_f1": mean})
        return 0

    candidates = {w: forms_of(w) for w in WordMap.load().words} | objects
    counts = count_mentions(data, candidates)
    print("Images whose references mention each ImageNet-mapped word (word + plurals; held-out objects with "
          "their synonyms):")
    print("| word | train | val | test | held out |")
    print("| --- | --- | --- | --- | --- |")
    for r in counts[: args.top]:
        print(f"| {r['object']} | {r['train']} | {r['val']} | {r['test']} | {'yes' if r['object'] in objects else ''} |")
    report = {"counts": counts, "held_out": list(objects)}
    if args.out:
        info = write_held_out(data, Path(args.out), objects)
        n = len(data.split("train"))
        print(f"\nheld out {', '.join(objects)}: removed {info['removed_train_images']} of {n} training images "
              f"({100 * info['removed_train_images'] / n:.1f}%); wrote {args.out}")
        report["removed_train_images"] = info["removed_train_images"]
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
