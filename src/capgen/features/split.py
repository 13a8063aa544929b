"""The features of one split, held in RAM as float16: what training, validation and evaluation read."""

from __future__ import annotations

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
    pooled: torch.Tensor   # (N, D) float16
    grid: torch.Tensor     # (N, R, D) float16

    @classmethod
    def load(cls, cache: FeatureCache, records: list[ImageRecord]) -> "Features":
        ids = [r.image for r in records]
        rows = cache.rows(ids)
        order = rows.argsort()  # read the memory map in file order
        src_pooled, src_grid = cache.arrays
        pooled = torch.empty((len(ids), src_pooled.shape[1]), dtype=torch.float16)
        grid = torch.empty((len(ids), *src_grid.shape[1:]), dtype=torch.float16)
        for start in range(0, len(ids), 512):  # chunks keep peak memory low
            sel = order[start : start + 512]
            chunk = src_grid[rows[sel]].astype("float16")                  # (n, R, D)
            finite = np.isfinite(chunk).reshape(len(sel), -1).all(axis=1)  # pooled rows: checked at open
            if not finite.all():
                raise FeatureCacheError(f"{cache.root}: grid features of {ids[sel[int(np.argmin(finite))]]} are "
                                        f"NaN or infinite; the cache is damaged, extract again with --overwrite")
            pooled[torch.from_numpy(sel)] = torch.from_numpy(src_pooled[rows[sel]].astype("float16"))
            grid[torch.from_numpy(sel)] = torch.from_numpy(chunk)
        return cls(ids, pooled, grid)

    def batch(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 (B, D), (B, R, D)."""
        return self.pooled[rows].float(), self.grid[rows].float()
