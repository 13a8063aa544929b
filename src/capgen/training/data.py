"""Training batches straight from the feature cache, held in RAM as float16."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from capgen.data.prepared import ImageRecord
from capgen.data.vocab import Vocabulary
from capgen.features import FeatureCache


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
        pooled = torch.empty((len(ids), cache._pooled.shape[1]), dtype=torch.float16)
        grid = torch.empty((len(ids), *cache._grid.shape[1:]), dtype=torch.float16)
        for start in range(0, len(ids), 512):  # chunks keep peak memory low
            sel = order[start : start + 512]
            pooled[torch.from_numpy(sel)] = torch.from_numpy(cache._pooled[rows[sel]].astype("float16"))
            grid[torch.from_numpy(sel)] = torch.from_numpy(cache._grid[rows[sel]].astype("float16"))
        return cls(ids, pooled, grid)

    def batch(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 (B, D), (B, R, D)."""
        return self.pooled[rows].float(), self.grid[rows].float()


class CaptionPairs:
    """Every (image, reference caption) pair of a split, as padded id tensors."""

    def __init__(self, records: list[ImageRecord], vocab: Vocabulary, max_len: int):
        image_rows, caps = [], []
        for row, rec in enumerate(records):
            for tokens in rec.tokens:
                image_rows.append(row)
                caps.append(vocab.encode(list(tokens[:max_len])))
        self.image_rows = torch.tensor(image_rows, dtype=torch.long)
        self.lengths = torch.tensor([len(c) for c in caps], dtype=torch.long)
        self.captions = torch.full((len(caps), max_len + 2), vocab.pad_id, dtype=torch.long)
        for i, c in enumerate(caps):
            self.captions[i, : len(c)] = torch.tensor(c)

    def __len__(self) -> int:
        return len(self.image_rows)

    def epoch_batches(self, epoch: int, seed: int, batch_size: int, rank: int = 0, world: int = 1) -> list[torch.Tensor]:
        """This rank's batches of pair indices for `epoch`: a permutation fixed by (seed, epoch), so a
        resumed run sees exactly the batches the uninterrupted run would have."""
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(len(self), generator=g)
        per_step = batch_size * world
        n = len(order) // per_step * per_step or len(order)  # equal batch counts on every rank
        order = order[:n]
        return [order[i + rank * batch_size : i + (rank + 1) * batch_size] for i in range(0, n, per_step)
                if len(order[i + rank * batch_size : i + (rank + 1) * batch_size])]

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image rows (B,), captions (B, T)) trimmed to the longest caption in the batch."""
        t = int(self.lengths[idx].max())
        return self.image_rows[idx], self.captions[idx, :t]
