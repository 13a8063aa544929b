"""Build capgen's scene captions (capgen/tags/scenes.py) from caption text.

    python scripts/build_scene_index.py ../shared/data/text/coco_val2017.jsonl \
        --out src/capgen/assets/scene_captions.json

CORPUS: caption text (JSON lines, the capgen prepare --text format), several captions per photo.
Each photo becomes a scene: its normalised captions, less those holding a word written fewer than
--min-word-count times in all the text (typos, "a bodt stting on a cart"). Document frequencies of
the n-grams (1..4, a scene is a document, as CIDEr counts them) are stored for those in two scenes
or more; the reader takes any other as in one.
"""

from __future__ import annotations

import argparse
from collections import Counter

from capgen.data.corpus import read_corpus
from capgen.data.ngrams import NgramVector
from capgen.errors import run_script
from capgen.io import write_json
from capgen.tags.scenes import FORMAT


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus")
    ap.add_argument("--out", required=True)
    ap.add_argument("--min-word-count", type=int, default=3)
    args = ap.parse_args()
    records, entry = read_corpus(args.corpus)
    seen = Counter(w for r in records for t in r.tokens for w in t)
    scenes = []
    for r in records:
        kept = sorted({" ".join(t) for t in r.tokens if t and all(seen[w] >= args.min_word_count for w in t)})
        if kept:
            scenes.append(kept)
    df: Counter = Counter()
    for scene in scenes:  # the n-grams the reader's NgramVector counts, as the strings it looks up
        df.update({" ".join(g) for c in scene for order in NgramVector(c.split()).weights for g in order})
    out = {
        "format": FORMAT,
        "source": {**entry, "path": entry["path"].rsplit("/", 1)[-1]},  # no machine path in an asset
        "documents": len(scenes),
        "scenes": scenes,
        "df": {g: n for g, n in sorted(df.items()) if n >= 2},
    }
    write_json(args.out, out, indent=None)
    print(f"{len(scenes)} scenes, {sum(map(len, scenes))} captions, {len(out['df'])} n-grams -> {args.out}")


if __name__ == "__main__":
    run_script(main)
