"""Layer 3, the data on disk: retrieval files, embedding caches, training records, the fetched public data.

    trec, trec_write       one reader and one atomic writer per retrieval format (errors name file:line)
    embcache               reading the verified embedding cache `perank encode` writes
    embcache_build         writing it, resumably
    training_records       builders of the training JSONL (read by perank_jax.train.data)
    fetch, prepare         `perank data fetch`: pinned, checksum-verified downloads, and the layout
                           the configs and builders read
    ir_datasets            evaluation sets through ir_datasets, when installed and online
"""
from perank_jax.data.embcache import CacheError, EmbeddingCache, load_embedding_cache
from perank_jax.data.embcache_build import build_embedding_cache
from perank_jax.data.fetch import FetchError, fetch_all
from perank_jax.data.training_records import (STAGE1_PROMPT, listwise_record, qrels_lists, reconstruction_record, request_lists,
                                              write_records)
from perank_jax.data.trec import (Candidate, DataError, Hit, Request, build_rerank_requests, read_corpus, read_qrels,
                                  read_queries, read_requests, read_run)
from perank_jax.data.trec_write import write_qrels, write_requests, write_run

__all__ = [
    "CacheError", "EmbeddingCache", "load_embedding_cache", "build_embedding_cache", "FetchError", "fetch_all",
    "STAGE1_PROMPT", "listwise_record", "qrels_lists", "reconstruction_record", "request_lists", "write_records",
    "Candidate", "DataError", "Hit", "Request", "build_rerank_requests", "read_corpus", "read_qrels",
    "read_queries", "read_requests", "read_run", "write_qrels", "write_requests", "write_run",
]
