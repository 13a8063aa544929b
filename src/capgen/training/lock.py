"""One writer per run folder: two trainings into one RUN would overwrite each other's checkpoints."""

from __future__ import annotations

import contextlib
import functools

from capgen.io import folder_lock
from capgen.parallel import dist_info


def run_folder_locked(train_fn):
    """Decorate `train(cfg, data, cache, out, ...)`: rank 0 holds RUN's lock while it runs (under
    torchrun the other ranks write nothing there); a second writer gets a one-line CapgenError."""

    @functools.wraps(train_fn)
    def locked(cfg, data, cache, out, *args, **kwargs):
        with folder_lock(out, "training run") if dist_info().rank == 0 else contextlib.nullcontext():
            return train_fn(cfg, data, cache, out, *args, **kwargs)

    return locked
