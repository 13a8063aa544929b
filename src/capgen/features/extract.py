"""`capgen extract`: encode each image of a prepared dataset once into a feature cache.

Resumable (see cache.py for the on-disk protocol), tolerant of bad images (skipped and listed, or
fatal with strict=True), and sharded across ranks under torchrun (each rank writes its own rows of
the shared memory-mapped arrays; rank 0 merges the progress records and seals the cache).
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from capgen.data.prepared import ImageRecord, PreparedDataset
from capgen.encoders import create_encoder, make_runner
from capgen.errors import CapgenError, FeatureCacheError, ImageLoadError
from capgen.features.cache import (
    FORMAT_VERSION,
    JOB,
    LOCK,
    META,
    cache_kind,
    images_hash,
    kind_text,
    load_array,
    read_json,
    unwritten_rows,
)
from capgen.images import load_image
from capgen.io import cache_root, folder_lock, preallocate, write_json
from capgen.parallel import dist_info

DTYPES = ("float16", "float32")


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
    return [k for k in ("capgen_features", "kind", "encoder", "dtype", "images", "images_dir") if a.get(k) != b.get(k)]


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
                    f"with different {', '.join(diff)} ({kind_text(old.get('encoder') or {})}, "
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
    with folder_lock(out, "feature cache") if dist.rank == 0 else contextlib.nullcontext():
        return _extract(
            dataset,
            records,
            out,
            dist,
            encoder,
            split,
            batch_size,
            workers,
            backend,
            dtype,
            strict,
            overwrite,
            threads,
            progress,
            precision,
            split_at,
        )


def _extract(
    dataset,
    records,
    out,
    dist,
    encoder,
    split,
    batch_size,
    workers,
    backend,
    dtype,
    strict,
    overwrite,
    threads,
    progress,
    precision="fp32",
    split_at=None,
) -> ExtractResult:
    """extract_features' work, with rank 0 holding the cache's lock."""
    # Rank 0 builds the encoder first: an ONNX export is cached on disk for the other ranks.
    if dist.rank != 0:
        dist.barrier()
    enc = create_encoder(encoder, allow_import=True)  # `encoder` is the caller's (--encoder), not a file's
    if split_at:
        enc = enc.split(split_at)[0]  # its "grid" is the activation entering the last split_at blocks
    runner = make_runner(
        enc,
        backend=backend,
        threads=threads,
        precision=precision,
        calibration=_calibration(enc, dataset, precision, threads) if dist.rank == 0 else None,
    )
    if dist.rank == 0:
        dist.barrier()

    job = {
        "capgen_features": FORMAT_VERSION,
        "kind": cache_kind(enc.spec()),
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
    state = _prepare_out(out, job, overwrite) if dist.rank == 0 else ""
    if dist.rank == 0 and state == "resume":
        for name in ("pooled.npy", "grid.npy"):  # a cache begun by an older capgen may still be sparse
            load_array(out / name, "r", AGAIN)  # missing or damaged: say so before any work
            preallocate(out / name)
        _consolidate_progress(out, len(job["images"]))
    state = dist.broadcast(state)
    if state == "complete":
        meta = read_json(out / META, "feature cache metadata")
        return ExtractResult(out, len(meta["images"]) - len(meta["failed"]), 0, meta["failed"], 0.0, runner.backend)

    done, failed = _read_progress(out, len(job["images"]))
    dist.barrier()  # every rank has read the progress before anyone writes new progress
    names = job["images"]
    todo = [i for i in range(len(records)) if i not in done and names[i] not in failed]
    mine = todo[dist.rank :: dist.world_size]
    my_done: list[int] = []
    my_failed: dict[str, str] = {}
    progress_path = out / f"progress-r{dist.rank}.json"
    pooled_mm = load_array(out / "pooled.npy", "r+", AGAIN)
    grid_mm = load_array(out / "grid.npy", "r+", AGAIN)

    start = time.perf_counter()
    bar = tqdm(
        total=len(todo),
        unit="img",
        desc=f"extract {enc.name}",
        disable=not progress or dist.rank != 0,
        initial=0,
        dynamic_ncols=True,
    )
    batches = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
    pool = ThreadPoolExecutor(max_workers=max(workers, 1))
    # Decode the next batches while the encoder runs on this one.
    queue: deque[tuple[list[int], list[Future]]] = deque()
    try:
        for b in batches[:2]:
            queue.append((b, [pool.submit(_load, records[i], enc.preprocess) for i in b]))
        nb = 2
        while queue:
            rows, futures = queue.popleft()
            if nb < len(batches):
                queue.append((batches[nb], [pool.submit(_load, records[i], enc.preprocess) for i in batches[nb]]))
                nb += 1
            arrays, ok = [], []
            for i, fut in zip(rows, futures):
                res = fut.result()
                if isinstance(res, ImageLoadError):
                    if strict:
                        raise res
                    my_failed[names[i]] = res.reason
                else:
                    arrays.append(res)
                    ok.append(i)
            if ok:
                pooled, grid = runner(np.stack(arrays))  # (B, dim), (B, H*W, dim) float32
                if not (np.isfinite(pooled).all() and np.isfinite(grid).all()):
                    raise FeatureCacheError(
                        f"encoder {enc.name} gave NaN or infinite features for "
                        f"{names[ok[0]]} ... (batch of {len(ok)}); the cache keeps the "
                        f"rows done so far"
                    )
                idx = np.asarray(ok)
                pooled_mm[idx] = pooled.astype(dtype)
                grid_mm[idx] = grid.astype(dtype)
                pooled_mm.flush()
                grid_mm.flush()
            my_done.extend(ok)
            # Rows are on disk before the progress file names them.
            write_json(progress_path, {"done": my_done, "failed": my_failed}, indent=None)
            bar.update(len(rows) * dist.world_size)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        bar.close()
    seconds = time.perf_counter() - start
    extracted = dist.all_reduce_sum(len(my_done))
    dist.barrier()

    done, failed = _read_progress(out, len(job["images"]))
    # Rank 0 removes the progress files below: another rank still globbing and reading them failed
    # now and then ("cannot read extraction progress", exit 2 in one torchrun test run of ~10).
    dist.barrier()
    if dist.rank == 0:
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
        meta = {
            **job,
            "images_sha256": images_hash(names),
            "failed": failed,
            "complete": True,
            "backend": runner.backend,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        write_json(out / META, meta)  # the cache is valid from here on
        for p in out.glob("progress-*.json"):
            p.unlink()
        (out / JOB).unlink(missing_ok=True)
    dist.barrier()
    return ExtractResult(out, len(names) - len(failed), extracted, failed, seconds, runner.backend)


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
