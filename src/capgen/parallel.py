"""torchrun awareness: rank, world size and the few collectives the library needs (gloo on CPU).

The process group is torn down on every exit path: gloo keeps C++ threads alive, and a process that
reaches interpreter exit with them still joinable dies with SIGABRT ("terminate called without an
active exception") after all its work is done.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

from capgen.errors import CapgenError


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


# Seconds a rank waits for the others: to join the process group, and at any collective (so it also
# bounds how long rank 0 may validate while the others wait). torch's own default is 30 minutes.
TIMEOUT_ENV, DEFAULT_TIMEOUT_S = "CAPGEN_DIST_TIMEOUT", 1800.0


def dist_timeout_s() -> float:
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        value = -1.0
    if not value > 0:
        raise CapgenError(f"{TIMEOUT_ENV}={text!r}: expected a positive number of seconds")
    return value


def dist_info() -> DistInfo:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1).

    A group that does not assemble within CAPGEN_DIST_TIMEOUT seconds (a node never started, a
    wrong address) raises CapgenError naming the address, instead of hanging.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import datetime

    import torch.distributed as td

    if not td.is_initialized():
        _import_world_capturing_modules()
        timeout = dist_timeout_s()
        try:
            td.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout))
        except td.DistError as e:
            where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
            raise CapgenError(
                f"rank {os.environ.get('RANK', '?')} of {world} could not join the process group at {where} "
                f"within {timeout:g} s ({str(e).splitlines()[0][:200]}); start every node with the same "
                f"--nnodes and --rdzv-endpoint, or raise {TIMEOUT_ENV}"
            ) from None
        atexit.register(shutdown_distributed)  # library callers that never call it themselves
    return DistInfo(td.get_rank(), td.get_world_size())


def _import_world_capturing_modules() -> None:
    """Import, before the process group exists, the torch modules that read `group.WORLD` once.

    torch.distributed.nn.functional writes `group=group.WORLD` as the default argument of ten
    functions. DDP imports it (through torch._dynamo) on construction; imported after
    init_process_group, those defaults keep the live group forever, so destroy_process_group can
    not free it, gloo's threads outlive the interpreter and the rank dies with SIGABRT at exit.
    Imported first, the defaults are None.
    """
    import torch.distributed.nn.functional  # noqa: F401


def shutdown_distributed() -> None:
    """Destroy the process group if one is live (idempotent); the CLI calls it on every exit path."""
    import sys

    if "torch.distributed" not in sys.modules:  # nothing was ever initialised: stay cheap
        return
    import torch.distributed as td

    if td.is_available() and td.is_initialized():
        td.destroy_process_group()
