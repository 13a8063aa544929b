"""Build capgen's caption index (capgen/tags/corpus_captions.py) from caption text.

    python scripts/build_caption_index.py runs/flickr8k ../shared/data/text/coco_val2017.jsonl \
        --features runs/flickr8k-lite2 --out src/capgen/assets/caption_index.json

PREPARED: the decoder's prepared training data; every tag word with --min-captions captions in the
text gets an entry, and its count in the training captions decides whether it takes over captions
(fewer than --rare-below) or only stands in for vetted ones. CORPUS: caption text (JSON lines,
capgen prepare --text format). --features: the prepared data's feature cache, whose train split's
pooled features and captions train the person head (tags/vetting.py); without it the index has none.
"""

from __future__ import annotations

import argparse
import random
from collections import Counter

import numpy as np

from capgen.data import PreparedDataset
from capgen.data.corpus import read_corpus
from capgen.data.ngrams import NgramVector, similarity
from capgen.errors import run_script
from capgen.io import write_json
from capgen.tags.corpus_captions import FORMAT
from capgen.tags.vetting import PERSON, PersonHead
from capgen.tags.words import WordMap, mention_index, mentions


def typical_first(captions: list[tuple[str, ...]], sample: int, rng: random.Random) -> list[tuple[str, ...]]:
    """Captions by mean agreement with (a sample of) the others, most typical first."""
    pool = sorted(set(captions))
    rng.shuffle(pool)
    pool = pool[:sample]
    grams = [NgramVector(c) for c in pool]
    score = [np.mean([similarity(grams[a], grams[b]) for b in range(len(pool)) if b != a]) for a in range(len(pool))]
    return [pool[i] for i in np.argsort(score, kind="stable")[::-1]]


def person_head(prepared, features: str, l2: float = 0.3) -> tuple[PersonHead, dict]:
    """Logistic regression on the train split's pooled features: does the photo show a person (at
    least 3 of its 5 captions name one)? Standardised inputs, L2 penalty `l2` (the best of 0.1-3 on
    Flickr8k val: AUC 0.956), LBFGS; returns the head in raw feature units and its figures."""
    import torch

    from capgen.encoders import create_encoder
    from capgen.features.cache import FeatureCache
    from capgen.tags.tagger import make_tagger

    cache = FeatureCache.open(features)

    def split(name):
        records = prepared.split(name)
        x = np.asarray(cache.pooled([r.image for r in records]), dtype=np.float64)
        y = np.array([sum(bool(PERSON.intersection(t)) for t in r.tokens) >= 3 for r in records], dtype=np.float64)
        return x, y

    x, y = split("train")
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xt, yt = torch.tensor((x - mu) / sd), torch.tensor(y)
    w, b = (
        torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True),
        torch.zeros(1, dtype=torch.float64, requires_grad=True),
    )
    opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, yt) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    weight = w.detach().numpy() / sd
    head = PersonHead(
        weight.astype(np.float32),
        float(b.item() - weight @ mu),
        make_tagger(create_encoder(cache.encoder_name)).head.sha256,
    )
    xv, yv = split("val")
    return head, {
        "trained_on": f"{len(y)} train photos, {y.mean():.1%} with people",
        "val_auc": round(_auc(head.probs(xv), yv), 4),
    }


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    ranks = np.empty(len(scores))
    ranks[np.argsort(scores, kind="stable")] = np.arange(len(scores))
    pos = labels == 1
    return float((ranks[pos].mean() - (pos.sum() - 1) / 2) / (~pos).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prepared")
    ap.add_argument("corpus", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--rare-below", type=int, default=20)
    ap.add_argument("--per-word", type=int, default=30)
    ap.add_argument("--min-captions", type=int, default=5)
    ap.add_argument("--sample", type=int, default=300)
    ap.add_argument("--min-word-count", type=int, default=3)
    ap.add_argument("--features", help="the prepared data's feature cache: train the person head on it")
    args = ap.parse_args()
    words = list(WordMap.load(None).words)
    index, longest = mention_index(words), max(len(w.split()) for w in words)
    prepared = PreparedDataset.load(args.prepared)
    paired = Counter(j for r in prepared.split("train") for t in r.tokens for j in mentions([t], index, longest))
    groups: dict[int, list[tuple[str, ...]]] = {}
    seen = Counter(w for r in prepared.split("train") for t in r.tokens for w in t)
    sources = []
    for i, path in enumerate(args.corpus):
        records, entry = read_corpus(path, i)
        sources.append({**entry, "path": entry["path"].rsplit("/", 1)[-1]})  # no machine path in an asset
        seen.update(w for r in records for t in r.tokens for w in t)
        for r in records:
            for t in r.tokens:
                for j in mentions([t], index, longest):
                    groups.setdefault(j, []).append(t)
    # A word written fewer than --min-word-count times in all the text is a typo ("a bodt stting on
    # a cart") or too rare to trust; a caption holding one is left out.
    groups = {j: [t for t in g if all(seen[w] >= args.min_word_count for w in t)] for j, g in groups.items()}
    captions = {}
    for j in sorted(groups):
        if len(set(groups[j])) < args.min_captions:
            continue
        captions[words[j]] = [
            " ".join(c) for c in typical_first(groups[j], args.sample, random.Random(words[j]))[: args.per_word]
        ]
    out = {
        "format": FORMAT,
        "sources": sources,
        "rare_below": args.rare_below,
        "per_word": args.per_word,
        "paired_mentions": {w: paired[words.index(w)] for w in captions},
        "captions": captions,
    }
    if args.features:
        head, figures = person_head(prepared, args.features)
        out["person_head"] = {**head.to_dict(), **figures}
        print(f"person head: {figures}")
    write_json(args.out, out)
    rare = sum(paired[words.index(w)] < args.rare_below for w in captions)
    print(f"{len(captions)} tag words ({rare} rare) -> {args.out}")


if __name__ == "__main__":
    run_script(main)
