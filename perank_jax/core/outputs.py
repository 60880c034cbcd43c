"""Outputs that never lose data: the rules for what a command may write where, defined once.

- `check_outputs`: before any work, an output path of the wrong kind, one path given for two
  outputs, an output that IS one of the command's inputs (same file by path, symlink or hard
  link), or an output directory that cannot be written is refused (OutputError, one line).
- `claim_dir`: a command writes into an existing directory only if the directory is its own
  (a hidden marker `.perank-output` names the command that made it) or holds none of the names
  the command writes; a user's `docids.txt`, `config.yaml` or `tables.md` is never replaced.
- `dir_lock`: one writer per output directory (`fcntl.flock` on the directory itself, so no lock
  file is left behind; released when the process exits or crashes); a second one refuses.
- `commit_files`: several files that belong together (a run and its stats sidecar) are written
  to temp files, a journal naming them is written, then all are renamed with SIGINT/SIGTERM
  held back. A reader never sees a mismatched pair unless the process is killed outright
  (SIGKILL, power loss) between two renames; the next `commit_files` to the same output then
  finishes the interrupted commit (every temp was complete before the journal existed).
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Mapping

from perank_jax.core.atomic import atomic_json, fresh_temp, target_mode

MARKER = ".perank-output"


class OutputError(ValueError):
    """An output path that would lose data or cannot be written (printed as one line, exit 2)."""


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def check_outputs(files=(), dirs=(), inputs: Mapping[str, object] | None = None) -> None:
    """Refuse, before any work, an output file path that is a directory, an output directory that
    is a file, one path given for two outputs, an output that is also an input (`inputs`: flag ->
    path; compared as files, so symlinks and hard links count), or an output whose directory
    cannot be written; create missing parent directories."""
    seen = []
    ins = [(flag, Path(p)) for flag, p in (inputs or {}).items() if p]
    for p, want_dir in [(Path(f), False) for f in files if f] + [(Path(d), True) for d in dirs if d]:
        if p.exists() and p.is_dir() != want_dir:
            raise OutputError(f"{p}: is a {'file' if want_dir else 'directory'}, expected an output "
                              f"{'directory' if want_dir else 'file'} path")
        if any(_same(p, q) for q in seen):
            raise OutputError(f"{p}: given for two outputs (e.g. --stats equal to --out)")
        for flag, q in ins:
            if q.exists() and (p.exists() or p.is_symlink()) and _same(p, q):
                raise OutputError(f"{p}: is also this command's input {flag} {q}; writing the output there "
                                  "would destroy the input: choose another output path")
        seen.append(p)
        p.parent.mkdir(parents=True, exist_ok=True)
        parent = p if want_dir and p.is_dir() else p.parent
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"{p}: cannot write into {parent} (permission denied or read-only)")


def claim_dir(path, command: str, writes: Iterable[str], ours: Iterable[str] = (), mark: bool = True) -> Path:
    """Make `path` (created if missing) an output directory of `perank <command>`, refusing
    (OutputError, nothing touched) a directory that is not already one of its outputs and holds
    any of the names in `writes`. A directory is the command's own when its marker names the
    command, or (outputs made before markers existed) when it holds one of the names in `ours`.
    With mark=False the marker is left for `mark_dir`, called just before the first output."""
    out = Path(path)
    if out.is_dir():
        mine = any((out / n).exists() for n in ours)
        try:
            mine = mine or json.loads((out / MARKER).read_text()).get("command") == command
        except (OSError, ValueError, AttributeError):
            pass
        clash = sorted(n for n in writes if (out / n).exists())
        if clash and not mine:
            raise OutputError(f"{out}: holds {', '.join(clash[:5])}{' ...' if len(clash) > 5 else ''} that "
                              f"`perank {command}` did not write; choose a new output directory (or move "
                              "those files away)")
    out.mkdir(parents=True, exist_ok=True)
    if mark:
        mark_dir(out, command)
    return out


def mark_dir(path, command: str) -> None:
    """Mark `path` as an output directory of `perank <command>` (see claim_dir)."""
    if not (Path(path) / MARKER).exists():
        atomic_json(Path(path) / MARKER, {"command": command})


@contextmanager
def dir_lock(path, command: str):
    """Hold an exclusive lock on the directory `path` (created if missing) for the duration; a
    second holder (another process, or another call in this one) is refused with one line."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OutputError(f"{out}: another `perank {command}` is writing into this directory now; wait for "
                          "it to finish or choose another output directory") from None
    try:
        yield out
    finally:
        os.close(fd)                                   # closing the descriptor releases the lock


def _journal(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.commit"


@contextmanager
def _signals_held():
    """SIGINT/SIGTERM wait (pending, delivered at the end) while the renames run."""
    held = {signal.SIGINT, signal.SIGTERM}
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _roll_forward(journal: Path) -> None:
    pairs = json.loads(journal.read_text())
    for tmp, dest in pairs:
        if os.path.exists(tmp):
            os.replace(tmp, dest)
    journal.unlink()


def recover_commit(dest) -> bool:
    """Finish a commit of `dest` that a killed process left between two renames; True if one was."""
    journal = _journal(Path(dest))
    if not journal.exists():
        return False
    try:
        _roll_forward(journal)
    except (ValueError, TypeError):                  # not a journal of ours: leave it alone
        return False
    return True


def commit_files(writes: list[tuple[object, Callable[[str], object]]]) -> list[Path]:
    """Write several files as one commit: `writes` is [(destination, write(temp_path))]. Every
    file is written to a temp next to its destination first; nothing is replaced unless all of
    them were written (an error or Ctrl-C before leaves every old file as it was)."""
    dests = [Path(d) for d, _ in writes]
    for d in dests:
        recover_commit(d)
    temps, journal = [], _journal(dests[0])
    try:
        for d, write in writes:
            temps.append(fresh_temp(d))
            write(str(temps[-1]))
            os.chmod(temps[-1], target_mode(d))
        atomic_json(journal, [[str(t.resolve()), str(d.resolve())] for t, d in zip(temps, dests)])
    except BaseException:
        for t in temps:
            t.unlink(missing_ok=True)
        raise
    with _signals_held():
        _roll_forward(journal)
    return dests
