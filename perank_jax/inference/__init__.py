"""Layer 4, inference: the compiled engine (prefill and constrained decode) and the PERanker over it.

    decode           constrained decoding as a masked argmax in one lax.scan; THE place a ranking is
                     made from scores (finish_order, NonFiniteScores)
    prefix           a query's shared prompt prefix prefilled once, reused by every window
    engine           DecodeEngine: batches of windows padded, sharded, compiled once per bucket, decoded
    scheduler        the sliding windows of all queries, stage by stage, in batches of the engine's size
    passage_vectors  encoder vectors by docid from an embedding cache, by text from a memo, or encoded
    ranker           PERanker, the facade: load, encode -> project, then the schedule over the engine
    batch_rerank     many requests with per-query stats (what `perank rerank` runs)
    rerank_parts     `perank rerank`'s output files, and resumable parts over several processes
    generate         greedy text generation (the text-listwise baseline, `perank generate`)
"""
from perank_jax.inference.batch_rerank import check_requests, rerank_requests
from perank_jax.inference.decode import NonFiniteScores, finish_order
from perank_jax.inference.engine import DecodeEngine
from perank_jax.inference.generate import GENERATE_TRACES, chat_generate, greedy_generate, prompt_bucket
from perank_jax.inference.passage_vectors import EmbeddingMismatch, cache_encoder, open_cache
from perank_jax.inference.ranker import PERanker
from perank_jax.inference.rerank_parts import rerank_in_parts, write_reranked
from perank_jax.inference.scheduler import schedule

__all__ = [
    "check_requests", "rerank_requests", "NonFiniteScores", "finish_order", "DecodeEngine", "schedule",
    "GENERATE_TRACES", "chat_generate", "greedy_generate", "prompt_bucket",
    "EmbeddingMismatch", "cache_encoder", "open_cache", "PERanker",
    "rerank_in_parts", "write_reranked",
]
