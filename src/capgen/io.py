"""Atomic file writing (a crash never leaves a half-written file that loads as valid), and the cache root.

A full disk is reported as `DiskFullError` ("no space left on device writing X (needs ~N MB)"),
and the half-written temporary is removed, so the previous version of X (if any) stays valid.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


def _disk_full_error(path: Path, needs: int | None = None, at_least: bool = False):
    from capgen.errors import DiskFullError

    try:
        free = shutil.disk_usage(path.parent if not path.is_dir() else path).free
    except OSError:
        free = None
    need = f"needs {'more than ' if at_least else ''}~{max(needs / 2**20, 0.1):.1f} MB" if needs else "needs more space"
    have = f", {free / 2**20:.1f} MB free" if free is not None else ""
    return DiskFullError(
        f"no space left on device writing {path} ({need}{have}); free some space and run the same command again"
    )


def is_disk_full(e: BaseException, where: Path | None = None) -> bool:
    """ENOSPC/EDQUOT, or torch's write failure (torch.save reports a full disk as a RuntimeError
    "[enforce fail at inline_container.cc] unexpected pos") when `where` has under 1 MB free."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    if (
        isinstance(e, RuntimeError)
        and where is not None
        and ("inline_container" in str(e) or "PytorchStreamWriter" in str(e))
    ):
        try:
            return shutil.disk_usage(where).free < 2**20
        except OSError:
            return False
    return False


def _size(path: Path) -> int:
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
    except OSError:
        return 0


def _short(name: str, limit: int = 200) -> str:
    """`name` cut to at most `limit` bytes: the temporary's name adds ~14 characters to it, and a
    legal name of up to 255 bytes must still get a legal temporary."""
    while len(os.fsencode(name)) > limit:
        name = name[:-1]
    return name


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{_short(path.name)}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise (_disk_full_error(path) if is_disk_full(e) else e) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o644)  # mkstemp makes 0600; outputs are ordinary readable files
        os.replace(tmp_path, path)
    except (OSError, RuntimeError) as e:
        if not is_disk_full(e, path.parent):
            raise
        written = _size(tmp_path)
        tmp_path.unlink(missing_ok=True)
        raise _disk_full_error(path, written, at_least=True) from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def preallocate(path: Path, what: Path | None = None) -> None:
    """Reserve the blocks of a (sparse) file now, so that writes through a memory map can never hit
    a full disk later: the kernel answers that with SIGBUS, which kills the process without a word."""
    size = path.stat().st_size
    with open(path, "rb+") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, size)
        except OSError as e:
            if is_disk_full(e):
                raise _disk_full_error(what or path, size) from None
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            # A file system without fallocate: the best we can do is compare with the free space.
            if shutil.disk_usage(path.parent).free < size:
                raise _disk_full_error(what or path, size) from None


# ---- reading files that are data ----------------------------------------------------------------------
# Every JSON/YAML/text file capgen reads back is data that may be damaged or hostile: one reader for
# them turns every way it can be wrong (not UTF-8, malformed, nested past the recursion limit, an
# integer too long to convert, YAML aliases) into one error naming the file, never a traceback.

ECHO_LIMIT = 200  # characters of a value an error message repeats


def echo(value: Any, limit: int = ECHO_LIMIT) -> str:
    """repr(value) for an error message, cut to `limit` characters: a hostile file cannot fill the terminal."""
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _error(error: type | None):
    if error is None:
        from capgen.errors import CapgenError

        return CapgenError
    return error


def read_text(path: str | os.PathLike, what: str, error: type | None = None) -> str:
    """The UTF-8 text of `path`; `error` (a CapgenError class) naming the file when it cannot be read."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise _error(error)(f"{path}: cannot read {what} ({e.strerror or type(e).__name__})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _error(error)(
            f"{path}: {what} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); save it as UTF-8"
        ) from None


def parse_json(text: str, where: str, what: str, error: type | None = None) -> Any:
    """json.loads, with every failure (malformed, nested too deep, an integer of thousands of digits)
    as `error` naming `where`."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _error(error)(f"{where}: malformed {what} ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise _error(error)(f"{where}: malformed {what} (nested too deeply)") from None
    except ValueError as e:  # int() past sys.get_int_max_str_digits
        raise _error(error)(f"{where}: malformed {what} ({echo(str(e), 100)})") from None


def read_json(path: str | os.PathLike, what: str, error: type | None = None) -> Any:
    return parse_json(read_text(path, what, error), str(path), what, error)


def parse_yaml(text: str, where: str, what: str, error: type | None = None) -> Any:
    """yaml.safe_load without aliases: a few hundred bytes of nested aliases ("billion laughs") would
    expand to gigabytes. Malformed, too deep or too long values are `error` naming `where`."""
    import yaml

    class _NoAliases(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(
                    None, None, "aliases (*name) are not allowed here; write the value out", event.start_mark
                )
            return super().compose_node(parent, index)

    try:
        return yaml.load(text, Loader=_NoAliases)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or (str(e).splitlines() or [type(e).__name__])[0]
        raise _error(error)(f"{where}: malformed YAML {what} ({echo(problem, 150)}{_yaml_mark(e)})") from None
    except RecursionError:
        raise _error(error)(f"{where}: malformed YAML {what} (nested too deeply)") from None
    except ValueError as e:  # int() past sys.get_int_max_str_digits
        raise _error(error)(f"{where}: malformed YAML {what} ({echo(str(e), 100)})") from None


def _yaml_mark(e) -> str:
    mark = getattr(e, "problem_mark", None)
    return f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""


def read_yaml(path: str | os.PathLike, what: str, error: type | None = None) -> Any:
    return parse_yaml(read_text(path, what, error), str(path), what, error)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")


def json_marker(name: str, key: str, value: Any) -> Callable[[Path], bool]:
    """An atomic_dir `replace_if`: the folder holds JSON file `name` whose field `key` is `value`
    (a command's own format marker and kind). A file of that name that says anything else, or
    cannot be read, does not qualify: a web app's manifest.json is not an export."""

    def check(folder: Path) -> bool:
        try:
            obj = read_json(folder / name, name)
        except Exception:  # noqa: BLE001  unreadable or not ours: never replace
            return False
        return isinstance(obj, dict) and obj.get(key) == value and type(obj.get(key)) is type(value)

    return check


@contextmanager
def atomic_dir(
    path: str | os.PathLike, replace_if: Callable[[Path], bool] | None = None, what: str = "folder"
) -> Iterator[Path]:
    """Build a directory under a temporary name and rename it into place when done.

    An existing non-empty `path` is replaced only if `replace_if(path)` says it is an earlier output
    of the same command (see json_marker); anything else is an error naming `what` was expected.
    """
    from capgen.errors import CapgenError

    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise CapgenError(f"{path}: exists and is not a directory; choose another --out")
        if any(path.iterdir()) and not (replace_if and replace_if(path)):
            raise CapgenError(
                f"{path}: folder exists, is not empty and is not a {what} this command wrote; "
                f"choose another --out (nothing was changed)"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{_short(path.name)}.", suffix=".tmp", dir=path.parent))
    except OSError as e:
        raise (_disk_full_error(path) if is_disk_full(e) else e) from None
    try:
        try:
            yield tmp
        except OSError as e:
            if not is_disk_full(e):
                raise
            written = _size(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
            raise _disk_full_error(path, written, at_least=True) from None
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# Folders this process holds with allow_nested=True, with how many holders. flock locks belong to an
# open file, so a second open+flock of the same .lock from this process would refuse its own holder:
# a tuning trial locks its run folder, then `train` locks it again.
_HELD: dict[str, int] = {}


@contextmanager
def file_lock(lock: str | os.PathLike, busy: str) -> Iterator[Path]:
    """Hold an exclusive flock on file `lock` (created if missing); CapgenError `busy` when another
    process holds it. The kernel drops the lock when the process dies, so a killed job never leaves
    a stale lock behind. The one lock of every capgen writer (folder_lock, bulk jobs)."""
    from capgen.errors import CapgenError

    lock = Path(lock)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise CapgenError(
            f"{lock}: cannot open it as this job's lock file ({e.strerror}); expected a plain file (or none); "
            f"remove it or choose another output"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise CapgenError(busy) from None
    try:
        yield lock
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextmanager
def folder_lock(path: str | os.PathLike, what: str, allow_nested: bool = False) -> Iterator[Path]:
    """Hold an exclusive lock on folder `path` (created if missing) while its writer runs.

    A second writer gets a one-line CapgenError instead of silently interleaving its writes.
    allow_nested: this process's own writers may lock the folder again inside this one (a tuning
    trial runs `train` in the run folder it holds). The lock is file_lock on PATH/.lock.
    """
    from capgen.errors import CapgenError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CapgenError(f"{path}: exists and is not a directory; choose another folder")
    key = str(path.resolve())
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield path
        finally:
            _HELD[key] -= 1
        return
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    busy = f"{path}: another capgen process is writing this {what}; wait for it to finish or choose another folder"
    with file_lock(path / ".lock", busy):
        if allow_nested:
            _HELD[key] = 1
        try:
            yield path
        finally:
            _HELD.pop(key, None)
            if created and path.is_dir() and [p.name for p in path.iterdir()] == [".lock"]:  # failed before writing
                (path / ".lock").unlink()
                path.rmdir()


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where exported ONNX graphs are cached: `cache_dir`, else $CAPGEN_CACHE, else ~/.cache/capgen."""
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("CAPGEN_CACHE") or Path.home() / ".cache" / "capgen")


def remove_leftovers(paths, pattern) -> int:
    """Delete the files matching `pattern` (a compiled regex on names) in the folders of `paths`, each
    folder read once: temporaries a killed run left beside its outputs. Returns how many went."""
    removed = 0
    for folder in {Path(p).parent for p in paths}:
        try:
            names = os.listdir(folder)
        except OSError:  # not created yet, or unreadable: nothing of ours there
            continue
        for name in names:
            if pattern.match(name):
                Path(folder, name).unlink(missing_ok=True)
                removed += 1
    return removed
