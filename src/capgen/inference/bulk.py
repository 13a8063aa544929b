"""Bulk captioning into a file that survives kills and reruns: `capgen caption PHOTOS/ --out captions.jsonl`.

OUT (.jsonl or .csv) gets one line per captioned image, *with the image path on every line*, in
completion order (not input order). Lines are appended and flushed as each image finishes, so a kill -9
loses at most the batch in flight. A rerun skips every path already in OUT; a last line cut short by a
kill is detected and cut off (that image is captioned again). Beside OUT:
  OUT.job.json     the job: model, decoding settings, format, working folder, and a fingerprint of the
                   input list; a rerun with another model or settings is refused, changed inputs are
                   reported (and the new list is captioned)
  OUT.errors       images that could not be read, one JSON line each ({"image", "error"}); rewritten
                   at the end of every run (failed images are retried by the next run)
  OUT.lock         held (flock) by the running job: a second job on the same OUT is refused
  OUT.part{k}      under torchrun, rank k's lines (and OUT.errors.part{k}); rank 0 merges them into OUT
                   at the end, and at the start of a rerun if a run died before merging
Results are never held in memory; the set of done paths is (~100 bytes per image).

Each line is one line of UTF-8 whatever the file names: in JSONL a name's undecodable bytes are
\\udcXX escapes (json.loads gives the same str back); in CSV the image cell is `display_name(path)`
(control characters and such bytes escaped) and a text cell that a spreadsheet would run as a
formula (starting with = + - @) gets a ' in front. An input file is captioned once, however often named.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from capgen.errors import CapgenError, ImageLoadError, say_above_bar
from capgen.inference.files import caption_paths, display_name, expand_paths
from capgen.io import _disk_full_error, file_lock, is_disk_full, write_json
from capgen.jobs import run_job
from capgen.parallel import dist_info
from capgen.result import CaptionResult
from capgen.tags import GuideConfig

FORMATS = ("jsonl", "csv")
CSV_HEADER = ["image", "caption", "score", "alternatives"]


@dataclass
class BulkResult:
    out: Path
    inputs: int  # image files found
    captioned: int  # by this run (all ranks)
    skipped: int  # already in OUT from earlier runs
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # what was repaired or changed since the last run

    @property
    def images_per_s(self) -> float:
        return self.captioned / self.seconds if self.seconds > 0 else 0.0


def output_format(out: Path, fmt: str | None = None) -> str:
    """jsonl or csv: from `fmt`, else from OUT's suffix."""
    fmt = fmt or out.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise CapgenError(f"{out}: bulk output must end in .jsonl or .csv (or pass --format jsonl/csv)")
    return fmt


# What json.dumps(ensure_ascii=False) leaves raw but must not be in a line: str.splitlines breaks a
# line at U+0085, U+2028 and U+2029, and lone surrogates (a file name's undecodable bytes) are no UTF-8.
_RAW_IN_JSON = re.compile("[\x85\u2028\u2029\ud800-\udfff]")
# A spreadsheet runs a cell starting with these as a formula ("'" itself: so the mark can be taken off).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def json_line(obj) -> str:
    """`obj` as one line of valid UTF-8 JSON (newline included); the escapes read back as the same str."""
    return _RAW_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(obj, ensure_ascii=False)) + "\n"


def csv_cell(text: str) -> str:
    """A text cell a spreadsheet shows as text: one starting like a formula gets a ' in front."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def path_key(fmt: str, path: str) -> str:
    """How `path` appears in an OUT line of format `fmt` (what a rerun looks up)."""
    return path if fmt == "jsonl" else csv_cell(display_name(path))


def format_line(fmt: str, path: str, res: CaptionResult) -> str:
    if fmt == "jsonl":
        return json_line({"image": path, **res.to_dict()})
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(
        [
            path_key(fmt, path),
            csv_cell(res.caption),
            f"{res.score:.4f}",
            csv_cell(" | ".join(c for c, _ in res.alternatives)),
        ]
    )
    return buf.getvalue()


def _line_path(fmt: str, line: str) -> str | None:
    """The image path of one complete line; None for the CSV header; ValueError when unparsable."""
    if fmt == "jsonl":
        obj = json.loads(line)
        if not isinstance(obj, dict) or not isinstance(obj.get("image"), str):
            raise ValueError("no image field")
        return obj["image"]
    row = next(csv.reader([line]))
    if row == CSV_HEADER:
        return None
    if len(row) != len(CSV_HEADER):
        raise ValueError(f"{len(row)} columns")
    return row[0]


def repair_tail(path: Path) -> bool:
    """Cut a last line without its newline (a write cut short by a kill). True if something was cut."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return False
        size, pos, chunk = f.seek(0, os.SEEK_END), 0, 1 << 16
        end = size
        while end > 0:  # find the last newline, reading backwards
            start = max(0, end - chunk)
            f.seek(start)
            i = f.read(end - start).rfind(b"\n")
            if i >= 0:
                pos = start + i + 1
                break
            end = start
        f.truncate(pos)
    return True


def read_done(path: Path, fmt: str) -> Iterator[str]:
    """Path keys (`path_key`) of the complete lines of an output (or part) file; a damaged line is a
    CapgenError."""
    return (key for _, key in _records(path, fmt) if key is not None)


def _records(path: Path, fmt: str) -> Iterator[tuple[str, str | None]]:
    """(line, path key or None for the CSV header) of each line; CapgenError naming the file and the
    line for anything that is not a capgen caption line."""
    if not path.is_file():
        return
    with open(path, "rb") as f:  # bytes: lines end at \n only, and a bad byte is named with its line
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
                key = _line_path(fmt, line)
            except UnicodeDecodeError:
                raise CapgenError(
                    f"{path}: line {n} is not UTF-8 text, so not a capgen {fmt} caption line; is "
                    f"this file another program's output? choose another --out"
                ) from None
            except (ValueError, StopIteration, RecursionError) as e:  # JSONDecodeError is a ValueError
                raise CapgenError(
                    f"{path}: line {n} is not a capgen {fmt} caption line ({str(e)[:100]}); is "
                    f"this file another program's output? choose another --out"
                ) from None
            yield line, key


def _fingerprint(paths: list[str]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()[:16]


def _part(out: Path, rank: int, errors: bool = False) -> Path:
    return out.with_name(f"{out.name}{'.errors' if errors else ''}.part{rank}")


def _merge_parts(out: Path, fmt: str, done: set[str], wanted: set[str] | None = None) -> tuple[int, int]:
    """Append the lines of leftover OUT.part* files not yet in OUT, then delete the parts (idempotent:
    a crash in between only means the next merge skips lines already there). Lines for images whose
    key is not in `wanted` (not among this run's inputs) are dropped. (merged, dropped) line counts;
    a damaged part is a CapgenError, and nothing of it is merged."""
    merged = dropped = 0
    parts = sorted(p for p in out.parent.glob(f"{out.name}.part*") if p.name[len(out.name) + 5 :].isdigit())
    if not parts:
        return 0, 0
    for part in parts:  # every part checked whole before any line of it goes into OUT
        repair_tail(part)
        for _ in _records(part, fmt):
            pass
    with open(out, "a", encoding="utf-8", newline="") as dst:
        if fmt == "csv" and dst.tell() == 0:
            dst.write(",".join(CSV_HEADER) + "\n")
        for part in parts:
            for line, p in _records(part, fmt):
                if p is None or p in done:
                    continue
                if wanted is not None and p not in wanted:
                    dropped += 1
                    continue
                dst.write(line)
                done.add(p)
                merged += 1
        dst.flush()
        os.fsync(dst.fileno())
    for part in parts:
        part.unlink()
    return merged, dropped


def _check_job(out: Path, job: dict, old: dict | None, done: set[str], inputs: set[str]) -> list[str]:
    """Refuse other settings; describe changed inputs."""
    if old is None:
        return []
    old = {**old, "decode": _with_new_defaults(old.get("decode"), job["decode"])}
    for key in ("model", "decode", "format", "cwd"):
        if old.get(key) != job.get(key):
            raise CapgenError(
                f"{out}: was written with another {key} ({old.get(key)!r}, now {job.get(key)!r}); "
                f"rerun with the same settings or choose another --out"
            )
    if old.get("fingerprint") == job["fingerprint"]:
        return []
    gone = sum(1 for p in done if p not in inputs)
    return [
        f"the inputs changed since this job started ({old.get('count')} files then, {job['count']} now): "
        f"{gone} captioned files are no longer among the inputs (their lines stay in {out.name}); "
        f"new files are captioned"
    ]


def caption_to_file(
    captioner,
    inputs: list[str],
    out: str | os.PathLike,
    config=None,
    fmt: str | None = None,
    batch_size: int = 16,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    guide: GuideConfig | float | None = GuideConfig(),
) -> BulkResult:
    """Caption every image under `inputs` (files, folders, globs) into OUT; see the module docstring.
    `guide`: when tags guide the captions, or None (see Captioner.caption).

    Under torchrun each rank captions every world_size-th remaining image; rank 0 merges the parts.
    A file of the job that cannot be read or written (OUT under /proc, a folder in OUT's place) is a
    CapgenError naming it.
    """
    try:
        return _caption_to_file(captioner, inputs, out, config, fmt, batch_size, progress, log, guide)
    except OSError as e:
        where = Path(e.filename) if e.filename else Path(out)
        if is_disk_full(e):
            raise _disk_full_error(where) from None
        raise CapgenError(
            f"{display_name(where)}: cannot be used for this job's output ({e.strerror or e}); choose another --out"
        ) from None


def _read_job(job_path: Path) -> dict | None:
    """The job file of an earlier run (None: there is none); CapgenError when it is damaged."""
    if not job_path.exists():
        return None
    try:
        old = json.loads(job_path.read_text(encoding="utf-8"))
        reason = None if isinstance(old, dict) and old.get("capgen_bulk") == 1 else "not a capgen job object"
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        reason = str(e)[:100] or type(e).__name__
    except IsADirectoryError:
        reason = "a folder"
    if reason:
        raise CapgenError(
            f"{job_path}: damaged ({reason}); expected the JSON job file capgen caption --out "
            f"writes; remove it and its output to start over, or choose another --out"
        )
    return old


def _caption_to_file(captioner, inputs, out, config, fmt, batch_size, progress, log, guide) -> BulkResult:
    out = Path(out)
    fmt = output_format(out, fmt)
    config = config if config is not None else captioner.decode_config()
    dist = dist_info()
    expanded = expand_paths(inputs)
    paths = [os.fspath(p) for p in expanded if not isinstance(p, ImageLoadError)]
    missing = {e.path: e.reason for e in expanded if isinstance(e, ImageLoadError)}
    del expanded
    job = {
        "capgen_bulk": 1,
        "model": captioner.name,
        "decode": _decode_dict(config),
        "format": fmt,
        "cwd": os.getcwd(),
        "inputs": list(map(str, inputs)),
        "count": len(paths),
        "fingerprint": _fingerprint(paths),
    }
    bulk = _BulkJob(captioner, out, fmt, config, job, paths, missing, log, batch_size, progress, guide)
    lock = contextlib.nullcontext()
    if dist.rank == 0:  # rank 0 owns OUT, the job file and the merge
        out.parent.mkdir(parents=True, exist_ok=True)
        busy = f"{out}: another capgen caption job is writing it; wait for it or choose another --out"
        lock = file_lock(out.with_name(out.name + ".lock"), busy)
    ran = run_job(bulk, lock, dist)
    return BulkResult(out, job["count"], ran.done, bulk.skipped, ran.sealed, ran.seconds, ran.opened)


class _BulkJob:
    """Bulk captioning as a resumable job (capgen.jobs): OUT's lines are the done set; under torchrun
    each rank appends to OUT.part{rank}, merged into OUT by rank 0."""

    def __init__(
        self, captioner, out: Path, fmt: str, config, job: dict, paths, missing, log, batch_size, progress, guide
    ):
        self.captioner, self.out, self.fmt, self.config, self.job = captioner, out, fmt, config, job
        self.batch_size, self.progress, self.guide = batch_size, progress, guide
        self.paths, self.missing, self.done, self.skipped = paths, missing, set(), 0
        self.log = log or (lambda msg: say_above_bar(f"capgen caption: {msg}"))  # ranks share one stderr

    def open(self) -> list[str]:
        notes, self.done = _open_job(
            self.out, self.fmt, self.job, self.out.with_name(self.out.name + ".job.json"), self.paths
        )
        return notes

    def todo(self, notes: list[str]) -> list[str]:
        dist = dist_info()
        done = self.done if dist.rank == 0 else set(read_done(self.out, self.fmt))
        todo = [p for p in self.paths if path_key(self.fmt, p) not in done]
        self.skipped, self.paths, self.done = len(self.paths) - len(todo), [], set()
        for note in notes if dist.rank == 0 else []:
            self.log(note)
        return todo

    def work(self, mine: list[str], total: int) -> int:
        dist, out, fmt = dist_info(), self.out, self.fmt
        target = _part(out, dist.rank) if dist.active else out
        self.failed: dict[str, str] = dict(self.missing) if dist.rank == 0 else {}
        bar = _tqdm()(
            total=total,
            unit="img",
            desc="caption",
            file=sys.stderr,
            dynamic_ncols=True,
            disable=not self.progress or dist.rank != 0,
            smoothing=0.05,
        )
        done = 0
        with (
            open(target, "a", encoding="utf-8", newline="") as f,
            open(_part(out, dist.rank, True), "a", encoding="utf-8") as ferr,
        ):
            if fmt == "csv" and target == out and f.tell() == 0:
                f.write(",".join(CSV_HEADER) + "\n")
            captions = caption_paths(self.captioner, mine, self.config, batch_size=self.batch_size, guide=self.guide)
            for n, (path, res) in enumerate(captions, 1):
                if isinstance(res, ImageLoadError):
                    self.failed[path] = res.reason
                    ferr.write(json_line({"image": path, "error": res.reason}))
                    ferr.flush()
                else:
                    f.write(format_line(fmt, path, res))
                    done += 1
                if n % self.batch_size == 0 or n == len(mine):
                    f.flush()  # in the kernel: a kill -9 of this process loses nothing written so far
                    bar.update(min(total, n * dist.world_size) - bar.n)  # rank 0 speaks for all
        bar.close()
        return done

    def seal(self, notes: list[str]) -> dict[str, str]:
        dist = dist_info()
        if dist.active:
            _merge_parts(self.out, self.fmt, set(read_done(self.out, self.fmt)))  # all lines of this run: inputs only
        return _merge_errors(self.out, self.failed, dist.world_size)


def _tqdm():
    from tqdm.auto import tqdm

    return tqdm


def _open_job(out: Path, fmt: str, job: dict, job_path: Path, paths: list[str]) -> tuple[list[str], set[str]]:
    """Rank 0, holding the lock: check the earlier run's state, repair and merge what it left, write
    the job file. (notes, path keys already done)."""
    notes: list[str] = []
    if out.exists() and not job_path.exists():
        raise CapgenError(
            f"{out}: exists and was not written by capgen caption --out (no {job_path.name}); choose another --out"
        )
    old = _read_job(job_path)
    if repair_tail(out):
        notes.append(f"{out.name}: cut its last line, left incomplete by an interrupted run")
    done = set(read_done(out, fmt))
    wanted = {path_key(fmt, p) for p in paths}
    notes += _check_job(out, job, old, done, wanted)
    merged, dropped = _merge_parts(out, fmt, done, wanted)
    del wanted
    if merged:
        notes.append(f"merged {merged} lines left in part files by an interrupted run")
    if dropped:
        notes.append(f"dropped {dropped} lines left in part files for images not among the inputs")
    for stale in out.parent.glob(f"{out.name}.errors.part*"):
        stale.unlink()  # their images were not captioned: they are retried below
    write_json(job_path, job)
    return notes, done


def _merge_errors(out: Path, failed: dict[str, str], world: int) -> dict[str, str]:
    """All ranks' failures -> OUT.errors (rewritten; removed when nothing failed)."""
    for rank in range(world):
        part = _part(out, rank, errors=True)
        if part.is_file():
            repair_tail(part)
            with open(part, encoding="utf-8", errors="replace", newline="\n") as f:
                for line in f:
                    try:  # this run's own lines; one cut short by a kill is skipped (its image is retried)
                        d = json.loads(line)
                        failed[d["image"]] = d["error"]
                    except (ValueError, KeyError, TypeError):
                        continue
            part.unlink()
    errors = out.with_name(out.name + ".errors")
    if failed:
        from capgen.io import atomic_path

        with atomic_path(errors) as tmp:
            tmp.write_text("".join(json_line({"image": p, "error": r}) for p, r in failed.items()), encoding="utf-8")
    else:
        errors.unlink(missing_ok=True)
    return failed


def _with_new_defaults(old, new: dict):
    """An older job's decoding settings with the DecodeConfig fields added since (min_words,
    max_words, ...) at their defaults, which is how that job decoded: its OUT stays resumable."""
    from capgen.decoding import DecodeConfig

    if not isinstance(old, dict):
        return old
    defaults = _decode_dict(DecodeConfig())
    return {**{k: defaults[k] for k in new if k not in old and k in defaults}, **old}


def _decode_dict(config) -> dict:
    from dataclasses import asdict, is_dataclass

    return (
        {k: v for k, v in asdict(config).items() if isinstance(v, (int, float, str, bool, type(None)))}
        if is_dataclass(config)
        else {"repr": repr(config)}
    )
