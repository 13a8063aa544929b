"""`capgen extract`: encode each image of a prepared dataset once into a feature cache.

Resumable (see cache.py for the on-disk protocol), tolerant of bad images (skipped and listed, or
fatal with strict=True), and sharded across ranks under torchrun (each rank writes its own rows of
the shared memory-mapped arrays; rank 0 merges the progress records and seals the cache).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from capgen.data.prepared import ImageRecord, PreparedDataset
from capgen.encoder_spec import EncoderSpec
from capgen.encoders import create_encoder, make_runner
from capgen.errors import CapgenError, FeatureCacheError, ImageLoadError
from capgen.features.cache import (
    FORMAT_VERSION,
    JOB,
    LOCK,
    META,
    images_hash,
    load_array,
    read_json,
    unwritten_rows,
)
from capgen.images import load_image
from capgen.io import cache_root, folder_lock, preallocate, write_json
from capgen.jobs import run_job
from capgen.parallel import dist_info

DTYPES = ("float16", "float32")
ARRAYS = ("pooled.npy", "grid.npy")


@dataclass
class ExtractResult:
    out: Path
    images: int  # images in the cache
    extracted: int  # encoded by this call (the rest were done by an earlier run)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    backend: str = ""

    @property
    def images_per_s(self) -> float:
        return self.extracted / self.seconds if self.seconds > 0 else 0.0


def _same_job(a: dict, b: dict) -> list[str]:
    """Names of the settings in which two jobs differ."""
    try:
        same_encoder = EncoderSpec.of(a.get("encoder")) == EncoderSpec.of(b.get("encoder"))
    except CapgenError:  # not an object: a damaged job file
        same_encoder = False
    keys = ("capgen_features", "kind", "encoder", "dtype", "images", "images_dir")
    return [k for k in keys if (not same_encoder if k == "encoder" else a.get(k) != b.get(k))]


def _clear(out: Path) -> None:
    """Empty FEATURES but keep its .lock: removing the locked file would let a second writer in."""
    for p in out.iterdir():
        if p.name != LOCK:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def _prepare_out(out: Path, job: dict, overwrite: bool) -> str:
    """Create or validate FEATURES on rank 0 (which holds its lock). Returns 'complete', 'resume' or 'new'."""
    if out.exists() and not out.is_dir():
        raise FeatureCacheError(f"{out}: exists and is not a directory")
    for marker in (META, JOB):
        if out.is_dir() and (out / marker).is_file():
            if overwrite:
                _clear(out)
                break
            old = read_json(out / marker, "feature cache metadata")
            diff = _same_job(old, job)
            if diff:
                raise FeatureCacheError(
                    f"{out}: already holds {'features' if marker == META else 'an unfinished extraction'} "
                    f"with different {', '.join(diff)} ({EncoderSpec.of(old.get('encoder')).text()}, "
                    f"{len(old.get('images', []))} images); use another --out or --overwrite"
                )
            return "complete" if marker == META else "resume"
    if out.is_dir() and any(p.name != LOCK for p in out.iterdir()):
        if not overwrite:
            raise FeatureCacheError(f"{out}: directory exists and is not a feature cache; choose another --out")
        _clear(out)
    out.mkdir(parents=True, exist_ok=True)
    n, enc = len(job["images"]), job["encoder"]
    hw = enc["grid"][0] * enc["grid"][1]
    # Files of the final size, rows filled in place. Their blocks are reserved now: a memory-mapped
    # write to a sparse file on a full disk is a SIGBUS, not an error we could report.
    try:
        for name, shape in (("pooled.npy", (n, enc["dim"])), ("grid.npy", (n, hw, enc["dim"]))):
            np.lib.format.open_memmap(out / name, mode="w+", dtype=job["dtype"], shape=shape).flush()
            preallocate(out / name)
        write_json(out / JOB, job)  # after the arrays: job.json means "ready to fill"
    except BaseException:
        _clear(out)  # nothing half-made stays behind
        raise
    return "new"


AGAIN = "extract again with --overwrite"


def _read_progress(out: Path, n: int) -> tuple[set[int], dict[str, str]]:
    """Rows done (each < n, the job's image count) and images failed, from every progress file."""
    done: set[int] = set()
    failed: dict[str, str] = {}
    for p in sorted(out.glob("progress-*.json")):
        d = read_json(p, "extraction progress")
        rows, bad = d.get("done", []), d.get("failed", {})
        if not (
            isinstance(rows, list) and all(isinstance(i, int) and 0 <= i < n for i in rows) and isinstance(bad, dict)
        ):
            raise FeatureCacheError(
                f"{p}: malformed progress file (expected 'done' row numbers below {n} and "
                f"'failed'); "
                f"extract again with --overwrite"
            )
        done.update(rows)
        failed.update(bad)
    return done, failed


def _consolidate_progress(out: Path, n: int) -> None:
    """Fold all progress files into progress-base.json, so ranks of a new run (maybe a different
    world size) can own fresh files. Idempotent: a crash in between loses nothing."""
    done, failed = _read_progress(out, n)
    write_json(out / "progress-base.json", {"done": sorted(done), "failed": failed}, indent=None)
    for p in out.glob("progress-r*.json"):
        p.unlink()


def _load(rec: ImageRecord, preprocess) -> np.ndarray | ImageLoadError:
    try:
        return preprocess.array(load_image(rec.path, name=rec.image))
    except ImageLoadError as e:
        return e


def extract_features(
    dataset: PreparedDataset,
    out: str | Path,
    encoder: str = "efficientnet-lite2",
    split: str | None = None,
    batch_size: int = 32,
    workers: int = 2,
    backend: str = "auto",
    dtype: str = "float16",
    strict: bool = False,
    overwrite: bool = False,
    threads: int | None = None,
    progress: bool = True,
    precision: str = "fp32",
    split_at: int | None = None,
) -> ExtractResult:
    """Encode the images of `dataset` (one split, or all) into a feature cache at `out`.

    precision: see capgen.encoders.precision; int8 is calibrated once on training images.
    split_at: store the activation entering the encoder's last `split_at` blocks instead of its final
      grid (a cache of kind "block_input", for fine-tuning those blocks; see ImageEncoder.split).
    """
    if dtype not in DTYPES:
        raise CapgenError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if batch_size < 1 or workers < 0:
        raise CapgenError(f"--batch-size must be >= 1 and --workers >= 0, got {batch_size} and {workers}")
    out = Path(out)
    dist = dist_info()
    records = dataset.records(split)
    if not records:
        raise CapgenError(f"{dataset.root}: split {split!r} has no images")
    if out.exists() and not out.is_dir():
        raise FeatureCacheError(f"{out}: exists and is not a directory")
    # One writer per cache: a second extract (even with --overwrite) into a cache being filled would
    # leave rows the first run counts as done unwritten. Rank 0 holds the lock for all ranks.
    lock = folder_lock(out, "feature cache") if dist.rank == 0 else contextlib.nullcontext()
    runner, enc = _encoder(dataset, dist, encoder, split_at, backend, threads, precision)
    spec = _job(dataset, split, records, enc, runner, dtype)
    job = _ExtractJob(out, records, enc, runner, spec, overwrite, batch_size, workers, strict, progress)
    ran = run_job(job, lock, dist)
    if ran.complete_before:
        meta = read_json(out / META, "feature cache metadata")
        return ExtractResult(out, len(meta["images"]) - len(meta["failed"]), 0, meta["failed"], 0.0, runner.backend)
    failed = ran.sealed
    return ExtractResult(out, len(records) - len(failed), ran.done, failed, ran.seconds, runner.backend)


def _encoder(dataset, dist, encoder, split_at, backend, threads, precision):
    """The encoder and its runner; rank 0 builds first, so an ONNX export is cached for the others."""
    if dist.rank != 0:
        dist.barrier()
    enc = create_encoder(encoder, allow_import=True)  # `encoder` is the caller's (--encoder), not a file's
    if split_at:
        enc = enc.split(split_at)[0]  # its "grid" is the activation entering the last split_at blocks
    calibration = _calibration(enc, dataset, precision, threads) if dist.rank == 0 else None
    runner = make_runner(enc, backend=backend, threads=threads, precision=precision, calibration=calibration)
    if dist.rank == 0:
        dist.barrier()
    return runner, enc


def _job(dataset, split, records, enc, runner, dtype) -> dict:
    job = {
        "capgen_features": FORMAT_VERSION,
        "kind": EncoderSpec.of(enc.spec()).kind,
        "encoder": enc.spec(),
        "dtype": dtype,
        "images_dir": dataset.manifest["images_dir"],
        "dataset": str(dataset.root.resolve()),
        "split": split,
        "images": [r.image for r in records],
    }
    # Recorded so reduced-precision features never pass for fp32 ones (a runner that does not say
    # its precision, e.g. a wrapper, is one from before precisions existed: fp32).
    ran = getattr(runner, "precision", "fp32")
    if ran != "fp32":
        job["precision"] = ran
    return job


class _ExtractJob:
    """Extraction as a resumable job (capgen.jobs): rows of the shared memory-mapped arrays, each
    rank's progress in FEATURES/progress-r{rank}.json, sealed by meta.json."""

    def __init__(self, out: Path, records, enc, runner, job: dict, overwrite, batch_size, workers, strict, progress):
        self.out, self.records, self.enc, self.runner, self.job = out, records, enc, runner, job
        self.overwrite, self.names = overwrite, job["images"]
        self.batch_size, self.workers, self.strict, self.progress = batch_size, workers, strict, progress

    def open(self) -> str:
        out = self.out
        state = _prepare_out(out, self.job, self.overwrite)
        if state == "resume":
            for name in ARRAYS:  # a cache begun by an older capgen may still be sparse
                load_array(out / name, "r", AGAIN)  # missing or damaged: say so before any work
                preallocate(out / name)
            _consolidate_progress(out, len(self.names))
        return state

    def todo(self, state: str) -> list[int] | None:
        if state == "complete":
            return None
        done, failed = _read_progress(self.out, len(self.names))
        return [i for i in range(len(self.names)) if i not in done and self.names[i] not in failed]

    def work(self, mine: list[int], total: int) -> int:
        """Encode rows `mine` in batches, the next batches' images decoded while the encoder runs."""
        dist, out = dist_info(), self.out
        self.done: list[int] = []
        self.failed: dict[str, str] = {}
        self.arrays = load_array(out / "pooled.npy", "r+", AGAIN), load_array(out / "grid.npy", "r+", AGAIN)
        self.inodes = [os.stat(out / n).st_ino for n in ARRAYS]
        bar = tqdm(
            total=total,
            unit="img",
            desc=f"extract {self.enc.name}",
            disable=not self.progress or dist.rank != 0,
            dynamic_ncols=True,
        )
        batches = [mine[i : i + self.batch_size] for i in range(0, len(mine), self.batch_size)]
        pool = ThreadPoolExecutor(max_workers=max(self.workers, 1))
        queue: deque[tuple[list[int], list[Future]]] = deque()

        def submit(b: list[int]) -> None:
            queue.append((b, [pool.submit(_load, self.records[i], self.enc.preprocess) for i in b]))

        try:
            for b in batches[:2]:
                submit(b)
            for nb in range(2, len(batches) + 2):
                rows, futures = queue.popleft()
                if nb < len(batches):
                    submit(batches[nb])
                self._write(rows, [f.result() for f in futures], out / f"progress-r{dist.rank}.json")
                bar.update(len(rows) * dist.world_size)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            bar.close()
        return len(self.done)

    def _write(self, rows: list[int], loaded: list, progress_path: Path) -> None:
        """One batch: encode the images that loaded, write their rows, then the progress file."""
        arrays, ok = [], []
        for i, res in zip(rows, loaded):
            if isinstance(res, ImageLoadError):
                if self.strict:
                    raise res
                self.failed[self.names[i]] = res.reason
            else:
                arrays.append(res)
                ok.append(i)
        if ok:
            pooled, grid = self.runner(np.stack(arrays))  # (B, dim), (B, H*W, dim) float32
            if not (np.isfinite(pooled).all() and np.isfinite(grid).all()):
                raise FeatureCacheError(
                    f"encoder {self.enc.name} gave NaN or infinite features for {self.names[ok[0]]} ... "
                    f"(batch of {len(ok)}); the cache keeps the rows done so far"
                )
            idx, dtype = np.asarray(ok), self.job["dtype"]
            for mm, x in zip(self.arrays, (pooled, grid)):
                mm[idx] = x.astype(dtype)
                mm.flush()
        self.done.extend(ok)
        # Rows are on disk before the progress file names them.
        write_json(progress_path, {"done": self.done, "failed": self.failed}, indent=None)

    def seal(self, state: str) -> dict[str, str]:
        """Check every row is written, then meta.json: the cache is valid from there on."""
        out, names = self.out, self.names
        for name, inode in zip(ARRAYS, self.inodes):  # work() ran on this rank before the seal
            load_array(out / name, "r", AGAIN)  # deleted while the job ran: say so, never seal
            if os.stat(out / name).st_ino != inode:
                raise FeatureCacheError(f"{out / name}: replaced while this extraction was writing it; {AGAIN}")
        done, failed = _read_progress(out, len(names))
        missing = [names[i] for i in range(len(names)) if i not in done and names[i] not in failed]
        if missing:
            raise FeatureCacheError(
                f"{out}: {len(missing)} images were not extracted (e.g. {missing[0]}); run again to resume"
            )
        blank = unwritten_rows(load_array(out / "pooled.npy", "r", AGAIN), sorted(done))
        if blank:  # counted as done but never written: refuse to seal (check() would refuse it too)
            raise FeatureCacheError(
                f"{out}: {len(blank)} rows counted as extracted were never written (e.g. "
                f"{names[blank[0]]}); extract again with --overwrite"
            )
        created = time.strftime("%Y-%m-%dT%H:%M:%S")
        meta = {**self.job, "images_sha256": images_hash(names), "failed": failed, "complete": True}
        write_json(out / META, {**meta, "backend": self.runner.backend, "created": created})
        for p in out.glob("progress-*.json"):
            p.unlink()
        (out / JOB).unlink(missing_ok=True)
        return failed


CALIBRATION_IMAGES = 64


def _calibration(enc, dataset: PreparedDataset, precision: str, threads: int | None) -> np.ndarray | None:
    """For int8 with no quantized model cached yet: CALIBRATION_IMAGES training images spread over
    the split (fewer if the split is smaller), preprocessed as for extraction."""
    from capgen.encoders.onnx import onnx_path
    from capgen.encoders.precision import int8_path

    if precision != "int8" or int8_path(onnx_path(enc, cache_root())).is_file():
        return None
    records = dataset.records("train") or dataset.records()
    step = max(1, len(records) // CALIBRATION_IMAGES)
    return np.stack([enc.preprocess.array(load_image(r.path)) for r in records[::step][:CALIBRATION_IMAGES]])
