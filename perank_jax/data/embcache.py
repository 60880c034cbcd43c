"""Embedding cache: a corpus encoded once by a frozen dense encoder, reused by training and
reranking without running the encoder again.

Layout of a finished cache directory:
    embeddings.npy   float32 [count, dim], memory-mappable (np.load(..., mmap_mode="r"))
    docids.txt       one document id per line, row i of embeddings.npy <-> line i
    metadata.json    encoder (path, name, fingerprint, architecture), pooling, normalize,
                     max_length, dtype, dim, count, corpus (path, fingerprint, title_format),
                     sha256 of the embedding data, and `checksums`: the sha256 of every chunk of
                     `chunk_rows` rows of embeddings.npy and of docids.txt. Written LAST: without
                     it nothing is complete.

While running, finished chunks of `chunk_size` documents are written atomically (temp file +
os.replace) to `<out>/.partial/chunk_NNNNNN.npy`, each followed by its checksum
(`chunk_NNNNNN.sha256`), next to the run's plan (`plan.json`). An interrupted run resumes with
the same arguments and only encodes chunks that are missing or do not match their checksum;
the final arrays are assembled from the chunks, so a resumed run produces the same bytes as one.

Corruption is caught cheaply, chunk by chunk over a memory map: `load_embedding_cache` checks
every chunk (and docids.txt) against metadata.json and refuses a mismatch naming the rows;
`perank encode` on a finished cache re-encodes only the chunks that no longer match. Older
caches without per-chunk checksums are checked against their whole-file sha256.

Corpus documents (see `perank_jax.data.trec.read_corpus`): JSONL with `_id`/`docid`/`id`,
optional `title`, `text`/`contents`, or TSV `docid<TAB>text`. With `title_format=True`
(default; the paper's BEIR formatting) a document with a title is encoded as
"Title: {title} Content: {text}"; with False as "{title} {text}".
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from perank_jax.atomic import atomic_write, fresh_temp, target_mode

CACHE_VERSION = 1
META, EMB, IDS, PARTIAL = "metadata.json", "embeddings.npy", "docids.txt", ".partial"


class CacheError(ValueError):
    """Missing, incomplete, corrupt or mismatched embedding cache."""


class CacheWarning(UserWarning):
    """An embedding cache whose integrity cannot be checked (no checksums)."""


# ------------------------------------------------------------------ helpers
def _atomic(path: Path, write) -> None:
    atomic_write(path, write, binary=True, fsync=True)


def _write_json(path: Path, obj) -> None:
    _atomic(path, lambda f: f.write(json.dumps(obj, indent=1, sort_keys=True).encode()))


def _sha(a: np.ndarray) -> str:
    """sha256 of an array's data bytes (a memory-mapped slice is read, not copied)."""
    return hashlib.sha256(memoryview(np.ascontiguousarray(a)).cast("B")).hexdigest()


def _ranges(n: int, rows: int) -> list[tuple[int, int]]:
    return [(s, min(s + rows, n)) for s in range(0, n, rows)]


def _chunks_changed(emb_path: Path, bad: list[tuple[int, int]], rows: int, n: int) -> CacheError:
    """The one refusal of embedding rows that no longer match their chunk checksums."""
    return CacheError(f"{emb_path}: checksum mismatch in {_rows(bad, rows, n)} (the file changed after it was "
                      "written); rerun `perank encode` with the same arguments to re-encode them")


def _rows(bad: list[tuple[int, int]], rows: int, n: int) -> str:
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


def corpus_fingerprint(docids: Sequence[str], texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for d, t in zip(docids, texts):
        h.update(d.encode() + b"\0" + t.encode() + b"\n")
    return h.hexdigest()


def _read_corpus(path, title_format: bool) -> tuple[list[str], list[str]]:
    from perank_jax.data.trec import read_corpus
    docs = read_corpus(path, title_format=title_format)
    for docid, text in docs.items():
        if any(c in docid for c in "\r\n"):
            raise CacheError(f"{docs.where(docid)}: document id {docid!r} contains a line break")
        if not str(text).strip():
            raise CacheError(f"{docs.where(docid)}: document {docid!r} has empty text")
    return list(docs.keys()), [str(t) for t in docs.values()]


# ------------------------------------------------------------------ writer
def build_embedding_cache(encoder, corpus, out_dir, *, batch_size: int = 32, max_length: int = 512,
                          chunk_size: int = 10000, title_format: bool = True, pooling: str | None = None,
                          normalize: bool = True, dtype: str = "float32", progress: bool = True) -> Path:
    """Encode `corpus` into an embedding cache at `out_dir` (resumable; see module docstring).

    `encoder` is an encoder directory or an already loaded `DenseEncoder` (whose own pooling,
    normalize and max_length are then used)."""
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise CacheError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    docids, texts = _read_corpus(corpus, title_format)       # bad input fails before the model loads
    if isinstance(encoder, (str, os.PathLike)):
        from perank_jax.weights.encoder import load_encoder
        encoder = load_encoder(encoder, pooling=pooling, normalize=normalize, max_length=max_length,
                               dtype=dtype)
    plan = {
        "version": CACHE_VERSION,
        "encoder": {"path": encoder.path, "name": encoder.name, "architecture": encoder.config.arch,
                    "fingerprint": encoder_fingerprint(encoder.path), "config_name": encoder.config.name},
        "pooling": encoder.pooling, "normalize": encoder.normalize, "max_length": encoder.max_length,
        "dtype": str(np.dtype(encoder.model.layers.q_w[...].dtype)), "dim": int(encoder.dim),
        "count": len(docids), "chunk_size": chunk_size,
        "corpus": {"path": str(Path(corpus).resolve()), "title_format": bool(title_format),
                   "fingerprint": corpus_fingerprint(docids, texts)},
    }
    out = Path(out_dir)
    if (out / META).exists():
        if _reuse_or_repair(out, plan, encoder, docids, texts, batch_size, chunk_size):
            return out
    part = out / PARTIAL
    part.mkdir(parents=True, exist_ok=True)
    if (part / "plan.json").exists():
        diff = _plan_diff(_read_plan(part / "plan.json"), plan)
        if diff:
            raise CacheError(f"{part}: holds chunks of an interrupted run with other settings ({diff}); "
                             f"rerun with the same arguments, or delete {part}")
    else:
        _write_json(part / "plan.json", plan)

    n, dim = len(docids), int(encoder.dim)
    starts = range(0, n, chunk_size)
    chunk = lambda c: part / f"chunk_{c:06d}.npy"  # noqa: E731

    def done(c, rows) -> bool:
        """A finished chunk: right shape and dtype, and its data matches the checksum written
        after it (a chunk changed since, or from before checksums, is encoded again)."""
        try:
            a = np.load(chunk(c), mmap_mode="r")
            want = chunk(c).with_suffix(".sha256").read_text().strip()
            return a.shape == (rows, dim) and a.dtype == np.float32 and _sha(a) == want
        except (OSError, ValueError, EOFError, UnicodeDecodeError):
            return False

    todo = [c for c, s in enumerate(starts) if not done(c, min(chunk_size, n - s))]
    from tqdm.auto import tqdm
    bar = tqdm(total=n, initial=n - sum(min(chunk_size, n - starts[c]) for c in todo),
               desc=f"encode {Path(corpus).name}", unit="doc", disable=not progress)
    for c in todo:
        s = starts[c]
        emb = encoder.encode(texts[s: s + chunk_size], batch_size=batch_size).astype(np.float32)
        if not np.isfinite(emb).all():
            bad = docids[s + int(np.argwhere(~np.isfinite(emb))[0, 0])]
            raise CacheError(f"encoder produced NaN/Inf for document {bad!r} (dtype {plan['dtype']}?)")
        _atomic(chunk(c), lambda f: np.save(f, emb))
        _atomic(chunk(c).with_suffix(".sha256"), lambda f: f.write(_sha(emb).encode()))
        bar.update(len(emb))
    bar.close()

    # assemble: embeddings and docids (temp + rename), then metadata.json last
    sha, chunk_sha = hashlib.sha256(), []
    tmp = fresh_temp(out / EMB)
    try:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
        for c, s in enumerate(starts):
            a = np.load(chunk(c))
            h = _sha(a)
            if h != chunk(c).with_suffix(".sha256").read_text().strip():
                raise CacheError(f"{chunk(c)}: changed while this run was assembling the cache; rerun "
                                 "`perank encode` with the same arguments")
            arr[s: s + len(a)] = a
            sha.update(memoryview(np.ascontiguousarray(a)).cast("B"))
            chunk_sha.append(h)
        arr.flush()
        del arr
        os.chmod(tmp, target_mode(out / EMB))
        os.replace(tmp, out / EMB)
    finally:
        if tmp.exists():
            tmp.unlink()
    ids = "".join(d + "\n" for d in docids).encode()
    _atomic(out / IDS, lambda f: f.write(ids))
    meta = dict(plan, files={"embeddings": EMB, "docids": IDS}, sha256=sha.hexdigest(),
                checksums=_checksums(chunk_size, chunk_sha, ids))
    meta.pop("chunk_size")
    _write_json(out / META, meta)
    shutil.rmtree(part, ignore_errors=True)
    return out


def _checksums(rows: int, chunk_sha: list[str], ids: bytes) -> dict:
    return {"algorithm": "sha256", "chunk_rows": int(rows), "chunks": list(chunk_sha),
            "docids": hashlib.sha256(ids).hexdigest()}


def _read_plan(path: Path) -> dict:
    """The plan of an interrupted run; a damaged one is reported as such (not as other settings)."""
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(plan, dict):
            raise ValueError(f"a JSON {type(plan).__name__}, not an object")
        missing = [k for k in ("version", "encoder", "corpus", "dim", "count", "chunk_size") if k not in plan]
        if missing or not isinstance(plan["encoder"], dict) or not isinstance(plan["corpus"], dict):
            raise ValueError(f"missing or malformed fields {missing or ['encoder/corpus']}")
    except (OSError, ValueError) as e:   # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CacheError(f"{path}: corrupt progress file of an interrupted `perank encode` ({e}); delete "
                         f"{path.parent} and rerun `perank encode` to start over") from None
    return plan


def _bad_chunks(emb: np.ndarray, meta: dict) -> tuple[list[tuple[int, int]], str]:
    """Row ranges of `emb` that do not match metadata.json's checksums, and how it was checked:
    'chunks' (per chunk), 'whole' (an older cache: one sha256 of all data; any change makes
    every row suspect) or 'none' (no checksum at all)."""
    ck = meta.get("checksums")
    n = len(emb)
    if ck is not None:
        return [(s, e) for (s, e), h in zip(_ranges(n, int(ck["chunk_rows"])), ck["chunks"])
                if _sha(emb[s:e]) != h], "chunks"
    if meta.get("sha256"):
        sha = hashlib.sha256()
        for s, e in _ranges(n, 65536):
            sha.update(memoryview(np.ascontiguousarray(emb[s:e])).cast("B"))
        return ([] if sha.hexdigest() == meta["sha256"] else [(0, n)]), "whole"
    return [], "none"


def _reuse_or_repair(out: Path, plan: dict, encoder, docids, texts, batch_size: int, chunk_size: int) -> bool:
    """`perank encode` over a finished cache of the same run: True when the cache is (now) whole;
    chunks that no longer match their checksum are encoded again in place, docids.txt is
    rewritten if it changed, and metadata.json is rewritten with fresh checksums. False when
    embeddings.npy itself is unreadable: metadata.json is then removed and the caller rebuilds."""
    meta = _read_meta(out)
    diff = _plan_diff(meta, plan)
    if diff:
        raise CacheError(f"{out}: already holds a finished cache of a different run ({diff}); "
                         "choose another --out or delete it")
    try:
        emb = _open_embeddings(out, meta)
    except _Damaged as e:
        print(f"{e}; encoding the corpus again", file=sys.stderr)
        (out / META).unlink()
        return False
    bad, how = _bad_chunks(emb, meta)
    del emb
    ids = "".join(d + "\n" for d in docids).encode()
    ids_ok = (out / IDS).is_file() and (out / IDS).read_bytes() == ids
    if not bad and ids_ok and how == "chunks":
        return True
    n = len(docids)
    rows = int(meta["checksums"]["chunk_rows"]) if how == "chunks" else chunk_size
    if how == "none":
        print(f"{out / META}: no checksums; adding them for the embeddings as they are now", file=sys.stderr)
    if bad:
        bad = [(s + a, s + b) for s, e in bad for a, b in _ranges(e - s, rows)]   # whole-file: every chunk
        print(f"{out / EMB}: {_rows(bad, rows, n)} did not match the checksum; encoding "
              f"{sum(e - s for s, e in bad)} document(s) again", file=sys.stderr)
        emb = _open_embeddings(out, meta, mode="r+")
        for s, e in bad:
            a = encoder.encode(texts[s:e], batch_size=batch_size).astype(np.float32)
            if a.shape != (e - s, emb.shape[1]) or not np.isfinite(a).all():
                raise CacheError(f"encoder produced {a.shape} / non-finite embeddings for rows {s}-{e - 1}")
            emb[s:e] = a
        emb.flush()
        del emb
    if not ids_ok:
        _atomic(out / IDS, lambda f: f.write(ids))
    emb, sha, chunk_sha = _open_embeddings(out, meta), hashlib.sha256(), []
    for s, e in _ranges(n, rows):          # what is on disk now
        view = memoryview(np.ascontiguousarray(emb[s:e])).cast("B")
        sha.update(view)
        chunk_sha.append(hashlib.sha256(view).hexdigest())
    del emb
    _write_json(out / META, dict(meta, sha256=sha.hexdigest(), checksums=_checksums(rows, chunk_sha, ids)))
    return True


def _plan_diff(old: dict, new: dict) -> str:
    keys = ("version", "pooling", "normalize", "max_length", "dtype", "dim", "count")
    diff = [f"{k}: {old.get(k)!r} != {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    for k in ("encoder", "corpus"):
        if (old.get(k) or {}).get("fingerprint") != new[k]["fingerprint"]:
            diff.append(f"{k} differs ({(old.get(k) or {}).get('path')} vs {new[k]['path']})")
        elif k == "corpus" and old[k].get("title_format") != new[k]["title_format"]:
            diff.append("corpus title_format differs")
    if "chunk_size" in old and old["chunk_size"] != new["chunk_size"]:
        diff.append(f"chunk_size: {old['chunk_size']} != {new['chunk_size']}")
    return "; ".join(diff)


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
                if _sha(self.embeddings[s:e]) != self.metadata["checksums"]["chunks"][c]:
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


def _read_meta(d: Path) -> dict:
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


class _Damaged(CacheError):
    """embeddings.npy is missing, truncated or of the wrong shape (not merely unreadable to us)."""


def _open_embeddings(d: Path, meta: dict, mode: str = "r") -> np.ndarray:
    count, dim = int(meta["count"]), int(meta["dim"])
    try:
        emb = np.load(d / EMB, mmap_mode=mode)
    except (PermissionError, IsADirectoryError) as e:
        raise CacheError(f"{d / EMB}: cannot open ({e.strerror})") from None
    except (OSError, ValueError, EOFError) as e:
        raise _Damaged(f"{d / EMB}: corrupt or truncated embedding file ({e}); rerun `perank encode` "
                       "with the same arguments") from None
    if emb.shape != (count, dim) or emb.dtype != np.float32:
        raise _Damaged(f"{d / EMB}: holds {emb.dtype} {emb.shape}, metadata says float32 {(count, dim)}; "
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
    meta = _read_meta(d)
    count, dim, enc = int(meta["count"]), int(meta["dim"]), meta["encoder"]
    emb = _open_embeddings(d, meta)
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
        bad, how = _bad_chunks(emb, meta)
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
