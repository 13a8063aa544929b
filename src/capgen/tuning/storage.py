"""Where a study lives, what it was made for, and trials whose worker died.

Default storage: Optuna's journal file DIR/journal.log. Appends are whole lines under a file lock, so
several local processes share it and a kill -9 loses at most an unfinished line (repaired on the next
start). With --storage URL (e.g. postgresql://user:pass@host/db) workers on several machines share
one study through the database.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from capgen.errors import CapgenError
from capgen.io import folder_lock, is_disk_full, write_json

JOURNAL = "journal.log"
STUDY_JSON = "study.json"
HOST = socket.gethostname()


class StudyError(CapgenError):
    """A study folder or database is unusable, or belongs to another dataset or space."""


def open_storage(study_dir: Path, url: str | None):
    import optuna

    if url is None:
        study_dir.mkdir(parents=True, exist_ok=True)
        journal = study_dir / JOURNAL
        _repair_journal(journal)
        _check_journal(journal)
        backend = optuna.storages.journal.JournalFileBackend(
            str(journal), lock_obj=optuna.storages.journal.JournalFileOpenLock(str(journal))
        )
        with replaying(journal):
            return optuna.storages.JournalStorage(backend)
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    except ModuleNotFoundError as e:
        raise StudyError(
            f"--storage {_masked(url)}: the database driver {e.name!r} is not installed "
            f"(PostgreSQL: pip install psycopg2-binary)"
        ) from None
    except Exception as e:  # sqlalchemy's OperationalError, ArgumentError, ...: all mean "cannot use it"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StudyError(f"--storage {_masked(url)}: cannot reach the database ({first[:200]})") from None


def _masked(url: str) -> str:
    """The URL without its password, for messages."""
    head, at, tail = url.rpartition("@")
    if not at or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, cred = head.partition("//")
    return f"{scheme}//{cred.split(':', 1)[0]}:***@{tail}"


def _repair_journal(path: Path) -> None:
    """Drop a half-written last line (a worker killed mid-append); Optuna refuses to read past one."""
    if path.exists() and not path.is_file():
        raise StudyError(
            f"{path}: the study journal must be a file, not a folder or device; move it away or choose another --study"
        )
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        try:  # Optuna would stop at the first bad byte with a UnicodeDecodeError
            data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise StudyError(
                f"{path}: the study journal is not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
                f"{e.start}); restore it or start a new --study"
            ) from None
        if data.endswith(b"\n"):
            return
        f.truncate(data.rfind(b"\n") + 1)


def _damaged(path: Path, what: str) -> StudyError:
    return StudyError(
        f"{path}: damaged study journal ({what}); restore it from a copy, or start a new study with another --study"
    )


def _check_journal(path: Path) -> None:
    """Every line one JSON record with a known op_code, before Optuna replays the file: it fails on
    damage with JSONDecodeError, UnicodeDecodeError, KeyError or "AssertionError: Should not reach."."""
    from optuna.storages.journal._storage import JournalOperation  # the op codes Optuna replays

    if not path.is_file():
        return
    try:
        data = path.read_bytes()
    except OSError as e:
        raise StudyError(f"{path}: cannot read the study journal ({e.strerror or e})") from None
    ops = {op.value for op in JournalOperation}
    for n, line in enumerate(data.split(b"\n")[:-1], start=1):  # the last piece is "" (repaired above)
        try:
            record = json.loads(line)  # bytes: not UTF-8 is a ValueError too
        except (ValueError, RecursionError):
            raise _damaged(path, f"line {n} is not a JSON record") from None
        op = record.get("op_code") if isinstance(record, dict) else None
        if type(op) is not int or op not in ops:
            raise _damaged(path, f"line {n} has no known op_code") from None


@contextmanager
def replaying(path: Path) -> Iterator[None]:
    """Optuna reading the journal (it replays the file on every access): records that parse but do
    not fit together (a bit flip in a key or an id) fail inside it with any type; name the file."""
    try:
        yield
    except CapgenError:
        raise
    except OSError as e:
        if is_disk_full(e):
            raise
        raise StudyError(f"{path}: cannot read the study journal ({e.strerror or e})") from None
    except Exception as e:
        raise _damaged(path, f"Optuna cannot replay it: {type(e).__name__}: {str(e)[:120]}") from None


def fingerprint(data, cache, space, base) -> dict:
    """What a study was made for: the dataset, the features, the space and the base config."""

    def digest(obj) -> str:
        return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]

    splits = {s: [r.image for r in data.split(s)] for s in ("train", "val")}
    return {
        "data": digest([data.vocab.itos, splits]),
        "features": digest([cache.encoder_spec, len(cache)]),
        "space": space.fingerprint(),
        "base config": digest(base.to_dict()),
        "data_path": str(Path(data.root).resolve()),
        "features_path": str(Path(cache.root).resolve()),
        "space_path": space.source,
    }


def check_fingerprint(study, study_dir: Path, fp: dict) -> None:
    """Record `fp` in a new study; refuse a study made for something else, saying what differs."""
    saved = study.user_attrs.get("fingerprint")
    if saved is None:
        if any(p.name not in (JOURNAL, f"{JOURNAL}.lock", STUDY_JSON, "trials") for p in study_dir.iterdir()):
            raise StudyError(f"{study_dir}: not empty and not a capgen study; choose another --study")
        study.set_user_attr("fingerprint", fp)
        _write_study_json(study_dir, study, fp)
        return
    where = {
        "data": f"--data (study: {saved.get('data_path')}, now: {fp['data_path']})",
        "features": f"--features (study: {saved.get('features_path')}, now: {fp['features_path']})",
        "space": f"--space (study: {saved.get('space_path')}, now: {fp['space_path']})",
        "base config": "--config/--set (the base run config)",
    }
    differs = [where[k] for k in where if saved.get(k) != fp[k]]
    if differs:
        raise StudyError(
            f"{study_dir}: this study was made for another {'; '.join(differs)}; use the same "
            f"inputs to continue it, or choose another --study"
        )
    if not (study_dir / STUDY_JSON).is_file():  # another machine's folder for a shared --storage study
        study_dir.mkdir(parents=True, exist_ok=True)
        _write_study_json(study_dir, study, fp)


def _write_study_json(study_dir: Path, study, fp: dict) -> None:
    """study.json: for people and scripts (the journal is the study's truth); says its format."""
    write_json(study_dir / STUDY_JSON, {"capgen_study": 1, "study_name": study.study_name, "fingerprint": fp})


def fail_dead_trials(study) -> list:
    """Mark FAIL the RUNNING trials of this host whose worker died (their run folder lock is free).

    Returns those trials, so the caller can run their points again.
    """
    import optuna
    from optuna.trial import TrialState

    dead = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        run_dir = t.user_attrs.get("run_dir")
        if t.user_attrs.get("host") != HOST or not run_dir:
            continue  # another machine's worker, or one that has not locked its folder yet
        try:
            with folder_lock(run_dir, "tuning trial"):
                # Optuna's public API only finishes trials of this process: use the storage directly.
                study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
                study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except CapgenError:
            continue  # locked: its worker is alive
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker got there first
        dead.append(t)
    return dead


def worker_id() -> str:
    return f"{HOST}:{os.getpid()}"
