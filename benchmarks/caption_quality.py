"""What users notice in captions, before any metric: repetition, length, vocabulary, <unk>, cut-offs.

Reads captions from `capgen evaluate` predictions (predictions.json) or `capgen caption --format jsonl`
output and prints one markdown row per file (caption_stats), so decoding changes can be compared on
the 1,000 test images and on photos from outside Flickr8k (benchmarks/sample_photos.py).

    python benchmarks/caption_quality.py runs/x/test/predictions.json runs/photos.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from capgen.evaluation.stats import caption_stats


def read_captions(path: Path) -> tuple[list[list[str]], list[bool] | None]:
    """Word lists (and truncation flags, when the file has them) from predictions.json or jsonl."""
    text = path.read_text(encoding="utf-8")
    rows = json.loads(text) if path.suffix == ".json" else [json.loads(x) for x in text.splitlines() if x.strip()]
    truncated = [bool(r["truncated"]) for r in rows] if rows and "truncated" in rows[0] else None
    # split on spaces, not normalize: "<unk>" must stay visible
    return [r["caption"].split() for r in rows], truncated


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", type=Path)
    args = p.parse_args(argv)
    columns = "file, repeated content word, repeated bigram, <unk>, truncated, mean length, distinct words"
    print("| captions | " + " | ".join(columns.split(", ")) + " |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for f in args.files:
        caps, truncated = read_captions(f)
        s = caption_stats(caps, truncated)
        cut = f"{100 * s['truncated']:.1f}%" if "truncated" in s else "-"
        print(
            f"| {s['captions']} | {f} | {100 * s['repeated_content_word']:.1f}% | {100 * s['repeated_bigram']:.1f}% "
            f"| {100 * s['unk']:.1f}% | {cut} | {s['mean_length']:.2f} | {s['distinct_words']} |"
        )


if __name__ == "__main__":
    main()
