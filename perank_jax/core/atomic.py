"""Atomic file writes: every output of perank-jax is written to a temporary file in the
target's directory and renamed into place, so a reader never sees a half-written file
and an error (or Ctrl-C) leaves the previous file, if any, untouched."""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, IO


def target_mode(path, directory: bool = False) -> int:
    """The mode a replaced file keeps, or what a plain open(path, "w") (os.mkdir for a directory)
    would give: 0o666 (0o777) & ~umask."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        mask = os.umask(0)
        os.umask(mask)
        return (0o777 if directory else 0o666) & ~mask


@contextmanager
def atomic_path(path):
    """Yield a fresh temp file path next to `path` for the caller to write; on success it is given
    the mode the replaced file had (or the umask's default for a new file) and renamed to `path`;
    on any error it is removed and `path` is untouched; an OSError that names no file (a full
    disk: "No space left on device") is raised again naming `path`."""
    tmp = fresh_temp(path)
    try:
        yield str(tmp)
        os.chmod(tmp, target_mode(path))
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:      # a full disk names the output it hit
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise


@contextmanager
def file_lock(path):
    """Hold an exclusive advisory lock on `path` (created if missing) for the block: processes that
    would build the same cached output one after the other instead of at once (POSIX fcntl; where
    that is missing the block runs unlocked, and the atomic rename still keeps outputs whole)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            import fcntl
        except ImportError:             # pragma: no cover - not POSIX
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def fresh_temp(path, directory: bool = False) -> Path:
    """A new, empty temp file (or directory) next to `path`, created by this call with a unique
    name (`.NAME.<pid>-<random>.tmp`), so no user file can be mistaken for it and removing it on
    error can never delete anything this process did not make. Temps of `path` left by a process
    that no longer runs (killed with SIGKILL, a power cut) are removed first (`clean_stale_temps`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path)
    prefix = f".{path.name}.{os.getpid()}-"
    if directory:
        return Path(tempfile.mkdtemp(dir=path.parent, prefix=prefix, suffix=".tmp"))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:                # e.g. EPERM: it exists, owned by someone else
        return True
    return True


def clean_stale_temps(path) -> list[Path]:
    """Remove the temp files/directories of `path` (fresh_temp's exact naming: `.NAME.<pid>-` and
    8 random characters, `.tmp`) whose process is gone; a live run's temps and anything named
    otherwise are never touched. Returns what was removed."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)-[a-z0-9_]{{8}}\.tmp")
    removed = []
    try:
        names = os.listdir(path.parent)
    except OSError:
        return removed
    for name in names:
        m = pattern.fullmatch(name)
        if m and int(m.group(1)) != os.getpid() and not _running(int(m.group(1))):
            p = path.parent / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def replace_dir(tmp_dir, out_dir, ours) -> None:
    """Move the finished directory `tmp_dir` to `out_dir`. An existing `out_dir` is replaced only
    when it holds nothing but names in `ours` (an earlier output of the same kind) and is refused
    (ValueError, nothing touched) when it holds anything else, so a user's files are never lost."""
    out = Path(out_dir)
    os.chmod(tmp_dir, target_mode(out, directory=True))   # not mkdtemp's private 0o700
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"{out}: is a file, expected an output directory path")
        foreign = sorted(p.name for p in out.iterdir() if p.name not in set(ours))
        if foreign:
            raise ValueError(f"{out}: exists and holds files this command did not write ({', '.join(foreign[:5])}"
                             f"{' ...' if len(foreign) > 5 else ''}); choose a new output directory")
        old = fresh_temp(out, directory=True)
        os.replace(out, old / "old")           # a rename, then the new one in place: never half of each
        os.replace(tmp_dir, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp_dir, out)


def atomic_write(path, write: Callable[[IO], None], binary: bool = False, fsync: bool = False) -> Path:
    """Call `write(f)` on a temp file next to `path`, then rename it to `path` (atomic_path)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") if binary else open(tmp, "w", encoding="utf-8") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
    return path


def atomic_text(path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text))


def atomic_json(path, obj, indent: int | None = 2) -> Path:
    return atomic_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")
