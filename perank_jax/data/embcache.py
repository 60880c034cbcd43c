"""Embedding cache: a corpus encoded once by a frozen dense encoder, reused by training and
reranking without running the encoder again.

Layout of a finished cache directory:
    embeddings.npy   float32 [count, dim], memory-mappable (np.load(..., mmap_mode="r"))
    docids.txt       one document id per line, row i of embeddings.npy <-> line i
    metadata.json    encoder (path, name, fingerprint, architecture), pooling, normalize,
                     max_length, dtype, dim, count, corpus (path, fingerprint, title_format),
                     sha256 of the embedding data. Written LAST: without it nothing is complete.

While running, finished chunks of `chunk_size` documents are written atomically (temp file +
os.replace) to `<out>/.partial/chunk_NNNNNN.npy` next to the run's plan (`plan.json`). An
interrupted run resumes with the same arguments and only encodes missing chunks; the final
arrays are assembled from the chunks, so a resumed run produces the same bytes as one run.

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
from pathlib import Path
from typing import Sequence

import numpy as np

from perank_jax.atomic import atomic_write

CACHE_VERSION = 1
META, EMB, IDS, PARTIAL = "metadata.json", "embeddings.npy", "docids.txt", ".partial"


class CacheError(ValueError):
    """Missing, incomplete, corrupt or mismatched embedding cache."""


# ------------------------------------------------------------------ helpers
def _atomic(path: Path, write) -> None:
    atomic_write(path, write, binary=True, fsync=True)


def _write_json(path: Path, obj) -> None:
    _atomic(path, lambda f: f.write(json.dumps(obj, indent=1, sort_keys=True).encode()))


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
        from perank_jax.models.encoder import load_encoder
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
        cache = load_embedding_cache(out)
        diff = _plan_diff(cache.metadata, plan)
        if diff:
            raise CacheError(f"{out}: already holds a finished cache of a different run ({diff}); "
                             "choose another --out or delete it")
        return out
    part = out / PARTIAL
    part.mkdir(parents=True, exist_ok=True)
    if (part / "plan.json").exists():
        try:
            old = json.loads((part / "plan.json").read_text())
        except json.JSONDecodeError:
            old = {}
        diff = _plan_diff(old, plan)
        if diff:
            raise CacheError(f"{part}: holds chunks of an interrupted run with other settings ({diff}); "
                             f"rerun with the same arguments, or delete {part}")
    else:
        _write_json(part / "plan.json", plan)

    n, dim = len(docids), int(encoder.dim)
    starts = range(0, n, chunk_size)
    chunk = lambda c: part / f"chunk_{c:06d}.npy"  # noqa: E731

    def done(c, rows) -> bool:
        try:
            a = np.load(chunk(c), mmap_mode="r")
            return a.shape == (rows, dim) and a.dtype == np.float32
        except (OSError, ValueError, EOFError):
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
        bar.update(len(emb))
    bar.close()

    # assemble: embeddings and docids (temp + rename), then metadata.json last
    sha = hashlib.sha256()
    tmp = out / f".{EMB}.{os.getpid()}.tmp"
    try:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
        for c, s in enumerate(starts):
            a = np.load(chunk(c))
            arr[s: s + len(a)] = a
            sha.update(np.ascontiguousarray(a).tobytes())
        arr.flush()
        del arr
        os.replace(tmp, out / EMB)
    finally:
        if tmp.exists():
            tmp.unlink()
    _atomic(out / IDS, lambda f: f.write("".join(d + "\n" for d in docids).encode()))
    meta = dict(plan, files={"embeddings": EMB, "docids": IDS}, sha256=sha.hexdigest())
    meta.pop("chunk_size")
    _write_json(out / META, meta)
    shutil.rmtree(part, ignore_errors=True)
    return out


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
    def __init__(self, directory: Path, embeddings: np.ndarray, docids: list[str], metadata: dict):
        self.directory, self.embeddings, self.docids, self.metadata = directory, embeddings, docids, metadata
        self.index = {d: i for i, d in enumerate(docids)}
        self.dim = int(metadata["dim"])

    def __len__(self):
        return len(self.docids)

    def lookup(self, docids: Sequence[str]) -> np.ndarray:
        """Embeddings [len(docids), dim] float32 for the given ids (one error listing any missing)."""
        missing = [d for d in docids if d not in self.index]
        if missing:
            raise CacheError(f"{self.directory}: {len(missing)} document id(s) not in the cache, "
                             f"e.g. {missing[:5]}")
        return np.asarray(self.embeddings[[self.index[d] for d in docids]], np.float32)


def load_embedding_cache(directory, expect_encoder=None, expect_dim: int | None = None,
                         verify: bool = False) -> EmbeddingCache:
    """Open a finished cache; refuse (CacheError) an incomplete, corrupt or mismatched one.

    expect_encoder: an encoder directory (matched by weight fingerprint), a `DenseEncoder`
    (fingerprint and pooling/normalize/max_length), or a name (matched against the stored path,
    name or config name). verify: also recompute the sha256 of the embedding data."""
    d = Path(directory)
    if not d.is_dir():
        raise CacheError(f"{d}: embedding cache directory not found")
    if not (d / META).exists():
        if (d / PARTIAL).exists():
            n = len(list((d / PARTIAL).glob("chunk_*.npy")))
            raise CacheError(f"{d}: incomplete embedding cache (interrupted run, {n} chunk(s) done); "
                             "rerun `perank encode` with the same arguments to resume")
        raise CacheError(f"{d}: not an embedding cache (no {META})")
    try:
        meta = json.loads((d / META).read_text())
        count, dim = int(meta["count"]), int(meta["dim"])
        enc = meta["encoder"]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CacheError(f"{d / META}: corrupt metadata ({type(e).__name__}: {e})") from None
    if meta.get("version") != CACHE_VERSION:
        raise CacheError(f"{d / META}: cache version {meta.get('version')!r}, expected {CACHE_VERSION}")
    try:
        emb = np.load(d / EMB, mmap_mode="r")
    except (OSError, ValueError, EOFError) as e:
        raise CacheError(f"{d / EMB}: corrupt or truncated embedding file ({e})") from None
    if emb.shape != (count, dim) or emb.dtype != np.float32:
        raise CacheError(f"{d / EMB}: holds {emb.dtype} {emb.shape}, metadata says float32 {(count, dim)}")
    try:
        docids = (d / IDS).read_text(encoding="utf-8").split("\n")[:-1]
    except (OSError, UnicodeDecodeError) as e:
        raise CacheError(f"{d / IDS}: unreadable ({e})") from None
    if len(docids) != count or len(set(docids)) != count:
        raise CacheError(f"{d / IDS}: {len(docids)} ids ({len(set(docids))} unique), metadata says {count}")
    if expect_dim is not None and dim != int(expect_dim):
        raise CacheError(f"{d}: embeddings have dim {dim}, expected {expect_dim} "
                         f"(encoder {enc.get('name')!r}); re-encode the corpus with the right encoder")
    if expect_encoder is not None:
        _check_encoder(d, meta, expect_encoder)
    if verify:
        sha = hashlib.sha256()
        for s in range(0, count, 65536):
            sha.update(np.ascontiguousarray(emb[s: s + 65536]).tobytes())
        if sha.hexdigest() != meta.get("sha256"):
            raise CacheError(f"{d / EMB}: checksum mismatch (file corrupted after it was written)")
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
