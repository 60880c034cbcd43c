"""Download the pinned public source files (perank_jax/data/sources.json) resumably, checksum-verified.

Each manifest entry names one file: `name` (its path under `<out>/downloads/`), `url` (a file at
a pinned commit, e.g. raw.githubusercontent.com/<owner>/<repo>/<40-hex commit>/<path>, or a
release asset), `size`, `sha256`, `source` and `terms`. A file is downloaded into `<name>.part`
(an interrupted download resumes with an HTTP Range request), its size and sha256 are checked,
and only then is it renamed into place; a cached file that fails its checksum is fetched again,
and a download whose checksum differs from the manifest is removed and refused (FetchError, one
line). Nothing outside `<out>/downloads` is written. `mirror` (an http(s):// or file:// base URL,
or a local directory) replaces the host of every URL: the file of `https://HOST/PATH` is read
from `MIRROR/PATH`, which is how the tests (and machines without internet) fetch offline.
The conversion into the layout the builders read is perank_jax/data/prepare.py.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Mapping
from urllib.parse import urlparse

from perank_jax.data.trec import DataError

MANIFEST = Path(__file__).with_name("sources.json")
FIELDS = ("name", "url", "size", "sha256", "source", "terms")
CHUNK = 1 << 16
PINNED = re.compile(r"^https://(raw\.githubusercontent\.com/[^/]+/[^/]+/[0-9a-f]{40}/"
                    r"|github\.com/[^/]+/[^/]+/releases/download/[^/]+/)\S+$")


class FetchError(DataError):
    """A source file that cannot be downloaded or does not match its pinned size and sha256."""


@dataclass(frozen=True)
class SourceFile:
    name: str       # path under <out>/downloads/
    url: str
    size: int
    sha256: str
    source: str
    terms: str


def load_manifest(manifest: str | os.PathLike | Mapping | None = None) -> list[SourceFile]:
    """The manifest's files (default: the packaged sources.json; or a path, or the parsed object).
    A malformed entry raises DataError naming the manifest, the entry and the field."""
    where = str(manifest) if isinstance(manifest, (str, os.PathLike)) else "manifest"
    if manifest is None or isinstance(manifest, (str, os.PathLike)):
        path = Path(manifest) if manifest is not None else MANIFEST
        where = str(path)
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"{path}: manifest not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{path}: not a readable JSON manifest ({e})") from None
    files = manifest.get("files") if isinstance(manifest, Mapping) else None
    if not isinstance(files, list) or not files:
        raise DataError(f"{where}: expected an object with a non-empty list 'files'")
    out, seen = [], set()
    for i, e in enumerate(files):
        at = f"{where}: files[{i}]"
        if not isinstance(e, Mapping):
            raise DataError(f"{at}: not an object")
        missing = [k for k in FIELDS if k not in e]
        if missing:
            raise DataError(f"{at}: missing field(s) {', '.join(missing)}")
        f = SourceFile(**{k: e[k] for k in FIELDS})
        at = f"{where}: {f.name!r}"
        name = PurePosixPath(f.name) if isinstance(f.name, str) and f.name.strip() else None
        if name is None or name.is_absolute() or ".." in name.parts or "\\" in f.name or str(name) != f.name:
            raise DataError(f"{at}: name must be a plain relative path (no '..', no leading '/')")
        if f.name in seen:
            raise DataError(f"{at}: name given twice")
        seen.add(f.name)
        if not isinstance(f.url, str) or urlparse(f.url).scheme not in ("https", "http", "file"):
            raise DataError(f"{at}: url must be an https://, http:// or file:// URL")
        if isinstance(f.size, bool) or not isinstance(f.size, int) or f.size <= 0:
            raise DataError(f"{at}: size must be a positive integer, got {f.size!r}")
        if not isinstance(f.sha256, str) or not re.fullmatch(r"[0-9a-f]{64}", f.sha256):
            raise DataError(f"{at}: sha256 must be 64 lower-case hex digits")
        if not all(isinstance(v, str) and v.strip() for v in (f.source, f.terms)):
            raise DataError(f"{at}: source and terms must be non-empty text")
        out.append(f)
    return out


def is_pinned(url: str) -> bool:
    """A raw.githubusercontent.com URL at a 40-hex commit, or a GitHub release asset."""
    return bool(PINNED.match(url))


def mirror_url(url: str, mirror: str | os.PathLike | None) -> str:
    """`url` read from `mirror` instead of its host: MIRROR + the URL's path."""
    if mirror is None:
        return url
    base = str(mirror)
    if urlparse(base).scheme not in ("http", "https", "file"):
        base = Path(base).resolve().as_uri()
    return base.rstrip("/") + urlparse(url).path


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _open(url: str, offset: int):
    """(readable stream, resumed): resumed is False when the bytes start at 0 despite `offset`."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        try:
            f = open(urllib.request.url2pathname(parsed.path), "rb")
        except FileNotFoundError:
            raise FetchError(f"{url}: not found") from None
        f.seek(offset)
        return f, True
    req = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        resp = urllib.request.urlopen(req, timeout=60)
    except urllib.error.HTTPError as e:
        if e.code == 416:
            return None, True         # nothing past `offset`: the source is not longer than the .part
        if e.code < 500:
            raise FetchError(f"{url}: HTTP {e.code} {e.reason}") from None
        raise
    resumed = resp.status == 206 and (resp.headers.get("Content-Range") or "").startswith(f"bytes {offset}-")
    if resp.status == 206 and not resumed:
        resp.close()
        raise OSError(f"unexpected Content-Range {resp.headers.get('Content-Range')!r}")
    return resp, resumed


def _download(url: str, part: Path, offset: int, limit: int) -> None:
    """Append the bytes of `url` from `offset` to `part` (restarting it when the server sends the
    whole file), stopping once `part` holds `limit` bytes (a source longer than pinned cannot fill
    the disk). Errors propagate; what was written stays for the next attempt to resume."""
    stream, resumed = _open(url, offset)
    if stream is None:
        return
    size = offset if resumed else 0
    with stream, open(part, "ab" if resumed and offset else "wb") as out:
        while size < limit:
            block = stream.read1(min(CHUNK, limit - size))      # what has arrived: progress is kept
            if not block:
                break
            out.write(block)
            size += len(block)


def fetch_file(f: SourceFile, dest: Path, mirror=None, attempts: int = 3,
               log: Callable[[str], None] = lambda m: None) -> Path:
    """`dest` holding exactly the pinned bytes of `f`: kept if it already does, else downloaded
    (resuming `dest.part`) and verified before the rename. Raises FetchError (nothing left at
    `dest`) when the bytes differ from the manifest or the download keeps failing."""
    if dest.exists():
        if dest.stat().st_size == f.size and sha256_file(dest) == f.sha256:
            return dest
        log(f"{dest}: does not match its pinned sha256; fetching it again")
        dest.unlink()
    url, part = mirror_url(f.url, mirror), dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    last, fresh_retry = None, False
    for _ in range(attempts):
        have = part.stat().st_size if part.exists() else 0
        if have > f.size:
            part.unlink()
            have = 0
        if have < f.size:
            log(f"{f.name}: {'resuming at byte ' + str(have) if have else 'downloading'} {url}")
            try:
                _download(url, part, have, limit=f.size + 1)
            except (OSError, http.client.HTTPException) as e:      # dropped connection, timeout, 5xx
                last = e
                continue
        got = part.stat().st_size if part.exists() else 0
        if got < f.size:
            if got == have:                  # no progress: the source has no more bytes
                part.unlink(missing_ok=True)
                raise FetchError(f"{url}: only {got} of the pinned {f.size} bytes are there ({f.source}); "
                                 f"nothing kept")
            last = f"stopped at byte {got}"
            continue
        if got == f.size and sha256_file(part) == f.sha256:
            os.replace(part, dest)
            return dest
        part.unlink()
        if have and not fresh_retry:         # the kept .part may have been the bad piece: once afresh
            fresh_retry = True
            continue
        raise FetchError(f"{url}: {got} bytes with a sha256 other than the pinned {f.sha256[:12]}... "
                         f"({f.size} bytes, {f.source}); the download was removed, nothing kept")
    raise FetchError(f"{url}: download failed after {attempts} attempts ({last}); "
                     f"rerun to resume from {part}")


def fetch_all(out, manifest=None, mirror=None, sets=None, attempts: int = 3,
              log: Callable[[str], None] = lambda m: None) -> dict[str, Path]:
    """Every manifest file (or those whose name starts with one of `sets` + "/") under
    `<out>/downloads/<name>`, verified: {name: path}."""
    root = Path(out) / "downloads"
    files = [f for f in load_manifest(manifest) if sets is None or f.name.split("/")[0] in set(sets)]
    if not files:
        raise DataError(f"no manifest file belongs to the sets {', '.join(sets)}")
    return {f.name: fetch_file(f, root / f.name, mirror=mirror, attempts=attempts, log=log) for f in files}
