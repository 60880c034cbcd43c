"""The shapes a server compiles before it reports ready, so no request waits for a compile.

A batch's decode shape is (rows bucket B, prompt-length bucket T, passage bucket N) (PERanker pads
each to its buckets). A request has at most `max_query_tokens` query tokens and is reranked in
windows of at most `window` documents, so T and N take few values; the batches the server can form
have 1..max_batch requests, so B takes the powers of two up to max_batch. Warm-up runs one
`rerank_batch` for every B and every (N, T) a window can reach (for each N, queries of growing length
cross every T bucket on the way from the shortest to the longest query), then every encoder length
bucket a text of at most max_text_chars can reach, every projector row bucket the limits allow,
and one request of `max_documents` documents. With the server's shared prefix (`--share-prefix head`,
the default) a batch of one-window requests of one size prefills the template head in a one-row
table and feeds the rest, any other batch its whole prompts (inference/prefix.py), so every batch
of 2 or more is run both ways (the same window size, and one request a document short): every shape
is warmed. With `all` (each query's own prefix too) a batch mixing requests longer than the window
may meet a table shape on first use (perank_compiles_after_warmup counts it).
"""
from __future__ import annotations

import logging
import time

import numpy as np

from perank_jax.core.buckets import round_up

log = logging.getLogger("perank.serve")


def batch_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, ... below max_batch, and max_batch: one batch of each rows bucket."""
    out, b = [], 1
    while b < max_batch:
        out.append(b)
        b *= 2
    return out + [max_batch]


def _query(tokenizer, words: int, limit: int) -> str:
    """A query of about `words` tokens, never over `limit` tokens."""
    while words > 1:
        q = " ".join(["x"] * words)
        if len(tokenizer(q, add_special_tokens=False)["input_ids"]) <= limit:
            return q
        words -= 1
    return "x"


def window_shapes(ranker, settings) -> list[tuple[int, str]]:
    """[(documents in the window, query)]: one per (N bucket, T bucket) a window can reach. Every
    window size is tried with queries of growing length (steps under a length bucket, up to two
    tokens past the limit, as a query's tokens can merge differently inside the prompt), so every
    T bucket between the shortest and the longest prompt of each N bucket is reached."""
    top = min(settings.window or settings.max_documents, settings.max_documents)
    qt = int(ranker.query_token)
    limit = settings.max_query_tokens + 2
    step = max(1, ranker.length_bucket // 2)
    words = sorted({1, limit, *range(1, limit, step)})
    queries = list(dict.fromkeys(_query(ranker.tokenizer, w, limit) for w in words))
    out, seen = [], set()
    for n in range(top, 0, -1):
        for q in queries:
            key = (round_up(n + qt, ranker.passage_bucket),
                   round_up(len(ranker.tokenized_prompt(q, n)), ranker.length_bucket))
            if key not in seen:
                seen.add(key)
                out.append((n, q))
    return out


def _warm_encoder(encoder, max_text_chars: int) -> None:
    """Every length bucket a text of at most max_text_chars can reach (a token covers at least one
    UTF-8 byte, so at most 4 per character, plus the encoder's 2 special tokens)."""
    buckets = getattr(encoder, "buckets", None) or ()
    longest = 4 * max_text_chars + 2
    for i, length in enumerate(sorted(buckets)):     # [CLS] + words + [SEP] fills the bucket
        if i and sorted(buckets)[i - 1] >= longest:
            break
        encoder.encode([" ".join(["x"] * max(1, length - 2))])


def _warm_projector(ranker, settings) -> None:
    rows = settings.max_batch * (settings.max_documents + int(ranker.query_token))
    dim = int(ranker.projector.in_dim)
    for n in range(128, round_up(rows, 128) + 1, 128):
        zeros = np.zeros((n, dim), np.float32)
        ranker.project_rows(zeros, zeros)


def warm_up(ranker, settings, mode: str, log_fn=log.info) -> dict:
    """Compile everything the server can be asked for; returns {"seconds", "batches"}."""
    t0 = time.perf_counter()
    _warm_encoder(ranker.encoder, settings.max_text_chars)
    _warm_projector(ranker, settings)
    shapes = window_shapes(ranker, settings)
    runs = 0
    kw = dict(window=settings.window, stride=settings.stride, top_k=settings.top_k, mode=mode)
    for b in batch_sizes(settings.max_batch):
        for n, q in shapes:
            docs = [f"warm-up passage {i}" for i in range(n)]
            ranker.rerank_batch([q] * b, [docs] * b, **kw)
            runs += 1
            if ranker.share_prefix and b > 1 and n > 1:      # mixed sizes: one prefix row per request
                ranker.rerank_batch([q] * b, [docs[:-1]] + [docs] * (b - 1), **kw)
                runs += 1
        log_fn(f"warm-up: batches of {b} compiled ({len(shapes)} window shapes, "
               f"{time.perf_counter() - t0:.1f} s so far)")
    if settings.max_documents > (settings.window or settings.max_documents):
        docs = [f"warm-up passage {i}" for i in range(settings.max_documents)]
        ranker.rerank_batch(["x"], [docs], **kw)
        runs += 1
    return {"seconds": time.perf_counter() - t0, "batches": runs}
