"""Build the neighbour captions (capgen/tags/neighbours.py) from a prepared dataset's train split and
its feature cache:

    python scripts/build_neighbour_index.py runs/f8k-coco --features runs/f8k-coco-lite2 \
        --out src/capgen/assets/neighbour_captions.json

The pooled features of the train photos are centred, projected onto their top principal directions
(neighbours.PROJECTED_DIM) and scaled to unit length; with their captions (the dataset's own
normalised tokens) they are what the decoder's candidates are reranked against. Use the dataset the
bundled decoder was trained on: its test photos must not be in the index.
"""

from __future__ import annotations

import argparse

import numpy as np

from capgen.data import PreparedDataset
from capgen.errors import run_script
from capgen.io import write_json
from capgen.tags.neighbours import FORMAT, PROJECTED_DIM, NeighbourCaptions, encode_array


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("prepared", help="a prepared dataset (capgen prepare)")
    ap.add_argument("--features", required=True, help="its feature cache (capgen extract)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--split", default="train")
    args = ap.parse_args()

    from capgen.encoders import create_encoder
    from capgen.features.cache import FeatureCache
    from capgen.tags.tagger import make_tagger

    prepared = PreparedDataset.load(args.prepared)
    cache = FeatureCache.open(args.features)
    records = prepared.split(args.split)
    x = np.asarray(cache.pooled([r.image for r in records]), dtype=np.float64)
    mean = x.mean(0)
    d = min(PROJECTED_DIM, x.shape[1])
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    projection = vt[:d].T
    y = (x - mean) @ projection
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    data = {
        "format": FORMAT,
        "source": {
            "prepared": str(args.prepared),
            "split": args.split,
            "photos": len(records),
            "encoder": cache.encoder_name,
            "variance_kept": round(float((s[:d] ** 2).sum() / (s**2).sum()), 4),
        },
        "dim": int(x.shape[1]),
        "projected_dim": d,
        "tagger_head": make_tagger(create_encoder(cache.encoder_name)).head.sha256,
        "mean": encode_array(mean),
        "projection": encode_array(projection),
        "features": encode_array(y),
        "captions": [[" ".join(t) for t in r.tokens] for r in records],
    }
    write_json(args.out, data, indent=None)
    NeighbourCaptions.load(args.out)  # it reads back
    kept = data["source"]["variance_kept"]
    print(f"{args.out}: {len(records)} photos, {d} of {x.shape[1]} dims ({kept:.0%} of the variance)")


if __name__ == "__main__":
    run_script(main)
