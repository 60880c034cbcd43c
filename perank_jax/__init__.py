"""perank-jax: PE-Rank listwise reranking with passage embeddings, in JAX.

Public API (imported lazily so `import perank_jax` stays cheap):
    load_decoder(path, dtype="float32", mesh=None)   Flax NNX Mistral/Llama decoder
    load_encoder(path, pooling=None, normalize=True, max_length=512, dtype="float32")
    PERanker.from_pretrained(path, encoder_path=None, dtype="float32")
"""
__version__ = "0.1.0"

_LAZY = {
    "load_decoder": ("perank_jax.weights.decoder", "load_decoder"),
    "load_encoder": ("perank_jax.weights.encoder", "load_encoder"),
    "PERanker": ("perank_jax.ranker", "PERanker"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'perank_jax' has no attribute {name!r}")


__all__ = list(_LAZY)
