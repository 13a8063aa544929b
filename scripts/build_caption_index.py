"""Build capgen's caption index (capgen/tags/corpus_captions.py) from caption text.

    python scripts/build_caption_index.py runs/flickr8k ../shared/data/text/coco_val2017.jsonl \
        --out src/capgen/assets/caption_index.json

PREPARED: the decoder's prepared training data; a tag word its training captions name fewer than
--rare-below times gets an entry. CORPUS: caption text (JSON lines, capgen prepare --text format).
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter

import numpy as np

from capgen.data import PreparedDataset
from capgen.data.corpus import read_corpus
from capgen.decoding.consensus import _ngrams, _similarity
from capgen.io import write_json
from capgen.tags.corpus_captions import FORMAT
from capgen.tags.words import WordMap, mention_index, mentions


def typical_first(captions: list[tuple[str, ...]], sample: int, rng: random.Random) -> list[tuple[str, ...]]:
    """Captions by mean agreement with (a sample of) the others, most typical first."""
    pool = sorted(set(captions))
    rng.shuffle(pool)
    pool = pool[:sample]
    grams = [_ngrams(c) for c in pool]
    score = [np.mean([_similarity(grams[a], grams[b], len(pool[a]), len(pool[b]))
                      for b in range(len(pool)) if b != a]) for a in range(len(pool))]
    return [pool[i] for i in np.argsort(score, kind="stable")[::-1]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prepared")
    ap.add_argument("corpus", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--rare-below", type=int, default=20)
    ap.add_argument("--per-word", type=int, default=30)
    ap.add_argument("--min-captions", type=int, default=5)
    ap.add_argument("--sample", type=int, default=300)
    args = ap.parse_args()
    words = list(WordMap.load(None).words)
    index, longest = mention_index(words), max(len(w.split()) for w in words)
    paired = Counter(j for r in PreparedDataset.load(args.prepared).split("train")
                     for t in r.tokens for j in mentions([t], index, longest))
    groups: dict[int, list[tuple[str, ...]]] = {}
    sources = []
    for i, path in enumerate(args.corpus):
        records, entry = read_corpus(path, i)
        sources.append({**entry, "path": entry["path"].rsplit("/", 1)[-1]})  # no machine path in an asset
        for r in records:
            for t in r.tokens:
                for j in mentions([t], index, longest):
                    groups.setdefault(j, []).append(t)
    rng = random.Random(0)
    captions = {}
    for j in sorted(groups):
        if paired[j] >= args.rare_below or len(set(groups[j])) < args.min_captions:
            continue
        captions[words[j]] = [" ".join(c) for c in typical_first(groups[j], args.sample, rng)[: args.per_word]]
    write_json(args.out, {"format": FORMAT, "sources": sources, "rare_below": args.rare_below,
                          "per_word": args.per_word, "captions": captions})
    print(f"{len(captions)} tag words -> {args.out}")


if __name__ == "__main__":
    main()
