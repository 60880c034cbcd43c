"""Decoder checkpoints on disk: the ONE HF key map for Mistral/Llama (both directions, shape
checks), `load_decoder` (HF directory or GGUF) and `to_hf_tensors` (export).

HF stores Linear weights as [out, in]; perank-jax keeps [in, ..., out] with heads
split out (q: [L, D, H, hd], o: [L, H, hd, D]) and layers stacked. Loading reads
each tensor lazily (safetensors memmap or dequantised GGUF) and every device reads
only its own slice, so a sharded 7B checkpoint never needs 2x its size in host RAM.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from perank_jax.core.config_files import read_config_json
from perank_jax.models.decoder import LAYER_PARAMS, Decoder, DecoderConfig, LoadedDecoder, build_decoder, param_specs
from perank_jax.core.sharding import named_sharding
from perank_jax.weights.io import SafetensorsCheckpoint, WeightError, check_keymap, load_hf_tokenizer, place

_LAYER = r"model\.layers\.(\d+)\."
# (regex, param name, HF shape fn, HF->ours transform, ours->HF transform)
_MAP: list[tuple[str, str, Callable, Callable, Callable]] = [
    (r"model\.embed_tokens\.weight", "embedding",
     lambda c: (c.vocab_size, c.hidden_size), lambda w, c: w, lambda w, c: w),
    (_LAYER + r"input_layernorm\.weight", "attn_norm",
     lambda c: (c.hidden_size,), lambda w, c: w, lambda w, c: w),
    (_LAYER + r"self_attn\.q_proj\.weight", "q",
     lambda c: (c.num_heads * c.head_dim, c.hidden_size),
     lambda w, c: w.T.reshape(c.hidden_size, c.num_heads, c.head_dim),
     lambda w, c: w.reshape(c.hidden_size, -1).T),
    (_LAYER + r"self_attn\.k_proj\.weight", "k",
     lambda c: (c.num_kv_heads * c.head_dim, c.hidden_size),
     lambda w, c: w.T.reshape(c.hidden_size, c.num_kv_heads, c.head_dim),
     lambda w, c: w.reshape(c.hidden_size, -1).T),
    (_LAYER + r"self_attn\.v_proj\.weight", "v",
     lambda c: (c.num_kv_heads * c.head_dim, c.hidden_size),
     lambda w, c: w.T.reshape(c.hidden_size, c.num_kv_heads, c.head_dim),
     lambda w, c: w.reshape(c.hidden_size, -1).T),
    (_LAYER + r"self_attn\.o_proj\.weight", "o",
     lambda c: (c.hidden_size, c.num_heads * c.head_dim),
     lambda w, c: w.T.reshape(c.num_heads, c.head_dim, c.hidden_size),
     lambda w, c: w.reshape(-1, c.hidden_size).T),
    (_LAYER + r"post_attention_layernorm\.weight", "mlp_norm",
     lambda c: (c.hidden_size,), lambda w, c: w, lambda w, c: w),
    (_LAYER + r"mlp\.gate_proj\.weight", "gate",
     lambda c: (c.intermediate_size, c.hidden_size), lambda w, c: w.T, lambda w, c: w.T),
    (_LAYER + r"mlp\.up_proj\.weight", "up",
     lambda c: (c.intermediate_size, c.hidden_size), lambda w, c: w.T, lambda w, c: w.T),
    (_LAYER + r"mlp\.down_proj\.weight", "down",
     lambda c: (c.hidden_size, c.intermediate_size), lambda w, c: w.T, lambda w, c: w.T),
    (r"model\.norm\.weight", "final_norm", lambda c: (c.hidden_size,), lambda w, c: w, lambda w, c: w),
    (r"lm_head\.weight", "lm_head",
     lambda c: (c.vocab_size, c.hidden_size), lambda w, c: w.T, lambda w, c: w.T),
]
_BY_PARAM = {m[1]: m for m in _MAP}
_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")
_STACKED = set(LAYER_PARAMS)
_all_finite = jax.jit(lambda a: jnp.all(jnp.isfinite(a)))


def hf_key(param: str, layer: int | None = None) -> str:
    pattern = _BY_PARAM[param][0]
    return pattern.replace(_LAYER, f"model.layers.{layer}.").replace("\\", "")


def expected_hf_shapes(cfg: DecoderConfig) -> dict[str, tuple[int, ...]]:
    out = {}
    for name, (_, _axes) in param_specs(cfg).items():
        shape_fn = _BY_PARAM[name][2]
        if name not in _STACKED:
            out[hf_key(name)] = shape_fn(cfg)
        else:
            for layer in range(cfg.num_layers):
                out[hf_key(name, layer)] = shape_fn(cfg)
    return out


def load_params(source, cfg: DecoderConfig, dtype, mesh=None, source_name: str = "checkpoint",
                ignore: Callable[[str], bool] = lambda k: False) -> dict[str, jax.Array]:
    """Read every decoder parameter from `source` (keys()/shape()/get() in HF layout) onto `mesh`."""
    expected = expected_hf_shapes(cfg)
    present = {k: tuple(source.shape(k)) for k in source.keys()}
    optional = {hf_key("lm_head")} if cfg.tie_word_embeddings else set()
    if cfg.tie_word_embeddings:
        expected = {**expected, hf_key("lm_head"): (cfg.vocab_size, cfg.hidden_size)}
    check_keymap(source_name, present, expected, optional=optional,
                 ignore=lambda k: bool(_IGNORED.match(k)) or ignore(k))
    params = {}
    for name, (shape, axes) in param_specs(cfg).items():
        to_ours = _BY_PARAM[name][3]
        sharding = named_sharding(mesh, axes, shape) if mesh is not None else None
        if name not in _STACKED:
            key = hf_key(name)
            read = lambda idx, key=key, f=to_ours: f(source.get(key), cfg)[idx]
        else:
            def read(idx, name=name, f=to_ours):
                layers = range(cfg.num_layers)[idx[0]]
                return np.stack([f(source.get(hf_key(name, i)), cfg)[idx[1:]] for i in layers])
        arr = place(read, shape, np.dtype(dtype), sharding)
        if not bool(_all_finite(arr)):
            raise WeightError(f"{source_name}: parameter {name} ({hf_key(name, 0) if name in _STACKED else hf_key(name)}"
                              f"{' ...' if name in _STACKED else ''}) contains NaN or Inf")
        params[name] = arr
    return params


def to_hf_tensors(model: Decoder) -> dict[str, np.ndarray]:
    """Decoder parameters as HF-named numpy arrays (for export)."""
    cfg = model.cfg
    out = {}
    for name in param_specs(cfg):
        value = np.asarray(jax.device_get(getattr(model, name)[...]))
        to_hf = _BY_PARAM[name][4]
        if name not in _STACKED:
            out[hf_key(name)] = np.ascontiguousarray(to_hf(value, cfg))
        else:
            for i in range(cfg.num_layers):
                out[hf_key(name, i)] = np.ascontiguousarray(to_hf(value[i], cfg))
    return out


def load_tokenizer(d: Path):
    """The directory's own HF tokenizer, or None when it has no tokenizer files."""
    if not any((d / f).exists() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        return None
    return load_hf_tokenizer(d)


def load_decoder(path, dtype="float32", mesh=None, param_dtype=None, remat=False,
                 ignore: Callable[[str], bool] = lambda k: False, unroll: bool = False) -> LoadedDecoder:
    """Load a Mistral/Llama decoder from an HF directory (safetensors) or a Llama-family GGUF file.
    unroll: unroll the layer scan (Decoder.unroll: faster steps, longer compiles)."""
    if path is None or str(path) == "":      # Path("") would be the working directory
        raise WeightError("the decoder path is empty (expected an HF model directory or a .gguf file)")
    path = Path(path)
    dtype = jnp.dtype(dtype)
    param_dtype = jnp.dtype(param_dtype) if param_dtype is not None else dtype
    if path.is_file() and path.suffix == ".gguf":
        from perank_jax.weights.gguf import GGUFSource
        source = GGUFSource(path)
        cfg = source.config
        tokenizer, tokenizer_error = None, None
        try:
            tokenizer = source.tokenizer()
        except Exception as e:  # optional for weights-only use; the reason is kept for callers
            tokenizer_error = f"the GGUF tokenizer could not be converted ({type(e).__name__}: {e})"
    elif path.is_dir():
        cfg = DecoderConfig.from_hf(read_config_json(path, WeightError, expected="an HF model directory or a .gguf file"), source=str(path / "config.json"))
        source = SafetensorsCheckpoint(path)
        tokenizer, tokenizer_error = load_tokenizer(path), None
    else:
        raise WeightError(f"{path}: not found (expected an HF model directory or a .gguf file)")
    params = load_params(source, cfg, param_dtype, mesh, source_name=str(path), ignore=ignore)
    model = build_decoder(cfg, params, dtype, mesh=mesh, remat=remat, unroll=unroll)
    return LoadedDecoder(model, tokenizer, str(path), tokenizer_error)
