"""perank-jax: PE-Rank listwise reranking with passage embeddings, in JAX.

Public API (imported lazily so `import perank_jax` stays cheap):
    load_decoder(path, dtype="float32", mesh=None)   Flax NNX Mistral/Llama decoder
    load_encoder(path, pooling=None, normalize=True, max_length=512, dtype="float32")
    PERanker.from_pretrained(path, encoder_path=None, dtype="float32")
    PERankConfig                                      a PE-Rank model's typed settings (its config.json)
    Projector, register_projector("name")             write and register your own projector kind
"""
__version__ = "0.1.0"

_LAZY = {
    "load_decoder": ("perank_jax.weights.decoder", "load_decoder"),
    "load_encoder": ("perank_jax.weights.encoder", "load_encoder"),
    "PERanker": ("perank_jax.inference.ranker", "PERanker"),
    "PERankConfig": ("perank_jax.weights.perank_config", "PERankConfig"),
    "Projector": ("perank_jax.models.projector", "Projector"),
    "register_projector": ("perank_jax.models.projector", "register_projector"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'perank_jax' has no attribute {name!r}")


__all__ = list(_LAZY)
