"""Where the frozen passage embeddings of the training data come from.

The encoder is frozen in both stages, so every unique passage text is embedded once,
before training, by one of:
  - a precomputed table: an .npz with `texts` (str array) and `vectors` [N, d];
  - an encoder embedding cache of the corpus (perank_jax.data.embcache), the encoder
    covering passages the cache lacks;
  - a frozen dense encoder run directly (perank_jax.models.encoder.load_encoder).
Each is a callable `texts -> np.ndarray [len(texts), d] float32`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from perank_jax.core.atomic import atomic_write
from perank_jax.weights.io import read_npz

Embedder = Callable[[Sequence[str]], np.ndarray]


class EmbeddingTableError(ValueError):
    pass


def save_table(path: str | os.PathLike, texts: Sequence[str], vectors: np.ndarray) -> Path:
    """Write an embedding table atomically (temp file + os.replace)."""
    path = Path(path)
    vectors = np.asarray(vectors, np.float32)
    if vectors.shape[0] != len(texts):
        raise EmbeddingTableError(f"{len(texts)} texts but {vectors.shape[0]} vectors")
    atomic_write(path, lambda f: np.savez(f, texts=np.asarray(list(texts), dtype=object).astype(str),
                                          vectors=vectors), binary=True)
    return path


def table_embedder(path: str | os.PathLike) -> Embedder:
    """Look texts up in a precomputed table; a text missing from it is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: embedding table not found")
    z = read_npz(path, "embedding table", "write it with perank_jax.train.embeddings.save_table (np.savez of "
                 "'texts' and 'vectors')", kinds="fiuU", error=EmbeddingTableError)
    if "texts" not in z or "vectors" not in z:
        raise EmbeddingTableError(f"{path}: expected arrays 'texts' and 'vectors', found {sorted(z)}")
    texts, vectors = [str(t) for t in z["texts"]], np.asarray(z["vectors"], np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(texts):
        raise EmbeddingTableError(f"{path}: {len(texts)} texts but vectors of shape {vectors.shape}")
    row = {t: i for i, t in enumerate(texts)}

    def embed(batch: Sequence[str]) -> np.ndarray:
        missing = [t for t in batch if t not in row]
        if missing:
            raise EmbeddingTableError(f"{path}: {len(missing)} passage text(s) have no embedding, e.g. "
                                      f"{missing[0][:80]!r}")
        return vectors[[row[t] for t in batch]]
    embed.dim = vectors.shape[1]
    return embed


def cache_embedder(cache_dir, fallback: Embedder | None = None) -> Embedder:
    """Look passages up in an encoder embedding cache (perank_jax.data.embcache: its directory,
    or an already opened EmbeddingCache), matching a record's passage text to the cached corpus
    document with the same (whitespace-normalised) text; texts not in the corpus go to
    `fallback` (e.g. the encoder) or are an error."""
    from perank_jax.data.embcache import EmbeddingCache, load_embedding_cache
    from perank_jax.data.trec import read_corpus
    cache = cache_dir if isinstance(cache_dir, EmbeddingCache) else load_embedding_cache(cache_dir)
    cache_dir = cache.directory
    corpus = cache.metadata["corpus"]
    if not Path(corpus["path"]).is_file():
        raise FileNotFoundError(f"{cache_dir}: the cached corpus {corpus['path']} is gone; its texts are "
                                "needed to match training passages to cached documents")
    docs = read_corpus(corpus["path"], title_format=corpus["title_format"])
    by_text = {" ".join(t.split()): d for d, t in docs.items()}

    def embed(texts: Sequence[str]) -> np.ndarray:
        keys = [" ".join(t.split()) for t in texts]
        hit = [k in by_text for k in keys]
        out = np.zeros((len(texts), cache.dim), np.float32)
        if any(hit):
            out[np.flatnonzero(hit)] = cache.lookup([by_text[k] for k, h in zip(keys, hit) if h])
        miss = [i for i, h in enumerate(hit) if not h]
        if miss:
            if fallback is None:
                raise EmbeddingTableError(f"{cache_dir}: {len(miss)} passage text(s) are not in the cached corpus, "
                                          f"e.g. {texts[miss[0]][:80]!r}; set model.encoder to embed them")
            out[miss] = fallback([texts[i] for i in miss])
        return out
    embed.dim = cache.dim
    return embed


def encoder_embedder(encoder_dir: str | os.PathLike, max_length: int = 128, append_eos: bool = False,
                     batch_size: int = 32) -> Embedder:
    """Embed with the frozen dense encoder. append_eos reproduces the reference's training-time
    text (`text + eos_token`), which its inference does not do (a known train/inference
    mismatch); off by default."""
    from perank_jax.weights.encoder import load_encoder
    enc = load_encoder(encoder_dir, max_length=max_length)
    eos = getattr(enc.tokenizer, "eos_token", None) if append_eos else None

    def embed(texts: Sequence[str]) -> np.ndarray:
        texts = [t + eos for t in texts] if eos else list(texts)
        return np.asarray(enc.encode(texts, batch_size=batch_size), np.float32)
    embed.dim = enc.dim
    embed.encoder = enc
    return embed
