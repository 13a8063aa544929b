"""On-disk layout of a feature cache, and loading it with checks.

FEATURES/
  job.json            what is being extracted (encoder spec, dtype, image list); written first
  pooled.npy          (N, dim) float16/32, one row per image of job.json's list
  grid.npy            (N, H*W, dim)
  progress-r{k}.json  rows rank k has finished (and images that failed); rewritten after each batch
  meta.json           written last, atomically: its presence means the cache is complete
  .lock               flock held by the one extraction writing here (a second one is refused)

Rows are written into memory-mapped .npy files and flushed *before* the progress file names them,
so a killed run loses at most the batch in flight, and an incomplete cache never loads as valid.
A row the progress files count as done but that was never written reads as all zeros (the arrays
start sparse); no real image gives an all-zero pooled vector, so sealing and opening check for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from capgen.encoder_spec import EncoderSpec
from capgen.errors import FeatureCacheError

JOB, META, LOCK = "job.json", "meta.json", ".lock"
# 2: meta.json binds the order of its images list (images_sha256); 1 (capgen 0.1) could not.
FORMAT_VERSION = 2


KINDS = ("grid", "block_input")


def read_json(path: Path, what: str) -> dict:
    from capgen.io import read_json as read_data

    obj = read_data(path, what, FeatureCacheError)
    if not isinstance(obj, dict):
        raise FeatureCacheError(f"{path}: expected a JSON object ({what})")
    return obj


def load_array(path: Path, mode: str, hint: str) -> np.ndarray:
    """A cache's .npy memory-mapped; missing, truncated or a damaged header is FeatureCacheError + `hint`."""
    import tokenize

    try:
        return np.load(path, mmap_mode=mode)
    except (OSError, ValueError, EOFError, SyntaxError, tokenize.TokenError) as e:
        # numpy parses the header with the tokenizer: replaced bytes give TokenError or SyntaxError
        raise FeatureCacheError(f"{path}: feature array missing or unreadable ({type(e).__name__}); {hint}") from None


def unwritten_rows(pooled: np.ndarray, rows, chunk: int = 4096) -> list[int]:
    """Those of `rows` whose pooled vector is all zeros (never written) or not finite (damaged)."""
    rows = np.asarray(rows, dtype=np.int64)
    bad: list[int] = []
    for start in range(0, len(rows), chunk):
        r = rows[start : start + chunk]
        block = np.asarray(pooled[r], dtype=np.float32)  # (n, dim)
        blank = ~np.isfinite(block).all(axis=1) | ~block.any(axis=1)
        bad.extend(int(i) for i in r[blank])
    return bad


def images_hash(images: list[str]) -> str:
    """Binds the order of meta.json's `images` (row i holds image i): a reordered list would
    silently give every image another image's features."""
    import hashlib

    return hashlib.sha256("\n".join(images).encode("utf-8", "surrogatepass")).hexdigest()


def check_meta(meta: dict, where: Path) -> None:
    """The fields the cache relies on, with their types; a hand-edited meta.json fails here, by name."""
    enc = meta.get("encoder")
    ok = (
        isinstance(meta.get("images"), list)
        and all(isinstance(i, str) for i in meta["images"])
        and isinstance(meta.get("failed", {}), dict)
        and isinstance(enc, dict)
        and isinstance(enc.get("name"), str)
        and isinstance(enc.get("dim"), int)
        and enc["dim"] > 0
        and isinstance(enc.get("grid"), list)
        and len(enc["grid"]) == 2
        and all(isinstance(g, int) and g > 0 for g in enc["grid"])
        and (enc.get("split_at") is None or (type(enc["split_at"]) is int and enc["split_at"] > 0))
        and meta.get("kind", "grid") == EncoderSpec.of(enc).kind
    )
    if not ok:
        raise FeatureCacheError(
            f"{where}: malformed feature cache metadata (expected 'images' (names), "
            f"'failed', 'encoder' with name, dim, grid [h, w] and optional split_at, and a 'kind' that "
            f"agrees with it); extract again"
        )


class FeatureCache:
    """A complete feature cache, memory-mapped. `pooled(ids)` / `grid(ids)` return float32 arrays."""

    def __init__(self, root: Path, meta: dict, pooled: np.ndarray, grid: np.ndarray):
        self.root, self.meta = root, meta
        self._pooled, self._grid = pooled, grid
        failed = set(meta.get("failed", {}))
        self.index = {name: i for i, name in enumerate(meta["images"]) if name not in failed}

    @classmethod
    def open(cls, root: str | Path) -> "FeatureCache":
        root = Path(root)
        if not root.is_dir():
            raise FeatureCacheError(f"{root}: feature cache folder does not exist (run capgen extract first)")
        if not (root / META).is_file():
            if (root / JOB).is_file():
                raise FeatureCacheError(
                    f"{root}: feature extraction did not finish; run the same capgen extract command again to resume it"
                )
            raise FeatureCacheError(f"{root}: not a capgen feature cache (no {META})")
        meta = read_json(root / META, "feature cache metadata")
        if meta.get("capgen_features") == 1:
            raise FeatureCacheError(
                f"{root / META}: a version 1 cache (capgen 0.1), whose images list nothing binds to its rows; "
                "extract again with --overwrite"
            )
        if meta.get("capgen_features") != FORMAT_VERSION or not meta.get("complete"):
            raise FeatureCacheError(f"{root / META}: not a complete capgen feature cache of version {FORMAT_VERSION}")
        check_meta(meta, root / META)
        if meta.get("images_sha256") != images_hash(meta["images"]):
            raise FeatureCacheError(
                f"{root / META}: the 'images' list was changed or reordered after extraction "
                f"(its checksum 'images_sha256' differs or is missing), so rows would go to the wrong images; "
                "extract again with --overwrite"
            )
        pooled = load_array(root / "pooled.npy", "r", "extract again")
        grid = load_array(root / "grid.npy", "r", "extract again")
        n, enc = len(meta["images"]), meta["encoder"]
        want_grid = (n, enc["grid"][0] * enc["grid"][1], enc["dim"])
        if pooled.shape != (n, enc["dim"]) or grid.shape != want_grid:
            raise FeatureCacheError(
                f"{root}: arrays have shapes {pooled.shape} and {grid.shape}, expected "
                f"{(n, enc['dim'])} and {want_grid}; the cache is damaged, extract again"
            )
        failed = set(meta.get("failed", {}))
        bad = unwritten_rows(pooled, [i for i, name in enumerate(meta["images"]) if name not in failed])
        if bad:
            raise FeatureCacheError(
                f"{root}: {len(bad)} of {n} feature rows were never written or are not finite "
                f"(e.g. {meta['images'][bad[0]]}); the cache is damaged, extract again "
                f"with --overwrite"
            )
        return cls(root, meta, pooled, grid)

    @property
    def encoder_spec(self) -> dict:
        return self.meta["encoder"]

    @property
    def kind(self) -> str:
        """ "grid" or "block_input" (see EncoderSpec.kind)."""
        return EncoderSpec.of(self.meta["encoder"]).kind

    @property
    def encoder_name(self) -> str:
        return self.meta["encoder"]["name"]

    @property
    def failed(self) -> dict[str, str]:
        return dict(self.meta.get("failed", {}))

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, image: str) -> bool:
        return image in self.index

    def check(self, dataset=None, split: str | None = None, encoder: str | dict | None = None) -> None:
        """Raise FeatureCacheError saying exactly what differs between this cache and what is expected.

        `dataset` is a PreparedDataset, `split` one of its splits (all when None), `encoder` the
        encoder name or full spec the model was trained with (a fine-tuned model's spec names the
        block input it takes: "split_at").
        """
        if encoder is not None:
            name = encoder if isinstance(encoder, str) else encoder["name"]
            if name != self.encoder_name:
                raise FeatureCacheError(
                    f"{self.root}: features were extracted with {self.encoder_name}, "
                    f"but {name} is expected; extract with --encoder {name}"
                )
            if isinstance(encoder, dict):
                have, want = EncoderSpec.of(self.encoder_spec), EncoderSpec.of(encoder)
                if have.split_at != want.split_at:
                    raise FeatureCacheError(f"{self.root}: holds {have.text()}, but the model takes {want.text()}")
                for key in have.diff(want, ("preprocess", "dim", "grid"))[:1]:
                    raise FeatureCacheError(
                        f"{self.root}: encoder {name} {key} differs: cache has {have.get(key)}, "
                        f"expected {want.get(key)}"
                    )
        if dataset is not None:
            images_dir = dataset.manifest["images_dir"]
            if self.meta.get("images_dir") != images_dir:
                raise FeatureCacheError(
                    f"{self.root}: features are of images in {self.meta.get('images_dir')}, "
                    f"but {dataset.root} uses images in {images_dir}"
                )
            records = dataset.records(split)
            missing = [r.image for r in records if r.image not in self.index]
            if missing:
                failed = [m for m in missing if m in self.meta.get("failed", {})]
                what = f"split {split!r}" if split else "all splits"
                detail = f"{len(failed)} of them failed to load during extraction; " if failed else ""
                raise FeatureCacheError(
                    f"{self.root}: lacks features for {len(missing)} of {len(records)} images of "
                    f"{dataset.root} ({what}; e.g. {missing[0]}); {detail}extract that split into this cache's "
                    f"dataset again"
                )

    def rows(self, images: Sequence[str]) -> np.ndarray:
        try:
            return np.fromiter((self.index[i] for i in images), dtype=np.int64, count=len(images))
        except KeyError as e:
            raise FeatureCacheError(f"{self.root}: no features for image {e.args[0]}") from None

    @property
    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The memory-mapped (pooled (N, dim), grid (N, H*W, dim)) arrays in storage dtype; rows as in
        meta["images"] (use `rows()` to find an image)."""
        return self._pooled, self._grid

    def _take(self, arr: np.ndarray, images: Sequence[str]) -> np.ndarray:
        r = self.rows(images)
        order = np.argsort(r)  # sorted reads are much faster on a memory map
        out = np.empty((len(r), *arr.shape[1:]), dtype=np.float32)
        out[order] = arr[r[order]]
        return out

    def pooled(self, images: Sequence[str]) -> np.ndarray:
        """(B, dim) float32."""
        return self._take(self._pooled, images)

    def grid(self, images: Sequence[str]) -> np.ndarray:
        """(B, H*W, dim) float32."""
        return self._take(self._grid, images)
