"""Embedding cache writer: encode a corpus once with a frozen dense encoder into the cache that
`perank_jax.data.embcache` reads (layout there), resumably and atomically.

While running, finished chunks of `chunk_size` documents are written atomically (temp file +
os.replace) to `<out>/.partial/chunk_NNNNNN.npy`, each followed by its checksum
(`chunk_NNNNNN.sha256`), next to the run's plan (`plan.json`). An interrupted run resumes with
the same arguments and only encodes chunks that are missing or do not match their checksum;
the final arrays are assembled from the chunks, so a resumed run produces the same bytes as one.
`perank encode` on a finished cache re-encodes only the chunks that no longer match.

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
from contextlib import nullcontext
from pathlib import Path
from typing import Sequence

import numpy as np

from perank_jax.core.atomic import atomic_write, fresh_temp, target_mode
from perank_jax.core.constants import ENCODER_MAX_LENGTH
from perank_jax.core.outputs import claim_dir, dir_lock
from perank_jax.data.embcache import (CACHE_VERSION, EMB, IDS, META, PARTIAL, CacheError, DamagedCacheError,
                                      bad_chunks, describe_rows, encoder_fingerprint, open_embeddings,
                                      read_metadata, row_ranges, sha256_of)
from perank_jax.core.processes import barrier, checked_here, gather_flags, rank, share


def _atomic(path: Path, write) -> None:
    atomic_write(path, write, binary=True, fsync=True)


def _write_json(path: Path, obj) -> None:
    _atomic(path, lambda f: f.write(json.dumps(obj, indent=1, sort_keys=True).encode()))


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


def build_embedding_cache(encoder, corpus, out_dir, *, batch_size: int = 32, max_length: int = ENCODER_MAX_LENGTH,
                          chunk_size: int = 10000, title_format: bool = True, pooling: str | None = None,
                          normalize: bool = True, dtype: str = "float32", progress: bool = True) -> Path:
    """Encode `corpus` into an embedding cache at `out_dir` (resumable; see module docstring).

    `encoder` is an encoder directory, an already loaded `DenseEncoder` (whose own pooling,
    normalize and max_length are then used) or a function returning one (called once the corpus
    has been read, so bad input fails before the model loads).
    Under jax.distributed (perank_jax.core.processes) every process runs this with the same arguments:
    each encodes its share of the chunks still to do, and process 0 assembles the cache."""
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise CacheError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    docids, texts = _read_corpus(corpus, title_format)       # bad input fails before the model loads
    # one writer per cache (process 0 holds the lock for a distributed run); a user's same-named files are refused
    with (dir_lock(out_dir, "encode") if rank()[0] == 0 else nullcontext()):
        claim_dir(out_dir, "encode", (EMB, IDS, META, PARTIAL), ours=(META, PARTIAL), mark=False)
        return _encode_into(encoder, corpus, Path(out_dir), docids, texts, batch_size=batch_size,
                            max_length=max_length, chunk_size=chunk_size, title_format=title_format,
                            pooling=pooling, normalize=normalize, dtype=dtype, progress=progress)


def _encode_into(encoder, corpus, out: Path, docids, texts, *, batch_size, max_length, chunk_size, title_format,
                 pooling, normalize, dtype, progress) -> Path:
    """build_embedding_cache's work, with `out` locked and claimed."""
    if isinstance(encoder, (str, os.PathLike)):
        from perank_jax.weights.encoder import load_encoder
        encoder = load_encoder(encoder, pooling=pooling, normalize=normalize, max_length=max_length,
                               dtype=dtype)
    elif not hasattr(encoder, "encode"):          # a loader
        encoder = encoder()
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
    index, count = rank()
    finished = (out / META).exists()
    if finished:
        _refuse_other_run(out, read_metadata(out), plan)
    barrier("encode:look")              # every process has looked before any of them changes anything
    if finished:
        whole = index == 0 and _reuse_or_repair(out, plan, encoder, docids, texts, batch_size, chunk_size)
        if gather_flags([whole])[0]:    # process 0 checked (and repaired) the finished cache
            return out
    part = out / PARTIAL
    part.mkdir(parents=True, exist_ok=True)
    planned = (part / "plan.json").exists()
    if planned:
        diff = _plan_diff(_read_plan(part / "plan.json"), plan)
        if diff:
            raise CacheError(f"{part}: holds chunks of an interrupted run with other settings ({diff}); "
                             f"rerun with the same arguments, or delete {part}")
    barrier("encode:plan")
    if not planned and index == 0:
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
            return a.shape == (rows, dim) and a.dtype == np.float32 and sha256_of(a) == want
        except (OSError, ValueError, EOFError, UnicodeDecodeError):
            return False

    finished = np.zeros(len(starts), bool)   # each process checks its share; all then know every chunk
    for c in checked_here(len(starts), index, count):
        finished[c] = done(c, min(chunk_size, n - starts[c]))
    finished = gather_flags(finished)
    todo = share([c for c in range(len(starts)) if not finished[c]], index, count)
    from tqdm.auto import tqdm
    bar = tqdm(total=sum(min(chunk_size, n - starts[c]) for c in todo), unit="doc", disable=not progress,
               desc=f"encode {Path(corpus).name}" + (f" (process {index} of {count})" if count > 1 else ""))
    for c in todo:
        s = starts[c]
        emb = encoder.encode(texts[s: s + chunk_size], batch_size=batch_size).astype(np.float32)
        if not np.isfinite(emb).all():
            bad = docids[s + int(np.argwhere(~np.isfinite(emb))[0, 0])]
            raise CacheError(f"encoder produced NaN/Inf for document {bad!r} (dtype {plan['dtype']}?)")
        _atomic(chunk(c), lambda f: np.save(f, emb))
        _atomic(chunk(c).with_suffix(".sha256"), lambda f: f.write(sha256_of(emb).encode()))
        bar.update(len(emb))
    bar.close()
    if encoder.truncated:
        print(f"warning: {encoder.truncated} of the {sum(min(chunk_size, n - starts[c]) for c in todo)} "
              f"documents encoded were longer than max_length={encoder.max_length} encoder tokens and were "
              "truncated (their ends are not in the embeddings)", file=sys.stderr)
    barrier("encode:chunks")             # every chunk is written: process 0 assembles the cache
    if index == 0:
        _assemble(out, part, plan, docids, starts, chunk, dim)
    barrier("encode:done")
    return out


def _assemble(out: Path, part: Path, plan: dict, docids, starts, chunk, dim: int) -> None:
    """The finished cache from the checksummed chunks; metadata.json last, then .partial removed."""
    n, chunk_size = len(docids), plan["chunk_size"]
    # assemble: embeddings and docids (temp + rename), then metadata.json last
    sha, chunk_sha = hashlib.sha256(), []
    tmp = fresh_temp(out / EMB)
    try:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
        for c, s in enumerate(starts):
            a = np.load(chunk(c))
            h = sha256_of(a)
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


def _reuse_or_repair(out: Path, plan: dict, encoder, docids, texts, batch_size: int, chunk_size: int) -> bool:
    """`perank encode` over a finished cache of the same run: True when the cache is (now) whole;
    chunks that no longer match their checksum are encoded again in place, docids.txt is
    rewritten if it changed, and metadata.json is rewritten with fresh checksums. False when
    embeddings.npy itself is unreadable: metadata.json is then removed and the caller rebuilds."""
    meta = read_metadata(out)
    _refuse_other_run(out, meta, plan)
    try:
        emb = open_embeddings(out, meta)
    except DamagedCacheError as e:
        print(f"{e}; encoding the corpus again", file=sys.stderr)
        (out / META).unlink()
        return False
    bad, how = bad_chunks(emb, meta)
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
        bad = [(s + a, s + b) for s, e in bad for a, b in row_ranges(e - s, rows)]   # whole-file: every chunk
        print(f"{out / EMB}: {describe_rows(bad, rows, n)} did not match the checksum; encoding "
              f"{sum(e - s for s, e in bad)} document(s) again", file=sys.stderr)
        emb = open_embeddings(out, meta, mode="r+")
        for s, e in bad:
            a = encoder.encode(texts[s:e], batch_size=batch_size).astype(np.float32)
            if a.shape != (e - s, emb.shape[1]) or not np.isfinite(a).all():
                raise CacheError(f"encoder produced {a.shape} / non-finite embeddings for rows {s}-{e - 1}")
            emb[s:e] = a
        emb.flush()
        del emb
    if not ids_ok:
        _atomic(out / IDS, lambda f: f.write(ids))
    emb, sha, chunk_sha = open_embeddings(out, meta), hashlib.sha256(), []
    for s, e in row_ranges(n, rows):          # what is on disk now
        view = memoryview(np.ascontiguousarray(emb[s:e])).cast("B")
        sha.update(view)
        chunk_sha.append(hashlib.sha256(view).hexdigest())
    del emb
    _write_json(out / META, dict(meta, sha256=sha.hexdigest(), checksums=_checksums(rows, chunk_sha, ids)))
    return True


def _refuse_other_run(out: Path, meta: dict, plan: dict) -> None:
    diff = _plan_diff(meta, plan)
    if diff:
        raise CacheError(f"{out}: already holds a finished cache of a different run ({diff}); "
                         "choose another --out or delete it")


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
