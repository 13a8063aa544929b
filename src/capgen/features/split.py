"""The features of one split, held in RAM as float16: what training, validation and evaluation read."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from capgen.data.prepared import ImageRecord
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
            pooled[torch.from_numpy(sel)] = torch.from_numpy(src_pooled[rows[sel]].astype("float16"))
            grid[torch.from_numpy(sel)] = torch.from_numpy(src_grid[rows[sel]].astype("float16"))
        return cls(ids, pooled, grid)

    def batch(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 (B, D), (B, R, D)."""
        return self.pooled[rows].float(), self.grid[rows].float()
