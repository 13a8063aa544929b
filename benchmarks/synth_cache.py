"""A prepared dataset and feature cache of any size with realistic shapes, without images (issue 11).

    python benchmarks/synth_cache.py OUT --images 123287 [--val 5000 --test 5000] [--dim 1280 --grid 9]

Writes OUT/prepared (5 captions per image, 8-16 words drawn Zipf-like from a 10,000-word vocabulary)
and OUT/features (efficientnet-lite2 shapes by default: pooled 1280, grid 81x1280, float16), in the
layouts `capgen train` reads; COCO size (Karpathy splits: 113,287 / 5,000 / 5,000) is ~25.6 GB on disk.
Feature rows are a random block of 1,024 rows, repeated in a new order each time: real bytes on disk (not
a sparse file), so reading them costs what reading a real cache costs. The images folder named in the
manifest does not exist: only training and evaluation from the cache work on this data.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from capgen.data.vocab import SPECIALS, Vocabulary
from capgen.features.cache import FORMAT_VERSION, META
from capgen.io import write_json

BLOCK = 1024


def write_prepared(out: Path, counts: dict[str, int], images_dir: str, rng: np.random.Generator) -> list[str]:
    words = [f"w{i}" for i in range(10_000)]
    p = 1.0 / np.arange(1, len(words) + 1)
    p /= p.sum()
    out.mkdir(parents=True, exist_ok=True)
    names, k = [], 0
    for split, n in counts.items():
        lengths = rng.integers(8, 17, size=5 * n)
        drawn = iter(rng.choice(len(words), size=int(lengths.sum()), p=p).tolist())
        lengths = iter(lengths.tolist())
        with open(out / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for _ in range(n):
                name = f"synth_{k:09d}.jpg"
                k += 1
                caps = [[words[next(drawn)] for _ in range(next(lengths))] for _ in range(5)]
                f.write(json.dumps({"image": name, "raw": [" ".join(c) for c in caps], "tokens": caps}) + "\n")
                names.append(name)
    Vocabulary(list(SPECIALS) + words).save(out / "vocab.json")
    manifest = {
        "capgen_prepared": 1,
        "source": "benchmarks/synth_cache.py",
        "format": "synthetic",
        "images_dir": images_dir,
        "splits": {s: {"images": n, "captions": 5 * n} for s, n in counts.items()},
        "vocab_size": len(words) + len(SPECIALS),
        "min_count": 1,
        "max_vocab": None,
        "seed": 0,
        "dropped": {"not_in_any_split": 0, "missing_image_files": 0},
    }
    write_json(out / "manifest.json", manifest)  # last: marks the folder complete
    return names


def write_features(out: Path, names: list[str], images_dir: str, dim: int, grid: int, rng: np.random.Generator) -> None:
    out.mkdir(parents=True, exist_ok=True)
    n, r = len(names), grid * grid
    block = (rng.standard_normal((BLOCK, r, dim), dtype=np.float32) * 0.5 + 0.5).astype(np.float16)
    block_pooled = block.mean(axis=1, dtype=np.float32).astype(np.float16)  # (BLOCK, D)
    pooled = np.lib.format.open_memmap(out / "pooled.npy", mode="w+", dtype=np.float16, shape=(n, dim))
    gridf = np.lib.format.open_memmap(out / "grid.npy", mode="w+", dtype=np.float16, shape=(n, r, dim))
    for i, start in enumerate(range(0, n, BLOCK)):
        m = min(BLOCK, n - start)
        perm = rng.permutation(BLOCK)[:m]  # the block's rows in another order each time
        gridf[start : start + m] = block[perm]
        pooled[start : start + m] = block_pooled[perm]
        if i % 8 == 7:
            gridf.flush()
            print(f"  {start + m:,}/{n:,} rows", flush=True)
    gridf.flush()
    pooled.flush()
    del gridf, pooled
    spec = {
        "name": "efficientnet-lite2",
        "preprocess": {"size": 260, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "resample": "bicubic"},
        "dim": dim,
        "grid": [grid, grid],
    }
    write_json(
        out / META,
        {
            "capgen_features": FORMAT_VERSION,
            "encoder": spec,
            "dtype": "float16",
            "images_dir": images_dir,
            "dataset": str(out.parent / "prepared"),
            "split": None,
            "images": names,
            "failed": {},
            "complete": True,
            "backend": "synthetic",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
        indent=None,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--images", type=int, default=123_287, help="all splits together")
    ap.add_argument("--val", type=int, default=5000)
    ap.add_argument("--test", type=int, default=5000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--grid", type=int, default=9, help="grid side (9 -> 81 regions)")
    a = ap.parse_args()
    out = Path(a.out).resolve()
    rng = np.random.default_rng(0)
    counts = {"train": a.images - a.val - a.test, "val": a.val, "test": a.test}
    images_dir = str(out / "images-not-generated")
    t = time.perf_counter()
    names = write_prepared(out / "prepared", counts, images_dir, rng)
    print(f"prepared {counts} in {time.perf_counter() - t:.0f} s", flush=True)
    t = time.perf_counter()
    write_features(out / "features", names, images_dir, a.dim, a.grid, rng)
    size = sum(f.stat().st_size for f in (out / "features").iterdir()) / 1e9
    print(f"features {size:.1f} GB in {time.perf_counter() - t:.0f} s -> {out}", flush=True)


if __name__ == "__main__":
    main()
