"""`run_job`: the one skeleton of capgen's resumable jobs (feature extraction, bulk captioning), alone
or under torchrun.

    rank 0, holding the job's lock:  open()  check what an earlier run left, repair it, write the job
    every rank:                       todo()  what is still to do (after rank 0 opened the job)
    every rank:                       work(mine)  every world_size-th item, into the rank's own part
    rank 0:                           seal()  merge the parts and make the output valid

What every such job needs and what went wrong when each wrote it alone: a refusal on rank 0 reaches
every rank (they waited for it forever), no rank writes before every rank has read the state, and a
failure on any rank ends all of them with one line instead of leaving the others in a collective.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, ContextManager, Protocol, Sequence

from capgen.errors import CapgenError
from capgen.parallel import DistInfo, dist_info


class ResumableJob(Protocol):
    def open(self) -> Any:
        """Rank 0, under the lock: what every rank must know (broadcast), e.g. notes for the user."""

    def todo(self, opened: Any) -> Sequence | None:
        """Every rank: the items still to do, in one order on every rank; None: nothing to do, the
        job was already complete."""

    def work(self, mine: Sequence, total: int) -> int:
        """This rank's share of the `total` items to do; returns how many it did."""

    def seal(self, opened: Any) -> Any:
        """Rank 0, once every rank's work is on disk: merge and finish; the result every rank gets."""


@dataclass
class JobRun:
    opened: Any  # what open() returned
    total: int  # items to do when this run began (all ranks)
    done: int  # done by this run (all ranks)
    sealed: Any  # what seal() returned (None when nothing was to do)
    seconds: float  # of the work
    complete_before: bool = False  # todo() said the job had been complete already


def run_job(job: ResumableJob, lock: ContextManager, dist: DistInfo | None = None) -> JobRun:
    """Run `job` on this rank (see the module docstring); rank 0 holds `lock` throughout."""
    dist = dist or dist_info()
    with lock if dist.rank == 0 else contextlib.nullcontext():
        opened = _on_rank0(dist, job.open)
        dist.barrier()
        todo = job.todo(opened)
        if todo is None:
            return JobRun(opened, 0, 0, None, 0.0, complete_before=True)
        dist.barrier()  # every rank has read the state before anyone writes
        start = time.perf_counter()
        done = _everywhere(dist, lambda: job.work(todo[dist.rank :: dist.world_size], len(todo)))
        seconds = time.perf_counter() - start
        done = dist.all_reduce_sum(done)
        dist.barrier()
        sealed = _on_rank0(dist, lambda: job.seal(opened))
        dist.barrier()
    return JobRun(opened, len(todo), done, sealed, seconds)


def _on_rank0(dist: DistInfo, fn):
    """fn() on rank 0, its result (or its error, as one line) on every rank."""
    result, error = None, None
    if dist.rank == 0:
        try:
            result = fn()
        except Exception as e:
            error = e
    result, why = dist.broadcast((result, None if error is None else str(error) or type(error).__name__))
    if error is not None:
        raise error
    if why is not None:
        raise CapgenError(why)
    return result


def _everywhere(dist: DistInfo, fn) -> int:
    """fn() on every rank; when it fails on any rank, every rank raises (that rank its own error)."""
    value, error = 0, None
    try:
        value = fn()
    except Exception as e:
        if not dist.active:
            raise
        error = e
    failed = dist.all_reduce_sum(int(error is not None))
    if error is not None:
        raise error
    if failed:
        raise CapgenError(f"{failed} of {dist.world_size} ranks failed (their error is above); nothing was sealed")
    return value
