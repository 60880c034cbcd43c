"""Atomic file writes: every output of perank-jax is written to a temporary file in the
target's directory and renamed into place, so a reader never sees a half-written file
and an error (or Ctrl-C) leaves the previous file, if any, untouched."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, IO


def target_mode(path) -> int:
    """The mode a replaced file keeps, or what a plain open(path, "w") would give (0o666 & ~umask)."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


@contextmanager
def atomic_path(path):
    """Yield a fresh temp file path next to `path` for the caller to write; on success it is given
    the mode the replaced file had (or the umask's default for a new file) and renamed to `path`;
    on any error it is removed and `path` is untouched."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, target_mode(path))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
