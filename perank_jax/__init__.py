"""perank-jax: PE-Rank listwise reranking with passage embeddings, in JAX (the top-level public API).

Public API (imported lazily, so `import perank_jax` loads no JAX and `perank --help` stays fast):
    load_decoder(path, dtype="float32", mesh=None)   Flax NNX Mistral/Llama decoder
    load_encoder(path, pooling=None, normalize=True, max_length=512, dtype="float32")
    load_checkpoint(path, ...)                        a PE-Rank checkpoint or adapter directory's parts
    PERanker.from_pretrained(path, encoder_path=None, dtype="float32")   load, rerank, rerank_batch
    rerank_requests(ranker, requests, ...)            many requests with per-query stats
    read_requests(path) / read_run, read_corpus, read_queries, read_qrels   the retrieval files
    build_embedding_cache(...), load_embedding_cache(dir)                 encode a corpus once
    load_train_config(path, overrides), fit(config)   the training entry (`perank train`)
    evaluate.evaluate(qrels, run, measures)           ranking metrics (`perank evaluate`), in the subpackage
    PERankConfig                                      a PE-Rank model's typed settings (its config.json)
    Projector, register_projector("name")             write and register your own projector kind
The layers are subpackages with their own `__all__` (docs/design.md): core, listwise, models,
weights, data, inference, train, evaluate, serve, cli.
"""
__version__ = "0.1.0"

_LAZY = {
    "load_decoder": ("perank_jax.weights", "load_decoder"),
    "load_encoder": ("perank_jax.weights", "load_encoder"),
    "load_checkpoint": ("perank_jax.weights", "load_checkpoint"),
    "PERankConfig": ("perank_jax.weights", "PERankConfig"),
    "PERanker": ("perank_jax.inference", "PERanker"),
    "rerank_requests": ("perank_jax.inference", "rerank_requests"),
    "read_requests": ("perank_jax.data", "read_requests"),
    "read_run": ("perank_jax.data", "read_run"),
    "read_corpus": ("perank_jax.data", "read_corpus"),
    "read_queries": ("perank_jax.data", "read_queries"),
    "read_qrels": ("perank_jax.data", "read_qrels"),
    "build_embedding_cache": ("perank_jax.data", "build_embedding_cache"),
    "load_embedding_cache": ("perank_jax.data", "load_embedding_cache"),
    "load_train_config": ("perank_jax.train", "load_train_config"),
    "fit": ("perank_jax.train", "fit"),
    "Projector": ("perank_jax.models", "Projector"),
    "register_projector": ("perank_jax.models", "register_projector"),
}
SUBPACKAGES = ("core", "listwise", "models", "weights", "data", "inference", "train", "evaluate", "serve", "cli")


def __getattr__(name):
    import importlib
    if name in _LAZY:
        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    if name in SUBPACKAGES:
        return importlib.import_module(f"perank_jax.{name}")
    raise AttributeError(f"module 'perank_jax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | set(SUBPACKAGES))


__all__ = list(_LAZY)

