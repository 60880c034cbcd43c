"""Embedding cache: read a corpus encoded once by a frozen dense encoder (written by
`perank_jax.data.embcache_build`), for training and reranking without running the encoder again.

Layout of a finished cache directory:
    embeddings.npy   float32 [count, dim], memory-mappable (np.load(..., mmap_mode="r"))
    docids.txt       one document id per line, row i of embeddings.npy <-> line i
    metadata.json    encoder (path, name, fingerprint, architecture), pooling, normalize,
                     max_length, dtype, dim, count, corpus (path, fingerprint, title_format),
                     sha256 of the embedding data, and `checksums`: the sha256 of every chunk of
                     `chunk_rows` rows of embeddings.npy and of docids.txt. Written LAST: without
                     it nothing is complete.

Corruption is caught cheaply, chunk by chunk over a memory map: `load_embedding_cache` checks
every chunk (and docids.txt) against metadata.json and refuses a mismatch naming the rows (or,
with verify="lazy", each chunk the first time one of its rows is read). Older caches without
per-chunk checksums are checked against their whole-file sha256.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

CACHE_VERSION = 1
META, EMB, IDS, PARTIAL = "metadata.json", "embeddings.npy", "docids.txt", ".partial"


class CacheError(ValueError):
    """Missing, incomplete, corrupt or mismatched embedding cache."""


class CacheWarning(UserWarning):
    """An embedding cache whose integrity cannot be checked (no checksums)."""


class DamagedCacheError(CacheError):
    """embeddings.npy is missing, truncated or of the wrong shape (not merely unreadable to us)."""


# ------------------------------------------------------------------ checks shared with the writer
def sha256_of(a: np.ndarray) -> str:
    """sha256 of an array's data bytes (a memory-mapped slice is read, not copied)."""
    return hashlib.sha256(memoryview(np.ascontiguousarray(a)).cast("B")).hexdigest()


def row_ranges(n: int, rows: int) -> list[tuple[int, int]]:
    return [(s, min(s + rows, n)) for s in range(0, n, rows)]


def _chunks_changed(emb_path: Path, bad: list[tuple[int, int]], rows: int, n: int) -> CacheError:
    """The one refusal of embedding rows that no longer match their chunk checksums."""
    return CacheError(f"{emb_path}: checksum mismatch in {describe_rows(bad, rows, n)} (the file changed after it was "
                      "written); rerun `perank encode` with the same arguments to re-encode them")


def describe_rows(bad: list[tuple[int, int]], rows: int, n: int) -> str:
    """'rows 20-22 (chunk 5 of 5) and 1 more chunk(s)' for bad row ranges of chunks of `rows`."""
    (s, e), more = bad[0], len(bad) - 1
    return (f"rows {s}-{e - 1} (chunk {s // rows + 1} of {-(-n // rows)})"
            + (f" and {more} more chunk(s)" if more else ""))


def encoder_fingerprint(d, samples: int = 256, block: int = 4096) -> str:
    """sha256 of config.json and, per safetensors file, its name, size, header and `samples`
    evenly spaced `block`-byte pieces of the tensor data: cheap (about 1 MB read) and it tells
    apart models of one architecture with different weights (e.g. a fine-tuned copy)."""
    d, h = Path(d), hashlib.sha256()
    h.update((d / "config.json").read_bytes())
    for f in sorted(d.glob("*.safetensors")):
        size = f.stat().st_size
        h.update(f.name.encode() + str(size).encode())
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            h.update(fh.read(min(n, 1 << 24)))
            for off in np.linspace(8 + n, max(8 + n, size - block), samples).astype(np.int64):
                fh.seek(int(off))
                h.update(fh.read(block))
    return h.hexdigest()


def bad_chunks(emb: np.ndarray, meta: dict) -> tuple[list[tuple[int, int]], str]:
    """Row ranges of `emb` that do not match metadata.json's checksums, and how it was checked:
    'chunks' (per chunk), 'whole' (an older cache: one sha256 of all data; any change makes
    every row suspect) or 'none' (no checksum at all)."""
    ck = meta.get("checksums")
    n = len(emb)
    if ck is not None:
        return [(s, e) for (s, e), h in zip(row_ranges(n, int(ck["chunk_rows"])), ck["chunks"])
                if sha256_of(emb[s:e]) != h], "chunks"
    if meta.get("sha256"):
        sha = hashlib.sha256()
        for s, e in row_ranges(n, 65536):
            sha.update(memoryview(np.ascontiguousarray(emb[s:e])).cast("B"))
        return ([] if sha.hexdigest() == meta["sha256"] else [(0, n)]), "whole"
    return [], "none"


# ------------------------------------------------------------------ reader
class EmbeddingCache:
    """A finished cache: `embeddings` (memory map), `docids`, `index` (docid -> row), `metadata`.
    Read rows through `rows` / `lookup`: with lazy verification (load_embedding_cache(...,
    verify="lazy")) each chunk is checked against its checksum the first time a row of it is read."""

    def __init__(self, directory: Path, embeddings: np.ndarray, docids: list[str], metadata: dict,
                 lazy: bool = False):
        self.directory, self.embeddings, self.docids, self.metadata = directory, embeddings, docids, metadata
        self.index = {d: i for i, d in enumerate(docids)}
        self.dim = int(metadata["dim"])
        ck = metadata.get("checksums") if lazy else None
        self.chunk_rows = int(ck["chunk_rows"]) if ck else 0       # 0: nothing left to verify
        self.verified_chunks: set[int] = set()                     # chunks checked lazily so far

    def __len__(self):
        return len(self.docids)

    @property
    def title_format(self) -> bool:
        """Whether documents with a title were encoded BEIR style ("Title: ... Content: ...", the
        default of `perank encode`) rather than plain ("{title} {text}")."""
        return bool((self.metadata.get("corpus") or {}).get("title_format", True))

    def rows(self, idx) -> np.ndarray:
        """Rows `idx` [k, dim] float32, read in sorted order from the memory map; a chunk not yet
        verified is checked first (a mismatch is a CacheError naming its rows)."""
        idx = np.asarray(idx, np.int64).reshape(-1)
        if self.chunk_rows:
            for c in sorted({int(i) // self.chunk_rows for i in idx} - self.verified_chunks):
                s, e = c * self.chunk_rows, min((c + 1) * self.chunk_rows, len(self.docids))
                if sha256_of(self.embeddings[s:e]) != self.metadata["checksums"]["chunks"][c]:
                    raise _chunks_changed(self.directory / EMB, [(s, e)], self.chunk_rows, len(self.docids))
                self.verified_chunks.add(c)
        order = np.argsort(idx, kind="stable")
        out = np.empty((len(idx), self.dim), np.float32)
        out[order] = np.asarray(self.embeddings[idx[order]], np.float32)
        return out

    def lookup(self, docids: Sequence[str]) -> np.ndarray:
        """Embeddings [len(docids), dim] float32 for the given ids (one error listing any missing)."""
        missing = [d for d in docids if d not in self.index]
        if missing:
            raise CacheError(f"{self.directory}: {len(missing)} document id(s) not in the cache, "
                             f"e.g. {missing[:5]}")
        return self.rows([self.index[d] for d in docids])


def read_metadata(d: Path) -> dict:
    try:
        meta = json.loads((d / META).read_text(encoding="utf-8"))
        int(meta["count"]), int(meta["dim"])
        if not isinstance(meta["encoder"], dict) or not isinstance(meta.get("corpus", {}), dict):
            raise TypeError("'encoder' / 'corpus' are not objects")
        ck = meta.get("checksums")
        if ck is not None:
            rows, chunks = int(ck["chunk_rows"]), ck["chunks"]
            if rows < 1 or not isinstance(chunks, list) or len(chunks) != -(-int(meta["count"]) // rows):
                raise ValueError("per-chunk checksums do not cover the rows")
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CacheError(f"{d / META}: corrupt metadata ({type(e).__name__}: {e}); delete {d} and rerun "
                         "`perank encode`") from None
    if meta.get("version") != CACHE_VERSION:
        raise CacheError(f"{d / META}: cache version {meta.get('version')!r}, expected {CACHE_VERSION}")
    return meta


def open_embeddings(d: Path, meta: dict, mode: str = "r") -> np.ndarray:
    count, dim = int(meta["count"]), int(meta["dim"])
    try:
        emb = np.load(d / EMB, mmap_mode=mode)
    except (PermissionError, IsADirectoryError) as e:
        raise CacheError(f"{d / EMB}: cannot open ({e.strerror})") from None
    except (OSError, ValueError, EOFError) as e:
        raise DamagedCacheError(f"{d / EMB}: corrupt or truncated embedding file ({e}); rerun `perank encode` "
                       "with the same arguments") from None
    if emb.shape != (count, dim) or emb.dtype != np.float32:
        raise DamagedCacheError(f"{d / EMB}: holds {emb.dtype} {emb.shape}, metadata says float32 {(count, dim)}; "
                       "rerun `perank encode` with the same arguments")
    return emb


def load_embedding_cache(directory, expect_encoder=None, expect_dim: int | None = None,
                         verify: bool | str = True) -> EmbeddingCache:
    """Open a finished cache; refuse (CacheError) an incomplete, corrupt or mismatched one.

    expect_encoder: an encoder directory (matched by weight fingerprint), a `DenseEncoder`
    (fingerprint and pooling/normalize/max_length), or a name (matched against the stored path,
    name or config name). verify (default): check every chunk of the embedding data and
    docids.txt against the checksums in metadata.json (one sequential read through the memory
    map); a mismatch names the rows and says to rerun `perank encode`, which re-encodes them.
    verify="lazy" (reranking: a query touches a few rows of a corpus that may be many GB): check
    docids.txt now and each chunk the first time one of its rows is read (EmbeddingCache.rows);
    a cache without per-chunk checksums is then checked whole, now."""
    d = Path(directory)
    if not d.is_dir():
        raise CacheError(f"{d}: embedding cache directory not found")
    if not (d / META).exists():
        if (d / PARTIAL).exists():
            n = len(list((d / PARTIAL).glob("chunk_*.npy")))
            raise CacheError(f"{d}: incomplete embedding cache (interrupted run, {n} chunk(s) done); "
                             "rerun `perank encode` with the same arguments to resume")
        raise CacheError(f"{d}: not an embedding cache (no {META})")
    meta = read_metadata(d)
    count, dim, enc = int(meta["count"]), int(meta["dim"]), meta["encoder"]
    emb = open_embeddings(d, meta)
    try:
        raw = (d / IDS).read_bytes()
        docids = raw.decode("utf-8").split("\n")[:-1]
    except (OSError, UnicodeDecodeError) as e:
        raise CacheError(f"{d / IDS}: unreadable ({e}); rerun `perank encode` with the same arguments") from None
    if len(docids) != count or len(set(docids)) != count:
        raise CacheError(f"{d / IDS}: {len(docids)} ids ({len(set(docids))} unique), metadata says {count}; "
                         "rerun `perank encode` with the same arguments")
    if expect_dim is not None and dim != int(expect_dim):
        raise CacheError(f"{d}: embeddings have dim {dim}, expected {expect_dim} "
                         f"(encoder {enc.get('name')!r}); re-encode the corpus with the right encoder")
    if expect_encoder is not None:
        _check_encoder(d, meta, expect_encoder)
    if verify:
        ck = meta.get("checksums")
        if ck is not None and ck.get("docids") and hashlib.sha256(raw).hexdigest() != ck["docids"]:
            raise CacheError(f"{d / IDS}: checksum mismatch (document ids changed after the cache was written); "
                             "rerun `perank encode` with the same arguments to restore them")
        if verify == "lazy" and ck is not None:
            return EmbeddingCache(d, emb, docids, meta, lazy=True)
        bad, how = bad_chunks(emb, meta)
        if bad and how == "chunks":
            raise _chunks_changed(d / EMB, bad, int(ck["chunk_rows"]), count)
        if bad:
            raise CacheError(f"{d / EMB}: checksum mismatch (file corrupted after it was written; this older "
                             "cache has no per-chunk checksums); rerun `perank encode` with the same arguments "
                             "to re-encode it")
        if how == "none":
            warnings.warn(f"{d}: embedding cache without checksums, corruption cannot be detected; rerun "
                          "`perank encode` with the same arguments to add them", CacheWarning, stacklevel=2)
    return EmbeddingCache(d, emb, docids, meta)


def _check_encoder(d: Path, meta: dict, expect) -> None:
    enc = meta["encoder"]
    stored = f"{enc.get('name')!r} at {enc.get('path')}"
    if hasattr(expect, "path") and hasattr(expect, "pooling"):        # a DenseEncoder
        want = {"pooling": expect.pooling, "normalize": expect.normalize, "max_length": expect.max_length}
        bad = {k: (meta.get(k), v) for k, v in want.items() if meta.get(k) != v}
        if encoder_fingerprint(expect.path) != enc.get("fingerprint"):
            raise CacheError(f"{d}: made by encoder {stored}, not by {expect.name!r} at {expect.path}")
        if bad:
            raise CacheError(f"{d}: encoder settings differ (cache vs expected): {bad}")
        return
    p = Path(expect)
    if p.is_dir() and (p / "config.json").exists():
        if encoder_fingerprint(p) != enc.get("fingerprint"):
            raise CacheError(f"{d}: made by encoder {stored}, not by {p}")
        return
    names = {enc.get("name"), enc.get("path"), enc.get("config_name"), Path(enc.get("path", "")).name}
    if str(expect) not in names:
        raise CacheError(f"{d}: made by encoder {stored}, expected {str(expect)!r}")
