"""Bulk captioning on Ray Data (`pip install 'capgen[ray]'`), for folders too big for one machine.

Two ways in:
- Your own Ray Data pipeline: `ds.map_batches(RayCaptioner, fn_constructor_kwargs={...},
  concurrency=actor_count(), batch_size=32)` over a column "image" of paths (or "bytes" of encoded
  photos, with "image" naming them). Each actor loads the captioner once.
- `capgen caption PHOTOS --out DIR --engine ray`: the photos not yet in DIR are captioned by an actor
  pool and written as Parquet parts DIR/part-*.parquet (each written to a temporary name, then
  renamed: a kill -9 leaves no torn part), one row per photo with the columns image, caption, score,
  truncated and result (the JSON line `capgen caption --format jsonl` writes). A rerun skips every
  photo already in a part. DIR/job.json holds the model and decoding settings (a rerun with others is
  refused); DIR/errors.jsonl the photos that could not be read (retried by the next run).

Actors are sized from the CPUs Ray reports, one CPU each, leaving one for Ray's own tasks and the
driver: an actor pool that reserves every CPU leaves none for the read tasks, and the job hangs.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from capgen.errors import CapgenError, ImageLoadError
from capgen.inference.bulk import json_line
from capgen.inference.files import caption_paths, expand_paths
from capgen.io import atomic_path, file_lock, write_json

COLUMNS = ("image", "caption", "score", "truncated", "result")
PART = "part-{run}-{k:05d}.parquet"


def _ray():
    try:
        import ray
    except ImportError:
        raise CapgenError("--engine ray needs Ray Data: pip install 'capgen[ray]'") from None
    return ray


class RayCaptioner:
    """A callable class for `Dataset.map_batches`: the captioner is loaded once per actor.

    load: keyword arguments of Captioner.from_pretrained (model path, encoder, backend, threads
      (default 1)...); None: the bundled model.
    decode: DecodeConfig fields; guide: the guide threshold (None: off), as `capgen caption`.
    """

    def __init__(self, load: dict | None = None, decode: dict | None = None, guide: Any = "default", batch_size=16):
        from capgen.inference import Captioner
        from capgen.tags import GuideConfig

        # One thread unless told: an actor reserves one CPU (actor_count leaves one for Ray itself).
        self.captioner = Captioner.from_pretrained(**{"threads": 1, **(load or {})})
        self.config = self.captioner.decode_config(**(decode or {}))
        self.guide = GuideConfig() if guide == "default" else guide
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(next(iter(batch.values())))
        names = [str(x) for x in batch["image"]] if "image" in batch else [str(i) for i in range(n)]
        if "bytes" in batch:
            items = [bytes(b) for b in batch["bytes"]]
        else:  # "path": where an actor (whose working folder is Ray's) finds the photo named "image"
            items = [str(x) for x in batch["path"]] if "path" in batch else names
        rows: dict[str, list] = {k: [] for k in (*COLUMNS, "error")}
        results = caption_paths(self.captioner, items, self.config, batch_size=self.batch_size, guide=self.guide)
        for name, (_, res) in zip(names, results):
            ok = not isinstance(res, ImageLoadError)
            rows["image"].append(name)
            rows["caption"].append(res.caption if ok else "")
            rows["score"].append(float(res.score) if ok else float("nan"))
            rows["truncated"].append(bool(res.truncated) if ok else False)
            rows["result"].append(json_line({"image": name, **res.to_dict()}).rstrip("\n") if ok else "")
            rows["error"].append("" if ok else res.reason)
        return {
            k: np.asarray(v, dtype=object if k in ("image", "caption", "result", "error") else None)
            for k, v in rows.items()
        }


def actor_count(cpus: float | None = None) -> int:
    """Actors for a pool of one CPU each: all of Ray's CPUs but one (at least one actor)."""
    if cpus is None:
        cpus = _ray().cluster_resources().get("CPU", 1)
    return max(1, int(cpus) - 1)


@dataclass
class RayResult:
    out: Path
    inputs: int
    captioned: int
    skipped: int
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0  # from Ray's start to the last part, actors' model loading included
    actors: int = 0
    steady_images_per_s: float = 0.0  # from the first part to the last: the pool at work

    @property
    def images_per_s(self) -> float:
        return self.captioned / self.seconds if self.seconds > 0 else 0.0


def caption_with_ray(
    inputs: list[str],
    out: str | os.PathLike,
    load: dict,
    decode: dict,
    guide: Any = "default",
    batch_size: int = 16,
    address: str | None = None,
    actors: int | None = None,
    model_name: str = "",
    log: Callable[[str], None] | None = None,
) -> RayResult:
    """Caption every photo under `inputs` that DIR `out` does not hold yet (see the module docstring)."""
    ray = _ray()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CapgenError(f"{out}: --engine ray writes a folder of Parquet parts; {out} is a file")
    expanded = expand_paths(inputs)
    paths = [os.fspath(p) for p in expanded if not isinstance(p, ImageLoadError)]
    failed = {e.path: e.reason for e in expanded if isinstance(e, ImageLoadError)}
    job = {"capgen_ray": 1, "model": model_name, "decode": decode, "cwd": os.getcwd(), "count": len(paths)}
    if not out.exists() and paths:  # a Ray that cannot start leaves nothing behind
        _start(ray, address)
    out.mkdir(parents=True, exist_ok=True)
    with file_lock(
        out / ".lock", f"{out}: another capgen caption job is writing it; wait for it or choose another --out"
    ):
        done = _open(out, job)
        todo = [p for p in paths if p not in done]
        start, captioned, n_actors, steady = time.perf_counter(), 0, 0, 0.0
        if todo:
            _start(ray, address)  # before job.json: a failed start changes nothing in DIR
            write_json(out / "job.json", job)
            cpus = ray.cluster_resources().get("CPU", 1)
            n_actors = actors or actor_count(cpus)
            # Each actor reserves one CPU (so Ray keeps one for its own tasks), but may compute on its
            # share of them all: on 2 CPUs the one actor runs 2 threads, as capgen caption --out does.
            load = {**load, "threads": load.get("threads") or max(1, int(cpus) // n_actors)}
            ds = ray.data.from_items([{"image": p, "path": os.path.abspath(p)} for p in todo])
            ds = ds.map_batches(
                RayCaptioner,
                fn_constructor_kwargs={"load": load, "decode": decode, "guide": guide, "batch_size": batch_size},
                batch_size=batch_size,
                concurrency=n_actors,
                num_cpus=1,
            )
            captioned, steady = _write_parts(ds, out, len(todo), n_actors, failed)
        seconds = time.perf_counter() - start
        _write_errors(out, failed)
    return RayResult(out, len(paths), captioned, len(paths) - len(todo), failed, seconds, n_actors, steady)


def _write_parts(ds, out: Path, total: int, n_actors: int, failed: dict[str, str]) -> tuple[int, float]:
    """Each batch the pool returns as one Parquet part (its unreadable photos into `failed`):
    (photos written, images/s from the first part to the last)."""
    import sys

    from tqdm.auto import tqdm

    run = uuid.uuid4().hex[:8]
    bar = tqdm(total=total, unit="img", desc=f"caption (ray, {n_actors} actors)", file=sys.stderr, dynamic_ncols=True)
    captioned, k, first, first_n = 0, -1, 0.0, 0
    for k, batch in enumerate(ds.iter_batches(batch_size=None, batch_format="numpy")):
        bad = batch["error"] != ""
        failed.update(zip(batch["image"][bad].tolist(), batch["error"][bad].tolist()))
        captioned += _write_part(out / PART.format(run=run, k=k), {c: batch[c][~bad] for c in COLUMNS})
        bar.update(len(batch["image"]))
        if k == 0:
            first, first_n = time.perf_counter(), len(batch["image"])
    bar.close()
    return captioned, (total - first_n) / (time.perf_counter() - first) if k > 0 else 0.0


def _start(ray, address: str | None) -> None:
    import logging
    import warnings

    # Our bar on the driver instead of Ray Data's progress lines, INFO logs and deprecation notices of
    # its own settings (on stderr, per stage), which are not the user's to act on.
    warnings.filterwarnings("ignore", module=r"ray(\.|$)")
    ray.data.DataContext.get_current().enable_progress_bars = False
    for name in ["ray", *(n for n in logging.root.manager.loggerDict if n.startswith("ray."))]:
        logging.getLogger(name).setLevel(logging.ERROR)
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # its C++ core's notices, on our stderr
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except Exception as e:  # noqa: BLE001  Ray raises ConnectionError, RuntimeError, ValueError...
        where = f"at {address}" if address else "locally"
        raise CapgenError(
            f"Ray could not start {where}: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}"
        ) from None


def _open(out: Path, job: dict) -> set[str]:
    """Check DIR's job against this one, drop temporaries of a killed run; the photos already written.
    job.json is written once Ray has started (caption_with_ray)."""
    import pyarrow.parquet as pq

    path = out / "job.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise CapgenError(f"{path}: damaged ({str(e)[:80]}); remove {out} to start over") from None
        for key in ("model", "decode", "cwd"):
            if not isinstance(old, dict) or old.get(key) != job[key]:
                raise CapgenError(
                    f"{out}: was written with another {key}; rerun with the same settings or choose another --out"
                )
    elif any(p.name not in (".lock",) for p in out.iterdir()):
        raise CapgenError(f"{out}: exists and was not written by capgen caption --engine ray; choose another --out")
    for tmp in out.glob(".*.tmp"):  # a part a killed run was writing
        tmp.unlink()
    done: set[str] = set()
    for part in sorted(out.glob("part-*.parquet")):
        try:
            done.update(pq.read_table(part, columns=["image"]).column("image").to_pylist())
        except Exception as e:  # noqa: BLE001  pyarrow's errors for a damaged file vary
            raise CapgenError(
                f"{part}: not a readable Parquet part ({type(e).__name__}); remove it to caption its photos again"
            ) from None
    return done


def _write_part(path: Path, columns: dict[str, np.ndarray]) -> int:
    """One Parquet part, whole or not at all (a temporary name, then a rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(columns["image"])
    if n == 0:
        return 0
    table = pa.table(
        {
            "image": pa.array(columns["image"].tolist(), pa.string()),
            "caption": pa.array(columns["caption"].tolist(), pa.string()),
            "score": pa.array(columns["score"].astype(np.float64)),
            "truncated": pa.array(columns["truncated"].astype(bool)),
            "result": pa.array(columns["result"].tolist(), pa.string()),
        }
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return n


def _write_errors(out: Path, failed: dict[str, str]) -> None:
    errors = out / "errors.jsonl"
    if failed:
        with atomic_path(errors) as tmp:
            tmp.write_text("".join(json_line({"image": p, "error": r}) for p, r in failed.items()), encoding="utf-8")
    else:
        errors.unlink(missing_ok=True)


def read_captions(out: str | os.PathLike) -> dict[str, str]:
    """image -> caption of every photo in DIR's parts."""
    import pyarrow.parquet as pq

    captions: dict[str, str] = {}
    for part in sorted(Path(out).glob("part-*.parquet")):
        t = pq.read_table(part, columns=["image", "caption"])
        captions.update(zip(t.column("image").to_pylist(), t.column("caption").to_pylist()))
    return captions
