"""torchrun awareness: rank, world size and the few collectives the library needs (gloo on CPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as td

            td.barrier()

    def broadcast(self, obj):
        """rank 0's `obj` on every rank."""
        if not self.active:
            return obj
        import torch.distributed as td

        box = [obj]
        td.broadcast_object_list(box, src=0)
        return box[0]

    def all_reduce_sum(self, value: int) -> int:
        if not self.active:
            return value
        import torch
        import torch.distributed as td

        t = torch.tensor([value], dtype=torch.long)
        td.all_reduce(t)
        return int(t.item())


    def all_reduce_mean(self, value: float) -> float:
        if not self.active:
            return value
        import torch
        import torch.distributed as td

        t = torch.tensor([value], dtype=torch.float64)
        td.all_reduce(t)
        return float(t.item()) / self.world_size


def dist_info() -> DistInfo:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as td

    if not td.is_initialized():
        td.init_process_group("gloo")
    return DistInfo(td.get_rank(), td.get_world_size())
