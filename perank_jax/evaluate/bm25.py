"""BM25 first stage over a local corpus with bm25s (`perank retrieve`).

Defaults follow the shared data README's SciFact run: bm25s "lucene" BM25, k1 0.9, b 0.4,
English stop words, Snowball English stemming (PyStemmer), title and text joined by a
space. On SciFact test this gives nDCG@10 0.6762 exactly like the shipped run.

The run keeps bm25s' top-k per query; tied scores are ordered by corpus position and then
nudged down by one ulp each, so the scores written to the run strictly decrease and
trec_eval sees the same order as the reranker.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from perank_jax.data.trec import Hit


def _tokenize(texts, stopwords, stemmer):
    import bm25s
    return bm25s.tokenize(list(texts), stopwords=stopwords, stemmer=stemmer, show_progress=False)


def _stemmer(name: str | None):
    if not name or name == "none":
        return None
    try:
        import Stemmer
    except ImportError:
        raise ValueError("stemming needs PyStemmer (pip install PyStemmer), or use --stemmer none") from None
    try:
        return Stemmer.Stemmer(name)
    except KeyError:
        raise ValueError(f"unknown stemmer language {name!r}") from None


def strictly_decreasing(scores: np.ndarray) -> np.ndarray:
    """Scores sorted descending -> the same values, each tie nudged below its predecessor."""
    out = np.asarray(scores, dtype=np.float64).copy()
    for i in range(1, len(out)):
        if not out[i] < out[i - 1]:
            out[i] = np.nextafter(out[i - 1], -np.inf)
    return out


def bm25_run(corpus: Mapping[str, str], queries: Mapping[str, str], k: int = 100, k1: float = 0.9,
             b: float = 0.4, stemmer: str | None = "english", stopwords: str | None = "en",
             n_threads: int = 1, fill: bool = False) -> dict[str, list[Hit]]:
    """Top-k BM25 hits per query, best first, with strictly decreasing scores; only documents that
    match a query term count (a query that matches nothing gets no hits), unless `fill`: then every
    query gets k hits, unmatched documents (score 0) after the matches in corpus order, as the public
    data's SciFact / NFCorpus runs have them (perank_jax/data/prepare.py)."""
    import bm25s
    if not corpus:
        raise ValueError("the corpus is empty")
    if not queries:
        raise ValueError("no queries to retrieve for")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    stem = _stemmer(stemmer)
    docids = list(corpus)
    index = bm25s.BM25(k1=k1, b=b)
    index.index(_tokenize(corpus.values(), stopwords, stem), show_progress=False)
    qids = list(queries)
    k = min(k, len(docids))
    docs, scores = index.retrieve(_tokenize(queries.values(), stopwords, stem), k=k,
                                  show_progress=False, n_threads=n_threads)
    run = {}
    for qid, idx, sc in zip(qids, np.asarray(docs), np.asarray(scores, dtype=np.float64)):
        order = np.lexsort((idx, -sc))  # score descending, ties by corpus position
        if not fill:
            order = order[sc[order] > 0]    # score 0 = no query term matched: not a hit (may leave none)
        idx, sc = idx[order], strictly_decreasing(sc[order])
        run[qid] = [Hit(docids[j], float(s), r + 1) for r, (j, s) in enumerate(zip(idx, sc))]
    return run
