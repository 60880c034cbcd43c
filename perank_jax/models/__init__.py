"""Layer 2, the models: structure and maths in Flax NNX, no file I/O (weights/ loads them).

    decoder, attention     Mistral / Llama (GQA, RoPE, sliding window, KV cache, layers under lax.scan)
                           and LoadedDecoder, the object a user holds
    encoder, dense,        BERT / MiniLM / BGE, MPNet, JinaBERT-v2; DenseEncoder (tokenise, bucket,
    pooling                jitted pooled forward); mean / cls / last pooling
    projector_base,        the Projector base class, the registry and the one jitted `project`,
    projector,             the built-in kinds (linear, identity, mlp, multi_token, film)
    projector_kinds
    lora                   LoRA factors for the stacked decoder weights and their merge
    presets                named model shapes (configs/models/*.yaml) and random models of them
    perank                 THE PE-Rank maths training and decoding share (slots, keys, scores)
"""
from perank_jax.models.decoder import Decoder, DecoderConfig, KVCache, LoadedDecoder, build_decoder, init_cache
from perank_jax.models.dense import DenseEncoder
from perank_jax.models.encoder import Encoder, EncoderConfig, EncoderError
from perank_jax.models.presets import decoder_preset, encoder_preset, load_preset, preset_names, random_decoder
from perank_jax.models.projector import build_projector, project, registered_projectors
from perank_jax.models.projector_base import Projector, ProjectorError, register_projector

__all__ = [
    "Decoder", "DecoderConfig", "KVCache", "LoadedDecoder", "build_decoder", "init_cache",
    "DenseEncoder", "Encoder", "EncoderConfig", "EncoderError",
    "decoder_preset", "encoder_preset", "load_preset", "preset_names", "random_decoder",
    "Projector", "ProjectorError", "build_projector", "project", "register_projector", "registered_projectors",
]
