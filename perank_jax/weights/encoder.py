"""Encoder checkpoints on disk: `load_encoder` (an HF directory -> `DenseEncoder`), the HF
safetensors key maps for BERT, MPNet and JinaBERT v2 with shape checks, the tokenizer and the
sentence-transformers pooling config.

Each of our parameters maps to one HF key, or (stacked layers) to one key per layer with `{i}`.
HF Linear weights are [out, in]; ours are [in, out] (transposed on read). Keys of heads the
encoder never uses (pooler, MLM/NSP heads, position-id buffers) are ignored; every other
extra key is an error, as is any missing or wrong-shape tensor (one WeightError listing all).
Checkpoints saved from a task model (`bert.`/`mpnet.` prefix) are read through the prefix.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from flax import nnx

from perank_jax.core.constants import DTYPES, ENCODER_MAX_LENGTH
from perank_jax.core.config_files import read_config_json, read_json_object
from perank_jax.models.dense import DenseEncoder
from perank_jax.models.encoder import Encoder, EncoderConfig, EncoderError
from perank_jax.models.pooling import POOLINGS
from perank_jax.weights.io import SafetensorsCheckpoint, WeightError, check_keymap, load_hf_tokenizer, place

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.model")

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


def load_encoder(path, pooling: str | None = None, normalize: bool = True, max_length: int = ENCODER_MAX_LENGTH,
                 dtype: str = "float32") -> DenseEncoder:
    """Load an HF encoder directory (config.json, *.safetensors, tokenizer files) as a
    `DenseEncoder` with `.encode(texts, batch_size=...) -> np.ndarray [N, D]` and `.dim`.

    pooling: "mean" | "cls" | "last" | None (None: the sentence-transformers pooling config
    in the directory when present, else the config's `emb_pooler`, else mean)."""
    d = Path(path)
    if not d.is_dir():
        raise EncoderError(f"{d}: encoder directory not found")
    cfile = d / "config.json"
    hf = read_config_json(d, EncoderError, expected="an HF encoder directory")
    if dtype not in DTYPES:
        raise EncoderError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    cfg = EncoderConfig.from_hf(hf, str(cfile))
    tok = load_tokenizer(d)
    if len(tok) > cfg.vocab_size:
        raise EncoderError(f"{d}: tokenizer has {len(tok)} tokens but the model only "
                           f"{cfg.vocab_size} embeddings (tokenizer of another model?)")
    dt = DTYPES[dtype]
    model = nnx.eval_shape(lambda: Encoder(cfg, rngs=nnx.Rngs(0), dtype=dt, param_dtype=dt))
    load_encoder_weights(model, SafetensorsCheckpoint(d), cfg, dt, source=str(d))
    return DenseEncoder(cfg, model, tok, pooling=pooling or pooling_from_dir(d, hf), normalize=normalize,
                        max_length=max_length, path=str(d.resolve()), name=d.name)


def load_tokenizer(d: Path):
    """The encoder directory's own HF tokenizer (one EncoderError if missing or unloadable)."""
    if not any((d / f).exists() for f in TOKENIZER_FILES):
        raise EncoderError(f"{d}: no tokenizer files (expected one of {', '.join(TOKENIZER_FILES)}); "
                           "copy the model's tokenizer into the directory")
    try:
        return load_hf_tokenizer(d)
    except Exception as e:  # noqa: BLE001 - any tokenizer failure is one clear error
        raise EncoderError(f"{d}: cannot load the tokenizer ({type(e).__name__}: {e})") from None


def pooling_from_dir(d: Path, hf_config: dict) -> str:
    """Pooling named by the directory: sentence-transformers Pooling module config
    (modules.json -> its path, or 1_Pooling/), else the config's `emb_pooler` (JinaBERT),
    else mean."""
    pdir = d / "1_Pooling"
    modules = d / "modules.json"
    if modules.exists():
        try:
            for m in json.loads(modules.read_text()):
                if str(m.get("type", "")).endswith("Pooling"):
                    pdir = d / m.get("path", "1_Pooling")
        except (ValueError, AttributeError, TypeError, RecursionError) as e:   # JSON, UTF-8, shape
            raise EncoderError(f"{modules}: not a valid sentence-transformers modules.json ({e})") from None
    cfg_file = pdir / "config.json"
    if cfg_file.exists():
        pc = read_json_object(cfg_file, EncoderError)
        chosen = [name for key, name in (("pooling_mode_mean_tokens", "mean"),
                                         ("pooling_mode_cls_token", "cls"),
                                         ("pooling_mode_lasttoken", "last")) if pc.get(key)]
        other = [k for k in ("pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens",
                             "pooling_mode_weightedmean_tokens") if pc.get(k)]
        if other or len(chosen) != 1:
            raise EncoderError(f"{cfg_file}: pooling {chosen + other} unsupported; perank-jax supports "
                               f"exactly one of {POOLINGS} (pass pooling= to override)")
        return chosen[0]
    if hf_config.get("emb_pooler") in POOLINGS:
        return hf_config["emb_pooler"]
    return "mean"
