"""The features of one split: what training, validation and evaluation read, one batch at a time.

Two ways to hold them, behind one interface (`batch(rows)` -> float32 pooled, grid):
  Features        the whole split copied into RAM as float16 (fastest; Flickr8k's train split is 1.2 GB
                  with efficientnet-lite2, COCO's would be ~23 GB per process)
  StreamFeatures  each batch read from the cache files with positioned reads (pread), rows sorted by
                  file offset; memory is one batch (batch_size x 81 x 1280 x 4 bytes = 6.6 MB for 16
                  images), whatever the dataset size. The OS page cache does the caching: it is shared
                  by all ranks of a machine and never counted in a process's RSS, unlike a memory map
                  whose touched pages grow the RSS to the whole file over an epoch.
Both give bit-identical batches (stored values rounded to float16, then float32), so a run may switch
between them, even on resume.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from capgen.data.prepared import ImageRecord
from capgen.errors import FeatureCacheError
from capgen.features.cache import FeatureCache


@dataclass
class Features:
    """Pooled and grid features of a list of images, row i = images[i]."""

    images: list[str]
    pooled: torch.Tensor  # (N, D) float16
    grid: torch.Tensor  # (N, R, D) float16

    @classmethod
    def load(
        cls, cache: FeatureCache, records: list[ImageRecord], memory_mb: int | None = None
    ) -> "Features | StreamFeatures":
        """In RAM when the split's float16 features fit in `memory_mb` (None = always), else streamed."""
        if memory_mb is not None and split_megabytes(cache, len(records)) > memory_mb:
            return StreamFeatures(cache, records)
        ids = [r.image for r in records]
        rows = cache.rows(ids)
        order = rows.argsort()  # read the memory map in file order
        src_pooled, src_grid = cache.arrays
        pooled = torch.empty((len(ids), src_pooled.shape[1]), dtype=torch.float16)
        grid = torch.empty((len(ids), *src_grid.shape[1:]), dtype=torch.float16)
        for start in range(0, len(ids), 512):  # chunks keep peak memory low
            sel = order[start : start + 512]
            chunk = src_grid[rows[sel]].astype("float16")  # (n, R, D)
            finite = np.isfinite(chunk).reshape(len(sel), -1).all(axis=1)  # pooled rows: checked at open
            if not finite.all():
                raise FeatureCacheError(
                    f"{cache.root}: grid features of {ids[sel[int(np.argmin(finite))]]} are "
                    f"NaN or infinite; the cache is damaged, extract again with --overwrite"
                )
            pooled[torch.from_numpy(sel)] = torch.from_numpy(src_pooled[rows[sel]].astype("float16"))
            grid[torch.from_numpy(sel)] = torch.from_numpy(chunk)
        return cls(ids, pooled, grid)

    def batch(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 (B, D), (B, R, D)."""
        return self.pooled[rows].float(), self.grid[rows].float()


def split_megabytes(cache: FeatureCache, n_images: int) -> float:
    """What `n_images` of this cache take in RAM as float16 (pooled + grid), in MiB."""
    pooled, grid = cache.arrays
    per_image = (pooled.shape[1] + grid.shape[1] * grid.shape[2]) * 2
    return n_images * per_image / 2**20


class _RowFile:
    """Rows of one C-ordered .npy array, read with pread into a fresh buffer."""

    def __init__(self, arr: np.ndarray):
        if not isinstance(arr, np.memmap) or not arr.flags.c_contiguous:
            raise FeatureCacheError(f"{getattr(arr, 'filename', 'feature array')}: expected a C-ordered .npy file")
        self.path, self.offset = arr.filename, arr.offset
        self.dtype, self.row_shape = arr.dtype, arr.shape[1:]
        self.row_bytes = int(np.prod(self.row_shape)) * arr.dtype.itemsize
        self.fd = os.open(self.path, os.O_RDONLY)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), *row_shape) for ascending `rows`; consecutive rows are read in one call."""
        out = np.empty((len(rows), *self.row_shape), dtype=self.dtype)
        buf = memoryview(out.reshape(-1).view(np.uint8))
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, len(rows)]):
            pos, end = int(lo) * self.row_bytes, int(hi) * self.row_bytes
            offset = self.offset + int(rows[lo]) * self.row_bytes
            while pos < end:
                got = os.preadv(self.fd, [buf[pos:end]], offset)
                if got <= 0:
                    raise FeatureCacheError(f"{self.path}: file ends early (truncated cache); extract again")
                pos, offset = pos + got, offset + got
        return out

    def close(self) -> None:
        if getattr(self, "fd", -1) >= 0:
            os.close(self.fd)
            self.fd = -1


class StreamFeatures:
    """The `Features` interface over the cache files: nothing is held but the batch being read.

    Safe to use from several threads (pread has no shared file position).
    """

    def __init__(self, cache: FeatureCache, records: list[ImageRecord]):
        self.images = [r.image for r in records]
        self.cache_rows = cache.rows(self.images)  # split row -> cache row
        pooled, grid = cache.arrays
        self._pooled, self._grid = _RowFile(pooled), _RowFile(grid)

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 (B, D), (B, R, D), as `Features.batch`."""
        want = self.cache_rows[np.asarray(rows, dtype=np.int64)]
        order = np.argsort(want, kind="stable")
        uniq, inverse = np.unique(want[order], return_inverse=True)  # a row asked twice is read once
        pooled, grid = self._pooled.read(uniq), self._grid.read(uniq)
        back = np.empty(len(want), dtype=np.int64)
        back[order] = inverse
        if not np.array_equal(back, np.arange(len(back))):  # training asks for ascending rows: no copy
            pooled, grid = pooled[back], grid[back]
        return _as_float32(pooled), _as_float32(grid)

    def close(self) -> None:
        for f in (getattr(self, "_pooled", None), getattr(self, "_grid", None)):
            if f is not None:
                f.close()

    def __del__(self):
        self.close()


def _as_float32(a: np.ndarray) -> torch.Tensor:
    # Through float16 as in RAM mode, so both modes train on the same numbers.
    return torch.from_numpy(a.astype(np.float16, copy=False)).float()
