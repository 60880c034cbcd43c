"""HF safetensors key maps for the dense encoders (BERT, MPNet, JinaBERT v2), with shape checks,
and the loader that places every tensor into the Flax `Encoder`'s parameters.

Each of our parameters maps to one HF key, or (stacked layers) to one key per layer with `{i}`.
HF Linear weights are [out, in]; ours are [in, out] (transposed on read). Keys of heads the
encoder never uses (pooler, MLM/NSP heads, position-id buffers) are ignored; every other
extra key is an error, as is any missing or wrong-shape tensor (one WeightError listing all).
Checkpoints saved from a task model (`bert.`/`mpnet.` prefix) are read through the prefix.
"""
from __future__ import annotations

import re

import numpy as np

from perank_jax.weights.io import SafetensorsCheckpoint, WeightError, check_keymap, place

# (our name, HF suffix, transpose)
_EMBED = {
    "word": ("embeddings.word_embeddings.weight", False),
    "pos": ("embeddings.position_embeddings.weight", False),
    "type": ("embeddings.token_type_embeddings.weight", False),
    "ln_scale": ("embeddings.LayerNorm.weight", False),
    "ln_bias": ("embeddings.LayerNorm.bias", False),
    "rel_bias": ("encoder.relative_attention_bias.weight", False),
}

_BERT_ATTN = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
              "o": "attention.output.dense", "ln1": "attention.output.LayerNorm"}
_MPNET_ATTN = {"q": "attention.attn.q", "k": "attention.attn.k", "v": "attention.attn.v",
               "o": "attention.attn.o", "ln1": "attention.LayerNorm"}
_MLP = {"up": "intermediate.dense", "down": "output.dense", "ln2": "output.LayerNorm"}
_JINA_GLU = {"gate": "mlp.gated_layers", "down": "mlp.wo", "ln2": "mlp.layernorm"}

IGNORED = re.compile(r"^(pooler\.|cls\.|lm_head\.|embeddings\.position_ids$|embeddings\.token_type_ids$)")


def _layer_map(arch: str) -> dict[str, tuple[str, bool]]:
    modules = dict(_MPNET_ATTN if arch == "mpnet" else _BERT_ATTN)
    modules.update(_JINA_GLU if arch == "jina" else _MLP)
    out = {}
    for ours, hf in modules.items():
        if ours.startswith("ln"):
            out[f"{ours}_scale"] = (f"{hf}.weight", False)
            out[f"{ours}_bias"] = (f"{hf}.bias", False)
        else:
            out[f"{ours}_w"] = (f"{hf}.weight", True)
            if ours != "gate":                       # JinaBERT's gated_layers has no bias
                out[f"{ours}_b"] = (f"{hf}.bias", False)
    return out


def encoder_keymap(cfg) -> dict[str, tuple[str, bool, tuple[int, ...]]]:
    """HF key (with `{i}` for per-layer keys) -> (our param path, transpose, our per-layer shape)."""
    from perank_jax.models.encoder import embed_param_shapes, layer_param_shapes
    out = {}
    for name, shape in embed_param_shapes(cfg).items():
        hf, tr = _EMBED[name]
        out[hf] = (f"emb.{name}", tr, shape)
    lmap = _layer_map(cfg.arch)
    for name, shape in layer_param_shapes(cfg).items():
        hf, tr = lmap[name]
        out[f"encoder.layer.{{i}}.{hf}"] = (f"layers.{name}", tr, shape)
    return out


def expected_hf_shapes(cfg) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for hf, (_, tr, shape) in encoder_keymap(cfg).items():
        hf_shape = tuple(reversed(shape)) if tr else shape
        if "{i}" in hf:
            for i in range(cfg.num_layers):
                shapes[hf.format(i=i)] = hf_shape
        else:
            shapes[hf] = hf_shape
    return shapes


def _prefix(keys, cfg) -> str:
    """'' or the task-model prefix ('bert.', 'mpnet.', 'model.') under which the encoder is stored."""
    if "embeddings.word_embeddings.weight" in keys:
        return ""
    for p in ("bert.", "mpnet.", "model.", "roberta."):
        if p + "embeddings.word_embeddings.weight" in keys:
            return p
    return ""


def load_encoder_weights(model, ckpt: SafetensorsCheckpoint, cfg, dtype, source: str) -> None:
    """Check every key and shape, then place the tensors into `model` (an `Encoder`, possibly
    abstract from `nnx.eval_shape`) as `dtype` arrays."""
    keys = set(ckpt.keys())
    pre = _prefix(keys, cfg)
    present = {k[len(pre):]: tuple(ckpt.shape(k)) for k in keys if k.startswith(pre)}
    others = [k for k in keys if not k.startswith(pre)]
    check_keymap(source, present, expected_hf_shapes(cfg),
                 ignore=lambda k: bool(IGNORED.match(k)))
    bad_prefix = [k for k in others if not IGNORED.match(k)]
    if bad_prefix:
        raise WeightError(f"{source}: unexpected tensors outside the encoder: {sorted(bad_prefix)[:20]}")

    def read_one(key, tr, idx):
        a = ckpt.get(pre + key)
        a = a.T if tr else a
        return np.asarray(a[idx])

    for hf, (path, tr, shape) in encoder_keymap(cfg).items():
        mod, name = path.split(".")
        var = getattr(getattr(model, mod), name)
        if "{i}" in hf:
            def read(idx, hf=hf, tr=tr):
                layers = range(cfg.num_layers)[idx[0]]
                return np.stack([read_one(hf.format(i=i), tr, idx[1:]) for i in layers])
            full = (cfg.num_layers,) + shape
        else:
            def read(idx, hf=hf, tr=tr):
                return read_one(hf, tr, idx)
            full = shape
        arr = place(read, full, dtype)
        if not np.isfinite(np.asarray(arr, np.float32)).all():
            raise WeightError(f"{source}: tensor {hf} contains NaN or Inf")
        var.set_value(arr)
