"""Passage vectors for reranking: looked up by docid in a `perank encode` embedding cache,
taken from a shared text memo, or encoded on the fly (and counted).

A cache is only used when it was made by the encoder the ranker would run itself: the same
weights (fingerprint), pooling, normalisation, max_length, weight dtype and dimension.
Anything else is refused with one `EmbeddingMismatch` (a ValueError) saying how to re-encode,
because its vectors would silently differ from the ones reranking computes.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from perank_jax.data.embcache import CacheError, EmbeddingCache, encoder_fingerprint, load_embedding_cache
from perank_jax.weights.packaged import resolve_model_path
from perank_jax.weights.perank import load_checkpoint_encoder
from perank_jax.weights.perank_config import PERankConfig


class EmbeddingMismatch(CacheError):
    """An embedding cache that the ranker's encoder did not make (other weights, pooling,
    normalisation, max_length, dtype or dimension)."""


def _encoder_dir(encoder, config: PERankConfig) -> Path | None:
    """The directory of the weights the ranker encodes with: the encoder's own, else (an encoder
    object without one) the checkpoint's `encoder_name`."""
    for src in (getattr(encoder, "path", None), config.encoder_name):
        if src:
            try:
                p = Path(resolve_model_path(src))
            except ValueError:
                continue
            if (p / "config.json").is_file():
                return p
    return None


def _weight_dtype(encoder) -> str | None:
    try:
        return str(np.dtype(encoder.model.layers.q_w[...].dtype))
    except (AttributeError, TypeError):
        return None


def check_cache_matches(cache: EmbeddingCache, encoder, config: PERankConfig | None, dim: int) -> None:
    """Raise EmbeddingMismatch listing every difference between the cache and the ranker's encoder.
    For an encoder object that is not a DenseEncoder, the checkpoint's encoder_name and
    `encoder_settings` stand in for what it cannot tell."""
    config = config or PERankConfig()       # a plain encoder: the defaults
    meta, enc = cache.metadata, cache.metadata.get("encoder") or {}
    made_by = f"{enc.get('name')!r} ({enc.get('path')})"
    diffs = []
    if cache.dim != dim:
        diffs.append(f"dimension {cache.dim}, the projector expects {dim}")
    src = _encoder_dir(encoder, config)
    if src is not None and encoder_fingerprint(src) != enc.get("fingerprint"):
        diffs.append(f"made by encoder {made_by}, the ranker encodes with {src}")
    conf = config.encoder_settings()
    want = {"pooling": getattr(encoder, "pooling", None) or conf["pooling"],
            "normalize": getattr(encoder, "normalize", conf["normalize"]),
            "max_length": getattr(encoder, "max_length", None) or conf["max_length"],
            "dtype": _weight_dtype(encoder)}
    diffs += [f"{k} {meta.get(k)!r}, the ranker uses {v!r}" for k, v in want.items()
              if v is not None and meta.get(k) != v]
    if diffs:
        raise EmbeddingMismatch(f"{cache.directory}: embedding cache does not match the checkpoint's encoder: "
                                f"{'; '.join(diffs)}; re-encode the corpus with `perank encode --model "
                                "CHECKPOINT --corpus ... --out ...` (it takes the encoder and its settings from the "
                                "checkpoint; add the --encoder given here, if any)")


def cache_encoder(model=None, encoder=None, **settings):
    """A loader (no arguments -> DenseEncoder) of the encoder `perank encode` makes a cache with; the
    arguments are checked now, the weights loaded when it is called. With a PE-Rank checkpoint `model`
    (the default when no plain `encoder` is given: the shipped model): the checkpoint's own encoder,
    loaded as `PERanker.from_pretrained` loads it (`encoder` then only says where its weights lie, as
    `perank rerank --encoder` does), so `check_cache_matches` accepts the cache by construction;
    `settings` (max_length, pooling, normalize, dtype) are then refused: the model sets them.
    With `encoder` alone: that encoder directory (or `packaged:` name) with `settings`."""
    given = {k: v for k, v in settings.items() if v is not None}
    if model is None and encoder is not None:
        from perank_jax.weights.encoder import load_encoder
        path = resolve_model_path(encoder)
        return lambda: load_encoder(path, **given)
    if given:
        flags = ["--no-normalize" if k == "normalize" else "--" + k.replace("_", "-") for k in sorted(given)]
        raise ValueError(f"{', '.join(flags)}: set by the model "
                         f"({model or 'the shipped one'}), so that its reranking accepts the cache; give them only "
                         "with a plain --encoder and no --model")
    path = resolve_model_path(model or "packaged:perank")
    return lambda: load_checkpoint_encoder(path, encoder_path=encoder)


def encoder_identity(encoder) -> tuple:
    """What makes two encoders give the same vector for a text: weights directory, pooling,
    normalisation, max_length and weight dtype (the key of a shared text -> vector memo)."""
    return (str(getattr(encoder, "path", None) or id(encoder)), getattr(encoder, "pooling", None),
            getattr(encoder, "normalize", None), getattr(encoder, "max_length", None), _weight_dtype(encoder))


def open_cache(cache, encoder, config: PERankConfig | None, dim: int) -> EmbeddingCache:
    """An EmbeddingCache (or the directory of one) checked against the ranker's encoder."""
    if not isinstance(cache, EmbeddingCache):
        cache = load_embedding_cache(cache, verify="lazy")
    check_cache_matches(cache, encoder, config, dim)
    return cache


def cache_and_title_format(directory, title_format: bool):
    """(cache, title format to read documents with) for `perank rerank --embeddings`: passages
    encoded on the fly must be formatted as the cache's were (BEIR, `perank encode`'s default,
    unless it was run with --title-format plain); --title-format against a plain cache is refused."""
    cache = load_embedding_cache(directory, verify="lazy")
    beir = cache.title_format
    if title_format and not beir:
        raise CacheError(f"{directory}: encoded with `--title-format plain`, but --title-format (BEIR) was given; "
                         "drop it, or re-encode the corpus with `perank encode --title-format beir`")
    return cache, beir


def passage_vectors(encoder, text_lists, docid_lists=None, cache: EmbeddingCache | None = None,
                    memo: dict | None = None, extra_texts=None):
    """Encoder vectors for every passage, and for `extra_texts` (e.g. queries; never from the cache).

    Returns (per-list float32 arrays [n_i (+1 with extra_texts), E], per-list count of passages
    encoded on the fly, per-list count taken from the cache, seconds spent). A passage is taken
    from the cache by docid, else from `memo` by text, else encoded (each distinct text once;
    `memo` then remembers it)."""
    t0 = time.perf_counter()
    index = cache.index if cache is not None else {}
    lists = [list(ts) + ([extra_texts[i]] if extra_texts is not None else []) for i, ts in enumerate(text_lists)]
    src, cached_rows, todo = [], [], {}
    on_the_fly, from_cache = [0] * len(lists), [0] * len(lists)
    for i, ts in enumerate(lists):
        ids = docid_lists[i] if docid_lists is not None else [None] * len(text_lists[i])
        for j, text in enumerate(ts):
            row = index.get(ids[j]) if j < len(ids) and ids[j] is not None else None
            if row is not None:
                src.append(("cache", len(cached_rows)))
                cached_rows.append(row)
                from_cache[i] += 1
            elif memo is not None and text in memo:
                src.append(("memo", text))
            else:
                src.append(("new", todo.setdefault(text, len(todo))))
                on_the_fly[i] += j < len(text_lists[i])
    new = np.asarray(encoder.encode(list(todo)), np.float32) if todo else None
    if memo is not None and todo:
        memo.update(zip(todo, new))
    if cached_rows:
        got = cache.rows(cached_rows)                              # one sorted read of the memory map
    rows = [got[k] if kind == "cache" else new[k] if kind == "new" else memo[k] for kind, k in src]
    dim = rows[0].shape[-1] if rows else 1
    out, at = [], 0
    for ts in lists:
        out.append(np.stack(rows[at:at + len(ts)]).astype(np.float32) if ts else np.zeros((0, dim), np.float32))
        at += len(ts)
    return out, on_the_fly, from_cache, time.perf_counter() - t0
