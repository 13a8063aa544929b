"""capgen.jobs.run_job: the skeleton of resumable jobs (extraction, bulk captioning), alone and on 2 ranks."""

from __future__ import annotations

import contextlib
import os
import sys
import textwrap

import pytest

from capgen.errors import CapgenError
from capgen.jobs import run_job


class Job:
    def __init__(self, items, fail_open=False, complete=False):
        self.items, self.fail_open, self.complete, self.calls = items, fail_open, complete, []

    def open(self):
        self.calls.append("open")
        if self.fail_open:
            raise CapgenError("job.json: damaged")
        return {"note": "opened"}

    def todo(self, opened):
        self.calls.append("todo")
        return None if self.complete else list(self.items)

    def work(self, mine, total):
        self.calls.append(("work", list(mine), total))
        return len(mine)

    def seal(self, opened):
        self.calls.append("seal")
        return "sealed"


class Lock:
    def __init__(self):
        self.held = []

    @contextlib.contextmanager
    def __call__(self):
        self.held.append(True)
        try:
            yield
        finally:
            self.held[-1] = False


def test_one_process_opens_works_and_seals_in_order_under_the_lock():
    job, lock = Job("abc"), Lock()
    ran = run_job(job, lock())
    assert job.calls == ["open", "todo", ("work", ["a", "b", "c"], 3), "seal"]
    assert (ran.opened, ran.total, ran.done, ran.sealed) == ({"note": "opened"}, 3, 3, "sealed")
    assert lock.held == [False]  # taken and released


def test_a_refused_job_does_no_work_and_frees_the_lock():
    job, lock = Job("abc", fail_open=True), Lock()
    with pytest.raises(CapgenError, match="damaged"):
        run_job(job, lock())
    assert job.calls == ["open"] and lock.held == [False]


def test_a_complete_job_is_not_worked_or_sealed_again():
    job = Job("abc", complete=True)
    ran = run_job(job, contextlib.nullcontext())
    assert ran.complete_before and job.calls == ["open", "todo"]


SCRIPT = """
import sys
from pathlib import Path
from capgen.errors import CapgenError
from capgen.jobs import run_job
from capgen.parallel import dist_info

out = Path(sys.argv[1])
class Job:
    def open(self): return None
    def todo(self, opened): return list(range(10))
    def work(self, mine, total):
        if dist_info().rank == int(sys.argv[2]):
            raise CapgenError(f"rank {dist_info().rank}: this photo is unreadable")
        (out / f"worked{dist_info().rank}").write_text(" ".join(map(str, mine)))
        return len(mine)
    def seal(self, opened):
        (out / "sealed").write_text("yes")
try:
    run_job(Job(), __import__("contextlib").nullcontext())
except CapgenError as e:  # one file per rank: two ranks' stderr lines interleave
    (out / f"error{dist_info().rank}").write_text(str(e))
    sys.exit(2)
"""


@pytest.mark.parametrize("failing", [-1, 1])
def test_on_two_ranks_work_is_shared_and_a_failure_on_either_ends_both(tmp_path, failing):
    """Issue 18: a rank's failure left the other in a collective until torchrun's timeout."""
    from conftest import run_torchrun

    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = run_torchrun(["--nproc_per_node", "2", str(script), str(tmp_path), str(failing)], env, 120)
    if failing < 0:
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert (tmp_path / "worked0").read_text() == "0 2 4 6 8" and (tmp_path / "worked1").read_text() == "1 3 5 7 9"
        assert (tmp_path / "sealed").read_text() == "yes"
    else:
        assert proc.returncode != 0
        errors = [(tmp_path / f"error{rank}").read_text() for rank in (0, 1)]
        assert errors == [
            "1 of 2 ranks failed (their error is above); nothing was sealed",
            "rank 1: this photo is unreadable",
        ]
        assert not (tmp_path / "sealed").exists()


def test_a_lock_that_is_a_folder_is_one_clear_error(tmp_path):
    from capgen.io import folder_lock

    (tmp_path / "features" / ".lock").mkdir(parents=True)
    with pytest.raises(CapgenError, match=r"features/\.lock: cannot open it as this job's lock file"):
        with folder_lock(tmp_path / "features", "feature cache"):
            pass
